//! One boot of a variant under the VMM, timed from the outside and split
//! into phases:
//!
//! - the tool reads CLOCK_MONOTONIC, then starts the VMM;
//! - the VMM's `/metrics` names the moment its vCPUs started on the same
//!   clock (the guest's first instruction) and counts vCPU exits by reason;
//! - console lines are timed as they arrive; the kernel's "Run /init" line
//!   (when printed) and the marker split the guest's part;
//! - at the marker the VMM is stopped: a boot ends there.
//!
//! A disk image's kernel is picked once per run by `virga-bootpick` (the
//! sandboxed picker hostd runs), and each boot gets a fresh copy-on-write
//! root disk over the image (hostd's `root_disk`), so no boot sees what an
//! earlier one wrote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use crate::console::{self, Event};
use crate::samples::{Boot, Phase, Ready, Source, Variant};

/// How long the VMM may take to answer `/metrics` at a phase's edge; a
/// guest powering off at its marker may take the VMM with it first.
const METRICS_TIMEOUT: Duration = Duration::from_secs(2);
/// Console and stderr lines kept to explain a failed boot.
const TAIL_LINES: usize = 15;
/// Initcalls kept per boot (`initcall_debug`).
const MAX_INITCALLS: usize = 1000;
/// A console line longer than this is cut (a guest may print anything).
const MAX_LINE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("starting {vmm}")]
    Spawn { vmm: String, source: std::io::Error },
    #[error("the VMM ended ({status}) before the marker {marker:?}; its last lines:\n{tail}")]
    EndedEarly {
        status: String,
        marker: String,
        tail: String,
    },
    #[error("no marker {marker:?} within {timeout:?}; the console's last lines:\n{tail}\n{stuck}")]
    Timeout {
        marker: String,
        timeout: Duration,
        tail: String,
        /// What the still-running VMM said of its vCPUs, and its stderr.
        stuck: String,
    },
    #[error("reading the VMM's console: {0}")]
    Console(std::io::Error),
    #[error("{image}: {why}")]
    Image { image: String, why: String },
}

/// Where and how boots run.
pub struct Launcher {
    pub vmm: PathBuf,
    /// The boot picker, for images.
    pub bootpick: PathBuf,
    /// Holds each boot's API socket.
    pub dir: PathBuf,
    pub timeout: Duration,
}

/// What the VMM's `/metrics` says, as far as a boot needs it.
#[derive(Clone, Debug, Default, serde::Deserialize)]
struct Metrics {
    #[serde(default)]
    boot_started_monotonic_us: u64,
    #[serde(default)]
    vcpu_exits: BTreeMap<String, u64>,
    #[serde(default)]
    per_vcpu_exits: Vec<BTreeMap<String, u64>>,
}

/// A guest that never reached its marker, placed: each vCPU's exits to the
/// VMM over one second of it still running (none: halted, waiting for an
/// interrupt the in-kernel LAPIC never raised, or spinning in its own code;
/// port or MMIO exits: polling a device).
async fn stuck_report(socket: &Path) -> String {
    let Some(first) = metrics(socket).await else {
        return "the VMM did not answer /metrics".into();
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let Some(second) = metrics(socket).await else {
        return "the VMM stopped answering /metrics".into();
    };
    let mut report = String::from("vCPU exits in the last second of the wait:");
    for (i, (a, b)) in first
        .per_vcpu_exits
        .iter()
        .zip(&second.per_vcpu_exits)
        .enumerate()
    {
        let moved: Vec<String> = exits_between(b, a)
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        let moved = if moved.is_empty() {
            "none".to_owned()
        } else {
            moved.join(", ")
        };
        report.push_str(&format!("\n  vCPU {i}: {moved}"));
    }
    report
}

/// CLOCK_MONOTONIC in µs: the clock the VMM names its guest's start on.
fn monotonic_us() -> u64 {
    vmm::vm::monotonic_now().as_micros() as u64
}

async fn metrics(socket: &Path) -> Option<Metrics> {
    let (status, body) = vmm::api_client::request_within(
        METRICS_TIMEOUT,
        socket,
        hyper::Method::GET,
        "/metrics",
        None,
    )
    .await
    .ok()?;
    (status == 200)
        .then(|| serde_json::from_slice(&body).ok())
        .flatten()
}

/// The jail the VMM will run in: a `--jail` among its flags, else the
/// environment's `VIRGA_VMM_JAIL` (which the VMM reads too).
fn jail_of(vmm_args: &[String], env: Option<String>) -> Option<vmm::jail::JailConfig> {
    let flag = vmm_args
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--jail") {
            Some("") => vmm_args.get(i + 1).cloned(),
            Some(rest) => rest.strip_prefix('=').map(str::to_owned),
            None => None,
        });
    flag.or(env)
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
}

/// `a - b` per reason.
fn exits_between(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    a.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(b.get(k).copied().unwrap_or(0))))
        .collect()
}

/// The last [`TAIL_LINES`] lines of the VMM's stderr, oldest first.
fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

