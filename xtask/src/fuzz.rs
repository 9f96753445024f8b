//! `cargo xtask fuzz [--target T] [--minutes N]`: runs the fuzz targets (the
//! VMM's in `vmm/src/fuzz/`, and `api`, every controller API's bodies and query
//! strings in `controller/tests/fuzz_api.rs`; proptest on the stable toolchain)
//! for N minutes each, in release mode, one after another, and prints a table of
//! cases and results. A plain `cargo test` runs the same targets for a few cases
//! each.

use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Every target: `vmm::fuzz::<name>::<name>`, the controller's `api`,
/// hostd's boot picker (`bootpick`) and storaged's NBD server (`nbd`).
pub const TARGETS: &[&str] = &[
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "pci",
    "legacy_ports",
    "config",
    "api",
    "bootpick",
    "nbd",
];

/// `cargo test` arguments that select a target's crate and test binary, and
/// the test's name in it.
fn selector(target: &str) -> (&'static [&'static str], String) {
    match target {
        "api" => (&["-p", "controller", "--test", "fuzz_api"], "api".into()),
        "bootpick" => (
            &["-p", "virga-bootpick", "--test", "fuzz"],
            "bootpick".into(),
        ),
        "nbd" => (&["-p", "storaged", "--test", "fuzz_nbd"], "nbd".into()),
        t => (&["-p", "vmm", "--lib"], format!("fuzz::{t}::{t}")),
    }
}

struct Row {
    target: &'static str,
    cases: String,
    minutes: f64,
    ok: bool,
}

pub fn fuzz(target: Option<&str>, minutes: f64) -> Result<()> {
    if minutes.is_nan() || minutes <= 0.0 {
        bail!("--minutes must be above 0");
    }
    let targets: Vec<&'static str> = match target {
        None => TARGETS.to_vec(),
        Some(t) => match TARGETS.iter().find(|&&n| n == t) {
            Some(&n) => vec![n],
            None => bail!("no fuzz target {t:?}; the targets: {}", TARGETS.join(", ")),
        },
    };
    // Build first, so no target's time goes to compiling.
    for t in &targets {
        super::run(
            super::cargo()
                .args(["test", "--release"])
                .args(selector(t).0)
                .arg("--no-run"),
        )?;
    }
    let seconds = format!("{}", minutes * 60.0);
    let mut rows = Vec::new();
    for t in targets {
        eprintln!("fuzz: {t} for {minutes} min");
        let start = Instant::now();
        let (crate_args, name) = selector(t);
        let out = super::cargo()
            .args(["test", "--release"])
            .args(crate_args)
            .args(["--", "--exact"])
            .args([name.as_str(), "--nocapture", "--test-threads=1"])
            .env("VIRGA_FUZZ_SECONDS", &seconds)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running fuzz target {t}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        // The target's own line, "fuzz NAME: N cases in S s" (libtest may put
        // "test NAME ... " in front of it).
        let prefix = format!("fuzz {t}: ");
        let cases = stdout
            .lines()
            .find_map(|l| l.split_once(&prefix)?.1.split(" cases").next())
            .unwrap_or("?")
            .to_owned();
        let ok = out.status.success();
        if !ok {
            print!("{stdout}");
        }
        rows.push(Row {
            target: t,
            cases,
            minutes: start.elapsed().as_secs_f64() / 60.0,
            ok,
        });
    }
    println!("{:<14} {:>12} {:>8}  result", "target", "cases", "minutes");
    for r in &rows {
        let result = if r.ok { "ok" } else { "FAILED" };
        println!(
            "{:<14} {:>12} {:>8.1}  {result}",
            r.target, r.cases, r.minutes
        );
    }
    let failed: Vec<&str> = rows.iter().filter(|r| !r.ok).map(|r| r.target).collect();
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}
