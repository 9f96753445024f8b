//! The boot benchmark and boot-time regression check.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use virga_guest_images::initramfs::BOOT_MARKER;
use virga_testbed::{Scenario, Testbed};

use virga_boottime::stats::{self, Rule, Verdict};

use crate::measure::{Sample, SAMPLE_PREFIX};
use crate::report::{Report, Row};
use crate::{
    host_cpu, images_dir, vmm_bin, workspace, GUEST_CMDLINE as CMDLINE, QEMU, QEMU_FIRMWARE,
};

const GUEST_MIB: u64 = 256;
/// Same for every system: quiet console, no i8042 AUX/mux probing.
const PEER: &str = "qemu-microvm";

/// (system, command) with `$BIN`/`$GUEST` left for the scenario's shell.
fn systems() -> Vec<(&'static str, String)> {
    let initrd = "$GUEST/boot-initramfs.cpio";
    let vmm = |kernel: &str| {
        format!(
            "$BIN/vmm --kernel $GUEST/{kernel} --initramfs {initrd} --vcpus 1 --memory-mib {GUEST_MIB} --cmdline \"$CMDLINE\""
        )
    };
    let qemu = |machine: &str, kernel: &str| {
        format!(
            "{QEMU} -M {machine} -enable-kvm -cpu host -smp 1 -m {GUEST_MIB} \
             -nodefaults -no-user-config -display none -serial stdio -no-reboot \
             -kernel $GUEST/{kernel} -initrd {initrd} -append \"$CMDLINE\""
        )
    };
    vec![
        ("virga", vmm("vmlinux")),
        ("virga-bzimage", vmm("bzImage")),
        ("qemu-microvm", qemu("microvm,rtc=on", "vmlinux")),
        ("qemu-pc", qemu("pc", "bzImage")),
    ]
}

fn script(runs: u32) -> String {
    let mut s = format!("CMDLINE='{CMDLINE}'\nfailed=0\nfor round in $(seq {runs}); do\n");
    // Systems take turns within each round, so drift in the testbed hits all alike.
    for (system, command) in systems() {
        s.push_str(&format!(
            "  $BIN/virga-bench measure --system {system} --marker {BOOT_MARKER} --guest-mib {GUEST_MIB} -- {command} || failed=1\n"
        ));
    }
    s.push_str("done\nexit $failed\n");
    s
}

/// `benches/baselines/boot.json`: where virga's boot time is expected to
/// stand against QEMU microvm's, and how the check decides a regression.
#[derive(Debug, Deserialize)]
struct Baseline {
    /// virga's median boot over QEMU microvm's, as measured when the
    /// baseline was set.
    expected_ratio_vs_qemu_microvm: f64,
    /// The smallest slowdown beyond the expected ratio that fails, in percent.
    threshold_pct: f64,
    /// The rank test's significance level.
    alpha: f64,
}

/// The check: virga's boots against QEMU microvm's scaled by the expected
/// ratio, with `virga-boottime`'s statistics (a one-sided rank test and a
/// bootstrap interval of the median ratio): a regression only when virga is
/// significantly slower than expected and by more than the threshold, so
/// the noise between runs on one machine does not fail a pipeline.
fn check_against(baseline: &Baseline, virga: &[f64], peer: &[f64]) -> Result<String> {
    let expected: Vec<f64> = peer
        .iter()
        .map(|v| v * baseline.expected_ratio_vs_qemu_microvm)
        .collect();
    let rule = Rule {
        alpha: baseline.alpha,
        threshold: baseline.threshold_pct / 100.0,
        ..Rule::default()
    };
    let c = stats::compare(&expected, virga, &rule);
    let i = &c.interval;
    let says = format!(
        "virga boots in {:.3}x QEMU microvm's expected share ({:.2}x); {:.0}% interval {:.3}-{:.3}, p(slower) = {:.4}, threshold {}%, alpha {}",
        i.ratio,
        baseline.expected_ratio_vs_qemu_microvm,
        i.confidence * 100.0,
        i.low,
        i.high,
        c.p_slower,
        baseline.threshold_pct,
        baseline.alpha
    );
    if c.verdict == Verdict::Regression {
        bail!("boot-time regression: {says}");
    }
    Ok(says)
}

