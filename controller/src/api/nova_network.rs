//! Nova's network proxies (microversions 2.1 to 2.35): security groups
//! (`/os-security-groups`, `/os-security-group-rules`, a server's groups
//! and the `addSecurityGroup`/`removeSecurityGroup` actions), floating IPs
//! (`/os-floating-ips` and `addFloatingIp`/`removeFloatingIp`), tenant
//! networks (`/os-tenant-networks`) and networks (`/os-networks`, list and
//! show). As in Nova, each call is translated
//! to the network service's (Neutron's) and its answer back; nothing here
//! keeps state of its own.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value as Json};

use super::compute::{compute_error, nova_error};
use super::http::{empty, json, read_json, Body};
use super::App;
use crate::compute::service;
use crate::context::RequestContext;
use crate::network::NetworkError;

/// Handles the proxied paths; None for any other.
pub async fn route(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
    rest: &[&str],
) -> Option<Response<Body>> {
    let method = req.method().clone();
    let result = match (method, rest) {
        (Method::GET, ["os-security-groups"]) => list_groups(app, ctx).await,
        (Method::POST, ["os-security-groups"]) => match body(req, "security_group").await {
            Ok(b) => create_group(app, ctx, &b).await,
            Err(r) => return Some(r),
        },
        (Method::GET, ["os-security-groups", id]) => show_group(app, ctx, id).await,
        (Method::PUT, ["os-security-groups", id]) => {
            let id = id.to_string();
            match body(req, "security_group").await {
                Ok(b) => update_group(app, ctx, &id, &b).await,
                Err(r) => return Some(r),
            }
        }
        (Method::DELETE, ["os-security-groups", id]) => app
            .network
            .delete_group(ctx, id)
            .await
            .map(|()| empty(StatusCode::ACCEPTED))
            .map_err(in_use_is_bad),
        (Method::POST, ["os-security-group-rules"]) => {
            match body(req, "security_group_rule").await {
                Ok(b) => create_rule(app, ctx, &b).await,
                Err(r) => return Some(r),
            }
        }
        (Method::DELETE, ["os-security-group-rules", id]) => app
            .network
            .delete_rule(ctx, id)
            .await
            .map(|()| empty(StatusCode::ACCEPTED))
            .map_err(Failure::from),
        (Method::GET, ["servers", id, "os-security-groups"]) => server_groups(app, ctx, id).await,
        (Method::GET, ["os-floating-ips"]) => list_floating(app, ctx).await,
        (Method::POST, ["os-floating-ips"]) => {
            // The body is optional: `{"pool": name}` or nothing at all.
            let pool = match read_json(req, nova_error).await {
                Ok(b) => b.get("pool").and_then(Json::as_str).map(str::to_owned),
                Err(_) => None,
            };
            allocate_floating(app, ctx, pool.as_deref()).await
        }
        (Method::GET, ["os-floating-ips", id]) => show_floating(app, ctx, id).await,
        (Method::DELETE, ["os-floating-ips", id]) => app
            .network
            .delete_floating_ip(ctx, id)
            .await
            .map(|()| empty(StatusCode::ACCEPTED))
            .map_err(Failure::from),
        (Method::GET, ["os-tenant-networks"]) => tenant_networks(app, ctx, None).await,
        (Method::GET, ["os-tenant-networks", id]) => tenant_networks(app, ctx, Some(id)).await,
        (Method::GET, ["os-networks"]) => networks(app, ctx, None).await,
        (Method::GET, ["os-networks", id]) => networks(app, ctx, Some(id)).await,
        // nova-network's own management (create, delete, associate) is
        // gone from Nova: Neutron manages networks.
        (_, ["os-networks", ..]) => Err(Failure::Gone(
            "Network API is removed: manage networks through the network service.".into(),
        )),
        _ => return None,
    };
    Some(result.unwrap_or_else(Failure::into_response))
}

