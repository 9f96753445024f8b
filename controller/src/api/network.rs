//! Neutron v2.0's HTTP handlers (under `/network`): discovery, extensions,
//! networks, subnets, ports, security groups and rules, routers (and their
//! interface actions), floating IPs, tags, quotas. They
//! route, unwrap `{"network": {...}}` bodies, call the network service and
//! render its answers and errors in Neutron's shapes.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value as Json};

use super::http::{empty, json, read_json, Body};
use super::servers::request_id_of;
use super::App;
use crate::context::RequestContext;
use crate::network::query::{page_body, ListQuery};
use crate::network::service::tag;
use crate::network::NetworkError;
use crate::store::StoreError;

/// Neutron's error shape.
pub fn neutron_error(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    json(
        status,
        &json!({"NeutronError": {"type": kind, "message": message, "detail": ""}}),
    )
}

fn bad_body(status: StatusCode, message: &str) -> Response<Body> {
    neutron_error(status, "HTTPBadRequest", message)
}

fn network_error(e: NetworkError) -> Response<Body> {
    match e {
        NetworkError::Neutron {
            status,
            kind,
            message,
        } => neutron_error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            &kind,
            &message,
        ),
        NetworkError::Store(StoreError::Conflict(m)) => {
            neutron_error(StatusCode::CONFLICT, "Conflict", &m)
        }
        NetworkError::Store(other) => {
            tracing::error!("network: {other}");
            neutron_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "HTTPInternalServerError",
                "Request Failed: internal server error while processing your request.",
            )
        }
    }
}

