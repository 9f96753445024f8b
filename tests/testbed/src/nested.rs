//! Running a scenario in an L1 VM under QEMU TCG.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virga_guest_images::cpio_archive::Archive;
use virga_guest_images::modules::module_name;
use virga_guest_images::ImageSet;

use crate::{
    io_error, parse_console, tail, Mode, Outcome, Scenario, TestbedError, EXIT_MARKER, HEARTBEAT,
    HEARTBEAT_LINE,
};

pub const QEMU: &str = "qemu-system-x86_64";
/// Enough for the initramfs (binaries, guest kernel) plus several L2 guests.
const L1_MEMORY_MIB: u32 = 3072;
/// Loaded in every testbed, after the vendor's KVM module (virtio-blk for the
/// guest rootfs, attached as a disk rather than packed into the initramfs).
/// virtio_console: scenario output leaves L1 on a virtio console (the
/// emulated UART is slow under TCG and drops bytes when the host falls behind).
const L1_MODULES: &[&str] = &[
    "tun",
    "vhost_net",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
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
        Attempt::Hung(console) => {
            eprintln!(
                "testbed {}: HUNG (console silent for {silence:?}); killed it, retrying in a fresh testbed\n{}",
                scenario.name,
                tail(&console, 10)
            );
            match attempt(images, scenario, &initramfs, silence, 2)? {
                Attempt::Finished(outcome) => Ok(outcome),
                Attempt::Hung(console) => Err(TestbedError::Hung {
                    scenario: scenario.name.clone(),
                    silence,
                    tail: tail(&console, 30),
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

fn attempt(
    images: &ImageSet,
    scenario: &Scenario,
    initramfs: &Path,
    silence: Duration,
    attempt: u32,
) -> Result<Attempt, TestbedError> {
    let started = Instant::now();
    let serial_log = initramfs.with_file_name(format!("l1-serial-{attempt}.log"));
    // The virtio console writes to a file the host follows, not to a pipe:
    // QEMU drops a virtconsole's output whenever its chardev would block
    // (its hvc driver in L1 cannot be throttled), so a reader that fell
    // 64 KiB behind silently lost scenario output. A file never blocks.
    let console_out = initramfs.with_file_name(format!("l1-console-{attempt}.out"));
    let console_file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&console_out)
        .map_err(io_error(scenario, "creating the console file"))?;
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
    if let Some(mib) = scenario.scratch_mib {
        let scratch = initramfs.with_file_name("scratch.raw");
        std::fs::File::create(&scratch)
            .and_then(|f| f.set_len(mib << 20))
            .map_err(io_error(scenario, "creating the scratch disk"))?;
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
            // The kernel's console (early boot, panics) goes to a file; the
            // scenario's output to stdout through a virtio console.
            .arg("-serial")
            .arg(format!("file:{}", serial_log.display()))
            .args(["-monitor", "none"])
            .args(["-device", "virtio-serial-pci,romfile="])
            .arg("-chardev")
            .arg(format!("file,id=out,path={}", console_out.display()))
            .args(["-device", "virtconsole,chardev=out"])
            .arg("-kernel")
            .arg(images.bzimage())
            .arg("-initrd")
            .arg(initramfs)
            // loglevel=1: the L1 kernel's console is a polled UART, costly
            // under TCG; KVM's notes on every L2 boot stay out, panics print.
            .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_error(scenario, format!("starting {QEMU}")))?,
    );

    let console = Arc::new(Mutex::new(String::new()));
    let last_output = Arc::new(Mutex::new(Instant::now()));
    let verbose = std::env::var_os("VIRGA_TESTBED_VERBOSE").is_some();
    let mut readers = Vec::new();
    // However this attempt ends, the console follower stops after a last read.
    let finished = FinishOnDrop(Arc::new(AtomicBool::new(false)));
    let follower = ConsoleFollower {
        file: console_file,
        finished: finished.0.clone(),
    };
    for stream in [
        Some(Box::new(follower) as Box<dyn std::io::Read + Send>),
        child
            .0
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let (console, last_output) = (console.clone(), last_output.clone());
        readers.push(std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let text = String::from_utf8_lossy(&line);
                if verbose {
                    eprint!("[testbed] {text}");
                }
                lock(&console).push_str(&text);
                *lock(&last_output) = Instant::now();
                line.clear();
            }
        }));
    }

    loop {
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(Some(_)) = child.0.try_wait() {
            break;
        }
        if started.elapsed() > scenario.timeout {
            drop(child);
            return Err(TestbedError::Timeout {
                scenario: scenario.name.clone(),
                timeout: scenario.timeout,
                tail: tail(&lock(&console), 30) + &serial_tail(&serial_log),
            });
        }
        if lock(&last_output).elapsed() > silence {
            drop(child);
            let text = lock(&console).clone() + &serial_tail(&serial_log);
            return Ok(Attempt::Hung(text));
        }
    }
    drop(finished);
    for r in readers {
        let _ = r.join();
    }
    let text = lock(&console).clone();
    match parse_console(&text) {
        (Some(status), output) => Ok(Attempt::Finished(Outcome {
            status,
            output,
            mode: Mode::Nested,
            attempts: attempt,
            duration: started.elapsed(),
        })),
        (None, _) => Err(TestbedError::NoExitStatus {
            scenario: scenario.name.clone(),
            tail: tail(&text, 30) + &serial_tail(&serial_log),
        }),
    }
}

