//! What the compute service asks of the network service, as Nova asks
//! Neutron: checking the networks a server create names (and Nova's default
//! when it names none), the ports of a server's NICs made or bound for it on
//! its host (again harmlessly when a build resumes) and released with it,
//! and what the server and its guest are told about them (Nova's
//! `addresses`, the config drive's `network_data.json`).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use super::model::{Port, Standard};
use super::service::{random_mac, NetworkService};
use super::NetworkError;
use crate::context::RequestContext;
use crate::identity::now;

/// One NIC a server asks for: a network (with an address on it, perhaps)
/// or a port the user made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_ip: Option<Ipv4Addr>,
    /// The security groups (ids) a port made for it gets; none: the
    /// project's default group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
}

/// A create's `networks`, as Nova takes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Requested {
    /// Absent, or `"auto"`: the project's network if it has exactly one.
    #[default]
    Default,
    /// `"none"`: no NIC.
    Nothing,
    These(Vec<NicRequest>),
}

pub const COMPUTE_OWNER: &str = "compute:nova";

/// The tap of a port on its host: `tap` and the first 11 characters of its
/// id, as Neutron's agents name them (15 bytes, Linux's limit).
pub fn tap_name(port_id: &str) -> String {
    format!("tap{}", port_id.get(..11).unwrap_or(port_id))
}

impl NetworkService {
    /// Checks a create's networks as the caller sees them and resolves
    /// Nova's default: the project's own networks and shared ones (not
    /// external ones); none gives no NIC, one is taken, several are
    /// ambiguous.
    pub async fn check_nics(
        &self,
        ctx: &RequestContext,
        requested: Requested,
    ) -> Result<Vec<NicRequest>, NetworkError> {
        let these = match requested {
            Requested::Nothing => return Ok(Vec::new()),
            Requested::These(these) => these,
            Requested::Default => {
                let mut candidates: Vec<String> = self
                    .store()
                    .networks()
                    .await?
                    .into_iter()
                    .filter(|n| n.shared || (n.std.project_id == ctx.project_id() && !n.external))
                    .map(|n| n.std.id)
                    .collect();
                return match candidates.len() {
                    0 => Ok(Vec::new()),
                    1 => Ok(vec![NicRequest {
                        network_id: candidates.pop(),
                        ..NicRequest::default()
                    }]),
                    _ => Err(NetworkError::new(
                        409,
                        "NetworkAmbiguous",
                        "Multiple possible networks found, use a Network ID to be more specific."
                            .into(),
                    )),
                };
            }
        };
        let mut ports_named = Vec::new();
        for nic in &these {
            match (&nic.port_id, &nic.network_id) {
                (Some(port_id), _) => {
                    let port = self.visible_port(ctx, port_id).await.map_err(|_| {
                        NetworkError::new(
                            400,
                            "PortNotFound",
                            format!("Port {port_id} could not be found."),
                        )
                    })?;
                    if !port.device_id.is_empty() || ports_named.contains(port_id) {
                        return Err(NetworkError::new(
                            409,
                            "PortInUse",
                            format!("Port {port_id} is still in use."),
                        ));
                    }
                    ports_named.push(port_id.clone());
                }
                (None, Some(network_id)) => {
                    let net = self.visible_network(ctx, network_id).await.map_err(|_| {
                        NetworkError::new(
                            400,
                            "NetworkNotFound",
                            format!("Network {network_id} could not be found."),
                        )
                    })?;
                    if net.external && !net.shared && !ctx.is_admin() {
                        return Err(NetworkError::new(
                            403,
                            "ExternalNetworkAttachForbidden",
                            format!("It is not allowed to create an interface on external network {network_id}"),
                        ));
                    }
                    if let Some(ip) = nic.fixed_ip {
                        let fits = self.store().subnets_of(network_id).await?.iter().any(|s| {
                            super::ipam::parse_cidr(&s.cidr)
                                .is_ok_and(|n| super::ipam::is_usable(&n, ip))
                        });
                        if !fits {
                            return Err(NetworkError::new(
                                400,
                                "InvalidFixedIpAddress",
                                format!("Fixed IP address {ip} is not on any subnet of network {network_id}."),
                            ));
                        }
                    }
                }
                (None, None) => {
                    return Err(NetworkError::bad_request(
                        "Bad networks format: each network needs a uuid or a port".into(),
                    ))
                }
            }
        }
        Ok(these)
    }

