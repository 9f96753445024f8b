//! What each host's netd asks of the network service: its report (its
//! tunnel endpoint, the ports it has plugged) is recorded, the ports bound
//! to its host go ACTIVE or DOWN by it, as Neutron's agents make them, and
//! the answer is the intended state of every network with a port on the
//! host, with the other hosts' ports of those networks and where they are.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

use netd_proto::{
    AllowedPair, Direction, FloatingNat, HostNetwork, HostNetworks, HostRouter, LocalPort, Remote,
    RemotePort, Report, Route, RouterGateway, RouterPort, Rule, SubnetInfo,
};

use super::model::{Port, Router, SecurityGroupRule, ROUTER_GATEWAY, ROUTER_INTERFACE};
use super::nova::tap_name;
use super::service::{rules::protocol_number, NetworkService};
use super::NetworkError;
use crate::identity::now;

fn ips(port: &Port) -> Vec<Ipv4Addr> {
    port.fixed_ips.iter().map(|f| f.ip_address).collect()
}

/// A VXLAN id as the kernel takes it (the store hands out 24-bit ids).
fn vni(id: i64) -> Option<u32> {
    u32::try_from(id).ok().filter(|v| *v < 1 << 24)
}

impl NetworkService {
    /// Records `host_id`'s report and answers with what its netd must carry.
    pub async fn agent_sync(
        &self,
        host_id: &str,
        report: &Report,
    ) -> Result<HostNetworks, NetworkError> {
        let store = self.store();
        store
            .record_agent(host_id, &report.vtep.to_string(), now())
            .await?;
        // A gateway host takes the routers no host has yet.
        if report.gateway {
            for id in store.place_routers(host_id).await? {
                tracing::info!(router = id, host = host_id, "router placed");
            }
        }
        let mut routers_here = Vec::new();
        for router in store.routers_on_host(host_id).await? {
            let ports = self.bind_router_ports(&router, host_id).await?;
            routers_here.push((router, ports));
        }
        let plugged: HashSet<&str> = report.plugged.iter().map(String::as_str).collect();
        let mut by_network: BTreeMap<String, Vec<Port>> = BTreeMap::new();
        for port in store.ports_on_host(host_id).await? {
            let status = if plugged.contains(port.std.id.as_str()) && port.admin_state_up {
                "ACTIVE"
            } else {
                "DOWN"
            };
            let port = self.set_status(port, host_id, status).await?;
            by_network
                .entry(port.network_id.clone())
                .or_default()
                .push(port);
        }
        // Hosts whose netd never reported have no endpoint to send to yet;
        // their ports join once they do.
        let vteps: HashMap<String, Ipv4Addr> = store
            .agents()
            .await?
            .into_iter()
            .filter_map(|(host, vtep)| Some((host, vtep.parse().ok()?)))
            .collect();
        let mut groups = Groups::default();
        let mut networks = Vec::with_capacity(by_network.len());
        for (network_id, local) in by_network {
            let Some(network) = store.network(&network_id).await? else {
                continue;
            };
            let Some(vni) = vni(network.vni) else {
                tracing::error!(
                    network = network_id,
                    vni = network.vni,
                    "a VXLAN id out of range"
                );
                continue;
            };
            let remote = store
                .bound_ports_of_network(&network_id)
                .await?
                .into_iter()
                .filter(|p| p.host_id != host_id)
                .filter_map(|p| {
                    let vtep = *vteps.get(&p.host_id)?;
                    Some(RemotePort {
                        ips: ips(&p),
                        id: p.std.id,
                        mac: p.mac_address,
                        vtep,
                    })
                })
                .collect();
            let subnets = store
                .subnets_of(&network_id)
                .await?
                .into_iter()
                .map(|s| SubnetInfo {
                    cidr: s.cidr,
                    gateway: s.gateway_ip,
                    dhcp: s.enable_dhcp,
                    dns: s.dns_nameservers,
                    routes: s
                        .host_routes
                        .into_iter()
                        .map(|r| Route {
                            destination: r.destination,
                            nexthop: r.nexthop,
                        })
                        .collect(),
                })
                .collect();
            networks.push(HostNetwork {
                id: network_id,
                subnets,
                vni,
                mtu: u32::try_from(network.mtu).unwrap_or(1450),
                external: network.external,
                ports: self.local_ports(local, &mut groups).await?,
                remote,
            });
        }
        let applied: HashSet<&str> = report.floating.iter().map(String::as_str).collect();
        let mut routers = Vec::with_capacity(routers_here.len());
        for (router, ports) in routers_here {
            if let Some(r) = self.host_router(router, &ports, &applied).await? {
                routers.push(r);
            }
        }
        Ok(HostNetworks {
            networks,
            routers,
            groups: groups.0.into_iter().collect(),
        })
    }

