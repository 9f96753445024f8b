//! The routers placed on this host (Neutron's legacy L3 agent, centralized
//! on a gateway host). Each is a network namespace of netd's that forwards
//! between its ports and NATs to its gateway:
//!
//! - a port is a veth pair: `tap<id>` on the network's bridge (plugged and
//!   firewalled as any port; the controller marks router ports unfiltered)
//!   and `qr-<id>` (an interface, holding its subnet's gateway address) or
//!   `qg-<id>` (the gateway, on an external network) inside, with the
//!   port's MAC;
//! - the floating IPs are more addresses of `qg-`, so the router answers
//!   ARP for them, and announces each it takes (gratuitous ARP); its
//!   default route is the external subnet's gateway;
//! - one nftables ruleset inside: a floating IP's traffic is DNATed to its
//!   fixed address and its fixed address's traffic SNATed to it; the rest
//!   leaving through the gateway takes the gateway's address (`snat`).
//!
//! A pass reads the namespace's links and addresses and changes what
//! differs. The namespace lives while netd holds it (as the DHCP ones):
//! a netd that restarts builds its routers afresh within a pass, and the
//! one-to-one NAT of floating IPs picks up flows where they were.
//!
//! With `external_gateway_on_host`, this host also takes each external
//! subnet's gateway address on the external network's bridge, forwards,
//! and masquerades what the external subnets send elsewhere (an all-in-one
//! reaches its floating IPs and its guests reach what the host reaches).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::net::Ipv4Addr;

use netd_proto::{HostNetworks, HostRouter, RouterPort};

use crate::config::Config;
use crate::datapath::bridge_name;
use crate::firewall;
use crate::garp;
use crate::netns;
use crate::nl::{parse_mac, Link, Netlink, NlError};

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("router {router}: its namespace: {source}")]
    Namespace {
        router: String,
        source: std::io::Error,
    },
    #[error("router {router}: {source}")]
    Netlink { router: String, source: NlError },
    #[error("router {router}: {what}")]
    Invalid { router: String, what: String },
    #[error("the external networks: {0}")]
    External(String),
}

/// The namespace's end of a router port.
pub fn inner_name(port_id: &str, gateway: bool) -> String {
    let prefix = if gateway { "qg-" } else { "qr-" };
    format!("{prefix}{}", port_id.get(..11).unwrap_or(port_id))
}

/// The NAT ruleset of a router whose gateway port is `qg`, or None when it
/// has nothing to NAT. Every address comes parsed (`Ipv4Addr`), the link
/// name from [`inner_name`].
pub fn nat_ruleset(router: &HostRouter) -> Option<String> {
    let gw = router.gateway.as_ref()?;
    let qg = inner_name(&gw.port.id, true);
    let mut t = String::from(
        "table ip virga-router\ndelete table ip virga-router\ntable ip virga-router {\n",
    );
    t.push_str(
        "\tchain prerouting {\n\t\ttype nat hook prerouting priority -100; policy accept;\n",
    );
    for f in &router.floating {
        let _ = writeln!(t, "\t\tip daddr {} dnat to {}", f.floating, f.fixed);
    }
    t.push_str("\t}\n\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n");
    for f in &router.floating {
        let _ = writeln!(t, "\t\tip daddr {} dnat to {}", f.floating, f.fixed);
    }
    t.push_str(
        "\t}\n\tchain postrouting {\n\t\ttype nat hook postrouting priority 100; policy accept;\n",
    );
    for f in &router.floating {
        let _ = writeln!(
            t,
            "\t\toifname \"{qg}\" ip saddr {} snat to {}",
            f.fixed, f.floating
        );
    }
    if gw.snat {
        let _ = writeln!(
            t,
            "\t\toifname \"{qg}\" ip saddr != {ip} snat to {ip}",
            ip = gw.port.ip
        );
    }
    t.push_str("\t}\n}\n");
    Some(t)
}

