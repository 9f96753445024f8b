//! The internal API hostd talks to: `PUT /internal/v1/hosts/{host_id}` with a
//! heartbeat registers or refreshes a host; `GET /internal/v1/hosts` lists them;
//! `GET /internal/v1/images/{id}/raw` streams the raw bytes a VMM boots (the
//! raw conversion of a qcow2 image), which hostd caches: as a sparse stream
//! (its data, not its holes) to a host that accepts one;
//! `PUT /internal/v1/images/{id}/file` takes a snapshot's data from the
//! host of its server (plain, or a sparse stream);
//! `PUT /internal/v1/storage-hosts/{host_id}` registers or refreshes a
//! storage host's storaged (where its API is, its free space);
//! `PUT /internal/v1/hosts/{host_id}/network` takes a netd's report and
//! answers with the networks its host must carry;
//! `GET /internal/v1/hosts/{host_id}/ports/{port_id}/metadata` gives the
//! metadata service there what the guest behind a port is told (its config
//! drive's contents); `GET /internal/v1/ec2-credentials/{access}` gives a
//! storage host's storaged the one S3 credential a request names. All need a host's
//! token (derived from the controller's hostd secret) as a bearer token; a
//! host registers and refreshes only itself.
//!
//! For operators (an admin's X-Auth-Token): `GET /internal/v1/reconcilers`
//! shows the background tasks (period, runs, last outcome), and
//! `POST /internal/v1/reconcilers/NAME/run` runs one now and answers with its
//! status once that run finished (at most a minute).

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::http::{empty, json, keystone_error, read_json, stream_file, Body};
use super::App;
use crate::background::TriggerError;
use hostd_proto::Heartbeat;
use virga_imagefile::Encoding;

/// The host whose token the request carries, if it is one.
fn caller(app: &App, req: &Request<Incoming>) -> Option<String> {
    let secret = app.config.hostd_secret.as_deref()?;
    let token = req
        .headers()
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    hostd_proto::token::host_of(secret, token).map(str::to_owned)
}

/// Refuses a host that is not a registered storage host (what only
/// storaged may ask); None for one that is.
async fn storage_host_only(app: &App, host: &str) -> Option<Response<Body>> {
    match app.volumes.store.storage_host(host).await {
        Ok(Some(_)) => None,
        Ok(None) => Some(keystone_error(
            StatusCode::FORBIDDEN,
            &format!("{host} is not a registered storage host"),
        )),
        Err(e) => {
            tracing::error!("storage host lookup: {e}");
            Some(keystone_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store error",
            ))
        }
    }
}

/// The credential behind an S3 access key, for the storaged that verifies
/// a request signed with it (a registered storage host only): its secret,
/// user and project, while its user may still act in that project; 404
/// otherwise.
async fn ec2_signer(app: &App, host: &str, access: &str) -> Response<Body> {
    if let Some(refused) = storage_host_only(app, host).await {
        return refused;
    }
    match app.identity.ec2_signer(access).await {
        Ok(Some(c)) => json(
            StatusCode::OK,
            &storaged_proto::Ec2Signer {
                access: c.access,
                secret: c.secret,
                user_id: c.user_id,
                project_id: c.project_id,
            },
        ),
        Ok(None) => keystone_error(
            StatusCode::NOT_FOUND,
            &format!("no usable credential {access}"),
        ),
        Err(e) => {
            tracing::error!("ec2 credential lookup: {e}");
            keystone_error(StatusCode::INTERNAL_SERVER_ERROR, "store error")
        }
    }
}

/// Who a Keystone token (in `X-Subject-Token`) speaks for, for the
/// storaged whose Swift API it was sent to (a registered storage host
/// only): its project, user and roles, and until when; 404 for a token
/// that is not valid or not scoped to a project.
async fn token_owner(app: &App, req: &Request<Incoming>, host: &str) -> Response<Body> {
    if let Some(refused) = storage_host_only(app, host).await {
        return refused;
    }
    let Some(token) = req
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
    else {
        return keystone_error(
            StatusCode::BAD_REQUEST,
            "X-Subject-Token: the token to look up",
        );
    };
    match app.identity.validate(token).await {
        Ok(Some(auth)) => match &auth.project {
            Some((project, _)) => json(
                StatusCode::OK,
                &storaged_proto::TokenOwner {
                    project_id: project.id.clone(),
                    user_id: auth.user.id.clone(),
                    roles: auth.roles.iter().map(|r| r.name.clone()).collect(),
                    expires_at: auth.expires_at,
                },
            ),
            None => keystone_error(
                StatusCode::NOT_FOUND,
                "the token is not scoped to a project",
            ),
        },
        Ok(None) => keystone_error(StatusCode::NOT_FOUND, "no such token"),
        Err(e) => {
            tracing::error!("token lookup: {e}");
            keystone_error(StatusCode::INTERNAL_SERVER_ERROR, "identity error")
        }
    }
}

