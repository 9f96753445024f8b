//! hostd: runs, supervises and re-adopts VMM processes on one host.
//!
//! - [`config`]: the TOML configuration, checked up front
//! - [`instance`]: instance specs, states and records
//! - [`store`]: the state file, replaced atomically
//! - [`process`]: starting, finding again and watching VMM processes
//! - [`cgroup`]: one cgroup v2 group per VMM with its CPU and memory limits

pub mod cgroup;
pub mod config;
pub mod instance;
pub mod process;
pub mod store;