/// What the host masquerades for the external subnets (None: nothing).
pub fn external_ruleset(cidrs: &BTreeSet<ipnet::Ipv4Net>) -> String {
    let mut t = String::from("table ip virga-external\ndelete table ip virga-external\n");
    if cidrs.is_empty() {
        return t;
    }
    let set = cidrs
        .iter()
        .map(|c| c.trunc().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let _ = write!(
        t,
        "table ip virga-external {{\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority 100; policy accept;\n\
         \t\tip saddr {{ {set} }} oifname != \"brq*\" masquerade\n\t}}\n}}\n"
    );
    t
}

/// A port as its router wants it.
struct WantedPort<'a> {
    port: &'a RouterPort,
    /// Its bridge end (the tap name the controller gave it).
    tap: &'a str,
    inner: String,
    mtu: u32,
    mac: [u8; 6],
    /// The addresses it must hold, with their prefix lengths.
    addresses: BTreeSet<(Ipv4Addr, u8)>,
}

struct RouterNs {
    /// Holds the namespace: dropped, it goes with its links.
    ns: File,
    /// A netlink socket inside it.
    nl: Netlink,
    /// The ruleset last applied inside.
    nat: Option<String>,
    /// The gateway addresses announced, by the gateway link they were
    /// announced from.
    announced: BTreeSet<(u32, Ipv4Addr)>,
    /// The default route last set: out of the gateway link (by ifindex, so
    /// that a gateway link made afresh gets it again), through the nexthop.
    route: Option<(u32, Ipv4Addr)>,
}

pub struct Routers {
    config: Config,
    running: HashMap<String, RouterNs>,
    /// The masquerade ruleset last applied on the host.
    external: Option<String>,
    /// Each router's last failure, said once.
    errors: HashMap<String, String>,
    /// Whether it was said that routers came to a host that is no gateway.
    said_not_gateway: bool,
}

fn nl(router: &str) -> impl FnOnce(NlError) -> RouterError + '_ {
    move |source| RouterError::Netlink {
        router: router.to_owned(),
        source,
    }
}

impl Routers {
    pub fn new(config: Config) -> Routers {
        Routers {
            config,
            running: HashMap::new(),
            external: None,
            errors: HashMap::new(),
            said_not_gateway: false,
        }
    }

    /// Converges the host's routers; answers the floating IPs now applied.
    /// A router that fails is said once and retried next pass; the others
    /// go on.
    pub async fn converge(&mut self, root: &Netlink, want: &HostNetworks) -> Vec<String> {
        if !want.routers.is_empty() && !self.config.gateway {
            if !self.said_not_gateway {
                tracing::warn!(
                    "routers were placed on this host, which is no gateway; ignoring them"
                );
                self.said_not_gateway = true;
            }
            return Vec::new();
        }
        let wanted: BTreeSet<&str> = want.routers.iter().map(|r| r.id.as_str()).collect();
        let stale: Vec<String> = self
            .running
            .keys()
            .filter(|id| !wanted.contains(id.as_str()))
            .cloned()
            .collect();
        for id in stale {
            if let Some(r) = self.running.remove(&id) {
                tracing::info!(router = id, "removing the router");
                remove_ports(&r.nl, &BTreeSet::new()).await.ok();
            }
        }
        self.errors.retain(|id, _| wanted.contains(id.as_str()));
        let mut applied = Vec::new();
        for router in &want.routers {
            let outcome = self.converge_one(root, want, router).await;
            let error = outcome.as_ref().err().map(ToString::to_string);
            if error.as_ref() != self.errors.get(&router.id) {
                match &error {
                    Some(e) => tracing::warn!("{e}"),
                    None => tracing::info!(router = router.id, "router converged"),
                }
            }
            match error {
                Some(e) => {
                    self.errors.insert(router.id.clone(), e);
                }
                None => {
                    self.errors.remove(&router.id);
                    applied.extend(router.floating.iter().map(|f| f.id.clone()));
                }
            }
        }
        if self.config.external_gateway_on_host {
            if let Err(e) = self.converge_external(root, want).await {
                tracing::warn!("{e}");
            }
        }
        applied
    }

