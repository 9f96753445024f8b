//! Cinder v3's HTTP handlers (under `/volume`): version discovery, volumes
//! (create blank or from a snapshot, a volume or an image, list, detail,
//! show, update, delete with or without its snapshots, the `os-extend` and
//! `os-set_bootable` actions and the older attach actions), the
//! attachments API (`cinder_attachments`),
//! snapshots, the default volume type, limits, availability zones and quota
//! sets.
//! The project may be in the URL (`/volume/v3/{project_id}/volumes`, what
//! most clients build) or not (3.67's form); it must be the token's.
//!
//! Microversions 3.0 to 3.44 are served (see [`MAX_VERSION`]): clients
//! change their requests by the advertised maximum, so it names nothing
//! that is not here.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value as Json};

use super::http::{empty, json, microversion, query_params, read_json, Body, Microversion};
use super::servers::request_id_of;
use super::App;
use crate::context::RequestContext;
use crate::volume::model::{Snapshot, Volume, DEFAULT_TYPE, DEFAULT_TYPE_ID};
use crate::volume::service::{CreateVolume, Source, QUOTA};
use crate::volume::store::ListFilter;
use crate::volume::VolumeError;

const MIN_VERSION: Microversion = (3, 0);
/// 3.27 and 3.44 (the attachments API and its `os-complete`) and 3.42
/// (extending a volume in use) are why; what lies between changes nothing
/// a client sends or reads here (groups, backups, clusters and messages,
/// which clients reach on their own URLs, are not served).
const MAX_VERSION: Microversion = (3, 44);
/// Extending an attached volume.
const EXTEND_IN_USE: Microversion = (3, 42);
/// `GET /volumes/summary`, and its metadata.
const SUMMARY: Microversion = (3, 12);
const SUMMARY_METADATA: Microversion = (3, 36);
/// `DELETE /volumes/{id}?force=true` (an admin's).
const FORCE_DELETE: Microversion = (3, 23);
/// The collections a URL without a project names directly.
const COLLECTIONS: &[&str] = &[
    "attachments",
    "volumes",
    "snapshots",
    "types",
    "limits",
    "os-availability-zone",
    "os-quota-sets",
];

/// Cinder's error shape: `{"<fault>": {"code", "message"}}`.
pub fn cinder_error(status: StatusCode, fault: &str, message: &str) -> Response<Body> {
    json(
        status,
        &json!({ fault: {"code": status.as_u16(), "message": message} }),
    )
}

pub(super) fn bad_request(message: &str) -> Response<Body> {
    cinder_error(StatusCode::BAD_REQUEST, "badRequest", message)
}

fn volume_error(e: VolumeError) -> Response<Body> {
    match e {
        VolumeError::Cinder {
            status,
            fault,
            message,
        } => cinder_error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            fault,
            &message,
        ),
        VolumeError::Store(e) => {
            tracing::error!("volume: {e}");
            cinder_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "computeFault",
                "The server has either erred or is incapable of performing the requested operation.",
            )
        }
    }
}

fn version_text(v: Microversion) -> String {
    format!("{}.{}", v.0, v.1)
}

fn versions(app: &App) -> Json {
    json!({"versions": [{
        "id": "v3.0", "status": "CURRENT", "version": version_text(MAX_VERSION),
        "min_version": version_text(MIN_VERSION),
        "updated": "2026-12-01T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{}/volume/v3/", app.config.public_url)}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.volume+json;version=3"}],
    }]})
}

pub async fn route(app: &App, req: Request<Incoming>, rest: &[&str]) -> Response<Body> {
    let Some(version) = microversion(
        &req,
        "volume",
        "openstack-volume-microversion",
        MIN_VERSION,
        MAX_VERSION,
    ) else {
        let asked = req
            .headers()
            .get("openstack-api-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        return cinder_error(
            StatusCode::NOT_ACCEPTABLE,
            "computeFault",
            &format!(
                "Version {asked:?} is not supported by the API. Minimum is {} and maximum is {}.",
                version_text(MIN_VERSION),
                version_text(MAX_VERSION)
            ),
        );
    };
    let mut response = route_inner(app, req, rest, version).await;
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("volume {}", version_text(version))) {
        h.insert("openstack-api-version", v);
    }
    h.insert("vary", HeaderValue::from_static("OpenStack-API-Version"));
    response
}

