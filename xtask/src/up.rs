//! `cargo xtask up`: the all-in-one cloud. The controller runs here on
//! 127.0.0.1; hostd runs where KVM is usable (the testbed, or this host when
//! its KVM is hardware-backed) and registers with it. A default flavor and a
//! bootable test image are created, `target/virga/clouds.yaml` names the cloud
//! `virga`, and everything runs until Ctrl-C.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const CONTROLLER_PORT: u16 = 8774;
const HOSTD_PORT: u16 = 8790;
const STORAGED_PORT: u16 = 8780;
/// storaged's S3 API.
const S3_PORT: u16 = 9000;
/// storaged's Swift API (the catalog's object-store).
const SWIFT_PORT: u16 = 8080;
/// The host hostd registers as, in the testbed or here.
const HOST_ID: &str = "virga-1";
pub const ADMIN_PASSWORD: &str = "virga-admin";
/// Guest command line of the test image: quiet console, ticks until shut down.
const TEST_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.dumbkbd virga.mode=ticks";

/// Set by SIGINT or SIGTERM. `up` then stops the controller, which ends the
/// testbed's scenario, and returns: dying at once would leave both running
/// and holding their ports.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn catch_stop_signals() {
    let handler: extern "C" fn(libc::c_int) = on_stop_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; children get default dispositions back at exec.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Whether a registered host shows up in the controller's host list.
fn host_registered(token: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", CONTROLLER_PORT)) else {
        return false;
    };
    let req = format!(
        "GET /internal/v1/hosts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    s.write_all(req.as_bytes()).is_ok()
        && s.read_to_string(&mut out).is_ok()
        && out.contains("\"host_id\"")
}

