//! The host's overlay datapath, converged to the controller's intended state
//! (Neutron's linuxbridge layout, with every entry from the control plane):
//! per network a bridge `brq<id[..11]>` and a VXLAN device `vxlan-<vni>` on
//! it that neither learns nor guesses; the taps of the network's ports on
//! this host on the bridge; and on the VXLAN device one entry per remote
//! port's MAC (to its host's endpoint) plus one all-zero entry per remote
//! host (the flood list for broadcast and unknown frames).
//!
//! A pass reads the kernel and changes only what differs, so it can run any
//! number of times and after netd was killed anywhere. Bridges and VXLAN
//! devices named as netd names them that no network wants are removed, and
//! a link on a network's bridge that is not one of the network's taps is
//! taken off it (a deleted port's tap must not stay on its network).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netd_proto::{HostNetwork, HostNetworks, VXLAN_PORT};

use crate::firewall::{self, FirewallError};
use crate::localport::{self, LocalPorts};
use crate::nl::{parse_mac, Link, Netlink, NlError, TunnelEntry, VxlanSpec};
use crate::router::Routers;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
}

/// How often the ruleset is written again though unchanged (repairing
/// whatever else changed it).
const FIREWALL_REFRESH: Duration = Duration::from_secs(30);

pub fn bridge_name(network_id: &str) -> String {
    format!("brq{}", network_id.get(..11).unwrap_or(network_id))
}

pub fn vxlan_name(vni: u32) -> String {
    format!("vxlan-{vni}")
}

/// Whether netd made (and so may remove) a link of this name.
fn ours(name: &str) -> bool {
    ((name.starts_with("brq") || name.starts_with("dhp")) && name.len() == 14)
        || name
            .strip_prefix("vxlan-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The entries the VXLAN device of `net` must have, seen from `vtep`.
pub fn wanted_entries(net: &HostNetwork, vtep: Ipv4Addr) -> BTreeSet<TunnelEntry> {
    let mut want = BTreeSet::new();
    for dst in net.flood_list() {
        if dst != vtep {
            want.insert(TunnelEntry { mac: [0; 6], dst });
        }
    }
    for port in &net.remote {
        match parse_mac(&port.mac) {
            Some(mac) if port.vtep != vtep => {
                want.insert(TunnelEntry {
                    mac,
                    dst: port.vtep,
                });
            }
            Some(_) => {
                tracing::warn!(port = port.id, "a remote port with this host's endpoint")
            }
            None => tracing::warn!(port = port.id, mac = port.mac, "a port with a bad MAC"),
        }
    }
    want
}

/// A bridge port as it must be: on `bridge`, with `mtu`, up.
#[derive(Debug, PartialEq, Eq)]
pub struct Attach<'a> {
    pub link: &'a Link,
    pub bridge: u32,
    pub mtu: u32,
}

/// How the links must change, once the bridges and VXLAN devices exist.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LinkPlan<'a> {
    pub attach: Vec<Attach<'a>>,
    pub detach: Vec<&'a Link>,
    /// The ports whose taps are where they must be: plugged.
    pub plugged: Vec<String>,
}

/// The members each wanted bridge must have, and which links are off;
/// `refused` ports (the firewall could not cover them) stay off.
pub fn plan_links<'a>(
    want: &HostNetworks,
    links: &'a [Link],
    refused: &BTreeSet<String>,
) -> LinkPlan<'a> {
    let by_name: HashMap<&str, &Link> = links.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut plan = LinkPlan::default();
    let mut members: HashMap<u32, BTreeSet<u32>> = HashMap::new();
    for net in &want.networks {
        let Some(bridge) = by_name.get(bridge_name(&net.id).as_str()) else {
            continue;
        };
        let wanted = members.entry(bridge.index).or_default();
        let mut member = |link: &'a Link| {
            wanted.insert(link.index);
            let placed = link.master == Some(bridge.index) && link.mtu == net.mtu && link.up;
            if !placed {
                plan.attach.push(Attach {
                    link,
                    bridge: bridge.index,
                    mtu: net.mtu,
                });
            }
            placed
        };
        if let Some(vxlan) = by_name.get(vxlan_name(net.vni).as_str()) {
            member(vxlan);
        }
        if localport::wanted(net) {
            if let Some(dhcp) = by_name.get(localport::host_end(&net.id).as_str()) {
                member(dhcp);
            }
        }
        for port in &net.ports {
            let Some(tap) = by_name.get(port.tap.as_str()) else {
                continue;
            };
            if !port.admin_state_up || refused.contains(&port.id) {
                continue;
            }
            if member(tap) {
                plan.plugged.push(port.id.clone());
            }
        }
    }
    for link in links {
        if let Some(master) = link.master {
            if members
                .get(&master)
                .is_some_and(|m| !m.contains(&link.index))
            {
                plan.detach.push(link);
            }
        }
    }
    plan
}