    async fn converge_one(
        &mut self,
        root: &Netlink,
        want: &HostNetworks,
        router: &HostRouter,
    ) -> Result<(), RouterError> {
        let id = router.id.as_str();
        let ports = wanted_ports(want, router)?;
        if !self.running.contains_key(id) {
            let made = start(id).await?;
            self.running.insert(id.to_owned(), made);
        }
        let Some(r) = self.running.get_mut(id) else {
            return Ok(());
        };
        let inside = r.nl.links().await.map_err(nl(id))?;
        let keep: BTreeSet<String> = ports.iter().map(|p| p.inner.clone()).collect();
        remove_ports(&r.nl, &keep).await.map_err(nl(id))?;
        // The host's links as they were before this pass plugged anything.
        let links_before = root.links().await.map_err(nl(id))?;
        let mut qg: Option<Link> = None;
        for p in &ports {
            let link = match inside.iter().find(|l| l.name == p.inner) {
                Some(l) => l.clone(),
                None => {
                    plug(root, &r.ns, &links_before, p).await.map_err(nl(id))?;
                    r.nl.links()
                        .await
                        .map_err(nl(id))?
                        .into_iter()
                        .find(|l| l.name == p.inner)
                        .ok_or_else(|| RouterError::Invalid {
                            router: id.to_owned(),
                            what: format!("{} did not arrive in the namespace", p.inner),
                        })?
                }
            };
            if p.inner.starts_with("qg-") {
                qg = Some(link.clone());
            }
            if !link.up || link.mtu != p.mtu {
                r.nl.set_mac_mtu_up(&link, p.mac, p.mtu)
                    .await
                    .map_err(nl(id))?;
            }
            let have: BTreeSet<(Ipv4Addr, u8)> =
                r.nl.addresses(&link)
                    .await
                    .map_err(nl(id))?
                    .into_iter()
                    .collect();
            for (ip, prefix) in have.difference(&p.addresses) {
                r.nl.delete_address(&link, *ip, *prefix)
                    .await
                    .map_err(nl(id))?;
            }
            for (ip, prefix) in p.addresses.difference(&have) {
                r.nl.add_address(&link, *ip, *prefix)
                    .await
                    .map_err(nl(id))?;
            }
            if p.inner.starts_with("qg-") {
                // A tap plugged this pass is not in `links_before`: it joins
                // its bridge later in the pass.
                let on_bridge = links_before
                    .iter()
                    .any(|l| l.name == p.tap && l.master.is_some());
                announce(r, &link, p, on_bridge);
            }
        }
        // The default route, through the external subnet's gateway (it goes
        // with the gateway link, so a new link needs it again).
        let nexthop = router.gateway.as_ref().and_then(|g| g.nexthop);
        let route = qg.zip(nexthop);
        let wanted = route.as_ref().map(|(link, gw)| (link.index, *gw));
        if wanted != r.route {
            if let Some((link, gw)) = &route {
                r.nl.default_route_via(link, *gw).await.map_err(nl(id))?;
            }
            r.route = wanted;
        }
        let nat = nat_ruleset(router)
            .unwrap_or_else(|| "table ip virga-router\ndelete table ip virga-router\n".to_owned());
        if r.nat.as_ref() != Some(&nat) {
            let runtime = tokio::runtime::Handle::current();
            netns::within(&r.ns, &runtime, || {
                firewall::apply_blocking(&nat).map_err(std::io::Error::other)
            })
            .map_err(|e| RouterError::Invalid {
                router: id.to_owned(),
                what: format!("its NAT rules: {e}"),
            })?;
            r.nat = Some(nat);
        }
        Ok(())
    }

    /// The host as the external subnets' gateway: their gateway addresses
    /// on their bridges, forwarding, and masquerading what they send out.
    async fn converge_external(
        &mut self,
        root: &Netlink,
        want: &HostNetworks,
    ) -> Result<(), RouterError> {
        let links = root
            .links()
            .await
            .map_err(|e| RouterError::External(e.to_string()))?;
        let mut cidrs = BTreeSet::new();
        for net in want.networks.iter().filter(|n| n.external) {
            let Some(bridge) = links.iter().find(|l| l.name == bridge_name(&net.id)) else {
                continue;
            };
            let have: BTreeSet<(Ipv4Addr, u8)> = root
                .addresses(bridge)
                .await
                .map_err(|e| RouterError::External(e.to_string()))?
                .into_iter()
                .collect();
            for s in &net.subnets {
                let (Some(gw), Ok(cidr)) = (s.gateway, s.cidr.parse::<ipnet::Ipv4Net>()) else {
                    continue;
                };
                cidrs.insert(cidr.trunc());
                if !have.contains(&(gw, cidr.prefix_len())) {
                    tracing::info!(network = net.id, address = %gw, "the host takes the external gateway");
                    root.add_address(bridge, gw, cidr.prefix_len())
                        .await
                        .map_err(|e| RouterError::External(e.to_string()))?;
                }
            }
        }
        let text = external_ruleset(&cidrs);
        if self.external.as_ref() != Some(&text) {
            if !cidrs.is_empty() {
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                    .map_err(|e| RouterError::External(format!("enabling forwarding: {e}")))?;
            }
            firewall::apply(&text)
                .await
                .map_err(|e| RouterError::External(e.to_string()))?;
            self.external = Some(text);
        }
        Ok(())
    }
}