/// How long a triggered reconciler run may take before the request gives up
/// waiting (the run goes on).
const TRIGGER_WAIT: Duration = Duration::from_secs(60);

pub async fn route(app: &App, req: Request<Incoming>, rest: &[&str]) -> Response<Body> {
    if let ["v1", "reconcilers", more @ ..] = rest {
        return reconcilers(app, req, more).await;
    }
    let Some(host) = caller(app, &req) else {
        return keystone_error(StatusCode::UNAUTHORIZED, "missing or wrong hostd token");
    };
    match (req.method().clone(), rest) {
        (Method::PUT, ["v1", "hosts", id]) => {
            let id = id.to_string();
            if id != host {
                return keystone_error(
                    StatusCode::FORBIDDEN,
                    &format!("the token is host {host}'s, not {id}'s"),
                );
            }
            let value = match read_json(req, keystone_error).await {
                Ok(v) => v,
                Err(r) => return r,
            };
            let beat: Heartbeat = match serde_json::from_value(value) {
                Ok(b) => b,
                Err(e) => {
                    return keystone_error(StatusCode::BAD_REQUEST, &format!("heartbeat: {e}"))
                }
            };
            if beat.host_id != id {
                return keystone_error(StatusCode::BAD_REQUEST, "host_id does not match the path");
            }
            match app.hosts.heartbeat(&beat).await {
                Ok(()) => empty(StatusCode::NO_CONTENT),
                Err(e) => {
                    tracing::error!("recording a heartbeat: {e}");
                    keystone_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "could not record the heartbeat",
                    )
                }
            }
        }
        (Method::PUT, ["v1", "storage-hosts", id]) => {
            if *id != host {
                return keystone_error(
                    StatusCode::FORBIDDEN,
                    &format!("the token is host {host}'s, not {id}'s"),
                );
            }
            storage_heartbeat(app, req, &host).await
        }
        (Method::GET, ["v1", "ec2-credentials", access]) => ec2_signer(app, &host, access).await,
        (Method::GET, ["v1", "token-owner"]) => token_owner(app, &req, &host).await,
        (Method::PUT, ["v1", "hosts", id, "network"]) => {
            if *id != host {
                return keystone_error(
                    StatusCode::FORBIDDEN,
                    &format!("the token is host {host}'s, not {id}'s"),
                );
            }
            network_sync(app, req, &host).await
        }
        (Method::GET, ["v1", "hosts", id, "ports", port, "metadata"]) => {
            if *id != host {
                return keystone_error(
                    StatusCode::FORBIDDEN,
                    &format!("the token is host {host}'s, not {id}'s"),
                );
            }
            match crate::compute::service::metadata::for_port(app, &host, port).await {
                Ok(Some(drive)) => json(StatusCode::OK, &drive),
                Ok(None) => keystone_error(
                    StatusCode::NOT_FOUND,
                    &format!("no server's port {port} on host {host}"),
                ),
                Err(e) => {
                    tracing::error!(host, port, "guest metadata: {e}");
                    keystone_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "could not read the guest's metadata",
                    )
                }
            }
        }
        (Method::GET, ["v1", "hosts"]) => match app.hosts.list().await {
            Ok(hosts) => {
                let now = crate::identity::now();
                let list: Vec<_> = hosts
                    .iter()
                    .map(|h| {
                        let mut v = serde_json::to_value(&h.report).unwrap_or_default();
                        v["enabled"] = json!(h.enabled);
                        v["seconds_since_heartbeat"] = json!(now - h.last_seen);
                        v
                    })
                    .collect();
                json(StatusCode::OK, &json!({ "hosts": list }))
            }
            Err(e) => {
                tracing::error!("listing hosts: {e}");
                keystone_error(StatusCode::INTERNAL_SERVER_ERROR, "could not list hosts")
            }
        },
        (Method::GET, ["v1", "images", id, "raw"]) => {
            let sparse = accepts_sparse(&req);
            raw_image(app, id, sparse).await
        }
        // A server snapshot's data, from the host the server is on.
        (Method::PUT, ["v1", "images", id, "file"]) => {
            let id = id.to_string();
            let sparse = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|t| t.to_str().ok())
                .is_some_and(hostd_proto::sparse::is_media_type);
            let encoding = if sparse {
                Encoding::Sparse
            } else {
                Encoding::Plain
            };
            let body = req.into_body();
            match crate::image::service::receive_snapshot(app, &host, &id, body, encoding).await {
                Ok(()) => empty(StatusCode::NO_CONTENT),
                Err(e) => super::image::image_error(e),
            }
        }
        _ => keystone_error(StatusCode::NOT_FOUND, "The resource could not be found."),
    }
}

