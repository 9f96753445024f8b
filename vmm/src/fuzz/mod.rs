//! Property-based fuzzing of the VMM's guest-facing and untrusted-input code, on
//! the stable toolchain (proptest, no cargo-fuzz).
//!
//! One file per target; each is an ordinary `#[test]` that drives the real device
//! code on mock guest memory and checks invariants, not just "no panic":
//!
//! - `virtio_blk`, `virtio_net`, `virtio_rng`: malformed descriptor chains through
//!   the devices' workers; every chain completes (with an error status where
//!   there is one) or the queue is left alone, nothing writes outside the
//!   buffers the guest gave, nothing hangs, and a good request is served after.
//! - `pci`: config space, BARs, MSI-X table and PBA accesses of random offset,
//!   width and value.
//! - `legacy_ports`: port I/O to serial, i8042, RTC and ACPI PM.
//! - `config`: the VMM's JSON config and `--disk`/`--net` flag parsing.
//!
//! Budget: `VIRGA_FUZZ_CASES` cases per target (default 48, so
//! `cargo test -p vmm` stays fast), or with `VIRGA_FUZZ_SECONDS` as many as fit in
//! that time. Each target prints `fuzz NAME: N cases in S s` (see it with
//! `--nocapture`; `cargo xtask fuzz` runs them long in release mode).

mod chains;
mod config;
mod legacy_ports;
mod pci;
mod virtio_blk;
mod virtio_net;
mod virtio_rng;

use std::time::{Duration, Instant};

use proptest::test_runner::{TestCaseError, TestCaseResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub use virga_test_support::fuzz::{run, within, HANG};

/// Polls `cond` until it holds; fails the case after [`HANG`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> TestCaseResult {
    let deadline = Instant::now() + HANG;
    while !cond() {
        if Instant::now() > deadline {
            return Err(TestCaseError::fail(format!(
                "{what}: not after {HANG:?} (hang)"
            )));
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    Ok(())
}

/// A copy of every region of guest memory.
pub struct Snapshot(Vec<(u64, Vec<u8>)>);

impl Snapshot {
    pub fn of(mem: &GuestMemoryMmap) -> Self {
        Snapshot(
            mem.iter()
                .map(|r| {
                    let base = r.start_addr().0;
                    let mut bytes = vec![0u8; r.len() as usize];
                    mem.read_slice(&mut bytes, GuestAddress(base)).unwrap();
                    (base, bytes)
                })
                .collect(),
        )
    }

    /// The byte at `addr`, if it is guest memory.
    pub fn byte(&self, addr: u64) -> Option<u8> {
        self.0.iter().find_map(|(base, bytes)| {
            let off = usize::try_from(addr.checked_sub(*base)?).ok()?;
            bytes.get(off).copied()
        })
    }

    /// Whether every byte of [addr, addr + len) is guest memory.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        len == 0
            || self.0.iter().any(|(base, bytes)| {
                addr >= *base
                    && addr
                        .checked_add(len)
                        .is_some_and(|end| end <= base + bytes.len() as u64)
            })
    }

    /// Fails when a byte changed from `self` to `after` outside `allowed`
    /// ((address, length) ranges): a device wrote where the guest did not let it.
    pub fn only_changed_in(&self, after: &Snapshot, allowed: &[(u64, u64)]) -> TestCaseResult {
        const CHUNK: usize = 4096;
        for ((base, a), (_, b)) in self.0.iter().zip(&after.0) {
            // Whole pages first: most of memory is untouched.
            let changed = a
                .chunks(CHUNK)
                .zip(b.chunks(CHUNK))
                .enumerate()
                .filter(|(_, (x, y))| x != y)
                .flat_map(|(c, (x, y))| {
                    x.iter()
                        .zip(y.iter())
                        .enumerate()
                        .map(move |(i, p)| (c * CHUNK + i, p))
                });
            for (i, (x, y)) in changed {
                let addr = base + i as u64;
                if x != y && !allowed.iter().any(|&(s, l)| addr >= s && addr - s < l) {
                    return Err(TestCaseError::fail(format!(
                        "guest byte {addr:#x} changed ({x:#x} -> {y:#x}) outside the device-writable buffers"
                    )));
                }
            }
        }
        Ok(())
    }
}
