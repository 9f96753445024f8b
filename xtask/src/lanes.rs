//! The end-to-end suite in lanes: test binaries side by side.
//!
//! Almost all of an end-to-end binary's time is its testbed: one L1 under
//! QEMU's TCG, which keeps one host CPU busy and no more (`-smp 1`). Run one
//! after another, the binaries left the second CPU of a 2-core machine idle
//! for most of the suite. Each binary still runs its own tests one at a
//! time (`--test-threads=1`): their scenarios share a testbed's CPU.
//!
//! The longest binaries start first, so the lanes end together. Each
//! binary's output goes to a file and is printed whole when it ends, so two
//! binaries' lines never interleave.

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::flakes::TestBinary;

/// Binaries started first, longest first (targets of tests/e2e; seconds on a
/// 2-core machine, one lane: cloud 790, hosts 230, boottime 160, blk 100).
/// The others take under a minute each.
const LONGEST_FIRST: &[&str] = &["cloud", "hosts", "boottime", "blk"];

/// How many binaries run at once: `VIRGA_E2E_LANES`, else one per CPU, at
/// most 4 (each lane's L1 holds 3 GiB of memory).
pub fn lane_count() -> Result<usize> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    lanes_from(std::env::var("VIRGA_E2E_LANES").ok().as_deref(), cpus)
}

fn lanes_from(setting: Option<&str>, cpus: usize) -> Result<usize> {
    match setting {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => bail!("VIRGA_E2E_LANES={v}: a whole number of at least 1 is expected"),
        },
        None => Ok(cpus.clamp(1, 4)),
    }
}

/// A lock whose holder panicking leaves the data usable (a queue, a list).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The target name of a `package-dir:target` label.
fn target(label: &str) -> &str {
    label.rsplit_once(':').map_or(label, |(_, t)| t)
}

/// `binaries` in the order lanes take them.
fn schedule(mut binaries: Vec<TestBinary>) -> VecDeque<TestBinary> {
    binaries.sort_by_key(|b| {
        let rank = LONGEST_FIRST.iter().position(|t| *t == target(&b.label));
        (rank.unwrap_or(LONGEST_FIRST.len()), b.label.clone())
    });
    binaries.into()
}

struct Finished {
    label: String,
    status: ExitStatus,
    took: Duration,
}

/// Runs every binary, `lanes` at a time, each with `hang_dir` for its
/// testbed's hang reports; prints each one's output when it ends and then
/// the time each took. Fails naming the binaries that failed.
pub fn run(binaries: Vec<TestBinary>, lanes: usize, logs: &Path, hang_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
    let queue = Mutex::new(schedule(binaries));
    let finished = Mutex::new(Vec::new());
    let printing = Mutex::new(());
    let started = Instant::now();
    println!("e2e: {lanes} lane(s)");
    let errors: Vec<anyhow::Error> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..lanes)
            .map(|lane| {
                let (queue, finished, printing) = (&queue, &finished, &printing);
                s.spawn(move || -> Result<()> {
                    loop {
                        let Some(bin) = lock(queue).pop_front() else {
                            return Ok(());
                        };
                        let log = logs.join(format!("{}.log", bin.label.replace(['/', ':'], "_")));
                        let t = Instant::now();
                        let status = run_one(&bin, &log, hang_dir)?;
                        let took = t.elapsed();
                        let output = std::fs::read_to_string(&log)
                            .unwrap_or_else(|e| format!("(reading {}: {e})", log.display()));
                        {
                            let _one_at_a_time = lock(printing);
                            println!(
                                "\n===== {} (lane {lane}): {} in {:.0} s =====\n{output}",
                                bin.label,
                                verdict(status),
                                took.as_secs_f64()
                            );
                        }
                        lock(finished).push(Finished {
                            label: bin.label,
                            status,
                            took,
                        });
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| match w.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(anyhow::anyhow!("an e2e lane panicked")),
            })
            .collect()
    });
    let mut finished = finished.into_inner().unwrap_or_else(|e| e.into_inner());
    finished.sort_by_key(|f| std::cmp::Reverse(f.took));
    println!(
        "e2e, time per binary ({lanes} lane(s), {:.0} s in all):",
        started.elapsed().as_secs_f64()
    );
    for f in &finished {
        println!(
            "  {:<24} {:>6.0} s   {}",
            f.label,
            f.took.as_secs_f64(),
            verdict(f.status)
        );
    }
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    let failed: Vec<&str> = finished
        .iter()
        .filter(|f| !f.status.success())
        .map(|f| f.label.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("e2e binaries failed: {}", failed.join(", "));
    }
    Ok(())
}

