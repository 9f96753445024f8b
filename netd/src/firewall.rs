//! Security groups and anti-spoofing for the host's ports, as one nftables
//! ruleset replaced in one transaction (`nft -f`).
//!
//! Security groups are stateful, so they need conntrack; the bridge family
//! has it only with `nf_conntrack_bridge`, which many kernels lack. Bridged
//! IPv4 goes through the IP hooks instead (`br_netfilter`, with
//! `bridge-nf-call-iptables`), where conntrack works everywhere, but where
//! the bridge's ports are not visible. So the bridge family, which sees the
//! ports, marks each frame with its ports:
//!
//! - `bridge virga prerouting`: a port's frames must carry its own MACs and
//!   addresses (DHCP requests from 0.0.0.0 aside; no DHCP answers, no IPv6,
//!   nothing but IPv4 and ARP), then the mark's low half gets the in-port's
//!   slot;
//! - `bridge virga forward`: the high half gets the out-port's slot;
//! - `ip virga raw`: the connection's zone is its network's (tenants'
//!   addresses overlap across networks);
//! - `ip virga forward`: established flows pass; a new one passes the
//!   in-port's egress rules (`egress-N`, which return) and the out-port's
//!   ingress rules (`ingress-N`, which accept); each ends in a drop.
//!
//! A port's slot is its tap's ifindex's low 16 bits: stable while the tap
//! lives, so a frame marked under one ruleset is judged by the same port's
//! chains under the next. Two taps with the same slot (ifindexes 65,536
//! apart) would share rules: the second is refused, never plugged.
//!
//! External networks keep the host's own zone (0): the host may be their
//! gateway, and its masquerade must see both directions in one zone.
//!
//! Everything written into the ruleset from the controller's answer is
//! parsed first (MACs, addresses, prefixes, names), never pasted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use netd_proto::{Direction, HostNetworks, LocalPort, Remote, Rule, VXLAN_PORT};

use crate::datapath::vxlan_name;
use crate::localport;
use crate::nl::{mac_text, parse_mac, Link};

/// The sysctl that sends bridged IPv4 through the IP hooks (per namespace).
const CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("bridged traffic cannot be filtered: {CALL_IPTABLES} is missing (load br_netfilter: modprobe br_netfilter)")]
    NoBrNetfilter,
    #[error("{CALL_IPTABLES}: {0}")]
    Sysctl(std::io::Error),
    #[error("running nft: {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
}

/// The ruleset for the host, and the ports it could not cover (never to be
/// plugged).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Firewall {
    pub text: String,
    pub refused: BTreeSet<String>,
}

/// A link's slot: its ifindex's low 16 bits (0 is no slot).
fn slot(index: u32) -> Option<u16> {
    u16::try_from(index & 0xffff).ok().filter(|s| *s != 0)
}

/// A name the kernel takes for a link, and nothing nft would read as more.
fn link_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A conntrack zone per network (16 bits; 0 is the host's own).
fn zone(vni: u32) -> u16 {
    u16::try_from(vni & 0xffff)
        .ok()
        .filter(|z| *z != 0)
        .unwrap_or(1)
}

/// A port's own addresses and MACs, checked; None if any is malformed.
struct Identity {
    macs: BTreeSet<String>,
    /// Addresses and prefixes, as nft reads them.
    addresses: BTreeSet<String>,
}

fn identity(port: &LocalPort) -> Option<Identity> {
    let mut macs = BTreeSet::from([mac_text(&parse_mac(&port.mac)?)]);
    let mut addresses: BTreeSet<String> = port.ips.iter().map(Ipv4Addr::to_string).collect();
    for pair in &port.allowed_pairs {
        macs.insert(mac_text(&parse_mac(&pair.mac)?));
        addresses.insert(prefix(&pair.ip)?);
    }
    Some(Identity { macs, addresses })
}

/// An address or CIDR as nft reads it (`10.0.0.5`, `10.0.0.0/24`).
fn prefix(text: &str) -> Option<String> {
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Some(ip.to_string());
    }
    let net: ipnet::Ipv4Net = text.parse().ok()?;
    Some(net.trunc().to_string())
}

fn set(items: impl IntoIterator<Item = String>) -> String {
    format!("{{ {} }}", items.into_iter().collect::<Vec<_>>().join(", "))
}

