//! How far `virga-boottime`'s verdicts can be trusted, on real boots: how
//! often it cries wolf on identical variants (A/A), and how often it finds
//! a known slowdown (the test init waits `--slowdown` of the median boot
//! before its marker), for several numbers of runs.
//!
//! One testbed run: a pilot measures the median boot; then the tool boots
//! A against A, then A against the slowed variant, each for `--rounds`
//! rounds, interleaved as a pipeline would run it, and keeps every boot.
//! Here, the tool's own decision rule (defaults: alpha 0.01, threshold 3%)
//! is applied to:
//! - disjoint windows of N rounds: independent comparisons, few of them;
//! - 2,000 draws of N of the rounds: a smooth estimate from the same boots;
//! - the A boots of the first part against those of the second: a stored
//!   baseline from an earlier run, drift between runs included.
//!
//! The same rule on simulated noise (the unit tests' model) says how many
//! runs other noise levels need, such as a quieter host with hardware KVM.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::SeedableRng;
use virga_boottime::report::Report as Comparison;
use virga_boottime::samples::Phase;
use virga_boottime::stats::{self, MannWhitney, Rule, Verdict};
use virga_guest_images::initramfs::BOOT_MARKER;
use virga_testbed::{Scenario, Testbed};

use crate::report::{Report, Row};
use crate::{host_cpu, images_dir, vmm_bin, workspace, GUEST_CMDLINE};

/// Numbers of runs per side the rates are given for.
const RUNS: [usize; 5] = [5, 10, 15, 20, 30];
const DRAWS: usize = 2000;

fn script(rounds: u32, slowdown_pct: u32) -> String {
    format!(
        r#"BT=$BIN/virga-boottime
ARGS="--kernel $GUEST/vmlinux --initramfs $GUEST/boot-initramfs.cpio --marker {BOOT_MARKER} --vmm $BIN/vmm"
$BT record $ARGS --cmdline "$CMDLINE" --runs 5 --out $WORK/pilot.json > $WORK/pilot.out || exit 1
cat $WORK/pilot.out
median=$(sed -n 's/^median_total_ms=//p' $WORK/pilot.out)
delay=$(( ${{median%.*}} * {slowdown_pct} / 100 ))
echo "BOOTSTATS-DELAY-MS=$delay"
$BT compare $ARGS --cmdline "$CMDLINE" --baseline-cmdline "$CMDLINE" --runs {rounds} --json $WORK/aa.json > /dev/null
[ $? -le 1 ] || exit 1
$BT compare $ARGS --cmdline "$CMDLINE virga.delay_ms=$delay" --baseline-cmdline "$CMDLINE" --runs {rounds} \
    --json $WORK/ab.json | tail -n 1
[ $? -le 1 ] || exit 1
for part in aa ab; do
  echo "BOOTSTATS-BEGIN $part"; cat $WORK/$part.json; echo; echo "BOOTSTATS-END $part"
done
"#
    )
}

fn section<'a>(output: &'a str, part: &str) -> Result<&'a str> {
    let begin = format!("BOOTSTATS-BEGIN {part}\n");
    let end = format!("BOOTSTATS-END {part}");
    let from = output
        .find(&begin)
        .with_context(|| format!("no {part} comparison in the output"))?
        + begin.len();
    let to = output[from..]
        .find(&end)
        .with_context(|| format!("the {part} comparison is cut short"))?;
    Ok(&output[from..from + to])
}

/// Totals per round: (baseline, candidate).
fn rounds_of(c: &Comparison) -> Vec<(f64, f64)> {
    let (b, k) = (
        c.baseline.values(Phase::Total),
        c.candidate.values(Phase::Total),
    );
    b.into_iter().zip(k).collect()
}

