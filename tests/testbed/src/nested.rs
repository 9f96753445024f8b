//! Running a scenario in an L1 VM under QEMU TCG.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virga_guest_images::cpio_archive::Archive;
use virga_guest_images::modules::module_name;
use virga_guest_images::ImageSet;

use crate::{
    io_error, Mode, Outcome, Scenario, TestbedError, CONTROL_AUDIT, CONTROL_EXIT,
    CONTROL_HEARTBEAT, CONTROL_PORT, HEARTBEAT,
};

pub const QEMU: &str = "qemu-system-x86_64";
/// Enough for the initramfs (binaries, guest kernel) plus several L2 guests.
const L1_MEMORY_MIB: u32 = 3072;
/// Loaded in every testbed, after the vendor's KVM module (virtio-blk for the
/// guest rootfs, attached as a disk rather than packed into the initramfs).
/// virtio_console: scenario output and the init's control channel leave L1 on
/// virtio serial ports (the emulated UART is slow under TCG).
const L1_MODULES: &[&str] = &[
    "tun",
    "vhost_net",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    // netd's datapath: bridges, VXLAN, and security groups (nftables with
    // conntrack, bridged IPv4 through the IP hooks).
    "bridge",
    "vxlan",
    "veth",
    "br_netfilter",
    "nf_tables",
    "nft_ct",
    // `meta` in bridge-family tables is a module of its own.
    "nft_meta_bridge",
    // Routers' and the external gateway's NAT.
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    // Volumes on another host: the kernel's NBD client.
    "nbd",
];
/// The host as QEMU's user-mode network shows it to L1.
const HOST_ADDR: &str = "10.0.2.2";
/// One of these drives KVM, by CPU vendor (TCG's `-cpu max` is AMD).
const L1_KVM_MODULES: &[&str] = &["kvm-amd", "kvm-intel"];

enum Attempt {
    Finished(Outcome),
    Hung(String),
}

pub fn run(
    images: &ImageSet,
    scenario: &Scenario,
    silence: Duration,
) -> Result<Outcome, TestbedError> {
    let temp = tempfile::tempdir().map_err(io_error(scenario, "creating a temp directory"))?;
    let initramfs = temp.path().join("testbed.cpio");
    build_initramfs(images, scenario, &initramfs)?;
    match attempt(images, scenario, &initramfs, silence, 1)? {
        Attempt::Finished(outcome) => Ok(outcome),
        Attempt::Hung(report) => {
            // The one retry: L1 itself went silent (its heartbeat stopped), a
            // freeze of QEMU's TCG or of the L1 kernel under it, not a failing
            // scenario (testbed.md). Counted in the outcome's `attempts`,
            // printed here with the whole first report, and kept as a file
            // (libtest hides a passing test's output; `cargo xtask test`
            // counts these files).
            crate::keep_hang_report(&scenario.name, &report);
            eprintln!(
                "testbed {}: HUNG (L1 silent for {silence:?}); killed it, retrying once in a fresh testbed\n{report}",
                scenario.name,
            );
            match attempt(images, scenario, &initramfs, silence, 2)? {
                Attempt::Finished(outcome) => Ok(outcome),
                Attempt::Hung(report) => Err(TestbedError::Hung {
                    scenario: scenario.name.clone(),
                    silence,
                    report,
                }),
            }
        }
    }
}

/// Kills QEMU however the run ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where one attempt's streams go. Each is a file QEMU writes: a chardev on
/// a file never blocks, so QEMU never drops output the way it does for a
/// virtconsole whose pipe is full (its hvc driver in L1 cannot be
/// throttled).
struct Streams {
    /// The scenario's stdout and stderr, byte for byte (L1's hvc0).
    output: PathBuf,
    /// The L1 init's control channel: heartbeats and the exit status.
    control: PathBuf,
    /// L1's kernel console (ttyS0): early boot, panics, the init's own errors.
    serial: PathBuf,
}

impl Streams {
    fn new(dir: &Path, attempt: u32) -> Self {
        Streams {
            output: dir.join(format!("l1-output-{attempt}.log")),
            control: dir.join(format!("l1-control-{attempt}.log")),
            serial: dir.join(format!("l1-serial-{attempt}.log")),
        }
    }

