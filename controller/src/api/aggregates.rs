//! Nova's `os-aggregates` (admin only, as in Nova): list, create, show,
//! update, delete, and the `add_host`, `remove_host` and `set_metadata`
//! actions, in Nova's shapes (integer ids; `uuid` from 2.41) and errors.
//! `openstack aggregate create --zone Z`, `aggregate add host`, `aggregate
//! set --property` and the rest work against it; the logic is
//! [`crate::compute::aggregates`].

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value as Json};

use super::compute::{nova_error, store_error, version_of};
use super::http::{empty, iso_micros, json, read_json, Body};
use super::App;
use crate::compute::aggregates::{Aggregate, AggregateError, AZ_KEY};
use crate::identity::{now, Auth};

/// Nova's limit on names, zones, metadata keys and values.
const MAX_LEN: usize = 255;

/// Handles `/os-aggregates...`.
pub async fn route(
    app: &App,
    auth: &Auth,
    req: Request<Incoming>,
    rest: &[&str],
) -> Response<Body> {
    if !auth.is_admin() {
        return nova_error(
            StatusCode::FORBIDDEN,
            "Policy doesn't allow os_compute_api:os-aggregates to be performed.",
        );
    }
    let with_uuid = version_of(&req) >= (2, 41);
    let aggs = &app.aggregates;
    let id = |s: &str| s.parse::<i64>().ok().filter(|n| *n > 0);
    let result = match (req.method().clone(), rest) {
        (Method::GET, ["os-aggregates"]) => match aggs.list().await {
            Ok(all) => {
                let all: Vec<Json> = all.iter().map(|a| view(a, with_uuid)).collect();
                return json(StatusCode::OK, &json!({ "aggregates": all }));
            }
            Err(e) => Err(AggregateError::Store(e)),
        },
        (Method::POST, ["os-aggregates"]) => {
            let body = match body(req, "aggregate").await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let (name, zone) = match (
                text(&body, "name"),
                optional_text(&body, "availability_zone"),
            ) {
                (Ok(Some(n)), Ok(z)) => (n, z.flatten()),
                (Ok(None), _) => return bad(
                    "Invalid input for field/attribute aggregate: 'name' is a required property",
                ),
                (Err(e), _) | (_, Err(e)) => return bad(&e),
            };
            if let Some(k) = body
                .keys()
                .find(|k| !["name", "availability_zone"].contains(&k.as_str()))
            {
                return bad(&format!(
                    "Additional properties are not allowed ('{k}' was unexpected)"
                ));
            }
            match aggs.create(&name, zone.as_deref(), now()).await {
                // Created: without hosts and metadata, as Nova answers.
                Ok(a) => {
                    let mut v = view(&a, with_uuid);
                    if let Some(o) = v.as_object_mut() {
                        o.remove("hosts");
                        o.remove("metadata");
                    }
                    return json(StatusCode::OK, &json!({ "aggregate": v }));
                }
                Err(e) => Err(e),
            }
        }
        (Method::GET, ["os-aggregates", n]) => match id(n) {
            Some(n) => aggs.get(n).await,
            None => return not_found(n),
        },
        (Method::PUT, ["os-aggregates", n]) => {
            let Some(n) = id(n) else { return not_found(n) };
            let body = match body(req, "aggregate").await {
                Ok(b) => b,
                Err(r) => return r,
            };
            if body.is_empty() {
                return bad("Invalid input for field/attribute aggregate: {} does not have enough properties");
            }
            if let Some(k) = body
                .keys()
                .find(|k| !["name", "availability_zone"].contains(&k.as_str()))
            {
                return bad(&format!(
                    "Additional properties are not allowed ('{k}' was unexpected)"
                ));
            }
            let (name, zone) = match (
                text(&body, "name"),
                optional_text(&body, "availability_zone"),
            ) {
                (Ok(n), Ok(z)) => (n, z),
                (Err(e), _) | (_, Err(e)) => return bad(&e),
            };
            aggs.update(
                n,
                name.as_deref(),
                zone.as_ref().map(|z| z.as_deref()),
                now(),
            )
            .await
        }
        (Method::DELETE, ["os-aggregates", n]) => match id(n) {
            Some(n) => match aggs.delete(n).await {
                // Nova answers 200 with no body at all.
                Ok(()) => return empty(StatusCode::OK),
                Err(e) => Err(e),
            },
            None => return not_found(n),
        },
        (Method::POST, ["os-aggregates", n, "action"]) => {
            let Some(n) = id(n) else { return not_found(n) };
            let body: Json = match read_json(req, nova_error).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match body.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next()) {
                Some((action, Json::Object(args))) if action == "add_host" || action == "remove_host" => {
                    let host = match text(args, "host") {
                        Ok(Some(h)) => h,
                        Ok(None) => return bad(&format!("Invalid input for field/attribute {action}: 'host' is a required property")),
                        Err(e) => return bad(&e),
                    };
                    if action == "add_host" {
                        aggs.add_host(n, &host, now()).await
                    } else {
                        aggs.remove_host(n, &host, now()).await
                    }
                }
                Some((action, Json::Object(args))) if action == "set_metadata" => {
                    match metadata(args) {
                        Ok(m) => aggs.set_metadata(n, &m, now()).await,
                        Err(e) => return bad(&e),
                    }
                }
                _ => return bad("Invalid input for field/attribute action: one of add_host, remove_host or set_metadata, with its arguments"),
            }
        }
        _ => return nova_error(StatusCode::NOT_FOUND, "The resource could not be found."),
    };
    match result {
        Ok(a) => json(StatusCode::OK, &json!({ "aggregate": view(&a, with_uuid) })),
        Err(e) => aggregate_error(e),
    }
}