/// A rule's match and verdict, or None when it can match nothing (a remote
/// group with no members, a malformed prefix). `sets` names each remote
/// group's set (`g<n>`), absent for a group without members.
fn rule_line(rule: &Rule, sets: &BTreeMap<&str, usize>) -> Option<String> {
    let mut line = String::new();
    let peer = match rule.direction {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    match &rule.remote {
        Remote::Any => {}
        Remote::Prefix(p) => {
            let _ = write!(line, "ip {peer} {} ", prefix(p)?);
        }
        Remote::Group(id) => {
            let _ = write!(line, "ip {peer} @g{} ", sets.get(id.as_str())?);
        }
    }
    let range = match (rule.port_min, rule.port_max) {
        (Some(a), Some(b)) if a == b => Some(a.to_string()),
        (Some(a), Some(b)) => Some(format!("{a}-{b}")),
        (Some(a), None) => Some(a.to_string()),
        (None, Some(b)) => Some(format!("0-{b}")),
        (None, None) => None,
    };
    match (rule.protocol, range) {
        (None, _) => {}
        (Some(1), _) => {
            line.push_str("ip protocol 1 ");
            if let Some(t) = rule.port_min {
                let _ = write!(line, "icmp type {t} ");
                if let Some(c) = rule.port_max {
                    let _ = write!(line, "icmp code {c} ");
                }
            }
        }
        (Some(6), Some(r)) => {
            let _ = write!(line, "tcp dport {r} ");
        }
        (Some(17), Some(r)) => {
            let _ = write!(line, "udp dport {r} ");
        }
        (Some(p @ (33 | 132 | 136)), Some(r)) => {
            let _ = write!(line, "meta l4proto {p} th dport {r} ");
        }
        (Some(p), _) => {
            let _ = write!(line, "ip protocol {p} ");
        }
    }
    line.push_str(match rule.direction {
        Direction::Ingress => "accept",
        Direction::Egress => "return",
    });
    Some(line)
}

/// The ruleset for `want` on a host with `links`.
pub fn plan(want: &HostNetworks, links: &[Link]) -> Firewall {
    let by_name: HashMap<&str, &Link> = links.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut refused = BTreeSet::new();
    // Every link that gets a slot: the ports' taps and the VXLAN devices.
    let mut taken: BTreeMap<u16, &str> = BTreeMap::new();
    let mut zones: BTreeMap<u16, u16> = BTreeMap::new();
    let mut secured: Vec<(u16, &LocalPort, Identity)> = Vec::new();
    for net in &want.networks {
        // The network's own links: marked for its zone, never filtered.
        for name in [vxlan_name(net.vni), localport::host_end(&net.id)] {
            if let Some(link) = by_name.get(name.as_str()) {
                if let Some(s) = slot(link.index).filter(|s| !taken.contains_key(s)) {
                    taken.insert(s, link.name.as_str());
                    if !net.external {
                        zones.insert(s, zone(net.vni));
                    }
                }
            }
        }
        for port in &net.ports {
            if !link_name(&port.tap) {
                tracing::error!(port = port.id, tap = port.tap, "a tap name nft cannot take");
                refused.insert(port.id.clone());
                continue;
            }
            let Some(link) = by_name.get(port.tap.as_str()) else {
                continue;
            };
            let Some(s) = slot(link.index).filter(|s| !taken.contains_key(s)) else {
                tracing::error!(
                    port = port.id,
                    tap = port.tap,
                    index = link.index,
                    "the tap's slot is taken"
                );
                refused.insert(port.id.clone());
                continue;
            };
            if !port.port_security {
                taken.insert(s, &link.name);
                if !net.external {
                    zones.insert(s, zone(net.vni));
                }
                continue;
            }
            let Some(id) = identity(port) else {
                tracing::error!(port = port.id, "a MAC or address that cannot be filtered");
                refused.insert(port.id.clone());
                continue;
            };
            taken.insert(s, &link.name);
            if !net.external {
                zones.insert(s, zone(net.vni));
            }
            secured.push((s, port, id));
        }
    }

    let mut t = String::new();
    // Created if missing so that the delete succeeds: one transaction
    // replaces both tables.
    t.push_str(
        "table bridge virga\ndelete table bridge virga\ntable ip virga\ndelete table ip virga\n",
    );
    // Every frame looks its ports up in maps (hashed), never along a list
    // of rules, however many ports the host has.
    t.push_str("table bridge virga {\n\tchain prerouting {\n\t\ttype filter hook prerouting priority -350; policy accept;\n");
    if !secured.is_empty() {
        let spoof = set(secured
            .iter()
            .map(|(s, port, _)| format!("\"{}\" : jump spoof-{s}", port.tap)));
        let _ = writeln!(t, "\t\tiifname vmap {spoof}");
    }
    if !taken.is_empty() {
        let slots = set(taken.iter().map(|(s, name)| format!("\"{name}\" : {s}")));
        let _ = writeln!(t, "\t\tmeta mark set iifname map {slots}");
    }
    t.push_str(
        "\t}\n\tchain forward {\n\t\ttype filter hook forward priority -10; policy accept;\n",
    );
    if !taken.is_empty() {
        let out = set(taken
            .iter()
            .map(|(s, name)| format!("\"{name}\" : jump out-{s}")));
        let _ = writeln!(t, "\t\toifname vmap {out}");
    }
    t.push_str("\t}\n");
    // The out-port's slot goes in the mark's high half, next to the in-port's.
    for s in taken.keys() {
        let _ = write!(
            t,
            "\tchain out-{s} {{\n\t\tmeta mark set meta mark or {}\n\t}}\n",
            u32::from(*s) << 16
        );
    }
    for (s, _, id) in &secured {
        let macs = set(id.macs.iter().cloned());
        let ips = set(id.addresses.iter().cloned());
        let arp_ips = set(id
            .addresses
            .iter()
            .cloned()
            .chain(["0.0.0.0".to_owned()])
            .collect::<BTreeSet<_>>());
        let _ = write!(
            t,
            "\tchain spoof-{s} {{\n\
             \t\tether saddr != {macs} drop\n\
             \t\tether type arp arp saddr ether != {macs} drop\n\
             \t\tether type arp arp saddr ip != {arp_ips} drop\n\
             \t\tether type arp return\n\
             \t\tether type ip udp sport 68 udp dport 67 return\n\
             \t\tether type ip ip saddr != {ips} drop\n\
             \t\tether type ip udp sport 67 drop\n\
             \t\tether type ip return\n\
             \t\tdrop\n\
             \t}}\n"
        );
    }
    t.push_str("}\n");

    t.push_str("table ip virga {\n");
    // Each remote group's members once, however many ports' rules name it.
    let sets: BTreeMap<&str, usize> = want
        .groups
        .iter()
        .filter(|(_, ips)| !ips.is_empty())
        .enumerate()
        .map(|(n, (id, _))| (id.as_str(), n))
        .collect();
    for (id, n) in &sets {
        let ips = want.groups.get(*id).map(Vec::as_slice).unwrap_or_default();
        let _ = write!(
            t,
            "\tset g{n} {{\n\t\ttype ipv4_addr\n\t\telements = {}\n\t}}\n",
            set(ips.iter().map(Ipv4Addr::to_string))
        );
    }
    t.push_str("\tchain raw {\n\t\ttype filter hook prerouting priority -300; policy accept;\n");
    // The tunnel's own packets are not tracked (their inner packets are, in
    // their network's zone): the security groups never look at them.
    let _ = writeln!(t, "\t\tudp dport {VXLAN_PORT} notrack");
    if !zones.is_empty() {
        let map = set(zones.iter().map(|(s, z)| format!("{s} : {z}")));
        let _ = writeln!(
            t,
            "\t\tiifname \"brq*\" ct zone set meta mark and 0xffff map {map}"
        );
    }
    let _ = write!(
        t,
        "\t}}\n\tchain raw-out {{\n\t\ttype filter hook output priority -300; policy accept;\n\t\tudp dport {VXLAN_PORT} notrack\n"
    );
    t.push_str("\t}\n\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n");
    t.push_str("\t\tiifname != \"brq*\" accept\n\t\tct state established,related accept\n\t\tct state invalid drop\n");
    if !secured.is_empty() {
        let egress = set(secured
            .iter()
            .map(|(s, _, _)| format!("{s} : jump egress-{s}")));
        let ingress = set(secured
            .iter()
            .map(|(s, _, _)| format!("{} : jump ingress-{s}", u32::from(*s) << 16)));
        let _ = writeln!(t, "\t\tmeta mark and 0xffff vmap {egress}");
        let _ = writeln!(t, "\t\tmeta mark and 0xffff0000 vmap {ingress}");
    }
    t.push_str("\t}\n");
    for (s, port, _) in &secured {
        let _ = write!(
            t,
            "\tchain egress-{s} {{\n\t\tudp sport 68 udp dport 67 return\n"
        );
        // Sets: allow rules commute, and the same rules give the same text.
        let egress: BTreeSet<String> = port
            .rules
            .iter()
            .filter(|r| r.direction == Direction::Egress)
            .filter_map(|r| rule_line(r, &sets))
            .collect();
        for line in egress {
            let _ = writeln!(t, "\t\t{line}");
        }
        // DHCP answers (guests cannot send them: spoof chains drop them).
        let _ = write!(
            t,
            "\t\tdrop\n\t}}\n\tchain ingress-{s} {{\n\t\tudp sport 67 udp dport 68 accept\n"
        );
        let ingress: BTreeSet<String> = port
            .rules
            .iter()
            .filter(|r| r.direction == Direction::Ingress)
            .filter_map(|r| rule_line(r, &sets))
            .collect();
        for line in ingress {
            let _ = writeln!(t, "\t\t{line}");
        }
        t.push_str("\t\tdrop\n\t}\n");
    }
    t.push_str("}\n");
    Firewall { text: t, refused }
}

/// Makes bridged IPv4 go through the IP hooks, where the rules are.
pub fn prepare() -> Result<(), FirewallError> {
    match std::fs::read_to_string(CALL_IPTABLES) {
        Ok(v) if v.trim() == "1" => Ok(()),
        Ok(_) => std::fs::write(CALL_IPTABLES, "1").map_err(FirewallError::Sysctl),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FirewallError::NoBrNetfilter),
        Err(e) => Err(FirewallError::Sysctl(e)),
    }
}