pub fn run(root: &Path, bins: &Path, images: &Path, openstack: &Path) -> Result<()> {
    catch_stop_signals();
    if port_open(CONTROLLER_PORT) || port_open(HOSTD_PORT) || port_open(STORAGED_PORT) {
        bail!("ports {CONTROLLER_PORT}, {HOSTD_PORT} or {STORAGED_PORT} are taken: is another `cargo xtask up` running?");
    }
    let dir = root.join("target/virga");
    // Each run is a fresh cloud: the testbed's hosts (and their instances) do
    // not outlive it, so neither should the controller's records of them.
    let _ = std::fs::remove_dir_all(dir.join("controller"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let secret = random_token()?;
    let config = dir.join("controller.toml");
    // The testbed's host has one vCPU: its small guests share it 16 ways
    // (Nova's ratio before Stein) rather than 4.
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{CONTROLLER_PORT}\"\nstate_dir = \"{}\"\nhostd_secret = \"{secret}\"\nobject_store_url = \"http://127.0.0.1:{SWIFT_PORT}\"\n[bootstrap]\nadmin_password = \"{ADMIN_PASSWORD}\"\n[scheduler]\ncpu_allocation_ratio = 16.0\n",
            dir.join("controller").display()
        ),
    )?;
    let clouds = dir.join("clouds.yaml");
    std::fs::write(
        &clouds,
        format!(
            "clouds:\n  virga:\n    auth:\n      auth_url: http://127.0.0.1:{CONTROLLER_PORT}/identity\n      username: admin\n      password: {ADMIN_PASSWORD}\n      project_name: admin\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    identity_api_version: 3\n"
        ),
    )?;
    // The testbed's host gets its own token, as an operator would give it.
    let out = Command::new(bins.join("controller"))
        .arg("--config")
        .arg(&config)
        .args(["host-token", HOST_ID])
        .output()
        .context("running controller host-token")?;
    if !out.status.success() {
        bail!(
            "controller host-token: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let controller = Killed(
        Command::new(bins.join("controller"))
            .arg("--config")
            .arg(&config)
            .spawn()
            .context("starting the controller")?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !port_open(CONTROLLER_PORT) {
        if Instant::now() > deadline {
            bail!("the controller did not start listening");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let script = format!(
        r#"mkdir -p /sys/fs/cgroup && (mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null || true)
cat > $WORK/hostd.toml <<END
token = "{token}"
listen = "0.0.0.0:{HOSTD_PORT}"
state_dir = "$WORK/state"
vmm_binary = "$BIN/vmm"
host_id = "{HOST_ID}"
controller_url = "http://$HOST_ADDR:{CONTROLLER_PORT}"
controller_token = "{token}"
advertise_url = "http://127.0.0.1:{HOSTD_PORT}"
heartbeat_secs = 5
END
$BIN/hostd --config $WORK/hostd.toml &
HOSTD=$!
cat > $WORK/netd.toml <<END
host_id = "{HOST_ID}"
controller_url = "http://$HOST_ADDR:{CONTROLLER_PORT}"
token = "{token}"
vtep = "10.0.2.15"
underlay_dev = "eth0"
gateway = true
external_gateway_on_host = true
END
$BIN/netd --config $WORK/netd.toml &
NETD=$!
# The same host is the storage host: its volumes beside its servers.
cat > $WORK/storaged.toml <<END
host_id = "{HOST_ID}"
listen = "0.0.0.0:{STORAGED_PORT}"
advertise_url = "http://127.0.0.1:{STORAGED_PORT}"
data_dir = "$WORK/storage"
controller_url = "http://$HOST_ADDR:{CONTROLLER_PORT}"
token = "{token}"
heartbeat_secs = 5
s3_listen = "0.0.0.0:{S3_PORT}"
swift_listen = "0.0.0.0:{SWIFT_PORT}"
END
$BIN/storaged --config $WORK/storaged.toml &
STORAGED=$!
while wget -q -O /dev/null http://$HOST_ADDR:{CONTROLLER_PORT}/identity/v3; do sleep 2; done
kill $HOSTD $NETD $STORAGED; wait $HOSTD $NETD $STORAGED
"#
    );
    let testbed = virga_testbed::Testbed::new(images)?;
    let mode = testbed.mode();
    let mut scenario = virga_testbed::Scenario::new("virga-up", &script)
        .binary(bins.join("vmm"))
        .binary(bins.join("hostd"))
        .binary(bins.join("hostctl"))
        .binary(bins.join("virga-bootpick"))
        .binary(bins.join("netd"))
        .binary(bins.join("storaged"))
        .forward_port(HOSTD_PORT)
        .forward_port(STORAGED_PORT)
        .forward_port(S3_PORT)
        .forward_port(SWIFT_PORT)
        .timeout(Duration::from_secs(7 * 24 * 3600));
    // netd's security groups are an nftables ruleset: the host's nft.
    if let Some(nft) = ["/usr/sbin/nft", "/sbin/nft"]
        .iter()
        .find(|p| Path::new(p).exists())
    {
        scenario = scenario.host_binary(nft);
    }
    // storaged converts qcow2 images to raw with the host's qemu-img.
    if Path::new("/usr/bin/qemu-img").exists() {
        scenario = scenario.host_binary("/usr/bin/qemu-img");
    }
    let hostd = std::thread::spawn(move || testbed.run(&scenario));
    eprintln!(
        "up: controller on http://127.0.0.1:{CONTROLLER_PORT}; hostd starting ({})",
        mode.as_str()
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    while !host_registered(&token) {
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted before hostd registered");
        }
        if hostd.is_finished() || Instant::now() > deadline {
            bail!("hostd did not register with the controller");
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    let os = |args: &[&str]| -> Result<String> {
        let out = Command::new(openstack)
            .args(["--os-cloud", "virga"])
            .args(args)
            .env("OS_CLIENT_CONFIG_FILE", &clouds)
            .output()
            .context("running openstack")?;
        if !out.status.success() {
            bail!(
                "openstack {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    if os(&["flavor", "list", "-f", "value", "-c", "Name"])?.is_empty() {
        os(&[
            "flavor", "create", "--ram", "256", "--vcpus", "1", "--disk", "0", "m1.tiny",
        ])?;
        os(&[
            "flavor", "create", "--ram", "512", "--vcpus", "2", "--disk", "0", "m1.small",
        ])?;
    }
    // As devstack makes them: the external network floating IPs come from,
    // `public` (the testbed's L1, or this host natively, is its gateway), and
    // a project network `private` behind a router with its gateway there.
    if os(&["network", "list", "--external", "-f", "value", "-c", "Name"])?.is_empty() {
        os(&["network", "create", "--external", "public"])?;
        os(&[
            "subnet",
            "create",
            "--network",
            "public",
            "--subnet-range",
            "172.24.4.0/24",
            "--no-dhcp",
            "public-subnet",
        ])?;
    }
    if !os(&["network", "list", "-f", "value", "-c", "Name"])?
        .lines()
        .any(|n| n == "private")
    {
        os(&["network", "create", "private"])?;
        os(&[
            "subnet",
            "create",
            "--network",
            "private",
            "--subnet-range",
            "10.0.0.0/24",
            "private-subnet",
        ])?;
        os(&["router", "create", "router1"])?;
        os(&["router", "set", "--external-gateway", "public", "router1"])?;
        os(&["router", "add", "subnet", "router1", "private-subnet"])?;
    }
    let images_listed = os(&["image", "list", "-f", "value", "-c", "Name"])?;
    let has_image = |name: &str| images_listed.lines().any(|l| l.trim() == name);
    if !has_image("virga-test") {
        let ramdisk = os(&[
            "image",
            "create",
            "--public",
            "--file",
            &images.join("boot-initramfs.cpio").display().to_string(),
            "--disk-format",
            "ari",
            "--container-format",
            "ari",
            "virga-test-initramfs",
            "-f",
            "value",
            "-c",
            "id",
        ])?;
        os(&[
            "image",
            "create",
            "--public",
            "--file",
            &images.join("vmlinux").display().to_string(),
            "--disk-format",
            "aki",
            "--container-format",
            "aki",
            "--property",
            &format!("ramdisk_id={ramdisk}"),
            "--property",
            &format!("os_command_line={TEST_CMDLINE}"),
            "virga-test",
        ])?;
    }
    // The same kernel and initramfs on a bootable disk: its servers have a
    // root disk of their own (snapshots, backups, volumes from the image).
    if !has_image("virga-test-disk") {
        os(&[
            "image",
            "create",
            "--public",
            "--file",
            &images
                .join(virga_guest_images::test_disk::TEST_DISK)
                .display()
                .to_string(),
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "virga-test-disk",
        ])?;
    }
    println!(
        "\nVirga is up (hostd: {}).\n\n  export OS_CLIENT_CONFIG_FILE={} OS_CLOUD=virga\n  {os} server create --image virga-test --flavor m1.tiny --network private --wait vm1\n  (or --image virga-test-disk: the same guest with a root disk of its own)\n  {os} console log show vm1\n  {os} floating ip create public\n  {os} server add floating ip vm1 172.24.4.3\n\nS3 (storaged) on http://127.0.0.1:{S3_PORT}: `{os} ec2 credentials create` gives the access key and secret\n(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), then:\n  aws --endpoint-url http://127.0.0.1:{S3_PORT} s3 mb s3://bucket1\nSwift: {os} container create c1; {os} object create c1 FILE\n\nFloating IPs (172.24.4.0/24) are reached from where the guests run: {}.\nadmin password: {ADMIN_PASSWORD}. Ctrl-C stops the cloud.",
        mode.as_str(),
        clouds.display(),
        if mode.as_str() == "native" {
            "this host"
        } else {
            "inside the testbed's L1 VM only (QEMU's user network routes nothing into it)"
        },
        os = openstack.display(),
    );
    let mut controller = controller;
    let mut asked = false;
    let status = loop {
        if let Some(status) = controller
            .0
            .try_wait()
            .context("waiting for the controller")?
        {
            break status;
        }
        if STOP.load(Ordering::SeqCst) && !asked {
            asked = true;
            if let Ok(pid) = libc::pid_t::try_from(controller.0.id()) {
                // SAFETY: kill(2) on our own child, which has not been reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(controller);
    let _ = hostd.join();
    eprintln!("up: the controller exited ({status}); the cloud is down");
    Ok(())
}