/// What this cloud implements, by Neutron's extension aliases: clients
/// change their requests by this list, so it names nothing that is not here.
const EXTENSIONS: &[(&str, &str, &str)] = &[
    ("security-group", "security-group", "The security groups extension."),
    ("stateful-security-group", "Stateful security group", "Indicates if the security group is stateful or not"),
    ("port-security", "Port Security", "Provides port security"),
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external application"),
    ("external-net", "Neutron external network", "Adds external network attribute to network resource."),
    ("router", "Neutron L3 Router", "Router abstraction for basic L3 forwarding between L2 Neutron networks and access to external networks via a NAT gateway."),
    ("ext-gw-mode", "Neutron L3 Configurable external gateway mode", "Extension of the router abstraction for specifying whether SNAT should occur on the external gateway"),
    ("fip-port-details", "Floating IP Port Details Extension", "Add port_details attribute to Floating IP resource"),
    ("allowed-address-pairs", "Allowed Address Pairs", "Provides allowed address pairs"),
    ("quotas", "Quota management support", "Expose functions for quotas management per project"),
    ("quota_details", "Quota details management support", "Expose functions for quotas usage statistics per project"),
    ("standard-attr-tag", "Tag support for resources with standard attribute: subnet, trunk, network_segment_range, router, network, policy, subnetpool, port, security_group, floatingip", "Enables to set tag on resources with standard attribute."),
    ("standard-attr-description", "standard-attr-description", "Extension to add descriptions to standard attributes"),
    ("standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes."),
    ("standard-attr-revisions", "Resource revision numbers", "This extension will display the revision number of neutron resources."),
    ("project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled."),
    ("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    ("net-mtu-writable", "Network MTU (writable)", "Provides a writable MTU attribute for a network resource."),
    ("pagination", "Pagination support", "Extension that indicates that pagination is enabled."),
    ("sorting", "Sorting support", "Extension that indicates that sorting is enabled."),
];

fn extension_json(alias: &str, name: &str, description: &str) -> Json {
    json!({"alias": alias, "name": name, "description": description,
           "updated": "2026-12-01T00:00:00-00:00", "links": []})
}

fn versions(app: &App) -> Json {
    json!({"versions": [{"id": "v2.0", "status": "CURRENT",
        "links": [{"rel": "self", "href": format!("{}/network/v2.0/", app.config.public_url)}]}]})
}

fn resources(app: &App) -> Json {
    let base = format!("{}/network/v2.0", app.config.public_url);
    let r = |name: &str, collection: &str| {
        json!({"name": name, "collection": collection,
               "links": [{"rel": "self", "href": format!("{base}/{collection}")}]})
    };
    json!({"resources": [
        r("network", "networks"), r("subnet", "subnets"), r("port", "ports"),
        r("security_group", "security-groups"), r("security_group_rule", "security-group-rules"),
        r("router", "routers"), r("floatingip", "floatingips"),
        r("quota", "quotas"),
    ]})
}

/// The body's one resource object, `{"<singular>": {...}}`.
async fn attrs(
    req: Request<Incoming>,
    singular: &str,
) -> Result<Map<String, Json>, Response<Body>> {
    let body = read_json(req, bad_body).await?;
    match body.get(singular) {
        Some(Json::Object(m)) => Ok(m.clone()),
        Some(_) => Err(bad_body(
            StatusCode::BAD_REQUEST,
            &format!("Invalid input: '{singular}' must be an object"),
        )),
        None if body.get(format!("{singular}s")).is_some() => Err(bad_body(
            StatusCode::BAD_REQUEST,
            "Bulk create is not available on this cloud; create resources one at a time.",
        )),
        None => Err(bad_body(
            StatusCode::BAD_REQUEST,
            &format!("Resource body required: {singular}"),
        )),
    }
}

pub async fn route(app: &App, req: Request<Incoming>, rest: &[&str]) -> Response<Body> {
    // Old clients address `/v2.0/networks.json`.
    let last = rest.last().map(|l| l.strip_suffix(".json").unwrap_or(l));
    let mut path: Vec<&str> = rest.to_vec();
    if let (Some(l), Some(slot)) = (last, path.last_mut()) {
        *slot = l;
    }
    match (req.method(), path.as_slice()) {
        (&Method::GET, []) => return json(StatusCode::OK, &versions(app)),
        (&Method::GET, ["v2.0"]) => return json(StatusCode::OK, &resources(app)),
        _ => {}
    }
    let Some(auth) = app.caller(&req).await else {
        return neutron_error(
            StatusCode::UNAUTHORIZED,
            "HTTPUnauthorized",
            "Authentication required",
        );
    };
    let Some(path) = path.strip_prefix(&["v2.0"]) else {
        return neutron_error(
            StatusCode::NOT_FOUND,
            "HTTPNotFound",
            "The resource could not be found.",
        );
    };
    let ctx = RequestContext {
        request_id: request_id_of(&req),
        auth,
    };
    let result = match (req.method().clone(), path) {
        (Method::GET, ["extensions"]) => Ok(json(
            StatusCode::OK,
            &json!({"extensions": EXTENSIONS.iter().map(|(a, n, d)| extension_json(a, n, d)).collect::<Vec<_>>()}),
        )),
        (Method::GET, ["extensions", alias]) => {
            Ok(match EXTENSIONS.iter().find(|e| e.0 == *alias) {
                Some((a, n, d)) => json(
                    StatusCode::OK,
                    &json!({"extension": extension_json(a, n, d)}),
                ),
                None => neutron_error(
                    StatusCode::NOT_FOUND,
                    "HTTPNotFound",
                    &format!("Extension with alias {alias} does not exist"),
                ),
            })
        }
        (_, ["quotas", ..]) => quotas(app, &ctx, req, &path[1..]).await,
        (method, [collection, rest @ ..]) => {
            resource(app, &ctx, req, method, collection, rest).await
        }
        _ => Ok(neutron_error(
            StatusCode::NOT_FOUND,
            "HTTPNotFound",
            "The resource could not be found.",
        )),
    };
    result.unwrap_or_else(network_error)
}

/// The singular name of a collection's resource, for bodies and messages.
fn singular(collection: &str) -> Option<&'static str> {
    Some(match collection {
        "networks" => "network",
        "subnets" => "subnet",
        "ports" => "port",
        "security-groups" => "security_group",
        "security-group-rules" => "security_group_rule",
        "routers" => "router",
        "floatingips" => "floatingip",
        _ => return None,
    })
}

async fn list(
    app: &App,
    ctx: &RequestContext,
    collection: &str,
    query: &ListQuery,
) -> Result<Vec<Json>, NetworkError> {
    let s = &app.network;
    match collection {
        "networks" => s.list_networks(ctx).await,
        "subnets" => s.list_subnets(ctx).await,
        "ports" => s.list_ports(ctx, query.filter("device_id")).await,
        "security-groups" => s.list_groups(ctx).await,
        "routers" => s.list_routers(ctx).await,
        "floatingips" => s.list_floating_ips(ctx).await,
        _ => s.list_rules(ctx).await,
    }
}

