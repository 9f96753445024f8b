//! Nova's volume proxies (microversions 2.1 to 2.35): `/os-volumes` and
//! `/os-snapshots`, translated to the volume service and back in Nova's
//! older names (`displayName`, `availabilityZone`, ...), as Nova calls
//! Cinder.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value as Json};

use super::http::{empty, json, Body};
use super::nova_network::body;
use super::volume_attachments::volume_error;
use super::App;
use crate::context::RequestContext;
use crate::volume::model::{Snapshot, Volume};
use crate::volume::service::{CreateVolume, Source};
use crate::volume::store::ListFilter;
use crate::volume::VolumeError;

/// Handles `/os-volumes...` and `/os-snapshots...`; None for other paths.
pub async fn route(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
    rest: &[&str],
) -> Option<Response<Body>> {
    let method = req.method().clone();
    // `/os-volumes/` is a show with an empty id (the router drops empty
    // segments), not the list: Nova answers 404.
    if method == Method::GET && rest == ["os-volumes"] && req.uri().path().ends_with('/') {
        return Some(super::compute::nova_error(
            StatusCode::NOT_FOUND,
            "Volume  could not be found.",
        ));
    }
    let result = match (method, rest) {
        (Method::GET, ["os-volumes"] | ["os-volumes", "detail"]) => {
            list_volumes(app, ctx, &super::http::query_params(&req)).await
        }
        (Method::GET, ["os-volumes", id]) => app
            .volumes
            .get(ctx, id)
            .await
            .map(|v| json(StatusCode::OK, &json!({"volume": volume_view(&v)}))),
        (Method::POST, ["os-volumes"]) => match body(req, "volume").await {
            Ok(b) => create_volume(app, ctx, &b).await,
            Err(r) => return Some(r),
        },
        (Method::DELETE, ["os-volumes", id]) => app
            .volumes
            .delete(app, ctx, id, false)
            .await
            .map(|()| empty(StatusCode::ACCEPTED)),
        (Method::GET, ["os-snapshots"]) => list_snapshots(app, ctx).await,
        (Method::GET, ["os-snapshots", "detail"]) => list_snapshots(app, ctx).await,
        (Method::GET, ["os-snapshots", id]) => app
            .volumes
            .get_snapshot(ctx, id)
            .await
            .map(|s| json(StatusCode::OK, &json!({"snapshot": snapshot_view(&s)}))),
        (Method::POST, ["os-snapshots"]) => match body(req, "snapshot").await {
            Ok(b) => create_snapshot(app, ctx, &b).await,
            Err(r) => return Some(r),
        },
        (Method::DELETE, ["os-snapshots", id]) => app
            .volumes
            .delete_snapshot(app, ctx, id)
            .await
            .map(|()| empty(StatusCode::ACCEPTED)),
        _ => return None,
    };
    Some(result.unwrap_or_else(volume_error))
}

fn time(t: i64) -> String {
    super::http::iso_micros(t).replace('Z', "")
}

fn volume_view(v: &Volume) -> Json {
    let attachment = v
        .attachment
        .as_ref()
        .filter(|a| a.attached_at.is_some() && !a.server_id.is_empty())
        .map_or_else(
            || json!({}),
            |a| json!({"id": v.id, "volumeId": v.id, "serverId": a.server_id, "device": null}),
        );
    json!({
        "id": v.id, "status": v.status, "size": v.size_gib,
        "availabilityZone": v.availability_zone, "createdAt": time(v.created_at),
        "displayName": v.name, "displayDescription": v.description,
        "volumeType": v.volume_type, "snapshotId": v.snapshot_id, "metadata": v.metadata,
        "attachments": [attachment],
    })
}

fn snapshot_view(s: &Snapshot) -> Json {
    json!({
        "id": s.id, "volumeId": s.volume_id, "status": s.status, "size": s.size_gib,
        "createdAt": time(s.created_at), "displayName": s.name,
        "displayDescription": s.description,
    })
}

