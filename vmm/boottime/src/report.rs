//! A comparison of two runs, phase by phase, and its three renderings: a
//! table for people, JSON for scripts, JUnit XML for CI systems.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::samples::{Phase, SampleFile, VariantInfo};
use crate::stats::{self, Comparison, Rule, Verdict};

/// Whether `n` and `m` boots can show a difference at the rule's level at
/// all: fewer, and a check could never fail, which would be a lie.
pub fn testable(n: usize, m: usize, rule: &Rule) -> bool {
    n > 0 && m > 0 && stats::smallest_p(n, m) < rule.alpha
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub rule: Rule,
    /// The phase whose verdict is the run's.
    pub decides: Phase,
    pub baseline: SampleFile,
    pub candidate: SampleFile,
    /// Whether the two were booted interleaved in this run (else the
    /// baseline came from a file, and drift between runs counts too).
    pub interleaved: bool,
    pub phases: BTreeMap<Phase, Comparison>,
    pub verdict: Verdict,
}

impl Report {
    pub fn new(
        baseline: SampleFile,
        candidate: SampleFile,
        rule: Rule,
        decides: Phase,
        interleaved: bool,
    ) -> Report {
        let mut phases = BTreeMap::new();
        for p in Phase::ALL {
            let (b, c) = (baseline.values(p), candidate.values(p));
            if testable(b.len(), c.len(), &rule) {
                phases.insert(p, stats::compare(&b, &c, &rule));
            }
        }
        let verdict = phases
            .get(&decides)
            .map(|c| c.verdict)
            .unwrap_or(Verdict::NoChange);
        Report {
            rule,
            decides,
            baseline,
            candidate,
            interleaved,
            phases,
            verdict,
        }
    }

    /// Whether the deciding phase could be tested at all.
    pub fn decided(&self) -> bool {
        self.phases.contains_key(&self.decides)
    }

    /// One sentence: what happened to the deciding phase.
    pub fn summary(&self) -> String {
        let name = self.decides.name();
        let Some(c) = self.phases.get(&self.decides) else {
            return format!(
                "UNDECIDED: {name} needs at least {} boots on each side showing that phase for \
                 the test to reach alpha {} (baseline has {}, candidate {})",
                stats::fewest_runs(self.rule.alpha),
                self.rule.alpha,
                self.baseline.values(self.decides).len(),
                self.candidate.values(self.decides).len()
            );
        };
        let pct = |r: f64| (r - 1.0) * 100.0;
        let i = &c.interval;
        let effect = format!(
            "{name} {:+.1}% ({:.0}% interval {:+.1}% to {:+.1}%)",
            pct(i.ratio),
            i.confidence * 100.0,
            pct(i.low),
            pct(i.high)
        );
        let t = self.rule.threshold * 100.0;
        match c.verdict {
            Verdict::Regression => format!(
                "REGRESSION: {effect}; slower with p = {} < {} and by more than the {t:.1}% threshold",
                pv(c.p_slower), self.rule.alpha
            ),
            Verdict::Improvement => format!(
                "IMPROVEMENT: {effect}; faster with p = {} < {} and by more than the {t:.1}% threshold",
                pv(c.p_faster), self.rule.alpha
            ),
            Verdict::NoChange => {
                let why = if c.p_slower < self.rule.alpha && i.ratio > 1.0 {
                    format!("significantly slower (p = {}) but within the {t:.1}% threshold", pv(c.p_slower))
                } else if c.p_faster < self.rule.alpha && i.ratio < 1.0 {
                    format!("significantly faster (p = {}) but within the {t:.1}% threshold", pv(c.p_faster))
                } else {
                    format!(
                        "no significant difference (p = {} slower, {} faster at alpha {})",
                        pv(c.p_slower), pv(c.p_faster), self.rule.alpha
                    )
                };
                format!("NO REGRESSION: {effect}; {why}")
            }
        }
    }