/// How often the rule says "regression" over `draws` random sets of `n`
/// rounds (each with its two interleaved boots).
fn alarm_rate(rounds: &[(f64, f64)], n: usize, rule: &Rule, rng: &mut StdRng) -> Option<f64> {
    if n > rounds.len() {
        return None;
    }
    let test = MannWhitney::new(n, n);
    let alarms = (0..DRAWS)
        .filter(|_| {
            let pick = sample(rng, rounds.len(), n);
            let (a, b): (Vec<f64>, Vec<f64>) = pick.iter().map(|i| rounds[i]).unzip();
            stats::verdict(&test, &a, &b, rule) == Verdict::Regression
        })
        .count();
    Some(alarms as f64 / DRAWS as f64)
}

/// Disjoint windows of `n` consecutive rounds: (alarms, windows).
fn disjoint(rounds: &[(f64, f64)], n: usize, rule: &Rule) -> (usize, usize) {
    let test = MannWhitney::new(n, n);
    let windows: Vec<_> = rounds.chunks_exact(n).collect();
    let alarms = windows
        .iter()
        .filter(|w| {
            let (a, b): (Vec<f64>, Vec<f64>) = w.iter().copied().unzip();
            stats::verdict(&test, &a, &b, rule) == Verdict::Regression
        })
        .count();
    (alarms, windows.len())
}

/// The spread of boot times, robustly: IQR / 1.349 over the median.
fn cv(xs: &[f64]) -> f64 {
    (stats::quantile(xs, 0.75) - stats::quantile(xs, 0.25)) / 1.349 / stats::median(xs)
}

fn row(metric: &str, unit: &str, value: f64, runs: usize) -> Row {
    Row {
        system: "virga-boottime".into(),
        metric: metric.into(),
        unit: unit.into(),
        median: value,
        min: value,
        max: value,
        runs,
    }
}