/// A server action this module carries out (`addSecurityGroup`,
/// `removeSecurityGroup`, `addFloatingIp`, `removeFloatingIp`); None for
/// other actions.
pub async fn action(
    app: &App,
    ctx: &RequestContext,
    server_id: &str,
    name: &str,
    args: &Json,
) -> Option<Response<Body>> {
    let result = match name {
        "addSecurityGroup" | "removeSecurityGroup" => {
            let add = name == "addSecurityGroup";
            match args.get("name").and_then(Json::as_str) {
                Some(group) => server_group(app, ctx, server_id, group, add).await,
                None => Err(Failure::Bad(format!("{name}: 'name' is required"))),
            }
        }
        "addFloatingIp" | "removeFloatingIp" => {
            let add = name == "addFloatingIp";
            match args.get("address").and_then(Json::as_str) {
                Some(address) => {
                    let fixed = args.get("fixed_address").and_then(Json::as_str);
                    floating_on_server(app, ctx, server_id, address, fixed, add).await
                }
                None => Err(Failure::Bad(format!("{name}: 'address' is required"))),
            }
        }
        _ => return None,
    };
    Some(result.unwrap_or_else(Failure::into_response))
}

/// Why a proxied call failed, as Nova answers it.
enum Failure {
    Bad(String),
    NotFound(String),
    Conflict(String),
    /// An API Nova has removed.
    Gone(String),
    Network(NetworkError),
    Compute(service::ComputeError),
}

impl From<NetworkError> for Failure {
    fn from(e: NetworkError) -> Self {
        Failure::Network(e)
    }
}

impl From<service::ComputeError> for Failure {
    fn from(e: service::ComputeError) -> Self {
        Failure::Compute(e)
    }
}

impl Failure {
    fn into_response(self) -> Response<Body> {
        match self {
            Failure::Bad(m) => nova_error(StatusCode::BAD_REQUEST, &m),
            Failure::NotFound(m) => nova_error(StatusCode::NOT_FOUND, &m),
            Failure::Conflict(m) => nova_error(StatusCode::CONFLICT, &m),
            Failure::Gone(m) => nova_error(StatusCode::GONE, &m),
            Failure::Compute(e) => compute_error(e),
            Failure::Network(NetworkError::Neutron {
                status, message, ..
            }) => nova_error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                &message,
            ),
            Failure::Network(NetworkError::Store(e)) => super::compute::store_error(e),
        }
    }
}

/// Nova turns Neutron's conflicts on groups (the default group, a group in
/// use, a duplicate rule) into 400s.
fn in_use_is_bad(e: NetworkError) -> Failure {
    match e {
        NetworkError::Neutron {
            status: 409,
            message,
            ..
        } => Failure::Bad(message),
        other => Failure::Network(other),
    }
}

/// The `{field: {...}}` object of a request body.
pub(super) async fn body(
    req: Request<Incoming>,
    field: &str,
) -> Result<Map<String, Json>, Response<Body>> {
    let body = read_json(req, nova_error).await?;
    match body.get(field) {
        Some(Json::Object(m)) => Ok(m.clone()),
        _ => Err(nova_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid input for field/attribute {field}: '{field}' is a required object"),
        )),
    }
}

fn text<'a>(v: &'a Json, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Json::as_str)
}

// --- security groups

/// A Neutron group as Nova shows it: its ingress rules only.
fn group_view(group: &Json, all: &[Json]) -> Json {
    let rules: Vec<Json> = group["security_group_rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .filter(|r| text(r, "direction") == Some("ingress"))
                .map(|r| rule_view(r, all))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": group["id"], "name": group["name"], "description": group["description"],
        "tenant_id": group["project_id"], "rules": rules,
    })
}

