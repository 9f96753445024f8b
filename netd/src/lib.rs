//! netd: each host's network agent. It carries the host's share of the
//! tenant networks the controller holds: a bridge and a VXLAN device per
//! network, the taps of the host's ports on them, and tunnel entries to
//! the other hosts' ports; security groups, DHCP and metadata for its
//! guests; and, on a gateway host, routers with their floating IPs. All
//! from the controller's intended state.
//!
//! - [`config`]: the TOML file
//! - [`controller`]: the report-and-fetch call
//! - [`agent`]: the reconciler loop
//! - [`datapath`]: one convergence pass, and the pure plan behind it
//! - [`firewall`]: security groups and anti-spoofing, as one nftables
//!   ruleset
//! - [`garp`]: gratuitous ARP for the addresses routers take
//! - [`localport`]: each DHCP network's namespace and port on this host
//! - [`router`]: the routers placed on this host (namespaces, NAT for
//!   gateways and floating IPs), and the host as the external gateway
//! - [`dhcp`]: static leases from the intended state, and the server
//! - [`metadata`]: the metadata service at 169.254.169.254 (OpenStack, EC2)
//! - [`netns`]: network namespaces held by netd, made and entered without
//!   forking
//! - [`nl`]: rtnetlink, wrapped

pub mod agent;
pub mod config;
pub mod controller;
pub mod datapath;
pub mod dhcp;
pub mod firewall;
pub mod garp;
pub mod localport;
pub mod metadata;
pub mod netns;
pub mod nl;
pub mod router;