    /// Bytes written so far to the streams that show L1 is alive.
    fn progress(&self) -> u64 {
        [&self.output, &self.control]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    fn read(path: &Path) -> String {
        std::fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn report(&self, qemu_stderr: &str) -> String {
        crate::failure_report(&[
            ("scenario output", &Self::read(&self.output)),
            ("L1 control channel", &Self::read(&self.control)),
            ("L1 kernel console", &Self::read(&self.serial)),
            ("QEMU stderr", qemu_stderr),
        ])
    }
}

fn attempt(
    images: &ImageSet,
    scenario: &Scenario,
    initramfs: &Path,
    silence: Duration,
    attempt: u32,
) -> Result<Attempt, TestbedError> {
    let started = Instant::now();
    let dir = initramfs.parent().unwrap_or(Path::new("."));
    let streams = Streams::new(dir, attempt);
    let monitor = dir.join(format!("monitor-{attempt}.sock"));
    let mut qemu = Command::new(QEMU);
    // In the order of `disk_env`, so that the names it exports match.
    let mut disk = |path: &Path, opts: &str| {
        let mut drive = std::ffi::OsString::from("file=");
        drive.push(path);
        drive.push(format!(",if=virtio,format=raw{opts}"));
        qemu.arg("-drive").arg(drive);
    };
    if scenario.rootfs {
        // Copy-on-write: the scenario may write it, the image stays as built.
        disk(&images.rootfs(), ",snapshot=on");
    }
    if scenario.scratch_mib.is_some() {
        let scratch = scenario.scratch_path(dir);
        scenario.make_scratch(&scratch)?;
        disk(&scratch, "");
    }
    if !scenario.forward_ports.is_empty() {
        // User-mode networking: L1 is 10.0.2.15 and reaches the host at 10.0.2.2;
        // each forwarded port is the host's 127.0.0.1:PORT.
        let forwards: String = scenario
            .forward_ports
            .iter()
            .map(|p| format!(",hostfwd=tcp:127.0.0.1:{p}-:{p}"))
            .collect();
        qemu.args(["-netdev", &format!("user,id=net0{forwards}")])
            .args(["-device", "virtio-net-pci,netdev=net0,romfile="]);
    }
    let file_chardev = |id: &str, path: &Path| format!("file,id={id},path={}", path.display());
    let mut child = ChildGuard(
        qemu.args(["-accel", "tcg", "-cpu", "max", "-smp", "1"])
            .args(["-m", &L1_MEMORY_MIB.to_string()])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", streams.serial.display()))
            // Asked what L1's CPU is doing when the testbed hangs.
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .args(["-device", "virtio-serial-pci,romfile="])
            // hvc0, the scenario's output: a console port, so the scenario
            // writes to a tty as it would on a terminal (C programs keep
            // line-buffering their output).
            .args(["-chardev", &file_chardev("out", &streams.output)])
            .args(["-device", "virtconsole,chardev=out"])
            .args(["-chardev", &file_chardev("ctl", &streams.control)])
            .args([
                "-device",
                &format!("virtserialport,chardev=ctl,name={CONTROL_PORT}"),
            ])
            .arg("-kernel")
            .arg(images.bzimage())
            .arg("-initrd")
            .arg(initramfs)
            // loglevel=1: the L1 kernel's console is a polled UART, costly
            // under TCG; KVM's notes on every L2 boot stay out, panics print.
            // nokaslr: a hung L1's RIP reads against System.map.
            .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=1 nokaslr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_error(scenario, format!("starting {QEMU}")))?,
    );
    let qemu_stderr = Arc::new(Mutex::new(String::new()));
    let stderr_reader = child.0.stderr.take().map(|stderr| {
        let collected = qemu_stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lock(&collected).push_str(&(line + "\n"));
            }
        })
    });
    let stderr = |reader: Option<std::thread::JoinHandle<()>>| {
        if let Some(r) = reader {
            let _ = r.join();
        }
        lock(&qemu_stderr).clone()
    };

    let verbose = std::env::var_os("VIRGA_TESTBED_VERBOSE").is_some();
    let mut shown = 0u64;
    let mut progress = 0u64;
    let mut last_progress = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let exited = matches!(child.0.try_wait(), Ok(Some(_)));
        if verbose {
            shown = show_new_output(&streams.output, shown);
        }
        if exited {
            break;
        }
        let cut = scenario
            .power_switch
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
        if cut {
            // SIGKILL: QEMU writes nothing more, L1's page cache is gone.
            drop(child);
            let _ = stderr(stderr_reader);
            return Ok(Attempt::Finished(Outcome {
                status: -1,
                output: crate::plain_line_ends(&Streams::read(&streams.output)),
                mode: Mode::Nested,
                attempts: attempt,
                duration: started.elapsed(),
                power_cut: true,
            }));
        }
        let now = streams.progress();
        if now != progress {
            progress = now;
            last_progress = Instant::now();
        }
        if started.elapsed() > scenario.timeout {
            drop(child);
            return Err(TestbedError::Timeout {
                scenario: scenario.name.clone(),
                timeout: scenario.timeout,
                report: streams.report(&stderr(stderr_reader)),
            });
        }
        if last_progress.elapsed() > silence {
            let cpu = crate::hang::cpu_report(&monitor, system_map(images).as_deref());
            // QEMU 7.2's TCG can leave L1's timer interrupt pending for good
            // while L1's CPU runs an L2 guest (README, "Why a testbed"): a
            // fresh interrupt wakes it, and the scenario goes on where it was.
            // Counted and kept like a retry's report.
            if let Some(how) = crate::hang::kick(&monitor, || streams.progress() != progress) {
                let report = format!(
                    "--- L1 silent for {silence:?}, woken by {how} ---\n--- L1's CPU while it was silent (QEMU monitor) ---\n{cpu}"
                );
                if !scenario.silent_on_purpose {
                    crate::keep_hang_report(&format!("{}-woken", scenario.name), &report);
                }
                eprintln!(
                    "testbed {}: HUNG (L1 silent for {silence:?}); woken by {how}, going on\n{report}",
                    scenario.name
                );
                progress = streams.progress();
                last_progress = Instant::now();
                continue;
            }
            drop(child);
            let report = streams.report(&stderr(stderr_reader));
            return Ok(Attempt::Hung(format!(
                "--- L1's CPU when it hung (QEMU monitor) ---\n{cpu}{report}"
            )));
        }
    }
    drop(child);
    let qemu_stderr = stderr(stderr_reader);
    let control = Streams::read(&streams.control);
    let audit = crate::seccomp_audit(&control);
    if !audit.is_empty() {
        eprintln!(
            "testbed {}: system calls outside a VMM's seccomp filters (count, thread, call):\n{}",
            scenario.name,
            audit.join("\n")
        );
    }
    match crate::exit_status(&control) {
        Some(status) => Ok(Attempt::Finished(Outcome {
            status,
            output: crate::plain_line_ends(&Streams::read(&streams.output)),
            mode: Mode::Nested,
            attempts: attempt,
            duration: started.elapsed(),
            power_cut: false,
        })),
        None => Err(TestbedError::NoExitStatus {
            scenario: scenario.name.clone(),
            report: streams.report(&qemu_stderr),
        }),
    }
}