/// A Neutron rule as Nova shows it (`all`: the groups, to name a remote one).
fn rule_view(r: &Json, all: &[Json]) -> Json {
    let protocol = text(r, "protocol");
    let (from, to) = match (r.get("port_range_min"), r.get("port_range_max")) {
        (Some(Json::Number(a)), Some(Json::Number(b))) => (json!(a), json!(b)),
        _ => match protocol.map(str::to_ascii_lowercase).as_deref() {
            Some("tcp" | "udp") => (json!(1), json!(65535)),
            Some(_) => (json!(-1), json!(-1)),
            None => (Json::Null, Json::Null),
        },
    };
    let (group, ip_range) = match text(r, "remote_group_id") {
        Some(remote) => {
            let named = all.iter().find(|g| text(g, "id") == Some(remote));
            (
                json!({"name": named.map(|g| g["name"].clone()),
                       "tenant_id": named.map(|g| g["project_id"].clone())}),
                json!({}),
            )
        }
        None => (
            json!({}),
            json!({"cidr": text(r, "remote_ip_prefix").unwrap_or("0.0.0.0/0")}),
        ),
    };
    json!({
        "id": r["id"], "parent_group_id": r["security_group_id"], "ip_protocol": protocol,
        "from_port": from, "to_port": to, "group": group, "ip_range": ip_range,
    })
}

async fn list_groups(app: &App, ctx: &RequestContext) -> Result<Response<Body>, Failure> {
    let all = app.network.list_groups(ctx).await?;
    let list: Vec<Json> = all.iter().map(|g| group_view(g, &all)).collect();
    Ok(json(StatusCode::OK, &json!({ "security_groups": list })))
}

async fn group_json(app: &App, ctx: &RequestContext, id: &str) -> Result<Json, Failure> {
    let group = app.network.visible_group(ctx, id).await?;
    let all = app.network.list_groups(ctx).await?;
    Ok(group_view(&app.network.group_json(&group).await?, &all))
}

async fn show_group(app: &App, ctx: &RequestContext, id: &str) -> Result<Response<Body>, Failure> {
    let group = group_json(app, ctx, id).await?;
    Ok(json(StatusCode::OK, &json!({ "security_group": group })))
}

/// Nova's checks of a group's name and description: strings of at most
/// 255 characters, both required when creating.
fn group_attrs(body: &Map<String, Json>, required: bool) -> Result<Map<String, Json>, Failure> {
    let mut attrs = Map::new();
    for key in ["name", "description"] {
        match body.get(key) {
            Some(Json::String(s)) if s.chars().count() <= 255 => {
                attrs.insert(key.into(), json!(s));
            }
            None if !required => {}
            _ => {
                return Err(Failure::Bad(format!(
                    "Security group {key} is required: a string of at most 255 characters"
                )))
            }
        }
    }
    Ok(attrs)
}

async fn create_group(
    app: &App,
    ctx: &RequestContext,
    body: &Map<String, Json>,
) -> Result<Response<Body>, Failure> {
    let attrs = group_attrs(body, true)?;
    let created = app
        .network
        .create_group(ctx, &attrs)
        .await
        .map_err(in_use_is_bad)?;
    let all = app.network.list_groups(ctx).await?;
    Ok(json(
        StatusCode::OK,
        &json!({"security_group": group_view(&created, &all)}),
    ))
}

async fn update_group(
    app: &App,
    ctx: &RequestContext,
    id: &str,
    body: &Map<String, Json>,
) -> Result<Response<Body>, Failure> {
    let attrs = group_attrs(body, false)?;
    let updated = app
        .network
        .update_group(ctx, id, &attrs)
        .await
        .map_err(in_use_is_bad)?;
    let all = app.network.list_groups(ctx).await?;
    Ok(json(
        StatusCode::OK,
        &json!({"security_group": group_view(&updated, &all)}),
    ))
}

/// A port number of a Nova rule: an integer, or a string of one.
fn port_number(body: &Map<String, Json>, key: &str) -> Result<Option<i64>, Failure> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| Failure::Bad(format!("{key} is not an integer"))),
        Some(Json::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Failure::Bad(format!("{key} is not an integer: {s:?}"))),
        Some(other) => Err(Failure::Bad(format!("{key} is not an integer: {other}"))),
    }
}