async fn route_inner(
    app: &App,
    req: Request<Incoming>,
    rest: &[&str],
    version: Microversion,
) -> Response<Body> {
    match (req.method(), rest) {
        (&Method::GET, [] | ["v3"]) => return json(StatusCode::OK, &versions(app)),
        (_, ["v3", ..]) => {}
        _ => {
            return cinder_error(
                StatusCode::NOT_FOUND,
                "itemNotFound",
                "The resource could not be found.",
            )
        }
    }
    let Some(auth) = app.caller(&req).await else {
        return cinder_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The request you have made requires authentication.",
        );
    };
    let ctx = RequestContext {
        request_id: request_id_of(&req),
        auth,
    };
    // `/v3/{project_id}/...` or `/v3/...`.
    let path = match &rest[1..] {
        [first, more @ ..] if !COLLECTIONS.contains(first) => {
            if *first != ctx.project_id() && !ctx.is_admin() {
                return cinder_error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "Policy doesn't allow this project's resources to be reached with this token.",
                );
            }
            more
        }
        all => all,
    };
    let base = format!("{}/volume/v3/{}", app.config.public_url, ctx.project_id());
    let method = req.method().clone();
    let result = match (method, path) {
        (Method::GET, []) => Ok(json(StatusCode::OK, &versions(app))),
        (Method::GET, ["volumes"]) => list(app, &ctx, &req, &base, false).await,
        (Method::GET, ["volumes", "detail"]) => list(app, &ctx, &req, &base, true).await,
        (Method::POST, ["volumes"]) => create(app, &ctx, req, &base).await,
        (Method::GET, ["volumes", "summary"]) if version >= SUMMARY => {
            summary(app, &ctx, &req, version).await
        }
        (Method::GET, ["volumes", id]) => app.volumes.get(&ctx, id).await.map(|v| {
            json(
                StatusCode::OK,
                &json!({"volume": v.detail(&base, ctx.is_admin())}),
            )
        }),
        (Method::PUT, ["volumes", id]) => update(app, &ctx, req, id, &base).await,
        (Method::DELETE, ["volumes", id]) => {
            let q = query_params(&req);
            let yes = |k: &str| {
                q.get(k).is_some_and(|v| {
                    matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes")
                })
            };
            let cascade = yes("cascade");
            // A force delete is an admin's; it takes nothing attached or
            // with work under way, so here it deletes what a plain one does.
            if version >= FORCE_DELETE && yes("force") && !ctx.is_admin() {
                return volume_error(VolumeError::forbidden(
                    "Policy doesn't allow volume_extension:volume_admin_actions:force_delete to be performed.",
                ));
            }
            app.volumes
                .delete(app, &ctx, id, cascade)
                .await
                .map(|()| empty(StatusCode::ACCEPTED))
        }
        (Method::GET, ["snapshots"] | ["snapshots", "detail"]) => {
            list_snapshots(app, &ctx, &req).await
        }
        (Method::POST, ["snapshots"]) => create_snapshot(app, &ctx, req).await,
        (Method::GET, ["snapshots", id]) => app
            .volumes
            .get_snapshot(&ctx, id)
            .await
            .map(|s| json(StatusCode::OK, &json!({"snapshot": s.detail()}))),
        (Method::PUT, ["snapshots", id]) => update_snapshot(app, &ctx, req, id).await,
        (Method::DELETE, ["snapshots", id]) => app
            .volumes
            .delete_snapshot(app, &ctx, id)
            .await
            .map(|()| empty(StatusCode::ACCEPTED)),
        (Method::POST, ["volumes", id, "action"]) => action(app, &ctx, req, id, version).await,
        (Method::GET, ["types"]) => Ok(json(
            StatusCode::OK,
            &json!({"volume_types": [volume_type()]}),
        )),
        (Method::GET, ["types", id]) => {
            if [DEFAULT_TYPE, DEFAULT_TYPE_ID, "default"].contains(id) {
                Ok(json(StatusCode::OK, &json!({"volume_type": volume_type()})))
            } else {
                Err(VolumeError::not_found("Volume type", id))
            }
        }
        (_, ["attachments", more @ ..]) => {
            super::cinder_attachments::route(app, &ctx, req, more, version).await
        }
        (Method::GET, ["limits"]) => limits(app, &ctx).await,
        (Method::GET, ["os-availability-zone"]) => zones(app).await,
        (Method::GET, ["os-quota-sets", project, more @ ..]) => {
            quota_set(app, &ctx, &req, project, more).await
        }
        _ => Err(VolumeError::Cinder {
            status: 404,
            fault: "itemNotFound",
            message: "The resource could not be found.".into(),
        }),
    };
    result.unwrap_or_else(volume_error)
}

