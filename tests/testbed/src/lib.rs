//! The testbed: where VMM end-to-end tests and benchmarks run.
//!
//! On these machines `/dev/kvm` is a nested KVM that emulates every guest
//! instruction, far too slow to boot Linux. So a scenario (a shell script plus the
//! binaries and files it needs) runs inside a short-lived L1 VM: QEMU TCG with
//! `-cpu max` (AMD SVM with nested paging), Debian's kernel, and an initramfs with
//! kvm/kvm-amd, giving the scenario a fast `/dev/kvm`. On a host whose KVM is
//! hardware-backed the same scenario runs natively.
//!
//! A scenario sees the same environment either way:
//! - `$BIN`: the scenario's binaries (`$BIN/vmm`, ...)
//! - `$GUEST`: guest artifacts (`vmlinux`, `bzImage`, `boot-initramfs.cpio`)
//! - `$ROOTFS`: a writable copy of the guest rootfs (a disk in the testbed, a file
//!   natively), when the scenario asks for it
//! - `$SCRATCH`: an empty disk, when the scenario asks for one
//! - `$WORK`: an empty writable directory
//! - `$HOST_ADDR`: the host, for scenarios that forward ports (see
//!   [`Scenario::forward_port`])
//!
//! The L1 testbed uses one vCPU: with two, QEMU's multi-threaded TCG could freeze
//! while the L1 kernel live-patched a static key (testbed.md). A console watchdog
//! still tells a hung testbed from a failing test: the L1 init writes a heartbeat
//! every 2 s on a control channel of its own (a virtio serial port apart from
//! the scenario's output, which thus holds exactly what the scenario wrote);
//! silence kills the testbed, which is reported and retried once.

mod hang;
mod mode;
mod native;
mod nested;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use mode::Mode;
use virga_guest_images::ImageSet;

/// The L1 init's control channel (a virtio serial port of its own, apart
/// from the scenario's output): `exit N` when the scenario ended, and a
/// heartbeat every [`HEARTBEAT`] while L1 is alive.
pub const CONTROL_PORT: &str = "virga.control";
pub const CONTROL_EXIT: &str = "exit ";
pub const CONTROL_HEARTBEAT: &str = "heartbeat";
/// `audit N comm=... syscall=...`: system calls a VMM made outside its
/// seccomp filters in its log mode (`VIRGA_VMM_SECCOMP=log` on the host), from
/// L1's kernel log. (A trap in enforce mode ends the VMM with its own message.)
pub const CONTROL_AUDIT: &str = "audit ";
pub const HEARTBEAT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("testbed {scenario}: {what}: {source}")]
    Io {
        scenario: String,
        what: String,
        source: std::io::Error,
    },
    #[error("guest images: {0}")]
    Images(#[from] virga_guest_images::ImageError),
    #[error("testbed {scenario}: hung twice (L1 silent for {silence:?})\n{report}")]
    Hung {
        scenario: String,
        silence: Duration,
        report: String,
    },
    #[error("testbed {scenario}: scenario still running after {timeout:?}\n{report}")]
    Timeout {
        scenario: String,
        timeout: Duration,
        report: String,
    },
    #[error("testbed {scenario}: L1 ended without reporting the scenario's exit status\n{report}")]
    NoExitStatus { scenario: String, report: String },
}

/// What a scenario needs.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    /// Run by `sh`; its exit status is the scenario's.
    pub script: String,
    /// Executables placed in `$BIN` (with their shared libraries).
    pub binaries: Vec<PathBuf>,
    /// Host files or directories the scenario needs at the same absolute path.
    pub host_paths: Vec<PathBuf>,
    /// Host executables the scenario runs from their own absolute path (with their
    /// shared libraries): programs that find their data relative to themselves.
    pub host_binaries: Vec<PathBuf>,
    /// Whether `$ROOTFS` is needed (it is large: only when asked).
    pub rootfs: bool,
    /// An empty disk of this many MiB at `$SCRATCH` (a block device in the
    /// testbed, so O_DIRECT works there).
    pub scratch_mib: Option<u64>,
    /// The scratch disk comes formatted as ext4 (mkfs.ext4 on the host):
    /// `mount $SCRATCH DIR` gives the scenario disk space that is not L1's RAM.
    pub scratch_ext4: bool,
    /// The scratch disk's file, kept by the caller: made (and formatted) when
    /// missing, used as it is otherwise, so that one scenario finds what an
    /// earlier one left (after a power cut). None: a new file per run.
    pub scratch_file: Option<PathBuf>,
    /// Set by the caller to cut L1's power: QEMU is killed (SIGKILL) with
    /// whatever L1 had not written to its disks, and the run ends with
    /// [`Outcome::power_cut`]. The nested testbed only (natively there is no
    /// machine of the scenario's own to cut).
    pub power_switch: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    pub timeout: Duration,
    /// TCP ports of the scenario reachable from the host at the same number
    /// on 127.0.0.1; the scenario reaches the host at `$HOST_ADDR`. Natively
    /// both are simply the host's.
    pub forward_ports: Vec<u16>,
    /// The scenario makes L1 silent itself (the testbed's own test of waking
    /// it): a wake-up is printed but kept as no hang report, so the counts
    /// `cargo xtask test` prints stay those of real freezes.
    pub silent_on_purpose: bool,
}

