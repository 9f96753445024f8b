//! Routers and floating IPs (Neutron's `router` extension): who may do
//! what, the attributes' rules and Neutron's errors. A router's interfaces
//! and gateway are ports it owns (`device_id`), holding a subnet's gateway
//! address or an address on an external network; a floating IP's address
//! is held by a `network:floatingip` port. A router is placed on a gateway
//! host when one reports (`agent`), and its ports are bound there.

use std::net::Ipv4Addr;

use serde_json::{json, Value as Json};

use super::model::{
    Association, FixedIp, FloatingIp, Gateway, Port, Router, Standard, Subnet, FLOATING_IP,
    ROUTER_GATEWAY, ROUTER_INTERFACE,
};
use super::service::{
    apply_standard, boolean, invalid, ip, known, owner, random_mac, writer, Attrs, NetworkService,
};
use super::store::{is_unique_violation, Deleted};
use super::NetworkError;
use crate::context::RequestContext;
use crate::identity::now;

const ROUTER_ATTRS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "external_gateway_info",
    "tags",
];
const FLOATING_ATTRS: &[&str] = &["port_id", "fixed_ip_address", "description", "tags"];

/// Neutron's `BadRequest` for a resource: "Bad router request: ...".
fn bad(resource: &str, message: impl std::fmt::Display) -> NetworkError {
    NetworkError::new(
        400,
        "BadRequest",
        format!("Bad {resource} request: {message}."),
    )
}

fn router_not_found(id: &str) -> NetworkError {
    NetworkError::new(
        404,
        "RouterNotFound",
        format!("Router {id} could not be found"),
    )
}

fn floating_not_found(id: &str) -> NetworkError {
    NetworkError::new(
        404,
        "FloatingIPNotFound",
        format!("Floating IP {id} could not be found"),
    )
}

/// An optional id attribute (`null` is none).
fn id_attr(attrs: &Attrs, key: &str) -> Result<Option<String>, NetworkError> {
    match attrs.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if !s.is_empty() && s.len() <= 64 => Ok(Some(s.clone())),
        Some(other) => Err(invalid(key, format!("'{other}' is not a valid UUID"))),
    }
}

/// What a request asks of a router's gateway.
struct GatewayRequest {
    network_id: String,
    enable_snat: Option<bool>,
    fixed_ips: Option<Vec<Json>>,
}

/// `external_gateway_info`: `None` for null or `{}` (no gateway).
fn gateway_request(
    ctx: &RequestContext,
    v: &Json,
    action: &str,
) -> Result<Option<GatewayRequest>, NetworkError> {
    let info = match v {
        Json::Null => return Ok(None),
        Json::Object(m) if m.is_empty() => return Ok(None),
        Json::Object(m) => m,
        other => {
            return Err(invalid(
                "external_gateway_info",
                format!("'{other}' is not a dictionary"),
            ))
        }
    };
    known(
        info,
        &[
            "network_id",
            "enable_snat",
            "external_fixed_ips",
            "qos_policy_id",
        ],
    )?;
    let Some(network_id) = id_attr(info, "network_id")? else {
        return Err(invalid("external_gateway_info", "network_id is required"));
    };
    let enable_snat = boolean(info, "enable_snat")?;
    let fixed_ips = match info.get("external_fixed_ips") {
        None | Some(Json::Null) => None,
        Some(Json::Array(a)) => Some(a.clone()),
        Some(other) => {
            return Err(invalid(
                "external_fixed_ips",
                format!("'{other}' is not a list"),
            ))
        }
    };
    // Neutron's default policy: only admins choose these.
    if !ctx.is_admin() {
        if enable_snat.is_some() {
            return Err(NetworkError::forbidden(&format!(
                "{action}:external_gateway_info:enable_snat"
            )));
        }
        if fixed_ips.is_some() {
            return Err(NetworkError::forbidden(&format!(
                "{action}:external_gateway_info:external_fixed_ips"
            )));
        }
    }
    Ok(Some(GatewayRequest {
        network_id,
        enable_snat,
        fixed_ips,
    }))
}

impl NetworkService {
    // --- routers

    fn sees_router(ctx: &RequestContext, r: &Router) -> bool {
        ctx.is_admin() || r.std.project_id == ctx.project_id()
    }