/// A Nova rule (parent group, protocol, ports, a CIDR or a remote group)
/// as the Neutron ingress rule it stands for, checked as Nova checks it.
fn rule_attrs(body: &Map<String, Json>) -> Result<Map<String, Json>, Failure> {
    let Some(parent) = body.get("parent_group_id").and_then(Json::as_str) else {
        return Err(Failure::Bad("parent_group_id is required".into()));
    };
    let uuid = |id: &str| uuid::Uuid::parse_str(id).is_ok();
    if !uuid(parent)
        || body
            .get("group_id")
            .and_then(Json::as_str)
            .is_some_and(|g| !uuid(g))
    {
        return Err(Failure::Bad("Security group id should be uuid".into()));
    }
    let protocol = match body.get("ip_protocol") {
        None | Some(Json::Null) => None,
        Some(Json::String(p)) => match p.to_ascii_lowercase().as_str() {
            p @ ("tcp" | "udp" | "icmp") => Some(p.to_owned()),
            _ => return Err(Failure::Bad(format!("Invalid IP protocol {p}."))),
        },
        Some(other) => return Err(Failure::Bad(format!("Invalid IP protocol {other}."))),
    };
    let (from, to) = (
        port_number(body, "from_port")?,
        port_number(body, "to_port")?,
    );
    let mut attrs = Map::new();
    attrs.insert("security_group_id".into(), json!(parent));
    attrs.insert("direction".into(), json!("ingress"));
    match protocol.as_deref() {
        Some(p @ ("tcp" | "udp")) => {
            let (Some(from), Some(to)) = (from, to) else {
                return Err(Failure::Bad("from_port and to_port are required".into()));
            };
            if from > to {
                return Err(Failure::Bad(
                    "Invalid port range: from_port is greater than to_port".into(),
                ));
            }
            if !(1..=65535).contains(&from) || !(1..=65535).contains(&to) {
                return Err(Failure::Bad(format!(
                    "Invalid port range {from}:{to}. Valid {} ports should be between 1-65535",
                    p.to_uppercase()
                )));
            }
            attrs.insert("port_range_min".into(), json!(from));
            attrs.insert("port_range_max".into(), json!(to));
        }
        Some(_) => {
            // ICMP: from_port is the type, to_port the code; -1 is any.
            for (value, what, key) in [
                (from, "type", "port_range_min"),
                (to, "code", "port_range_max"),
            ] {
                match value {
                    None | Some(-1) => {}
                    Some(v @ 0..=255) => {
                        attrs.insert(key.into(), json!(v));
                    }
                    Some(v) => return Err(Failure::Bad(format!("ICMP {what} {v} out of range"))),
                }
            }
        }
        None if from.is_some() || to.is_some() => {
            return Err(Failure::Bad(
                "ip_protocol is required with from_port and to_port".into(),
            ))
        }
        None => {}
    }
    if let Some(p) = protocol {
        attrs.insert("protocol".into(), json!(p));
    }
    match (
        body.get("group_id").and_then(Json::as_str),
        body.get("cidr"),
    ) {
        (Some(group), _) => {
            attrs.insert("remote_group_id".into(), json!(group));
        }
        (None, Some(Json::String(cidr))) => {
            let Ok(net) = cidr.parse::<ipnet::IpNet>() else {
                return Err(Failure::Bad(format!("Invalid cidr {cidr}.")));
            };
            attrs.insert(
                "ethertype".into(),
                json!(if net.addr().is_ipv6() { "IPv6" } else { "IPv4" }),
            );
            attrs.insert("remote_ip_prefix".into(), json!(net.to_string()));
        }
        (None, None | Some(Json::Null)) => {
            attrs.insert("remote_ip_prefix".into(), json!("0.0.0.0/0"));
        }
        (None, Some(other)) => return Err(Failure::Bad(format!("Invalid cidr {other}."))),
    }
    Ok(attrs)
}