fn volume_type() -> Json {
    json!({"id": DEFAULT_TYPE_ID, "name": DEFAULT_TYPE, "description": "Default Volume Type",
           "is_public": true, "os-volume-type-access:is_public": true, "extra_specs": {},
           "qos_specs_id": null})
}

/// A size as Cinder takes one: an integer, or a string of digits.
fn size_of(v: Option<&Json>) -> Option<i64> {
    match v? {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text_field(m: &Map<String, Json>, key: &str) -> Result<Option<Option<String>>, VolumeError> {
    match m.get(key) {
        None => Ok(None),
        Some(Json::Null) => Ok(Some(None)),
        Some(Json::String(s)) if s.chars().count() <= 255 => Ok(Some(Some(s.clone()))),
        Some(_) => Err(VolumeError::bad_request(format!(
            "Invalid input for field/attribute {key}: must be a string of at most 255 characters."
        ))),
    }
}

fn metadata_field(m: &Map<String, Json>) -> Result<Option<BTreeMap<String, String>>, VolumeError> {
    match m.get("metadata") {
        // openstacksdk sends null when no property was given.
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(o)) => o
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(v) if !k.is_empty() && k.len() <= 255 && v.len() <= 255 => {
                    Ok((k.clone(), v.to_owned()))
                }
                _ => Err(VolumeError::bad_request(
                    "Invalid input for field/attribute metadata: keys and values are strings of 1 to 255 characters.",
                )),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(VolumeError::bad_request(
            "Invalid input for field/attribute metadata: must be an object.",
        )),
    }
}

/// The body's `{"<key>": {...}}` object.
pub(super) async fn object(
    req: Request<Incoming>,
    key: &str,
) -> Result<Map<String, Json>, VolumeError> {
    let body = read_json(req, |_, m| bad_request(m))
        .await
        .map_err(|_| VolumeError::bad_request("Malformed request body: not JSON."))?;
    match body.get(key) {
        Some(Json::Object(m)) => Ok(m.clone()),
        _ => Err(VolumeError::bad_request(format!(
            "Missing required element '{key}' in request body."
        ))),
    }
}

async fn create(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
    base: &str,
) -> Result<Response<Body>, VolumeError> {
    let m = object(req, "volume").await?;
    for unsupported in ["backup_id", "consistencygroup_id", "group_id"] {
        if m.get(unsupported).is_some_and(|v| !v.is_null()) {
            return Err(VolumeError::bad_request(format!(
                "Invalid input received: creating a volume from {unsupported} is not supported yet; create an empty one."
            )));
        }
    }
    if m.get("multiattach").and_then(Json::as_bool) == Some(true) {
        return Err(VolumeError::bad_request(
            "Invalid input received: multiattach volumes are not supported.",
        ));
    }
    let sources = [
        text_field(&m, "snapshot_id")?
            .flatten()
            .map(Source::Snapshot),
        text_field(&m, "source_volid")?
            .flatten()
            .map(Source::Volume),
        text_field(&m, "imageRef")?.flatten().map(Source::Image),
    ];
    let mut given = sources.into_iter().flatten();
    let source = given.next();
    if given.next().is_some() {
        return Err(VolumeError::bad_request(
            "Invalid input received: a volume is made from one of a snapshot, a volume or an image, not both.",
        ));
    }
    // A volume made from something may leave its size to that.
    let size_gib = match m.get("size") {
        None | Some(Json::Null) if source.is_some() => None,
        given => Some(size_of(given).ok_or_else(|| {
            VolumeError::bad_request(format!(
                "Invalid input for field/attribute size. Value: {}. It must be an integer of at least 1.",
                given.unwrap_or(&Json::Null)
            ))
        })?),
    };
    let volume_type = match m.get("volume_type") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(VolumeError::bad_request(
                "Invalid input for field/attribute volume_type.",
            ))
        }
    };
    let availability_zone = match m.get("availability_zone") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(VolumeError::bad_request(
                "Invalid input for field/attribute availability_zone.",
            ))
        }
    };
    let v = app
        .volumes
        .create(
            app,
            ctx,
            CreateVolume {
                size_gib,
                source,
                name: text_field(&m, "name")?.flatten(),
                description: text_field(&m, "description")?.flatten(),
                volume_type,
                availability_zone,
                metadata: metadata_field(&m)?.unwrap_or_default(),
                root_of: None,
                delete_on_termination: false,
            },
        )
        .await?;
    Ok(json(
        StatusCode::ACCEPTED,
        &json!({"volume": v.created(base)}),
    ))
}