    /// The ids of the project's security groups named (by name or id) in a
    /// create's `security_groups`; an unknown one is a 400, as in Nova.
    pub async fn resolve_groups(
        &self,
        ctx: &RequestContext,
        names: &[String],
    ) -> Result<Vec<String>, NetworkError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let groups = self.list_groups(ctx).await?;
        let mut ids = Vec::new();
        for name in names {
            let found = groups.iter().find(|g| {
                g["project_id"] == json!(ctx.project_id())
                    && (g["id"] == json!(name) || g["name"] == json!(name))
            });
            match found.and_then(|g| g["id"].as_str()) {
                Some(id) if !ids.iter().any(|i| i == id) => ids.push(id.to_owned()),
                Some(_) => {}
                None => {
                    return Err(NetworkError::new(
                        400,
                        "SecurityGroupNotFound",
                        format!(
                            "Security group {name} not found for project {}.",
                            ctx.project_id()
                        ),
                    ))
                }
            }
        }
        Ok(ids)
    }

    /// The names of the security groups on each server's ports, by server
    /// id (one read for a listing; servers without ports are absent).
    pub async fn group_names_of_servers(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, NetworkError> {
        let ports = self.store().ports().await?;
        self.group_names(ports).await
    }

    /// The names of the security groups on one server's ports; None
    /// without any.
    pub async fn group_names_of_server(
        &self,
        server_id: &str,
    ) -> Result<Option<Vec<String>>, NetworkError> {
        let ports = self.store().ports_of_device(server_id).await?;
        Ok(self.group_names(ports).await?.remove(server_id))
    }

    /// Each server's group names over `ports` (servers' ports only).
    async fn group_names(
        &self,
        ports: Vec<Port>,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, NetworkError> {
        let names: std::collections::BTreeMap<String, String> = self
            .store()
            .security_groups()
            .await?
            .into_iter()
            .map(|g| (g.std.id, g.std.name))
            .collect();
        let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for p in ports {
            if p.device_owner != COMPUTE_OWNER || p.device_id.is_empty() {
                continue;
            }
            let list = out.entry(p.device_id.clone()).or_default();
            for g in &p.security_groups {
                if let Some(n) = names.get(g) {
                    if !list.contains(n) {
                        list.push(n.clone());
                    }
                }
            }
        }
        out.retain(|_, l| !l.is_empty());
        Ok(out)
    }

    /// Makes or finds the port of each of a server's NIC requests, bound to
    /// `host` and owned by the server; ports in request order. Running it
    /// again (a resumed build, another host) finds what it made before.
    pub async fn plug_server(
        &self,
        project: &str,
        server_id: &str,
        host: &str,
        nics: &[NicRequest],
    ) -> Result<Vec<Port>, NetworkError> {
        let mut ports = Vec::new();
        // The ports made on an earlier run, by the request (slot) they answer.
        let mut made = self.store().ports_of_device(server_id).await?;
        for (slot, nic) in (0u32..).zip(nics) {
            if let Some(port) = self
                .plug_nic(project, server_id, host, slot, nic, &mut made)
                .await?
            {
                ports.push(port);
            }
        }
        Ok(ports)
    }

    /// Makes or binds the port of one NIC request (`slot` is its place
    /// among the server's requests); `made` holds the server's ports from an
    /// earlier run, one of which may answer it.
    async fn plug_nic(
        &self,
        project: &str,
        server_id: &str,
        host: &str,
        slot: u32,
        nic: &NicRequest,
        made: &mut Vec<Port>,
    ) -> Result<Option<Port>, NetworkError> {
        Ok(Some(match (&nic.port_id, &nic.network_id) {
            (Some(port_id), _) => {
                let port = self
                    .store()
                    .port(port_id)
                    .await?
                    .ok_or_else(|| NetworkError::not_found("Port", port_id))?;
                if !port.device_id.is_empty() && port.device_id != server_id {
                    return Err(NetworkError::new(
                        409,
                        "PortInUse",
                        format!("Port {port_id} is still in use."),
                    ));
                }
                self.bind(port, server_id, host).await?
            }
            (None, Some(network_id)) => {
                let earlier = made.iter().position(|p| p.nova_slot == Some(slot));
                match earlier.map(|at| made.swap_remove(at)) {
                    Some(port) => self.bind(port, server_id, host).await?,
                    None => {
                        self.make_port(project, server_id, host, slot, network_id, nic)
                            .await?
                    }
                }
            }
            (None, None) => return Ok(None),
        }))
    }

    /// A NIC for a server that exists (Nova's interface attach): its port,
    /// made (in the slot after the server's last) or bound on `host`.
    pub async fn plug_interface(
        &self,
        project: &str,
        server_id: &str,
        host: &str,
        nic: &NicRequest,
    ) -> Result<Port, NetworkError> {
        let mut made = self.store().ports_of_device(server_id).await?;
        let slot = made
            .iter()
            .filter_map(|p| p.nova_slot)
            .max()
            .map_or(0, |s| s + 1);
        made.clear();
        self.plug_nic(project, server_id, host, slot, nic, &mut made)
            .await?
            .ok_or_else(|| {
                NetworkError::bad_request(
                    "Bad networks format: a network or a port is needed".into(),
                )
            })
    }

    async fn make_port(
        &self,
        project: &str,
        server_id: &str,
        host: &str,
        slot: u32,
        network_id: &str,
        nic: &NicRequest,
    ) -> Result<Port, NetworkError> {
        let fixed_ip = nic.fixed_ip;
        let net = self
            .store()
            .network(network_id)
            .await?
            .ok_or_else(|| NetworkError::not_found("Network", network_id))?;
        let wanted = match fixed_ip {
            Some(ip) => {
                self.requested_ips(network_id, &[json!({"ip_address": ip.to_string()})])
                    .await?
            }
            None => self.default_ips(network_id).await?,
        };
        let security_groups = if !net.port_security_enabled {
            Vec::new()
        } else if nic.security_groups.is_empty() {
            vec![self.ensure_default_group(project).await?.std.id]
        } else {
            nic.security_groups.clone()
        };
        let port = Port {
            std: Standard::new(project, now()),
            network_id: network_id.to_owned(),
            mac_address: random_mac(),
            admin_state_up: true,
            status: "DOWN".into(),
            device_id: server_id.to_owned(),
            device_owner: COMPUTE_OWNER.into(),
            fixed_ips: Vec::new(),
            allowed_address_pairs: Vec::new(),
            security_groups,
            port_security_enabled: net.port_security_enabled,
            host_id: host.to_owned(),
            nova_slot: Some(slot),
        };
        self.insert_port(port, &wanted, false).await
    }

    /// Gives a port to a server on a host (a no-op when it has it).
    async fn bind(
        &self,
        mut port: Port,
        server_id: &str,
        host: &str,
    ) -> Result<Port, NetworkError> {
        loop {
            if port.device_id == server_id
                && port.host_id == host
                && port.device_owner == COMPUTE_OWNER
            {
                return Ok(port);
            }
            let old = port.clone();
            port.device_id = server_id.to_owned();
            port.device_owner = COMPUTE_OWNER.into();
            port.host_id = host.to_owned();
            port.std.touch(now());
            if self.store().update_port(&port, &old).await? {
                return Ok(port);
            }
            port = self
                .store()
                .port(&old.std.id)
                .await?
                .ok_or_else(|| NetworkError::not_found("Port", &old.std.id))?;
        }
    }

    /// Releases a server's ports: those made for it are deleted, those the
    /// user gave are unbound and free again. Safe to repeat.
    pub async fn unplug_server(&self, server_id: &str) -> Result<(), NetworkError> {
        for port in self.store().ports_of_device(server_id).await? {
            self.release_port(server_id, port).await?;
        }
        Ok(())
    }

    /// Releases one of a server's ports (Nova's interface detach), as
    /// [`Self::unplug_server`] does. Safe to repeat.
    pub async fn unplug_interface(
        &self,
        server_id: &str,
        port_id: &str,
    ) -> Result<(), NetworkError> {
        match self.store().port(port_id).await? {
            Some(p) if p.device_id == server_id => self.release_port(server_id, p).await,
            _ => Ok(()),
        }
    }

    async fn release_port(&self, server_id: &str, port: Port) -> Result<(), NetworkError> {
        if port.nova_slot.is_some() {
            self.store().delete_port(&port.std.id).await?;
            return Ok(());
        }
        let mut port = port;
        loop {
            let old = port.clone();
            port.device_id.clear();
            port.device_owner.clear();
            port.host_id.clear();
            port.status = "DOWN".into();
            port.std.touch(now());
            if self.store().update_port(&port, &old).await? {
                return Ok(());
            }
            match self.store().port(&old.std.id).await? {
                Some(p) if p.device_id == server_id => port = p,
                _ => return Ok(()),
            }
        }
    }

    /// A server's ports, in the order of its requests (made ones by slot).
    pub async fn server_ports(&self, server_id: &str) -> Result<Vec<Port>, NetworkError> {
        let mut ports = self.store().ports_of_device(server_id).await?;
        ports.sort_by_key(|p| (p.nova_slot.unwrap_or(u32::MAX), p.std.created_at));
        Ok(ports)
    }

    /// Every server's `addresses`, by server id (one read for a listing).
    pub async fn addresses_of_servers(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Json>, NetworkError> {
        let names: std::collections::BTreeMap<String, String> = self
            .store()
            .networks()
            .await?
            .into_iter()
            .map(|n| (n.std.id, n.std.name))
            .collect();
        let mut ports: Vec<Port> = self
            .store()
            .ports()
            .await?
            .into_iter()
            .filter(|p| p.device_owner == COMPUTE_OWNER && !p.device_id.is_empty())
            .collect();
        ports.sort_by_key(|p| (p.nova_slot.unwrap_or(u32::MAX), p.std.created_at));
        let floating = self.floating_by_fixed().await?;
        let mut out: std::collections::BTreeMap<String, Json> = Default::default();
        for p in &ports {
            let Some(name) = names.get(&p.network_id) else {
                continue;
            };
            add_address(
                out.entry(p.device_id.clone()).or_insert_with(|| json!({})),
                name,
                p,
                &floating,
            );
        }
        Ok(out)
    }

    /// Floating addresses by the (port, fixed address) they are associated
    /// with.
    async fn floating_by_fixed(&self) -> Result<Floating, NetworkError> {
        Ok(self
            .store()
            .floating_ips()
            .await?
            .into_iter()
            .filter_map(|f| {
                let a = f.association?;
                Some(((a.port_id, a.fixed_ip_address), f.floating_ip_address))
            })
            .collect())
    }

    /// Nova's `addresses`: each network's name to its fixed addresses.
    pub async fn addresses(&self, ports: &[Port]) -> Result<Json, NetworkError> {
        let mut out = json!({});
        let floating = self.floating_by_fixed().await?;
        for p in ports {
            if let Some(n) = self.store().network(&p.network_id).await? {
                add_address(&mut out, &n.std.name, p, &floating);
            }
        }
        Ok(out)
    }

    /// The config drive's `network_data.json` for these ports, as Nova
    /// writes it: a link per NIC (by MAC, with its MTU), per address an
    /// `ipv4_dhcp` network where the subnet has DHCP, else a static one with
    /// the subnet's gateway and host routes; the DNS servers.
    pub async fn network_data(&self, ports: &[Port]) -> Result<Map<String, Json>, NetworkError> {
        let mut links = Vec::new();
        let mut networks = Vec::new();
        let mut dns: Vec<Ipv4Addr> = Vec::new();
        for p in ports {
            let mtu = self.store().network(&p.network_id).await?.map(|n| n.mtu);
            let link = tap_name(&p.std.id);
            links.push(json!({"id": link, "vif_id": p.std.id, "type": "phy",
                              "ethernet_mac_address": p.mac_address, "mtu": mtu}));
            for ip in &p.fixed_ips {
                let Some(subnet) = self.store().subnet(&ip.subnet_id).await? else {
                    continue;
                };
                // As Nova: where DHCP answers, the guest asks it (and gets
                // its routes by option 121, which needs no tool in the
                // guest); otherwise it is told its address and routes here.
                if subnet.enable_dhcp {
                    networks.push(json!({
                        "id": format!("network{}", networks.len()), "type": "ipv4_dhcp",
                        "link": link, "network_id": p.network_id,
                    }));
                    for d in &subnet.dns_nameservers {
                        if !dns.contains(d) {
                            dns.push(*d);
                        }
                    }
                    continue;
                }
                let Ok(cidr) = super::ipam::parse_cidr(&subnet.cidr) else {
                    continue;
                };
                let mut routes: Vec<Json> = subnet
                    .host_routes
                    .iter()
                    .filter_map(|r| {
                        let d: ipnet::Ipv4Net = r.destination.parse().ok()?;
                        Some(json!({"network": d.network().to_string(), "netmask": d.netmask().to_string(),
                                    "gateway": r.nexthop.to_string()}))
                    })
                    .collect();
                if let Some(g) = subnet.gateway_ip {
                    routes.push(json!({"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": g.to_string()}));
                }
                for d in &subnet.dns_nameservers {
                    if !dns.contains(d) {
                        dns.push(*d);
                    }
                }
                networks.push(json!({
                    "id": format!("network{}", networks.len()), "type": "ipv4", "link": link,
                    "ip_address": ip.ip_address.to_string(), "netmask": cidr.netmask().to_string(),
                    "routes": routes, "network_id": p.network_id,
                    "services": subnet.dns_nameservers.iter().map(|d| json!({"type": "dns", "address": d.to_string()})).collect::<Vec<_>>(),
                }));
            }
        }
        let mut m = Map::new();
        m.insert("links".into(), json!(links));
        m.insert("networks".into(), json!(networks));
        m.insert(
            "services".into(),
            json!(dns
                .iter()
                .map(|d| json!({"type": "dns", "address": d.to_string()}))
                .collect::<Vec<_>>()),
        );
        Ok(m)
    }
}

type Floating = std::collections::HashMap<(String, Ipv4Addr), Ipv4Addr>;

/// Adds a port's addresses under its network's name to Nova's `addresses`,
/// each fixed one followed by its floating one, as Nova lists them.
fn add_address(addresses: &mut Json, network_name: &str, p: &Port, floating: &Floating) {
    let Json::Object(by_network) = addresses else {
        return;
    };
    if let Json::Array(list) = by_network
        .entry(network_name.to_owned())
        .or_insert_with(|| json!([]))
    {
        for ip in &p.fixed_ips {
            list.push(json!({"version": 4, "addr": ip.ip_address.to_string(),
                "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": p.mac_address}));
            if let Some(f) = floating.get(&(p.std.id.clone(), ip.ip_address)) {
                list.push(json!({"version": 4, "addr": f.to_string(),
                    "OS-EXT-IPS:type": "floating", "OS-EXT-IPS-MAC:mac_addr": p.mac_address}));
            }
        }
    }
}