/// As [`apply`], blocking: for a thread inside another namespace (`nft`
/// works in the namespace of the thread that starts it).
pub fn apply_blocking(text: &str) -> Result<(), FirewallError> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(FirewallError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(FirewallError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(FirewallError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FirewallError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// Replaces the ruleset, atomically.
pub async fn apply(text: &str) -> Result<(), FirewallError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(FirewallError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(FirewallError::Spawn)?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(FirewallError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FirewallError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netd_proto::{AllowedPair, HostNetwork};

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            master: None,
            mtu: 1450,
            up: true,
        }
    }

    fn port(id: &str, tap: &str, secured: bool, rules: Vec<Rule>) -> LocalPort {
        LocalPort {
            id: id.into(),
            tap: tap.into(),
            mac: "FA:16:3E:00:00:01".into(),
            ips: vec![Ipv4Addr::new(10, 0, 0, 5)],
            admin_state_up: true,
            port_security: secured,
            allowed_pairs: vec![AllowedPair {
                ip: "10.0.1.7/24".into(),
                mac: "fa:16:3e:00:00:09".into(),
            }],
            rules,
        }
    }

    fn rule(
        direction: Direction,
        protocol: Option<u8>,
        ports: (Option<u16>, Option<u16>),
        remote: Remote,
    ) -> Rule {
        Rule {
            direction,
            protocol,
            port_min: ports.0,
            port_max: ports.1,
            remote,
        }
    }

    fn want(ports: Vec<LocalPort>) -> HostNetworks {
        HostNetworks {
            networks: vec![HostNetwork {
                id: "n".into(),
                vni: 1000,
                mtu: 1450,
                external: false,
                subnets: vec![],
                ports,
                remote: vec![],
            }],
            routers: vec![],
            groups: Default::default(),
        }
    }

    #[test]
    fn rules_read_as_nft_matches() {
        use Direction::*;
        let cases = [
            (
                rule(Ingress, Some(6), (Some(22), Some(22)), Remote::Any),
                Some("tcp dport 22 accept"),
            ),
            (
                rule(
                    Ingress,
                    Some(17),
                    (Some(53), Some(54)),
                    Remote::Prefix("192.0.2.9/24".into()),
                ),
                Some("ip saddr 192.0.2.0/24 udp dport 53-54 accept"),
            ),
            (
                rule(Egress, None, (None, None), Remote::Any),
                Some("return"),
            ),
            (
                rule(Egress, Some(132), (Some(9), Some(9)), Remote::Any),
                Some("meta l4proto 132 th dport 9 return"),
            ),
            (
                rule(
                    Ingress,
                    Some(1),
                    (Some(8), Some(0)),
                    Remote::Group("web".into()),
                ),
                Some("ip saddr @g3 ip protocol 1 icmp type 8 icmp code 0 accept"),
            ),
            (
                rule(Ingress, Some(1), (None, None), Remote::Any),
                Some("ip protocol 1 accept"),
            ),
            (
                rule(Ingress, Some(47), (None, None), Remote::Any),
                Some("ip protocol 47 accept"),
            ),
            // Nobody in the remote group yet: nothing to let in.
            (
                rule(Ingress, None, (None, None), Remote::Group("empty".into())),
                None,
            ),
            // What is not a prefix never reaches nft.
            (
                rule(
                    Ingress,
                    None,
                    (None, None),
                    Remote::Prefix("10.0.0.0/24 accept; drop".into()),
                ),
                None,
            ),
        ];
        let sets = BTreeMap::from([("web", 3)]);
        for (r, expect) in cases {
            assert_eq!(rule_line(&r, &sets).as_deref(), expect, "{r:?}");
        }
    }

    #[test]
    fn remote_groups_are_named_sets_written_once_however_many_rules_name_them() {
        let links = [link(8, "tapa"), link(9, "tapb")];
        let from = |g: &str| {
            rule(
                Direction::Ingress,
                None,
                (None, None),
                Remote::Group(g.into()),
            )
        };
        let mut w = want(vec![
            port("a", "tapa", true, vec![from("web"), from("nobody")]),
            port("b", "tapb", true, vec![from("web")]),
        ]);
        w.groups = BTreeMap::from([
            (
                "web".to_owned(),
                vec![Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::new(10, 0, 0, 6)],
            ),
            ("nobody".to_owned(), vec![]),
        ]);
        let t = plan(&w, &links).text;
        assert_eq!(
            t.matches("elements = { 10.0.0.5, 10.0.0.6 }").count(),
            1,
            "{t}"
        );
        assert!(t.contains("\tset g0 {\n\t\ttype ipv4_addr\n"), "{t}");
        assert_eq!(t.matches("ip saddr @g0 accept").count(), 2, "{t}");
        // A group without members has no set and lets nobody in.
        assert_eq!(t.matches("set g").count(), 1, "{t}");
        assert!(!t.contains("@g1"), "{t}");
    }

    #[test]
    fn secured_ports_get_spoof_egress_and_ingress_chains_and_open_ones_only_a_slot() {
        let links = [
            link(1, "eth0"),
            link(7, "vxlan-1000"),
            link(8, "tapa"),
            link(9, "tapb"),
        ];
        let w = want(vec![
            port(
                "a",
                "tapa",
                true,
                vec![rule(
                    Direction::Ingress,
                    Some(6),
                    (Some(22), Some(22)),
                    Remote::Any,
                )],
            ),
            port("b", "tapb", false, vec![]),
        ]);
        let fw = plan(&w, &links);
        assert!(fw.refused.is_empty());
        let t = &fw.text;
        for line in [
            "iifname vmap { \"tapa\" : jump spoof-8 }",
            "meta mark set iifname map { \"vxlan-1000\" : 7, \"tapa\" : 8, \"tapb\" : 9 }",
            "oifname vmap { \"vxlan-1000\" : jump out-7, \"tapa\" : jump out-8, \"tapb\" : jump out-9 }",
            "chain out-8 {\n\t\tmeta mark set meta mark or 524288\n",
            "udp dport 4789 notrack",
            "ether saddr != { fa:16:3e:00:00:01, fa:16:3e:00:00:09 } drop",
            "ether type ip ip saddr != { 10.0.0.5, 10.0.1.0/24 } drop",
            "ether type arp arp saddr ip != { 0.0.0.0, 10.0.0.5, 10.0.1.0/24 } drop",
            "iifname \"brq*\" ct zone set meta mark and 0xffff map { 7 : 1000, 8 : 1000, 9 : 1000 }",
            "meta mark and 0xffff vmap { 8 : jump egress-8 }",
            "meta mark and 0xffff0000 vmap { 524288 : jump ingress-8 }",
            "tcp dport 22 accept",
        ] {
            assert!(t.contains(line), "missing {line:?} in\n{t}");
        }
        assert!(!t.contains("spoof-9") && !t.contains("egress-9"), "{t}");
    }

    #[test]
    fn ports_that_cannot_be_covered_are_refused() {
        // Two taps 65,536 ifindexes apart share a slot; a bad MAC or tap
        // name cannot be written into a rule.
        let links = [
            link(8, "tapa"),
            link(8 + 65_536, "tapb"),
            link(10, "tapc"),
            link(65_536, "tapd"),
        ];
        let mut bad_mac = port("c", "tapc", true, vec![]);
        bad_mac.mac = "fa:16:3e:00:00:01\"; flush ruleset".into();
        let w = want(vec![
            port("a", "tapa", true, vec![]),
            port("b", "tapb", true, vec![]),
            bad_mac,
            port("d", "tapd", true, vec![]),
            port("e", "tap\"e", true, vec![]),
        ]);
        let fw = plan(&w, &links);
        let refused: Vec<&str> = fw.refused.iter().map(String::as_str).collect();
        assert_eq!(refused, vec!["b", "c", "d", "e"]);
        assert!(!fw.text.contains("flush") && !fw.text.contains("tap\"e"));
    }
}