/// A netd's report in, its host's networks out.
async fn network_sync(app: &App, req: Request<Incoming>, host: &str) -> Response<Body> {
    let value = match read_json(req, keystone_error).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let report: netd_proto::Report = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => return keystone_error(StatusCode::BAD_REQUEST, &format!("report: {e}")),
    };
    match app.network.agent_sync(host, &report).await {
        Ok(state) => json(StatusCode::OK, &state),
        Err(e) => {
            tracing::error!(host, "a netd report: {e}");
            keystone_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not read the host's networks",
            )
        }
    }
}

/// Whether the request's `Accept` names a sparse stream.
fn accepts_sparse(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(hostd_proto::sparse::is_media_type)
}

/// The raw image a VMM boots; as a sparse stream to hosts that ask for one.
/// One a storage host holds is fetched from there: a redirect with a
/// ticket (hosts ask for sparse streams, all storaged serves).
async fn raw_image(app: &App, id: &str, sparse: bool) -> Response<Body> {
    let image = match app.images.get(id).await {
        Ok(Some(i)) if i.status == "active" => i,
        Ok(_) => return keystone_error(StatusCode::NOT_FOUND, &format!("no active image {id}")),
        Err(e) => {
            tracing::error!("image lookup: {e}");
            return keystone_error(StatusCode::INTERNAL_SERVER_ERROR, "image lookup failed");
        }
    };
    match crate::image::data::raw_redirect(app, &image).await {
        Ok(Some(url)) if sparse => {
            let mut r = empty(StatusCode::TEMPORARY_REDIRECT);
            if let Ok(v) = hyper::header::HeaderValue::from_str(&url) {
                r.headers_mut().insert(hyper::header::LOCATION, v);
            }
            return r;
        }
        Ok(Some(_)) => {
            return keystone_error(
                StatusCode::NOT_ACCEPTABLE,
                "this image is served as a sparse stream only",
            )
        }
        Ok(None) => {}
        Err(e) => return super::image::image_error(e),
    }
    let path = app.images.raw_path(&image);
    let opened = if sparse {
        match std::fs::File::open(&path) {
            Ok(file) => super::http::stream_sparse(file).await,
            Err(e) => Err(e),
        }
    } else {
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(stream_file(file).await),
            Err(e) => Err(e),
        }
    };
    match opened {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(image = id, "opening {}: {e}", path.display());
            keystone_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the image data is unavailable",
            )
        }
    }
}

async fn reconcilers(app: &App, req: Request<Incoming>, rest: &[&str]) -> Response<Body> {
    match app.caller(&req).await {
        Some(a) if a.is_admin() => {}
        Some(_) => return keystone_error(StatusCode::FORBIDDEN, "admin required"),
        None => {
            return keystone_error(
                StatusCode::UNAUTHORIZED,
                "The request you have made requires authentication.",
            )
        }
    }
    match (req.method().clone(), rest) {
        (Method::GET, []) => json(
            StatusCode::OK,
            &json!({ "reconcilers": app.background.statuses() }),
        ),
        (Method::POST, [name, "run"]) => match app.background.trigger(name, TRIGGER_WAIT).await {
            Ok(status) => json(StatusCode::OK, &json!({ "reconciler": status })),
            Err(e @ TriggerError::Unknown(_)) => {
                keystone_error(StatusCode::NOT_FOUND, &e.to_string())
            }
            Err(e @ TriggerError::Timeout(_)) => {
                keystone_error(StatusCode::GATEWAY_TIMEOUT, &e.to_string())
            }
        },
        _ => keystone_error(StatusCode::NOT_FOUND, "The resource could not be found."),
    }
}

/// A storaged's heartbeat, for the host its token names.
async fn storage_heartbeat(app: &App, req: Request<Incoming>, host: &str) -> Response<Body> {
    let value = match read_json(req, keystone_error).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let beat: storaged_proto::Heartbeat = match serde_json::from_value(value) {
        Ok(b) => b,
        Err(e) => return keystone_error(StatusCode::BAD_REQUEST, &format!("heartbeat: {e}")),
    };
    if beat.host_id != host {
        return keystone_error(StatusCode::BAD_REQUEST, "host_id does not match the path");
    }
    let http = |u: &str| u.starts_with("http://");
    if !http(&beat.url)
        || !beat.peer_url.as_deref().is_none_or(http)
        || beat.availability_zone.is_empty()
    {
        return keystone_error(
            StatusCode::BAD_REQUEST,
            "heartbeat: url and peer_url must be http://HOST:PORT and availability_zone not empty",
        );
    }
    let clamp = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
    let record = crate::volume::model::StorageHost {
        host_id: beat.host_id,
        url: beat.url,
        peer_url: beat.peer_url,
        availability_zone: beat.availability_zone,
        total_bytes: clamp(beat.total_bytes),
        free_bytes: clamp(beat.free_bytes),
        last_seen: crate::identity::now(),
    };
    match app.volumes.store.heartbeat(&record).await {
        Ok(()) => empty(StatusCode::NO_CONTENT),
        Err(e) => {
            tracing::error!("recording a storage heartbeat: {e}");
            keystone_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not record the heartbeat",
            )
        }
    }
}