    pub async fn visible_router(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<Router, NetworkError> {
        match self.store().router(id).await? {
            Some(r) if Self::sees_router(ctx, &r) => Ok(r),
            _ => Err(router_not_found(id)),
        }
    }

    pub async fn list_routers(&self, ctx: &RequestContext) -> Result<Vec<Json>, NetworkError> {
        Ok(self
            .store()
            .routers()
            .await?
            .iter()
            .filter(|r| Self::sees_router(ctx, r))
            .map(Router::to_json)
            .collect())
    }

    pub async fn create_router(
        &self,
        ctx: &RequestContext,
        attrs: &Attrs,
    ) -> Result<Json, NetworkError> {
        writer(ctx, "create_router")?;
        known(
            attrs,
            &[ROUTER_ATTRS, &["project_id", "tenant_id"]].concat(),
        )?;
        let project = owner(ctx, attrs)?;
        let gateway = match attrs.get("external_gateway_info") {
            Some(v) => gateway_request(ctx, v, "create_router")?,
            None => None,
        };
        let mut router = Router {
            std: Standard::new(&project, now()),
            admin_state_up: boolean(attrs, "admin_state_up")?.unwrap_or(true),
            gateway: None,
        };
        apply_standard(&mut router.std, attrs)?;
        self.check_quota(&project, "router", 1).await?;
        if let Some(g) = &gateway {
            // Checked before the router exists, so a refusal leaves nothing.
            self.external_network(ctx, &g.network_id, "router").await?;
        }
        self.store().create_router(&router).await?;
        tracing::info!(router = router.std.id, "router created");
        if let Some(g) = gateway {
            if let Err(e) = self.set_gateway(ctx, &router.std.id, Some(g)).await {
                // Nothing half-made stays: the router goes with its gateway.
                if let Err(undo) = self.store().delete_router(&router.std.id).await {
                    tracing::error!(router = router.std.id, "undoing a router create: {undo}");
                }
                return Err(e);
            }
            router = self
                .store()
                .router(&router.std.id)
                .await?
                .ok_or_else(|| router_not_found(&router.std.id))?;
        }
        Ok(router.to_json())
    }

    pub async fn update_router(
        &self,
        ctx: &RequestContext,
        id: &str,
        attrs: &Attrs,
    ) -> Result<Json, NetworkError> {
        writer(ctx, "update_router")?;
        known(attrs, ROUTER_ATTRS)?;
        self.visible_router(ctx, id).await?;
        if let Some(v) = attrs.get("external_gateway_info") {
            let wanted = gateway_request(ctx, v, "update_router")?;
            self.set_gateway(ctx, id, wanted).await?;
        }
        loop {
            let mut router = self.visible_router(ctx, id).await?;
            let read = router.std.revision_number;
            apply_standard(&mut router.std, attrs)?;
            if let Some(up) = boolean(attrs, "admin_state_up")? {
                router.admin_state_up = up;
            }
            router.std.touch(now());
            if self.store().update_router(&router, read).await? {
                return Ok(router.to_json());
            }
        }
    }

    pub async fn delete_router(&self, ctx: &RequestContext, id: &str) -> Result<(), NetworkError> {
        writer(ctx, "delete_router")?;
        self.visible_router(ctx, id).await?;
        // Floating IPs through the router hold an interface, so "in use"
        // covers them too.
        match self.store().delete_router(id).await? {
            Deleted::Yes => {
                tracing::info!(router = id, "router deleted");
                Ok(())
            }
            Deleted::NotFound => Err(router_not_found(id)),
            Deleted::InUse => Err(NetworkError::new(
                409,
                "RouterInUse",
                format!("Router {id} still has ports"),
            )),
        }
    }

    /// An external network the caller sees, or Neutron's refusal.
    async fn external_network(
        &self,
        ctx: &RequestContext,
        id: &str,
        resource: &str,
    ) -> Result<super::model::Network, NetworkError> {
        let net = self.visible_network(ctx, id).await?;
        if !net.external {
            return Err(bad(
                resource,
                format_args!("Network {id} is not a valid external network"),
            ));
        }
        Ok(net)
    }

    /// Makes a port the router owns, bound to the router's host if it has
    /// one.
    async fn router_port(
        &self,
        router: &Router,
        project: &str,
        network_id: &str,
        owner: &str,
        wanted: &[(Subnet, Option<Ipv4Addr>)],
    ) -> Result<Port, NetworkError> {
        let host = self
            .store()
            .router_host(&router.std.id)
            .await?
            .unwrap_or_default();
        let port = Port {
            std: Standard::new(project, now()),
            network_id: network_id.to_owned(),
            mac_address: random_mac(),
            admin_state_up: true,
            status: "DOWN".into(),
            device_id: router.std.id.clone(),
            device_owner: owner.to_owned(),
            fixed_ips: Vec::new(),
            allowed_address_pairs: Vec::new(),
            security_groups: Vec::new(),
            port_security_enabled: false,
            host_id: host,
            nova_slot: None,
        };
        self.insert_port(port, wanted, false).await
    }

    /// Sets, changes or clears (`None`) a router's gateway.
    async fn set_gateway(
        &self,
        ctx: &RequestContext,
        id: &str,
        wanted: Option<GatewayRequest>,
    ) -> Result<(), NetworkError> {
        let router = self.visible_router(ctx, id).await?;
        let current = router.gateway.clone();
        let same_network =
            matches!((&current, &wanted), (Some(c), Some(w)) if c.network_id == w.network_id);
        if let Some(w) = &wanted {
            self.external_network(ctx, &w.network_id, "router").await?;
        }
        // Floating IPs through this router need its gateway where it is.
        if current.is_some()
            && !same_network
            && !self.store().floating_ips_of_router(id).await?.is_empty()
        {
            return Err(NetworkError::new(
                409,
                "RouterExternalGatewayInUseByFloatingIp",
                format!(
                    "Gateway cannot be updated for router {id}, since a gateway to external network {} is required by one or more floating IPs.",
                    current.as_ref().map(|c| c.network_id.as_str()).unwrap_or_default()
                ),
            ));
        }
        let gateway = match wanted {
            None => None,
            Some(w) if same_network && w.fixed_ips.is_none() => {
                let mut g = current.clone().ok_or_else(|| router_not_found(id))?;
                if let Some(snat) = w.enable_snat {
                    g.enable_snat = snat;
                }
                Some(g)
            }
            Some(w) => {
                let wanted_ips = match &w.fixed_ips {
                    Some(items) if !items.is_empty() => {
                        self.requested_ips(&w.network_id, items).await?
                    }
                    _ => self.default_ips(&w.network_id).await?,
                };
                let port = self
                    .router_port(&router, "", &w.network_id, ROUTER_GATEWAY, &wanted_ips)
                    .await?;
                Some(Gateway {
                    network_id: w.network_id,
                    enable_snat: w.enable_snat.unwrap_or(true),
                    port_id: port.std.id,
                    fixed_ips: port.fixed_ips,
                })
            }
        };
        let new_port = gateway.as_ref().map(|g| g.port_id.clone());
        let old_port = current.as_ref().map(|g| g.port_id.clone());
        loop {
            let mut r = match self.visible_router(ctx, id).await {
                Ok(r) => r,
                Err(e) => {
                    self.drop_port_if_new(new_port.as_deref(), old_port.as_deref())
                        .await;
                    return Err(e);
                }
            };
            let read = r.std.revision_number;
            r.gateway.clone_from(&gateway);
            r.std.touch(now());
            if self.store().update_router(&r, read).await? {
                break;
            }
        }
        if old_port != new_port {
            if let Some(old) = old_port {
                self.store().delete_port(&old).await?;
            }
        }
        tracing::info!(router = id, gateway = ?gateway.as_ref().map(|g| &g.network_id), "router gateway");
        Ok(())
    }

    async fn drop_port_if_new(&self, new: Option<&str>, old: Option<&str>) {
        if let Some(p) = new.filter(|n| Some(*n) != old) {
            if let Err(e) = self.store().delete_port(p).await {
                tracing::error!(port = p, "undoing a gateway port: {e}");
            }
        }
    }

    /// The router's interface ports.
    async fn interfaces(&self, router_id: &str) -> Result<Vec<Port>, NetworkError> {
        Ok(self
            .store()
            .ports_of_device(router_id)
            .await?
            .into_iter()
            .filter(|p| p.device_owner == ROUTER_INTERFACE)
            .collect())
    }

    /// `PUT /routers/{id}/add_router_interface` with a `subnet_id` (a new
    /// port holding the subnet's gateway) or a `port_id` (the user's port).
    pub async fn add_interface(
        &self,
        ctx: &RequestContext,
        id: &str,
        body: &Attrs,
    ) -> Result<Json, NetworkError> {
        writer(ctx, "add_router_interface")?;
        let router = self.visible_router(ctx, id).await?;
        let existing = self.interfaces(id).await?;
        let port = match interface_request(body)? {
            Interface::Subnet(subnet_id) => {
                let subnet = self.visible_subnet(ctx, &subnet_id).await?;
                let net = self.visible_network(ctx, &subnet.network_id).await?;
                if !ctx.is_admin() && net.std.project_id != ctx.project_id() && !net.shared {
                    return Err(NetworkError::forbidden("add_router_interface"));
                }
                let Some(gateway) = subnet.gateway_ip else {
                    return Err(bad(
                        "router",
                        "Subnet for router interface must have a gateway IP",
                    ));
                };
                self.check_interface_subnet(&subnet, &existing).await?;
                if net.external {
                    return Err(bad(
                        "router",
                        format_args!(
                            "Router interface cannot be on external network {}",
                            net.std.id
                        ),
                    ));
                }
                let network_id = subnet.network_id.clone();
                self.router_port(
                    &router,
                    &router.std.project_id,
                    &network_id,
                    ROUTER_INTERFACE,
                    &[(subnet, Some(gateway))],
                )
                .await?
            }
            Interface::Port(port_id) => {
                let port = self.visible_port(ctx, &port_id).await?;
                if !port.device_id.is_empty() || !port.device_owner.is_empty() {
                    return Err(NetworkError::new(
                        409,
                        "PortInUse",
                        format!(
                            "Unable to complete operation on port {port_id} for network {}. Port already has an attached device {}.",
                            port.network_id, port.device_id
                        ),
                    ));
                }
                let [fixed] = port.fixed_ips.as_slice() else {
                    return Err(bad("router", "Router port must have exactly one fixed IP"));
                };
                let subnet = self
                    .store()
                    .subnet(&fixed.subnet_id)
                    .await?
                    .ok_or_else(|| NetworkError::not_found("Subnet", &fixed.subnet_id))?;
                self.check_interface_subnet(&subnet, &existing).await?;
                let host = self.store().router_host(id).await?.unwrap_or_default();
                self.take_port(port, id, &host).await?
            }
        };
        let subnet_id = port
            .fixed_ips
            .first()
            .map(|f| f.subnet_id.clone())
            .unwrap_or_default();
        tracing::info!(
            router = id,
            port = port.std.id,
            subnet = subnet_id,
            "router interface added"
        );
        Ok(interface_json(&router, &port, &subnet_id))
    }

    /// A router has one interface per subnet, and its subnets do not overlap.
    async fn check_interface_subnet(
        &self,
        subnet: &Subnet,
        existing: &[Port],
    ) -> Result<(), NetworkError> {
        let cidr = super::ipam::parse_cidr(&subnet.cidr).map_err(NetworkError::ipam)?;
        for port in existing {
            for f in &port.fixed_ips {
                if f.subnet_id == subnet.std.id {
                    return Err(bad(
                        "router",
                        format_args!("Router already has a port on subnet {}", subnet.std.id),
                    ));
                }
                let Some(other) = self.store().subnet(&f.subnet_id).await? else {
                    continue;
                };
                let Ok(theirs) = super::ipam::parse_cidr(&other.cidr) else {
                    continue;
                };
                if cidr.contains(&theirs.network()) || theirs.contains(&cidr.network()) {
                    return Err(bad(
                        "router",
                        format_args!(
                            "Cidr {} of subnet {} overlaps with cidr {} of subnet {}",
                            subnet.cidr, subnet.std.id, other.cidr, other.std.id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Makes the user's port one of the router's interfaces.
    async fn take_port(
        &self,
        mut port: Port,
        router_id: &str,
        host: &str,
    ) -> Result<Port, NetworkError> {
        loop {
            let old = port.clone();
            port.device_id = router_id.to_owned();
            port.device_owner = ROUTER_INTERFACE.into();
            port.host_id = host.to_owned();
            port.security_groups.clear();
            port.allowed_address_pairs.clear();
            port.port_security_enabled = false;
            port.std.touch(now());
            if self.store().update_port(&port, &old).await? {
                return Ok(port);
            }
            match self.store().port(&old.std.id).await? {
                Some(p) if p.device_id.is_empty() && p.device_owner.is_empty() => port = p,
                Some(p) => {
                    return Err(NetworkError::new(
                        409,
                        "PortInUse",
                        format!(
                            "Unable to complete operation on port {} for network {}. Port already has an attached device {}.",
                            p.std.id, p.network_id, p.device_id
                        ),
                    ))
                }
                None => return Err(NetworkError::not_found("Port", &old.std.id)),
            }
        }
    }

    /// `PUT /routers/{id}/remove_router_interface`: by subnet or by port;
    /// the interface's port goes.
    pub async fn remove_interface(
        &self,
        ctx: &RequestContext,
        id: &str,
        body: &Attrs,
    ) -> Result<Json, NetworkError> {
        writer(ctx, "remove_router_interface")?;
        let router = self.visible_router(ctx, id).await?;
        let interfaces = self.interfaces(id).await?;
        let port = match interface_request(body)? {
            Interface::Subnet(s) => interfaces
                .into_iter()
                .find(|p| p.fixed_ips.iter().any(|f| f.subnet_id == s))
                .ok_or_else(|| {
                    NetworkError::new(
                        404,
                        "RouterInterfaceNotFoundForSubnet",
                        format!("Router {id} has no interface on subnet {s}"),
                    )
                })?,
            Interface::Port(p) => interfaces
                .into_iter()
                .find(|port| port.std.id == p)
                .ok_or_else(|| {
                    NetworkError::new(
                        404,
                        "RouterInterfaceNotFound",
                        format!("Router {id} does not have an interface with id {p}"),
                    )
                })?,
        };
        let subnets: Vec<&str> = port
            .fixed_ips
            .iter()
            .map(|f| f.subnet_id.as_str())
            .collect();
        // Floating IPs reaching their ports through this interface hold it.
        for fip in self.store().floating_ips_of_router(id).await? {
            let Some(a) = &fip.association else { continue };
            let Some(fixed_port) = self.store().port(&a.port_id).await? else {
                continue;
            };
            if fixed_port.fixed_ips.iter().any(|f| {
                f.ip_address == a.fixed_ip_address && subnets.contains(&f.subnet_id.as_str())
            }) {
                return Err(NetworkError::new(
                    409,
                    "RouterInterfaceInUseByFloatingIP",
                    format!(
                        "Router interface for subnet {} on router {id} cannot be deleted, as it is required by one or more floating IPs.",
                        subnets.first().copied().unwrap_or_default()
                    ),
                ));
            }
        }
        self.store().delete_port(&port.std.id).await?;
        let subnet_id = subnets.first().map(|s| s.to_string()).unwrap_or_default();
        tracing::info!(router = id, port = port.std.id, "router interface removed");
        Ok(interface_json(&router, &port, &subnet_id))
    }

    // --- floating IPs

    fn sees_floating(ctx: &RequestContext, f: &FloatingIp) -> bool {
        ctx.is_admin() || f.std.project_id == ctx.project_id()
    }

    pub async fn visible_floating_ip(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<FloatingIp, NetworkError> {
        match self.store().floating_ip(id).await? {
            Some(f) if Self::sees_floating(ctx, &f) => Ok(f),
            _ => Err(floating_not_found(id)),
        }
    }

    pub async fn floating_ip_json(&self, fip: &FloatingIp) -> Result<Json, NetworkError> {
        let port = match &fip.association {
            Some(a) => self.store().port(&a.port_id).await?,
            None => None,
        };
        Ok(fip.to_json(port.as_ref()))
    }

    pub async fn list_floating_ips(&self, ctx: &RequestContext) -> Result<Vec<Json>, NetworkError> {
        let mut out = Vec::new();
        for fip in self.store().floating_ips().await? {
            if Self::sees_floating(ctx, &fip) {
                out.push(self.floating_ip_json(&fip).await?);
            }
        }
        Ok(out)
    }

    pub async fn create_floating_ip(
        &self,
        ctx: &RequestContext,
        attrs: &Attrs,
    ) -> Result<Json, NetworkError> {
        writer(ctx, "create_floatingip")?;
        known(
            attrs,
            &[
                FLOATING_ATTRS,
                &[
                    "floating_network_id",
                    "floating_ip_address",
                    "subnet_id",
                    "project_id",
                    "tenant_id",
                ],
            ]
            .concat(),
        )?;
        let Some(network_id) = id_attr(attrs, "floating_network_id")? else {
            return Err(NetworkError::bad_request(
                "Failed to parse request. Required attribute 'floating_network_id' not specified"
                    .into(),
            ));
        };
        let project = owner(ctx, attrs)?;
        self.external_network(ctx, &network_id, "floatingip")
            .await?;
        let address = match attrs.get("floating_ip_address") {
            None | Some(Json::Null) => None,
            Some(_) if !ctx.is_admin() => {
                return Err(NetworkError::forbidden(
                    "create_floatingip:floating_ip_address",
                ))
            }
            Some(a) => Some(ip("floating_ip_address", a)?),
        };
        let subnet_id = id_attr(attrs, "subnet_id")?;
        let association = match id_attr(attrs, "port_id")? {
            Some(port_id) => Some(
                self.association(ctx, &network_id, &port_id, attrs.get("fixed_ip_address"))
                    .await?,
            ),
            None => None,
        };
        self.check_quota(&project, "floatingip", 1).await?;
        let wanted = match (address, &subnet_id) {
            (None, None) => self.default_ips(&network_id).await?,
            _ => {
                let mut item = json!({});
                if let Some(a) = address {
                    item["ip_address"] = json!(a.to_string());
                }
                if let Some(s) = &subnet_id {
                    item["subnet_id"] = json!(s);
                }
                self.requested_ips(&network_id, &[item]).await?
            }
        };
        let mut std = Standard::new(&project, now());
        apply_standard(&mut std, attrs)?;
        let holder = Port {
            std: Standard::new("", now()),
            network_id: network_id.clone(),
            mac_address: random_mac(),
            admin_state_up: true,
            status: "N/A".into(),
            device_id: std.id.clone(),
            device_owner: FLOATING_IP.into(),
            fixed_ips: Vec::new(),
            allowed_address_pairs: Vec::new(),
            security_groups: Vec::new(),
            port_security_enabled: false,
            host_id: String::new(),
            nova_slot: None,
        };
        let holder = self.insert_port(holder, &wanted, false).await?;
        let Some(FixedIp { ip_address, .. }) = holder.fixed_ips.first().cloned() else {
            self.store().delete_port(&holder.std.id).await?;
            return Err(super::service::exhausted(&network_id));
        };
        let fip = FloatingIp {
            std,
            floating_network_id: network_id,
            floating_ip_address: ip_address,
            address_port_id: holder.std.id.clone(),
            association,
            status: "DOWN".into(),
        };
        if let Err(e) = self.store().create_floating_ip(&fip).await {
            // Nothing half-made stays: the address goes back.
            self.store().delete_port(&holder.std.id).await?;
            if is_unique_violation(&e) {
                if let Some(a) = &fip.association {
                    return Err(already_associated(&fip, a));
                }
            }
            return Err(e.into());
        }
        tracing::info!(floating_ip = fip.std.id, address = %fip.floating_ip_address, "floating IP created");
        self.floating_ip_json(&fip).await
    }

    pub async fn update_floating_ip(
        &self,
        ctx: &RequestContext,
        id: &str,
        attrs: &Attrs,
    ) -> Result<Json, NetworkError> {
        writer(ctx, "update_floatingip")?;
        known(attrs, FLOATING_ATTRS)?;
        loop {
            let mut fip = self.visible_floating_ip(ctx, id).await?;
            let read = fip.std.revision_number;
            if attrs.contains_key("port_id") {
                let before = fip.association.clone();
                fip.association = match id_attr(attrs, "port_id")? {
                    Some(port_id) => Some(
                        self.association(
                            ctx,
                            &fip.floating_network_id,
                            &port_id,
                            attrs.get("fixed_ip_address"),
                        )
                        .await?,
                    ),
                    None => None,
                };
                if fip.association != before {
                    // Until its router's host applies the change.
                    fip.status = "DOWN".into();
                }
            } else if attrs.contains_key("fixed_ip_address") {
                return Err(bad(
                    "floatingip",
                    "fixed_ip_address cannot be specified without a port_id",
                ));
            }
            apply_standard(&mut fip.std, attrs)?;
            fip.std.touch(now());
            match self.store().update_floating_ip(&fip, read).await {
                Ok(true) => {
                    tracing::info!(floating_ip = id, port = ?fip.association.as_ref().map(|a| &a.port_id), "floating IP updated");
                    return self.floating_ip_json(&fip).await;
                }
                Ok(false) => continue,
                Err(e) if is_unique_violation(&e) => {
                    let a = fip.association.clone().ok_or(NetworkError::Store(e))?;
                    return Err(already_associated(&fip, &a));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub async fn delete_floating_ip(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(), NetworkError> {
        writer(ctx, "delete_floatingip")?;
        let fip = self.visible_floating_ip(ctx, id).await?;
        if !self.store().delete_floating_ip(&fip).await? {
            return Err(floating_not_found(id));
        }
        tracing::info!(floating_ip = id, "floating IP deleted");
        Ok(())
    }

    /// Checks that `port_id` may take a floating IP of `network_id` and
    /// finds the router that reaches it.
    async fn association(
        &self,
        ctx: &RequestContext,
        network_id: &str,
        port_id: &str,
        fixed: Option<&Json>,
    ) -> Result<Association, NetworkError> {
        let port = self.visible_port(ctx, port_id).await?;
        if port.device_owner.starts_with("network:") {
            return Err(bad(
                "floatingip",
                format_args!(
                    "Port {port_id} has owner {} and therefore cannot be assigned a floating IP",
                    port.device_owner
                ),
            ));
        }
        let fixed_ip = match fixed {
            None | Some(Json::Null) => match port.fixed_ips.as_slice() {
                [] => {
                    return Err(bad(
                        "floatingip",
                        format_args!(
                            "Port {port_id} does not have any IP addresses on an IPv4 subnet"
                        ),
                    ))
                }
                [one] => one.clone(),
                _ => {
                    return Err(bad(
                        "floatingip",
                        format_args!("Port {port_id} has multiple fixed IPv4 addresses.  Must provide a specific IPv4 address when assigning a floating IP"),
                    ))
                }
            },
            Some(v) => {
                let wanted = ip("fixed_ip_address", v)?;
                port.fixed_ips
                    .iter()
                    .find(|f| f.ip_address == wanted)
                    .cloned()
                    .ok_or_else(|| {
                        bad(
                            "floatingip",
                            format_args!(
                                "Port {port_id} does not have fixed ip {wanted}"
                            ),
                        )
                    })?
            }
        };
        for router in self.store().routers().await? {
            let Some(g) = &router.gateway else { continue };
            if g.network_id != network_id {
                continue;
            }
            let reaches = self.interfaces(&router.std.id).await?.iter().any(|p| {
                p.fixed_ips
                    .iter()
                    .any(|f| f.subnet_id == fixed_ip.subnet_id)
            });
            if reaches {
                return Ok(Association {
                    port_id: port_id.to_owned(),
                    fixed_ip_address: fixed_ip.ip_address,
                    router_id: router.std.id,
                });
            }
        }
        Err(NetworkError::new(
            404,
            "ExternalGatewayForFloatingIPNotFound",
            format!(
                "External network {network_id} is not reachable from subnet {}.  Therefore, cannot associate Port {port_id} with a Floating IP.",
                fixed_ip.subnet_id
            ),
        ))
    }
}

fn already_associated(fip: &FloatingIp, a: &Association) -> NetworkError {
    NetworkError::new(
        409,
        "FloatingIPPortAlreadyAssociated",
        format!(
            "Cannot associate floating IP {} ({}) with port {} using fixed IP {}, as that fixed IP already has a floating IP on external network {}.",
            fip.floating_ip_address, fip.std.id, a.port_id, a.fixed_ip_address, fip.floating_network_id
        ),
    )
}

/// What `add_router_interface`/`remove_router_interface` name.
enum Interface {
    Subnet(String),
    Port(String),
}

/// The body of `add_router_interface`/`remove_router_interface`: exactly
/// one of `subnet_id` and `port_id`.
fn interface_request(body: &Attrs) -> Result<Interface, NetworkError> {
    match (id_attr(body, "subnet_id")?, id_attr(body, "port_id")?) {
        (Some(subnet), None) => Ok(Interface::Subnet(subnet)),
        (None, Some(port)) => Ok(Interface::Port(port)),
        (Some(_), Some(_)) => Err(bad("router", "Cannot specify both subnet-id and port-id")),
        (None, None) => Err(bad(
            "router",
            "Either subnet_id or port_id must be specified",
        )),
    }
}

/// What `add_router_interface` and `remove_router_interface` answer.
fn interface_json(router: &Router, port: &Port, subnet_id: &str) -> Json {
    json!({
        "id": router.std.id,
        "network_id": port.network_id,
        "port_id": port.std.id,
        "subnet_id": subnet_id,
        "subnet_ids": [subnet_id],
        "project_id": router.std.project_id,
        "tenant_id": router.std.project_id,
    })
}
