//! Helpers for the end-to-end tests: where the binaries and images are, running a
//! scenario, and reading the guest's boot marker.
//!
//! `cargo xtask test` builds everything and sets `VIRGA_VMM_BIN` and `VIRGA_IMAGES`;
//! without them the tests look in `target/release` and `target/images`.

pub mod cloud;

use std::path::{Path, PathBuf};

use virga_testbed::{Outcome, Scenario, Testbed};

pub use virga_guest_images::initramfs::BOOT_MARKER;

/// The guest command line every test boots with: quiet, so serial output (one exit
/// per byte) does not dominate; no AUX/mux probing of the i8042.
pub const CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.dumbkbd";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn from_env_or(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

pub fn vmm_bin() -> PathBuf {
    from_env_or("VIRGA_VMM_BIN", workspace().join("target/release/vmm"))
}

pub fn vmmctl_bin() -> PathBuf {
    vmm_bin().with_file_name("vmmctl")
}

/// hostd, its client and its boot picker, built next to the vmm.
pub fn hostd_bins() -> [PathBuf; 3] {
    [
        vmm_bin().with_file_name("hostd"),
        vmm_bin().with_file_name("hostctl"),
        vmm_bin().with_file_name("virga-bootpick"),
    ]
}

/// The host programs hostd runs besides its own (formatting a flavor's
/// ephemeral and swap disks), at their paths here: a testbed brings them
/// with their libraries.
pub fn hostd_host_programs() -> Vec<PathBuf> {
    ["mke2fs", "mkswap"]
        .iter()
        .filter_map(|p| {
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(p))
                .find(|p| p.exists())
        })
        .collect()
}

/// netd, built next to the vmm.
pub fn netd_bin() -> PathBuf {
    vmm_bin().with_file_name("netd")
}

/// storaged, built beside the VMM (`cargo xtask test` builds it).
pub fn storaged_bin() -> PathBuf {
    vmm_bin().with_file_name("storaged")
}

