//! The statistics of a comparison: medians, a bootstrap interval for the
//! ratio of two medians, and the Mann-Whitney U test.
//!
//! Boot times are skewed (a slow disk read, a busy host) and rarely normal,
//! so the test is on ranks and the effect is a ratio of medians, whose
//! interval comes from resampling rather than from a formula that assumes a
//! distribution.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The median; NaN for no samples.
pub fn median(xs: &[f64]) -> f64 {
    quantile(xs, 0.5)
}

/// The `q` quantile (linear between order statistics); NaN for no samples.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    quantile_sorted(&s, q)
}

fn quantile_sorted(s: &[f64], q: f64) -> f64 {
    match s.len() {
        0 => f64::NAN,
        1 => s[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let (lo, frac) = (pos.floor() as usize, pos.fract());
            if lo + 1 >= n {
                s[n - 1]
            } else {
                s[lo] + (s[lo + 1] - s[lo]) * frac
            }
        }
    }
}

/// A ratio of medians (candidate over baseline) with its interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RatioInterval {
    pub ratio: f64,
    pub low: f64,
    pub high: f64,
    /// The interval's confidence, e.g. 0.95.
    pub confidence: f64,
}

/// How many resamples the bootstrap draws: the interval's ends move by
/// well under 0.1% between seeds at this count.
pub const RESAMPLES: usize = 10_000;

