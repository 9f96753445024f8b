//! What each host's netd asks of the network service: its report (its
//! tunnel endpoint, the ports it has plugged) is recorded, the ports bound
//! to its host go ACTIVE or DOWN by it, as Neutron's agents make them, and
//! the answer is the intended state of every network with a port on the
//! host, with the other hosts' ports of those networks and where they are.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

use netd_proto::{
    AllowedPair, Direction, HostNetwork, HostNetworks, LocalPort, Remote, RemotePort, Report,
    Route, Rule, SubnetInfo,
};

use super::model::{Port, SecurityGroupRule};
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
                ports: self.local_ports(local, &mut groups).await?,
                remote,
            });
        }
        Ok(HostNetworks { networks })
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
        let remote = match (&rule.remote_group_id, &rule.remote_ip_prefix) {
            (Some(g), _) => Remote::Members(groups.members(self, g).await?),
            (None, Some(prefix)) if prefix != "0.0.0.0/0" => Remote::Prefix(prefix.clone()),
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