    /// Binds a router's ports to the host it is placed on (those made while
    /// it was being placed too); answers them.
    async fn bind_router_ports(
        &self,
        router: &Router,
        host_id: &str,
    ) -> Result<Vec<Port>, NetworkError> {
        let mut ports = self.store().ports_of_device(&router.std.id).await?;
        ports.retain(|p| [ROUTER_INTERFACE, ROUTER_GATEWAY].contains(&p.device_owner.as_str()));
        for port in &mut ports {
            while port.host_id != host_id {
                let old = port.clone();
                port.host_id = host_id.to_owned();
                port.std.touch(now());
                if self.store().update_port(port, &old).await? {
                    break;
                }
                match self.store().port(&old.std.id).await? {
                    Some(p) if p.device_id == router.std.id => *port = p,
                    _ => break,
                }
            }
        }
        Ok(ports)
    }

    /// A router as its host's netd applies it (None while it is down), its
    /// floating IPs ACTIVE once the host reports them applied.
    async fn host_router(
        &self,
        router: Router,
        ports: &[Port],
        applied: &HashSet<&str>,
    ) -> Result<Option<HostRouter>, NetworkError> {
        let store = self.store();
        let fips = store.floating_ips_of_router(&router.std.id).await?;
        for f in &fips {
            let status = if router.admin_state_up && applied.contains(f.std.id.as_str()) {
                "ACTIVE"
            } else {
                "DOWN"
            };
            if f.status != status {
                store.set_floating_status(&f.std.id, status).await?;
                tracing::info!(floating_ip = f.std.id, status, "floating IP status");
            }
        }
        if !router.admin_state_up {
            return Ok(None);
        }
        let mut interfaces = Vec::new();
        let mut gateway = None;
        for p in ports {
            let Some((port, subnet_gateway)) = self.netd_router_port(p).await? else {
                continue;
            };
            match &router.gateway {
                Some(g) if g.port_id == p.std.id => {
                    gateway = Some(RouterGateway {
                        port,
                        nexthop: subnet_gateway,
                        snat: g.enable_snat,
                    });
                }
                _ if p.device_owner == ROUTER_INTERFACE => interfaces.push(port),
                _ => {}
            }
        }
        let mut floating: Vec<FloatingNat> = fips
            .iter()
            .filter_map(|f| {
                let a = f.association.as_ref()?;
                Some(FloatingNat {
                    id: f.std.id.clone(),
                    floating: f.floating_ip_address,
                    fixed: a.fixed_ip_address,
                })
            })
            .collect();
        floating.sort();
        Ok(Some(HostRouter {
            id: router.std.id,
            gateway,
            interfaces,
            floating,
        }))
    }

    /// A router's port as netd configures it, with its subnet's gateway;
    /// None for a port without an address.
    async fn netd_router_port(
        &self,
        p: &Port,
    ) -> Result<Option<(RouterPort, Option<Ipv4Addr>)>, NetworkError> {
        let Some(fixed) = p.fixed_ips.first() else {
            return Ok(None);
        };
        let Some(subnet) = self.store().subnet(&fixed.subnet_id).await? else {
            return Ok(None);
        };
        let Ok(cidr) = super::ipam::parse_cidr(&subnet.cidr) else {
            return Ok(None);
        };
        Ok(Some((
            RouterPort {
                id: p.std.id.clone(),
                network_id: p.network_id.clone(),
                mac: p.mac_address.clone(),
                ip: fixed.ip_address,
                prefix_len: cidr.prefix_len(),
            },
            subnet.gateway_ip,
        )))
    }