async fn list(
    app: &App,
    ctx: &RequestContext,
    req: &Request<Incoming>,
    base: &str,
    detail: bool,
) -> Result<Response<Body>, VolumeError> {
    let q = query_params(req);
    let (all, filter) = list_filter(&q);
    let mut volumes = app.volumes.list(ctx, all, filter).await?;
    if let Some(p) = q.get("project_id").filter(|_| all) {
        volumes.retain(|v| &v.project_id == p);
    }
    let volumes = page(volumes, &q, |v| &v.id)?;
    let shown: Vec<Json> = volumes
        .iter()
        .map(|v: &Volume| {
            if detail {
                v.detail(base, ctx.is_admin())
            } else {
                v.summary(base)
            }
        })
        .collect();
    Ok(json(StatusCode::OK, &json!({"volumes": shown})))
}

/// Whether a list is every project's (an admin asking), and its filters.
fn list_filter(q: &BTreeMap<String, String>) -> (bool, ListFilter) {
    let yes = |k: &str| {
        q.get(k)
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
    };
    let filter = ListFilter {
        project_id: None,
        name: q.get("name").cloned(),
        status: q.get("status").cloned(),
    };
    (yes("all_tenants") || yes("all_projects"), filter)
}

/// An update's name and description (None: not given); older clients say
/// display_name / display_description.
type Naming = (Option<Option<String>>, Option<Option<String>>);

fn naming(m: &Map<String, Json>) -> Result<Naming, VolumeError> {
    let name = match text_field(m, "name")? {
        Some(n) => Some(n),
        None => text_field(m, "display_name")?,
    };
    let description = match text_field(m, "description")? {
        Some(d) => Some(d),
        None => text_field(m, "display_description")?,
    };
    Ok((name, description))
}

/// A list as Cinder pages it: newest first; `marker` continues after the
/// item it names, `limit` caps how many.
fn page<T>(
    mut items: Vec<T>,
    q: &BTreeMap<String, String>,
    id: impl Fn(&T) -> &String,
) -> Result<Vec<T>, VolumeError> {
    items.reverse();
    if let Some(marker) = q.get("marker") {
        let Some(at) = items.iter().position(|i| id(i) == marker) else {
            return Err(VolumeError::bad_request(format!(
                "Invalid input received: marker [{marker}] not found"
            )));
        };
        items.drain(..=at);
    }
    if let Some(limit) = q.get("limit") {
        let n: usize = limit.parse().map_err(|_| {
            VolumeError::bad_request(format!(
                "Invalid input received: limit {limit:?} is not a number"
            ))
        })?;
        items.truncate(n);
    }
    Ok(items)
}

async fn list_snapshots(
    app: &App,
    ctx: &RequestContext,
    req: &Request<Incoming>,
) -> Result<Response<Body>, VolumeError> {
    let q = query_params(req);
    let (all, filter) = list_filter(&q);
    let mut snapshots = app
        .volumes
        .list_snapshots(ctx, all, filter, q.get("volume_id").map(String::as_str))
        .await?;
    if let Some(p) = q.get("project_id").filter(|_| all) {
        snapshots.retain(|s| &s.project_id == p);
    }
    let shown: Vec<Json> = page(snapshots, &q, |s| &s.id)?
        .iter()
        .map(Snapshot::detail)
        .collect();
    Ok(json(StatusCode::OK, &json!({"snapshots": shown})))
}