async fn create_rule(
    app: &App,
    ctx: &RequestContext,
    body: &Map<String, Json>,
) -> Result<Response<Body>, Failure> {
    let attrs = rule_attrs(body)?;
    let parent = attrs["security_group_id"].as_str().unwrap_or_default();
    // A missing parent group is a 404, before the rule is looked at.
    app.network.visible_group(ctx, parent).await?;
    let rule = app
        .network
        .create_rule(ctx, &attrs)
        .await
        .map_err(in_use_is_bad)?;
    let all = app.network.list_groups(ctx).await?;
    Ok(json(
        StatusCode::OK,
        &json!({"security_group_rule": rule_view(&rule, &all)}),
    ))
}

/// The groups of a server's ports, each once.
async fn server_groups(
    app: &App,
    ctx: &RequestContext,
    id: &str,
) -> Result<Response<Body>, Failure> {
    let server = service::visible(app, ctx, id).await?;
    let mut ids: Vec<String> = app
        .network
        .server_ports(&server.id)
        .await?
        .into_iter()
        .flat_map(|p| p.security_groups)
        .collect();
    ids.sort();
    ids.dedup();
    let mut groups = Vec::new();
    for g in &ids {
        groups.push(group_json(app, ctx, g).await?);
    }
    Ok(json(StatusCode::OK, &json!({ "security_groups": groups })))
}

/// Adds the group named `group` (or with that id) to every port of the
/// server, or removes it from them.
async fn server_group(
    app: &App,
    ctx: &RequestContext,
    server_id: &str,
    group: &str,
    add: bool,
) -> Result<Response<Body>, Failure> {
    let server = service::changeable(app, ctx, server_id, "addSecurityGroup").await?;
    let groups = app.network.list_groups(ctx).await?;
    let mine = |g: &&Json| text(g, "project_id") == Some(ctx.project_id());
    let found = groups
        .iter()
        .filter(mine)
        .find(|g| text(g, "id") == Some(group))
        .or_else(|| {
            groups
                .iter()
                .filter(mine)
                .find(|g| text(g, "name") == Some(group))
        });
    let Some(group_id) = found.and_then(|g| text(g, "id")) else {
        return Err(Failure::NotFound(format!(
            "Security group {group} not found for project {}.",
            ctx.project_id()
        )));
    };
    let ports = app.network.server_ports(&server.id).await?;
    if ports.is_empty() {
        return Err(Failure::Bad(
            "The server has no network port to apply security groups to".into(),
        ));
    }
    if !add
        && !ports
            .iter()
            .any(|p| p.security_groups.iter().any(|g| g == group_id))
    {
        return Err(Failure::Bad(format!(
            "Security group {group} not associated with the instance"
        )));
    }
    for port in ports {
        let mut list = port.security_groups.clone();
        list.retain(|g| g != group_id);
        if add {
            list.push(group_id.to_owned());
        }
        if list == port.security_groups {
            continue;
        }
        let mut attrs = Map::new();
        attrs.insert("security_groups".into(), json!(list));
        app.network.update_port(ctx, &port.std.id, &attrs).await?;
    }
    Ok(empty(StatusCode::ACCEPTED))
}

// --- floating IPs

/// A Neutron floating IP as Nova shows it (`pools`: network ids and names).
fn floating_view(f: &Json, pools: &[(String, String)], server: Option<&str>) -> Json {
    let pool = pools
        .iter()
        .find(|(id, _)| Some(id.as_str()) == text(f, "floating_network_id"))
        .map(|(_, name)| name.clone());
    json!({
        "id": f["id"], "ip": f["floating_ip_address"], "fixed_ip": f["fixed_ip_address"],
        "instance_id": server, "pool": pool,
    })
}

