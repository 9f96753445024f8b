//! Facts about this host for `GET /host`, registration and the scheduler.

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct HostInfo {
    pub host_id: String,
    pub cpus: u64,
    pub memory_mib: u64,
    pub memory_available_mib: u64,
    /// Memory instances may use in all (total less hostd's reservation).
    pub memory_usable_mib: u64,
    pub hugepages: HugePages,
    pub disk: Disk,
    pub kvm: Kvm,
    pub instances: InstanceCounts,
    pub versions: Versions,
    pub cgroups: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct HugePages {
    pub size_kib: u64,
    pub total: u64,
    pub free: u64,
}

#[derive(Debug, Serialize)]
pub struct Disk {
    pub path: String,
    pub total_mib: u64,
    pub free_mib: u64,
}

#[derive(Debug, Serialize)]
pub struct Kvm {
    /// /dev/kvm exists.
    pub available: bool,
    /// `hardware` (VMX/SVM on bare metal), `nested` (VMX/SVM exposed inside a
    /// VM), `emulated` (a /dev/kvm without VMX/SVM: every guest instruction is
    /// emulated), or `none`.
    pub mode: &'static str,
}

#[derive(Debug, Default, Serialize)]
pub struct InstanceCounts {
    pub total: usize,
    pub running: usize,
    pub vcpus_used: u64,
    pub memory_used_mib: u64,
}

#[derive(Debug, Serialize)]
pub struct Versions {
    pub hostd: &'static str,
    pub vmm: String,
}

/// `Key:   123 kB` from /proc/meminfo, in KiB (or pages, for HugePages_*).
fn meminfo(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

pub fn cpus() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// When this host booted (Unix seconds; 0 if /proc does not say) and its
/// load averages over 1, 5 and 15 minutes.
pub fn uptime() -> (i64, [f64; 3]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    parse_uptime(&uptime, &loadavg, now)
}

fn parse_uptime(uptime: &str, loadavg: &str, now: i64) -> (i64, [f64; 3]) {
    let booted_at = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(0, |s| now - s as i64);
    let mut load = [0.0; 3];
    for (slot, field) in load.iter_mut().zip(loadavg.split_whitespace()) {
        *slot = field.parse().unwrap_or(0.0);
    }
    (booted_at, load)
}

pub fn memory() -> (u64, u64, HugePages) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    (
        meminfo(&text, "MemTotal") / 1024,
        meminfo(&text, "MemAvailable") / 1024,
        HugePages {
            size_kib: meminfo(&text, "Hugepagesize"),
            total: meminfo(&text, "HugePages_Total"),
            free: meminfo(&text, "HugePages_Free"),
        },
    )
}

pub fn disk(path: &Path) -> Disk {
    let (total, free) = statvfs(path).unwrap_or((0, 0));
    Disk {
        path: path.display().to_string(),
        total_mib: total >> 20,
        free_mib: free >> 20,
    }
}

fn statvfs(path: &Path) -> Option<(u64, u64)> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some((st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize))
}

pub fn kvm() -> Kvm {
    let available = Path::new("/dev/kvm").exists();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags")?.split_once(':').map(|(_, f)| f))
        .map(|f| f.split_whitespace().collect())
        .unwrap_or_default();
    Kvm {
        available,
        mode: kvm_mode(available, &flags),
    }
}

fn kvm_mode(available: bool, flags: &[&str]) -> &'static str {
    let virt = flags.iter().any(|f| *f == "vmx" || *f == "svm");
    let guest = flags.contains(&"hypervisor");
    match (available, virt, guest) {
        (false, _, _) => "none",
        (true, true, false) => "hardware",
        (true, true, true) => "nested",
        (true, false, _) => "emulated",
    }
}

/// `vmm --version`, asked once at start.
pub fn vmm_version(binary: &Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_and_load_from_proc() {
        assert_eq!(
            parse_uptime("3600.52 7000.10\n", "0.20 0.12 0.14 1/123 4567\n", 10_000),
            (6_400, [0.20, 0.12, 0.14])
        );
        assert_eq!(parse_uptime("", "", 10_000), (0, [0.0; 3]), "unknown");
        assert_eq!(parse_uptime("-5 1", "x 1.5", 10_000), (0, [0.0, 1.5, 0.0]));
    }

    #[test]
    fn meminfo_fields() {
        let text = "MemTotal:       24576000 kB\nMemAvailable:   1000 kB\nHugePages_Total:       4\nHugepagesize:       2048 kB\n";
        assert_eq!(meminfo(text, "MemTotal"), 24_576_000);
        assert_eq!(meminfo(text, "HugePages_Total"), 4);
        assert_eq!(meminfo(text, "Hugepagesize"), 2048);
        assert_eq!(meminfo(text, "Missing"), 0);
        assert_eq!(meminfo(text, "Mem"), 0, "whole keys only");
    }

    #[test]
    fn kvm_modes() {
        assert_eq!(kvm_mode(true, &["fpu", "svm"]), "hardware");
        assert_eq!(kvm_mode(true, &["vmx", "hypervisor"]), "nested");
        assert_eq!(kvm_mode(true, &["hypervisor"]), "emulated");
        assert_eq!(kvm_mode(false, &["vmx"]), "none");
    }

    #[test]
    fn host_facts_are_read() {
        assert!(cpus() >= 1);
        assert!(memory().0 > 0);
        assert!(disk(Path::new("/")).total_mib > 0);
    }
}
