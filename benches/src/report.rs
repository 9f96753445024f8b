//! The one JSON shape every benchmark writes, and its table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub bench: String,
    /// CPU model, then where it ran: `testbed` or `native`.
    pub host: String,
    pub rows: Vec<Row>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub system: String,
    pub metric: String,
    pub unit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Row {
    /// Summarises samples; None when there are none.
    pub fn from_samples(system: &str, metric: &str, unit: &str, samples: &[f64]) -> Option<Row> {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(|a, b| a.total_cmp(b));
        let mid = s.len() / 2;
        let median = if s.len().is_multiple_of(2) {
            (s[mid - 1] + s[mid]) / 2.0
        } else {
            s[mid]
        };
        Some(Row {
            system: system.to_owned(),
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            median,
            min: s[0],
            max: s[s.len() - 1],
            runs: s.len(),
        })
    }
}

/// Samples gathered from a benchmark's output, keyed by system and metric.
#[derive(Debug, Default)]
pub struct Samples(BTreeMap<(String, String, &'static str), Vec<f64>>);

impl Samples {
    pub fn add(&mut self, system: &str, metric: &str, unit: &'static str, value: f64) {
        self.0
            .entry((system.to_owned(), metric.to_owned(), unit))
            .or_default()
            .push(value);
    }

    /// Distinct (system, metric) pairs seen.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn systems(&self) -> BTreeSet<&str> {
        self.0.keys().map(|(s, _, _)| s.as_str()).collect()
    }

    /// Summary rows, systems in the given order (others are left out).
    pub fn rows(&self, systems: &[&str]) -> Vec<Row> {
        let mut rows = Vec::new();
        for system in systems {
            for ((s, metric, unit), values) in &self.0 {
                if s == system {
                    rows.extend(Row::from_samples(system, metric, unit, values));
                }
            }
        }
        rows
    }
}

impl Report {
    pub fn row(&self, system: &str, metric: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.system == system && r.metric == metric)
    }

    /// Median of `system` over the median of `peer`, for one metric.
    pub fn ratio(&self, system: &str, peer: &str, metric: &str) -> Option<f64> {
        let (a, b) = (self.row(system, metric)?, self.row(peer, metric)?);
        (b.median > 0.0).then(|| a.median / b.median)
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.json", self.bench));
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)?;
        Ok(path)
    }

    /// A table of medians, with each row's ratio to `peer` for the same metric.
    pub fn table(&self, peer: &str) -> String {
        let metric = |r: &Row| format!("{} ({})", r.metric, r.unit);
        let sw = self.rows.iter().map(|r| r.system.len()).fold(6, usize::max);
        let mw = self
            .rows
            .iter()
            .map(|r| metric(r).len())
            .fold(6, usize::max);
        let mut out = format!(
            "{:<sw$} {:<mw$} {:>10} {:>10} {:>10} {:>5} {:>10}\n",
            "system",
            "metric",
            "median",
            "min",
            "max",
            "runs",
            format!("/{peer}")
        );
        for r in &self.rows {
            let ratio = self
                .ratio(&r.system, peer, &r.metric)
                .map_or("-".to_owned(), |x| format!("{x:.2}x"));
            out.push_str(&format!(
                "{:<sw$} {:<mw$} {:>10.1} {:>10.1} {:>10.1} {:>5} {:>10}\n",
                r.system,
                metric(r),
                r.median,
                r.min,
                r.max,
                r.runs,
                ratio
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        let a = Row::from_samples("a", "boot_ms", "ms", &[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((a.median, a.min, a.max, a.runs), (2.0, 1.0, 3.0, 3));
        let b = Row::from_samples("b", "boot_ms", "ms", &[4.0, 6.0]).unwrap();
        assert_eq!(b.median, 5.0);
        assert!(Row::from_samples("c", "m", "u", &[f64::NAN]).is_none());
        let report = Report {
            bench: "t".into(),
            host: "cpu (testbed)".into(),
            rows: vec![a, b],
        };
        assert_eq!(report.ratio("a", "b", "boot_ms"), Some(0.4));
        assert!(report.table("b").contains("0.40x"));

        let mut samples = Samples::default();
        samples.add("y", "m", "u", 2.0);
        samples.add("x", "m", "u", 1.0);
        samples.add("x", "m", "u", 3.0);
        samples.add("z", "m", "u", 3.0);
        assert_eq!(samples.len(), 3);
        let rows = samples.rows(&["x", "y"]);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].system.as_str(), rows[0].median), ("x", 2.0));
    }
}