/// Reads a file QEMU is still writing, as `tail -f` would: at its end, waits
/// for more until told the writer is gone, then reads what is left and ends.
struct ConsoleFollower {
    file: std::fs::File,
    finished: Arc<AtomicBool>,
}

impl Read for ConsoleFollower {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            // Checked before reading: a read that finds nothing after the
            // writer is gone means there is nothing more to come.
            let finished = self.finished.load(Ordering::Acquire);
            let n = self.file.read(buf)?;
            if n > 0 || finished {
                return Ok(n);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sets the flag when dropped (on every way out of an attempt).
struct FinishOnDrop(Arc<AtomicBool>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The end of L1's kernel console, for reports of a testbed that failed.
fn serial_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) if !bytes.is_empty() => format!(
            "\n--- L1 kernel console ---\n{}",
            tail(&String::from_utf8_lossy(&bytes), 15)
        ),
        _ => String::new(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn l1_init() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
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
# From here on, everything goes out through the virtio console.
i=0; while [ ! -e /dev/hvc0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ -e /dev/hvc0 ]; then exec > /dev/hvc0 2>&1; else echo "testbed: no /dev/hvc0"; fi
[ -e /dev/kvm ] || echo "testbed: no /dev/kvm (vendor module $kvm did not load)"
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via {HOST_ADDR}
fi
(while :; do sleep {heartbeat}; echo {HEARTBEAT_LINE}; done) &
export BIN=/virga/bin GUEST=/virga/guest WORK=/virga/work HOST_ADDR={HOST_ADDR}
. /virga/disks.env
cd /virga/work
sh /virga/scenario < /dev/null 2>&1
echo "{EXIT_MARKER}$?"
poweroff -f
"#,
        heartbeat = HEARTBEAT.as_secs()
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
    use std::io::Write;

    #[test]
    fn console_follower_reads_what_arrives_until_the_writer_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.out");
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let finished = FinishOnDrop(Arc::new(AtomicBool::new(false)));
        let follower = ConsoleFollower {
            file,
            finished: finished.0.clone(),
        };
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(follower).lines() {
                lines.push(line.unwrap());
            }
            lines
        });
        // Written in pieces, with pauses the follower must wait through.
        let mut writer = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        for i in 0..5 {
            write!(writer, "line {i}").unwrap();
            std::thread::sleep(Duration::from_millis(30));
            writeln!(writer).unwrap();
        }
        write!(writer, "last, without a newline").unwrap();
        drop(finished);
        let lines = reader.join().unwrap();
        assert_eq!(lines.len(), 6, "{lines:?}");
        assert_eq!(lines[4], "line 4");
        assert_eq!(lines[5], "last, without a newline");
    }

    #[test]
    fn init_reports_exit_status_and_heartbeats() {
        let init = l1_init();
        assert!(init.contains(&format!("echo \"{EXIT_MARKER}$?\"")));
        assert!(init.contains(HEARTBEAT_LINE));
        assert!(init.contains("sh /virga/scenario"));
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