/// The ports `router` must have, from the host's networks (a port not yet
/// bound here is left for a later pass).
fn wanted_ports<'a>(
    want: &'a HostNetworks,
    router: &'a HostRouter,
) -> Result<Vec<WantedPort<'a>>, RouterError> {
    let gateway = router.gateway.as_ref().map(|g| (&g.port, true));
    let mut out = Vec::new();
    for (port, is_gateway) in router.interfaces.iter().map(|p| (p, false)).chain(gateway) {
        let Some((net, local)) = want.networks.iter().find_map(|n| {
            (n.id == port.network_id)
                .then(|| n.ports.iter().find(|l| l.id == port.id).map(|l| (n, l)))
                .flatten()
        }) else {
            continue;
        };
        let mac = parse_mac(&port.mac).ok_or_else(|| RouterError::Invalid {
            router: router.id.clone(),
            what: format!("port {} has a bad MAC {:?}", port.id, port.mac),
        })?;
        if port.prefix_len > 32 {
            return Err(RouterError::Invalid {
                router: router.id.clone(),
                what: format!("port {} has a prefix /{}", port.id, port.prefix_len),
            });
        }
        let mut addresses = BTreeSet::from([(port.ip, port.prefix_len)]);
        if is_gateway {
            addresses.extend(router.floating.iter().map(|f| (f.floating, 32)));
        }
        out.push(WantedPort {
            port,
            tap: &local.tap,
            inner: inner_name(&port.id, is_gateway),
            mtu: net.mtu,
            mac,
            addresses,
        });
    }
    Ok(out)
}

/// Announces the gateway's addresses not yet announced from its link (a
/// floating IP may come from another router: the external side learns at
/// once where it lives now). Only once the link's tap is on its bridge, a
/// pass after a new link was plugged: before, the frame would go nowhere.
fn announce(r: &mut RouterNs, link: &Link, p: &WantedPort<'_>, on_bridge: bool) {
    r.announced
        .retain(|(index, ip)| *index == link.index && p.addresses.iter().any(|(a, _)| a == ip));
    if !on_bridge {
        return;
    }
    let runtime = tokio::runtime::Handle::current();
    for (ip, _) in &p.addresses {
        if !r.announced.insert((link.index, *ip)) {
            continue;
        }
        let sent = netns::within(&r.ns, &runtime, || garp::announce(link.index, p.mac, *ip));
        if let Err(e) = sent {
            tracing::warn!(port = p.port.id, address = %ip, "gratuitous ARP: {e}");
        }
    }
}

/// A new router namespace: loopback up, forwarding on.
async fn start(id: &str) -> Result<RouterNs, RouterError> {
    let ns_error = |source| RouterError::Namespace {
        router: id.to_owned(),
        source,
    };
    let ns = netns::create().map_err(ns_error)?;
    let runtime = tokio::runtime::Handle::current();
    let inside = netns::within(&ns, &runtime, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
        Netlink::connect().map_err(std::io::Error::other)
    })
    .map_err(ns_error)?;
    let links = inside.links().await.map_err(nl(id))?;
    if let Some(lo) = links.iter().find(|l| l.name == "lo") {
        inside.set_up(lo).await.map_err(nl(id))?;
    }
    tracing::info!(router = id, "router namespace made");
    Ok(RouterNs {
        ns,
        nl: inside,
        nat: None,
        route: None,
        announced: BTreeSet::new(),
    })
}

