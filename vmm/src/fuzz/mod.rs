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
//! Budget: `VIRGA_FUZZ_CASES` cases per target (default [`DEFAULT_CASES`], so
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

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestCaseResult, TestRunner};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Cases per target in a plain `cargo test`.
const DEFAULT_CASES: u32 = 48;
/// How long a device may take to answer before the case counts as a hang. Generous:
/// debug builds on a loaded 2-core machine are slow, and a real hang never ends.
pub const HANG: Duration = Duration::from_secs(10);

enum Budget {
    Cases(u32),
    Time(Duration),
}

fn budget() -> Budget {
    let env = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(secs) = env("VIRGA_FUZZ_SECONDS") {
        let secs: f64 = secs
            .parse()
            .unwrap_or_else(|_| panic!("VIRGA_FUZZ_SECONDS: not a number: {secs:?}"));
        return Budget::Time(Duration::from_secs_f64(secs.max(0.0)));
    }
    match env("VIRGA_FUZZ_CASES") {
        Some(n) => Budget::Cases(
            n.parse()
                .unwrap_or_else(|_| panic!("VIRGA_FUZZ_CASES: not a number: {n:?}")),
        ),
        None => Budget::Cases(DEFAULT_CASES),
    }
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Failing inputs become regression tests by hand; no files in the tree.
        failure_persistence: None,
        // Shrinking a hang costs a HANG per attempt: keep it bounded.
        max_shrink_iters: 512,
        max_shrink_time: 120_000,
        ..Config::default()
    }
}

/// Runs `test` on inputs from `strategy` within the budget, prints one line of
/// cases and seconds, and panics with the minimal failing input on failure.
pub fn run<S>(target: &str, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let start = Instant::now();
    let (cases, result) = match budget() {
        Budget::Cases(n) => (
            u64::from(n),
            TestRunner::new(config(n)).run(&strategy, &test),
        ),
        Budget::Time(limit) => {
            // Batches sized to about a second each, so the deadline is kept
            // whether a case takes a microsecond or a tenth of a second.
            let mut runner = TestRunner::new(config(1));
            let (mut cases, mut batch) = (0u64, 4u32);
            loop {
                let left = limit.saturating_sub(start.elapsed());
                if left.is_zero() {
                    break (cases, Ok(()));
                }
                let t = Instant::now();
                let mut batch_runner = TestRunner::new_with_rng(config(batch), runner.new_rng());
                if let Err(e) = batch_runner.run(&strategy, &test) {
                    break (cases, Err(e));
                }
                cases += u64::from(batch);
                let per_case = t.elapsed().as_secs_f64() / f64::from(batch);
                let want = left.as_secs_f64().min(1.0) / per_case.max(1e-6);
                batch = (want as u32).clamp(1, 100_000);
            }
        }
    };
    println!(
        "fuzz {target}: {cases} cases in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("fuzz {target}: {e}");
    }
}

/// Runs `f` on a thread of its own and fails the case when it has not returned
/// within [`HANG`]: that is a hang (the thread is left behind, spinning or stuck).
pub fn within<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TestCaseError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("fuzz-{what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| TestCaseError::fail(format!("spawning: {e}")))?;
    match rx.recv_timeout(HANG) {
        Ok(v) => {
            let _ = thread.join();
            Ok(v)
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => Err(TestCaseError::fail(format!("{what}: returned nothing"))),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(TestCaseError::fail(format!(
            "{what}: still running after {HANG:?} (hang)"
        ))),
    }
}

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
