//! The controller: Virga's OpenStack-compatible front door.
//!
//! - [`app`]: the services wired together, shared by handlers and reconcilers
//! - [`context`]: who asks, and the request's id
//! - [`background`]: the reconcilers' driver (periods, triggers, status)
//! - [`config`]: the TOML configuration
//! - [`store`]: the SQL database (SQLite or PostgreSQL) and its migrations
//! - [`identity`]: users, projects, roles, passwords and tokens
//! - [`compute`]: flavors, keypairs, quotas, hosts, scheduling, servers; the
//!   servers' logic (create, delete, actions) and reconcilers in [`compute::service`]
//! - [`image`]: image records and their stored bytes
//! - [`network`]: networks, subnets, ports, security groups (Neutron's
//!   intended state, which each host's netd converges to)
//! - [`hostd_client`]: calls to the hosts' hostd APIs
//! - [`storaged_client`]: calls to the storage hosts' storaged APIs (volumes,
//!   image data)
//! - [`api`]: the HTTP APIs (Keystone v3, Nova v2.1, Glance v2, Neutron v2.0)

pub mod api;
pub mod app;
pub mod background;
pub mod compute;
pub mod config;
pub mod context;
pub mod hostd_client;
pub mod identity;
pub mod image;
pub mod network;
pub mod storaged_client;
pub mod store;
pub mod volume;
