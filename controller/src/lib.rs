//! The controller: Virga's OpenStack-compatible front door.
//!
//! - [`config`]: the TOML configuration
//! - [`store`]: the SQL database (SQLite or PostgreSQL) and its migrations
//! - [`identity`]: users, projects, roles, passwords and tokens
//! - [`api`]: the HTTP APIs (Keystone v3 today; Nova and Glance next)

pub mod api;
pub mod config;
pub mod identity;
pub mod store;