impl Scenario {
    pub fn new(name: &str, script: &str) -> Self {
        Scenario {
            name: name.to_owned(),
            script: script.to_owned(),
            binaries: Vec::new(),
            host_paths: Vec::new(),
            host_binaries: Vec::new(),
            rootfs: false,
            scratch_mib: None,
            scratch_ext4: false,
            scratch_file: None,
            power_switch: None,
            timeout: Duration::from_secs(300),
            forward_ports: Vec::new(),
            silent_on_purpose: false,
        }
    }

    /// See [`Scenario::silent_on_purpose`].
    pub fn silent_on_purpose(mut self) -> Self {
        self.silent_on_purpose = true;
        self
    }

    /// Makes the scenario's `port` reachable on the host's 127.0.0.1:`port`,
    /// and gives the scenario a route to the host (`$HOST_ADDR`).
    pub fn forward_port(mut self, port: u16) -> Self {
        self.forward_ports.push(port);
        self
    }

    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binaries.push(path.into());
        self
    }

    pub fn binaries(mut self, paths: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        self.binaries.extend(paths.into_iter().map(Into::into));
        self
    }

    pub fn host_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.host_paths.push(path.into());
        self
    }

    pub fn host_paths<P: Into<PathBuf>>(mut self, paths: impl IntoIterator<Item = P>) -> Self {
        self.host_paths.extend(paths.into_iter().map(Into::into));
        self
    }

    pub fn host_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.host_binaries.push(path.into());
        self
    }

    pub fn with_scratch_disk(mut self, mib: u64) -> Self {
        self.scratch_mib = Some(mib);
        self
    }

    /// As [`Scenario::with_scratch_disk`], formatted as ext4.
    pub fn with_scratch_ext4(mut self, mib: u64) -> Self {
        self.scratch_mib = Some(mib);
        self.scratch_ext4 = true;
        self
    }

    /// The scratch disk in `file`, kept between runs (see
    /// [`Scenario::scratch_file`]).
    pub fn with_scratch_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.scratch_file = Some(file.into());
        self
    }

    /// A switch that cuts L1's power when set (see [`Scenario::power_switch`]).
    pub fn with_power_switch(
        mut self,
        switch: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        self.power_switch = Some(switch);
        self
    }

    /// Where the scratch disk is for a run whose own files are in `dir`:
    /// the caller's file when it keeps one.
    pub(crate) fn scratch_path(&self, dir: &Path) -> PathBuf {
        self.scratch_file
            .clone()
            .unwrap_or_else(|| dir.join("scratch.raw"))
    }

    /// Makes the scratch disk at `path` (sparse), formatted if asked; a
    /// kept file that exists is used as it is.
    pub(crate) fn make_scratch(&self, path: &Path) -> Result<(), TestbedError> {
        let Some(mib) = self.scratch_mib else {
            return Ok(());
        };
        if self.scratch_file.is_some() && path.exists() {
            return Ok(());
        }
        std::fs::File::create(path)
            .and_then(|f| f.set_len(mib << 20))
            .map_err(io_error(self, "creating the scratch disk"))?;
        if self.scratch_ext4 {
            let out = std::process::Command::new("mkfs.ext4")
                .args([
                    "-q",
                    "-F",
                    "-E",
                    "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
                ])
                .arg(path)
                .output()
                .map_err(io_error(self, "running mkfs.ext4 for the scratch disk"))?;
            if !out.status.success() {
                return Err(io_error(self, "formatting the scratch disk")(
                    std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
                ));
            }
        }
        Ok(())
    }

    pub fn with_rootfs(mut self) -> Self {
        self.rootfs = true;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[derive(Clone, Debug)]
pub struct Outcome {
    /// The scenario's exit status.
    pub status: i32,
    /// What the scenario printed (stdout and stderr), with CR LF line ends
    /// made plain LF.
    pub output: String,
    pub mode: Mode,
    /// Testbed boots it took (2 when the first one hung).
    pub attempts: u32,
    pub duration: Duration,
    /// The run ended by its power switch (`status` is then -1).
    pub power_cut: bool,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

pub struct Testbed {
    images: ImageSet,
    mode: Mode,
    /// How long the console may stay silent before the testbed counts as hung.
    pub silence_timeout: Duration,
}

impl Testbed {
    pub fn new(images_dir: &Path) -> Result<Self, TestbedError> {
        Ok(Testbed {
            images: virga_guest_images::load(images_dir)?,
            mode: Mode::detect(),
            silence_timeout: Duration::from_secs(30),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn images(&self) -> &ImageSet {
        &self.images
    }

    pub fn run(&self, scenario: &Scenario) -> Result<Outcome, TestbedError> {
        match self.mode {
            Mode::Native => native::run(&self.images, scenario),
            Mode::Nested => nested::run(&self.images, scenario, self.silence_timeout),
        }
    }
}

pub(crate) fn io_error(
    scenario: &Scenario,
    what: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> TestbedError {
    let scenario = scenario.name.clone();
    let what = what.into();
    move |source| TestbedError::Io {
        scenario,
        what,
        source,
    }
}

/// The last `n` lines of `text`, for error messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A scenario's output with terminal line ends made plain: a guest's serial
/// console ends lines with CR LF (and a tty on the way may add a CR of its
/// own), so `\r` before a newline is dropped; every other byte stays.
pub(crate) fn plain_line_ends(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut crs = 0;
    for c in text.chars() {
        match c {
            '\r' => crs += 1,
            '\n' => {
                crs = 0;
                out.push('\n');
            }
            c => {
                out.extend(std::iter::repeat_n('\r', crs));
                crs = 0;
                out.push(c);
            }
        }
    }
    out.extend(std::iter::repeat_n('\r', crs));
    out
}

/// The scenario's exit status, from the L1 init's control channel.
pub(crate) fn exit_status(control: &str) -> Option<i32> {
    control
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(CONTROL_EXIT))
        .and_then(|code| code.trim().parse().ok())
}

/// Where hang reports are kept: `$VIRGA_TESTBED_HANG_DIR` (set by `cargo
/// xtask test`), else the temp directory.
pub const HANG_DIR_ENV: &str = "VIRGA_TESTBED_HANG_DIR";

pub fn hang_dir() -> PathBuf {
    std::env::var_os(HANG_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("virga-testbed-hangs"))
}

/// Keeps a hung testbed's report as a file of its own.
pub(crate) fn keep_hang_report(scenario: &str, report: &str) {
    let dir = hang_dir();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let path = dir.join(format!("{scenario}-{stamp}.log"));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, report)) {
        eprintln!(
            "testbed {scenario}: keeping the hang report in {}: {e}",
            path.display()
        );
    }
}

/// The seccomp audit lines of the control channel, without their prefix.
pub(crate) fn seccomp_audit(control: &str) -> Vec<String> {
    control
        .lines()
        .filter_map(|l| l.strip_prefix(CONTROL_AUDIT))
        .map(str::to_owned)
        .collect()
}

/// Largest piece of one stream a failure report carries (its end is kept).
const REPORT_STREAM_MAX: usize = 1 << 20;

/// A failed testbed's report: every stream it has, whole (up to
/// [`REPORT_STREAM_MAX`] each), so that a panic or a lost line can be read
/// in full rather than from a tail.
pub(crate) fn failure_report(streams: &[(&str, &str)]) -> String {
    let mut report = String::new();
    for (name, text) in streams {
        if text.is_empty() {
            report.push_str(&format!("--- {name}: empty ---\n"));
            continue;
        }
        let mut start = text.len().saturating_sub(REPORT_STREAM_MAX);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        let cut = if start > 0 {
            format!(", first {start} bytes left out")
        } else {
            String::new()
        };
        report.push_str(&format!(
            "--- {name} ({} bytes{cut}) ---\n{}",
            text.len(),
            &text[start..]
        ));
        if !text.ends_with('\n') {
            report.push('\n');
        }
    }
    report.push_str("--- end of report ---");
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_comes_from_the_control_channel() {
        assert_eq!(exit_status("heartbeat\nheartbeat\nexit 3\n"), Some(3));
        assert_eq!(exit_status("heartbeat\nexit 0\nheartbeat\n"), Some(0));
        assert_eq!(exit_status("heartbeat\n"), None);
        assert_eq!(exit_status("exit x\n"), None);
        assert_eq!(
            seccomp_audit("heartbeat\naudit 3 comm=\"vcpu0\" syscall=110\nexit 0\n"),
            vec!["3 comm=\"vcpu0\" syscall=110".to_string()]
        );
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
    }

    #[test]
    fn line_ends_are_made_plain_and_nothing_else_changes() {
        assert_eq!(
            plain_line_ends("a\r\r\nb\r\nc\rd\n\re\r"),
            "a\nb\nc\rd\n\re\r"
        );
    }

    #[test]
    fn failure_reports_carry_every_stream_whole() {
        let output: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let report = failure_report(&[("scenario output", &output), ("L1 kernel console", "")]);
        assert!(report.contains("line 0\n") && report.contains("line 999\n"));
        assert!(report.contains("--- L1 kernel console: empty ---"));
        let huge = "é".repeat(REPORT_STREAM_MAX);
        let report = failure_report(&[("big", &huge)]);
        assert!(report.contains("bytes left out"));
        assert!(report.len() < huge.len());
    }
}