pub fn run(rounds: u32, slowdown_pct: u32) -> Result<()> {
    if rounds < 5 || !(1..=100).contains(&slowdown_pct) {
        bail!("--rounds at least 5, --slowdown-pct 1 to 100");
    }
    let tool = vmm_bin().with_file_name("virga-boottime");
    let testbed = Testbed::new(&images_dir())?;
    let script = format!(
        "CMDLINE='{GUEST_CMDLINE}'\n{}",
        script(rounds, slowdown_pct)
    );
    let scenario = Scenario::new("bench-boot-stats", &script)
        .binary(vmm_bin())
        .binary(tool)
        .timeout(Duration::from_secs(300 + 40 * u64::from(rounds)));
    eprintln!(
        "bench boot-stats: 2 x {rounds} rounds of two boots ({})",
        testbed.mode().as_str()
    );
    let outcome = testbed.run(&scenario)?;
    if !outcome.success() {
        bail!(
            "benchmark scenario failed (status {}); output:\n{}",
            outcome.status,
            virga_testbed::tail(&outcome.output, 40)
        );
    }
    let parse = |part: &str| -> Result<Comparison> {
        serde_json::from_str(section(&outcome.output, part)?)
            .with_context(|| format!("parsing the {part} comparison"))
    };
    let (aa, ab) = (parse("aa")?, parse("ab")?);
    let rule = aa.rule;
    let (aa_rounds, ab_rounds) = (rounds_of(&aa), rounds_of(&ab));
    let a_boots: Vec<f64> = aa_rounds.iter().flat_map(|&(a, b)| [a, b]).collect();
    let median_ms = stats::median(&a_boots);
    let noise = cv(&a_boots);
    let slow = stats::median(&ab_rounds.iter().map(|r| r.1).collect::<Vec<_>>())
        / stats::median(&ab_rounds.iter().map(|r| r.0).collect::<Vec<_>>())
        - 1.0;
    // Across runs: the first part's A boots as a stored baseline for the
    // second part's.
    let across: Vec<(f64, f64)> = aa_rounds
        .iter()
        .zip(&ab_rounds)
        .map(|(x, y)| (x.0, y.0))
        .collect();

    let mut rng = StdRng::seed_from_u64(0xb007);
    let mut rows = vec![
        row("median_boot", "ms", median_ms, a_boots.len()),
        row("boot_cv", "%", noise * 100.0, a_boots.len()),
        row("measured_slowdown", "%", slow * 100.0, ab_rounds.len()),
    ];
    let mut table = format!(
        "A: {median_ms:.0} ms median boot, spread (IQR/1.349) {:.1}%; B: the same with {:.1}% \
         more before its marker\nrule: alpha {}, threshold {:.0}%; {DRAWS} draws of N rounds \
         from {} rounds each\n{:>4} {:>16} {:>16} {:>22} {:>18}\n",
        noise * 100.0,
        slow * 100.0,
        rule.alpha,
        rule.threshold * 100.0,
        aa_rounds.len(),
        "N",
        "A/A alarms",
        "B found",
        "A/A across runs",
        "A/A disjoint"
    );
    for n in RUNS {
        let (Some(fa), Some(power), Some(drift)) = (
            alarm_rate(&aa_rounds, n, &rule, &mut rng),
            alarm_rate(&ab_rounds, n, &rule, &mut rng),
            alarm_rate(&across, n, &rule, &mut rng),
        ) else {
            continue;
        };
        let (k, m) = disjoint(&aa_rounds, n, &rule);
        table.push_str(&format!(
            "{n:>4} {:>15.1}% {:>15.1}% {:>21.1}% {:>18}\n",
            fa * 100.0,
            power * 100.0,
            drift * 100.0,
            format!("{k} of {m}")
        ));
        rows.push(row(&format!("aa_alarms_n{n}"), "%", fa * 100.0, DRAWS));
        rows.push(row(&format!("found_n{n}"), "%", power * 100.0, DRAWS));
        rows.push(row(
            &format!("aa_across_runs_alarms_n{n}"),
            "%",
            drift * 100.0,
            DRAWS,
        ));
    }
    table.push_str(&format!(
        "simulated, {slowdown_pct}% slowdown found with N runs at a given spread:\n{:>6}",
        "spread"
    ));
    for n in RUNS {
        table.push_str(&format!(" {:>7}", format!("N={n}")));
    }
    table.push('\n');
    for c in [0.005, 0.01, 0.02, 0.03, 0.05] {
        table.push_str(&format!("{:>5.1}%", c * 100.0));
        for n in RUNS {
            let r = stats::simulated_alarm_rate(n, f64::from(slowdown_pct) / 100.0, c, 1000, &rule);
            table.push_str(&format!(" {:>6.0}%", r * 100.0));
        }
        table.push('\n');
    }
    let report = Report {
        bench: "boot-stats".into(),
        host: format!("{} ({})", host_cpu(), testbed.mode().as_str()),
        rows,
    };
    let path = report.write(&workspace().join("target/bench"))?;
    println!("{}", report.host);
    print!("{table}");
    println!("written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_found_and_cut() {
        let out = "x\nBOOTSTATS-BEGIN aa\n{\"a\": 1}\nBOOTSTATS-END aa\nBOOTSTATS-BEGIN ab\n{}";
        assert_eq!(section(out, "aa").unwrap().trim(), "{\"a\": 1}");
        assert!(section(out, "ab").is_err());
        assert!(section(out, "zz").is_err());
    }

    #[test]
    fn rates_come_from_the_rule() {
        let rule = Rule::default();
        let same: Vec<(f64, f64)> = (0..40)
            .map(|i| (1000.0 + f64::from(i % 7), 1000.0 + f64::from(i % 5)))
            .collect();
        let slow: Vec<(f64, f64)> = same.iter().map(|&(a, b)| (a, b * 1.2)).collect();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(alarm_rate(&same, 10, &rule, &mut rng), Some(0.0));
        assert_eq!(alarm_rate(&slow, 10, &rule, &mut rng), Some(1.0));
        assert_eq!(alarm_rate(&slow, 41, &rule, &mut rng), None);
        assert_eq!(disjoint(&slow, 10, &rule), (4, 4));
    }

    #[test]
    fn the_script_measures_a_pilot_then_both_parts() {
        let s = script(40, 5);
        assert!(s.contains("--runs 40"));
        assert!(s.contains("* 5 / 100"));
        assert!(s.contains("virga.delay_ms=$delay"));
        assert_eq!(s.matches("BOOTSTATS-BEGIN").count(), 1);
    }
}