async fn show(
    app: &App,
    ctx: &RequestContext,
    collection: &str,
    id: &str,
) -> Result<Json, NetworkError> {
    let s = &app.network;
    match collection {
        "networks" => {
            let n = s.visible_network(ctx, id).await?;
            s.network_json(ctx, &n).await
        }
        "subnets" => Ok(s.visible_subnet(ctx, id).await?.to_json()),
        "ports" => Ok(s.visible_port(ctx, id).await?.to_json(ctx.is_admin())),
        "security-groups" => {
            let g = s.visible_group(ctx, id).await?;
            s.group_json(&g).await
        }
        "routers" => Ok(s.visible_router(ctx, id).await?.to_json()),
        "floatingips" => {
            let f = s.visible_floating_ip(ctx, id).await?;
            s.floating_ip_json(&f).await
        }
        _ => Ok(s.visible_rule(ctx, id).await?.to_json()),
    }
}

async fn resource(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
    method: Method,
    collection: &str,
    rest: &[&str],
) -> Result<Response<Body>, NetworkError> {
    let Some(one) = singular(collection) else {
        return Ok(neutron_error(
            StatusCode::NOT_FOUND,
            "HTTPNotFound",
            "The resource could not be found.",
        ));
    };
    let s = &app.network;
    let query = ListQuery::parse(req.uri().query());
    let wrap = |v: Json| json!({ one: v });
    match (method, rest) {
        (Method::GET, []) => {
            let items = list(app, ctx, collection, &query).await?;
            let page = query.apply(items).map_err(NetworkError::bad_request)?;
            let body = page_body(
                &collection.replace('-', "_"),
                page,
                &format!("{}/network", app.config.public_url),
            );
            Ok(json(StatusCode::OK, &body))
        }
        (Method::POST, []) => {
            let attrs = match attrs(req, one).await {
                Ok(a) => a,
                Err(r) => return Ok(r),
            };
            let created = match collection {
                "networks" => s.create_network(ctx, &attrs).await?,
                "subnets" => s.create_subnet(ctx, &attrs).await?,
                "ports" => s.create_port(ctx, &attrs).await?.to_json(ctx.is_admin()),
                "security-groups" => s.create_group(ctx, &attrs).await?,
                "routers" => s.create_router(ctx, &attrs).await?,
                "floatingips" => s.create_floating_ip(ctx, &attrs).await?,
                _ => s.create_rule(ctx, &attrs).await?,
            };
            Ok(json(StatusCode::CREATED, &wrap(created)))
        }
        (Method::GET, [id]) => {
            let mut v = show(app, ctx, collection, id).await?;
            query.select(&mut v);
            Ok(json(StatusCode::OK, &wrap(v)))
        }
        (Method::PUT, [id]) if collection != "security-group-rules" => {
            let id = id.to_string();
            let attrs = match attrs(req, one).await {
                Ok(a) => a,
                Err(r) => return Ok(r),
            };
            let updated = match collection {
                "networks" => s.update_network(ctx, &id, &attrs).await?,
                "subnets" => s.update_subnet(ctx, &id, &attrs).await?,
                "ports" => s
                    .update_port(ctx, &id, &attrs)
                    .await?
                    .to_json(ctx.is_admin()),
                "routers" => s.update_router(ctx, &id, &attrs).await?,
                "floatingips" => s.update_floating_ip(ctx, &id, &attrs).await?,
                _ => s.update_group(ctx, &id, &attrs).await?,
            };
            Ok(json(StatusCode::OK, &wrap(updated)))
        }
        (Method::DELETE, [id]) => {
            match collection {
                "networks" => s.delete_network(ctx, id).await?,
                "subnets" => s.delete_subnet(ctx, id).await?,
                "ports" => s.delete_port(ctx, id).await?,
                "security-groups" => s.delete_group(ctx, id).await?,
                "routers" => s.delete_router(ctx, id).await?,
                "floatingips" => s.delete_floating_ip(ctx, id).await?,
                _ => s.delete_rule(ctx, id).await?,
            }
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (Method::PUT, [id, action @ ("add_router_interface" | "remove_router_interface")])
            if collection == "routers" =>
        {
            let (id, add) = (id.to_string(), *action == "add_router_interface");
            // Unwrapped: `{"subnet_id": ...}` or `{"port_id": ...}`.
            let body = match read_json(req, bad_body).await {
                Ok(Json::Object(m)) => m,
                Ok(_) => {
                    return Ok(bad_body(
                        StatusCode::BAD_REQUEST,
                        "Bad router request: the body must be an object.",
                    ))
                }
                Err(r) => return Ok(r),
            };
            let answer = if add {
                s.add_interface(ctx, &id, &body).await?
            } else {
                s.remove_interface(ctx, &id, &body).await?
            };
            Ok(json(StatusCode::OK, &answer))
        }
        (method, [id, "tags", tail @ ..]) if collection != "security-group-rules" => {
            tags(app, ctx, req, method, collection, id, tail).await
        }
        _ => Ok(neutron_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "HTTPMethodNotAllowed",
            "The method is not allowed for this resource.",
        )),
    }
}

