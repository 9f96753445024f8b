//! Neutron's resources as the network service keeps them (each is stored as
//! its JSON document, `store`), and as the API shows them.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use super::ipam::Pool;

/// What every Neutron resource carries (the `standard-attr-*` extensions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standard {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub revision_number: i64,
}

impl Standard {
    pub fn new(project_id: &str, now: i64) -> Self {
        Standard {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: project_id.to_owned(),
            name: String::new(),
            description: String::new(),
            tags: Vec::new(),
            created_at: now,
            updated_at: now,
            revision_number: 0,
        }
    }

    /// Marks a change: Neutron bumps the revision on every update.
    pub fn touch(&mut self, now: i64) {
        self.updated_at = now;
        self.revision_number += 1;
    }

    fn render(&self, into: &mut Json) {
        into["id"] = json!(self.id);
        into["name"] = json!(self.name);
        into["description"] = json!(self.description);
        into["project_id"] = json!(self.project_id);
        into["tenant_id"] = json!(self.project_id);
        into["tags"] = json!(self.tags);
        into["created_at"] = json!(iso(self.created_at));
        into["updated_at"] = json!(iso(self.updated_at));
        into["revision_number"] = json!(self.revision_number);
    }
}

/// Neutron's timestamps: `2026-12-03T10:00:00Z`.
pub use crate::identity::iso_seconds as iso;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    #[serde(flatten)]
    pub std: Standard,
    pub admin_state_up: bool,
    pub shared: bool,
    pub external: bool,
    pub mtu: i64,
    pub port_security_enabled: bool,
    /// The VXLAN network identifier of its overlay.
    pub vni: i64,
}

