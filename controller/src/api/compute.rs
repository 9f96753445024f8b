//! Nova v2.1, growing: version discovery, microversion negotiation, flavors;
//! servers, keypairs, limits and quotas live in their own modules.
//!
//! The maximum microversion is 2.1 for now: clients negotiate down to it (the
//! SDK asks for min(its maximum, ours)), and every response has exactly the 2.1
//! shape, which strict clients such as tempest check field by field.

use hyper::body::Incoming;
use hyper::header::{HeaderValue, VARY};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::http::{empty, json, read_json, Body, Microversion};
use super::App;
use crate::compute::flavors::{Flavor, Listing};
use crate::compute::service::ComputeError;
use crate::identity::Auth;
use crate::store::StoreError;

const MIN_VERSION: (u32, u32) = (2, 1);

/// The microversion negotiated for a request, in its extensions, for the
/// handlers whose answers depend on it.
#[derive(Clone, Copy, Debug)]
pub struct Negotiated(pub Microversion);

/// The request's negotiated microversion (2.1 if none was).
pub fn version_of<B>(req: &Request<B>) -> Microversion {
    req.extensions()
        .get::<Negotiated>()
        .map_or(MIN_VERSION, |v| v.0)
}
const MAX_VERSION: (u32, u32) = (2, 47);

/// Nova's error shape: `{"itemNotFound": {"code": 404, "message": "..."}}`.
pub fn nova_error(status: StatusCode, message: &str) -> Response<Body> {
    let key = match status {
        StatusCode::BAD_REQUEST => "badRequest",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "itemNotFound",
        StatusCode::METHOD_NOT_ALLOWED => "methodNotAllowed",
        StatusCode::NOT_ACCEPTABLE => "notAcceptable",
        StatusCode::CONFLICT => "conflictingRequest",
        StatusCode::PAYLOAD_TOO_LARGE => "overLimit",
        StatusCode::NOT_IMPLEMENTED => "notImplemented",
        _ => "computeFault",
    };
    json(
        status,
        &json!({ key: {"code": status.as_u16(), "message": message} }),
    )
}

fn v21(app: &App) -> Json {
    json!({
        "id": "v2.1", "status": "CURRENT",
        "version": format!("{}.{}", MAX_VERSION.0, MAX_VERSION.1),
        "min_version": format!("{}.{}", MIN_VERSION.0, MIN_VERSION.1),
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": format!("{}/compute/v2.1/", app.config.public_url)}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.compute+json;version=2.1"}],
    })
}

fn v20(app: &App) -> Json {
    json!({
        "id": "v2.0", "status": "SUPPORTED", "version": "", "min_version": "",
        "updated": "2011-01-21T11:33:21Z",
        "links": [{"rel": "self", "href": format!("{}/compute/v2/", app.config.public_url)}],
    })
}

/// The microversion asked for (`OpenStack-API-Version: compute X.Y` or the
/// legacy Nova header); None when it is outside what we serve.
fn negotiate(req: &Request<Incoming>) -> Option<(u32, u32)> {
    super::http::microversion(
        req,
        "compute",
        "x-openstack-nova-api-version",
        MIN_VERSION,
        MAX_VERSION,
    )
}

