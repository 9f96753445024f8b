//! What Virga's tests share, so that each test crate does not grow its own
//! HTTP client, token helper or port picker:
//!
//! - [`acked`]: what an object store may hold after a crash, from its
//!   client's log
//! - [`disks`]: synthetic GPT/MBR disks with ext4 filesystems (Debian-,
//!   Ubuntu- and BLS-style `/boot`s)
//! - [`fuzz`]: the fuzz targets' runner: budgets of cases or time, hangs
//! - [`http`]: one HTTP/1.1 request per connection, over TCP or a Unix
//!   socket, with a deadline; the raw bytes are kept for binary bodies
//! - [`identity`]: Keystone v3 password tokens
//! - [`netns`]: network namespaces as hosts and guests, and calls from
//!   inside one
//! - [`netlab`]: a controller and two hosts with their netd, as namespaces
//! - [`ports`]: free TCP ports
//! - [`wait`]: polling with a deadline and a message
//! - [`stub`]: stand-in HTTP servers answered by a handler
//! - [`tools`]: a test whose tool (PostgreSQL, qemu-img, the openstack CLI) is
//!   missing fails under `cargo xtask test`, and skips elsewhere

pub mod acked;
pub mod disks;
pub mod fuzz;
pub mod http;
pub mod identity;
pub mod netlab;
pub mod netns;
pub mod ports;
pub mod stub;
pub mod tools;
pub mod wait;