fn push_tail(tail: &mut Vec<String>, line: String) {
    if tail.len() == TAIL_LINES {
        tail.remove(0);
    }
    tail.push(line);
}

/// qcow2's magic: such an image is refused with the way out.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

impl Launcher {
    /// Makes `v` ready to boot: for an image, picks its kernel, initramfs
    /// and command line into a directory of its own (`k` names it).
    pub async fn prepare(&self, v: &Variant, k: usize) -> Result<Ready, BootError> {
        let image = match &v.source {
            Source::Kernel { kernel, initramfs } => {
                return Ok(Ready {
                    kernel: kernel.clone(),
                    initramfs: initramfs.clone(),
                    cmdline: v.cmdline.clone().unwrap_or_default(),
                    image: None,
                    vmm: v.vmm.clone().unwrap_or_else(|| self.vmm.clone()),
                    variant: v.clone(),
                })
            }
            Source::Image(image) => image,
        };
        let bad = |why: String| BootError::Image {
            image: image.display().to_string(),
            why,
        };
        let mut magic = [0u8; 4];
        let head = std::fs::File::open(image)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
        match head {
            Ok(()) if &magic == QCOW2_MAGIC => {
                return Err(bad(
                    "a qcow2 image; boot a raw copy (qemu-img convert -O raw IMAGE RAW)".into(),
                ))
            }
            Ok(()) => {}
            Err(e) => return Err(bad(e.to_string())),
        }
        let picked = hostd::boot_picker::pick(
            &self.bootpick,
            image,
            &[],
            &self.dir.join(format!("picked-{k}")),
        )
        .await
        .map_err(|e| bad(e.to_string()))?;
        Ok(Ready {
            kernel: picked.kernel,
            initramfs: picked.initramfs,
            cmdline: v.cmdline.clone().unwrap_or(picked.cmdline),
            image: Some(image.clone()),
            vmm: v.vmm.clone().unwrap_or_else(|| self.vmm.clone()),
            variant: v.clone(),
        })
    }

    /// Boots `r` once (`n` names its socket and root disk).
    pub async fn boot(&self, r: &Ready, n: usize) -> Result<Boot, BootError> {
        let root_dir = self.dir.join(format!("root-{n}"));
        let result = self.boot_with_root(r, n, &root_dir).await;
        let _ = std::fs::remove_dir_all(&root_dir);
        result
    }

