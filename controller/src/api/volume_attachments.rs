//! Nova's `os-volume_attachments`: a server's volumes, attached and
//! detached (`openstack server add/remove volume`). As in Nova, an attach
//! answers once the volume is reserved for the server (Cinder's
//! `reserved`); the volume service plugs it (`attaching`, then `in-use`),
//! and a detach answers 202 and unplugs it (`detaching`, then `available`).
//!
//! | method | path                                          | reply                        |
//! |--------|-----------------------------------------------|------------------------------|
//! | GET    | /servers/{id}/os-volume_attachments           | 200 `volumeAttachments`      |
//! | POST   | /servers/{id}/os-volume_attachments           | 200 `volumeAttachment`       |
//! | GET    | /servers/{id}/os-volume_attachments/{volume}  | 200 `volumeAttachment`       |
//! | DELETE | /servers/{id}/os-volume_attachments/{volume}  | 202                          |

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::compute::{compute_error, nova_error};
use super::http::{empty, json, read_json, Body};
use super::App;
use crate::compute::service::visible;
use crate::context::RequestContext;
use crate::volume::model::Volume;
use crate::volume::VolumeError;

/// The vm_states a volume may be attached or detached in (Nova's).
const FROM: &[&str] = &["active", "paused", "stopped", "suspended"];

fn attachment(server_id: &str, v: &Volume) -> Json {
    json!({"id": v.id, "serverId": server_id, "volumeId": v.id, "device": null})
}

/// A volume service error in Nova's shape.
pub(super) fn volume_error(e: VolumeError) -> Response<Body> {
    match e {
        VolumeError::Cinder {
            status, message, ..
        } => nova_error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            &message,
        ),
        VolumeError::Store(e) => compute_error(e.into()),
    }
}

pub async fn route(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
    id: &str,
    rest: &[String],
) -> Option<Response<Body>> {
    let server = match visible(app, ctx, id).await {
        Ok(s) => s,
        Err(e) => return Some(compute_error(e)),
    };
    let attached = |v: &Volume| v.attachment.as_ref().is_some_and(|a| a.server_id == id);
    // Nova's rule for both: no task in progress, a vm_state that allows it.
    let busy = |action: &str| {
        (server.task_state.is_some() || !FROM.contains(&server.vm_state.as_str())).then(|| {
            nova_error(
                StatusCode::CONFLICT,
                &format!(
                    "Cannot '{action}' instance {id} while it is in vm_state {}",
                    server.vm_state
                ),
            )
        })
    };
    Some(match (req.method().clone(), rest) {
        (Method::GET, []) => match app.volumes.store.of_server(id).await {
            Ok(vols) => json(
                StatusCode::OK,
                &json!({"volumeAttachments": vols.iter().map(|v| attachment(id, v)).collect::<Vec<_>>()}),
            ),
            Err(e) => compute_error(e.into()),
        },
        (Method::GET, [volume]) => match app.volumes.get(ctx, volume).await {
            Ok(v) if attached(&v) => json(
                StatusCode::OK,
                &json!({"volumeAttachment": attachment(id, &v)}),
            ),
            Ok(_) | Err(VolumeError::Cinder { status: 404, .. }) => nova_error(
                StatusCode::NOT_FOUND,
                &format!("Volume {volume} is not attached to server {id}."),
            ),
            Err(e) => volume_error(e),
        },
        (Method::POST, []) => {
            let body = match read_json(req, nova_error).await {
                Ok(b) => b,
                Err(r) => return Some(r),
            };
            let Some(volume) = body["volumeAttachment"]["volumeId"].as_str() else {
                return Some(nova_error(
                    StatusCode::BAD_REQUEST,
                    "Invalid input for field/attribute volumeAttachment: volumeId is required.",
                ));
            };
            if let Some(refused) = busy("attach_volume") {
                return Some(refused);
            }
            match app.volumes.attach(app, ctx, volume, id).await {
                Ok(v) => json(
                    StatusCode::OK,
                    &json!({"volumeAttachment": attachment(id, &v)}),
                ),
                Err(e) => volume_error(e),
            }
        }
        (Method::DELETE, [volume]) => {
            if let Some(refused) = busy("detach_volume") {
                return Some(refused);
            }
            match app.volumes.detach(app, ctx, volume, id).await {
                Ok(()) => empty(StatusCode::ACCEPTED),
                Err(e) => volume_error(e),
            }
        }
        _ => return None,
    })
}
