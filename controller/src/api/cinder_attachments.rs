//! Cinder's attachments API (microversion 3.27 on; `os-complete` from
//! 3.44), for attachers other than our compute service (see
//! `volume::attachments`).
//!
//! | method | path                          | reply                                   |
//! |--------|-------------------------------|-----------------------------------------|
//! | GET    | /attachments[/detail]         | 200 `attachments` (summary or detail)   |
//! | GET    | /attachments/{id}             | 200 `attachment`                        |
//! | POST   | /attachments                  | 200 `attachment` (`connection_info` with a connector) |
//! | PUT    | /attachments/{id}             | 200 `attachment` with `connection_info` |
//! | POST   | /attachments/{id}/action      | 204 (`os-complete`)                     |
//! | DELETE | /attachments/{id}             | 200 `attachments` (the volume's others: none) |

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value as Json};

use super::http::{empty, json, query_params, Body, Microversion};
use super::volume::object;
use super::App;
use crate::context::RequestContext;
use crate::volume::attachments::{attachment_view, Mode};
use crate::volume::VolumeError;

/// Where the attachments API begins, and `os-complete`.
const ATTACHMENTS: Microversion = (3, 27);
const COMPLETE: Microversion = (3, 44);

fn no_such_method() -> VolumeError {
    VolumeError::Cinder {
        status: 404,
        fault: "itemNotFound",
        message: "The resource could not be found.".into(),
    }
}

fn text<'a>(m: &'a Map<String, Json>, key: &str) -> Result<Option<&'a str>, VolumeError> {
    match m.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if !s.is_empty() && s.len() <= 255 => Ok(Some(s)),
        Some(_) => Err(VolumeError::bad_request(format!(
            "Invalid input for field/attribute {key}: must be a non-empty string."
        ))),
    }
}

/// A connector, when given: an object.
fn connector(m: &Map<String, Json>) -> Result<Option<&Json>, VolumeError> {
    match m.get("connector") {
        None | Some(Json::Null) => Ok(None),
        Some(c @ Json::Object(_)) => Ok(Some(c)),
        Some(_) => Err(VolumeError::bad_request(
            "Invalid input for field/attribute connector: must be an object.",
        )),
    }
}

/// `mode` (`rw` unless `ro` is asked).
pub fn mode(m: &Map<String, Json>) -> Result<Mode, VolumeError> {
    match text(m, "mode")? {
        None => Ok(Mode::ReadWrite),
        Some(s) => Mode::parse(s).ok_or_else(|| {
            VolumeError::bad_request(format!(
                "Invalid input received: mode {s:?} is neither \"rw\" nor \"ro\"."
            ))
        }),
    }
}

/// The attachments API's routes under `/v3[/{project}]/attachments`.
pub async fn route(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
    rest: &[&str],
    version: Microversion,
) -> Result<Response<Body>, VolumeError> {
    if version < ATTACHMENTS {
        return Err(no_such_method());
    }
    let volumes = &app.volumes;
    match (req.method().clone(), rest) {
        (Method::GET, [] | ["detail"]) => {
            let detail = rest == ["detail"];
            let q = query_params(&req);
            let all = q
                .get("all_tenants")
                .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
            let shown: Vec<Json> = volumes
                .attachments(ctx, all)
                .await?
                .iter()
                .filter(|v| q.get("volume_id").is_none_or(|id| *id == v.id))
                .filter(|v| {
                    q.get("instance_id")
                        .is_none_or(|i| v.attachment.as_ref().is_some_and(|a| a.server_id == *i))
                })
                .map(|v| attachment_view(v, detail, None))
                .collect();
            Ok(json(StatusCode::OK, &json!({ "attachments": shown })))
        }
        (Method::GET, [id]) => {
            let v = volumes.attachment(ctx, id).await?;
            Ok(json(
                StatusCode::OK,
                &json!({"attachment": attachment_view(&v, true, None)}),
            ))
        }
        (Method::POST, []) => {
            let m = object(req, "attachment").await?;
            let Some(volume_id) = text(&m, "volume_uuid")? else {
                return Err(VolumeError::bad_request(
                    "Invalid input received: Must specify 'volume_uuid' to create attachment.",
                ));
            };
            let instance = text(&m, "instance_uuid")?.unwrap_or_default();
            let (v, info) = volumes
                .create_attachment(app, ctx, volume_id, instance, connector(&m)?, mode(&m)?)
                .await?;
            Ok(json(
                StatusCode::OK,
                &json!({"attachment": attachment_view(&v, true, info)}),
            ))
        }
        (Method::PUT, [id]) => {
            let m = object(req, "attachment").await?;
            let Some(c) = connector(&m)? else {
                return Err(VolumeError::bad_request(
                    "Invalid input received: an attachment update needs a connector.",
                ));
            };
            let (v, info) = volumes.connect_attachment(app, ctx, id, c).await?;
            Ok(json(
                StatusCode::OK,
                &json!({"attachment": attachment_view(&v, true, info)}),
            ))
        }
        (Method::POST, [id, "action"]) => {
            let body = super::http::read_json(req, |_, m| super::volume::bad_request(m))
                .await
                .map_err(|_| VolumeError::bad_request("Malformed request body: not JSON."))?;
            match body.as_object().and_then(|o| o.keys().next()) {
                Some(a) if a == "os-complete" && version >= COMPLETE => {
                    volumes.complete_attachment(ctx, id).await?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                Some(a) => Err(VolumeError::bad_request(format!(
                    "There is no such action: {a}"
                ))),
                None => Err(VolumeError::bad_request(
                    "Malformed request body: no action.",
                )),
            }
        }
        (Method::DELETE, [id]) => {
            volumes.delete_attachment(ctx, id).await?;
            Ok(json(StatusCode::OK, &json!({"attachments": []})))
        }
        _ => Err(no_such_method()),
    }
}