/// The percentile-bootstrap interval of median(candidate) / median(baseline):
/// each side is resampled with replacement on its own, `resamples` times.
/// Seeded, so one set of samples always gives one interval.
pub fn bootstrap_median_ratio(
    baseline: &[f64],
    candidate: &[f64],
    confidence: f64,
    resamples: usize,
    seed: u64,
) -> RatioInterval {
    let ratio = median(candidate) / median(baseline);
    if baseline.is_empty() || candidate.is_empty() || resamples == 0 {
        return RatioInterval {
            ratio,
            low: f64::NAN,
            high: f64::NAN,
            confidence,
        };
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut draw = |from: &[f64], into: &mut Vec<f64>| {
        into.clear();
        into.extend((0..from.len()).map(|_| from[rng.random_range(0..from.len())]));
        into.sort_by(f64::total_cmp);
        quantile_sorted(into, 0.5)
    };
    let (mut b, mut c) = (Vec::new(), Vec::new());
    let mut ratios: Vec<f64> = (0..resamples)
        .map(|_| {
            let mb = draw(baseline, &mut b);
            draw(candidate, &mut c) / mb
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    RatioInterval {
        ratio,
        low: quantile_sorted(&ratios, tail),
        high: quantile_sorted(&ratios, 1.0 - tail),
        confidence,
    }
}

/// The smallest one-sided p-value the rank test can give with `n` and `m`
/// samples: 1 / C(n + m, n), when one side is wholly above the other.
pub fn smallest_p(n: usize, m: usize) -> f64 {
    let (n, m) = (n.min(m), n.max(m));
    // C(n + m, n) as a product of ratios, in floating point (no overflow).
    let c: f64 = (1..=n).map(|i| (m + i) as f64 / i as f64).product();
    1.0 / c
}

/// The fewest samples a side (both alike) with which the rank test can
/// reach `alpha` at all.
pub fn fewest_runs(alpha: f64) -> usize {
    (1..)
        .find(|&n| smallest_p(n, n) < alpha)
        .unwrap_or(usize::MAX)
}

/// Samples this small on both sides, without ties, get the exact null
/// distribution; larger ones the normal approximation, which is within
/// 0.001 of it from about 20 a side.
const EXACT_MAX: usize = 30;

/// The Mann-Whitney U test of "candidate tends to be larger than baseline"
/// (and the reverse), for one pair of sample sizes.
pub struct MannWhitney {
    n: usize,
    m: usize,
    /// P(U >= u) under the null hypothesis, for u = 0..=n*m, when exact.
    upper_tail: Option<Vec<f64>>,
}

impl MannWhitney {
    /// For `n` candidate and `m` baseline samples; builds the exact null
    /// distribution when both are small (reuse one for many tests).
    pub fn new(n: usize, m: usize) -> MannWhitney {
        let upper_tail =
            (n > 0 && m > 0 && n <= EXACT_MAX && m <= EXACT_MAX).then(|| exact_upper_tail(n, m));
        MannWhitney { n, m, upper_tail }
    }

    /// One-sided p-values (candidate larger, candidate smaller).
    pub fn p_values(&self, baseline: &[f64], candidate: &[f64]) -> (f64, f64) {
        assert_eq!(
            (candidate.len(), baseline.len()),
            (self.n, self.m),
            "sizes the test was built for"
        );
        if self.n == 0 || self.m == 0 {
            return (1.0, 1.0);
        }
        // U counts the pairs where the candidate is larger (ties count half).
        let mut u = 0.0;
        let mut ties = false;
        for &c in candidate {
            for &b in baseline {
                if c > b {
                    u += 1.0;
                } else if c == b {
                    u += 0.5;
                    ties = true;
                }
            }
        }
        let nm = (self.n * self.m) as f64;
        match &self.upper_tail {
            Some(tail) if !ties => {
                let u = u as usize;
                let greater = tail[u];
                // P(U <= u) = P(U' >= nm - u) by symmetry.
                let smaller = tail[self.n * self.m - u];
                (greater, smaller)
            }
            _ => {
                let sigma = self.sigma(baseline, candidate);
                if sigma == 0.0 {
                    return (1.0, 1.0);
                }
                let mean = nm / 2.0;
                // Continuity-corrected.
                let z_greater = (u - mean - 0.5) / sigma;
                let z_smaller = (mean - u - 0.5) / sigma;
                (normal_upper_tail(z_greater), normal_upper_tail(z_smaller))
            }
        }
    }

    /// U's standard deviation under the null, corrected for ties.
    fn sigma(&self, baseline: &[f64], candidate: &[f64]) -> f64 {
        let (n, m) = (self.n as f64, self.m as f64);
        let total = n + m;
        let mut all: Vec<f64> = baseline.iter().chain(candidate).copied().collect();
        all.sort_by(f64::total_cmp);
        let mut tie_term = 0.0;
        let mut i = 0;
        while i < all.len() {
            let j = all[i..].iter().take_while(|&&v| v == all[i]).count();
            let t = j as f64;
            tie_term += t * t * t - t;
            i += j;
        }
        let var = n * m / 12.0 * ((total + 1.0) - tie_term / (total * (total - 1.0)));
        var.max(0.0).sqrt()
    }
}

/// P(U >= u) for u = 0..=n*m: the count of orderings of n + m distinct
/// values giving each U, by the recurrence on where the largest value
/// falls (a candidate beats all m baselines, or a baseline beats nobody).
fn exact_upper_tail(n: usize, m: usize) -> Vec<f64> {
    let max_u = n * m;
    // counts[j][u]: orderings of i candidates and j baselines with U = u,
    // for the current i.
    let mut counts: Vec<Vec<f64>> = (0..=m)
        .map(|_| {
            let mut v = vec![0.0; max_u + 1];
            v[0] = 1.0;
            v
        })
        .collect();
    for i in 1..=n {
        let mut next: Vec<Vec<f64>> = vec![vec![0.0; max_u + 1]; m + 1];
        next[0][0] = 1.0;
        for j in 1..=m {
            for u in 0..=(i * j) {
                // Largest is a candidate: it beats all j baselines.
                let a = if u >= j { counts[j][u - j] } else { 0.0 };
                // Largest is a baseline: it adds nothing.
                let b = next[j - 1][u];
                next[j][u] = a + b;
            }
        }
        counts = next;
    }
    let dist = &counts[m];
    let total: f64 = dist.iter().sum();
    let mut tail = vec![0.0; max_u + 2];
    for u in (0..=max_u).rev() {
        tail[u] = tail[u + 1] + dist[u] / total;
    }
    tail.truncate(max_u + 1);
    tail
}

/// P(Z > z) for a standard normal Z.
pub fn normal_upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Chebyshev fit, relative error under
/// 1.2e-7 everywhere: Numerical Recipes' `erfcc`).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// What a comparison concludes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Slower, significantly, and by more than the threshold.
    Regression,
    /// Faster, significantly, and by more than the threshold.
    Improvement,
    /// Neither.
    NoChange,
}

/// When a difference counts.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    /// The test's significance level (one-sided), e.g. 0.01.
    pub alpha: f64,
    /// The smallest slowdown that matters, as a fraction: 0.03 is 3%.
    pub threshold: f64,
    /// The interval's confidence, e.g. 0.95.
    pub confidence: f64,
}

impl Default for Rule {
    fn default() -> Rule {
        Rule {
            alpha: 0.01,
            threshold: 0.03,
            confidence: 0.95,
        }
    }
}

/// One metric compared.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Comparison {
    pub baseline_median: f64,
    pub candidate_median: f64,
    pub interval: RatioInterval,
    /// One-sided p-value that the candidate is slower.
    pub p_slower: f64,
    /// One-sided p-value that the candidate is faster.
    pub p_faster: f64,
    pub verdict: Verdict,
}