async fn tags(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
    method: Method,
    collection: &str,
    id: &str,
    tail: &[&str],
) -> Result<Response<Body>, NetworkError> {
    let s = &app.network;
    match (method, tail) {
        (Method::GET, []) => Ok(json(
            StatusCode::OK,
            &json!({"tags": s.tags(ctx, collection, id).await?}),
        )),
        (Method::GET, [t]) => {
            if s.tags(ctx, collection, id)
                .await?
                .iter()
                .any(|have| have == t)
            {
                Ok(empty(StatusCode::NO_CONTENT))
            } else {
                Err(NetworkError::new(
                    404,
                    "TagNotFound",
                    format!("Tag {t} could not be found for {collection} {id}."),
                ))
            }
        }
        (Method::PUT, []) => {
            let body = match read_json(req, bad_body).await {
                Ok(b) => b,
                Err(r) => return Ok(r),
            };
            let Some(items) = body.get("tags").and_then(Json::as_array) else {
                return Err(NetworkError::bad_request(
                    "Invalid input for tags: a list of tags is required".into(),
                ));
            };
            let mut new: Vec<String> = Vec::new();
            for t in items {
                let t = tag(t)?;
                if !new.contains(&t) {
                    new.push(t);
                }
            }
            let tags = s
                .change_tags(ctx, collection, id, |have| {
                    have.clone_from(&new);
                    Ok(())
                })
                .await?;
            Ok(json(StatusCode::OK, &json!({"tags": tags})))
        }
        (Method::PUT, [t]) => {
            let t = tag(&json!(t))?;
            s.change_tags(ctx, collection, id, |have| {
                if !have.contains(&t) {
                    have.push(t.clone());
                }
                Ok(())
            })
            .await?;
            Ok(empty(StatusCode::CREATED))
        }
        (Method::DELETE, []) => {
            s.change_tags(ctx, collection, id, |have| {
                have.clear();
                Ok(())
            })
            .await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (Method::DELETE, [t]) => {
            s.change_tags(ctx, collection, id, |have| {
                let before = have.len();
                have.retain(|h| h != t);
                if have.len() == before {
                    return Err(NetworkError::new(
                        404,
                        "TagNotFound",
                        format!("Tag {t} could not be found for {collection} {id}."),
                    ));
                }
                Ok(())
            })
            .await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        _ => Ok(neutron_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "HTTPMethodNotAllowed",
            "The method is not allowed for this resource.",
        )),
    }
}

async fn quotas(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
    rest: &[&str],
) -> Result<Response<Body>, NetworkError> {
    let s = &app.network;
    match (req.method().clone(), rest) {
        (Method::GET, []) => Ok(json(
            StatusCode::OK,
            &json!({"quotas": s.quotas(ctx).await?}),
        )),
        (Method::GET, ["tenant"]) => Ok(json(
            StatusCode::OK,
            &json!({"tenant": {"tenant_id": ctx.project_id()}}),
        )),
        (Method::GET, [project]) => Ok(json(
            StatusCode::OK,
            &json!({"quota": s.quota(ctx, project).await?}),
        )),
        (Method::GET, [project, "default"]) => {
            // Defaults are no secret; only a project's own (or an admin).
            s.quota(ctx, project).await?;
            let d = crate::network::model::DEFAULT_QUOTA.to_json();
            Ok(json(StatusCode::OK, &json!({"quota": d})))
        }
        (Method::GET, [project, "details"]) => Ok(json(
            StatusCode::OK,
            &json!({"quota": s.quota_details(ctx, project).await?}),
        )),
        (Method::PUT, [project]) => {
            let project = project.to_string();
            let attrs = match attrs(req, "quota").await {
                Ok(a) => a,
                Err(r) => return Ok(r),
            };
            Ok(json(
                StatusCode::OK,
                &json!({"quota": s.set_quota(ctx, &project, &attrs).await?}),
            ))
        }
        (Method::DELETE, [project]) => {
            s.reset_quota(ctx, project).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        _ => Ok(neutron_error(
            StatusCode::NOT_FOUND,
            "HTTPNotFound",
            "The resource could not be found.",
        )),
    }
}