/// The host programs storaged runs (`qemu-img`, converting qcow2 images to
/// raw), at their paths here.
pub fn storaged_host_programs() -> Vec<PathBuf> {
    ["/usr/bin/qemu-img"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect()
}

/// The host programs netd runs (`nft`, for its security groups).
pub fn netd_host_programs() -> Vec<PathBuf> {
    ["/usr/sbin/nft", "/sbin/nft"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .take(1)
        .collect()
}

/// The lines of a testbed script that start netd for host `host_id` (the
/// testbed's underlay address is its tunnel endpoint), as a gateway host
/// that is also the external subnets' gateway: the testbed plays the
/// outside world of its routers. `$NETD` is its pid.
pub fn netd_script(host_id: &str, token: &str, controller_port: u16) -> String {
    format!(
        r#"cat > $WORK/netd.toml <<EOF
host_id = "{host_id}"
controller_url = "http://$HOST_ADDR:{controller_port}"
token = "{token}"
vtep = "10.0.2.15"
underlay_dev = "eth0"
sync_ms = 500
gateway = true
external_gateway_on_host = true
EOF
$BIN/netd --config $WORK/netd.toml 2> $WORK/netd.log &
NETD=$!
"#
    )
}

/// Shell functions for scenarios that watch a guest's console in `$log`:
/// `wait_for TEXT` (until it shows), `wait_n TEXT N` (until it has shown N
/// times); each waits up to three minutes, then prints `TIMEOUT TEXT`.
pub const CONSOLE_WAITS: &str = r#"wait_for() {
    i=0; while ! grep -q "$1" $log && [ $i -lt 1800 ]; do sleep 0.1; i=$((i + 1)); done
    grep -q "$1" $log || echo "TIMEOUT $1"
}
wait_n() {
    i=0; while [ $(grep -c "$1" $log) -lt $2 ] && [ $i -lt 1800 ]; do sleep 0.1; i=$((i + 1)); done
    [ $(grep -c "$1" $log) -ge $2 ] || echo "TIMEOUT $1"
}
"#;

/// The controller, built next to the vmm.
pub fn controller_bin() -> PathBuf {
    vmm_bin().with_file_name("controller")
}

pub fn images_dir() -> PathBuf {
    from_env_or("VIRGA_IMAGES", workspace().join("target/images"))
}

pub fn testbed() -> Testbed {
    Testbed::new(&images_dir())
        .unwrap_or_else(|e| panic!("no testbed: {e} (run the tests with `cargo xtask test`)"))
}

/// Runs `script` with the vmm, vmmctl, hostd and hostctl in `$BIN` and `$CMDLINE`
/// set; prints what
/// it printed (the guest's console shows in the test log) and returns the outcome.
pub fn run(name: &str, script: &str) -> Outcome {
    run_scenario(name, script, |s| s)
}

/// As [`run`], with a writable copy of the guest rootfs at `$ROOTFS`.
pub fn run_with_rootfs(name: &str, script: &str) -> Outcome {
    run_scenario(name, script, Scenario::with_rootfs)
}

/// As [`run`], the scenario changed by `adjust` first (host binaries,
/// disks, a longer timeout).
pub fn run_scenario(
    name: &str,
    script: &str,
    adjust: impl FnOnce(Scenario) -> Scenario,
) -> Outcome {
    let script = format!("CMDLINE='{CMDLINE}'\n{script}");
    let scenario = adjust(
        Scenario::new(name, &script)
            .binary(vmm_bin())
            .binary(vmmctl_bin())
            .binaries(hostd_bins()),
    );
    let tb = testbed();
    let outcome = tb
        .run(&scenario)
        .unwrap_or_else(|e| panic!("scenario {name} did not complete: {e}"));
    println!(
        "--- scenario {name} ({}, {} attempt(s), {:.1} s, exit {}) ---\n{}",
        outcome.mode.as_str(),
        outcome.attempts,
        outcome.duration.as_secs_f64(),
        outcome.status,
        outcome.output
    );
    outcome
}

/// A raw GPT disk laid out as Debian's cloud images are (an ext4 root with
/// `/boot/grub/grub.cfg`), whose boot entry names the test kernel and
/// initramfs with [`CMDLINE`] and `extra` (e.g. `virga.mode=cloud`); without
/// `bootable`, the files the entry names are missing.
pub fn cloud_disk(dest: &Path, bootable: bool, extra: &str) {
    use virga_test_support::disks::{debian_grub, ext4_of, gpt_disk, File, ROOT_UUID};
    let images = virga_guest_images::load(&images_dir()).expect("guest images");
    let release = images.manifest.kernel_release.clone();
    let kernel = std::fs::read(images.bzimage()).expect("bzImage");
    let initrd = std::fs::read(images.boot_initramfs()).expect("initramfs");
    let grub = debian_grub(ROOT_UUID, "/boot", &release).replace(
        "root=PARTUUID=1234 ro console=ttyS0,115200",
        format!("{CMDLINE} {extra}").trim(),
    );
    let (kernel_path, initrd_path) = (
        format!("/boot/vmlinuz-{release}"),
        format!("/boot/initrd.img-{release}"),
    );
    let mut nodes = vec![
        File("/etc/os-release", b"ID=debian\n"),
        File("/boot/grub/grub.cfg", grub.as_bytes()),
    ];
    if bootable {
        nodes.push(File(&kernel_path, &kernel));
        nodes.push(File(&initrd_path, &initrd));
    }
    let fs = ext4_of(48, ROOT_UUID, &nodes).expect("mkfs.ext4");
    let disk = gpt_disk(&[fs]);
    std::fs::copy(disk.path(), dest).expect("copy the disk");
}

/// What the boot-test init reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Marker {
    pub uptime_s: f64,
    pub cpus: u32,
    pub memtotal_kib: u64,
}

pub fn markers(output: &str) -> Vec<Marker> {
    output
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find(BOOT_MARKER)? + BOOT_MARKER.len()..];
            let field = |name: &str| {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            };
            Some(Marker {
                uptime_s: field("uptime_s")?.parse().ok()?,
                cpus: field("cpus")?.parse().ok()?,
                memtotal_kib: field("memtotal_kib")?.parse().ok()?,
            })
        })
        .collect()
}

/// The value of `KEY=value` on the line that starts with `KEY=`.
pub fn value<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_markers_and_values() {
        let out = "x\nVIRGA-BOOT-OK uptime_s=1.25 cpus=2 memtotal_kib=223516\nRC=0\n";
        assert_eq!(
            markers(out),
            vec![Marker {
                uptime_s: 1.25,
                cpus: 2,
                memtotal_kib: 223516
            }]
        );
        assert_eq!(value(out, "RC"), Some("0"));
        assert!(markers("VIRGA-BOOT-OK cpus=x").is_empty());
    }
}
