//! The flake hunt: `cargo xtask test --repeat N [--filter PATTERN]` runs the
//! test binaries again and again, each the way `cargo xtask test` runs it, and
//! prints how often each test passed and failed.
//!
//! The binaries are built once and run directly (as `cargo test` runs them),
//! so a round costs only the tests' own time. The log of every failing run is
//! kept under `target/flake-hunt/`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// One test executable and how to run it.
pub struct TestBinary {
    /// `package-dir:target`, e.g. `tests/e2e:cloud`.
    pub label: String,
    pub path: PathBuf,
    /// The package's directory: `cargo test` runs a binary there.
    pub cwd: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, OsString)>,
}

/// The test executables `cargo test ARGS` would run, built now.
pub fn test_binaries(
    root: &Path,
    cargo_args: &[&str],
    run_args: &[&str],
    env: &[(&str, OsString)],
) -> Result<Vec<TestBinary>> {
    let mut cmd = crate::cargo();
    cmd.args(["test", "--no-run", "--message-format=json"])
        .args(cargo_args)
        .stderr(std::process::Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(manifest), Some(name)) = (
            msg["executable"].as_str(),
            msg["manifest_path"].as_str(),
            msg["target"]["name"].as_str(),
        ) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let cwd = Path::new(manifest)
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| root.to_owned());
        let package = cwd.strip_prefix(root).unwrap_or(&cwd).display().to_string();
        // A package's lib and bin may share a name: say which.
        let kind = match msg["target"]["kind"][0].as_str() {
            Some(k @ ("bin" | "example" | "bench")) => format!("({k})"),
            _ => String::new(),
        };
        binaries.push(TestBinary {
            label: format!(
                "{}:{name}{kind}",
                if package.is_empty() { "." } else { &package }
            ),
            path: PathBuf::from(exe),
            cwd,
            args: run_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        });
    }
    binaries.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(binaries)
}

#[derive(Default)]
struct Tally {
    passed: u32,
    failed: u32,
    ignored: u32,
}

/// What one run of a test binary reported, from its standard output.
#[derive(Debug, PartialEq)]
enum Verdict {
    Ok,
    Failed,
    Ignored,
}

/// `test NAME ... ok|FAILED|ignored` lines of libtest's output.
fn verdicts(stdout: &str) -> Vec<(String, Verdict)> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("test ")?;
            let (name, verdict) = rest.rsplit_once(" ... ")?;
            let verdict = match verdict.trim() {
                "ok" => Verdict::Ok,
                "FAILED" => Verdict::Failed,
                v if v.starts_with("ignored") => Verdict::Ignored,
                _ => return None,
            };
            Some((name.to_owned(), verdict))
        })
        .collect()
}

/// The testbed's hang reports in `dir`, in one line: L1s that went silent and
/// were woken by a kick (`-woken-` in the name), and those retried in a
/// fresh testbed.
pub fn hang_counts(dir: &Path) -> String {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let woken = names.iter().filter(|n| n.contains("-woken-")).count();
    format!(
        "testbed hangs: {woken} woken by a kick, {} retried in a fresh testbed{}",
        names.len() - woken,
        if names.is_empty() {
            String::new()
        } else {
            format!(" (reports under {})", dir.display())
        }
    )
}

/// Each hang report in `dir` in brief, for a log read where the files are
/// gone (CI's machine): the report's name (scenario and time), where L1's
/// CPU was, and the scenario's last line of output.
pub fn hang_summaries(dir: &Path) -> Vec<String> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            format!("  {name}: {}", summarize_hang(&text))
        })
        .collect()
}

