//! Logging helpers.

/// A warning a guest can trigger at will: logged at most once per second per call
/// site, so a guest cannot flood the host's logs.
#[macro_export]
macro_rules! rate_limited_warn {
    ($($arg:tt)*) => {{
        static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if LAST.swap(now, std::sync::atomic::Ordering::Relaxed) != now {
            tracing::warn!($($arg)*);
        }
    }};
}