pub async fn route(app: &App, mut req: Request<Incoming>, rest: &[&str]) -> Response<Body> {
    // Discovery needs no token.
    match (req.method(), rest) {
        (&Method::GET, []) => {
            return json(StatusCode::OK, &json!({"versions": [v20(app), v21(app)]}))
        }
        (&Method::GET, ["v2.1"]) => return json(StatusCode::OK, &json!({"version": v21(app)})),
        (&Method::GET, ["v2"]) => return json(StatusCode::OK, &json!({"version": v20(app)})),
        _ => {}
    }
    let Some(version) = negotiate(&req) else {
        return nova_error(
            StatusCode::NOT_ACCEPTABLE,
            &format!(
                "Version not supported: this cloud serves compute {}.{} to {}.{}",
                MIN_VERSION.0, MIN_VERSION.1, MAX_VERSION.0, MAX_VERSION.1
            ),
        );
    };
    req.extensions_mut().insert(Negotiated(version));
    let request_id = req
        .extensions()
        .get::<super::RequestId>()
        .map(|r| r.0.clone());
    let auth = match authenticate(app, &req).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    // `/v2` is Nova's legacy endpoint: the 2.1 API without microversions.
    let Some(rest) = rest
        .strip_prefix(&["v2.1"])
        .or_else(|| rest.strip_prefix(&["v2"]))
    else {
        return nova_error(StatusCode::NOT_FOUND, "The resource could not be found.");
    };
    let mut response = match (req.method().clone(), rest) {
        (Method::GET, ["flavors"]) => list_flavors(app, &auth, &req, false).await,
        (Method::GET, ["flavors", "detail"]) => list_flavors(app, &auth, &req, true).await,
        (Method::GET, ["flavors", id]) => show_flavor(app, &auth, id).await,
        (Method::POST, ["flavors"]) => create_flavor(app, &auth, req).await,
        (Method::DELETE, ["flavors", id]) => delete_flavor(app, &auth, id).await,
        // An empty project id (`.../os-simple-tenant-usage/`) names no project.
        (Method::GET, ["os-simple-tenant-usage"]) if req.uri().path().ends_with('/') => {
            nova_error(StatusCode::NOT_FOUND, "The resource could not be found.")
        }
        (Method::GET, ["os-simple-tenant-usage"]) => {
            super::simple_tenant_usage::get(app, &auth, &req, None).await
        }
        (Method::GET, ["os-instance_usage_audit_log"]) => {
            super::usage_audit_log::get(app, &auth, None).await
        }
        (Method::GET, ["os-instance_usage_audit_log", before]) => {
            super::usage_audit_log::get(app, &auth, Some(before)).await
        }
        (Method::GET, ["os-simple-tenant-usage", project]) => {
            super::simple_tenant_usage::get(app, &auth, &req, Some(project)).await
        }
        (Method::GET, ["flavors", id, "os-flavor-access"]) => {
            super::flavor_access::list(app, &auth, id).await
        }
        (Method::POST, ["flavors", id, "action"]) => {
            super::flavor_access::action(app, &auth, req, id).await
        }
        (_, ["flavors", id, "os-extra_specs"]) => {
            super::flavor_extra_specs::route(app, &auth, req, id, None).await
        }
        (_, ["flavors", id, "os-extra_specs", key]) => {
            super::flavor_extra_specs::route(app, &auth, req, id, Some(key)).await
        }
        (_, ["flavors"] | ["flavors", _]) => {
            nova_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.")
        }
        (_, ["os-aggregates", ..]) => super::aggregates::route(app, &auth, req, rest).await,
        (_, ["os-services" | "os-hypervisors", ..]) => {
            match super::hypervisors::route(app, &auth, req, rest).await {
                Some(r) => r,
                None => nova_error(StatusCode::NOT_FOUND, "The resource could not be found."),
            }
        }
        (_, ["os-hosts", ..]) if version >= (2, 43) => {
            nova_error(StatusCode::NOT_FOUND, "The resource could not be found.")
        }
        (_, ["os-hosts", ..]) => super::os_hosts::route(app, &auth, req, rest).await,
        (_, ["os-migrations"]) => super::os_migrations::route(app, &auth, req).await,
        (_, ["extensions", ..] | ["os-availability-zone", ..]) => {
            super::compute_discovery::route(app, &auth, &req, rest).await
        }
        // The proxies and os-hosts end at 2.36 and 2.43, as in Nova.
        (
            _,
            ["os-security-groups"
            | "os-security-group-rules"
            | "os-floating-ips"
            | "os-tenant-networks"
            | "os-networks"
            | "images"
            | "os-volumes"
            | "os-snapshots", ..],
        ) if version >= (2, 36) => {
            nova_error(StatusCode::NOT_FOUND, "The resource could not be found.")
        }
        (
            _,
            ["os-security-groups"
            | "os-security-group-rules"
            | "os-floating-ips"
            | "os-tenant-networks"
            | "os-networks", ..],
        ) => {
            let ctx = crate::context::RequestContext {
                request_id: super::servers::request_id_of(&req),
                auth: auth.clone(),
            };
            match super::nova_network::route(app, &ctx, req, rest).await {
                Some(r) => r,
                None => nova_error(StatusCode::NOT_FOUND, "The resource could not be found."),
            }
        }
        (_, ["os-volumes" | "os-snapshots", ..]) => {
            let ctx = crate::context::RequestContext {
                request_id: super::servers::request_id_of(&req),
                auth: auth.clone(),
            };
            match super::nova_volumes::route(app, &ctx, req, rest).await {
                Some(r) => r,
                None => nova_error(StatusCode::NOT_FOUND, "The resource could not be found."),
            }
        }
        (_, ["images", ..]) => match super::nova_images::route(app, &auth, req, rest).await {
            Some(r) => r,
            None => nova_error(StatusCode::NOT_FOUND, "The resource could not be found."),
        },
        (_, ["os-server-groups", ..]) => {
            match super::server_groups::route(app, &auth, req, rest).await {
                Some(r) => r,
                None => nova_error(StatusCode::NOT_FOUND, "The resource could not be found."),
            }
        }
        (_, ["servers", ..]) => match super::servers::route(app, &auth, req, rest).await {
            Some(r) => r,
            None => nova_error(StatusCode::NOT_FOUND, "The resource could not be found."),
        },
        _ => match super::compute_misc::route(app, &auth, req, rest).await {
            Some(r) => r,
            None => nova_error(StatusCode::NOT_FOUND, "The resource could not be found."),
        },
    };
    let v = format!("{}.{}", version.0, version.1);
    let headers = response.headers_mut();
    if let Ok(h) = HeaderValue::from_str(&format!("compute {v}")) {
        headers.insert("openstack-api-version", h);
    }
    if let Ok(h) = HeaderValue::from_str(&v) {
        headers.insert("x-openstack-nova-api-version", h);
    }
    // Nova names the request in its own header too (the request id).
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        headers.insert("x-compute-request-id", id);
    }
    headers.insert(
        VARY,
        HeaderValue::from_static("OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
    );
    response
}