/// `RIP=... CPL=... HLT=...` and L1's pending and in-service interrupts of
/// each CPU sample, then the last line the scenario wrote.
fn summarize_hang(report: &str) -> String {
    let samples: Vec<String> = report
        .lines()
        .filter(|l| l.starts_with("sample "))
        .map(|l| {
            l.split_whitespace()
                .filter(|w| {
                    ["RIP=", "EIP=", "CPL=", "HLT=", "L1-IRR=", "L1-ISR="]
                        .iter()
                        .any(|k| w.starts_with(k))
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let last = report
        .split("--- scenario output")
        .nth(1)
        .and_then(|rest| rest.split("\n--- ").next())
        .and_then(|section| {
            section
                .lines()
                .skip(1)
                .filter(|l| !l.trim().is_empty())
                .last()
        })
        .unwrap_or("(none)");
    format!("CPU [{}]; last output: {last}", samples.join("; "))
}

/// Runs every binary `rounds` times and prints the table; true when every
/// run of every test passed.
pub fn hunt(
    root: &Path,
    binaries: &[TestBinary],
    rounds: u32,
    filter: Option<&str>,
) -> Result<bool> {
    let logs = root.join("target/flake-hunt");
    std::fs::create_dir_all(&logs).context("creating target/flake-hunt")?;
    let mut tally: BTreeMap<String, Tally> = BTreeMap::new();
    let hangs = logs.join("testbed-hangs");
    let _ = std::fs::remove_dir_all(&hangs);
    let started = Instant::now();
    for round in 1..=rounds {
        for bin in binaries {
            let mut cmd = Command::new(&bin.path);
            cmd.args(&bin.args).current_dir(&bin.cwd);
            if let Some(f) = filter {
                cmd.arg(f);
            }
            for (k, v) in &bin.env {
                cmd.env(k, v);
            }
            cmd.env(virga_testbed::HANG_DIR_ENV, &hangs);
            let t = Instant::now();
            let out = cmd
                .output()
                .with_context(|| format!("running {}", bin.path.display()))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let verdicts = verdicts(&stdout);
            let mut failed = Vec::new();
            for (name, verdict) in &verdicts {
                let t = tally.entry(format!("{} {name}", bin.label)).or_default();
                match verdict {
                    Verdict::Ok => t.passed += 1,
                    Verdict::Failed => {
                        t.failed += 1;
                        failed.push(name.as_str());
                    }
                    Verdict::Ignored => t.ignored += 1,
                }
            }
            // A binary that failed without naming a failed test crashed or
            // aborted mid-way: count that against the binary itself.
            if !out.status.success() && failed.is_empty() {
                tally
                    .entry(format!("{} (the binary: {})", bin.label, out.status))
                    .or_default()
                    .failed += 1;
            }
            if !out.status.success() {
                let log = logs.join(format!(
                    "{}-round{round}.log",
                    bin.label.replace(['/', ':'], "_")
                ));
                std::fs::write(&log, format!("{stdout}\n--- stderr ---\n{stderr}"))
                    .with_context(|| format!("writing {}", log.display()))?;
                eprintln!(
                    "flake hunt round {round}/{rounds}: {} FAILED ({}) in {:.0} s; log: {}",
                    bin.label,
                    if failed.is_empty() {
                        out.status.to_string()
                    } else {
                        failed.join(", ")
                    },
                    t.elapsed().as_secs_f64(),
                    log.display()
                );
            } else if !verdicts.is_empty() {
                eprintln!(
                    "flake hunt round {round}/{rounds}: {} ok ({} tests) in {:.0} s",
                    bin.label,
                    verdicts.len(),
                    t.elapsed().as_secs_f64()
                );
            }
        }
    }
    print!("{}", table(&tally, rounds, filter));
    println!(
        "{}\n{} rounds in {:.1} min; logs of failing runs under {}",
        hang_counts(&hangs),
        rounds,
        started.elapsed().as_secs_f64() / 60.0,
        logs.display()
    );
    for line in hang_summaries(&hangs) {
        println!("{line}");
    }
    Ok(tally.values().all(|t| t.failed == 0))
}

/// Failing tests first, then the rest, each with its counts.
fn table(tally: &BTreeMap<String, Tally>, rounds: u32, filter: Option<&str>) -> String {
    let width = tally.keys().map(String::len).max().unwrap_or(4).max(4);
    let mut out = format!(
        "\nflake hunt: {rounds} round(s){}\n{:<width$}  {:>6}  {:>6}  {:>7}\n",
        filter
            .map(|f| format!(", filter {f:?}"))
            .unwrap_or_default(),
        "test",
        "passed",
        "failed",
        "ignored"
    );
    let mut rows: Vec<_> = tally.iter().collect();
    rows.sort_by_key(|(name, t)| (t.failed == 0, name.as_str()));
    for (name, t) in rows {
        out.push_str(&format!(
            "{name:<width$}  {:>6}  {:>6}  {:>7}\n",
            t.passed, t.failed, t.ignored
        ));
    }
    let failing = tally.values().filter(|t| t.failed > 0).count();
    out.push_str(&format!(
        "{failing} of {} tests failed at least once\n",
        tally.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hangs_woken_in_place_are_counted_apart_from_retries() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            hang_counts(&dir.path().join("none")),
            "testbed hangs: 0 woken by a kick, 0 retried in a fresh testbed"
        );
        for name in ["net-woken-1.log", "net-woken-2.log", "cloud-3.log"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        assert_eq!(
            hang_counts(dir.path()),
            format!(
                "testbed hangs: 2 woken by a kick, 1 retried in a fresh testbed (reports under {})",
                dir.path().display()
            )
        );
    }

    #[test]
    fn a_hang_report_is_summed_up_in_a_line() {
        let report = "--- L1's CPU when it hung (QEMU monitor) ---\n\
            sample 1: RIP=ffffffff81369416 (no System.map to name it) CPL=0 interrupts on HLT=0\n\
            CPU#0\nRAX=0000\n\
            sample 2: RIP=00007f2577940bd2 (no System.map to name it) CPL=3 interrupts on HLT=0 \
            L1-IRR=236 L1-ISR=(none) L1-PPR=0x00\n\
            --- scenario output (40 bytes) ---\nclient: ready\nclient: round 2\n\n\
            --- L1 control channel (20 bytes) ---\nheartbeat\n--- end of report ---";
        assert_eq!(
            summarize_hang(report),
            "CPU [RIP=ffffffff81369416 CPL=0 HLT=0; \
             RIP=00007f2577940bd2 CPL=3 HLT=0 L1-IRR=236 L1-ISR=(none)]; \
             last output: client: round 2"
        );
        assert_eq!(summarize_hang(""), "CPU []; last output: (none)");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cloud-1.log"), report).unwrap();
        let lines = hang_summaries(dir.path());
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("  cloud-1.log: CPU [RIP=ffffffff81369416"));
    }

    #[test]
    fn reads_libtest_verdicts() {
        let out =
            "running 3 tests\ntest a::b ... ok\ntest c ... FAILED\ntest d ... ignored, slow\n\
                   test result: FAILED. 1 passed; 1 failed\n";
        assert_eq!(
            verdicts(out),
            vec![
                ("a::b".into(), Verdict::Ok),
                ("c".into(), Verdict::Failed),
                ("d".into(), Verdict::Ignored)
            ]
        );
    }

    #[test]
    fn table_lists_failures_first() {
        let mut tally = BTreeMap::new();
        tally.insert(
            "x:a ok_test".to_string(),
            Tally {
                passed: 3,
                ..Default::default()
            },
        );
        tally.insert(
            "x:b flaky".to_string(),
            Tally {
                passed: 2,
                failed: 1,
                ignored: 0,
            },
        );
        let t = table(&tally, 3, Some("x"));
        let flaky = t.find("x:b flaky").unwrap();
        let ok = t.find("x:a ok_test").unwrap();
        assert!(flaky < ok, "{t}");
        assert!(t.contains("1 of 2 tests failed at least once"), "{t}");
    }
}