/// The networks floating IPs come from: `(id, name)`.
async fn pools(app: &App, ctx: &RequestContext) -> Result<Vec<(String, String)>, Failure> {
    Ok(app
        .network
        .list_networks(ctx)
        .await?
        .iter()
        .filter(|n| n["router:external"] == json!(true))
        .filter_map(|n| Some((text(n, "id")?.to_owned(), text(n, "name")?.to_owned())))
        .collect())
}

/// The server a floating IP's port belongs to.
async fn server_of(app: &App, f: &Json) -> Option<String> {
    let port = app.network.store().port(text(f, "port_id")?).await.ok()??;
    (!port.device_id.is_empty()).then_some(port.device_id)
}

async fn list_floating(app: &App, ctx: &RequestContext) -> Result<Response<Body>, Failure> {
    let pools = pools(app, ctx).await?;
    let mut list = Vec::new();
    for f in app.network.list_floating_ips(ctx).await? {
        let server = server_of(app, &f).await;
        list.push(floating_view(&f, &pools, server.as_deref()));
    }
    Ok(json(StatusCode::OK, &json!({ "floating_ips": list })))
}

async fn show_floating(
    app: &App,
    ctx: &RequestContext,
    id: &str,
) -> Result<Response<Body>, Failure> {
    let fip = app.network.visible_floating_ip(ctx, id).await?;
    let f = app.network.floating_ip_json(&fip).await?;
    let server = server_of(app, &f).await;
    let view = floating_view(&f, &pools(app, ctx).await?, server.as_deref());
    Ok(json(StatusCode::OK, &json!({ "floating_ip": view })))
}

async fn allocate_floating(
    app: &App,
    ctx: &RequestContext,
    pool: Option<&str>,
) -> Result<Response<Body>, Failure> {
    let pools = pools(app, ctx).await?;
    let network = match pool {
        Some(p) => pools.iter().find(|(id, name)| name == p || id == p),
        // No pool named: the only one there is.
        None if pools.len() == 1 => pools.first(),
        None => None,
    };
    let Some((network, _)) = network else {
        return Err(Failure::NotFound(format!(
            "Floating IP pool not found: {}",
            pool.unwrap_or("(none named, and not exactly one exists)")
        )));
    };
    let mut attrs = Map::new();
    attrs.insert("floating_network_id".into(), json!(network));
    let f = app.network.create_floating_ip(ctx, &attrs).await?;
    Ok(json(
        StatusCode::OK,
        &json!({"floating_ip": floating_view(&f, &pools, None)}),
    ))
}

/// Associates the floating IP at `address` with the server's port (the one
/// holding `fixed`, else its first), or dissociates it.
async fn floating_on_server(
    app: &App,
    ctx: &RequestContext,
    server_id: &str,
    address: &str,
    fixed: Option<&str>,
    add: bool,
) -> Result<Response<Body>, Failure> {
    let server = service::changeable(app, ctx, server_id, "addFloatingIp").await?;
    let all = app.network.list_floating_ips(ctx).await?;
    let Some(fip) = all
        .iter()
        .find(|f| text(f, "floating_ip_address") == Some(address))
    else {
        return Err(Failure::NotFound(format!(
            "floating IP not found for address {address}"
        )));
    };
    let fip_id = text(fip, "id").unwrap_or_default();
    let ports = app.network.server_ports(&server.id).await?;
    let mut attrs = Map::new();
    if add {
        let port = match fixed {
            Some(ip) => ports
                .iter()
                .find(|p| p.fixed_ips.iter().any(|f| f.ip_address.to_string() == ip)),
            None => ports.first(),
        };
        let Some(port) = port else {
            return Err(Failure::Bad(format!(
                "No port of instance {} holds {}",
                server.id,
                fixed.unwrap_or("an address")
            )));
        };
        attrs.insert("port_id".into(), json!(port.std.id));
        if let Some(ip) = fixed {
            attrs.insert("fixed_ip_address".into(), json!(ip));
        }
    } else {
        let on_server =
            text(fip, "port_id").is_some_and(|p| ports.iter().any(|port| port.std.id == p));
        if !on_server {
            return Err(Failure::Conflict(format!(
                "Floating IP {address} is not associated with instance {}",
                server.id
            )));
        }
        attrs.insert("port_id".into(), Json::Null);
    }
    match app.network.update_floating_ip(ctx, fip_id, &attrs).await {
        Ok(_) => Ok(empty(StatusCode::ACCEPTED)),
        // Nova answers a failed association (the fixed IP already has a
        // floating IP, the address is taken) with 400, not Neutron's 409.
        Err(NetworkError::Neutron {
            status: 409,
            message,
            ..
        }) if add => Err(Failure::Bad(message)),
        Err(e) => Err(e.into()),
    }
}