    async fn local_ports(
        &self,
        ports: Vec<Port>,
        groups: &mut Groups,
    ) -> Result<Vec<LocalPort>, NetworkError> {
        let mut local = Vec::with_capacity(ports.len());
        for p in ports {
            let mut rules = Vec::new();
            if p.port_security_enabled {
                for group in &p.security_groups {
                    for rule in self.store().rules_of(group).await? {
                        if let Some(r) = self.resolve(&rule, groups).await? {
                            rules.push(r);
                        }
                    }
                }
            }
            // In a stable order: netd rewrites its firewall only on change.
            rules.sort();
            rules.dedup();
            local.push(LocalPort {
                tap: tap_name(&p.std.id),
                ips: ips(&p),
                allowed_pairs: p
                    .allowed_address_pairs
                    .iter()
                    .map(|a| AllowedPair {
                        ip: a.ip_address.clone(),
                        mac: a.mac_address.clone(),
                    })
                    .collect(),
                port_security: p.port_security_enabled,
                rules,
                id: p.std.id,
                mac: p.mac_address,
                admin_state_up: p.admin_state_up,
            });
        }
        Ok(local)
    }

    /// A group's rule as netd applies it; None for what it does not apply
    /// (IPv6: the overlay carries IPv4 only, and a port's IPv6 is dropped).
    async fn resolve(
        &self,
        rule: &SecurityGroupRule,
        groups: &mut Groups,
    ) -> Result<Option<Rule>, NetworkError> {
        if rule.ethertype != "IPv4" {
            return Ok(None);
        }
        let direction = match rule.direction.as_str() {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            _ => return Ok(None),
        };
        let protocol = match &rule.protocol {
            Some(p) => protocol_number(p)?,
            None => None,
        };
        let remote = match (&rule.remote_group_id, rule.normalized_cidr()) {
            (Some(g), _) => {
                groups.members(self, g).await?;
                Remote::Group(g.clone())
            }
            (None, Some(prefix)) if prefix != "0.0.0.0/0" => Remote::Prefix(prefix),
            (None, _) => Remote::Any,
        };
        let port = |v: Option<i64>| v.and_then(|n| u16::try_from(n).ok());
        Ok(Some(Rule {
            direction,
            protocol,
            port_min: port(rule.port_range_min),
            port_max: port(rule.port_range_max),
            remote,
        }))
    }

    /// Sets a port's status if it differs, while the port is still bound to
    /// `host_id`; a concurrent update wins (the next report tries again).
    async fn set_status(
        &self,
        port: Port,
        host_id: &str,
        status: &str,
    ) -> Result<Port, NetworkError> {
        if port.status == status {
            return Ok(port);
        }
        let mut changed = port.clone();
        changed.status = status.to_owned();
        changed.std.touch(now());
        if self.store().update_port(&changed, &port).await? {
            tracing::info!(port = changed.std.id, host = host_id, status, "port status");
            Ok(changed)
        } else {
            Ok(port)
        }
    }
}

/// Remote groups' addresses, each read once per report.
#[derive(Default)]
struct Groups(HashMap<String, Vec<Ipv4Addr>>);

impl Groups {
    /// A group's members' addresses: their fixed IPs and the addresses of
    /// their allowed pairs (as Neutron counts them), sorted.
    async fn members(
        &mut self,
        service: &NetworkService,
        group: &str,
    ) -> Result<Vec<Ipv4Addr>, NetworkError> {
        if let Some(known) = self.0.get(group) {
            return Ok(known.clone());
        }
        let mut addresses = Vec::new();
        for p in service.store().ports_in_group(group).await? {
            addresses.extend(ips(&p));
            addresses.extend(
                p.allowed_address_pairs
                    .iter()
                    .filter_map(|a| a.ip_address.parse::<Ipv4Addr>().ok()),
            );
        }
        addresses.sort();
        addresses.dedup();
        self.0.insert(group.to_owned(), addresses.clone());
        Ok(addresses)
    }
}

#[cfg(test)]
mod tests {
    use super::vni;

    #[test]
    fn vxlan_ids_are_24_bits() {
        assert_eq!(vni(1), Some(1));
        assert_eq!(vni((1 << 24) - 1), Some((1 << 24) - 1));
        assert_eq!(vni(1 << 24), None);
        assert_eq!(vni(-1), None);
    }
}
