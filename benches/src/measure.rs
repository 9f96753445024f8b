//! `virga-bench measure`: runs inside the testbed (or natively), starts one VMM,
//! and times it from process start to the guest's marker line.
//!
//! It also samples the VMM's overhead when the marker appears (resident memory
//! outside the guest-RAM mapping, and the private part of it: anonymous
//! memory, what each further VM costs, where the binary's pages are page
//! cache every VMM on the host shares) and takes the peak RSS from wait4's
//! rusage.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One VMM run, printed as a JSON line prefixed with [`SAMPLE_PREFIX`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Sample {
    pub system: String,
    pub boot_ms: f64,
    pub overhead_kib: u64,
    /// Of `overhead_kib`, the anonymous memory (heap, stacks, copies).
    #[serde(default)]
    pub private_overhead_kib: u64,
    pub peak_rss_kib: u64,
    pub exit_ok: bool,
}

pub const SAMPLE_PREFIX: &str = "VIRGA-BENCH-SAMPLE ";

/// What to time and how.
pub struct Run<'a> {
    pub system: &'a str,
    pub marker: &'a str,
    pub guest_mib: u64,
    /// Kill the guest at its marker (a guest that does not power off by
    /// itself, such as a cloud image).
    pub stop: bool,
    /// A file to keep the guest's console in.
    pub console: Option<&'a Path>,
}

pub fn run(r: &Run, command: &[String]) -> Result<()> {
    let Run {
        system,
        marker,
        guest_mib,
        stop,
        console,
    } = *r;
    let mut console = console
        .map(|p| std::fs::File::create(p).with_context(|| format!("creating {}", p.display())))
        .transpose()?;
    let (program, args) = command.split_first().context("no command to measure")?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let pid = child.id();
    let stdout = child.stdout.take().context("no stdout")?;
    let mut boot_ms = None;
    let mut overhead_kib = Overhead::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap_or_default();
        if let Some(f) = console.as_mut() {
            writeln!(f, "{line}").context("writing the console")?;
        }
        if boot_ms.is_none() && line.contains(marker) {
            boot_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            overhead_kib = overhead(pid, guest_mib).unwrap_or_default();
            println!("{line}");
            if let Some(up) = cloud_init_uptime(&line) {
                crate::hostd::emit(system, "guest_uptime_s", "s", up);
            }
            if stop {
                child.kill().context("stopping the guest at its marker")?;
                break;
            }
        }
    }
    let (status, peak_rss_kib) = wait_with_rusage(pid)?;
    let Some(boot_ms) = boot_ms else {
        bail!("{system}: no marker line (exit status {status})");
    };
    let sample = Sample {
        system: system.to_owned(),
        boot_ms,
        overhead_kib: overhead_kib.resident,
        private_overhead_kib: overhead_kib.anonymous,
        peak_rss_kib,
        exit_ok: status == 0 || stop,
    };
    println!("{SAMPLE_PREFIX}{}", serde_json::to_string(&sample)?);
    Ok(())
}

/// The guest's own uptime in cloud-init's last line ("Cloud-init v. 22.4.2
/// finished at <date>. Datasource ... Up 25.01 seconds"): how much of a boot
/// the guest spent, as opposed to what came before its kernel.
pub fn cloud_init_uptime(line: &str) -> Option<f64> {
    let (_, rest) = line.split_once("finished at")?;
    let (_, up) = rest.rsplit_once("Up ")?;
    up.split_whitespace().next()?.parse().ok()
}

/// What the VMM holds outside guest RAM, in KiB.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Overhead {
    /// Resident: the process's RSS minus that of mappings at least as
    /// large as guest RAM.
    pub resident: u64,
    /// The anonymous part of it.
    pub anonymous: u64,
}

fn overhead(pid: u32, guest_mib: u64) -> Option<Overhead> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    Some(overhead_from_smaps(&smaps, guest_mib << 10))
}

pub fn overhead_from_smaps(smaps: &str, guest_kib: u64) -> Overhead {
    let kib = |line: &str, key: &str| -> Option<u64> {
        line.strip_prefix(key)?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let mut o = Overhead::default();
    let mut in_guest_ram = false;
    for line in smaps.lines() {
        if let Some(size) = kib(line, "Size:") {
            in_guest_ram = size >= guest_kib;
        } else if in_guest_ram {
            continue;
        } else if let Some(rss) = kib(line, "Rss:") {
            o.resident += rss;
        } else if let Some(anon) = kib(line, "Anonymous:") {
            o.anonymous += anon;
        }
    }
    o
}

fn wait_with_rusage(pid: u32) -> Result<(i32, u64)> {
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child; status and usage are valid for writes.
    let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if rc < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((code, usage.ru_maxrss as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_init_reports_its_uptime() {
        let line = "[  OK  ] Cloud-init v. 22.4.2 finished at Thu, 03 Dec 2026 14:30:00 +0000. \
                    Datasource DataSourceConfigDrive [net,ver=2][source=/dev/vdb].  Up 25.01 seconds";
        assert_eq!(cloud_init_uptime(line), Some(25.01));
        assert_eq!(cloud_init_uptime("Up 3 seconds"), None);
        assert_eq!(cloud_init_uptime("x finished at y. Up soon"), None);
    }

    #[test]
    fn overhead_excludes_guest_ram_mappings() {
        let smaps = "7f00-7f10 rw-p 0 00:00 0\nSize:  262144 kB\nRss:  80000 kB\n\
                     Anonymous:  80000 kB\n\
                     5500-5600 r-xp 0 00:00 0 /bin/vmm\nSize:  1024 kB\nRss:  900 kB\n\
                     Anonymous:  0 kB\n\
                     7ff0-7ff1 rw-p 0 00:00 0 [heap]\nSize:  512 kB\nRss:  300 kB\n\
                     Anonymous:  280 kB\n";
        assert_eq!(
            overhead_from_smaps(smaps, 256 << 10),
            Overhead {
                resident: 1200,
                anonymous: 280
            }
        );
    }
}