    async fn boot_with_root(
        &self,
        r: &Ready,
        n: usize,
        root_dir: &Path,
    ) -> Result<Boot, BootError> {
        let v = &r.variant;
        let socket = self.dir.join(format!("boot-{n}.sock"));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(&r.vmm);
        cmd.arg("--kernel").arg(&r.kernel);
        if let Some(i) = &r.initramfs {
            cmd.arg("--initramfs").arg(i);
        }
        if let Some(image) = &r.image {
            let bad = |e: std::io::Error| BootError::Image {
                image: image.display().to_string(),
                why: format!("making a root disk in {}: {e}", root_dir.display()),
            };
            std::fs::create_dir_all(root_dir).map_err(bad)?;
            let (root, _) = hostd::root_disk::make(image, root_dir, None).map_err(bad)?;
            // A jailed VMM runs as the jail's user, as hostd's do: the root
            // disk must be that user's to write.
            if let Some(jail) = jail_of(&v.vmm_args, std::env::var("VIRGA_VMM_JAIL").ok()) {
                std::os::unix::fs::chown(root.path(), Some(jail.uid), Some(jail.gid))
                    .map_err(bad)?;
            }
            let disk = if root.is_overlay() {
                format!("path={},base={}", root.path().display(), image.display())
            } else {
                format!("path={}", root.path().display())
            };
            cmd.arg("--disk").arg(disk);
        }
        cmd.arg("--cmdline")
            .arg(&r.cmdline)
            .arg("--vcpus")
            .arg(v.vcpus.to_string())
            .arg("--memory-mib")
            .arg(v.memory_mib.to_string())
            .arg("--serial")
            .arg("stdout")
            .arg("--api-socket")
            .arg(&socket)
            .args(&v.vmm_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started_us = monotonic_us();
        let mut child = cmd.spawn().map_err(|source| BootError::Spawn {
            vmm: r.vmm.display().to_string(),
            source,
        })?;
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(BootError::Console(std::io::Error::other("no pipes")));
        };
        let stderr_task = tokio::spawn(async move {
            let mut s = String::new();
            let _ = (&mut stderr).take(1 << 20).read_to_string(&mut s).await;
            s
        });
        // The guest's start, asked for as soon as the socket exists (the VMM
        // answers once its vCPUs run).
        let early = {
            let socket = socket.clone();
            let deadline = self.timeout;
            tokio::spawn(async move {
                let give_up = tokio::time::Instant::now() + deadline;
                while !socket.exists() {
                    if tokio::time::Instant::now() > give_up {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                metrics(&socket).await
            })
        };

        let mut lines = BufReader::new(stdout);
        let mut tail = Vec::new();
        let mut boot = Boot::default();
        let mut init: Option<(u64, Option<Metrics>)> = None;
        let mut buf = Vec::new();
        let read_all = async {
            loop {
                buf.clear();
                let n = (&mut lines)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut buf)
                    .await
                    .map_err(BootError::Console)?;
                if n == 0 {
                    return Ok(None);
                }
                let at = monotonic_us();
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                if line.contains(&v.marker) {
                    let m = metrics(&socket).await;
                    push_tail(&mut tail, line);
                    return Ok(Some((at, m)));
                }
                match console::event(&line) {
                    Some(Event::InitStart { kernel_clock_s }) if init.is_none() => {
                        boot.kernel_clock_at_init_s = kernel_clock_s;
                        init = Some((at, metrics(&socket).await));
                    }
                    // Bounded: a guest printing endless initcalls keeps 1,000.
                    Some(Event::Initcall { name, usecs })
                        if boot.initcalls_us.len() < MAX_INITCALLS
                            || boot.initcalls_us.contains_key(&name) =>
                    {
                        *boot.initcalls_us.entry(name).or_default() += usecs;
                    }
                    _ => {}
                }
                push_tail(&mut tail, line);
            }
        };
        let outcome = tokio::time::timeout(self.timeout, read_all).await;
        let stuck = match outcome {
            Err(_) => stuck_report(&socket).await,
            Ok(_) => String::new(),
        };
        let _ = child.start_kill();
        let status = child.wait().await;
        let stderr_text = stderr_task.await.unwrap_or_default();
        let _ = std::fs::remove_file(&socket);
        let (marker_at, at_marker) = match outcome {
            Ok(Ok(Some(found))) => found,
            Ok(Ok(None)) => {
                let mut all = tail;
                all.extend(stderr_text.lines().rev().take(5).map(str::to_owned));
                return Err(BootError::EndedEarly {
                    status: status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string()),
                    marker: v.marker.clone(),
                    tail: all.join("\n"),
                });
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(BootError::Timeout {
                    marker: v.marker.clone(),
                    timeout: self.timeout,
                    tail: tail.join("\n"),
                    stuck: format!(
                        "{stuck}\nthe VMM's last lines:\n{}",
                        stderr_tail(&stderr_text)
                    ),
                })
            }
        };
        let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1000.0;
        boot.phases_ms
            .insert(Phase::Total, ms(started_us, marker_at));
        let early = early.await.ok().flatten();
        let guest_start = [early.as_ref(), at_marker.as_ref()]
            .into_iter()
            .flatten()
            .map(|m| m.boot_started_monotonic_us)
            .find(|&t| t >= started_us && t <= marker_at);
        if let Some(g) = guest_start {
            boot.phases_ms.insert(Phase::VmmSetup, ms(started_us, g));
            boot.phases_ms.insert(Phase::Guest, ms(g, marker_at));
        }
        if let Some((init_at, at_init)) = &init {
            if let Some(g) = guest_start {
                boot.phases_ms.insert(Phase::Kernel, ms(g, *init_at));
            }
            boot.phases_ms
                .insert(Phase::Userspace, ms(*init_at, marker_at));
            if let Some(m) = at_init {
                boot.exits.insert(Phase::Kernel, m.vcpu_exits.clone());
                if let Some(end) = &at_marker {
                    boot.exits.insert(
                        Phase::Userspace,
                        exits_between(&end.vcpu_exits, &m.vcpu_exits),
                    );
                }
            }
        }
        if let Some(m) = at_marker {
            boot.exits.insert(Phase::Guest, m.vcpu_exits);
        }
        Ok(boot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_split_per_reason() {
        let end: BTreeMap<String, u64> = [("io_in".into(), 10), ("hlt".into(), 3)].into();
        let start: BTreeMap<String, u64> = [("io_in".into(), 4)].into();
        let d = exits_between(&end, &start);
        assert_eq!(d["io_in"], 6);
        assert_eq!(d["hlt"], 3);
    }

    #[test]
    fn the_jail_comes_from_the_flags_or_the_environment() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let j = jail_of(&args(&["--no-rng", "--jail", "4243:4244"]), None).unwrap();
        assert_eq!((j.uid, j.gid), (4243, 4244));
        let j = jail_of(&args(&["--jail=7:8,root=/tmp/j"]), Some("1:1".into())).unwrap();
        assert_eq!((j.uid, j.gid), (7, 8), "the flag wins over the environment");
        let j = jail_of(&args(&["--jailbreak"]), Some("5:6".into())).unwrap();
        assert_eq!((j.uid, j.gid), (5, 6));
        assert!(jail_of(&args(&["--jailbreak"]), None).is_none());
        assert!(jail_of(&[], Some(String::new())).is_none());
        assert!(jail_of(&args(&["--jail", "nonsense"]), None).is_none());
    }

    #[test]
    fn tails_keep_the_last_lines() {
        let mut t = Vec::new();
        for i in 0..40 {
            push_tail(&mut t, i.to_string());
        }
        assert_eq!(t.len(), TAIL_LINES);
        assert_eq!(t.last().map(String::as_str), Some("39"));
    }
}
