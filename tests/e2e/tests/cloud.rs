//! The controller and hostd as real processes talking to each other, on this
//! machine (no guest boots, so no testbed): hostd registers with its
//! heartbeats, and fetches an image the controller stores when an instance
//! names it.

use std::process::Command;
use std::time::{Duration, Instant};

use virga_e2e::cloud::{host_token, openstack_cli, start_controller, Killed};
use virga_e2e::{cloud_disk, hostd_bins};
use virga_test_support::http::Reply;
use virga_test_support::ports::{free_ports, wait_for_port, HeldPort};

/// One request to the controller or hostd on `port`: (status, reply).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Reply) {
    let reply = virga_test_support::http::send(port, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (reply.status, reply)
}

#[test]
fn hostd_registers_and_fetches_images_from_the_controller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let held = HeldPort::new();
    let ctl_port = held.port;
    let _controller = start_controller(dir.path(), &held, "");

    let token = virga_test_support::identity::token(ctl_port, "admin", "admin-secret", "admin");
    let t = ("X-Auth-Token", token.as_str());
    let (status, resp) = http(
        ctl_port,
        "POST",
        "/image/v2/images",
        &[t, ("Content-Type", "application/json")],
        br#"{"name": "kernel", "disk_format": "aki", "container_format": "aki"}"#,
    );
    assert_eq!(status, 201);
    let image = resp.json()["id"].as_str().expect("image id").to_owned();
    let kernel: Vec<u8> = b"\x7fELF\x02\x01\x01"
        .iter()
        .copied()
        .chain((0..100_000u32).map(|i| i as u8))
        .collect();
    let (status, _) = http(
        ctl_port,
        "PUT",
        &format!("/image/v2/images/{image}/file"),
        &[t, ("Content-Type", "application/octet-stream")],
        &kernel,
    );
    assert_eq!(status, 204);

    let [hostd, _, _] = hostd_bins();
    // Picked just before hostd binds it, which it does first thing.
    let [hostd_port] = free_ports::<1>();
    let hostd_cfg = dir.path().join("hostd.toml");
    std::fs::write(
        &hostd_cfg,
        format!(
            "token = \"{token}\"\nlisten = \"127.0.0.1:{hostd_port}\"\nstate_dir = \"{}\"\nvmm_binary = \"/bin/true\"\ncgroup_root = \"\"\nhost_id = \"e2e-host\"\ncontroller_url = \"http://127.0.0.1:{ctl_port}\"\ncontroller_token = \"{token}\"\nheartbeat_secs = 1\n",
            dir.path().join("hostd").display(),
            token = host_token("e2e-host"),
        ),
    )
    .expect("config");
    let _hostd = Killed(
        Command::new(&hostd)
            .arg("--config")
            .arg(&hostd_cfg)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start hostd"),
    );
    wait_for_port(hostd_port);

    // Registered by its heartbeat.
    let bearer = format!("Bearer {}", host_token("e2e-host"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, resp) = http(
            ctl_port,
            "GET",
            "/internal/v1/hosts",
            &[("Authorization", &bearer)],
            b"",
        );
        assert_eq!(status, 200);
        let hosts = resp.json();
        if hosts["hosts"][0]["host_id"] == "e2e-host" {
            assert_eq!(
                hosts["hosts"][0]["url"],
                format!("http://127.0.0.1:{hostd_port}").as_str()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hostd never registered: {}",
            resp.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // An instance naming the image by id: hostd fetches it into its cache.
    let spec = format!(
        r#"{{"id": "fetch-test", "vcpus": 1, "memory_mib": 64, "kernel_image": "{image}"}}"#
    );
    let (status, resp) = http(
        hostd_port,
        "POST",
        "/instances?start=false",
        &[("Authorization", &bearer)],
        spec.as_bytes(),
    );
    assert_eq!(status, 201, "{}", resp.body);
    let cached = dir.path().join("hostd/images").join(&image);
    assert_eq!(std::fs::read(&cached).expect("cached image"), kernel);
    assert_eq!(resp.json()["kernel"], cached.display().to_string().as_str());
    // An unknown image is refused, and nothing is left behind.
    let spec = r#"{"id": "missing", "vcpus": 1, "memory_mib": 64, "kernel_image": "00000000-0000-0000-0000-000000000000"}"#;
    let (status, resp) = http(
        hostd_port,
        "POST",
        "/instances?start=false",
        &[("Authorization", &bearer)],
        spec.as_bytes(),
    );
    assert_eq!(status, 500, "{}", resp.body);
    assert!(resp.body.contains("404"), "{}", resp.body);
}

/// The whole cloud: the controller here, hostd in the testbed (where KVM is
/// fast) reaching it through QEMU's user network, and the real `openstack` CLI
/// booting, operating and deleting a server.
#[test]
fn openstack_server_create_boots_a_guest() {
    let Some(cli) = openstack_cli() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let held = HeldPort::new();
    let ctl_port = held.port;
    let [hostd_port, storaged_port] = free_ports::<2>();
    // The key the Debian guest is created with (see `debian`); the testbed,
    // outside its router, logs in with it through the floating IP.
    let ssh_key = dir.path().join("ssh-key");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e-ssh@virga", "-f"])
        .arg(&ssh_key)
        .status()
        .expect("ssh-keygen (cargo xtask install installs openssh-client)");
    assert!(keygen.success(), "ssh-keygen failed");
    let ssh_private = std::fs::read_to_string(&ssh_key).expect("the private key");
    // The testbed has one CPU: let RAM decide how many servers fit.
    let controller = start_controller(
        dir.path(),
        &held,
        "[scheduler]\ncpu_allocation_ratio = 16.0\n",
    );

    // hostd runs in the testbed until the controller goes away.
    let script = format!(
        r#"mkdir -p /sys/fs/cgroup && (mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null || true)
# The state directory on the scratch disk (ext4, sparse on the host): in L1's
# RAM the image cache and the Debian server's root disk left L1 too little
# memory, and it stalled.
mkdir -p $WORK/state && mount -t ext4 $SCRATCH $WORK/state
# No transparent huge pages in L1: with its memory fragmented by the image
# cache, faulting in a second Debian guest's huge pages kept L1's only CPU
# in the kernel for over 20 s ("soft lockup ... [vcpu0]" in clear_page_erms)
# and the testbed's hang watchdog fired.
echo never > /sys/kernel/mm/transparent_hugepage/enabled
cat > $WORK/hostd.toml <<EOF
token = "{token}"
listen = "0.0.0.0:{hostd_port}"
state_dir = "$WORK/state"
vmm_binary = "$BIN/vmm"
host_id = "testbed"
controller_url = "http://$HOST_ADDR:{ctl_port}"
controller_token = "{token}"
advertise_url = "http://127.0.0.1:{hostd_port}"
heartbeat_secs = 2
EOF
$BIN/hostd --config $WORK/hostd.toml 2> $WORK/hostd.log &
HOSTD=$!
# The host is the storage host too: its volumes on the scratch disk.
cat > $WORK/storaged.toml <<EOF
host_id = "testbed"
listen = "0.0.0.0:{storaged_port}"
advertise_url = "http://127.0.0.1:{storaged_port}"
data_dir = "$WORK/state/storage"
controller_url = "http://$HOST_ADDR:{ctl_port}"
token = "{token}"
heartbeat_secs = 2
EOF
$BIN/storaged --config $WORK/storaged.toml 2> $WORK/storaged.log &
STORAGED=$!
{netd}# The outside world of the routers: once the external network's bridge
# carries 172.24.4.0/24, say which floating IP a guest first answers from
# behind its router (TTL 63; the router itself would answer at 64); then log
# in there with the guest's key, as its user would, and leave a line on its
# console for the test to wait for.
cat > $WORK/ssh-key <<'KEY'
{ssh_private}KEY
chmod 600 $WORK/ssh-key
# ssh wants to know who it runs as.
mkdir -p /etc /root
[ -e /etc/passwd ] || echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
(while :; do
    for ip in 172.24.4.3 172.24.4.4 172.24.4.5; do
        ip route get $ip 2>/dev/null | grep -q brq || continue
        if ping -c 1 -W 1 $ip 2>/dev/null | grep -q ttl=63; then
            echo "virga-fip-reached $ip"
            i=0; while [ $i -lt 120 ]; do
                if ssh -i $WORK/ssh-key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
                    -o ConnectTimeout=10 -o BatchMode=yes debian@$ip \
                    'echo virga-ssh-reached | sudo tee /dev/ttyS0 > /dev/null; hostname' > $WORK/ssh.out 2> $WORK/ssh.err; then
                    echo "virga-ssh-hostname $(cat $WORK/ssh.out)"; exit 0
                fi
                sleep 5; i=$((i + 1))
            done
            echo "virga-ssh-failed $(tail -n 3 $WORK/ssh.err | tr '\n' ' ')"; exit 0
        fi
    done
    sleep 1
done) &
# Runs until the test stops its controller: three failed probes in a row, so
# one lost request on QEMU's user network does not end the scenario early.
# (A probe the test's held port takes while no controller serves it waits
# until the test closes the port, and is refused then.)
f=0; while [ $f -lt 3 ]; do
    wget -q -O /dev/null http://$HOST_ADDR:{ctl_port}/identity/v3 && f=0 || f=$((f + 1)); sleep 1
done
kill $HOSTD $NETD $STORAGED; wait $HOSTD $NETD $STORAGED
echo "HOSTD_LOG_BEGIN"; tail -n 20 $WORK/hostd.log; echo "HOSTD_LOG_END"
echo "STORAGED_LOG_BEGIN"; tail -n 10 $WORK/storaged.log; echo "STORAGED_LOG_END"
echo "NETD_LOG_BEGIN"; tail -n 20 $WORK/netd.log; echo "NETD_LOG_END"
"#,
        token = host_token("testbed"),
        netd = virga_e2e::netd_script("testbed", &host_token("testbed"), ctl_port),
    );
    let mut scenario = virga_testbed::Scenario::new("cloud", &script)
        .binary(virga_e2e::vmm_bin())
        .binaries(hostd_bins())
        .binary(virga_e2e::netd_bin())
        .binary(virga_e2e::storaged_bin())
        .forward_port(hostd_port)
        .forward_port(storaged_port)
        .with_scratch_ext4(16 << 10)
        .timeout(Duration::from_secs(1800));
    for program in virga_e2e::hostd_host_programs()
        .into_iter()
        .chain(virga_e2e::netd_host_programs())
        .chain(virga_e2e::storaged_host_programs())
        .chain(["/usr/bin/ssh".into()])
    {
        scenario = scenario.host_binary(program);
    }
    let testbed = virga_e2e::testbed();
    let runner = std::thread::spawn(move || testbed.run(&scenario));

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drive_the_cloud(&cli, dir.path(), ctl_port, &|| !runner.is_finished())
    }));
    // Ends the scenario: with the controller gone and its port no longer
    // held, the testbed's probes are refused.
    drop(controller);
    drop(held);
    let outcome = runner.join().expect("testbed thread");
    match &outcome {
        Ok(o) => println!("--- testbed ({}) ---\n{}", o.mode.as_str(), o.output),
        Err(e) => println!("--- testbed failed: {e}"),
    }
    let floating = match result {
        Ok(floating) => floating,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    let outcome = outcome.expect("testbed");
    // The testbed, outside the router, reached the Debian guest through its
    // floating IP.
    assert!(
        outcome
            .output
            .contains(&format!("virga-fip-reached {floating}")),
        "the floating IP {floating} was never answered from behind the router"
    );
    assert!(
        outcome.output.contains("virga-ssh-hostname vm-debian"),
        "no SSH login through the floating IP {floating}"
    );
    assert!(outcome.success(), "scenario failed");
}