pub struct Datapath {
    nl: Netlink,
    vtep: Ipv4Addr,
    underlay: Option<String>,
    /// The ruleset last written, and when.
    firewall: Option<(String, Instant)>,
    local: LocalPorts,
    /// The local ports' last failure, if they are failing.
    dhcp_error: Option<String>,
    routers: Routers,
}

/// What a pass achieved, for the next report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Converged {
    /// The ports plugged.
    pub plugged: Vec<String>,
    /// The floating IPs whose NAT is in place.
    pub floating: Vec<String>,
}

impl Datapath {
    pub fn new(nl: Netlink, config: &crate::config::Config) -> Datapath {
        Datapath {
            nl,
            vtep: config.vtep,
            underlay: config.underlay_dev.clone(),
            firewall: None,
            local: LocalPorts::new(config.clone()),
            dhcp_error: None,
            routers: Routers::new(config.clone()),
        }
    }

    /// One pass towards `want`; answers with the ports now plugged and the
    /// floating IPs applied. A port's tap joins its bridge only once the
    /// firewall covers it.
    pub async fn converge(&mut self, want: &HostNetworks) -> Result<Converged, DatapathError> {
        let links = self.nl.links().await?;
        let wanted: BTreeSet<String> = want
            .networks
            .iter()
            .flat_map(|n| {
                let dhcp = localport::wanted(n).then(|| localport::host_end(&n.id));
                [bridge_name(&n.id), vxlan_name(n.vni)]
                    .into_iter()
                    .chain(dhcp)
            })
            .collect();
        // VXLAN devices first: a bridge going away frees its ports anyway.
        let mut stale: Vec<&Link> = links
            .iter()
            .filter(|l| ours(&l.name) && !wanted.contains(&l.name))
            .collect();
        stale.sort_by_key(|l| !l.name.starts_with("vxlan-"));
        for link in stale {
            tracing::info!(link = link.name, "removing");
            self.nl.delete(link).await?;
        }
        let names: BTreeSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
        let underlay = match &self.underlay {
            Some(dev) => Some(
                links
                    .iter()
                    .find(|l| &l.name == dev)
                    .map(|l| l.index)
                    .ok_or_else(|| NlError::Missing(dev.clone()))?,
            ),
            None => None,
        };
        for net in &want.networks {
            let bridge = bridge_name(&net.id);
            if !names.contains(bridge.as_str()) {
                tracing::info!(network = net.id, bridge, "creating the bridge");
                self.nl.add_bridge(&bridge, net.mtu).await?;
            }
            let vxlan = vxlan_name(net.vni);
            if !names.contains(vxlan.as_str()) {
                tracing::info!(network = net.id, vxlan, "creating the VXLAN device");
                self.nl
                    .add_vxlan(&VxlanSpec {
                        name: &vxlan,
                        vni: net.vni,
                        local: self.vtep,
                        underlay,
                        port: VXLAN_PORT,
                        mtu: net.mtu,
                    })
                    .await?;
            }
        }

        // DHCP is no security boundary: a port is plugged without it.
        let links = self.nl.links().await?;
        // Said once, not every pass, while it keeps failing the same way.
        let dhcp = self
            .local
            .converge(&self.nl, want, &links)
            .await
            .err()
            .map(|e| e.to_string());
        if dhcp != self.dhcp_error {
            match &dhcp {
                Some(e) => tracing::warn!("DHCP and metadata: {e}"),
                None if self.dhcp_error.is_some() => tracing::info!("DHCP and metadata recovered"),
                None => {}
            }
            self.dhcp_error = dhcp;
        }
        // Routers make their ports' taps, which the firewall then covers.
        let floating = self.routers.converge(&self.nl, want).await;
        let links = self.nl.links().await?;
        let fw = firewall::plan(want, &links);
        let fresh = self
            .firewall
            .as_ref()
            .is_some_and(|(text, at)| *text == fw.text && at.elapsed() < FIREWALL_REFRESH);
        if !fresh {
            firewall::prepare()?;
            firewall::apply(&fw.text).await?;
            self.firewall = Some((fw.text, Instant::now()));
        }
        let plan = plan_links(want, &links, &fw.refused);
        for a in &plan.attach {
            tracing::info!(link = a.link.name, bridge = a.bridge, "attaching");
            self.nl.attach(a.link, a.bridge, a.mtu).await?;
        }
        for link in &plan.detach {
            tracing::warn!(link = link.name, "taking a stranger off a network's bridge");
            self.nl.detach(link).await?;
        }
        // The tunnel and the DHCP port talk to guests, never to each other:
        // each host answers its own guests.
        for net in &want.networks {
            for name in [vxlan_name(net.vni), localport::host_end(&net.id)] {
                if let Some(link) = links.iter().find(|l| l.name == name) {
                    self.nl.isolate(link).await?;
                }
            }
        }
        let plugged = if plan.attach.is_empty() && plan.detach.is_empty() {
            plan.plugged
        } else {
            plan_links(want, &self.nl.links().await?, &fw.refused).plugged
        };

        for net in &want.networks {
            let name = vxlan_name(net.vni);
            let Some(vxlan) = links.iter().find(|l| l.name == name) else {
                continue;
            };
            self.converge_entries(vxlan.index, &wanted_entries(net, self.vtep))
                .await?;
        }
        Ok(Converged { plugged, floating })
    }