async fn create_snapshot(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
) -> Result<Response<Body>, VolumeError> {
    let m = object(req, "snapshot").await?;
    let Some(volume_id) = text_field(&m, "volume_id")?.flatten() else {
        return Err(VolumeError::bad_request(
            "Invalid input received: 'volume_id' must be specified",
        ));
    };
    // `force` takes a snapshot of a volume in use (before 3.66, which
    // this API does not reach, Cinder wants it said).
    let force = match m.get("force") {
        None | Some(Json::Null) => false,
        Some(v) => super::http::parse_boolean(v).ok_or_else(|| {
            VolumeError::bad_request(format!(
                "Invalid input received: force={v} is not a boolean."
            ))
        })?,
    };
    let (name, description) = naming(&m)?;
    let (name, description) = (name.flatten(), description.flatten());
    let s = app
        .volumes
        .create_snapshot(
            app,
            ctx,
            &volume_id,
            name,
            description,
            metadata_field(&m)?.unwrap_or_default(),
            force,
        )
        .await?;
    Ok(json(StatusCode::ACCEPTED, &json!({"snapshot": s.detail()})))
}

async fn update_snapshot(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, VolumeError> {
    let m = object(req, "snapshot").await?;
    let (name, description) = naming(&m)?;
    let s = app
        .volumes
        .update_snapshot(ctx, id, name, description, metadata_field(&m)?)
        .await?;
    Ok(json(StatusCode::OK, &json!({"snapshot": s.detail()})))
}

async fn update(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
    id: &str,
    base: &str,
) -> Result<Response<Body>, VolumeError> {
    let m = object(req, "volume").await?;
    let (name, description) = naming(&m)?;
    let v = app
        .volumes
        .update(ctx, id, name, description, metadata_field(&m)?)
        .await?;
    Ok(json(StatusCode::OK, &json!({"volume": v.created(base)})))
}

async fn action(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
    id: &str,
    version: Microversion,
) -> Result<Response<Body>, VolumeError> {
    let body = read_json(req, |_, m| bad_request(m))
        .await
        .map_err(|_| VolumeError::bad_request("Malformed request body: not JSON."))?;
    let Some((name, args)) = body.as_object().and_then(|o| o.iter().next()) else {
        return Err(VolumeError::bad_request(
            "Malformed request body: no action.",
        ));
    };
    match name.as_str() {
        "os-extend" => {
            let new_size = size_of(args.get("new_size")).ok_or_else(|| {
                VolumeError::bad_request(
                    "Invalid input for field/attribute new_size: must be an integer.",
                )
            })?;
            app.volumes
                .extend(app, ctx, id, new_size, version >= EXTEND_IN_USE)
                .await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        "os-set_bootable" => {
            let bootable = match args.get("bootable") {
                Some(Json::Bool(b)) => *b,
                Some(Json::String(s)) if s.eq_ignore_ascii_case("true") => true,
                Some(Json::String(s)) if s.eq_ignore_ascii_case("false") => false,
                _ => {
                    return Err(VolumeError::bad_request(
                        "Invalid input received: bootable must be a boolean.",
                    ))
                }
            };
            app.volumes.set_bootable(ctx, id, bootable).await?;
            Ok(empty(StatusCode::OK))
        }
        // The older attach flow, for attachers other than our compute
        // service (see `volume::attachments`).
        "os-reserve" => {
            app.volumes.legacy_reserve(ctx, id).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        "os-unreserve" => {
            app.volumes.legacy_unreserve(ctx, id).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        "os-attach" => {
            let m = args.as_object().cloned().unwrap_or_default();
            let field = |key: &str| match m.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::String(s)) if !s.is_empty() && s.len() <= 255 => Ok(Some(s.clone())),
                Some(_) => Err(VolumeError::bad_request(format!(
                    "Invalid input for field/attribute {key}: must be a string."
                ))),
            };
            let (instance, host) = (field("instance_uuid")?, field("host_name")?);
            if instance.is_none() && host.is_none() {
                return Err(VolumeError::bad_request(
                    "Invalid request to attach volume to an invalid target",
                ));
            }
            let mode = super::cinder_attachments::mode(&m)?;
            app.volumes
                .legacy_attach(ctx, id, instance.as_deref(), host.as_deref(), mode)
                .await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        "os-detach" => {
            app.volumes.legacy_detach(ctx, id).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        "os-begin_detaching" | "os-roll_detaching" => {
            app.volumes
                .legacy_detaching(ctx, id, name == "os-begin_detaching")
                .await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        "os-initialize_connection" => {
            let Some(connector) = args.get("connector").filter(|c| c.is_object()) else {
                return Err(VolumeError::bad_request(
                    "Invalid input received: os-initialize_connection needs a connector.",
                ));
            };
            let info = app
                .volumes
                .legacy_initialize_connection(app, ctx, id, connector)
                .await?;
            Ok(json(StatusCode::OK, &json!({ "connection_info": info })))
        }
        // Nothing to tear down: the file stays where it is.
        "os-terminate_connection" => {
            app.volumes.get(ctx, id).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        other => Err(VolumeError::bad_request(format!(
            "There is no such action: {other}"
        ))),
    }
}

/// `volumes/summary` (3.12): how many volumes of how many GiB the caller
/// sees, and (3.36) every metadata key with the values it has.
async fn summary(
    app: &App,
    ctx: &RequestContext,
    req: &Request<Incoming>,
    version: Microversion,
) -> Result<Response<Body>, VolumeError> {
    let (all, filter) = list_filter(&query_params(req));
    let volumes = app.volumes.list(ctx, all, filter).await?;
    let mut summary = json!({
        "total_size": volumes.iter().map(|v| v.size_gib).sum::<i64>(),
        "total_count": volumes.len(),
    });
    if version >= SUMMARY_METADATA {
        let mut metadata = BTreeMap::<&str, Vec<&str>>::new();
        for (k, v) in volumes.iter().flat_map(|v| &v.metadata) {
            let values = metadata.entry(k).or_default();
            if !values.contains(&v.as_str()) {
                values.push(v);
            }
        }
        summary["metadata"] = json!(metadata);
    }
    Ok(json(StatusCode::OK, &json!({ "volume-summary": summary })))
}

async fn limits(app: &App, ctx: &RequestContext) -> Result<Response<Body>, VolumeError> {
    let used = app.volumes.store.usage(ctx.project_id()).await?;
    Ok(json(
        StatusCode::OK,
        &json!({"limits": {"rate": [], "absolute": {
            "maxTotalVolumes": QUOTA.volumes, "maxTotalVolumeGigabytes": QUOTA.gigabytes,
            "maxTotalSnapshots": QUOTA.snapshots, "maxTotalBackups": 0, "maxTotalBackupGigabytes": 0,
            "totalVolumesUsed": used.volumes, "totalGigabytesUsed": used.gigabytes,
            "totalSnapshotsUsed": used.snapshots, "totalBackupsUsed": 0, "totalBackupGigabytesUsed": 0,
        }}}),
    ))
}

async fn zones(app: &App) -> Result<Response<Body>, VolumeError> {
    let mut names: Vec<String> = app
        .volumes
        .live_hosts(app)
        .await?
        .into_iter()
        .map(|h| h.availability_zone)
        .collect();
    names.sort();
    names.dedup();
    let info: Vec<Json> = names
        .iter()
        .map(|z| json!({"zoneName": z, "zoneState": {"available": true}}))
        .collect();
    Ok(json(StatusCode::OK, &json!({"availabilityZoneInfo": info})))
}

/// `os-quota-sets/{project}` (and `/defaults`): every project has the same
/// quota for now; `?usage=true` adds what it uses.
async fn quota_set(
    app: &App,
    ctx: &RequestContext,
    req: &Request<Incoming>,
    project: &str,
    more: &[&str],
) -> Result<Response<Body>, VolumeError> {
    if project != ctx.project_id() && !ctx.is_admin() {
        return Err(VolumeError::forbidden(
            "Policy doesn't allow volume_extension:quotas:show to be performed.",
        ));
    }
    let usage = more.is_empty()
        && query_params(req)
            .get("usage")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let used = app.volumes.store.usage(project).await?;
    let item = |limit: i64, in_use: i64| {
        if usage {
            json!({"limit": limit, "in_use": in_use, "reserved": 0, "allocated": 0})
        } else {
            json!(limit)
        }
    };
    Ok(json(
        StatusCode::OK,
        &json!({"quota_set": {
            "id": project,
            "volumes": item(QUOTA.volumes, used.volumes),
            "gigabytes": item(QUOTA.gigabytes, used.gigabytes),
            "snapshots": item(QUOTA.snapshots, used.snapshots),
            "backups": item(0, 0),
            "backup_gigabytes": item(0, 0),
            "groups": item(0, 0),
            "per_volume_gigabytes": item(-1, 0),
            format!("volumes_{DEFAULT_TYPE}"): item(-1, used.volumes),
            format!("gigabytes_{DEFAULT_TYPE}"): item(-1, used.gigabytes),
            format!("snapshots_{DEFAULT_TYPE}"): item(-1, used.snapshots),
        }}),
    ))
}
