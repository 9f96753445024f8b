//! The network service's logic, between Neutron's HTTP handlers
//! (`api::network`, which route and render) and the store: who may see and
//! change what, the attributes' rules and defaults, address allocation,
//! each project's `default` security group, quotas.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{json, Map, Value as Json};

use super::ipam::{self, Pool};
use super::model::{
    AddressPair, FixedIp, HostRoute, Network, NetworkQuota, Port, SecurityGroup, SecurityGroupRule,
    Standard, Subnet, DEFAULT_QUOTA, FLOATING_IP, ROUTER_GATEWAY, ROUTER_INTERFACE,
};
use super::store::{is_unique_violation, Deleted, NetworkStore};
use super::NetworkError;
use crate::context::RequestContext;
use crate::identity::now;
use crate::store::{Store, StoreError};

/// The overlay's MTU: a 1500-byte underlay less VXLAN's 50 bytes.
pub const OVERLAY_MTU: i64 = 1450;
/// VXLAN ids start here (the low ones are left to operators' provider networks).
const FIRST_VNI: i64 = 1000;
const MAX_DNS_NAMESERVERS: usize = 5;
const MAX_HOST_ROUTES: usize = 20;
const MAX_ADDRESS_PAIRS: usize = 10;
const MAX_NAME: usize = 255;
const MAX_DESCRIPTION: usize = 255;
/// How often a create retries an address or MAC another create took first.
const ALLOCATION_TRIES: usize = 32;

/// What a network update may change (a create takes more).
const NETWORK_ATTRS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "shared",
    "router:external",
    "mtu",
    "port_security_enabled",
    "tags",
];
/// What a port update may change (a create takes more).
const PORT_ATTRS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "mac_address",
    "fixed_ips",
    "device_id",
    "device_owner",
    "security_groups",
    "port_security_enabled",
    "allowed_address_pairs",
    "binding:host_id",
    "binding:vnic_type",
    "binding:profile",
    "tags",
];

pub struct NetworkService {
    store: NetworkStore,
}

pub(super) type Attrs = Map<String, Json>;

// --- attribute parsing: Neutron's messages for bad input

pub(super) fn invalid(attr: &str, reason: impl std::fmt::Display) -> NetworkError {
    NetworkError::bad_request(format!("Invalid input for {attr}. Reason: {reason}."))
}

/// Refuses attributes a resource does not have, as Neutron does.
pub(super) fn known(attrs: &Attrs, allowed: &[&str]) -> Result<(), NetworkError> {
    let unknown: Vec<&str> = attrs
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(NetworkError::bad_request(format!(
            "Unrecognized attribute(s) '{}'",
            unknown.join(", ")
        )))
    }
}

pub(super) fn string(attrs: &Attrs, key: &str, max: usize) -> Result<Option<String>, NetworkError> {
    match attrs.get(key) {
        None => Ok(None),
        Some(Json::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Json::String(s)) => Err(invalid(
            key,
            format!("'{s}' exceeds maximum length of {max}"),
        )),
        Some(Json::Null) if key == "description" => Ok(Some(String::new())),
        Some(other) => Err(invalid(key, format!("'{other}' is not a valid string"))),
    }
}

pub(super) fn boolean(attrs: &Attrs, key: &str) -> Result<Option<bool>, NetworkError> {
    match attrs.get(key) {
        None => Ok(None),
        Some(Json::Bool(b)) => Ok(Some(*b)),
        // Neutron converts strings for booleans.
        Some(Json::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Json::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(invalid(
            key,
            format!("'{other}' cannot be converted to boolean"),
        )),
    }
}

/// An integer, given as a number or (as OSC sends `--mtu`) a string.
fn integer(attrs: &Attrs, key: &str) -> Result<Option<i64>, NetworkError> {
    match attrs.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        Some(Json::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| invalid(key, format!("'{s}' is not an integer"))),
        Some(other) => Err(invalid(key, format!("'{other}' is not an integer"))),
    }
}

pub(super) fn list<'a>(attrs: &'a Attrs, key: &str) -> Result<Option<&'a [Json]>, NetworkError> {
    match attrs.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Array(a)) => Ok(Some(a)),
        Some(other) => Err(invalid(key, format!("'{other}' is not a list"))),
    }
}

pub(super) fn ip(key: &str, v: &Json) -> Result<Ipv4Addr, NetworkError> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(key, format!("'{v}' is not a valid IPv4 address")))
}

fn tags(attrs: &Attrs) -> Result<Option<Vec<String>>, NetworkError> {
    let Some(items) = list(attrs, "tags")? else {
        return Ok(None);
    };
    items.iter().map(tag).collect::<Result<_, _>>().map(Some)
}

/// A tag: 1-255 characters, no comma (filters split on them) or slash.
pub fn tag(v: &Json) -> Result<String, NetworkError> {
    match v.as_str() {
        Some(t) if !t.is_empty() && t.len() <= 255 && !t.contains(',') && !t.contains('/') => {
            Ok(t.to_owned())
        }
        _ => Err(invalid("tags", format!("'{v}' is not a valid tag"))),
    }
}

/// Name, description and tags, as every resource takes them.
pub(super) fn apply_standard(std: &mut Standard, attrs: &Attrs) -> Result<(), NetworkError> {
    if let Some(name) = string(attrs, "name", MAX_NAME)? {
        std.name = name;
    }
    if let Some(d) = string(attrs, "description", MAX_DESCRIPTION)? {
        std.description = d;
    }
    if let Some(t) = tags(attrs)? {
        std.tags = t;
    }
    Ok(())
}

/// The project a create is for: the caller's, or (admins only) the one the
/// body names.
pub(super) fn owner(ctx: &RequestContext, attrs: &Attrs) -> Result<String, NetworkError> {
    let named = ["project_id", "tenant_id"]
        .iter()
        .filter_map(|k| attrs.get(*k).and_then(Json::as_str))
        .next();
    match named {
        Some(p) if p != ctx.project_id() && !ctx.is_admin() => {
            Err(NetworkError::forbidden("create:project_id"))
        }
        Some(p) => Ok(p.to_owned()),
        None => Ok(ctx.project_id().to_owned()),
    }
}

/// Whether the caller may change things (secure RBAC: readers only read).
fn can_write(ctx: &RequestContext) -> bool {
    ctx.auth
        .roles
        .iter()
        .any(|r| matches!(r.name.as_str(), "admin" | "member" | "manager"))
}

pub(super) fn writer(ctx: &RequestContext, action: &str) -> Result<(), NetworkError> {
    if can_write(ctx) {
        Ok(())
    } else {
        Err(NetworkError::forbidden(action))
    }
}

pub(super) fn exhausted(network_id: &str) -> NetworkError {
    NetworkError::new(
        409,
        "IpAddressGenerationFailure",
        format!("No more IP addresses available on network {network_id}."),
    )
}