    async fn converge_entries(
        &self,
        index: u32,
        want: &BTreeSet<TunnelEntry>,
    ) -> Result<(), NlError> {
        let have: BTreeSet<TunnelEntry> =
            self.nl.tunnel_entries(index).await?.into_iter().collect();
        tracing::debug!(index, ?have, ?want, "tunnel entries");
        for e in have.difference(want) {
            tracing::info!(index, ?e, "removing a tunnel entry");
            self.nl.delete_tunnel_entry(index, *e).await?;
        }
        for e in want.difference(&have) {
            tracing::info!(index, ?e, "adding a tunnel entry");
            self.nl.add_tunnel_entry(index, *e).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netd_proto::{LocalPort, RemotePort};

    fn link(index: u32, name: &str, master: Option<u32>, mtu: u32, up: bool) -> Link {
        Link {
            index,
            name: name.into(),
            master,
            mtu,
            up,
        }
    }

    fn network() -> HostNetwork {
        HostNetwork {
            id: "0123456789abcdef".into(),
            vni: 42,
            mtu: 1450,
            external: false,
            subnets: vec![],
            ports: vec![
                LocalPort {
                    id: "p1".into(),
                    tap: "tapp1".into(),
                    mac: "fa:16:3e:00:00:01".into(),
                    ips: vec![],
                    admin_state_up: true,
                    port_security: true,
                    allowed_pairs: vec![],
                    rules: vec![],
                },
                LocalPort {
                    id: "p2".into(),
                    tap: "tapp2".into(),
                    mac: "fa:16:3e:00:00:02".into(),
                    ips: vec![],
                    admin_state_up: true,
                    port_security: true,
                    allowed_pairs: vec![],
                    rules: vec![],
                },
            ],
            remote: vec![
                RemotePort {
                    id: "r1".into(),
                    mac: "fa:16:3e:00:00:03".into(),
                    ips: vec![],
                    vtep: Ipv4Addr::new(172, 16, 0, 2),
                },
                RemotePort {
                    id: "r2".into(),
                    mac: "not a mac".into(),
                    ips: vec![],
                    vtep: Ipv4Addr::new(172, 16, 0, 3),
                },
            ],
        }
    }

    #[test]
    fn names_fit_the_kernel_and_mark_what_is_ours() {
        assert_eq!(bridge_name("0123456789abcdef"), "brq0123456789a");
        assert!(bridge_name("0123456789abcdef").len() <= 15);
        assert!(vxlan_name((1 << 24) - 1).len() <= 15);
        assert!(ours("brq0123456789a"));
        assert!(ours("vxlan-42"));
        for other in [
            "br0",
            "brq",
            "vxlan-",
            "vxlan-4x",
            "eth0",
            "tap0123456789a",
            "brq0123456789ab",
        ] {
            assert!(!ours(other), "{other}");
        }
    }

    #[test]
    fn tunnel_entries_flood_each_remote_host_and_point_each_mac() {
        let me = Ipv4Addr::new(172, 16, 0, 1);
        let want = wanted_entries(&network(), me);
        let flood = |d: [u8; 4]| TunnelEntry {
            mac: [0; 6],
            dst: Ipv4Addr::from(d),
        };
        let expect: BTreeSet<TunnelEntry> = [
            flood([172, 16, 0, 2]),
            // A port with a bad MAC still has a host to flood to.
            flood([172, 16, 0, 3]),
            TunnelEntry {
                mac: [0xfa, 0x16, 0x3e, 0, 0, 3],
                dst: Ipv4Addr::new(172, 16, 0, 2),
            },
        ]
        .into();
        assert_eq!(want, expect);
        // Never an entry pointing at this host itself.
        let want = wanted_entries(&network(), Ipv4Addr::new(172, 16, 0, 2));
        assert!(want.iter().all(|e| e.dst != Ipv4Addr::new(172, 16, 0, 2)));
    }

    #[test]
    fn links_are_attached_detached_and_plugged_by_the_plan() {
        let want = HostNetworks {
            networks: vec![network()],
            routers: vec![],
            groups: Default::default(),
        };
        let links = vec![
            link(1, "eth0", None, 1500, true),
            link(5, "brq0123456789a", None, 1450, true),
            link(6, "vxlan-42", None, 1450, false),
            // Placed: plugged.
            link(7, "tapp1", Some(5), 1450, true),
            // On the bridge with the wrong MTU: attached again, not plugged yet.
            link(8, "tapp2", Some(5), 1500, true),
            // A stranger on the network's bridge.
            link(9, "tapgone", Some(5), 1450, true),
            // On some other bridge: none of netd's business.
            link(10, "veth0", Some(99), 1500, true),
        ];
        let plan = plan_links(&want, &links, &BTreeSet::new());
        let attached: Vec<(&str, u32, u32)> = plan
            .attach
            .iter()
            .map(|a| (a.link.name.as_str(), a.bridge, a.mtu))
            .collect();
        assert_eq!(attached, vec![("vxlan-42", 5, 1450), ("tapp2", 5, 1450)]);
        let detached: Vec<&str> = plan.detach.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(detached, vec!["tapgone"]);
        assert_eq!(plan.plugged, vec!["p1".to_owned()]);
    }

    #[test]
    fn a_port_that_is_down_or_has_no_tap_is_not_plugged() {
        let mut net = network();
        net.ports[0].admin_state_up = false;
        let want = HostNetworks {
            networks: vec![net],
            routers: vec![],
            groups: Default::default(),
        };
        let links = vec![
            link(5, "brq0123456789a", None, 1450, true),
            link(7, "tapp1", Some(5), 1450, true),
        ];
        let plan = plan_links(&want, &links, &BTreeSet::new());
        assert!(plan.plugged.is_empty());
        // Its tap leaves the bridge: a port that is down carries nothing.
        assert_eq!(plan.detach, vec![&links[1]]);
        // No bridge yet: nothing to plan.
        let plan = plan_links(&want, &links[1..], &BTreeSet::new());
        assert_eq!(plan, LinkPlan::default());
        // A port the firewall refused stays off its bridge.
        let mut up = network();
        up.ports.truncate(1);
        let want = HostNetworks {
            networks: vec![up],
            routers: vec![],
            groups: Default::default(),
        };
        let plan = plan_links(&want, &links, &BTreeSet::from(["p1".to_owned()]));
        assert!(plan.plugged.is_empty());
        assert_eq!(plan.detach, vec![&links[1]]);
    }
}