/// `testbed_alive` says whether the scenario (and so the testbed's hostd) is
/// still running, so a testbed that failed to boot ends the wait at once.
fn drive_the_cloud(
    cli: &std::path::Path,
    dir: &std::path::Path,
    ctl_port: u16,
    testbed_alive: &dyn Fn() -> bool,
) -> String {
    let clouds = dir.join("clouds.yaml");
    std::fs::write(
        &clouds,
        format!(
            "clouds:\n  virga:\n    auth:\n      auth_url: http://127.0.0.1:{ctl_port}/identity\n      username: admin\n      password: admin-secret\n      project_name: admin\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    identity_api_version: 3\n"
        ),
    )
    .expect("clouds.yaml");
    let os = |args: &[&str]| -> (bool, String, String) {
        let out = Command::new(cli)
            .args(["--os-cloud", "virga"])
            .args(args)
            .env("OS_CLIENT_CONFIG_FILE", &clouds)
            .output()
            .expect("run openstack");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ok = |args: &[&str]| {
        let started = Instant::now();
        let (ok, out, err) = os(args);
        assert!(ok, "openstack {args:?} failed:\n{err}");
        let took = started.elapsed();
        if took > Duration::from_secs(5) {
            mark(&format!(
                "openstack {} took {:.1}s",
                args.join(" "),
                took.as_secs_f64()
            ));
        }
        out
    };
    // Waits ask over plain HTTP: an `openstack` process per question is two
    // seconds of CPU, and asked every second or two for minutes it took the
    // CPU the testbed's guests needed. Actions (and one last console read
    // per wait) still go through the CLI.
    let watch = Watch::new(ctl_port);
    let wait_status = |name: &str, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = watch.status(name);
            if s == want {
                return;
            }
            assert!(
                s != "ERROR",
                "server went to ERROR: {}",
                ok(&["server", "show", name])
            );
            assert!(
                Instant::now() < deadline,
                "server stuck in {s}, wanted {want}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    };

    // The testbed's hostd registers within a few seconds of booting; the
    // testbed itself may take minutes on a loaded machine.
    mark("waiting for the testbed's hostd");
    let bearer = format!("Bearer {}", host_token("testbed"));
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        let (_, resp) = http(
            ctl_port,
            "GET",
            "/internal/v1/hosts",
            &[("Authorization", &bearer)],
            b"",
        );
        if resp.json()["hosts"][0]["host_id"] == "testbed" {
            break;
        }
        assert!(
            Instant::now() < deadline && testbed_alive(),
            "the testbed's hostd never registered"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    mark("the testbed's hostd registered");

    let images = virga_e2e::images_dir();
    let path = |f: &str| images.join(f).display().to_string();
    ok(&[
        "flavor", "create", "--ram", "256", "--vcpus", "1", "--disk", "0", "tiny",
    ]);
    let ramdisk = ok(&[
        "image",
        "create",
        "--file",
        &path("boot-initramfs.cpio"),
        "--disk-format",
        "ari",
        "--container-format",
        "ari",
        "boot-initramfs",
        "-f",
        "value",
        "-c",
        "id",
    ]);
    let cmdline = format!("os_command_line={} virga.mode=ticks", virga_e2e::CMDLINE);
    ok(&[
        "image",
        "create",
        "--file",
        &path("vmlinux"),
        "--disk-format",
        "aki",
        "--container-format",
        "aki",
        "--property",
        &format!("ramdisk_id={}", ramdisk.trim()),
        "--property",
        &cmdline,
        "virga-test",
    ]);
    ok(&[
        "server",
        "create",
        "--image",
        "virga-test",
        "--flavor",
        "tiny",
        "--wait",
        "vm1",
    ]);
    assert_eq!(watch.status("vm1"), "ACTIVE");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = watch.console("vm1");
        if log.contains(virga_e2e::BOOT_MARKER) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no boot marker on the console:\n{log}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    ok(&["server", "stop", "vm1"]);
    wait_status("vm1", "SHUTOFF");
    ok(&["server", "start", "vm1"]);
    wait_status("vm1", "ACTIVE");
    // Hard: the test initramfs ignores the power button, so a soft reboot
    // would wait out hostd's stop timeout first (the cloud image reboots
    // softly below).
    ok(&["server", "reboot", "--hard", "--wait", "vm1"]);
    wait_status("vm1", "ACTIVE");
    ok(&["server", "pause", "vm1"]);
    wait_status("vm1", "PAUSED");
    ok(&["server", "unpause", "vm1"]);
    wait_status("vm1", "ACTIVE");
    ok(&["server", "suspend", "vm1"]);
    wait_status("vm1", "SUSPENDED");
    ok(&["server", "resume", "vm1"]);
    wait_status("vm1", "ACTIVE");
    // Every action is on record, each with its outcome.
    let events = ok(&[
        "server", "event", "list", "vm1", "-f", "value", "-c", "Action",
    ]);
    let events: Vec<&str> = events.lines().collect();
    assert_eq!(
        events,
        ["resume", "suspend", "unpause", "pause", "reboot", "start", "stop", "create"],
        "newest first"
    );
    ok(&["server", "delete", "--wait", "vm1"]);
    assert_eq!(ok(&["server", "list", "-f", "value"]).trim(), "");

    // Eight concurrent creates against a host with room for five: a flavor of a
    // fifth of what the host offers.
    let (_, resp) = http(
        ctl_port,
        "GET",
        "/internal/v1/hosts",
        &[("Authorization", &bearer)],
        b"",
    );
    let usable = resp.json()["hosts"][0]["memory_usable_mib"]
        .as_u64()
        .expect("host memory");
    let fifth = (usable / 5).to_string();
    ok(&[
        "flavor", "create", "--ram", &fifth, "--vcpus", "1", "--disk", "0", "fifth",
    ]);
    let creates: Vec<_> = (0..8)
        .map(|i| {
            let (cli, clouds) = (cli.to_owned(), clouds.clone());
            std::thread::spawn(move || {
                Command::new(cli)
                    .args([
                        "--os-cloud",
                        "virga",
                        "server",
                        "create",
                        "--image",
                        "virga-test",
                    ])
                    .args(["--flavor", "fifth", &format!("many-{i}")])
                    .env("OS_CLIENT_CONFIG_FILE", &clouds)
                    .output()
                    .expect("run openstack")
                    .status
                    .success()
            })
        })
        .collect();
    for c in creates {
        assert!(
            c.join().expect("create thread"),
            "every create is accepted (202)"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let statuses = loop {
        let out = ok(&["server", "list", "-f", "value", "-c", "Status"]);
        let statuses: Vec<String> = out.lines().map(|l| l.trim().to_owned()).collect();
        if statuses.len() == 8 && statuses.iter().all(|s| s != "BUILD") {
            break statuses;
        }
        assert!(
            Instant::now() < deadline,
            "builds did not finish: {statuses:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let active = statuses.iter().filter(|s| *s == "ACTIVE").count();
    let error = statuses.iter().filter(|s| *s == "ERROR").count();
    let faults: Vec<String> = ok(&[
        "server", "list", "--status", "ERROR", "-f", "value", "-c", "ID",
    ])
    .lines()
    .map(|id| ok(&["server", "show", id.trim(), "-f", "value", "-c", "fault"]))
    .collect();
    assert_eq!(
        (active, error),
        (5, 3),
        "exactly the host's capacity: {statuses:?}, faults: {faults:?}"
    );
    for f in &faults {
        assert!(f.contains("No valid host was found"), "{f}");
    }
    let (_, resp) = http(
        ctl_port,
        "GET",
        "/internal/v1/hosts",
        &[("Authorization", &bearer)],
        b"",
    );
    let host = &resp.json()["hosts"][0];
    assert!(
        host["memory_used_mib"].as_u64().unwrap_or(u64::MAX) <= usable,
        "the host was never oversubscribed: {host}"
    );
    let names: Vec<String> = (0..8).map(|i| format!("many-{i}")).collect();
    let mut args = vec!["server", "delete", "--wait"];
    args.extend(names.iter().map(String::as_str));
    ok(&args);

    mark("cloud images");
    cloud_images(dir, &ok, &watch, &wait_status);
    mark("Debian");
    let floating = debian(dir, &ok, &watch, &wait_status);
    mark("done");
    floating
}

/// The compute API over plain HTTP, as admin: server status and console
/// output by server name.
struct Watch {
    port: u16,
    token: std::cell::RefCell<String>,
}

impl Watch {
    fn new(port: u16) -> Self {
        let watch = Watch {
            port,
            token: Default::default(),
        };
        watch.renew();
        watch
    }

    fn renew(&self) {
        let body = serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"name": "Default"}, "password": "admin-secret"}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}});
        let (code, reply) = http(
            self.port,
            "POST",
            "/identity/v3/auth/tokens",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        assert_eq!(code, 201, "token: {}", reply.body);
        *self.token.borrow_mut() = reply
            .header("x-subject-token")
            .expect("X-Subject-Token")
            .to_owned();
    }

    /// A compute API call; a token that expired is renewed once.
    fn call(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        for _ in 0..2 {
            let token = self.token.borrow().clone();
            let (code, reply) = http(
                self.port,
                method,
                &format!("/compute/v2.1{path}"),
                &[
                    ("X-Auth-Token", &token),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            );
            if code == 401 {
                self.renew();
                continue;
            }
            assert!(code < 300, "{method} {path}: {code} {}", reply.body);
            return reply.json();
        }
        panic!("{method} {path}: refused with a fresh token");
    }

    fn server(&self, name: &str) -> serde_json::Value {
        let found = self.call("GET", &format!("/servers/detail?name=%5E{name}%24"), "");
        match found["servers"].as_array().map(Vec::as_slice) {
            Some([one]) => one.clone(),
            other => panic!("no one server named {name}: {other:?}"),
        }
    }

    fn status(&self, name: &str) -> String {
        self.server(name)["status"]
            .as_str()
            .expect("status")
            .to_owned()
    }

    fn console(&self, name: &str) -> String {
        let id = self.server(name)["id"].as_str().expect("id").to_owned();
        let out = self.call(
            "POST",
            &format!("/servers/{id}/action"),
            r#"{"os-getConsoleOutput": {}}"#,
        );
        out["output"].as_str().unwrap_or_default().to_owned()
    }
}

/// Prints `what` with the time since the test began, so a run shows where
/// its minutes went.
fn mark(what: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    println!("[cloud +{:.0}s] {what}", start.elapsed().as_secs_f64());
}

/// Waits (at most `secs`) until `name`'s console shows `line`; returns the
/// console.
fn wait_console(
    ok: &dyn Fn(&[&str]) -> String,
    watch: &Watch,
    name: &str,
    line: &str,
    secs: u64,
) -> String {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    loop {
        let log = watch.console(name);
        if log.contains(line) {
            mark(&format!(
                "{name}: {line:?} on the console after {:.0}s",
                started.elapsed().as_secs_f64()
            ));
            // What users read: the same log through the CLI.
            let log = ok(&["console", "log", "show", name]);
            assert!(log.contains(line), "the CLI's console log lacks {line:?}");
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no {line:?} on the console:\n{log}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The Debian 12 cloud image built by `guest-images` (Debian's packages,
/// systemd, cloud-init, OpenSSH; nothing of Virga's), uploaded as qcow2 as
/// users upload Debian's own: cloud-init runs unchanged from the config
/// drive, puts the key pair in the default user's authorized_keys, runs the
/// user data, names the host and grows the root disk to the flavor's size;
/// a stop is a clean systemd power-off through the ACPI power button.
/// (A root disk that keeps what a boot wrote across stop, start and soft
/// reboot, and raw uploads stored with holes, are tested on the cloud test
/// image and in the controller's tests: each Debian boot, or a pass over
/// its 1.7 GB raw file, costs minutes in the testbed.)
fn debian(
    dir: &std::path::Path,
    ok: &dyn Fn(&[&str]) -> String,
    watch: &Watch,
    wait_status: &dyn Fn(&str, &str),
) -> String {
    let image = virga_guest_images::cloud_image::load(&virga_e2e::images_dir().join("debian-12"))
        .expect("the Debian cloud image (cargo xtask images builds it)");
    ok(&[
        "image",
        "create",
        "--file",
        &image.qcow2().display().to_string(),
        "--disk-format",
        "qcow2",
        "--container-format",
        "bare",
        "debian-12",
    ]);
    ok(&[
        "flavor",
        "create",
        "--ram",
        "512",
        "--vcpus",
        "1",
        "--disk",
        "3",
        "--ephemeral",
        "1",
        "--swap",
        "128",
        "m1.debian",
    ]);
    let user_data = dir.join("debian-user-data");
    std::fs::write(
        &user_data,
        "#cloud-config\n\
         password: virga-console\n\
         chpasswd: {expire: false}\n\
         runcmd:\n\
         \x20 - echo \"virga-debian-user-data hostname=$(hostname) root_bytes=$(lsblk -bdno SIZE /dev/vda) fs_bytes=$(df -B1 --output=size / | tail -n 1 | tr -d ' ')\" > /dev/ttyS0\n\
         \x20 - echo \"virga-debian-mnt $(findmnt -rno SOURCE,FSTYPE,LABEL /mnt) swap=$(swapon --show=NAME --noheadings)\" > /dev/ttyS0\n\
         \x20 - echo \"virga-debian-net $(ip -4 -o addr show scope global | awk '{print $4}')\" > /dev/ttyS0\n\
         \x20 - if ping -c 3 -W 5 10.0.0.1 > /dev/null; then r=ok; else r=failed; fi; echo \"virga-debian-ping $r\" > /dev/ttyS0\n\
         \x20 - if ping -c 3 -W 5 172.24.4.1 > /dev/null; then r=ok; else r=failed; fi; echo \"virga-debian-outside $r\" > /dev/ttyS0\n\
         \x20 - ip route add 169.254.169.254/32 dev $(ip -4 -o addr show scope global | awk '{print $2}'); echo \"virga-debian-metadata $(curl -s -m 20 http://169.254.169.254/openstack/latest/meta_data.json | grep -o '\"uuid\":\"[^\"]*\"')\" > /dev/ttyS0\n\
         \x20 - echo \"virga-debian-datasource $(cloud-init query v1.subplatform)\" > /dev/ttyS0\n\
         \x20 - echo \"virga-debian-keys $(cat /home/debian/.ssh/authorized_keys)\" > /dev/ttyS0\n",
    )
    .expect("user data");
    // A network: the server gets a port on it, and the guest configures the
    // port's address from what the metadata service tells it (no config
    // drive: none was asked for). netd puts the port's tap on the
    // network's bridge behind its security groups; netd's metadata service
    // answers it at 169.254.169.254. A router joins the network to the
    // external one, whose gateway is the testbed (the outside world): the
    // guest pings its gateway (the router) and the outside (SNAT), and the
    // outside pings it at its floating IP.
    ok(&["network", "create", "net1"]);
    ok(&[
        "subnet",
        "create",
        "--network",
        "net1",
        "--subnet-range",
        "10.0.0.0/24",
        "sub1",
    ]);
    ok(&["network", "create", "--external", "public"]);
    ok(&[
        "subnet",
        "create",
        "--network",
        "public",
        "--subnet-range",
        "172.24.4.0/24",
        "--no-dhcp",
        "public-subnet",
    ]);
    ok(&["router", "create", "r1"]);
    ok(&["router", "set", "--external-gateway", "public", "r1"]);
    ok(&["router", "add", "subnet", "r1", "sub1"]);
    ok(&[
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "icmp",
        "default",
    ]);
    ok(&[
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "tcp",
        "--dst-port",
        "22",
        "default",
    ]);
    // A key of its own: the testbed logs in with it (see the scenario).
    let ssh_pub = dir.join("ssh-key.pub");
    ok(&[
        "keypair",
        "create",
        "--public-key",
        &ssh_pub.display().to_string(),
        "k-ssh",
    ]);
    let ssh_pub = std::fs::read_to_string(&ssh_pub).expect("the public key");
    ok(&[
        "server",
        "create",
        "--image",
        "debian-12",
        "--flavor",
        "m1.debian",
        "--key-name",
        "k-ssh",
        "--user-data",
        &user_data.display().to_string(),
        "--network",
        "net1",
        "--wait",
        "vm-debian",
    ]);
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["server", "show", "-f", "json", "vm-debian"])).expect("json");
    let address = shown["addresses"]["net1"][0]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            // OSC prints addresses as {"net1": ["10.0.0.2"]} in JSON.
            shown["addresses"]["net1"][0]["addr"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no address on net1: {shown}"));
    assert_eq!(watch.status("vm-debian"), "ACTIVE");
    // netd plugged the port (within a pass or two of the tap appearing):
    // Neutron's status says so.
    let plugged = Instant::now();
    loop {
        let ports: serde_json::Value = serde_json::from_str(&ok(&[
            "port",
            "list",
            "--server",
            "vm-debian",
            "-f",
            "json",
            "-c",
            "Status",
        ]))
        .expect("json");
        if ports == serde_json::json!([{"Status": "ACTIVE"}]) {
            break;
        }
        assert!(
            plugged.elapsed() < Duration::from_secs(60),
            "the port did not go ACTIVE: {ports}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // `server add floating ip`, as users do: ACTIVE once the router's host
    // applies it, and listed with the server's addresses.
    let fip: serde_json::Value =
        serde_json::from_str(&ok(&["floating", "ip", "create", "public", "-f", "json"]))
            .expect("json");
    let floating = fip["floating_ip_address"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ok(&["server", "add", "floating", "ip", "vm-debian", &floating]);
    let applied = Instant::now();
    loop {
        let status = ok(&[
            "floating", "ip", "show", &floating, "-f", "value", "-c", "status",
        ]);
        if status.trim() == "ACTIVE" {
            break;
        }
        assert!(
            applied.elapsed() < Duration::from_secs(60),
            "the floating IP stayed {status}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let addresses = ok(&[
        "server",
        "show",
        "-f",
        "json",
        "-c",
        "addresses",
        "vm-debian",
    ]);
    assert!(addresses.contains(&floating), "{addresses}");
    let started = Instant::now();
    let log = wait_console(ok, watch, "vm-debian", "virga-debian-keys", 900);
    println!(
        "Debian: create to user data done in {:?}",
        started.elapsed()
    );
    for want in [
        "virga-debian-user-data hostname=vm-debian root_bytes=3221225472",
        // cloud-init mounted the flavor's ephemeral disk on /mnt and
        // enabled its swap, as on Nova.
        "virga-debian-mnt /dev/vdb ext4 ephemeral0 swap=/dev/vdc",
        &format!("virga-debian-net {address}/24"),
        "virga-debian-ping ok",
        "virga-debian-outside ok",
        // The metadata service (same contents as the config drive) knows
        // the guest by its address.
        &format!(
            "virga-debian-metadata \"uuid\":\"{}\"",
            shown["id"].as_str().unwrap_or_default()
        ),
        // No config drive was asked for: cloud-init found the server's
        // key and user data through the metadata service.
        "virga-debian-datasource metadata (http://169.254.169.254)",
        ssh_pub.trim(),
    ] {
        assert!(log.contains(want), "no {want:?} on the console:\n{log}");
    }
    // Nothing the VMM causes: SMBIOS is there, and config space through
    // the legacy ports too, so Linux trusts ECAM early.
    for bad in ["DMI not present", "PCI: Fatal", "Call Trace"] {
        assert!(!log.contains(bad), "{bad:?} on the console:\n{log}");
    }
    assert!(
        log.contains("DMI: OpenStack Foundation OpenStack Nova"),
        "{log}"
    );
    // cloud-init grew the root filesystem into the 3 GiB disk.
    let fs_bytes: u64 = log
        .lines()
        .find_map(|l| l.split("fs_bytes=").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        fs_bytes > 2 << 30,
        "root filesystem of {fs_bytes} bytes:\n{log}"
    );
    wait_console(ok, watch, "vm-debian", "Cloud-init v.", 300);
    // `server add network` while the guest runs: a NIC appears in it (PCI
    // hotplug), its port goes ACTIVE; `server remove network` takes it
    // away once the guest lets go, and the port made for it goes.
    ok(&["network", "create", "net2"]);
    ok(&[
        "subnet",
        "create",
        "--network",
        "net2",
        "--subnet-range",
        "10.1.0.0/24",
        "sub2",
    ]);
    let nics = |n: usize| {
        format!(
            "for i in $(seq 60); do [ $(ls /sys/class/net | wc -l) = {n} ] && break; sleep 1; done; \
             echo virga-nics-$(ls /sys/class/net | wc -l)-$(ls /sys/class/net | tr '\\n' ,)"
        )
    };
    // A volume for it (storaged on the testbed, as the compute host).
    let volume: serde_json::Value = serde_json::from_str(&ok(&[
        "volume", "create", "--size", "1", "data1", "-f", "json",
    ]))
    .expect("json");
    let serial: String = volume["id"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .take(20)
        .collect();
    let volume_status = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = ok(&["volume", "show", "data1", "-f", "value", "-c", "status"]);
            if s.trim() == want {
                return;
            }
            assert!(Instant::now() < deadline, "volume data1 stayed {s}");
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    volume_status("available");
    // The guest's disk named by the volume's serial, as udev names it. (The
    // console echoes each command: the lines waited for are never typed.)
    let disk = format!("/dev/disk/by-id/virtio-{serial}");
    let disk_there = |there: bool| {
        let test = if there { "-b" } else { "! -e" };
        format!(
            "for i in $(seq 60); do [ {test} {disk} ] && break; sleep 1; done; \
             echo virga-vol-$([ -b {disk} ] && echo pres''ent || echo abs''ent)"
        )
    };
    serial_console_login(ok, "vm-debian", &|run| {
        // `server add volume` while the guest runs: a disk appears (PCI
        // hotplug), data written to it outlives a detach and comes back
        // with the next attach.
        let attached = Instant::now();
        ok(&["server", "add", "volume", "vm-debian", "data1"]);
        volume_status("in-use");
        run(&disk_there(true), "virga-vol-present");
        println!("Debian: a volume attached in {:?}", attached.elapsed());
        run(
            &format!(
                "printf virga-volume-data | sudo dd of={disk} conv=fsync 2>/dev/null; echo virga-vol-writ''ten"
            ),
            "virga-vol-written",
        );
        // A snapshot of it while the guest has it (`--force`, as Cinder
        // wants): on the testbed's ext4 its file becomes the snapshot's
        // layer and the guest's VMM moves onto a qcow2 overlay over it.
        let snapped = Instant::now();
        ok(&[
            "volume", "snapshot", "create", "--volume", "data1", "--force", "snap1",
        ]);
        wait_named(ok, &["volume", "snapshot"], "snap1", "available");
        println!(
            "Debian: a snapshot of a volume in use taken in {:?}",
            snapped.elapsed()
        );
        // Written after the snapshot: the volume has it, the snapshot not.
        run(
            &format!(
                "printf virga-volume-NEWD | sudo dd of={disk} conv=fsync 2>/dev/null; echo virga-vol-rewrit''ten"
            ),
            "virga-vol-rewritten",
        );
        ok(&["server", "remove", "volume", "vm-debian", "data1"]);
        volume_status("available");
        run(&disk_there(false), "virga-vol-absent");
        let copy: serde_json::Value = serde_json::from_str(&ok(&[
            "volume",
            "create",
            "--snapshot",
            "snap1",
            "data1-copy",
            "-f",
            "json",
        ]))
        .expect("json");
        wait_named(ok, &["volume"], "data1-copy", "available");
        ok(&["server", "add", "volume", "vm-debian", "data1"]);
        volume_status("in-use");
        run(&disk_there(true), "virga-vol-present");
        run(
            &format!("echo virga-vol-read-$(sudo head -c 17 {disk})"),
            "virga-vol-read-virga-volume-NEWD",
        );
        let copy_serial: String = copy["id"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(20)
            .collect();
        let copy_disk = format!("/dev/disk/by-id/virtio-{copy_serial}");
        ok(&["server", "add", "volume", "vm-debian", "data1-copy"]);
        wait_named(ok, &["volume"], "data1-copy", "in-use");
        run(
            &format!(
                "for i in $(seq 60); do [ -b {copy_disk} ] && break; sleep 1; done; \
                 echo virga-copy-$(sudo head -c 17 {copy_disk})-$(sudo head -c 17 {disk})"
            ),
            "virga-copy-virga-volume-data-virga-volume-NEWD",
        );
        ok(&["server", "remove", "volume", "vm-debian", "data1-copy"]);
        wait_named(ok, &["volume"], "data1-copy", "available");
        // Grown while attached (the CLI asks for microversion 3.42 itself):
        // the guest sees the new size without a rescan.
        let grown = Instant::now();
        ok(&["volume", "set", "--size", "2", "data1"]);
        run(
            &format!(
                "d=$(basename $(readlink -f {disk})); \
                 for i in $(seq 120); do [ $(cat /sys/class/block/$d/size) = 4194304 ] && break; sleep 0.5; done; \
                 echo virga-vol-sectors-$(cat /sys/class/block/$d/size)"
            ),
            "virga-vol-sectors-4194304",
        );
        println!("Debian: an attached volume grown in {:?}", grown.elapsed());
        volume_status("in-use");
        let size = ok(&["volume", "show", "data1", "-f", "value", "-c", "size"]);
        assert_eq!(size.trim(), "2", "the volume's recorded size");
        run(&nics(2), "virga-nics-2-");
        let plugged = Instant::now();
        ok(&["server", "add", "network", "vm-debian", "net2"]);
        run(&nics(3), "virga-nics-3-");
        println!("Debian: a NIC plugged in {:?}", plugged.elapsed());
        wait_ports(ok, "net2", "ACTIVE");
        let unplugged = Instant::now();
        ok(&["server", "remove", "network", "vm-debian", "net2"]);
        run(&nics(2), "virga-nics-2-");
        wait_ports(ok, "net2", "");
        println!("Debian: a NIC unplugged in {:?}", unplugged.elapsed());
    });
    ok(&["network", "delete", "net2"]);

    // The testbed logged in through the floating IP with the server's key.
    wait_console(ok, watch, "vm-debian", "virga-ssh-reached", 600);
    // The power button: systemd shuts down cleanly, well before hostd's
    // stop timeout would have killed it.
    let stopping = Instant::now();
    ok(&["server", "stop", "vm-debian"]);
    wait_status("vm-debian", "SHUTOFF");
    println!("Debian: stop took {:?}", stopping.elapsed());
    let log = ok(&["console", "log", "show", "vm-debian"]);
    assert!(log.contains("reboot: Power down"), "{log}");
    ok(&["server", "delete", "--wait", "vm-debian"]);
    // Its volume, still attached, is let go of (and keeps its data).
    volume_status("available");

    // Boot from volume: a volume made from the Debian image (the storage
    // host, which holds it, copies it), and a server that boots from it
    // (the kernel picked from the volume's own /boot).
    let made = Instant::now();
    ok(&[
        "volume",
        "create",
        "--image",
        "debian-12",
        "--size",
        "3",
        "--bootable",
        "root-debian",
    ]);
    let deadline = Instant::now() + Duration::from_secs(900);
    while ok(&[
        "volume",
        "show",
        "root-debian",
        "-f",
        "value",
        "-c",
        "status",
    ])
    .trim()
        != "available"
    {
        assert!(Instant::now() < deadline, "root-debian was never made");
        std::thread::sleep(Duration::from_secs(2));
    }
    println!(
        "Debian: a volume made from the image in {:?}",
        made.elapsed()
    );
    let bfv_data = dir.join("bfv-user-data");
    std::fs::write(
        &bfv_data,
        "#cloud-config\nbootcmd:\n\x20 - echo \"virga-bfv-booted $(findmnt -rno SOURCE /)\" > /dev/ttyS0\n",
    )
    .expect("user data");
    let booted = Instant::now();
    ok(&[
        "server",
        "create",
        "--volume",
        "root-debian",
        "--flavor",
        "m1.debian",
        "--config-drive",
        "True",
        "--user-data",
        bfv_data.to_str().unwrap_or_default(),
        "--network",
        "net1",
        "--wait",
        "vm-bfv",
    ]);
    wait_console(ok, watch, "vm-bfv", "virga-bfv-booted /dev/vda", 900);
    println!("Debian: booted from a volume in {:?}", booted.elapsed());
    let shown = ok(&["server", "show", "vm-bfv", "-f", "value", "-c", "image"]);
    assert!(shown.contains("booted from volume"), "{shown}");
    ok(&["server", "delete", "--wait", "vm-bfv"]);
    wait_named(ok, &["volume"], "root-debian", "available");
    ok(&["volume", "delete", "root-debian"]);
    ok(&["volume", "snapshot", "delete", "snap1"]);
    ok(&["volume", "delete", "data1-copy"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while ok(&["volume", "snapshot", "list", "-f", "value"]).contains("snap1") {
        assert!(Instant::now() < deadline, "snap1 was never deleted");
        std::thread::sleep(Duration::from_secs(1));
    }
    ok(&["volume", "delete", "data1"]);
    // The port made for it went with it, and its floating IP is free; the
    // router comes apart and the networks are free to go.
    let left = ok(&[
        "floating", "ip", "show", &floating, "-f", "value", "-c", "port_id",
    ]);
    assert_eq!(left.trim(), "None", "{left}");
    ok(&["floating", "ip", "delete", &floating]);
    ok(&["router", "remove", "subnet", "r1", "sub1"]);
    ok(&["router", "delete", "r1"]);
    assert_eq!(
        ok(&["port", "list", "--network", "net1", "-f", "json"]).trim(),
        "[]"
    );
    ok(&["network", "delete", "net1"]);
    ok(&["network", "delete", "public"]);
    floating
}

/// Waits (up to a minute) until the ports on `network` have `status`, or
/// (an empty status) until there are none.
/// Waits until `openstack <kind> show <name>` says status `want`.
fn wait_named(ok: &dyn Fn(&[&str]) -> String, kind: &[&str], name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut args: Vec<&str> = kind.to_vec();
    args.extend(["show", name, "-f", "value", "-c", "status"]);
    loop {
        let s = ok(&args);
        if s.trim() == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed {s}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn wait_ports(ok: &dyn Fn(&[&str]) -> String, network: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ports: serde_json::Value = serde_json::from_str(&ok(&[
            "port",
            "list",
            "--network",
            network,
            "-f",
            "json",
            "-c",
            "Status",
        ]))
        .expect("json");
        let want = if status.is_empty() {
            serde_json::json!([])
        } else {
            serde_json::json!([{ "Status": status }])
        };
        if ports == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the ports on {network}: {ports}, not {want}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Types a command in a console session and waits (up to two minutes) for
/// the text given.
type Run<'a> = dyn FnMut(&str, &str) + 'a;

/// A serial console session as users open one: `openstack console url show
/// --serial` gives a websocket URL; through it the test logs in on the
/// guest's getty as the default user and runs a command, while a second
/// session, only reading, sees the same output. `while_logged_in` gets a
/// way to run more commands in the session.
fn serial_console_login(
    ok: &dyn Fn(&[&str]) -> String,
    name: &str,
    while_logged_in: &dyn Fn(&mut Run),
) {
    use tungstenite::{client::IntoClientRequest, Message};
    type Session = tungstenite::WebSocket<std::net::TcpStream>;
    let connect = || -> Session {
        let url = ok(&[
            "console", "url", "show", "--serial", name, "-f", "value", "-c", "url",
        ]);
        let mut request = url.trim().into_client_request().expect("console URL");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "binary".parse().expect("header"));
        let host = request.uri().authority().expect("host").to_string();
        let stream = std::net::TcpStream::connect(&host).expect("connect to the console");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        tungstenite::client(request, stream)
            .unwrap_or_else(|e| panic!("console websocket: {e}"))
            .0
    };
    // Reads until the console shows `want` (after what was seen before).
    let wait_for = |ws: &mut Session, seen: &mut String, want: &str, secs: u64| {
        let from = seen.len();
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !seen[from..].contains(want) {
            assert!(
                Instant::now() < deadline,
                "no {want:?} on the serial console:\n{seen}"
            );
            match ws.read() {
                Ok(Message::Binary(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
                Ok(Message::Text(t)) => seen.push_str(t.as_str()),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("serial console: {e}\n{seen}"),
            }
        }
    };
    let mut reader = connect();
    let mut ws = connect();
    let (mut seen, mut read) = (String::new(), String::new());
    let mut login_prompt = false;
    for _ in 0..5 {
        ws.send(Message::binary(b"\r".to_vec())).expect("type");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !seen.contains("login:") {
            if let Ok(Message::Binary(b)) = ws.read() {
                seen.push_str(&String::from_utf8_lossy(&b));
            }
        }
        if seen.contains("login:") {
            login_prompt = true;
            break;
        }
    }
    assert!(
        login_prompt,
        "no login prompt on the serial console:\n{seen}"
    );
    ws.send(Message::binary(b"debian\r".to_vec()))
        .expect("type");
    wait_for(&mut ws, &mut seen, "Password:", 60);
    ws.send(Message::binary(b"virga-console\r".to_vec()))
        .expect("type");
    wait_for(&mut ws, &mut seen, "$ ", 120);
    ws.send(Message::binary(b"echo virga-console-$((6*7))\r".to_vec()))
        .expect("type");
    wait_for(&mut ws, &mut seen, "virga-console-42", 60);
    wait_for(&mut reader, &mut read, "virga-console-42", 60);
    while_logged_in(&mut |command: &str, want: &str| {
        ws.send(Message::binary(format!("{command}\r").into_bytes()))
            .expect("type");
        wait_for(&mut ws, &mut seen, want, 120);
    });
    ws.send(Message::binary(b"exit\r".to_vec())).expect("type");
    let _ = ws.close(None);
    let _ = reader.close(None);
    println!("Debian: logged in on the serial console through its websocket");
}

/// The console line of `virga.mode=cloud` for each boot of a root disk.
fn boot_line(n: u32) -> String {
    format!("virga-cloud-boot {n} root=vda3 sectors=2097152")
}

/// Cloud images: a raw GPT disk whose own grub.cfg names the test kernel and
/// initramfs (`virga.mode=cloud`), uploaded as users upload Debian's; the
/// guest reads its config drive and counts its boots on its root disk.
fn cloud_images(
    dir: &std::path::Path,
    ok: &dyn Fn(&[&str]) -> String,
    watch: &Watch,
    wait_status: &dyn Fn(&str, &str),
) {
    let disk = dir.join("cloud.img");
    let broken = dir.join("broken.img");
    cloud_disk(&disk, true, "virga.mode=cloud");
    cloud_disk(&broken, false, "virga.mode=cloud");
    let path = |p: &std::path::Path| p.display().to_string();
    for (file, name) in [(&disk, "cloud-disk"), (&broken, "no-kernel")] {
        ok(&[
            "image",
            "create",
            "--file",
            &path(file),
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            name,
        ]);
    }
    ok(&[
        "flavor", "create", "--ram", "256", "--vcpus", "1", "--disk", "1", "small",
    ]);
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHs7sAvZ0nq6Q0m9M2dpBmbJYk8y9m8Ocq6m1E8K8y2J e2e@virga";
    let key_file = dir.join("k1.pub");
    std::fs::write(&key_file, key).expect("key");
    ok(&["keypair", "create", "--public-key", &path(&key_file), "k1"]);
    let user_data = b"#!/bin/sh\necho hello from user data\n";
    let user_data_file = dir.join("user-data");
    std::fs::write(&user_data_file, user_data).expect("user data");
    let user_data_md5 = md5_hex(user_data);

    let console = |name: &str| ok(&["console", "log", "show", name]);
    let wait_console = |name: &str, line: &str| wait_console(ok, watch, name, line, 120);
    ok(&[
        "server",
        "create",
        "--image",
        "cloud-disk",
        "--flavor",
        "small",
        "--key-name",
        "k1",
        "--user-data",
        &path(&user_data_file),
        "--config-drive",
        "True",
        "--wait",
        "vm-cloud",
    ]);
    assert_eq!(watch.status("vm-cloud"), "ACTIVE");
    // The guest rebooted itself after its first boot: hostd picked the
    // kernel again and the disk kept what the first boot wrote.
    let log = wait_console("vm-cloud", &boot_line(2));
    for want in [
        "virga-cloud-config-drive /dev/vd".to_owned(),
        "virga-cloud-hostname vm-cloud".to_owned(),
        format!("virga-cloud-user-data {user_data_md5}"),
        boot_line(1),
    ] {
        assert!(log.contains(&want), "no {want:?} on the console:\n{log}");
    }
    assert!(
        log.lines()
            .any(|l| l.starts_with("virga-cloud-keys") && l.contains(key)),
        "the key pair on the config drive:\n{log}"
    );
    // A stop presses the ACPI power button (a systemd guest would reboot on
    // Ctrl+Alt+Del); the guest powers off by itself.
    ok(&["server", "stop", "vm-cloud"]);
    wait_status("vm-cloud", "SHUTOFF");
    let log = console("vm-cloud");
    assert!(log.contains("virga-power-button"), "{log}");
    ok(&["server", "start", "vm-cloud"]);
    wait_status("vm-cloud", "ACTIVE");
    wait_console("vm-cloud", &boot_line(3));

    // A rebuild: a fresh root disk from the image (the boot count starts
    // over) for the same server.
    ok(&[
        "server",
        "rebuild",
        "--image",
        "cloud-disk",
        "--wait",
        "vm-cloud",
    ]);
    assert_eq!(watch.status("vm-cloud"), "ACTIVE");
    let log = wait_console("vm-cloud", &boot_line(2));
    assert!(!log.contains(&boot_line(3)), "a fresh root disk:\n{log}");

    // A snapshot of it is an image that boots: its disk holds the two boots
    // so far, and the host's upload went straight into the image.
    ok(&[
        "server",
        "image",
        "create",
        "--name",
        "vm-cloud-snap",
        "--wait",
        "vm-cloud",
    ]);
    let image = ok(&["image", "show", "vm-cloud-snap", "-f", "json"]);
    for want in [r#""status": "active""#, r#""image_type": "snapshot""#] {
        assert!(image.contains(want), "no {want} in {image}");
    }
    ok(&[
        "server",
        "create",
        "--image",
        "vm-cloud-snap",
        "--flavor",
        "small",
        "--config-drive",
        "True",
        "--wait",
        "vm-snap",
    ]);
    let log = wait_console("vm-snap", &boot_line(3));
    assert!(log.contains("virga-cloud-hostname vm-snap"), "{log}");
    // A resize: powered off, two vCPUs and a 2 GiB root disk with what the
    // disk held, powered on; then confirmed.
    ok(&[
        "flavor", "create", "--ram", "256", "--vcpus", "2", "--disk", "2", "medium",
    ]);
    ok(&[
        "server", "resize", "--flavor", "medium", "--wait", "vm-snap",
    ]);
    assert_eq!(watch.status("vm-snap"), "VERIFY_RESIZE");
    wait_console("vm-snap", "virga-cloud-boot 4 root=vda3 sectors=4194304");
    ok(&["server", "resize", "confirm", "vm-snap"]);
    wait_status("vm-snap", "ACTIVE");
    // A soft reboot: the power button, then a new VMM on the same disk.
    ok(&["server", "reboot", "--wait", "vm-snap"]);
    wait_console("vm-snap", "virga-cloud-boot 5 root=vda3 sectors=4194304");
    ok(&["server", "delete", "--wait", "vm-snap"]);

    // A second server of the image has a root disk of its own; its flavor
    // gives it an ephemeral disk (ext4, labelled ephemeral0) and swap, after
    // the root disk as Nova orders them.
    ok(&[
        "flavor",
        "create",
        "--ram",
        "256",
        "--vcpus",
        "1",
        "--disk",
        "1",
        "--ephemeral",
        "1",
        "--swap",
        "64",
        "small-ephemeral",
    ]);
    ok(&[
        "server",
        "create",
        "--image",
        "cloud-disk",
        "--flavor",
        "small-ephemeral",
        "--config-drive",
        "True",
        "--wait",
        "vm-cloud-2",
    ]);
    let log = wait_console("vm-cloud-2", &boot_line(2));
    assert!(!log.contains(&boot_line(3)), "{log}");
    assert!(
        log.contains("virga-cloud-ephemeral /dev/vdb swap=/dev/vdc"),
        "{log}"
    );
    assert!(log.contains("virga-cloud-config-drive /dev/vdd"), "{log}");
    let plain = console("vm-cloud");
    let line = plain
        .lines()
        .find(|l| l.starts_with("virga-cloud-ephemeral"))
        .map(str::trim);
    assert_eq!(
        line,
        Some("virga-cloud-ephemeral none swap="),
        "no ephemeral disk or swap without them in the flavor"
    );

    // An image with nothing to boot ends in ERROR saying why.
    let _ = ok(&[
        "server",
        "create",
        "--image",
        "no-kernel",
        "--flavor",
        "small",
        "vm-broken",
    ]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while watch.status("vm-broken") != "ERROR" {
        assert!(Instant::now() < deadline, "vm-broken never failed");
        std::thread::sleep(Duration::from_secs(1));
    }
    let fault = ok(&["server", "show", "vm-broken", "-f", "value", "-c", "fault"]);
    assert!(
        fault.contains("the root disk cannot boot: nothing to boot on the image"),
        "{fault}"
    );
    ok(&[
        "server",
        "delete",
        "--wait",
        "vm-cloud",
        "vm-cloud-2",
        "vm-broken",
    ]);
}

/// A Debian-style raw GPT disk (BIOS boot, ESP, ext4 root) holding the test
/// kernel and initramfs under /boot with a grub.cfg naming them; without
/// them when `bootable` is false.
/// md5 of `data` as hex, by the system's md5sum (what the guest's busybox
/// prints).
fn md5_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("md5sum input");
    let out = child.wait_with_output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}