/// An aggregate as Nova shows it (its zone also among its metadata).
fn view(a: &Aggregate, with_uuid: bool) -> Json {
    let mut v = json!({
        "id": a.id,
        "name": a.name,
        "availability_zone": a.availability_zone(),
        "hosts": a.hosts,
        "metadata": a.metadata,
        "created_at": iso_micros(a.created_at),
        "updated_at": a.updated_at.map(iso_micros),
        "deleted": false,
        "deleted_at": null,
    });
    if with_uuid {
        v["uuid"] = json!(a.uuid);
    }
    v
}

fn aggregate_error(e: AggregateError) -> Response<Body> {
    use AggregateError as E;
    let status = match e {
        E::Store(e) => return store_error(e),
        E::NotFound(_) | E::NoSuchHost(_) | E::HostNotFound { .. } => StatusCode::NOT_FOUND,
        E::NameExists(_) | E::HostExists { .. } | E::HostInOtherZone { .. } => StatusCode::CONFLICT,
        E::ZoneConflict { .. } | E::NotEmpty(_) => StatusCode::BAD_REQUEST,
    };
    nova_error(status, &e.to_string())
}

fn bad(message: &str) -> Response<Body> {
    nova_error(StatusCode::BAD_REQUEST, message)
}

fn not_found(id: &str) -> Response<Body> {
    nova_error(
        StatusCode::NOT_FOUND,
        &format!("Aggregate {id} could not be found."),
    )
}

/// The object under `key` in the request's JSON body.
async fn body(req: Request<Incoming>, key: &str) -> Result<Map<String, Json>, Response<Body>> {
    let body: Json = read_json(req, nova_error).await?;
    match body.get(key) {
        Some(Json::Object(m)) => Ok(m.clone()),
        _ => Err(bad(&format!(
            "Invalid input for field/attribute {key}: '{key}' is a required property"
        ))),
    }
}

/// A string field of 1 to 255 characters without surrounding blanks (Nova's
/// `name` type); None when absent.
fn text(m: &Map<String, Json>, field: &str) -> Result<Option<String>, String> {
    match m.get(field) {
        None => Ok(None),
        Some(Json::String(s)) if (1..=MAX_LEN).contains(&s.chars().count()) && s.trim() == s => {
            Ok(Some(s.clone()))
        }
        Some(other) => Err(format!(
            "Invalid input for field/attribute {field}. Value: {other}. A string of 1 to {MAX_LEN} characters without leading or trailing blanks is expected"
        )),
    }
}

/// Like [`text`], where null is a value too (the zone removed).
fn optional_text(m: &Map<String, Json>, field: &str) -> Result<Option<Option<String>>, String> {
    match m.get(field) {
        Some(Json::Null) => Ok(Some(None)),
        _ => text(m, field).map(|t| t.map(Some)),
    }
}

/// `set_metadata`'s `{"metadata": {key: value or null}}`.
fn metadata(args: &Map<String, Json>) -> Result<BTreeMap<String, Option<String>>, String> {
    let Some(Json::Object(m)) = args.get("metadata") else {
        return Err(
            "Invalid input for field/attribute set_metadata: 'metadata' is a required property"
                .into(),
        );
    };
    let mut out = BTreeMap::new();
    for (k, v) in m {
        if k.is_empty() || k.chars().count() > MAX_LEN {
            return Err(format!(
                "Invalid input for field/attribute metadata: key {k:?} is not 1 to {MAX_LEN} characters"
            ));
        }
        let v = match v {
            Json::Null => None,
            Json::String(s) if s.chars().count() <= MAX_LEN => Some(s.clone()),
            other => {
                return Err(format!(
                    "Invalid input for field/attribute metadata: {k}={other} is not a string of at most {MAX_LEN} characters or null"
                ))
            }
        };
        if k == AZ_KEY && v.as_deref() == Some("") {
            return Err(
                "Invalid input for field/attribute metadata: an empty availability_zone".into(),
            );
        }
        out.insert(k.clone(), v);
    }
    Ok(out)
}