/// A random MAC in OpenStack's `fa:16:3e` prefix.
pub(super) fn random_mac() -> String {
    let b: [u8; 3] = rand::random();
    format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

fn valid_mac(mac: &str) -> Option<String> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|p| {
            if p.len() == 2 {
                u8::from_str_radix(p, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    // Unicast only, never all zeros.
    (bytes.len() == 6 && bytes[0] & 1 == 0 && bytes.iter().any(|b| *b != 0))
        .then(|| mac.to_ascii_lowercase())
}

impl NetworkService {
    pub fn new(store: Store) -> Self {
        NetworkService {
            store: NetworkStore::new(store),
        }
    }

    pub fn store(&self) -> &NetworkStore {
        &self.store
    }

    pub(super) async fn check_quota(
        &self,
        project: &str,
        resource: &str,
        adding: i64,
    ) -> Result<(), NetworkError> {
        let q = self.quota_of(project).await?;
        let limit = q.get(resource).unwrap_or(-1);
        if limit >= 0 && self.store.usage(project, resource).await? + adding > limit {
            return Err(NetworkError::new(
                409,
                "OverQuota",
                format!("Quota exceeded for resources: ['{resource}']."),
            ));
        }
        Ok(())
    }

    // --- networks

    /// Whether the caller sees a network: its own, shared and external ones.
    fn sees(ctx: &RequestContext, net: &Network) -> bool {
        ctx.is_admin() || net.std.project_id == ctx.project_id() || net.shared || net.external
    }

    /// A network the caller sees, or NetworkNotFound.
    pub async fn visible_network(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<Network, NetworkError> {
        match self.store.network(id).await? {
            Some(n) if Self::sees(ctx, &n) => Ok(n),
            _ => Err(NetworkError::not_found("Network", id)),
        }
    }

    /// A network the caller may change (admins any; projects their own).
    async fn own_network(&self, ctx: &RequestContext, id: &str) -> Result<Network, NetworkError> {
        let net = self.visible_network(ctx, id).await?;
        if !ctx.is_admin() && net.std.project_id != ctx.project_id() {
            return Err(NetworkError::forbidden("update_network"));
        }
        Ok(net)
    }

    pub async fn network_json(
        &self,
        ctx: &RequestContext,
        net: &Network,
    ) -> Result<Json, NetworkError> {
        let subnets: Vec<String> = self
            .store
            .subnets_of(&net.std.id)
            .await?
            .into_iter()
            .map(|s| s.std.id)
            .collect();
        Ok(net.to_json(&subnets, ctx.is_admin()))
    }

    pub async fn list_networks(&self, ctx: &RequestContext) -> Result<Vec<Json>, NetworkError> {
        let subnets = self.store.subnets().await?;
        Ok(self
            .store
            .networks()
            .await?
            .iter()
            .filter(|n| Self::sees(ctx, n))
            .map(|n| {
                let ids: Vec<String> = subnets
                    .iter()
                    .filter(|s| s.network_id == n.std.id)
                    .map(|s| s.std.id.clone())
                    .collect();
                n.to_json(&ids, ctx.is_admin())
            })
            .collect())
    }

    /// The attributes of a network create or update; admin-only ones checked.
    fn apply_network(
        ctx: &RequestContext,
        net: &mut Network,
        attrs: &Attrs,
    ) -> Result<(), NetworkError> {
        apply_standard(&mut net.std, attrs)?;
        if let Some(up) = boolean(attrs, "admin_state_up")? {
            net.admin_state_up = up;
        }
        for (key, slot) in [
            ("shared", &mut net.shared),
            ("router:external", &mut net.external),
        ] {
            if let Some(v) = boolean(attrs, key)? {
                if v != *slot && !ctx.is_admin() {
                    return Err(NetworkError::forbidden(&format!("create_network:{key}")));
                }
                *slot = v;
            }
        }
        if let Some(mtu) = integer(attrs, "mtu")? {
            if !(68..=OVERLAY_MTU).contains(&mtu) {
                return Err(NetworkError::bad_request(format!(
                    "Requested MTU is too big or too small: {mtu} (the overlay allows 68 to {OVERLAY_MTU})"
                )));
            }
            net.mtu = mtu;
        }
        if let Some(ps) = boolean(attrs, "port_security_enabled")? {
            net.port_security_enabled = ps;
        }
        if let Some(hints) = list(attrs, "availability_zone_hints")? {
            if hints.iter().any(|h| h != "nova") {
                return Err(NetworkError::new(
                    404,
                    "AvailabilityZoneNotFound",
                    "AvailabilityZone nova is the only availability zone.".into(),
                ));
            }
        }
        match attrs.get("provider:network_type") {
            None | Some(Json::Null) => {}
            Some(t) if !ctx.is_admin() => {
                let _ = t;
                return Err(NetworkError::forbidden(
                    "create_network:provider:network_type",
                ));
            }
            Some(t) if t == "vxlan" => {}
            Some(t) => {
                return Err(invalid(
                    "provider:network_type",
                    format!("network type {t} is not available here (vxlan only)"),
                ))
            }
        }
        Ok(())
    }

    pub async fn create_network(
        &self,
        ctx: &RequestContext,
        attrs: &Attrs,
    ) -> Result<Json, NetworkError> {
        writer(ctx, "create_network")?;
        known(
            attrs,
            &[
                NETWORK_ATTRS,
                &[
                    "availability_zone_hints",
                    "project_id",
                    "tenant_id",
                    "provider:network_type",
                ],
            ]
            .concat(),
        )?;
        let project = owner(ctx, attrs)?;
        let mut net = Network {
            std: Standard::new(&project, now()),
            admin_state_up: true,
            shared: false,
            external: false,
            mtu: OVERLAY_MTU,
            port_security_enabled: true,
            vni: 0,
        };
        Self::apply_network(ctx, &mut net, attrs)?;
        self.check_quota(&project, "network", 1).await?;
        self.store.create_network(&mut net, FIRST_VNI).await?;
        self.ensure_default_group(&project).await?;
        tracing::info!(
            network = net.std.id,
            vni = net.vni,
            project,
            "network created"
        );
        Ok(net.to_json(&[], ctx.is_admin()))
    }

    pub async fn update_network(
        &self,
        ctx: &RequestContext,
        id: &str,
        attrs: &Attrs,
    ) -> Result<Json, NetworkError> {
        writer(ctx, "update_network")?;
        known(attrs, NETWORK_ATTRS)?;
        loop {
            let mut net = self.own_network(ctx, id).await?;
            let read = net.std.revision_number;
            Self::apply_network(ctx, &mut net, attrs)?;
            net.std.touch(now());
            if self.store.update_network(&net, read).await? {
                return self.network_json(ctx, &net).await;
            }
        }
    }

    pub async fn delete_network(&self, ctx: &RequestContext, id: &str) -> Result<(), NetworkError> {
        writer(ctx, "delete_network")?;
        self.own_network(ctx, id).await?;
        match self.store.delete_network(id).await? {
            Deleted::Yes => Ok(()),
            Deleted::NotFound => Err(NetworkError::not_found("Network", id)),
            Deleted::InUse => Err(NetworkError::new(
                409,
                "NetworkInUse",
                format!("Unable to complete operation on network {id}. There are one or more ports still in use on the network."),
            )),
        }
    }

    // --- subnets

    pub async fn visible_subnet(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<Subnet, NetworkError> {
        let subnet = self
            .store
            .subnet(id)
            .await?
            .ok_or_else(|| NetworkError::not_found("Subnet", id))?;
        let visible = match self.store.network(&subnet.network_id).await? {
            Some(n) => Self::sees(ctx, &n) || subnet.std.project_id == ctx.project_id(),
            None => false,
        };
        if visible {
            Ok(subnet)
        } else {
            Err(NetworkError::not_found("Subnet", id))
        }
    }

    pub async fn list_subnets(&self, ctx: &RequestContext) -> Result<Vec<Json>, NetworkError> {
        let networks = self.store.networks().await?;
        let seen: BTreeSet<&str> = networks
            .iter()
            .filter(|n| Self::sees(ctx, n))
            .map(|n| n.std.id.as_str())
            .collect();
        Ok(self
            .store
            .subnets()
            .await?
            .iter()
            .filter(|s| seen.contains(s.network_id.as_str()))
            .map(Subnet::to_json)
            .collect())
    }

    /// Gateway, pools, DNS servers and routes of a create or update, checked
    /// against the subnet's CIDR.
    fn apply_subnet(
        subnet: &mut Subnet,
        attrs: &Attrs,
        creating: bool,
    ) -> Result<(), NetworkError> {
        apply_standard(&mut subnet.std, attrs)?;
        let net = ipam::parse_cidr(&subnet.cidr).map_err(NetworkError::ipam)?;
        if let Some(g) = attrs.get("gateway_ip") {
            subnet.gateway_ip = match g {
                Json::Null => None,
                g => Some(ip("gateway_ip", g)?),
            };
            ipam::check_gateway(&net, subnet.gateway_ip).map_err(NetworkError::ipam)?;
        }
        if let Some(dhcp) = boolean(attrs, "enable_dhcp")? {
            subnet.enable_dhcp = dhcp;
        }
        if let Some(pools) = list(attrs, "allocation_pools")? {
            subnet.allocation_pools = pools
                .iter()
                .map(|p| {
                    Ok(Pool {
                        start: ip("allocation_pools", &p["start"])?,
                        end: ip("allocation_pools", &p["end"])?,
                    })
                })
                .collect::<Result<_, NetworkError>>()?;
        } else if creating {
            subnet.allocation_pools = ipam::default_pools(&net, subnet.gateway_ip);
        }
        ipam::check_pools(&net, subnet.gateway_ip, &subnet.allocation_pools).map_err(
            |e| match e {
                ipam::IpamError::GatewayInPool(..) => {
                    NetworkError::new(409, "GatewayConflictWithAllocationPools", e.to_string())
                }
                e => NetworkError::ipam(e),
            },
        )?;
        if let Some(dns) = list(attrs, "dns_nameservers")? {
            if dns.len() > MAX_DNS_NAMESERVERS {
                return Err(NetworkError::new(
                    400,
                    "DNSNameServersExhausted",
                    format!("Unable to complete operation for {}. The number of DNS nameservers exceeds the limit {MAX_DNS_NAMESERVERS}.", subnet.std.id),
                ));
            }
            let mut servers = Vec::new();
            for d in dns {
                let a = ip("dns_nameservers", d)?;
                if servers.contains(&a) {
                    return Err(invalid(
                        "dns_nameservers",
                        format!("Duplicate nameserver '{a}'"),
                    ));
                }
                servers.push(a);
            }
            subnet.dns_nameservers = servers;
        }
        if let Some(routes) = list(attrs, "host_routes")? {
            if routes.len() > MAX_HOST_ROUTES {
                return Err(NetworkError::new(
                    400,
                    "HostRoutesExhausted",
                    format!("Unable to complete operation for {}. The number of host routes exceeds the limit {MAX_HOST_ROUTES}.", subnet.std.id),
                ));
            }
            subnet.host_routes = routes
                .iter()
                .map(|r| {
                    let dest = r["destination"].as_str().unwrap_or_default();
                    let dest: ipnet::Ipv4Net = dest.parse().map_err(|_| {
                        invalid(
                            "host_routes",
                            format!("'{}' is not a valid IP subnet", r["destination"]),
                        )
                    })?;
                    Ok(HostRoute {
                        destination: dest.trunc().to_string(),
                        nexthop: ip("host_routes", &r["nexthop"])?,
                    })
                })
                .collect::<Result<_, NetworkError>>()?;
        }
        Ok(())
    }

    pub async fn create_subnet(
        &self,
        ctx: &RequestContext,
        attrs: &Attrs,
    ) -> Result<Json, NetworkError> {
        writer(ctx, "create_subnet")?;
        known(
            attrs,
            &[
                "name",
                "description",
                "network_id",
                "ip_version",
                "cidr",
                "gateway_ip",
                "enable_dhcp",
                "allocation_pools",
                "dns_nameservers",
                "host_routes",
                "tags",
                "project_id",
                "tenant_id",
                "subnetpool_id",
                "prefixlen",
                "ipv6_ra_mode",
                "ipv6_address_mode",
            ],
        )?;
        let Some(network_id) = attrs.get("network_id").and_then(Json::as_str) else {
            return Err(NetworkError::bad_request(
                "Failed to parse request. Required attribute 'network_id' not specified".into(),
            ));
        };
        match integer(attrs, "ip_version")? {
            Some(4) => {}
            Some(6) => return Err(NetworkError::bad_request(
                "Invalid input for operation: IPv6 subnets are not available on this cloud yet."
                    .into(),
            )),
            Some(v) => return Err(invalid("ip_version", format!("{v} is not in [4, 6]"))),
            None => {
                return Err(NetworkError::bad_request(
                    "Failed to parse request. Required attribute 'ip_version' not specified".into(),
                ))
            }
        }
        for key in [
            "subnetpool_id",
            "prefixlen",
            "ipv6_ra_mode",
            "ipv6_address_mode",
        ] {
            if attrs.get(key).is_some_and(|v| !v.is_null()) {
                return Err(NetworkError::bad_request(format!(
                    "Invalid input for operation: {key} is not available on this cloud (no subnet pools, IPv4 only)."
                )));
            }
        }
        let Some(cidr) = attrs.get("cidr").and_then(Json::as_str) else {
            return Err(NetworkError::bad_request(
                "Bad subnets request: a cidr must be specified in the absence of a subnet pool"
                    .into(),
            ));
        };
        let net = self.visible_network(ctx, network_id).await?;
        let project = owner(ctx, attrs)?;
        if !ctx.is_admin() && net.std.project_id != project {
            return Err(NetworkError::forbidden("create_subnet"));
        }
        let parsed = ipam::parse_cidr(cidr).map_err(NetworkError::ipam)?;
        let mut subnet = Subnet {
            std: Standard::new(&project, now()),
            network_id: net.std.id.clone(),
            cidr: parsed.to_string(),
            gateway_ip: Some(ipam::default_gateway(&parsed)),
            enable_dhcp: true,
            allocation_pools: Vec::new(),
            dns_nameservers: Vec::new(),
            host_routes: Vec::new(),
        };
        Self::apply_subnet(&mut subnet, attrs, true)?;
        for other in self.store.subnets_of(&net.std.id).await? {
            let theirs = ipam::parse_cidr(&other.cidr).map_err(NetworkError::ipam)?;
            if theirs.contains(&parsed.network()) || parsed.contains(&theirs.network()) {
                return Err(NetworkError::bad_request(format!(
                    "Invalid input for operation: Requested subnet with cidr: {} for network: {} overlaps with another subnet.",
                    subnet.cidr, net.std.id
                )));
            }
        }
        self.check_quota(&project, "subnet", 1).await?;
        self.store.create_subnet(&subnet).await?;
        Ok(subnet.to_json())
    }

    pub async fn update_subnet(
        &self,
        ctx: &RequestContext,
        id: &str,
        attrs: &Attrs,
    ) -> Result<Json, NetworkError> {
        writer(ctx, "update_subnet")?;
        for key in [
            "cidr",
            "ip_version",
            "network_id",
            "project_id",
            "tenant_id",
        ] {
            if attrs.contains_key(key) {
                return Err(NetworkError::bad_request(format!(
                    "Cannot update read-only attribute {key}"
                )));
            }
        }
        known(
            attrs,
            &[
                "name",
                "description",
                "gateway_ip",
                "enable_dhcp",
                "allocation_pools",
                "dns_nameservers",
                "host_routes",
                "tags",
            ],
        )?;
        loop {
            let mut subnet = self.visible_subnet(ctx, id).await?;
            if !ctx.is_admin() && subnet.std.project_id != ctx.project_id() {
                return Err(NetworkError::forbidden("update_subnet"));
            }
            let read = subnet.std.revision_number;
            Self::apply_subnet(&mut subnet, attrs, false)?;
            subnet.std.touch(now());
            if self.store.update_subnet(&subnet, read).await? {
                return Ok(subnet.to_json());
            }
        }
    }

    pub async fn delete_subnet(&self, ctx: &RequestContext, id: &str) -> Result<(), NetworkError> {
        writer(ctx, "delete_subnet")?;
        let subnet = self.visible_subnet(ctx, id).await?;
        if !ctx.is_admin() && subnet.std.project_id != ctx.project_id() {
            return Err(NetworkError::forbidden("delete_subnet"));
        }
        match self.store.delete_subnet(id).await? {
            Deleted::Yes => Ok(()),
            Deleted::NotFound => Err(NetworkError::not_found("Subnet", id)),
            Deleted::InUse => Err(NetworkError::new(
                409,
                "SubnetInUse",
                format!("Unable to complete operation on subnet {id}: One or more ports have an IP allocation from this subnet."),
            )),
        }
    }

    // --- ports

    fn sees_port(ctx: &RequestContext, port: &Port) -> bool {
        ctx.is_admin() || port.std.project_id == ctx.project_id()
    }

    pub async fn visible_port(&self, ctx: &RequestContext, id: &str) -> Result<Port, NetworkError> {
        match self.store.port(id).await? {
            Some(p) if Self::sees_port(ctx, &p) => Ok(p),
            _ => Err(NetworkError::not_found("Port", id)),
        }
    }

    pub async fn list_ports(
        &self,
        ctx: &RequestContext,
        device_id: Option<&str>,
    ) -> Result<Vec<Json>, NetworkError> {
        let ports = match device_id {
            Some(d) => self.store.ports_of_device(d).await?,
            None => self.store.ports().await?,
        };
        Ok(ports
            .iter()
            .filter(|p| Self::sees_port(ctx, p))
            .map(|p| p.to_json(ctx.is_admin()))
            .collect())
    }

    /// The fixed IPs a port asks for: `(subnet, address)` pairs, either part
    /// possibly left to the service.
    pub(super) async fn requested_ips(
        &self,
        network_id: &str,
        items: &[Json],
    ) -> Result<Vec<(Subnet, Option<Ipv4Addr>)>, NetworkError> {
        let subnets = self.store.subnets_of(network_id).await?;
        let mut wanted = Vec::new();
        for item in items {
            let address = match item.get("ip_address") {
                None | Some(Json::Null) => None,
                Some(a) => Some(ip("fixed_ips", a)?),
            };
            let subnet = match item.get("subnet_id").and_then(Json::as_str) {
                Some(sid) => subnets
                    .iter()
                    .find(|s| s.std.id == sid)
                    .cloned()
                    .ok_or_else(|| {
                        NetworkError::bad_request(format!(
                            "Invalid input for operation: Failed to create port on network {network_id}, because fixed_ips included invalid subnet {sid}."
                        ))
                    })?,
                None => {
                    let Some(a) = address else {
                        return Err(invalid("fixed_ips", "a fixed IP needs a subnet_id or an ip_address"));
                    };
                    subnets
                        .iter()
                        .find(|s| {
                            ipam::parse_cidr(&s.cidr).is_ok_and(|n| n.contains(&a))
                        })
                        .cloned()
                        .ok_or_else(|| {
                            NetworkError::bad_request(format!(
                                "Invalid input for operation: IP address {a} is not a valid IP for any of the subnets on the specified network."
                            ))
                        })?
                }
            };
            if let Some(a) = address {
                let net = ipam::parse_cidr(&subnet.cidr).map_err(NetworkError::ipam)?;
                if !ipam::is_usable(&net, a) {
                    return Err(NetworkError::bad_request(format!(
                        "Invalid input for operation: IP address {a} is not a valid IP for the specified subnet."
                    )));
                }
            }
            wanted.push((subnet, address));
        }
        Ok(wanted)
    }

    /// Chooses the addresses of `wanted` (keeping `kept`, which the port
    /// already holds): given ones as they are, the others the lowest free.
    pub(super) async fn choose_ips(
        &self,
        network_id: &str,
        wanted: &[(Subnet, Option<Ipv4Addr>)],
        kept: &[FixedIp],
    ) -> Result<Vec<FixedIp>, NetworkError> {
        let mut chosen: Vec<FixedIp> = Vec::new();
        for (subnet, address) in wanted {
            let ip_address = match address {
                Some(a) => *a,
                None => {
                    let mut taken: BTreeSet<Ipv4Addr> = self
                        .store
                        .allocated(&subnet.std.id)
                        .await?
                        .into_iter()
                        .collect();
                    taken.extend(chosen.iter().map(|f| f.ip_address));
                    // An address the port keeps is free for it.
                    for k in kept.iter().filter(|k| k.subnet_id == subnet.std.id) {
                        taken.remove(&k.ip_address);
                    }
                    ipam::first_free(&subnet.allocation_pools, &taken).ok_or_else(|| {
                        NetworkError::new(
                            409,
                            "IpAddressGenerationFailure",
                            format!("No more IP addresses available on network {network_id}."),
                        )
                    })?
                }
            };
            chosen.push(FixedIp {
                subnet_id: subnet.std.id.clone(),
                ip_address,
            });
        }
        Ok(chosen)
    }

    /// Security groups a port names: the caller's own (admins: the port's
    /// project's).
    async fn groups(
        &self,
        ctx: &RequestContext,
        project: &str,
        items: &[Json],
    ) -> Result<Vec<String>, NetworkError> {
        let mut ids = Vec::new();
        for item in items {
            let id = item.as_str().ok_or_else(|| {
                invalid(
                    "security_groups",
                    format!("'{item}' is not a security group id"),
                )
            })?;
            let group = self.store.security_group(id).await?;
            match group {
                Some(g) if g.std.project_id == project || ctx.is_admin() => {
                    if !ids.contains(&g.std.id) {
                        ids.push(g.std.id);
                    }
                }
                _ => return Err(NetworkError::sg_not_found(id)),
            }
        }
        Ok(ids)
    }

    fn address_pairs(port_mac: &str, items: &[Json]) -> Result<Vec<AddressPair>, NetworkError> {
        if items.len() > MAX_ADDRESS_PAIRS {
            return Err(NetworkError::bad_request(format!(
                "Invalid input for allowed_address_pairs. Reason: exceeded maximum of {MAX_ADDRESS_PAIRS} pairs."
            )));
        }
        let mut pairs: Vec<AddressPair> = Vec::new();
        for item in items {
            let Some(address) = item.get("ip_address").and_then(Json::as_str) else {
                return Err(NetworkError::new(
                    400,
                    "AllowedAddressPairsMissingIP",
                    "AllowedAddressPair must contain ip_address".into(),
                ));
            };
            let ok =
                address.parse::<Ipv4Addr>().is_ok() || address.parse::<ipnet::Ipv4Net>().is_ok();
            if !ok {
                return Err(invalid(
                    "allowed_address_pairs",
                    format!("'{address}' is not a valid IP address or CIDR"),
                ));
            }
            let mac = match item.get("mac_address").and_then(Json::as_str) {
                Some(m) => valid_mac(m).ok_or_else(|| {
                    invalid(
                        "allowed_address_pairs",
                        format!("'{m}' is not a valid MAC address"),
                    )
                })?,
                None => port_mac.to_owned(),
            };
            let pair = AddressPair {
                ip_address: address.to_owned(),
                mac_address: mac,
            };
            if pairs.contains(&pair) {
                return Err(NetworkError::new(
                    400,
                    "DuplicateAddressPairInRequest",
                    format!(
                        "Request contains duplicate address pair: mac_address {} ip_address {}.",
                        pair.mac_address, pair.ip_address
                    ),
                ));
            }
            pairs.push(pair);
        }
        Ok(pairs)
    }

    pub async fn create_port(
        &self,
        ctx: &RequestContext,
        attrs: &Attrs,
    ) -> Result<Port, NetworkError> {
        writer(ctx, "create_port")?;
        known(
            attrs,
            &[PORT_ATTRS, &["network_id", "project_id", "tenant_id"]].concat(),
        )?;
        let Some(network_id) = attrs.get("network_id").and_then(Json::as_str) else {
            return Err(NetworkError::bad_request(
                "Failed to parse request. Required attribute 'network_id' not specified".into(),
            ));
        };
        let net = self.visible_network(ctx, network_id).await?;
        let project = owner(ctx, attrs)?;
        if !ctx.is_admin() && net.std.project_id != project && !net.shared {
            return Err(NetworkError::forbidden("create_port:network"));
        }
        if attrs.contains_key("binding:host_id") && !ctx.is_admin() {
            return Err(NetworkError::forbidden("create_port:binding:host_id"));
        }
        match attrs.get("binding:vnic_type").and_then(Json::as_str) {
            None | Some("normal") => {}
            Some(other) => {
                return Err(invalid(
                    "binding:vnic_type",
                    format!("{other} is not available (normal only)"),
                ))
            }
        }
        let given_mac = match attrs.get("mac_address") {
            None | Some(Json::Null) => None,
            Some(m) => Some(m.as_str().and_then(valid_mac).ok_or_else(|| {
                invalid("mac_address", format!("'{m}' is not a valid MAC address"))
            })?),
        };
        let mut port = Port {
            std: Standard::new(&project, now()),
            network_id: net.std.id.clone(),
            mac_address: given_mac.clone().unwrap_or_else(random_mac),
            admin_state_up: boolean(attrs, "admin_state_up")?.unwrap_or(true),
            status: "DOWN".into(),
            device_id: string(attrs, "device_id", 255)?.unwrap_or_default(),
            device_owner: string(attrs, "device_owner", 255)?.unwrap_or_default(),
            fixed_ips: Vec::new(),
            allowed_address_pairs: Vec::new(),
            security_groups: Vec::new(),
            port_security_enabled: boolean(attrs, "port_security_enabled")?
                .unwrap_or(net.port_security_enabled),
            host_id: string(attrs, "binding:host_id", 255)?.unwrap_or_default(),
            nova_slot: None,
        };
        apply_standard(&mut port.std, attrs)?;
        if let Some(pairs) = list(attrs, "allowed_address_pairs")? {
            if !port.port_security_enabled && !pairs.is_empty() {
                return Err(NetworkError::new(409, "AddressPairAndPortSecurityRequired", "Port Security must be enabled in order to have allowed address pairs on a port.".into()));
            }
            port.allowed_address_pairs = Self::address_pairs(&port.mac_address, pairs)?;
        }
        let service_port = port.device_owner.starts_with("network:");
        port.security_groups = match list(attrs, "security_groups")? {
            Some(items) if !items.is_empty() && !port.port_security_enabled => {
                return Err(NetworkError::new(400, "PortSecurityAndIPRequiredForSecurityGroups", "Port security must be enabled and port must have an IP address in order to use security groups.".into()));
            }
            Some(items) => self.groups(ctx, &project, items).await?,
            None if port.port_security_enabled && !service_port => {
                vec![self.ensure_default_group(&project).await?.std.id]
            }
            None => Vec::new(),
        };
        let wanted = match list(attrs, "fixed_ips")? {
            Some(items) => self.requested_ips(&net.std.id, items).await?,
            None => self.default_ips(&net.std.id).await?,
        };
        self.check_quota(&project, "port", 1).await?;
        self.insert_port(port, &wanted, given_mac.is_some()).await
    }

    /// A port's address when it names none: one from the first subnet that
    /// has one free (none on a network without subnets).
    pub(super) async fn default_ips(
        &self,
        network_id: &str,
    ) -> Result<Vec<(Subnet, Option<Ipv4Addr>)>, NetworkError> {
        let subnets = self.store.subnets_of(network_id).await?;
        if subnets.is_empty() {
            return Ok(Vec::new());
        }
        for s in subnets {
            let taken: BTreeSet<Ipv4Addr> =
                self.store.allocated(&s.std.id).await?.into_iter().collect();
            if ipam::first_free(&s.allocation_pools, &taken).is_some() {
                return Ok(vec![(s, None)]);
            }
        }
        Err(exhausted(network_id))
    }

    /// Stores a new port with addresses chosen from `wanted`; an address or
    /// MAC another create took meanwhile is chosen again, unless the user
    /// gave it (`mac_given`, or an address in `wanted`).
    pub(super) async fn insert_port(
        &self,
        mut port: Port,
        wanted: &[(Subnet, Option<Ipv4Addr>)],
        mac_given: bool,
    ) -> Result<Port, NetworkError> {
        for attempt in 0..ALLOCATION_TRIES {
            port.fixed_ips = self.choose_ips(&port.network_id, wanted, &[]).await?;
            match self.store.create_port(&port).await {
                Ok(()) => {
                    tracing::info!(
                        port = port.std.id,
                        network = port.network_id,
                        "port created"
                    );
                    return Ok(port);
                }
                Err(e) if is_unique_violation(&e) => {
                    if let Some(taken) = self.given_address_taken(wanted).await? {
                        return Err(taken);
                    }
                    if mac_given {
                        if self.mac_taken(&port.network_id, &port.mac_address).await? {
                            return Err(NetworkError::new(409, "MacAddressInUse", format!("Unable to complete operation for network {}. The mac address {} is in use.", port.network_id, port.mac_address)));
                        }
                    } else {
                        port.mac_address = random_mac();
                    }
                    tracing::debug!(
                        attempt,
                        "a port's address or MAC was taken meanwhile; choosing again"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(exhausted(&port.network_id))
    }

    async fn given_address_taken(
        &self,
        wanted: &[(Subnet, Option<Ipv4Addr>)],
    ) -> Result<Option<NetworkError>, NetworkError> {
        for (subnet, address) in wanted {
            if let Some(a) = address {
                if self.store.allocated(&subnet.std.id).await?.contains(a) {
                    return Ok(Some(NetworkError::new(
                        409,
                        "IpAddressAlreadyAllocated",
                        format!(
                            "IP address {a} already allocated in subnet {}",
                            subnet.std.id
                        ),
                    )));
                }
            }
        }
        Ok(None)
    }

    async fn mac_taken(&self, network_id: &str, mac: &str) -> Result<bool, NetworkError> {
        Ok(self
            .store
            .ports()
            .await?
            .iter()
            .any(|p| p.network_id == network_id && p.mac_address == mac))
    }

    pub async fn update_port(
        &self,
        ctx: &RequestContext,
        id: &str,
        attrs: &Attrs,
    ) -> Result<Port, NetworkError> {
        writer(ctx, "update_port")?;
        for key in ["network_id", "project_id", "tenant_id"] {
            if attrs.contains_key(key) {
                return Err(NetworkError::bad_request(format!(
                    "Cannot update read-only attribute {key}"
                )));
            }
        }
        known(attrs, PORT_ATTRS)?;
        if attrs.contains_key("binding:host_id") && !ctx.is_admin() {
            return Err(NetworkError::forbidden("update_port:binding:host_id"));
        }
        for _ in 0..ALLOCATION_TRIES {
            let old = self.visible_port(ctx, id).await?;
            let mut port = old.clone();
            apply_standard(&mut port.std, attrs)?;
            if let Some(up) = boolean(attrs, "admin_state_up")? {
                port.admin_state_up = up;
            }
            if let Some(m) = attrs.get("mac_address") {
                let mac = m.as_str().and_then(valid_mac).ok_or_else(|| {
                    invalid("mac_address", format!("'{m}' is not a valid MAC address"))
                })?;
                if mac != port.mac_address && !port.host_id.is_empty() {
                    return Err(NetworkError::new(409, "PortBound", format!("Unable to complete operation on port {id}, port is already bound, port type: tap, old_mac {}, new_mac {mac}.", port.mac_address)));
                }
                port.mac_address = mac;
            }
            if let Some(d) = string(attrs, "device_id", 255)? {
                port.device_id = d;
            }
            if let Some(d) = string(attrs, "device_owner", 255)? {
                port.device_owner = d;
            }
            if let Some(h) = string(attrs, "binding:host_id", 255)? {
                port.host_id = h;
            }
            if let Some(ps) = boolean(attrs, "port_security_enabled")? {
                port.port_security_enabled = ps;
            }
            if let Some(items) = list(attrs, "security_groups")? {
                port.security_groups = self.groups(ctx, &port.std.project_id, items).await?;
            }
            if !port.port_security_enabled && !port.security_groups.is_empty() {
                return Err(NetworkError::new(409, "PortSecurityPortHasSecurityGroup", "Port has security group associated. Cannot disable port security or ip address until security group is removed".into()));
            }
            if let Some(pairs) = list(attrs, "allowed_address_pairs")? {
                port.allowed_address_pairs = Self::address_pairs(&port.mac_address, pairs)?;
            }
            if !port.port_security_enabled && !port.allowed_address_pairs.is_empty() {
                return Err(NetworkError::new(409, "AddressPairAndPortSecurityRequired", "Port Security must be enabled in order to have allowed address pairs on a port.".into()));
            }
            let mut wanted = Vec::new();
            if let Some(items) = list(attrs, "fixed_ips")? {
                wanted = self.requested_ips(&port.network_id, items).await?;
                // A given address the port already holds stays its own.
                let taken_by_others = |subnet: &Subnet, a: &Ipv4Addr| {
                    !old.fixed_ips
                        .iter()
                        .any(|f| f.subnet_id == subnet.std.id && f.ip_address == *a)
                };
                port.fixed_ips = self
                    .choose_ips(&port.network_id, &wanted, &old.fixed_ips)
                    .await?;
                for (subnet, address) in &wanted {
                    if let Some(a) = address {
                        if taken_by_others(subnet, a)
                            && self.store.allocated(&subnet.std.id).await?.contains(a)
                        {
                            return Err(NetworkError::new(
                                409,
                                "IpAddressAlreadyAllocated",
                                format!(
                                    "IP address {a} already allocated in subnet {}",
                                    subnet.std.id
                                ),
                            ));
                        }
                    }
                }
            }
            port.std.touch(now());
            match self.store.update_port(&port, &old).await {
                Ok(true) => return Ok(port),
                // Changed meanwhile: read again and apply the update to it.
                Ok(false) => continue,
                Err(e) if is_unique_violation(&e) => {
                    if let Some(taken) = self.given_address_taken(&wanted).await? {
                        return Err(taken);
                    }
                    if port.mac_address != old.mac_address {
                        return Err(NetworkError::new(409, "MacAddressInUse", format!("Unable to complete operation for network {}. The mac address {} is in use.", port.network_id, port.mac_address)));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(NetworkError::new(
            409,
            "IpAddressGenerationFailure",
            format!("No more IP addresses available on network {}.", id),
        ))
    }

    pub async fn delete_port(&self, ctx: &RequestContext, id: &str) -> Result<(), NetworkError> {
        writer(ctx, "delete_port")?;
        let port = self.visible_port(ctx, id).await?;
        if [ROUTER_INTERFACE, ROUTER_GATEWAY, FLOATING_IP].contains(&port.device_owner.as_str()) {
            return Err(NetworkError::new(
                409,
                "ServicePortInUse",
                format!(
                    "Port {id} cannot be deleted directly via the port API: has device owner {}.",
                    port.device_owner
                ),
            ));
        }
        if !self.store.delete_port(id).await? {
            return Err(NetworkError::not_found("Port", id));
        }
        tracing::info!(port = id, "port deleted");
        Ok(())
    }

    // --- security groups

    fn egress_rules(group: &SecurityGroup, now: i64) -> Vec<SecurityGroupRule> {
        ["IPv4", "IPv6"]
            .iter()
            .map(|ethertype| SecurityGroupRule {
                id: uuid::Uuid::new_v4().to_string(),
                project_id: group.std.project_id.clone(),
                security_group_id: group.std.id.clone(),
                description: String::new(),
                direction: "egress".into(),
                ethertype: (*ethertype).into(),
                protocol: None,
                port_range_min: None,
                port_range_max: None,
                remote_ip_prefix: None,
                remote_group_id: None,
                created_at: now,
            })
            .collect()
    }

    /// The project's `default` group, made on first need with Neutron's
    /// four rules: any egress, and ingress from members of the same group.
    pub async fn ensure_default_group(&self, project: &str) -> Result<SecurityGroup, NetworkError> {
        if project.is_empty() {
            return Err(NetworkError::bad_request(
                "a project-scoped token is needed".into(),
            ));
        }
        if let Some(g) = self.store.default_security_group(project).await? {
            return Ok(g);
        }
        let t = now();
        let mut group = SecurityGroup {
            std: Standard::new(project, t),
            stateful: true,
        };
        group.std.name = "default".into();
        group.std.description = "Default security group".into();
        let mut rules = Self::egress_rules(&group, t);
        for r in Self::egress_rules(&group, t) {
            rules.push(SecurityGroupRule {
                id: uuid::Uuid::new_v4().to_string(),
                direction: "ingress".into(),
                remote_group_id: Some(group.std.id.clone()),
                ..r
            });
        }
        match self
            .store
            .create_security_group(&group, Some(project), &rules)
            .await
        {
            Ok(()) => Ok(group),
            // Another request made it first.
            Err(e) if is_unique_violation(&e) => self
                .store
                .default_security_group(project)
                .await?
                .ok_or_else(|| {
                    NetworkError::Store(StoreError::Conflict("the default security group".into()))
                }),
            Err(e) => Err(e.into()),
        }
    }

    fn sees_group(ctx: &RequestContext, g: &SecurityGroup) -> bool {
        ctx.is_admin() || g.std.project_id == ctx.project_id()
    }

    pub async fn visible_group(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<SecurityGroup, NetworkError> {
        match self.store.security_group(id).await? {
            Some(g) if Self::sees_group(ctx, &g) => Ok(g),
            _ => Err(NetworkError::sg_not_found(id)),
        }
    }

    pub async fn group_json(&self, g: &SecurityGroup) -> Result<Json, NetworkError> {
        Ok(g.to_json(&self.store.rules_of(&g.std.id).await?))
    }

    pub async fn list_groups(&self, ctx: &RequestContext) -> Result<Vec<Json>, NetworkError> {
        if !ctx.project_id().is_empty() {
            self.ensure_default_group(ctx.project_id()).await?;
        }
        let rules = self.store.rules().await?;
        Ok(self
            .store
            .security_groups()
            .await?
            .iter()
            .filter(|g| Self::sees_group(ctx, g))
            .map(|g| {
                let mine: Vec<SecurityGroupRule> = rules
                    .iter()
                    .filter(|r| r.security_group_id == g.std.id)
                    .cloned()
                    .collect();
                g.to_json(&mine)
            })
            .collect())
    }

    pub async fn create_group(
        &self,
        ctx: &RequestContext,
        attrs: &Attrs,
    ) -> Result<Json, NetworkError> {
        writer(ctx, "create_security_group")?;
        known(
            attrs,
            &[
                "name",
                "description",
                "stateful",
                "tags",
                "project_id",
                "tenant_id",
            ],
        )?;
        let project = owner(ctx, attrs)?;
        self.ensure_default_group(&project).await?;
        let t = now();
        let mut group = SecurityGroup {
            std: Standard::new(&project, t),
            stateful: boolean(attrs, "stateful")?.unwrap_or(true),
        };
        apply_standard(&mut group.std, attrs)?;
        if group.std.name == "default" {
            return Err(NetworkError::new(
                409,
                "SecurityGroupDefaultAlreadyExists",
                "Default security group already exists.".into(),
            ));
        }
        self.check_quota(&project, "security_group", 1).await?;
        let rules = Self::egress_rules(&group, t);
        self.store
            .create_security_group(&group, None, &rules)
            .await?;
        Ok(group.to_json(&rules))
    }

    pub async fn update_group(
        &self,
        ctx: &RequestContext,
        id: &str,
        attrs: &Attrs,
    ) -> Result<Json, NetworkError> {
        writer(ctx, "update_security_group")?;
        known(attrs, &["name", "description", "stateful", "tags"])?;
        loop {
            let mut group = self.visible_group(ctx, id).await?;
            let read = group.std.revision_number;
            let is_default = self
                .store
                .default_security_group(&group.std.project_id)
                .await?
                .is_some_and(|d| d.std.id == group.std.id);
            apply_standard(&mut group.std, attrs)?;
            if is_default && group.std.name != "default" {
                return Err(NetworkError::new(
                    409,
                    "SecurityGroupCannotUpdateDefault",
                    "Updating default security group not allowed.".into(),
                ));
            }
            if let Some(s) = boolean(attrs, "stateful")? {
                group.stateful = s;
            }
            group.std.touch(now());
            if self.store.update_security_group(&group, read).await? {
                return self.group_json(&group).await;
            }
        }
    }

    pub async fn delete_group(&self, ctx: &RequestContext, id: &str) -> Result<(), NetworkError> {
        writer(ctx, "delete_security_group")?;
        let group = self.visible_group(ctx, id).await?;
        let is_default = self
            .store
            .default_security_group(&group.std.project_id)
            .await?
            .is_some_and(|d| d.std.id == id);
        if is_default && !ctx.is_admin() {
            return Err(NetworkError::new(
                409,
                "SecurityGroupCannotRemoveDefault",
                "Insufficient rights for removing default security group.".into(),
            ));
        }
        match self.store.delete_security_group(id).await? {
            Deleted::Yes => Ok(()),
            Deleted::NotFound => Err(NetworkError::sg_not_found(id)),
            Deleted::InUse => Err(NetworkError::new(
                409,
                "SecurityGroupInUse",
                format!("Security Group {id} in use."),
            )),
        }
    }

    // --- security group rules

    pub async fn list_rules(&self, ctx: &RequestContext) -> Result<Vec<Json>, NetworkError> {
        if !ctx.project_id().is_empty() {
            self.ensure_default_group(ctx.project_id()).await?;
        }
        Ok(self
            .store
            .rules()
            .await?
            .iter()
            .filter(|r| ctx.is_admin() || r.project_id == ctx.project_id())
            .map(SecurityGroupRule::to_json)
            .collect())
    }

    pub async fn visible_rule(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<SecurityGroupRule, NetworkError> {
        match self.store.rule(id).await? {
            Some(r) if ctx.is_admin() || r.project_id == ctx.project_id() => Ok(r),
            _ => Err(NetworkError::new(
                404,
                "SecurityGroupRuleNotFound",
                format!("Security group rule {id} does not exist"),
            )),
        }
    }

    pub async fn create_rule(
        &self,
        ctx: &RequestContext,
        attrs: &Attrs,
    ) -> Result<Json, NetworkError> {
        writer(ctx, "create_security_group_rule")?;
        known(
            attrs,
            &[
                "security_group_id",
                "direction",
                "ethertype",
                "protocol",
                "port_range_min",
                "port_range_max",
                "remote_ip_prefix",
                "remote_group_id",
                "remote_address_group_id",
                "description",
                "project_id",
                "tenant_id",
            ],
        )?;
        let Some(group_id) = attrs.get("security_group_id").and_then(Json::as_str) else {
            return Err(NetworkError::bad_request(
                "Failed to parse request. Required attribute 'security_group_id' not specified"
                    .into(),
            ));
        };
        let group = self.visible_group(ctx, group_id).await?;
        let rule = rules::parse(attrs, &group, now())?;
        if let Some(remote) = &rule.remote_group_id {
            self.visible_group(ctx, remote).await?;
        }
        self.check_quota(&group.std.project_id, "security_group_rule", 1)
            .await?;
        match self.store.create_rule(&rule).await {
            Ok(()) => Ok(rule.to_json()),
            Err(e) if is_unique_violation(&e) => {
                let existing = self
                    .store
                    .same_rule(&rule)
                    .await?
                    .map(|r| r.id)
                    .unwrap_or_default();
                Err(NetworkError::new(
                    409,
                    "SecurityGroupRuleExists",
                    format!("Security group rule already exists. Rule id is {existing}."),
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete_rule(&self, ctx: &RequestContext, id: &str) -> Result<(), NetworkError> {
        writer(ctx, "delete_security_group_rule")?;
        self.visible_rule(ctx, id).await?;
        if !self.store.delete_rule(id).await? {
            return Err(NetworkError::new(
                404,
                "SecurityGroupRuleNotFound",
                format!("Security group rule {id} does not exist"),
            ));
        }
        Ok(())
    }

    // --- tags (the standard-attr-tag extension)

    /// Applies `change` to the tags of the resource `collection/id`, returns
    /// the new tags.
    pub async fn change_tags(
        &self,
        ctx: &RequestContext,
        collection: &str,
        id: &str,
        change: impl Fn(&mut Vec<String>) -> Result<(), NetworkError>,
    ) -> Result<Vec<String>, NetworkError> {
        writer(ctx, "update_tags")?;
        loop {
            let done = match collection {
                "networks" => {
                    let mut n = self.own_network(ctx, id).await?;
                    let read = n.std.revision_number;
                    change(&mut n.std.tags)?;
                    n.std.touch(now());
                    self.store
                        .update_network(&n, read)
                        .await?
                        .then_some(n.std.tags)
                }
                "subnets" => {
                    let mut s = self.visible_subnet(ctx, id).await?;
                    let read = s.std.revision_number;
                    change(&mut s.std.tags)?;
                    s.std.touch(now());
                    self.store
                        .update_subnet(&s, read)
                        .await?
                        .then_some(s.std.tags)
                }
                "ports" => {
                    let old = self.visible_port(ctx, id).await?;
                    let mut p = old.clone();
                    change(&mut p.std.tags)?;
                    p.std.touch(now());
                    self.store
                        .update_port(&p, &old)
                        .await?
                        .then_some(p.std.tags)
                }
                "security-groups" => {
                    let mut g = self.visible_group(ctx, id).await?;
                    let read = g.std.revision_number;
                    change(&mut g.std.tags)?;
                    g.std.touch(now());
                    self.store
                        .update_security_group(&g, read)
                        .await?
                        .then_some(g.std.tags)
                }
                "routers" => {
                    let mut r = self.visible_router(ctx, id).await?;
                    let read = r.std.revision_number;
                    change(&mut r.std.tags)?;
                    r.std.touch(now());
                    self.store
                        .update_router(&r, read)
                        .await?
                        .then_some(r.std.tags)
                }
                "floatingips" => {
                    let mut f = self.visible_floating_ip(ctx, id).await?;
                    let read = f.std.revision_number;
                    change(&mut f.std.tags)?;
                    f.std.touch(now());
                    self.store
                        .update_floating_ip(&f, read)
                        .await?
                        .then_some(f.std.tags)
                }
                other => {
                    return Err(NetworkError::new(
                        404,
                        "NotFound",
                        format!("Resources {other} have no tags."),
                    ))
                }
            };
            if let Some(tags) = done {
                return Ok(tags);
            }
        }
    }

    /// The tags of `collection/id`, as the caller sees it.
    pub async fn tags(
        &self,
        ctx: &RequestContext,
        collection: &str,
        id: &str,
    ) -> Result<Vec<String>, NetworkError> {
        Ok(match collection {
            "networks" => self.visible_network(ctx, id).await?.std.tags,
            "subnets" => self.visible_subnet(ctx, id).await?.std.tags,
            "ports" => self.visible_port(ctx, id).await?.std.tags,
            "security-groups" => self.visible_group(ctx, id).await?.std.tags,
            "routers" => self.visible_router(ctx, id).await?.std.tags,
            "floatingips" => self.visible_floating_ip(ctx, id).await?.std.tags,
            other => {
                return Err(NetworkError::new(
                    404,
                    "NotFound",
                    format!("Resources {other} have no tags."),
                ))
            }
        })
    }

    // --- quotas

    pub async fn quota_of(&self, project: &str) -> Result<NetworkQuota, NetworkError> {
        Ok(self.store.quota(project).await?.unwrap_or(DEFAULT_QUOTA))
    }

    fn quota_reader(ctx: &RequestContext, project: &str) -> Result<(), NetworkError> {
        if ctx.is_admin() || ctx.project_id() == project {
            Ok(())
        } else {
            Err(NetworkError::forbidden("get_quota"))
        }
    }

    pub async fn quota(&self, ctx: &RequestContext, project: &str) -> Result<Json, NetworkError> {
        Self::quota_reader(ctx, project)?;
        Ok(self.quota_of(project).await?.to_json())
    }

    pub async fn quota_details(
        &self,
        ctx: &RequestContext,
        project: &str,
    ) -> Result<Json, NetworkError> {
        Self::quota_reader(ctx, project)?;
        let q = self.quota_of(project).await?;
        let mut v = json!({});
        for r in NetworkQuota::RESOURCES {
            v[r] = json!({"limit": q.get(r), "used": self.store.usage(project, r).await?, "reserved": 0});
        }
        Ok(v)
    }

    pub async fn quotas(&self, ctx: &RequestContext) -> Result<Vec<Json>, NetworkError> {
        if !ctx.is_admin() {
            return Err(NetworkError::forbidden("get_quota"));
        }
        Ok(self
            .store
            .quotas()
            .await?
            .into_iter()
            .map(|(p, q)| {
                let mut v = q.to_json();
                v["project_id"] = json!(p);
                v["tenant_id"] = json!(p);
                v
            })
            .collect())
    }

    pub async fn set_quota(
        &self,
        ctx: &RequestContext,
        project: &str,
        attrs: &Attrs,
    ) -> Result<Json, NetworkError> {
        if !ctx.is_admin() {
            return Err(NetworkError::forbidden("update_quota"));
        }
        let mut q = self.quota_of(project).await?;
        for (k, v) in attrs {
            // Quotas Neutron has and Virga does not enforce yet are ignored.
            if matches!(k.as_str(), "rbac_policy" | "subnetpool" | "trunk") {
                continue;
            }
            let limit =
                integer(attrs, k)?.ok_or_else(|| invalid(k, format!("'{v}' is not an integer")))?;
            if limit < -1 {
                return Err(invalid(
                    k,
                    format!("'{limit}' should be greater than or equal to -1"),
                ));
            }
            if !q.set(k, limit) {
                return Err(NetworkError::bad_request(format!(
                    "Unrecognized attribute(s) '{k}'"
                )));
            }
        }
        self.store.set_quota(project, &q).await?;
        Ok(q.to_json())
    }

    pub async fn reset_quota(
        &self,
        ctx: &RequestContext,
        project: &str,
    ) -> Result<(), NetworkError> {
        if !ctx.is_admin() {
            return Err(NetworkError::forbidden("delete_quota"));
        }
        self.store.delete_quota(project).await?;
        Ok(())
    }
}

/// Security group rules: what Neutron accepts and how it fills them in.
pub mod rules {
    use super::*;

    /// IP protocols by name, as Neutron knows them.
    const PROTOCOLS: &[(&str, u8)] = &[
        ("ah", 51),
        ("dccp", 33),
        ("egp", 8),
        ("esp", 50),
        ("gre", 47),
        ("icmp", 1),
        ("icmpv6", 58),
        ("igmp", 2),
        ("ipip", 4),
        ("ipv6-encap", 41),
        ("ipv6-frag", 44),
        ("ipv6-icmp", 58),
        ("ipv6-nonxt", 59),
        ("ipv6-opts", 60),
        ("ipv6-route", 43),
        ("ospf", 89),
        ("pgm", 113),
        ("rsvp", 46),
        ("sctp", 132),
        ("tcp", 6),
        ("udp", 17),
        ("udplite", 136),
        ("vrrp", 112),
    ];
    /// Protocols whose rules take port ranges.
    const WITH_PORTS: &[u8] = &[6, 17, 33, 132, 136];

    /// A protocol's number, by name or number ("any" and absent: None).
    pub fn protocol_number(p: &str) -> Result<Option<u8>, NetworkError> {
        if p.is_empty() || p.eq_ignore_ascii_case("any") {
            return Ok(None);
        }
        if let Ok(n) = p.parse::<u8>() {
            return Ok(Some(n));
        }
        PROTOCOLS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(p))
            .map(|(_, n)| Some(*n))
            .ok_or_else(|| {
                NetworkError::new(
                    400,
                    "SecurityGroupRuleInvalidProtocol",
                    format!("Security group rule protocol {p} not supported. Only protocol values {} and integer representations [0 to 255] are supported.", PROTOCOLS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")),
                )
            })
    }

    pub fn parse(
        attrs: &Attrs,
        group: &SecurityGroup,
        now: i64,
    ) -> Result<SecurityGroupRule, NetworkError> {
        let direction = match attrs.get("direction").and_then(Json::as_str) {
            Some(d @ ("ingress" | "egress")) => d.to_owned(),
            Some(d) => {
                return Err(invalid(
                    "direction",
                    format!("{d} is not in ['ingress', 'egress']"),
                ))
            }
            None => {
                return Err(NetworkError::bad_request(
                    "Failed to parse request. Required attribute 'direction' not specified".into(),
                ))
            }
        };
        let ethertype = match attrs.get("ethertype").and_then(Json::as_str) {
            None => "IPv4".to_owned(),
            Some(e) if e.eq_ignore_ascii_case("ipv4") => "IPv4".to_owned(),
            Some(e) if e.eq_ignore_ascii_case("ipv6") => "IPv6".to_owned(),
            Some(e) => return Err(NetworkError::new(400, "SecurityGroupRuleInvalidEtherType", format!("Security group rule for ethertype '{e}' not supported. Allowed values are ['IPv4', 'IPv6']."))),
        };
        let protocol = match attrs.get("protocol") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) if s.is_empty() || s.eq_ignore_ascii_case("any") => None,
            Some(Json::String(s)) => Some(s.to_ascii_lowercase()),
            Some(Json::Number(n)) => Some(n.to_string()),
            Some(other) => return Err(invalid("protocol", format!("'{other}' is not a protocol"))),
        };
        let number = match &protocol {
            Some(p) => protocol_number(p)?,
            None => None,
        };
        let min = integer(attrs, "port_range_min")?;
        let max = integer(attrs, "port_range_max")?;
        match (number, min, max) {
            (_, None, None) => {}
            (None, _, _) => {
                return Err(NetworkError::new(400, "SecurityGroupProtocolRequiredWithPorts", "Must also specify protocol if port range is given.".into()))
            }
            (Some(1 | 58), min, max) => {
                // ICMP: the "ports" are type and code.
                if min.is_none() && max.is_some() {
                    return Err(NetworkError::new(400, "SecurityGroupMissingIcmpType", format!("ICMP code (port-range-max) {} is provided but ICMP type (port-range-min) is missing.", max.unwrap_or_default())));
                }
                for (name, v) in [("type", min), ("code", max)] {
                    if v.is_some_and(|v| !(0..=255).contains(&v)) {
                        return Err(NetworkError::new(400, "SecurityGroupInvalidIcmpValue", format!("Invalid value for ICMP {name} (port-range-{}): {}", if name == "type" { "min" } else { "max" }, v.unwrap_or_default())));
                    }
                }
            }
            (Some(n), min, max) if WITH_PORTS.contains(&n) => {
                let (Some(lo), Some(hi)) = (min.or(max), max.or(min)) else {
                    return Err(NetworkError::new(400, "SecurityGroupInvalidPortRange", "For TCP/UDP protocols, port_range_min must be <= port_range_max".into()));
                };
                if lo < 1 || hi > 65535 {
                    return Err(NetworkError::new(400, "SecurityGroupInvalidPortValue", format!("Invalid value for port {}", if lo < 1 { lo } else { hi })));
                }
                if lo > hi {
                    return Err(NetworkError::new(400, "SecurityGroupInvalidPortRange", "For TCP/UDP protocols, port_range_min must be <= port_range_max".into()));
                }
            }
            (Some(_), _, _) => {
                return Err(NetworkError::new(400, "SecurityGroupInvalidProtocolForPort", format!("Invalid protocol {} for port range, only supported for TCP, UDP, UDPLITE, SCTP and DCCP.", protocol.clone().unwrap_or_default())))
            }
        }
        let remote_ip_prefix = match attrs.get("remote_ip_prefix") {
            None | Some(Json::Null) => None,
            Some(Json::String(p)) => {
                let normalized = match (
                    ethertype.as_str(),
                    p.parse::<ipnet::IpNet>(),
                    p.parse::<std::net::IpAddr>(),
                ) {
                    (_, Ok(n), _) => n,
                    (_, _, Ok(a)) => ipnet::IpNet::from(a),
                    _ => {
                        return Err(invalid(
                            "remote_ip_prefix",
                            format!("'{p}' is not a valid IP prefix"),
                        ))
                    }
                };
                let v4 = matches!(normalized, ipnet::IpNet::V4(_));
                if v4 != (ethertype == "IPv4") {
                    return Err(NetworkError::new(
                        400,
                        "SecurityGroupRuleParameterConflict",
                        format!("Conflicting value ethertype {ethertype} for CIDR {p}"),
                    ));
                }
                // Kept as given (a bare address as its /32 or /128):
                // Neutron shows it so and matches its network.
                Some(match p.parse::<ipnet::IpNet>() {
                    Ok(_) => p.clone(),
                    Err(_) => normalized.to_string(),
                })
            }
            Some(other) => {
                return Err(invalid(
                    "remote_ip_prefix",
                    format!("'{other}' is not a valid IP prefix"),
                ))
            }
        };
        let remote_group_id = match attrs.get("remote_group_id") {
            None | Some(Json::Null) => None,
            Some(Json::String(g)) => Some(g.clone()),
            Some(other) => {
                return Err(invalid(
                    "remote_group_id",
                    format!("'{other}' is not a security group id"),
                ))
            }
        };
        if attrs
            .get("remote_address_group_id")
            .is_some_and(|v| !v.is_null())
        {
            return Err(NetworkError::bad_request(
                "Invalid input for operation: address groups are not available on this cloud."
                    .into(),
            ));
        }
        if remote_ip_prefix.is_some() && remote_group_id.is_some() {
            return Err(NetworkError::new(
                400,
                "SecurityGroupRemoteGroupAndRemoteIpPrefix",
                "Only remote_ip_prefix or remote_group_id may be provided.".into(),
            ));
        }
        // Neutron keeps the protocol as given, but a number for a named
        // protocol matches the name in duplicates; store names where known.
        let protocol = match (&protocol, number) {
            (Some(p), Some(n)) if p.parse::<u8>().is_ok() => Some(
                PROTOCOLS
                    .iter()
                    .find(|(_, num)| *num == n && !matches!(n, 58))
                    .map(|(name, _)| (*name).to_owned())
                    .unwrap_or_else(|| p.clone()),
            ),
            _ => protocol,
        };
        let (port_range_min, port_range_max) = match number {
            Some(n) if WITH_PORTS.contains(&n) => (min.or(max), max.or(min)),
            _ => (min, max),
        };
        Ok(SecurityGroupRule {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: group.std.project_id.clone(),
            security_group_id: group.std.id.clone(),
            description: string(attrs, "description", MAX_DESCRIPTION)?.unwrap_or_default(),
            direction,
            ethertype,
            protocol,
            port_range_min,
            port_range_max,
            remote_ip_prefix,
            remote_group_id,
            created_at: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> SecurityGroup {
        SecurityGroup {
            std: Standard::new("p", 0),
            stateful: true,
        }
    }

    fn rule(body: Json) -> Result<SecurityGroupRule, NetworkError> {
        let attrs = body.as_object().cloned().unwrap_or_default();
        rules::parse(&attrs, &group(), 0)
    }

    fn kind(r: Result<SecurityGroupRule, NetworkError>) -> String {
        match r {
            Ok(_) => "ok".into(),
            Err(NetworkError::Neutron { kind, .. }) => kind,
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn rules_are_checked_as_neutron_does() {
        let ssh = rule(
            json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0"}),
        );
        let ssh = ssh.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ssh.ethertype, "IPv4");
        assert_eq!(
            (ssh.port_range_min, ssh.port_range_max),
            (Some(22), Some(22))
        );
        // A protocol by number is the same rule as by name.
        let by_number = rule(
            json!({"direction": "ingress", "protocol": "6", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0"}),
        );
        assert_eq!(
            by_number.map(|r| r.fingerprint()).ok(),
            Some(ssh.fingerprint())
        );
        // A host address is a /32 prefix; a sloppy prefix is kept as
        // given, and matches (and is the same rule as) its network.
        let host =
            rule(json!({"direction": "ingress", "remote_ip_prefix": "10.0.0.5/24"})).unwrap();
        assert_eq!(host.remote_ip_prefix.as_deref(), Some("10.0.0.5/24"));
        assert_eq!(host.normalized_cidr().as_deref(), Some("10.0.0.0/24"));
        let network =
            rule(json!({"direction": "ingress", "remote_ip_prefix": "10.0.0.0/24"})).unwrap();
        assert_eq!(host.fingerprint(), network.fingerprint());
        assert_eq!(host.to_json()["normalized_cidr"], "10.0.0.0/24");
        let bare = rule(json!({"direction": "ingress", "remote_ip_prefix": "10.0.0.5"})).unwrap();
        assert_eq!(bare.remote_ip_prefix.as_deref(), Some("10.0.0.5/32"));
        assert_eq!(
            kind(rule(json!({"direction": "sideways"}))),
            "HTTPBadRequest"
        );
        assert_eq!(
            kind(rule(json!({"direction": "ingress", "port_range_min": 22}))),
            "SecurityGroupProtocolRequiredWithPorts"
        );
        assert_eq!(
            kind(rule(
                json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 30, "port_range_max": 20})
            )),
            "SecurityGroupInvalidPortRange"
        );
        assert_eq!(
            kind(rule(
                json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 0, "port_range_max": 20})
            )),
            "SecurityGroupInvalidPortValue"
        );
        assert_eq!(
            kind(rule(
                json!({"direction": "ingress", "protocol": "gre", "port_range_min": 1})
            )),
            "SecurityGroupInvalidProtocolForPort"
        );
        assert_eq!(
            kind(rule(
                json!({"direction": "ingress", "protocol": "icmp", "port_range_max": 0})
            )),
            "SecurityGroupMissingIcmpType"
        );
        assert_eq!(
            kind(rule(
                json!({"direction": "ingress", "protocol": "icmp", "port_range_min": 8, "port_range_max": 0})
            )),
            "ok"
        );
        assert_eq!(
            kind(rule(json!({"direction": "ingress", "protocol": "banana"}))),
            "SecurityGroupRuleInvalidProtocol"
        );
        assert_eq!(
            kind(rule(
                json!({"direction": "ingress", "ethertype": "IPv6", "remote_ip_prefix": "10.0.0.0/8"})
            )),
            "SecurityGroupRuleParameterConflict"
        );
        assert_eq!(
            kind(rule(json!({"direction": "ingress", "ethertype": "IPX"}))),
            "SecurityGroupRuleInvalidEtherType"
        );
        assert_eq!(
            kind(rule(
                json!({"direction": "ingress", "remote_ip_prefix": "10.0.0.0/8", "remote_group_id": "g"})
            )),
            "SecurityGroupRemoteGroupAndRemoteIpPrefix"
        );
    }

    #[test]
    fn macs_are_unicast_and_lower_case() {
        assert_eq!(
            valid_mac("FA:16:3E:00:11:22").as_deref(),
            Some("fa:16:3e:00:11:22")
        );
        assert_eq!(valid_mac("01:00:5e:00:00:01"), None);
        assert_eq!(valid_mac("00:00:00:00:00:00"), None);
        assert_eq!(valid_mac("fa:16:3e:00:11"), None);
        assert_eq!(valid_mac("fa:16:3e:00:11:zz"), None);
        assert!(valid_mac(&random_mac()).is_some_and(|m| m.starts_with("fa:16:3e:")));
    }
}
