//! Tests that need a tool: under `cargo xtask test` (which installs every
//! tool and sets `VIRGA_REQUIRE_TOOLS=1`) a missing one fails the test; in a
//! plain `cargo test` on a bare machine the test says it skips.

/// Whether this run must have every tool its tests use.
pub fn required() -> bool {
    std::env::var_os("VIRGA_REQUIRE_TOOLS").is_some()
}

/// A test's tool is missing: fails the test when tools are required, or says
/// the test skips.
pub fn missing(what: &str) {
    assert!(!required(), "{what} is required but missing");
    eprintln!("skipping: {what} is missing (cargo xtask install adds it)");
}
