//! Token buckets that cap a device's bytes and operations per second.
//!
//! A bucket holds up to one second of tokens and may go into debt: a request
//! larger than the bucket still passes once the bucket is not in debt, and the
//! debt delays what follows. So a limit never starves a large request, and the
//! long-run rate is exact.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A device's limits; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
    /// Requests (disks) or packets (NICs) per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_per_sec: Option<u64>,
}

impl RateLimit {
    pub fn is_unlimited(&self) -> bool {
        self.bytes_per_sec.is_none() && self.ops_per_sec.is_none()
    }

    /// Zero rates would block a device forever: refuse them.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("bytes_per_sec", self.bytes_per_sec),
            ("ops_per_sec", self.ops_per_sec),
        ] {
            if v == Some(0) {
                return Err(format!(
                    "{name} must be above 0 (leave it out for no limit)"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct TokenBucket {
    rate: u64,
    /// May be negative: debt from a request larger than what was there.
    tokens: i128,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u64, now: Instant) -> Self {
        TokenBucket {
            rate,
            tokens: i128::from(rate),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        let added = elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000;
        self.tokens = (self.tokens + added as i128).min(i128::from(self.rate));
    }

    /// How long until the bucket is out of debt (zero: now).
    fn wait(&self) -> Duration {
        if self.tokens >= 0 {
            return Duration::ZERO;
        }
        let nanos = (-self.tokens) as u128 * 1_000_000_000 / u128::from(self.rate.max(1));
        Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64 + 1)
    }
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    /// Set while the device's data bypasses this process (vhost-net), where no
    /// limit can be enforced.
    pub bypassed: bool,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        let mut l = RateLimiter::default();
        l.set(limit, Instant::now());
        l
    }

    pub fn set(&mut self, limit: RateLimit, now: Instant) {
        self.bytes = limit.bytes_per_sec.map(|r| TokenBucket::new(r, now));
        self.ops = limit.ops_per_sec.map(|r| TokenBucket::new(r, now));
    }

    pub fn limit(&self) -> RateLimit {
        RateLimit {
            bytes_per_sec: self.bytes.as_ref().map(|b| b.rate),
            ops_per_sec: self.ops.as_ref().map(|b| b.rate),
        }
    }

    /// Takes `bytes` and `ops` if neither bucket is in debt; otherwise says how
    /// long to wait before asking again.
    pub fn consume(&mut self, bytes: u64, ops: u64, now: Instant) -> Result<(), Duration> {
        let mut wait = Duration::ZERO;
        for bucket in [&mut self.bytes, &mut self.ops].into_iter().flatten() {
            bucket.refill(now);
            wait = wait.max(bucket.wait());
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        if let Some(b) = &mut self.bytes {
            b.tokens -= i128::from(bytes);
        }
        if let Some(b) = &mut self.ops {
            b.tokens -= i128::from(ops);
        }
        Ok(())
    }
}

pub type SharedRateLimiter = Arc<Mutex<RateLimiter>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_always_passes() {
        let mut l = RateLimiter::new(RateLimit::default());
        let now = Instant::now();
        for _ in 0..1000 {
            assert!(l.consume(1 << 30, 1, now).is_ok());
        }
    }

    #[test]
    fn bytes_are_paced_at_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::default();
        l.set(
            RateLimit {
                bytes_per_sec: Some(1000),
                ops_per_sec: None,
            },
            t0,
        );
        // One second of burst, then debt.
        assert!(l.consume(600, 1, t0).is_ok());
        assert!(
            l.consume(600, 1, t0).is_ok(),
            "a bucket not in debt lets a request through"
        );
        let wait = l.consume(1, 1, t0).unwrap_err();
        assert!(
            (Duration::from_millis(199)..=Duration::from_millis(201)).contains(&wait),
            "{wait:?}"
        );
        assert!(l.consume(1, 1, t0 + Duration::from_millis(100)).is_err());
        assert!(l.consume(1, 1, t0 + Duration::from_millis(201)).is_ok());
    }

    #[test]
    fn ops_limit_and_runtime_changes() {
        let t0 = Instant::now();
        let mut l = RateLimiter::default();
        l.set(
            RateLimit {
                bytes_per_sec: None,
                ops_per_sec: Some(2),
            },
            t0,
        );
        assert!(l.consume(0, 1, t0).is_ok());
        assert!(l.consume(0, 1, t0).is_ok());
        assert!(l.consume(0, 1, t0).is_ok(), "debt of one op");
        assert!(l.consume(0, 1, t0).is_err());
        l.set(RateLimit::default(), t0);
        assert!(l.consume(0, 1, t0).is_ok(), "limit lifted");
        assert_eq!(l.limit(), RateLimit::default());
    }

    #[test]
    fn zero_rates_are_refused() {
        assert!(RateLimit {
            bytes_per_sec: Some(0),
            ops_per_sec: None
        }
        .validate()
        .is_err());
        assert!(RateLimit {
            bytes_per_sec: Some(1),
            ops_per_sec: Some(5)
        }
        .validate()
        .is_ok());
        let parsed: Result<RateLimit, _> = serde_json::from_str(r#"{"bytes": 5}"#);
        assert!(parsed.is_err(), "unknown fields refused");
    }
}