impl Network {
    /// The network as Neutron shows it; `subnets` are its subnets' ids, the
    /// provider attributes only for admins.
    pub fn to_json(&self, subnets: &[String], admin: bool) -> Json {
        let mut v = json!({
            "admin_state_up": self.admin_state_up,
            "status": "ACTIVE",
            "subnets": subnets,
            "shared": self.shared,
            "router:external": self.external,
            "mtu": self.mtu,
            "port_security_enabled": self.port_security_enabled,
            "availability_zone_hints": [],
            "availability_zones": ["nova"],
            "ipv4_address_scope": null,
            "ipv6_address_scope": null,
            "l2_adjacency": true,
        });
        if admin {
            v["provider:network_type"] = json!("vxlan");
            v["provider:physical_network"] = json!(null);
            v["provider:segmentation_id"] = json!(self.vni);
        }
        self.std.render(&mut v);
        v
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    pub destination: String,
    pub nexthop: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subnet {
    #[serde(flatten)]
    pub std: Standard,
    pub network_id: String,
    pub cidr: String,
    pub gateway_ip: Option<Ipv4Addr>,
    pub enable_dhcp: bool,
    pub allocation_pools: Vec<Pool>,
    pub dns_nameservers: Vec<Ipv4Addr>,
    pub host_routes: Vec<HostRoute>,
}

impl Subnet {
    pub fn to_json(&self) -> Json {
        let mut v = json!({
            "network_id": self.network_id,
            "ip_version": 4,
            "cidr": self.cidr,
            "gateway_ip": self.gateway_ip,
            "enable_dhcp": self.enable_dhcp,
            "allocation_pools": self.allocation_pools,
            "dns_nameservers": self.dns_nameservers,
            "host_routes": self.host_routes,
            "ipv6_ra_mode": null,
            "ipv6_address_mode": null,
            "subnetpool_id": null,
            "segment_id": null,
            "service_types": [],
        });
        self.std.render(&mut v);
        v
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPair {
    /// An address or a CIDR.
    pub ip_address: String,
    pub mac_address: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Port {
    #[serde(flatten)]
    pub std: Standard,
    pub network_id: String,
    pub mac_address: String,
    pub admin_state_up: bool,
    /// DOWN until the host's network agent has plugged it, then ACTIVE.
    pub status: String,
    pub device_id: String,
    pub device_owner: String,
    pub fixed_ips: Vec<FixedIp>,
    pub allowed_address_pairs: Vec<AddressPair>,
    pub security_groups: Vec<String>,
    pub port_security_enabled: bool,
    /// `binding:host_id`: the host the port is plugged on ("" unbound).
    pub host_id: String,
    /// For a port the compute service made for a server (and deletes with
    /// it): which of the server's requested networks it answers. Not shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nova_slot: Option<u32>,
}

/// Device owners that belong to the network service itself: their ports
/// are not the user's to delete directly.
pub const ROUTER_INTERFACE: &str = "network:router_interface";
pub const ROUTER_GATEWAY: &str = "network:router_gateway";
pub const FLOATING_IP: &str = "network:floatingip";

impl Port {
    /// The port as Neutron shows it; the binding details only for admins,
    /// as Neutron's default policy has it.
    pub fn to_json(&self, admin: bool) -> Json {
        let mut v = json!({
            "network_id": self.network_id,
            "mac_address": self.mac_address,
            "admin_state_up": self.admin_state_up,
            "status": self.status,
            "device_id": self.device_id,
            "device_owner": self.device_owner,
            "fixed_ips": self.fixed_ips,
            "allowed_address_pairs": self.allowed_address_pairs,
            "extra_dhcp_opts": [],
            "security_groups": self.security_groups,
            "port_security_enabled": self.port_security_enabled,
            "binding:vnic_type": "normal",
        });
        if admin {
            let bound = !self.host_id.is_empty();
            v["binding:host_id"] = json!(self.host_id);
            v["binding:profile"] = json!({});
            v["binding:vif_type"] = json!(if bound { "tap" } else { "unbound" });
            v["binding:vif_details"] = json!({});
        }
        self.std.render(&mut v);
        v
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecurityGroup {
    #[serde(flatten)]
    pub std: Standard,
    pub stateful: bool,
}

impl SecurityGroup {
    pub fn to_json(&self, rules: &[SecurityGroupRule]) -> Json {
        let mut v = json!({
            "stateful": self.stateful,
            "shared": false,
            "security_group_rules": rules.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
        });
        self.std.render(&mut v);
        v
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    pub id: String,
    pub project_id: String,
    pub security_group_id: String,
    pub description: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// A protocol name or number as given (None: any).
    pub protocol: Option<String>,
    pub port_range_min: Option<i64>,
    pub port_range_max: Option<i64>,
    /// As the user gave it (host bits and all, as Neutron keeps it); see
    /// [`SecurityGroupRule::normalized_cidr`].
    pub remote_ip_prefix: Option<String>,
    pub remote_group_id: Option<String>,
    pub created_at: i64,
}

impl SecurityGroupRule {
    /// The remote prefix's network (`10.2.3.124/24` -> `10.2.3.0/24`):
    /// what the rule matches, and what makes two rules the same.
    pub fn normalized_cidr(&self) -> Option<String> {
        let prefix = self.remote_ip_prefix.as_deref()?;
        Some(match prefix.parse::<ipnet::IpNet>() {
            Ok(net) => net.trunc().to_string(),
            Err(_) => prefix.to_owned(),
        })
    }

    /// What makes two rules of a group the same rule, for Neutron's
    /// SecurityGroupRuleExists: everything but the id and the description.
    pub fn fingerprint(&self) -> String {
        let opt = |o: &Option<String>| o.clone().unwrap_or_default();
        let num = |o: Option<i64>| o.map(|n| n.to_string()).unwrap_or_default();
        format!(
            "{}|{}|{}|{}|{}|{}|{}",
            self.direction,
            self.ethertype,
            opt(&self.protocol),
            num(self.port_range_min),
            num(self.port_range_max),
            opt(&self.normalized_cidr()),
            opt(&self.remote_group_id)
        )
    }

    pub fn to_json(&self) -> Json {
        json!({
            "id": self.id,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "security_group_id": self.security_group_id,
            "description": self.description,
            "direction": self.direction,
            "ethertype": self.ethertype,
            "protocol": self.protocol,
            "port_range_min": self.port_range_min,
            "port_range_max": self.port_range_max,
            "remote_ip_prefix": self.remote_ip_prefix,
            "remote_group_id": self.remote_group_id,
            "remote_address_group_id": null,
            "normalized_cidr": self.normalized_cidr(),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.created_at),
            "revision_number": 0,
        })
    }
}

/// A router's external gateway: its port on an external network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gateway {
    pub network_id: String,
    pub enable_snat: bool,
    /// The `network:router_gateway` port holding its addresses.
    pub port_id: String,
    pub fixed_ips: Vec<FixedIp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Router {
    #[serde(flatten)]
    pub std: Standard,
    pub admin_state_up: bool,
    pub gateway: Option<Gateway>,
}

impl Router {
    pub fn to_json(&self) -> Json {
        let gateway = self.gateway.as_ref().map(|g| {
            json!({"network_id": g.network_id, "enable_snat": g.enable_snat,
                   "external_fixed_ips": g.fixed_ips})
        });
        let mut v = json!({
            "admin_state_up": self.admin_state_up,
            "status": "ACTIVE",
            "external_gateway_info": gateway,
            "routes": [],
        });
        self.std.render(&mut v);
        v
    }
}

/// What a floating IP is associated with: a fixed address of a port, reached
/// through a router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Association {
    pub port_id: String,
    pub fixed_ip_address: Ipv4Addr,
    pub router_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FloatingIp {
    #[serde(flatten)]
    pub std: Standard,
    pub floating_network_id: String,
    pub floating_ip_address: Ipv4Addr,
    /// The `network:floatingip` port holding the address.
    pub address_port_id: String,
    /// Kept in the row's columns (`store`), not in the document.
    #[serde(skip)]
    pub association: Option<Association>,
    /// ACTIVE once its router's host applies it; DOWN otherwise.
    #[serde(skip)]
    pub status: String,
}

impl FloatingIp {
    /// As Neutron shows it; `port` is the associated port (for
    /// `port_details`).
    pub fn to_json(&self, port: Option<&Port>) -> Json {
        let a = self.association.as_ref();
        let details = port.map(|p| {
            json!({"name": p.std.name, "network_id": p.network_id, "mac_address": p.mac_address,
                   "admin_state_up": p.admin_state_up, "status": p.status,
                   "device_id": p.device_id, "device_owner": p.device_owner})
        });
        let mut v = json!({
            "floating_ip_address": self.floating_ip_address,
            "floating_network_id": self.floating_network_id,
            "router_id": a.map(|a| &a.router_id),
            "port_id": a.map(|a| &a.port_id),
            "fixed_ip_address": a.map(|a| a.fixed_ip_address),
            "status": self.status,
            "port_details": details,
        });
        self.std.render(&mut v);
        // A floating IP has no name: clients read its address as one.
        if let Some(m) = v.as_object_mut() {
            m.remove("name");
        }
        v
    }
}

/// A project's network limits (-1: unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkQuota {
    pub network: i64,
    pub subnet: i64,
    pub port: i64,
    pub security_group: i64,
    pub security_group_rule: i64,
    pub router: i64,
    pub floatingip: i64,
}

/// Neutron's defaults.
pub const DEFAULT_QUOTA: NetworkQuota = NetworkQuota {
    network: 100,
    subnet: 100,
    port: 500,
    security_group: 10,
    security_group_rule: 100,
    router: 10,
    floatingip: 50,
};

impl NetworkQuota {
    pub const RESOURCES: [&'static str; 7] = [
        "network",
        "subnet",
        "port",
        "security_group",
        "security_group_rule",
        "router",
        "floatingip",
    ];

    pub fn get(&self, resource: &str) -> Option<i64> {
        Some(match resource {
            "network" => self.network,
            "subnet" => self.subnet,
            "port" => self.port,
            "security_group" => self.security_group,
            "security_group_rule" => self.security_group_rule,
            "router" => self.router,
            "floatingip" => self.floatingip,
            _ => return None,
        })
    }

    pub fn set(&mut self, resource: &str, limit: i64) -> bool {
        let slot = match resource {
            "network" => &mut self.network,
            "subnet" => &mut self.subnet,
            "port" => &mut self.port,
            "security_group" => &mut self.security_group,
            "security_group_rule" => &mut self.security_group_rule,
            "router" => &mut self.router,
            "floatingip" => &mut self.floatingip,
            _ => return false,
        };
        *slot = limit;
        true
    }

    pub fn to_json(&self) -> Json {
        let mut v = json!({});
        for r in Self::RESOURCES {
            v[r] = json!(self.get(r));
        }
        v
    }
}