/// The caller, from a valid project-scoped token.
async fn authenticate(app: &App, req: &Request<Incoming>) -> Result<Auth, Response<Body>> {
    let token = req
        .headers()
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok());
    let auth = match token {
        Some(t) => app.identity.validate(t).await.map_err(|e| {
            tracing::error!("validating a token: {e}");
            nova_error(StatusCode::INTERNAL_SERVER_ERROR, "token validation failed")
        })?,
        None => None,
    };
    match auth {
        Some(a) if a.project.is_some() => Ok(a),
        _ => {
            let mut r = nova_error(
                StatusCode::UNAUTHORIZED,
                "The request you have made requires authentication.",
            );
            if let Ok(v) = HeaderValue::from_str(&format!(
                "Keystone uri=\"{}/identity\"",
                app.config.public_url
            )) {
                r.headers_mut().insert("www-authenticate", v);
            }
            Err(r)
        }
    }
}

/// A store failure as Nova answers it: 409 for conflicts, else a logged 500.
pub fn store_error(e: StoreError) -> Response<Body> {
    match e {
        StoreError::Conflict(m) => nova_error(StatusCode::CONFLICT, &m),
        other => {
            tracing::error!("compute: {other}");
            nova_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// A compute service error as Nova answers it.
pub fn compute_error(e: ComputeError) -> Response<Body> {
    let status = match e {
        ComputeError::Store(e) => return store_error(e),
        ComputeError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ComputeError::NotFound(_) => StatusCode::NOT_FOUND,
        ComputeError::OverQuota(_) | ComputeError::Forbidden(_) => StatusCode::FORBIDDEN,
        ComputeError::Conflict(_) => StatusCode::CONFLICT,
        ComputeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ComputeError::HostFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    nova_error(status, &e.to_string())
}

fn flavor_links(app: &App, id: &str) -> Json {
    let base = &app.config.public_url;
    json!([
        {"rel": "self", "href": format!("{base}/compute/v2.1/flavors/{id}")},
        {"rel": "bookmark", "href": format!("{base}/compute/flavors/{id}")},
    ])
}

/// A flavor at microversion 2.1: exactly these keys.
fn flavor_json(app: &App, f: &Flavor) -> Json {
    json!({
        "id": f.id,
        "name": f.name,
        "ram": f.ram_mib,
        "vcpus": f.vcpus,
        "disk": f.disk_gib,
        "swap": if f.swap_mib == 0 { json!("") } else { json!(f.swap_mib) },
        "OS-FLV-EXT-DATA:ephemeral": f.ephemeral_gib,
        "OS-FLV-DISABLED:disabled": false,
        "os-flavor-access:is_public": f.is_public,
        "rxtx_factor": 1.0,
        "links": flavor_links(app, &f.id),
    })
}

/// `GET /flavors[/detail]`: Nova's filters (`minDisk`, `minRam`, and
/// `is_public` for admins), sort (`sort_key`, `sort_dir`; flavor id
/// ascending by default) and paging (`limit`, `marker`, a `next` link when a
/// page is full).
async fn list_flavors(
    app: &App,
    auth: &Auth,
    req: &Request<Incoming>,
    detail: bool,
) -> Response<Body> {
    let q = super::http::query_params(req);
    let bad = |m: String| nova_error(StatusCode::BAD_REQUEST, &m);
    let int = |key: &str| -> Result<Option<i64>, String> {
        q.get(key)
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| format!("Invalid {key} filter [{v}]"))
            })
            .transpose()
    };
    let (min_disk, min_ram, limit) = match (int("minDisk"), int("minRam"), int("limit")) {
        (Ok(d), Ok(r), Ok(l)) => (d, r, l),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return bad(e),
    };
    // As Nova: everyone sees the public flavors and the private ones open
    // to their project; only admins choose with `is_public` (`false`: the
    // private ones, `none`: all).
    let listing = match q.get("is_public").filter(|_| auth.is_admin()) {
        None => Listing::OpenTo(auth.project_id()),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "none" => Listing::All,
            "true" | "t" | "1" | "yes" | "y" | "on" => Listing::OpenTo(auth.project_id()),
            "false" | "f" | "0" | "no" | "n" | "off" => Listing::PrivateOnly,
            _ => return bad(format!("Invalid is_public filter [{v}]")),
        },
    };
    let mut list = match app.flavors.list(listing).await {
        Ok(l) => l,
        Err(e) => return store_error(e),
    };
    list.retain(|f| {
        min_disk.is_none_or(|d| f.disk_gib >= d) && min_ram.is_none_or(|r| f.ram_mib >= r)
    });
    let key = q.get("sort_key").map(String::as_str).unwrap_or("flavorid");
    match key {
        "flavorid" | "id" => list.sort_by(|a, b| a.id.cmp(&b.id)),
        "name" => list.sort_by(|a, b| a.name.cmp(&b.name)),
        "memory_mb" => list.sort_by_key(|f| (f.ram_mib, f.id.clone())),
        "vcpus" => list.sort_by_key(|f| (f.vcpus, f.id.clone())),
        "root_gb" => list.sort_by_key(|f| (f.disk_gib, f.id.clone())),
        "ephemeral_gb" => list.sort_by_key(|f| (f.ephemeral_gib, f.id.clone())),
        "swap" => list.sort_by_key(|f| (f.swap_mib, f.id.clone())),
        other => return bad(format!("Invalid sort_key {other}")),
    }
    match q.get("sort_dir").map(String::as_str) {
        None | Some("asc") => {}
        Some("desc") => list.reverse(),
        Some(other) => return bad(format!("Invalid sort_dir {other}: asc or desc")),
    }
    if let Some(marker) = q.get("marker") {
        match list.iter().position(|f| &f.id == marker) {
            Some(i) => {
                list.drain(..=i);
            }
            None => return bad(format!("marker [{marker}] not found")),
        }
    }
    let next = match limit {
        Some(l) if list.len() > l as usize => {
            list.truncate(l as usize);
            list.last().map(|last| {
                let mut params = form_urlencoded::Serializer::new(String::new());
                for (k, v) in q.iter().filter(|(k, _)| *k != "marker") {
                    params.append_pair(k, v);
                }
                params.append_pair("marker", &last.id);
                let kind = if detail { "flavors/detail" } else { "flavors" };
                json!([{"rel": "next", "href": format!(
                    "{}/compute/v2.1/{kind}?{}", app.config.public_url, params.finish())}])
            })
        }
        _ => None,
    };
    let flavors: Vec<Json> = list
        .iter()
        .map(|f| {
            if detail {
                flavor_json(app, f)
            } else {
                json!({"id": f.id, "name": f.name, "links": flavor_links(app, &f.id)})
            }
        })
        .collect();
    let mut body = json!({ "flavors": flavors });
    if let Some(next) = next {
        body["flavors_links"] = next;
    }
    json(StatusCode::OK, &body)
}