    /// The table: one row per phase, then the exits, then the verdict.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let b = &self.baseline;
        let c = &self.candidate;
        let _ = writeln!(
            s,
            "baseline:  {} ({} boots{})\ncandidate: {} ({} boots)",
            b.variant.label(),
            b.boots.len(),
            if self.interleaved {
                ", interleaved with the candidate's"
            } else {
                ", from a file"
            },
            c.variant.label(),
            c.boots.len()
        );
        if b.variant.other_vmm(&c.variant) {
            let path = |v: &VariantInfo| v.vmm.clone().unwrap_or_default();
            let _ = writeln!(
                s,
                "VMMs:      baseline {}, candidate {}",
                path(&b.variant),
                path(&c.variant)
            );
        }
        let _ = writeln!(
            s,
            "{:<10} {:>22} {:>22} {:>8} {:>17} {:>9}",
            "phase", "baseline ms (IQR)", "candidate ms (IQR)", "ratio", "interval", "p slower"
        );
        for p in Phase::ALL {
            let (bv, cv) = (b.values(p), c.values(p));
            if bv.is_empty() && cv.is_empty() {
                continue;
            }
            let cell = |v: &[f64]| {
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    format!(
                        "{:.1} ({:.1}-{:.1})",
                        stats::median(v),
                        stats::quantile(v, 0.25),
                        stats::quantile(v, 0.75)
                    )
                }
            };
            let (ratio, interval, p_slower) = match self.phases.get(&p) {
                Some(cmp) => (
                    format!("{:.3}", cmp.interval.ratio),
                    format!("{:.3}-{:.3}", cmp.interval.low, cmp.interval.high),
                    pv(cmp.p_slower),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let mark = if p == self.decides {
                "  <- decides"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "{:<10} {:>22} {:>22} {:>8} {:>17} {:>9}{mark}",
                p.name(),
                cell(&bv),
                cell(&cv),
                ratio,
                interval,
                p_slower
            );
        }
        let exits = exit_medians(b, c);
        if !exits.is_empty() {
            let _ = writeln!(s, "vCPU exits per boot (medians, baseline -> candidate):");
            for (phase, reasons) in exits {
                let row: Vec<String> = reasons
                    .iter()
                    .filter(|(_, (x, y))| *x > 0.0 || *y > 0.0)
                    .map(|(r, (x, y))| format!("{r} {x:.0} -> {y:.0}"))
                    .collect();
                let _ = writeln!(s, "  {:<10} {}", phase.name(), row.join(", "));
            }
        }
        let _ = writeln!(s, "{}", self.summary());
        s
    }

    /// JUnit XML: one test case per compared phase; the deciding one fails
    /// on a regression (the others are reported, never failed).
    pub fn junit(&self) -> String {
        use quick_xml::escape::escape;
        let failures = usize::from(self.verdict == Verdict::Regression);
        let mut s = String::new();
        let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        let _ = writeln!(
            s,
            r#"<testsuite name="virga-boottime" tests="{}" failures="{failures}" errors="{}">"#,
            self.phases.len().max(1),
            usize::from(!self.decided())
        );
        for (p, cmp) in &self.phases {
            let name = format!("boot time: {}", p.name());
            let time = cmp.candidate_median / 1000.0;
            let _ = write!(
                s,
                r#"  <testcase classname="virga-boottime" name="{}" time="{time:.3}""#,
                escape(&name)
            );
            if *p == self.decides && cmp.verdict == Verdict::Regression {
                let _ = writeln!(
                    s,
                    ">\n    <failure message=\"{}\"/>\n  </testcase>",
                    escape(self.summary())
                );
            } else {
                let _ = writeln!(s, "/>");
            }
        }
        if !self.decided() {
            let _ = writeln!(
                s,
                "  <testcase classname=\"virga-boottime\" name=\"boot time: {}\">\n    <error message=\"{}\"/>\n  </testcase>",
                self.decides.name(),
                escape(self.summary())
            );
        }
        let _ = writeln!(s, "  <system-out>{}</system-out>", escape(self.table()));
        let _ = writeln!(s, "</testsuite>");
        s
    }
}

/// A p-value, readable at both ends of its range.
fn pv(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    }
}

type ExitMedians = BTreeMap<Phase, BTreeMap<String, (f64, f64)>>;