/// The verdict alone: significant (the rank test) and large (the ratio of
/// medians beyond the threshold), both; what the A/A and power measurements
/// run many times, so no bootstrap here.
pub fn verdict(test: &MannWhitney, baseline: &[f64], candidate: &[f64], rule: &Rule) -> Verdict {
    let (p_slower, p_faster) = test.p_values(baseline, candidate);
    verdict_of(
        median(candidate) / median(baseline),
        p_slower,
        p_faster,
        rule,
    )
}

fn verdict_of(ratio: f64, p_slower: f64, p_faster: f64, rule: &Rule) -> Verdict {
    if p_slower < rule.alpha && ratio > 1.0 + rule.threshold {
        Verdict::Regression
    } else if p_faster < rule.alpha && ratio < 1.0 / (1.0 + rule.threshold) {
        Verdict::Improvement
    } else {
        Verdict::NoChange
    }
}

/// Compares one metric's samples; the bootstrap's seed is fixed so a
/// report can be reproduced from its samples.
pub fn compare(baseline: &[f64], candidate: &[f64], rule: &Rule) -> Comparison {
    let test = MannWhitney::new(candidate.len(), baseline.len());
    let (p_slower, p_faster) = test.p_values(baseline, candidate);
    let interval = bootstrap_median_ratio(baseline, candidate, rule.confidence, RESAMPLES, 0x5eed);
    Comparison {
        baseline_median: median(baseline),
        candidate_median: median(candidate),
        interval,
        p_slower,
        p_faster,
        verdict: verdict_of(interval.ratio, p_slower, p_faster, rule),
    }
}

/// Boot-like noise, the model the rule is checked on where no real boots
/// are at hand: `base` scaled by normal jitter of relative `spread`, and one
/// boot in twenty 20% slower (a busy host).
pub fn simulated_boots(rng: &mut StdRng, n: usize, base: f64, spread: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            // Box-Muller.
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            let outlier = if rng.random::<f64>() < 0.05 { 1.2 } else { 1.0 };
            base * (1.0 + spread * z) * outlier
        })
        .collect()
}

