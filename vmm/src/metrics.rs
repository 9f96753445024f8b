//! Counters the control API reports: vCPU exits by reason, and the process's memory.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Exit counts of one vCPU, bumped by its own thread only (relaxed ordering is enough).
#[derive(Default)]
pub struct VcpuMetrics {
    pub io_in: AtomicU64,
    pub io_out: AtomicU64,
    pub io_unclaimed: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    pub hlt: AtomicU64,
    pub interrupted: AtomicU64,
    pub other: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExitCounts {
    pub io_in: u64,
    pub io_out: u64,
    pub io_unclaimed: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub hlt: u64,
    pub interrupted: u64,
    pub other: u64,
}

impl VcpuMetrics {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ExitCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExitCounts {
            io_in: get(&self.io_in),
            io_out: get(&self.io_out),
            io_unclaimed: get(&self.io_unclaimed),
            mmio_read: get(&self.mmio_read),
            mmio_write: get(&self.mmio_write),
            hlt: get(&self.hlt),
            interrupted: get(&self.interrupted),
            other: get(&self.other),
        }
    }
}

impl std::ops::Add for ExitCounts {
    type Output = ExitCounts;
    fn add(self, o: ExitCounts) -> ExitCounts {
        ExitCounts {
            io_in: self.io_in + o.io_in,
            io_out: self.io_out + o.io_out,
            io_unclaimed: self.io_unclaimed + o.io_unclaimed,
            mmio_read: self.mmio_read + o.mmio_read,
            mmio_write: self.mmio_write + o.mmio_write,
            hlt: self.hlt + o.hlt,
            interrupted: self.interrupted + o.interrupted,
            other: self.other + o.other,
        }
    }
}

/// Resident and peak-resident memory of this process, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessMemory {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

pub fn process_memory() -> ProcessMemory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    parse_status(&status)
}

fn parse_status(status: &str) -> ProcessMemory {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    ProcessMemory {
        rss_kib: field("VmRSS:"),
        peak_rss_kib: field("VmHWM:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let m = parse_status("Name:\tvmm\nVmHWM:\t   9000 kB\nVmRSS:\t    8123 kB\n");
        assert_eq!(
            m,
            ProcessMemory {
                rss_kib: 8123,
                peak_rss_kib: 9000
            }
        );
        assert_eq!(parse_status(""), ProcessMemory::default());
        assert!(process_memory().rss_kib > 0);
    }

    #[test]
    fn counts_add_up() {
        let m = VcpuMetrics::default();
        VcpuMetrics::bump(&m.io_out);
        VcpuMetrics::bump(&m.io_out);
        let total = m.snapshot() + m.snapshot();
        assert_eq!(total.io_out, 4);
        assert_eq!(total.io_in, 0);
    }
}