fn verdict(status: ExitStatus) -> String {
    if status.success() {
        "ok".into()
    } else {
        format!("FAILED ({status})")
    }
}

/// Runs one binary with its output (both streams, in order) in `log`.
fn run_one(bin: &TestBinary, log: &Path, hang_dir: &Path) -> Result<ExitStatus> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone().context("sharing the log file")?;
    let mut cmd = Command::new(&bin.path);
    cmd.args(&bin.args)
        .current_dir(&bin.cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env(virga_testbed::HANG_DIR_ENV, hang_dir);
    for (k, v) in &bin.env {
        cmd.env(k, v);
    }
    cmd.status()
        .with_context(|| format!("running {}", bin.path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn bin(label: &str) -> TestBinary {
        TestBinary {
            label: label.into(),
            path: PathBuf::new(),
            cwd: PathBuf::new(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    #[test]
    fn the_longest_binaries_start_first_and_the_rest_by_name() {
        let order: Vec<String> = schedule(vec![
            bin("tests/e2e:api"),
            bin("tests/e2e:boottime"),
            bin("tests/e2e:virtio"),
            bin("tests/e2e:cloud"),
            bin("tests/e2e:hosts"),
            bin("tests/e2e:blk"),
            bin("tests/e2e:boot"),
        ])
        .into_iter()
        .map(|b| b.label)
        .collect();
        assert_eq!(
            order,
            [
                "tests/e2e:cloud",
                "tests/e2e:hosts",
                "tests/e2e:boottime",
                "tests/e2e:blk",
                "tests/e2e:api",
                "tests/e2e:boot",
                "tests/e2e:virtio"
            ]
        );
    }

    #[test]
    fn every_binary_runs_once_and_a_failure_is_named() {
        let dir = tempfile_dir();
        let bins = vec![
            TestBinary {
                label: "x:passes".into(),
                path: "/bin/sh".into(),
                cwd: "/".into(),
                args: vec!["-c".into(), "echo ran-passes".into()],
                env: Vec::new(),
            },
            TestBinary {
                label: "x:fails".into(),
                path: "/bin/sh".into(),
                cwd: "/".into(),
                args: vec!["-c".into(), "echo ran-fails >&2; exit 3".into()],
                env: Vec::new(),
            },
            TestBinary {
                label: "x:also-passes".into(),
                path: "/bin/sh".into(),
                cwd: "/".into(),
                args: vec!["-c".into(), "echo ran-also".into()],
                env: Vec::new(),
            },
        ];
        let err = run(bins, 2, &dir.join("logs"), &dir.join("hangs")).unwrap_err();
        assert_eq!(err.to_string(), "e2e binaries failed: x:fails");
        let read = |f: &str| std::fs::read_to_string(dir.join("logs").join(f)).unwrap();
        assert_eq!(read("x_passes.log"), "ran-passes\n");
        assert_eq!(read("x_fails.log"), "ran-fails\n");
        assert_eq!(read("x_also-passes.log"), "ran-also\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-lanes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn lanes_are_one_per_cpu_up_to_four_unless_set() {
        assert_eq!(lanes_from(None, 1).unwrap(), 1);
        assert_eq!(lanes_from(None, 2).unwrap(), 2);
        assert_eq!(lanes_from(None, 16).unwrap(), 4);
        assert_eq!(lanes_from(Some("1"), 16).unwrap(), 1);
        assert_eq!(lanes_from(Some("6"), 2).unwrap(), 6);
        for bad in ["0", "two", ""] {
            let err = lanes_from(Some(bad), 2).unwrap_err().to_string();
            assert!(err.contains(&format!("VIRGA_E2E_LANES={bad}:")), "{err}");
        }
    }
}
