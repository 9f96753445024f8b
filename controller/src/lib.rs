//! The controller: Virga's OpenStack-compatible front door.
//!
//! - [`config`]: the TOML configuration
//! - [`store`]: the SQL database (SQLite or PostgreSQL) and its migrations
//! - [`identity`]: users, projects, roles, passwords and tokens
//! - [`compute`]: flavors, with servers and scheduling next
//! - [`image`]: image records and their stored bytes
//! - [`hostd_client`]: calls to the hosts' hostd APIs
//! - [`api`]: the HTTP APIs (Keystone v3, Nova v2.1 flavors, Glance v2)

pub mod api;
pub mod compute;
pub mod config;
pub mod hostd_client;
pub mod identity;
pub mod image;
pub mod store;