/// L1's System.map (from the kernel package), to name a hung L1's RIP.
fn system_map(images: &ImageSet) -> Option<PathBuf> {
    std::fs::read_dir(images.kernel_root().join("boot"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("System.map-"))
        })
}

/// Prints what the scenario wrote since `from` (VIRGA_TESTBED_VERBOSE);
/// returns how far it has shown.
fn show_new_output(path: &Path, from: u64) -> u64 {
    use std::io::Seek;
    let Ok(mut file) = std::fs::File::open(path) else {
        return from;
    };
    let mut new = Vec::new();
    if file.seek(std::io::SeekFrom::Start(from)).is_err() || file.read_to_end(&mut new).is_err() {
        return from;
    }
    for line in String::from_utf8_lossy(&new).lines() {
        eprintln!("[testbed] {line}");
    }
    from + new.len() as u64
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// PID 1 of the testbed. It only runs the real init ([`l1_setup`]) as a
/// child and powers L1 off afterwards: if init itself exited, the kernel
/// would panic ("Attempted to kill init") and take the report with it.
fn l1_init() -> String {
    r#"#!/bin/busybox sh
/bin/busybox sh /virga/setup
echo "testbed: L1 setup ended with status $? before the scenario finished" > /dev/ttyS0
/bin/busybox poweroff -f
while :; do /bin/busybox sleep 1; done
"#
    .to_owned()
}

/// The user the scenarios' own VMMs run as (outside hostd's range).
const VMM_UID: u32 = 1_999_999;

/// The testbed's setup: mounts, modules, the console and control ports,
/// the scenario, its exit status.
fn l1_setup(seccomp: Option<&str>) -> String {
    // VIRGA_VMM_SECCOMP=log on the host reaches the scenario's VMMs (and
    // turns on the audit collection); only the known values pass.
    let seccomp_env = match seccomp {
        Some(mode @ ("enforce" | "log" | "off")) => format!("export VIRGA_VMM_SECCOMP={mode}\n"),
        _ => String::new(),
    };
    format!(
        r#"/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/sbin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /tmp /run /virga/work
mount -t devpts devpts /dev/pts
if grep -q AuthenticAMD /proc/cpuinfo; then kvm=kvm-amd; else kvm=kvm-intel; fi
for m in $(cat /virga/modules); do
    case $m in kvm-amd|kvm-intel) [ "$m" = "$kvm" ] || continue ;; esac
    insmod /lib/modules/$m.ko
done
# The ports are added asynchronously after virtio_console loads, and a device
# node can exist before its port opens: hvc registers all its minors (hvc0-7)
# before the first port is on its list, and an open in between fails with
# ENODEV. So wait until both open, probing with `true` (a regular builtin:
# a failed redirection only fails the command, where one on `exec` would end
# this shell).
control=
i=0
while [ $i -lt 200 ]; do
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat $p/name 2>/dev/null)" = "{CONTROL_PORT}" ] && control=/dev/${{p##*/}}
    done
    [ -n "$control" ] && true 2>/dev/null > /dev/hvc0 && true 2>/dev/null > $control && break
    sleep 0.1; i=$((i + 1))
done
if ! {{ true > /dev/hvc0 && true > "$control"; }} 2>/dev/null; then
    echo "testbed: the console (/dev/hvc0) or the control port ($control) did not open"
    exit 1
fi
exec > /dev/hvc0 2>&1 3> $control
[ -e /dev/kvm ] || echo "testbed: no /dev/kvm (vendor module $kvm did not load)"
{seccomp_env}# In the VMM's seccomp log mode, the calls outside its filters are in the
# kernel log (audit type 1326): collected as they come, since a busy one could
# wrap the ring, and reported after the scenario.
audit() {{ dmesg -c | grep -o 'comm="[^"]*" exe="[^"]*" sig=[0-9]* arch=[0-9a-f]* syscall=[0-9]*' >> /tmp/seccomp-audit; }}
if [ "$VIRGA_VMM_SECCOMP" = log ]; then
    echo 0 > /proc/sys/kernel/printk_ratelimit
    (while :; do audit; sleep 1; done) &
    AUDIT=$!
fi
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via {HOST_ADDR}
fi
(while :; do echo {CONTROL_HEARTBEAT} >&3; sleep {heartbeat}; done) &
export BIN=/virga/bin GUEST=/virga/guest WORK=/virga/work HOST_ADDR={HOST_ADDR}
. /virga/disks.env
# Every VMM a scenario starts runs jailed, as hostd's do (hostd gives each of
# its VMMs a user of its own instead): disks a scenario writes belong to VMM_UID.
export VMM_UID={VMM_UID}
mkdir -p /tmp/vmm-jail
export VIRGA_VMM_JAIL=$VMM_UID:$VMM_UID,root=/tmp/vmm-jail
for disk in $ROOTFS $SCRATCH; do chown $VMM_UID:$VMM_UID $disk; done
cd /virga/work
sh /virga/scenario < /dev/null 2>&1 3>&-
status=$?
if [ -n "$AUDIT" ]; then
    kill $AUDIT; wait $AUDIT 2>/dev/null
    audit
    sort /tmp/seccomp-audit 2>/dev/null | uniq -c | sed 's/^ */{CONTROL_AUDIT}/' >&3
fi
echo "{CONTROL_EXIT}$status" >&3
poweroff -f
"#,
        heartbeat = HEARTBEAT.as_secs(),
        VMM_UID = VMM_UID,
    )
}

