//! The fuzz targets' runner (proptest on the stable toolchain): a budget of
//! cases (`VIRGA_FUZZ_CASES`, default [`DEFAULT_CASES`], so a plain `cargo
//! test` stays fast) or of time (`VIRGA_FUZZ_SECONDS`, what `cargo xtask
//! fuzz` sets), one line of cases and seconds per target, and hangs turned
//! into failures.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestCaseResult, TestRunner};

/// Cases per target in a plain `cargo test`.
pub const DEFAULT_CASES: u32 = 48;
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