/// Per phase and reason, the median count on each side.
fn exit_medians(b: &SampleFile, c: &SampleFile) -> ExitMedians {
    let mut out: ExitMedians = BTreeMap::new();
    let collect = |f: &SampleFile, p: Phase, r: &str| -> Vec<f64> {
        f.boots
            .iter()
            .filter_map(|boot| boot.exits.get(&p)?.get(r).map(|&v| v as f64))
            .collect()
    };
    for p in Phase::ALL {
        let reasons: std::collections::BTreeSet<&String> = b
            .boots
            .iter()
            .chain(&c.boots)
            .filter_map(|boot| boot.exits.get(&p))
            .flat_map(|m| m.keys())
            .collect();
        for r in reasons {
            let (x, y) = (collect(b, p, r), collect(c, p, r));
            let med = |v: &[f64]| if v.is_empty() { 0.0 } else { stats::median(v) };
            out.entry(p)
                .or_default()
                .insert(r.clone(), (med(&x), med(&y)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::{Boot, VariantInfo};

    fn file(kernel: &str, totals: &[f64]) -> SampleFile {
        let mut f = SampleFile::new(VariantInfo {
            kernel: kernel.into(),
            kernel_sha256: "ab".repeat(32),
            initramfs: None,
            initramfs_sha256: None,
            image: None,
            image_bytes: None,
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 128,
            marker: "OK".into(),
            vmm_args: vec![],
            vmm: None,
            vmm_sha256: None,
        });
        f.boots = totals
            .iter()
            .map(|&t| Boot {
                phases_ms: [(Phase::Total, t), (Phase::VmmSetup, 10.0)].into(),
                exits: [(Phase::Guest, [("io_out".to_owned(), 100)].into())].into(),
                ..Default::default()
            })
            .collect();
        f
    }

    fn totals(base: f64, n: usize) -> Vec<f64> {
        (0..n).map(|i| base + (i % 5) as f64).collect()
    }

    #[test]
    fn a_regression_fails_the_deciding_phase_only() {
        let r = Report::new(
            file("old", &totals(1000.0, 10)),
            file("new", &totals(1100.0, 10)),
            Rule::default(),
            Phase::Total,
            true,
        );
        assert_eq!(r.verdict, Verdict::Regression);
        assert!(
            r.summary().starts_with("REGRESSION: total +"),
            "{}",
            r.summary()
        );
        let table = r.table();
        assert!(table.contains("<- decides"), "{table}");
        assert!(table.contains("io_out 100 -> 100"), "{table}");
        assert!(!table.contains("VMMs:"), "one VMM: {table}");
        // Two builds of the VMM: the table says which booted which.
        let (mut old, mut new) = (
            file("k", &totals(1000.0, 10)),
            file("k", &totals(990.0, 10)),
        );
        old.variant.vmm = Some("old/vmm".into());
        old.variant.vmm_sha256 = Some("01".repeat(32));
        new.variant.vmm = Some("new/vmm".into());
        new.variant.vmm_sha256 = Some("02".repeat(32));
        let builds = Report::new(old, new, Rule::default(), Phase::Total, true).table();
        assert!(
            builds.contains("VMMs:      baseline old/vmm, candidate new/vmm"),
            "{builds}"
        );
        let xml = r.junit();
        assert_eq!(xml.matches("<failure").count(), 1, "{xml}");
        assert!(
            xml.contains(r#"tests="2" failures="1" errors="0""#),
            "{xml}"
        );
        // Well-formed: every element closes.
        let mut reader = quick_xml::Reader::from_str(&xml);
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("{e}: {xml}"),
            }
        }
        // JSON round-trips.
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.verdict, Verdict::Regression);
    }

    #[test]
    fn identical_runs_pass_and_too_few_boots_are_undecided() {
        let same = Report::new(
            file("a", &totals(1000.0, 10)),
            file("a", &totals(1000.0, 10)),
            Rule::default(),
            Phase::Total,
            false,
        );
        assert_eq!(same.verdict, Verdict::NoChange);
        assert!(
            same.summary().starts_with("NO REGRESSION"),
            "{}",
            same.summary()
        );
        assert!(same.junit().contains(r#"failures="0""#));

        let few = Report::new(
            file("a", &[1.0, 2.0]),
            file("b", &[1.0, 2.0]),
            Rule::default(),
            Phase::Total,
            false,
        );
        assert!(!few.decided());
        assert!(few.summary().starts_with("UNDECIDED"), "{}", few.summary());
        assert!(few.junit().contains("<error"), "{}", few.junit());
        // A phase no boot showed: not decidable either.
        let kernel = Report::new(
            file("a", &totals(1000.0, 10)),
            file("b", &totals(1000.0, 10)),
            Rule::default(),
            Phase::Kernel,
            true,
        );
        assert!(!kernel.decided());
    }
}