async fn show_flavor(app: &App, auth: &Auth, id: &str) -> Response<Body> {
    match app
        .flavors
        .get_for(id, auth.project_id(), auth.is_admin())
        .await
    {
        Ok(Some(f)) => json(StatusCode::OK, &json!({"flavor": flavor_json(app, &f)})),
        Ok(None) => nova_error(
            StatusCode::NOT_FOUND,
            &format!("Flavor {id} could not be found."),
        ),
        Err(e) => store_error(e),
    }
}

/// An integer that clients may also send as a string ("1400").
fn int_field(v: &Json, key: &str, min: i64, required: bool) -> Result<i64, String> {
    let value = match v.get(key) {
        None | Some(Json::Null) if !required => return Ok(0),
        None | Some(Json::Null) => return Err(format!("'{key}' is a required property")),
        Some(Json::String(s)) if s.is_empty() && !required => return Ok(0),
        Some(Json::String(s)) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("{key}: {s:?} is not an integer"))?,
        Some(Json::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("{key}: {n} is not an integer"))?,
        Some(other) => return Err(format!("{key}: {other} is not an integer")),
    };
    if value < min {
        return Err(format!("{key}: must be at least {min}"));
    }
    Ok(value)
}

fn parse_flavor(body: &Json) -> Result<Flavor, String> {
    let f = body
        .get("flavor")
        .ok_or("'flavor' is a required property")?;
    let name = f
        .get("name")
        .and_then(Json::as_str)
        .map(str::trim)
        .filter(|n| (1..=255).contains(&n.len()))
        .ok_or("name: a string of 1 to 255 characters is required")?;
    let id = match f.get("id") {
        None | Some(Json::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Json::String(s)) if s == "auto" || s.is_empty() => uuid::Uuid::new_v4().to_string(),
        Some(Json::String(s)) if s.len() <= 255 && !s.contains('/') => s.clone(),
        Some(Json::Number(n)) => n.to_string(),
        Some(other) => return Err(format!("id: {other} is not a valid flavor id")),
    };
    let is_public = match f.get("os-flavor-access:is_public") {
        None | Some(Json::Null) => true,
        Some(Json::Bool(b)) => *b,
        Some(Json::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Json::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(other) => {
            return Err(format!(
                "os-flavor-access:is_public: {other} is not a boolean"
            ))
        }
    };
    Ok(Flavor {
        id,
        name: name.to_owned(),
        vcpus: int_field(f, "vcpus", 1, true)?,
        ram_mib: int_field(f, "ram", 1, true)?,
        disk_gib: int_field(f, "disk", 0, true)?,
        ephemeral_gib: int_field(f, "OS-FLV-EXT-DATA:ephemeral", 0, false)?,
        swap_mib: int_field(f, "swap", 0, false)?,
        is_public,
    })
}

fn forbidden() -> Response<Body> {
    nova_error(
        StatusCode::FORBIDDEN,
        "Policy doesn't allow this operation: admin only.",
    )
}

async fn create_flavor(app: &App, auth: &Auth, req: Request<Incoming>) -> Response<Body> {
    if !auth.is_admin() {
        return forbidden();
    }
    let body = match read_json(req, nova_error).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let flavor = match parse_flavor(&body) {
        Ok(f) => f,
        Err(e) => {
            return nova_error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid input for field/attribute flavor: {e}"),
            )
        }
    };
    match app.flavors.create(&flavor).await {
        Ok(()) => json(
            StatusCode::OK,
            &json!({"flavor": flavor_json(app, &flavor)}),
        ),
        Err(e) => store_error(e),
    }
}