// --- tenant networks

async fn tenant_networks(
    app: &App,
    ctx: &RequestContext,
    one: Option<&str>,
) -> Result<Response<Body>, Failure> {
    let subnets = app.network.list_subnets(ctx).await?;
    let view = |n: &Json| {
        let cidr = subnets
            .iter()
            .find(|s| s["network_id"] == n["id"])
            .map(|s| s["cidr"].clone());
        json!({"id": n["id"], "label": n["name"], "cidr": cidr})
    };
    let networks = app.network.list_networks(ctx).await?;
    list_or_one(
        &networks,
        one,
        |n| n["router:external"] != json!(true),
        view,
    )
}

/// The networks that `listed` keeps, or the one named `one` (any of them;
/// Nova's 404 when none), each as `view` shows it.
fn list_or_one(
    networks: &[Json],
    one: Option<&str>,
    listed: impl Fn(&Json) -> bool,
    view: impl Fn(&Json) -> Json,
) -> Result<Response<Body>, Failure> {
    match one {
        None => {
            let list: Vec<Json> = networks.iter().filter(|n| listed(n)).map(view).collect();
            Ok(json(StatusCode::OK, &json!({ "networks": list })))
        }
        Some(id) => match networks.iter().find(|n| text(n, "id") == Some(id)) {
            Some(n) => Ok(json(StatusCode::OK, &json!({"network": view(n)}))),
            None => Err(Failure::NotFound(format!(
                "Network {id} could not be found."
            ))),
        },
    }
}