/// Shared libraries a dynamically linked executable needs, by absolute path.
fn shared_libraries(binary: &Path) -> std::io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    // ldd fails for static binaries ("not a dynamic executable"): nothing to copy.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// Where the scenario's disks appear in L1: attached in this order, they are
/// vda, vdb, ...
fn disk_env(scenario: &Scenario) -> String {
    let mut vars = Vec::new();
    if scenario.rootfs {
        vars.push("ROOTFS");
    }
    if scenario.scratch_mib.is_some() {
        vars.push("SCRATCH");
    }
    vars.iter()
        .zip(b'a'..)
        .map(|(var, letter)| format!("export {var}=/dev/vd{}\n", letter as char))
        .collect()
}

fn build_initramfs(
    images: &ImageSet,
    scenario: &Scenario,
    path: &Path,
) -> Result<(), TestbedError> {
    let modules = images.modules()?;
    let mut wanted = Vec::new();
    for m in L1_KVM_MODULES.iter().chain(L1_MODULES) {
        // A module missing from this kernel build is skipped, not fatal.
        if modules.load_order(&[m]).is_ok() {
            wanted.push(*m);
        }
    }
    let module_files = modules
        .load_order(&wanted)
        .map_err(virga_guest_images::ImageError::from)?;

    let mut host_files: BTreeSet<PathBuf> = BTreeSet::new();
    for b in &scenario.host_binaries {
        host_files.insert(b.clone());
    }
    for b in scenario.binaries.iter().chain(&scenario.host_binaries) {
        host_files.extend(
            shared_libraries(b).map_err(io_error(scenario, format!("ldd {}", b.display())))?,
        );
    }
    for p in &scenario.host_paths {
        collect_files(p, &mut host_files)
            .map_err(io_error(scenario, format!("reading {}", p.display())))?;
    }

    let file =
        std::fs::File::create(path).map_err(io_error(scenario, "writing the testbed initramfs"))?;
    let write = || -> std::io::Result<()> {
        let mut a = Archive::new(std::io::BufWriter::new(file));
        let mut dirs = Vec::new();
        for d in [
            "/bin",
            "/proc",
            "/sys",
            "/dev",
            "/tmp",
            "/lib/modules",
            "/virga/bin",
            "/virga/guest",
        ] {
            a.dirs(&mut dirs, d)?;
        }
        a.host_file("/bin/busybox", &images.busybox())?;
        let mut names = Vec::new();
        for f in &module_files {
            let name = module_name(&f.to_string_lossy());
            a.host_file(&format!("/lib/modules/{name}.ko"), f)?;
            names.push(name);
        }
        a.file("/virga/modules", 0o644, names.join("\n").as_bytes())?;
        for (name, src) in [
            ("vmlinux", images.vmlinux()),
            ("bzImage", images.bzimage()),
            ("boot-initramfs.cpio", images.boot_initramfs()),
        ] {
            a.host_file(&format!("/virga/guest/{name}"), &src)?;
        }
        for b in &scenario.binaries {
            let name = b.file_name().and_then(|n| n.to_str()).unwrap_or("binary");
            a.host_file(&format!("/virga/bin/{name}"), b)?;
        }
        for f in &host_files {
            let name = f.to_string_lossy();
            if let Some(parent) = f.parent() {
                a.dirs(&mut dirs, &parent.to_string_lossy())?;
            }
            a.host_file(&name, f)?;
        }
        a.file("/virga/scenario", 0o755, scenario.script.as_bytes())?;
        a.file("/virga/disks.env", 0o644, disk_env(scenario).as_bytes())?;
        a.file("/init", 0o755, l1_init().as_bytes())?;
        let seccomp = std::env::var("VIRGA_VMM_SECCOMP").ok();
        a.file(
            "/virga/setup",
            0o644,
            l1_setup(seccomp.as_deref()).as_bytes(),
        )?;
        use std::io::Write;
        a.finish()?.flush()
    };
    write().map_err(io_error(scenario, "writing the testbed initramfs"))
}

