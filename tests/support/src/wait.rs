//! Polling for what happens in the background, with a deadline that fails the
//! test with what it waited for.

use std::time::{Duration, Instant};

/// Calls `check` every 20 ms until it returns something, at most `timeout`.
pub fn until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = check() {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "waited {timeout:?} for {what} in vain"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