/// Makes a port's veth pair: the tap on the host (left for the datapath to
/// attach), the other end moved into the router's namespace.
async fn plug(
    root: &Netlink,
    ns: &File,
    links: &[Link],
    p: &WantedPort<'_>,
) -> Result<(), NlError> {
    // A pair of an earlier netd's namespace may still be going away.
    for stale in links
        .iter()
        .filter(|l| l.name == p.tap || l.name == p.inner)
    {
        root.delete(stale).await?;
    }
    root.add_veth(p.tap, &p.inner).await?;
    let now = root.links().await?;
    let inner = now
        .iter()
        .find(|l| l.name == p.inner)
        .ok_or_else(|| NlError::Missing(p.inner.clone()))?;
    root.set_mac_mtu_up(inner, p.mac, p.mtu).await?;
    root.move_to(inner, ns).await?;
    tracing::info!(port = p.port.id, link = p.inner, "router port plugged");
    Ok(())
}

/// Deletes the namespace's router ports not in `keep` (their taps go too).
async fn remove_ports(inside: &Netlink, keep: &BTreeSet<String>) -> Result<(), NlError> {
    for link in inside.links().await? {
        let ours = link.name.starts_with("qr-") || link.name.starts_with("qg-");
        if ours && !keep.contains(&link.name) {
            tracing::info!(link = link.name, "removing a router port");
            inside.delete(&link).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netd_proto::{FloatingNat, RouterGateway};

    fn port(id: &str, ip: [u8; 4], prefix_len: u8) -> RouterPort {
        RouterPort {
            id: id.into(),
            network_id: "n".into(),
            mac: "fa:16:3e:00:00:01".into(),
            ip: Ipv4Addr::from(ip),
            prefix_len,
        }
    }

    fn router(snat: bool, floating: Vec<FloatingNat>) -> HostRouter {
        HostRouter {
            id: "r1".into(),
            gateway: Some(RouterGateway {
                port: port("0123456789abcdef", [172, 24, 4, 2], 24),
                nexthop: Some(Ipv4Addr::new(172, 24, 4, 1)),
                snat,
            }),
            interfaces: vec![port("fedcba9876543210", [10, 0, 0, 1], 24)],
            floating,
        }
    }

    #[test]
    fn port_names_fit_the_kernel() {
        assert_eq!(inner_name("0123456789abcdef", true), "qg-0123456789a");
        assert_eq!(inner_name("0123456789abcdef", false), "qr-0123456789a");
        assert!(inner_name("0123456789abcdef", false).len() <= 15);
    }

    #[test]
    fn floating_ips_are_one_to_one_nat_and_the_rest_takes_the_gateway() {
        let fip = FloatingNat {
            id: "f1".into(),
            floating: Ipv4Addr::new(172, 24, 4, 3),
            fixed: Ipv4Addr::new(10, 0, 0, 5),
        };
        let text = nat_ruleset(&router(true, vec![fip])).unwrap_or_default();
        assert!(text.starts_with("table ip virga-router\ndelete table ip virga-router\n"));
        assert_eq!(
            text.matches("ip daddr 172.24.4.3 dnat to 10.0.0.5").count(),
            2
        );
        assert!(text.contains("oifname \"qg-0123456789a\" ip saddr 10.0.0.5 snat to 172.24.4.3"));
        assert!(
            text.contains("oifname \"qg-0123456789a\" ip saddr != 172.24.4.2 snat to 172.24.4.2")
        );
        // The floating IP's own SNAT comes before the gateway's.
        assert!(text.find("snat to 172.24.4.3") < text.find("snat to 172.24.4.2"));
        // nft 1.0.6 wants each closing brace on a line of its own.
        assert!(!text.contains(";}") && !text.contains("\"}"));
    }

    #[test]
    fn without_snat_only_floating_ips_are_translated() {
        let text = nat_ruleset(&router(false, vec![])).unwrap_or_default();
        assert!(!text.contains("snat"), "{text}");
        let no_gateway = HostRouter {
            gateway: None,
            ..router(true, vec![])
        };
        assert_eq!(nat_ruleset(&no_gateway), None);
    }

    #[test]
    fn the_host_masquerades_only_the_external_subnets() {
        let cidrs: BTreeSet<ipnet::Ipv4Net> = ["172.24.4.0/24".parse().unwrap_or_default()]
            .into_iter()
            .collect();
        let text = external_ruleset(&cidrs);
        assert!(text.contains("ip saddr { 172.24.4.0/24 } oifname != \"brq*\" masquerade"));
        let none = external_ruleset(&BTreeSet::new());
        assert_eq!(
            none,
            "table ip virga-external\ndelete table ip virga-external\n"
        );
    }
}