/// `/os-networks[/{id}]`: every network the caller sees (external ones
/// too), in nova-network's shape: its first IPv4 subnet's addressing, and
/// for admins the fields nova-network kept per network (null where
/// Neutron has no such thing), as Nova's proxy answers.
async fn networks(
    app: &App,
    ctx: &RequestContext,
    one: Option<&str>,
) -> Result<Response<Body>, Failure> {
    let subnets = app.network.list_subnets(ctx).await?;
    let view = |n: &Json| {
        let subnet = subnets
            .iter()
            .find(|s| s["network_id"] == n["id"] && s["ip_version"] == json!(4));
        let field = |key: &str| subnet.map(|s| s[key].clone()).unwrap_or(Json::Null);
        let netmask = subnet
            .and_then(|s| text(s, "cidr"))
            .and_then(|c| c.parse::<ipnet::Ipv4Net>().ok())
            .map(|c| c.netmask().to_string());
        let dns = |i: usize| {
            subnet
                .and_then(|s| s["dns_nameservers"].get(i).cloned())
                .unwrap_or(Json::Null)
        };
        let mut v = json!({
            "id": n["id"], "label": n["name"], "cidr": field("cidr"), "netmask": netmask,
            "gateway": field("gateway_ip"), "broadcast": null, "dns1": dns(0), "dns2": dns(1),
            "cidr_v6": null, "gateway_v6": null, "netmask_v6": null,
        });
        if ctx.auth.is_admin() {
            for key in [
                "created_at",
                "updated_at",
                "deleted_at",
                "deleted",
                "injected",
                "bridge",
                "vlan",
                "vpn_public_address",
                "vpn_public_port",
                "vpn_private_address",
                "dhcp_start",
                "host",
                "bridge_interface",
                "multi_host",
                "priority",
                "rxtx_base",
                "dhcp_server",
                "share_address",
            ] {
                v[key] = Json::Null;
            }
            v["project_id"] = n["project_id"].clone();
            v["mtu"] = n["mtu"].clone();
            v["enable_dhcp"] = field("enable_dhcp");
        }
        v
    };
    let networks = app.network.list_networks(ctx).await?;
    list_or_one(&networks, one, |_| true, view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(body: Json) -> Result<Map<String, Json>, String> {
        rule_attrs(body.as_object().unwrap()).map_err(|f| match f {
            Failure::Bad(m) => m,
            _ => "not a 400".into(),
        })
    }

    #[test]
    fn nova_rules_become_neutron_ingress_rules() {
        const G: &str = "7d5e6a1c-0000-4000-8000-000000000001";
        const H: &str = "7d5e6a1c-0000-4000-8000-000000000002";
        let r = rule(json!({"parent_group_id": G, "ip_protocol": "TCP",
                            "from_port": 22, "to_port": "22", "cidr": "10.0.0.0/8"}))
        .unwrap();
        assert_eq!(r["direction"], "ingress");
        assert_eq!(
            (&r["port_range_min"], &r["port_range_max"]),
            (&json!(22), &json!(22))
        );
        assert_eq!(
            (&r["protocol"], &r["remote_ip_prefix"]),
            (&json!("tcp"), &json!("10.0.0.0/8"))
        );
        let r = rule(json!({"parent_group_id": G, "ip_protocol": "icmp",
                            "from_port": -1, "to_port": -1, "group_id": H}))
        .unwrap();
        assert!(r.get("port_range_min").is_none() && r["remote_group_id"] == H);
        let r = rule(json!({"parent_group_id": G})).unwrap();
        assert_eq!(r["remote_ip_prefix"], "0.0.0.0/0");
        for bad in [
            json!({"ip_protocol": "tcp", "from_port": 1, "to_port": 2}),
            json!({"parent_group_id": "not-a-uuid", "ip_protocol": "tcp", "from_port": 1, "to_port": 2}),
            json!({"parent_group_id": G, "ip_protocol": "gre", "from_port": 1, "to_port": 2}),
            json!({"parent_group_id": G, "ip_protocol": "tcp", "from_port": 0, "to_port": 2}),
            json!({"parent_group_id": G, "ip_protocol": "tcp", "from_port": 9, "to_port": 2}),
            json!({"parent_group_id": G, "ip_protocol": "tcp", "from_port": 1, "to_port": 65536}),
            json!({"parent_group_id": G, "ip_protocol": "tcp", "from_port": "x", "to_port": 2}),
            json!({"parent_group_id": G, "ip_protocol": "icmp", "from_port": 256, "to_port": 0}),
            json!({"parent_group_id": G, "from_port": 22, "to_port": 22}),
            json!({"parent_group_id": G, "cidr": "10.0.0.300/8"}),
        ] {
            assert!(rule(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_show_as_nova_shows_them() {
        let groups = [json!({"id": "h", "name": "web", "project_id": "p"})];
        let v = rule_view(
            &json!({"id": "r", "security_group_id": "g", "protocol": "tcp",
                    "port_range_min": null, "port_range_max": null, "remote_group_id": "h"}),
            &groups,
        );
        assert_eq!((&v["from_port"], &v["to_port"]), (&json!(1), &json!(65535)));
        assert_eq!(v["group"], json!({"name": "web", "tenant_id": "p"}));
        assert_eq!(v["ip_range"], json!({}));
        let v = rule_view(
            &json!({"id": "r", "security_group_id": "g", "protocol": null,
                    "remote_ip_prefix": null}),
            &groups,
        );
        assert_eq!(v["ip_range"], json!({"cidr": "0.0.0.0/0"}));
        assert!(v["from_port"].is_null());
    }
}