async fn delete_flavor(app: &App, auth: &Auth, id: &str) -> Response<Body> {
    if !auth.is_admin() {
        return forbidden();
    }
    match app.flavors.delete(id).await {
        Ok(true) => empty(StatusCode::ACCEPTED),
        Ok(false) => nova_error(
            StatusCode::NOT_FOUND,
            &format!("Flavor {id} could not be found."),
        ),
        Err(e) => store_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavor_bodies() {
        let f = parse_flavor(
            &json!({"flavor": {"name": "m1.tiny", "ram": 256, "vcpus": "1",
            "disk": 1, "id": null, "swap": "", "os-flavor-access:is_public": true}}),
        )
        .unwrap();
        assert_eq!((f.ram_mib, f.vcpus, f.disk_gib, f.swap_mib), (256, 1, 1, 0));
        assert_eq!(f.id.len(), 36);
        assert_eq!(
            parse_flavor(
                &json!({"flavor": {"name": "x", "ram": 1, "vcpus": 1, "disk": 0, "id": "fixed"}})
            )
            .unwrap()
            .id,
            "fixed"
        );
        for bad in [
            json!({}),
            json!({"flavor": {"ram": 1, "vcpus": 1, "disk": 0}}),
            json!({"flavor": {"name": "", "ram": 1, "vcpus": 1, "disk": 0}}),
            json!({"flavor": {"name": "x", "ram": 0, "vcpus": 1, "disk": 0}}),
            json!({"flavor": {"name": "x", "ram": 1, "vcpus": "many", "disk": 0}}),
            json!({"flavor": {"name": "x", "ram": 1, "vcpus": 1}}),
            json!({"flavor": {"name": "x", "ram": 1, "vcpus": 1, "disk": -1}}),
            json!({"flavor": {"name": "x", "ram": 1, "vcpus": 1, "disk": 0, "id": "a/b"}}),
        ] {
            assert!(parse_flavor(&bad).is_err(), "{bad}");
        }
    }
}
