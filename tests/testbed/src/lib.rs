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
//! still tells a hung testbed from a failing test: the L1 init prints a heartbeat
//! every 2 s; silence kills the testbed, which is reported and retried once.

mod mode;
mod native;
mod nested;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use mode::Mode;
use virga_guest_images::ImageSet;

/// Printed by the testbed with the scenario's exit status.
pub const EXIT_MARKER: &str = "VIRGA-TESTBED-EXIT=";
/// Printed by the L1 init every [`HEARTBEAT`] while the testbed is alive.
pub const HEARTBEAT_LINE: &str = "virga-testbed-heartbeat";
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
    #[error(
        "testbed {scenario}: hung twice (console silent for {silence:?}); last output:\n{tail}"
    )]
    Hung {
        scenario: String,
        silence: Duration,
        tail: String,
    },
    #[error("testbed {scenario}: scenario still running after {timeout:?}; last output:\n{tail}")]
    Timeout {
        scenario: String,
        timeout: Duration,
        tail: String,
    },
    #[error("testbed {scenario}: ended without reporting an exit status (kernel panic?); last output:\n{tail}")]
    NoExitStatus { scenario: String, tail: String },
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
    pub timeout: Duration,
    /// TCP ports of the scenario reachable from the host at the same number
    /// on 127.0.0.1; the scenario reaches the host at `$HOST_ADDR`. Natively
    /// both are simply the host's.
    pub forward_ports: Vec<u16>,
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
            timeout: Duration::from_secs(300),
            forward_ports: Vec::new(),
        }
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
    /// What the scenario printed (testbed boot noise and heartbeats removed).
    pub output: String,
    pub mode: Mode,
    /// Testbed boots it took (2 when the first one hung).
    pub attempts: u32,
    pub duration: Duration,
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

/// The last `n` lines of `text` (heartbeats left out), for error messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains(HEARTBEAT_LINE))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Finds the scenario's exit status and strips testbed noise from the console.
pub(crate) fn parse_console(console: &str) -> (Option<i32>, String) {
    let mut status = None;
    let mut output = String::new();
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(code) = line
            .find(EXIT_MARKER)
            .map(|i| &line[i + EXIT_MARKER.len()..])
        {
            status = code.trim().parse().ok();
        } else if !line.contains(HEARTBEAT_LINE) {
            output.push_str(line);
            output.push('\n');
        }
    }
    (status, output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_parsing_finds_status_and_drops_heartbeats() {
        let console = "boot noise\r\nvirga-testbed-heartbeat\nhello\nVIRGA-TESTBED-EXIT=3\r\n";
        let (status, output) = parse_console(console);
        assert_eq!(status, Some(3));
        assert_eq!(output, "boot noise\nhello\n");
        assert_eq!(parse_console("no status\n").0, None);
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
    }
}