pub fn run(runs: u32, check: bool) -> Result<()> {
    let images = images_dir();
    let vmm = vmm_bin();
    let me = std::env::current_exe().context("locating virga-bench")?;
    let testbed = Testbed::new(&images)?;
    let scenario = Scenario::new("bench-boot", &script(runs))
        .binary(vmm)
        .binary(me)
        .host_binary(QEMU)
        .host_paths(QEMU_FIRMWARE.iter().filter(|f| Path::new(f).exists()))
        .timeout(Duration::from_secs(120 + 60 * u64::from(runs)));
    eprintln!(
        "bench boot: {runs} runs of {} systems ({})",
        systems().len(),
        testbed.mode().as_str()
    );
    let outcome = testbed.run(&scenario)?;

    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for line in outcome.output.lines() {
        if let Some(json) = line
            .find(SAMPLE_PREFIX)
            .map(|i| &line[i + SAMPLE_PREFIX.len()..])
        {
            let s: Sample = serde_json::from_str(json).context("parsing a sample")?;
            samples.entry(s.system.clone()).or_default().push(s);
        }
    }
    if !outcome.success() || samples.len() != systems().len() {
        bail!(
            "benchmark scenario failed (status {}); output:\n{}",
            outcome.status,
            virga_testbed::tail(&outcome.output, 40)
        );
    }

    let mut rows = Vec::new();
    for (system, _) in systems() {
        let s = &samples[system];
        let pick = |f: fn(&Sample) -> f64| s.iter().map(f).collect::<Vec<_>>();
        rows.extend(Row::from_samples(
            system,
            "boot_ms",
            "ms",
            &pick(|x| x.boot_ms),
        ));
        rows.extend(Row::from_samples(
            system,
            "peak_rss_kib",
            "KiB",
            &pick(|x| x.peak_rss_kib as f64),
        ));
        rows.extend(Row::from_samples(
            system,
            "overhead_kib",
            "KiB",
            &pick(|x| x.overhead_kib as f64),
        ));
        rows.extend(Row::from_samples(
            system,
            "private_overhead_kib",
            "KiB",
            &pick(|x| x.private_overhead_kib as f64),
        ));
    }
    let report = Report {
        bench: "boot".into(),
        host: format!("{} ({})", host_cpu(), testbed.mode().as_str()),
        rows,
    };
    let path = report.write(&workspace().join("target/bench"))?;
    println!("{}", report.host);
    print!("{}", report.table(PEER));
    println!("written to {}", path.display());

    let ratio = report
        .ratio("virga", PEER, "boot_ms")
        .context("no boot time for virga or its peer")?;
    println!("virga / {PEER} median boot: {ratio:.3}x");
    if check {
        let baseline: Baseline = serde_json::from_slice(
            &std::fs::read(workspace().join("benches/baselines/boot.json"))
                .context("reading benches/baselines/boot.json")?,
        )
        .context("benches/baselines/boot.json")?;
        let boot_ms = |system: &str| {
            samples[system]
                .iter()
                .map(|s| s.boot_ms)
                .collect::<Vec<_>>()
        };
        let says = check_against(&baseline, &boot_ms("virga"), &boot_ms(PEER))?;
        println!("check passed: {says}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_runs_every_system_each_round() {
        let s = script(3);
        assert!(s.contains("seq 3"));
        for (system, _) in systems() {
            assert_eq!(s.matches(&format!("--system {system} ")).count(), 1);
        }
        assert!(s.contains("-M microvm,rtc=on"));
    }

    #[test]
    fn the_check_fails_only_a_significant_slowdown_past_the_threshold() {
        let baseline = Baseline {
            expected_ratio_vs_qemu_microvm: 0.9,
            threshold_pct: 5.0,
            alpha: 0.01,
        };
        let peer: Vec<f64> = (0..10).map(|i| 1000.0 + f64::from(i % 4) * 5.0).collect();
        let at = |r: f64| peer.iter().map(|v| v * r).collect::<Vec<_>>();
        assert!(check_against(&baseline, &at(0.9), &peer).is_ok());
        // Slower than expected, but within the threshold.
        assert!(check_against(&baseline, &at(0.93), &peer).is_ok());
        let err = check_against(&baseline, &at(1.0), &peer)
            .unwrap_err()
            .to_string();
        assert!(err.contains("regression"), "{err}");
        // Faster is never a failure.
        assert!(check_against(&baseline, &at(0.5), &peer).is_ok());
    }

    #[test]
    fn the_stored_baseline_reads() {
        let text = std::fs::read(workspace().join("benches/baselines/boot.json")).unwrap();
        let b: Baseline = serde_json::from_slice(&text).unwrap();
        assert!(b.expected_ratio_vs_qemu_microvm > 0.0 && b.alpha > 0.0 && b.threshold_pct > 0.0);
    }
}
