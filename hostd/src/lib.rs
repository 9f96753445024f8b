//! hostd: runs, supervises and re-adopts VMM processes on one host.
//!
//! - [`config`]: the TOML configuration, checked up front
//! - [`instance`]: instance specs, states and records
//! - [`store`]: one record file per instance, each replaced atomically
//! - [`process`]: starting, finding again and watching VMM processes
//! - [`cgroup`]: one cgroup v2 group per VMM with its CPU and memory limits
//! - [`supervisor`]: the registry of instances, one actor each (lifecycle,
//!   exit watching, re-adoption), memory admission
//! - [`api`]: the HTTP API (TCP and Unix socket, bearer token)
//! - [`host`]: host facts: CPUs, memory, disk, KVM mode
//! - [`registration`]: heartbeats to the controller
//! - [`controller_client`]: calls to the controller's internal API
//! - [`images`]: the cache of images fetched from the controller
//! - [`root_disk`]: instances' writable copies of disk images
//! - [`snapshots`]: root-disk snapshots uploaded to the controller as images
//! - [`config_drive`]: the `config-2` drive cloud-init reads
//! - [`boot_picker`]: runs the sandboxed `virga-bootpick` on a root disk
//! - [`pick_cache`]: picks kept per image, for root disks no guest ran on

pub mod api;
pub mod boot_picker;
pub mod cgroup;
pub mod config;
pub mod config_drive;
pub mod controller_client;
pub mod ephemeral_disks;
pub mod host;
pub mod images;
pub mod instance;
pub mod nbd;
pub mod pick_cache;
pub mod process;
pub mod registration;
pub mod root_disk;
pub mod snapshots;
pub mod store;
pub mod supervisor;