/// Nova's list and detail show the same fields; `offset` and `limit` page.
async fn list_volumes(
    app: &App,
    ctx: &RequestContext,
    q: &BTreeMap<String, String>,
) -> Result<Response<Body>, VolumeError> {
    let number = |key: &str| -> Result<Option<usize>, VolumeError> {
        q.get(key)
            .map(|v| {
                v.parse::<usize>().map_err(|_| {
                    VolumeError::bad_request(format!("{key} must be a non-negative integer"))
                })
            })
            .transpose()
    };
    let (offset, limit) = (number("offset")?.unwrap_or(0), number("limit")?);
    let list = app.volumes.list(ctx, false, ListFilter::default()).await?;
    let views: Vec<Json> = list
        .iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .map(volume_view)
        .collect();
    Ok(json(StatusCode::OK, &json!({ "volumes": views })))
}

async fn list_snapshots(app: &App, ctx: &RequestContext) -> Result<Response<Body>, VolumeError> {
    let list = app
        .volumes
        .list_snapshots(ctx, false, ListFilter::default(), None)
        .await?;
    let views: Vec<Json> = list.iter().map(snapshot_view).collect();
    Ok(json(StatusCode::OK, &json!({ "snapshots": views })))
}

/// An optional string field of a body (null counts as absent).
fn text(body: &Map<String, Json>, key: &str) -> Result<Option<String>, VolumeError> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if s.chars().count() <= 255 => Ok(Some(s.clone())),
        Some(_) => Err(VolumeError::bad_request(format!(
            "Invalid input for field/attribute {key}: a string of at most 255 characters"
        ))),
    }
}

async fn create_volume(
    app: &App,
    ctx: &RequestContext,
    body: &Map<String, Json>,
) -> Result<Response<Body>, VolumeError> {
    let size = match body.get("size") {
        Some(Json::Number(n)) => n.as_i64(),
        Some(Json::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    let Some(size) = size.filter(|s| *s >= 1) else {
        return Err(VolumeError::bad_request(
            "Invalid input for field/attribute size: an integer of at least 1 is required",
        ));
    };
    let metadata: BTreeMap<String, String> = match body.get("metadata") {
        None | Some(Json::Null) => BTreeMap::new(),
        Some(m) => {
            super::server_metadata::parse("metadata", m).map_err(VolumeError::bad_request)?
        }
    };
    let v = app
        .volumes
        .create(
            app,
            ctx,
            CreateVolume {
                size_gib: Some(size),
                source: text(body, "snapshot_id")?.map(Source::Snapshot),
                name: text(body, "display_name")?,
                description: text(body, "display_description")?,
                volume_type: text(body, "volume_type")?,
                availability_zone: text(body, "availability_zone")?,
                metadata,
                root_of: None,
                delete_on_termination: false,
            },
        )
        .await?;
    Ok(json(StatusCode::OK, &json!({"volume": volume_view(&v)})))
}

/// Nova's `force`: a snapshot of a volume in use.
fn force(body: &Map<String, Json>) -> Result<bool, VolumeError> {
    match body.get("force") {
        None | Some(Json::Null) => Ok(false),
        Some(v) => super::http::parse_boolean(v).ok_or_else(|| {
            VolumeError::bad_request(format!(
                "Invalid input for field/attribute force. Value: {v}. {v} is not of type 'boolean'"
            ))
        }),
    }
}

async fn create_snapshot(
    app: &App,
    ctx: &RequestContext,
    body: &Map<String, Json>,
) -> Result<Response<Body>, VolumeError> {
    let Some(volume_id) = text(body, "volume_id")? else {
        return Err(VolumeError::bad_request(
            "Invalid input for field/attribute snapshot: 'volume_id' is a required property",
        ));
    };
    let s = app
        .volumes
        .create_snapshot(
            app,
            ctx,
            &volume_id,
            text(body, "display_name")?,
            text(body, "display_description")?,
            BTreeMap::new(),
            force(body)?,
        )
        .await?;
    Ok(json(
        StatusCode::OK,
        &json!({"snapshot": snapshot_view(&s)}),
    ))
}
