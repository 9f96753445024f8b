//! What netd and the controller say to each other. Each netd calls
//! `PUT /internal/v1/hosts/{host_id}/network` with a [`Report`] (its tunnel
//! address and the ports it has plugged) and gets back [`HostNetworks`]: the
//! intended state of every network that has a port bound to its host, with
//! where each of the network's other ports lives. One call both reports and
//! fetches, so a netd that restarts converges from a single answer.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The VXLAN UDP port (IANA's; the kernel's default, 8472, is not it).
pub const VXLAN_PORT: u16 = 4789;

/// What a netd tells the controller on each pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// This host's tunnel endpoint: the underlay address other hosts send
    /// this host's overlay traffic to.
    pub vtep: Ipv4Addr,
    /// The ports whose taps are on their network's bridge, up, on this host.
    pub plugged: Vec<String>,
    /// Whether this host is a gateway host: it reaches the external
    /// networks, so routers may be placed on it.
    #[serde(default)]
    pub gateway: bool,
    /// The floating IPs whose NAT this host's routers apply.
    #[serde(default)]
    pub floating: Vec<String>,
}

/// The networks a host must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNetworks {
    pub networks: Vec<HostNetwork>,
    /// The routers placed on this host and up (their ports are among the
    /// networks' local ports).
    #[serde(default)]
    pub routers: Vec<HostRouter>,
    /// The addresses of each remote group the rules name, sorted (empty:
    /// nobody yet).
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<Ipv4Addr>>,
}

/// One network as one host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNetwork {
    pub id: String,
    /// The VXLAN network identifier (24 bits).
    pub vni: u32,
    pub mtu: u32,
    /// `router:external`: routers' gateways and floating IPs live on it.
    #[serde(default)]
    pub external: bool,
    /// The network's subnets: what its DHCP answers.
    #[serde(default)]
    pub subnets: Vec<SubnetInfo>,
    /// The network's ports bound to this host.
    pub ports: Vec<LocalPort>,
    /// The network's ports bound to other hosts that have a tunnel endpoint.
    pub remote: Vec<RemotePort>,
}

/// What a guest is told about itself (its config drive's contents), as
/// `GET /internal/v1/hosts/{host}/ports/{port}/metadata` answers for the
/// metadata service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestMetadata {
    /// `meta_data.json`: `uuid`, `name`, `hostname`, `public_keys`, ...
    pub meta_data: Map<String, Value>,
    /// Base64, as Nova's API takes it.
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub vendor_data: Map<String, Value>,
    #[serde(default)]
    pub network_data: Map<String, Value>,
}

/// A subnet as the network's guests are told of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetInfo {
    /// `10.0.0.0/24`.
    pub cidr: String,
    pub gateway: Option<Ipv4Addr>,
    /// Whether guests get their addresses by DHCP.
    pub dhcp: bool,
    pub dns: Vec<Ipv4Addr>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// A CIDR.
    pub destination: String,
    pub nexthop: Ipv4Addr,
}

/// A port on this host: its tap goes on the network's bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPort {
    pub id: String,
    /// The tap hostd makes for the port's server (`tap` + 11 characters).
    pub tap: String,
    pub mac: String,
    pub ips: Vec<Ipv4Addr>,
    pub admin_state_up: bool,
    /// Filtered: only its own MACs and addresses out, only what its groups'
    /// rules allow in and out (stateful). Off: anything goes.
    pub port_security: bool,
    /// More addresses (or CIDRs) and MACs it may send from.
    pub allowed_pairs: Vec<AllowedPair>,
    /// Its security groups' IPv4 rules, remote groups resolved to addresses.
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedPair {
    /// An address or a CIDR (`10.0.0.0/24`).
    pub ip: String,
    pub mac: String,
}

/// One rule that lets traffic through (everything else is dropped).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rule {
    pub direction: Direction,
    /// The IP protocol's number; None: any.
    pub protocol: Option<u8>,
    /// A port range (TCP, UDP, SCTP, DCCP, UDP-Lite) or, for ICMP, the type
    /// (`port_min`) and code (`port_max`).
    pub port_min: Option<u16>,
    pub port_max: Option<u16>,
    pub remote: Remote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Into the port's guest.
    Ingress,
    /// Out of it.
    Egress,
}

/// Where the other end of a rule's traffic may be.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Remote {
    Any,
    /// A CIDR.
    Prefix(String),
    /// A remote group's ports, by the group's id in [`HostNetworks::groups`]
    /// (sent once per answer however many rules name it).
    Group(String),
}

/// A router on this host: a namespace joined to each of its networks by a
/// port (its taps are `tap<id>`, like a server's), forwarding between them,
/// and NATing to its external gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRouter {
    pub id: String,
    /// Its port on an external network, if it has a gateway.
    pub gateway: Option<RouterGateway>,
    /// Its ports on project networks, each holding a subnet's gateway.
    pub interfaces: Vec<RouterPort>,
    /// One-to-one NAT between a floating IP and a fixed one.
    pub floating: Vec<FloatingNat>,
}

/// One of a router's ports: its address on one subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterPort {
    pub id: String,
    pub network_id: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterGateway {
    pub port: RouterPort,
    /// The external subnet's gateway: the router's default route.
    pub nexthop: Option<Ipv4Addr>,
    /// Whether project traffic leaving through the gateway takes the
    /// gateway's address (Neutron's `enable_snat`).
    pub snat: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FloatingNat {
    /// The floating IP's id (reported back once applied).
    pub id: String,
    pub floating: Ipv4Addr,
    pub fixed: Ipv4Addr,
}

/// A port on another host: frames for its MAC go through that host's
/// tunnel endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemotePort {
    pub id: String,
    pub mac: String,
    pub ips: Vec<Ipv4Addr>,
    pub vtep: Ipv4Addr,
}

impl HostNetwork {
    /// The tunnel endpoints broadcast, unknown-unicast and multicast frames
    /// are copied to: each other host with a port on the network, once.
    pub fn flood_list(&self) -> Vec<Ipv4Addr> {
        let mut vteps: Vec<Ipv4Addr> = self.remote.iter().map(|r| r.vtep).collect();
        vteps.sort();
        vteps.dedup();
        vteps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flood_list_names_each_remote_host_once() {
        let remote = |id: &str, vtep: [u8; 4]| RemotePort {
            id: id.into(),
            mac: "fa:16:3e:00:00:01".into(),
            ips: vec![],
            vtep: Ipv4Addr::from(vtep),
        };
        let net = HostNetwork {
            id: "n".into(),
            vni: 7,
            mtu: 1450,
            external: false,
            subnets: vec![],
            ports: vec![],
            remote: vec![
                remote("a", [10, 0, 0, 3]),
                remote("b", [10, 0, 0, 2]),
                remote("c", [10, 0, 0, 3]),
            ],
        };
        assert_eq!(
            net.flood_list(),
            vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)]
        );
    }

    #[test]
    fn a_report_reads_back_as_sent() {
        let r = Report {
            vtep: Ipv4Addr::new(172, 16, 0, 1),
            plugged: vec!["p1".into()],
            gateway: true,
            floating: vec!["f1".into()],
        };
        let text = serde_json::to_string(&r).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"vtep":"172.16.0.1","plugged":["p1"],"gateway":true,"floating":["f1"]}"#
        );
        assert_eq!(serde_json::from_str::<Report>(&text).ok(), Some(r));
    }
}