/// How often `rule` calls `n` simulated boots a side a regression when the
/// candidate is `slowdown` slower (0 for A/A), over `trials` comparisons.
pub fn simulated_alarm_rate(
    n: usize,
    slowdown: f64,
    spread: f64,
    trials: usize,
    rule: &Rule,
) -> f64 {
    let mut rng = StdRng::seed_from_u64(42);
    let test = MannWhitney::new(n, n);
    let alarms = (0..trials)
        .filter(|_| {
            let a = simulated_boots(&mut rng, n, 1000.0, spread);
            let b = simulated_boots(&mut rng, n, 1000.0 * (1.0 + slowdown), spread);
            verdict(&test, &a, &b, rule) == Verdict::Regression
        })
        .count();
    alarms as f64 / trials.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.25), 2.0);
        assert_eq!(quantile(&[7.0], 0.9), 7.0);
    }

    #[test]
    fn too_few_runs_can_never_be_significant() {
        assert!((smallest_p(3, 3) - 0.05).abs() < 1e-12);
        assert!((smallest_p(5, 5) - 1.0 / 252.0).abs() < 1e-12);
        assert!((smallest_p(2, 7) - 1.0 / 36.0).abs() < 1e-12);
        assert_eq!(fewest_runs(0.01), 5);
        assert_eq!(fewest_runs(0.05), 4);
        assert_eq!(fewest_runs(0.001), 7);
        // What the test gives agrees: 4 a side wholly apart is p = 1/70.
        let t = MannWhitney::new(4, 4);
        let (p, _) = t.p_values(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0]);
        assert!((p - smallest_p(4, 4)).abs() < 1e-12);
    }

    #[test]
    fn normal_tail_matches_tables() {
        assert!(close(normal_upper_tail(0.0), 0.5, 1e-7));
        assert!(close(normal_upper_tail(1.644_853_6), 0.05, 1e-6));
        assert!(close(normal_upper_tail(2.326_347_9), 0.01, 1e-6));
        assert!(close(normal_upper_tail(-1.959_964), 0.975, 1e-6));
    }

    #[test]
    fn exact_distribution_is_the_known_one() {
        // n = m = 3: 20 orderings; P(U >= 9) = 1/20, P(U >= 8) = 2/20.
        let tail = exact_upper_tail(3, 3);
        assert!(close(tail[9], 0.05, 1e-12));
        assert!(close(tail[8], 0.10, 1e-12));
        assert!(close(tail[0], 1.0, 1e-12));
        // Symmetric around nm/2.
        let t = exact_upper_tail(4, 6);
        for u in 0..=24 {
            let p_eq = t[u] - if u < 24 { t[u + 1] } else { 0.0 };
            let q = 24 - u;
            let q_eq = t[q] - if q < 24 { t[q + 1] } else { 0.0 };
            assert!(close(p_eq, q_eq, 1e-12), "u={u}");
        }
    }

    #[test]
    fn separated_samples_are_significant_both_ways() {
        let base = [10.0, 11.0, 12.0, 13.0, 14.0];
        let slow = [20.0, 21.0, 22.0, 23.0, 24.0];
        let t = MannWhitney::new(5, 5);
        let (greater, smaller) = t.p_values(&base, &slow);
        // 1 / C(10, 5) = 1/252.
        assert!(close(greater, 1.0 / 252.0, 1e-12));
        assert!(close(smaller, 1.0, 1e-12));
        let (greater, smaller) = t.p_values(&slow, &base);
        assert!(close(smaller, 1.0 / 252.0, 1e-12));
        assert!(close(greater, 1.0, 1e-12));
    }

    /// One baseline boot slowed past every candidate (a busy neighbour):
    /// with seven a side the slowdown can no longer pass alpha 0.01, with
    /// eight it still does. The e2e check of a known slowdown relies on it.
    #[test]
    fn one_slow_baseline_outlier_needs_eight_boots_a_side() {
        let p_with = |n: usize| {
            let mut base: Vec<f64> = (0..n).map(|i| 6000.0 + i as f64).collect();
            base[0] = 20_000.0;
            let slow: Vec<f64> = (0..n).map(|i| 12_000.0 + i as f64).collect();
            MannWhitney::new(n, n).p_values(&base, &slow).0
        };
        assert!(close(p_with(7), 45.0 / 3432.0, 1e-12), "{}", p_with(7));
        assert!(close(p_with(8), 67.0 / 12870.0, 1e-12), "{}", p_with(8));
        assert!(p_with(7) > Rule::default().alpha);
        assert!(p_with(8) < Rule::default().alpha);
    }

    #[test]
    fn approximation_agrees_with_exact_and_handles_ties() {
        // Interleaved samples, no ties: both paths near one another.
        let base: Vec<f64> = (0..25).map(|i| f64::from(i) * 2.0).collect();
        let cand: Vec<f64> = (0..25).map(|i| f64::from(i) * 2.0 + 3.0).collect();
        let exact = MannWhitney::new(25, 25).p_values(&base, &cand);
        let approx = MannWhitney {
            n: 25,
            m: 25,
            upper_tail: None,
        }
        .p_values(&base, &cand);
        assert!(close(exact.0, approx.0, 2e-3), "{exact:?} {approx:?}");
        // All equal: nothing to conclude, no division by zero.
        let same = [5.0; 8];
        assert_eq!(MannWhitney::new(8, 8).p_values(&same, &same), (1.0, 1.0));
        // Some ties: the normal path, still sensible.
        let (g, s) = MannWhitney::new(4, 4).p_values(&[1.0, 2.0, 2.0, 3.0], &[2.0, 3.0, 4.0, 5.0]);
        assert!(g < 0.1 && s > 0.9, "{g} {s}");
    }

    #[test]
    fn bootstrap_interval_brackets_the_ratio_and_is_reproducible() {
        let base: Vec<f64> = (0..20).map(|i| 100.0 + f64::from(i % 7)).collect();
        let cand: Vec<f64> = base.iter().map(|v| v * 1.10).collect();
        let r = bootstrap_median_ratio(&base, &cand, 0.95, 2000, 7);
        assert!(close(r.ratio, 1.10, 1e-9));
        assert!(r.low <= r.ratio && r.ratio <= r.high, "{r:?}");
        assert!(r.low > 1.0 && r.high < 1.2, "{r:?}");
        assert_eq!(r, bootstrap_median_ratio(&base, &cand, 0.95, 2000, 7));
        let empty = bootstrap_median_ratio(&[], &cand, 0.95, 100, 1);
        assert!(empty.low.is_nan());
    }

    fn alarm_rate(n: usize, slowdown: f64, spread: f64, trials: usize) -> f64 {
        simulated_alarm_rate(n, slowdown, spread, trials, &Rule::default())
    }

    #[test]
    fn identical_inputs_rarely_alarm() {
        // A/A: the rank test alone alarms at most alpha of the time; the
        // threshold makes it rarer still.
        for cv in [0.01, 0.03, 0.06] {
            let rate = alarm_rate(20, 0.0, cv, 3000);
            assert!(rate <= 0.01, "cv {cv}: {rate}");
        }
    }

    #[test]
    fn a_five_percent_slowdown_is_found() {
        // With the default 20 runs a side and a few percent of noise.
        assert!(alarm_rate(20, 0.05, 0.02, 1000) >= 0.9);
        // Too much noise for 20 runs: the check says nothing rather than lie.
        assert!(alarm_rate(20, 0.05, 0.10, 1000) < 0.9);
        // And nothing below the threshold is ever a regression.
        assert_eq!(alarm_rate(20, 0.01, 0.005, 500), 0.0);
    }

    #[test]
    fn compare_reports_the_verdict_with_its_numbers() {
        let base: Vec<f64> = (0..15).map(|i| 1000.0 + f64::from(i)).collect();
        let slow: Vec<f64> = base.iter().map(|v| v * 1.2).collect();
        let c = compare(&base, &slow, &Rule::default());
        assert_eq!(c.verdict, Verdict::Regression);
        assert!(c.p_slower < 1e-6 && c.interval.low > 1.15);
        let fast: Vec<f64> = base.iter().map(|v| v * 0.8).collect();
        assert_eq!(
            compare(&base, &fast, &Rule::default()).verdict,
            Verdict::Improvement
        );
        assert_eq!(
            compare(&base, &base, &Rule::default()).verdict,
            Verdict::NoChange
        );
    }
}