/// Regular files under `path` (itself, if it is one), following the path's own
/// symlinks so that the file lands where the scenario looks for it.
fn collect_files(path: &Path, out: &mut BTreeSet<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?.path();
            // A dangling link inside a directory (an optional package's file) is skipped.
            if entry.exists() {
                collect_files(&entry, out)?;
            }
        }
    } else if meta.is_file() {
        out.insert(path.to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_never_exits_and_setup_reports_on_its_own_channel() {
        let init = l1_init();
        assert!(init.contains("sh /virga/setup"));
        assert!(init
            .trim_end()
            .ends_with("while :; do /bin/busybox sleep 1; done"));
        let setup = l1_setup(None);
        assert!(!setup.contains("export VIRGA_VMM_SECCOMP"));
        assert!(l1_setup(Some("log")).contains("export VIRGA_VMM_SECCOMP=log\n"));
        assert!(!l1_setup(Some("log; rm -rf /")).contains("rm -rf"));
        assert!(setup.contains(&format!("echo \"{CONTROL_EXIT}$status\" >&3")));
        assert!(setup.contains(&format!("echo {CONTROL_HEARTBEAT} >&3")));
        assert!(setup.contains("sh /virga/scenario < /dev/null 2>&1 3>&-"));
        // Nothing is written to the scenario's output but what it writes.
        assert!(!setup.contains("HEARTBEAT") && !setup.contains("heartbeat >&1"));
    }

    #[test]
    fn disks_are_named_in_attach_order() {
        let s = Scenario::new("t", "true")
            .with_rootfs()
            .with_scratch_disk(64);
        assert_eq!(
            disk_env(&s),
            "export ROOTFS=/dev/vda\nexport SCRATCH=/dev/vdb\n"
        );
        let s = Scenario::new("t", "true").with_scratch_disk(64);
        assert_eq!(disk_env(&s), "export SCRATCH=/dev/vda\n");
        assert_eq!(disk_env(&Scenario::new("t", "true")), "");
    }

    #[test]
    fn finds_shared_libraries_of_a_dynamic_binary() {
        let libs = shared_libraries(Path::new("/bin/sh")).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
    }
}
