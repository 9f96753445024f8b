//! Nova's image proxy (microversions 2.1 to 2.35): `/images` (list with
//! Nova's filters, detail, show, delete) and `/images/{id}/metadata` (the
//! image's free-form properties), translated to and from the image service
//! as Nova does with Glance.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::compute::nova_error;
use super::http::{empty, json, read_json, Body};
use super::App;
use crate::identity::Auth;
use crate::image::service::{self, ImageError};
use crate::image::Image;

/// Nova's `maxImageMeta`.
const MAX_ITEMS: usize = 128;

/// Handles `/images...`; None for other paths.
pub async fn route(
    app: &App,
    auth: &Auth,
    req: Request<Incoming>,
    rest: &[&str],
) -> Option<Response<Body>> {
    let method = req.method().clone();
    let result = match (method, rest) {
        (Method::GET, ["images"]) => list(app, auth, &req, false).await,
        (Method::GET, ["images", "detail"]) => list(app, auth, &req, true).await,
        (Method::GET, ["images", id]) => service::visible(app, auth, id)
            .await
            .map(|i| json(StatusCode::OK, &json!({"image": view(app, &i)}))),
        (Method::DELETE, ["images", id]) => service::delete(app, auth, id)
            .await
            .map(|()| empty(StatusCode::NO_CONTENT)),
        (Method::GET, ["images", id, "metadata"]) => service::visible(app, auth, id)
            .await
            .map(|i| json(StatusCode::OK, &json!({"metadata": i.properties}))),
        (Method::GET, ["images", id, "metadata", key]) => service::visible(app, auth, id)
            .await
            .and_then(|i| match i.properties.get(*key) {
                Some(v) => Ok(json(StatusCode::OK, &json!({"meta": { *key: v }}))),
                None => Err(ImageError::NotFound(format!(
                    "Image {id} has no metadata item {key}"
                ))),
            }),
        (method @ (Method::PUT | Method::POST), ["images", id, "metadata"]) => {
            let id = id.to_string();
            match body(req, "metadata").await {
                Ok(given) => {
                    let replace = method == Method::PUT;
                    change(app, auth, &id, |props| {
                        if replace {
                            props.clear();
                        }
                        props.extend(given.clone());
                    })
                    .await
                    .map(|props| json(StatusCode::OK, &json!({ "metadata": props })))
                }
                Err(r) => return Some(r),
            }
        }
        (Method::PUT, ["images", id, "metadata", key]) => {
            let (id, key) = (id.to_string(), key.to_string());
            match body(req, "meta").await {
                Ok(given) if given.len() == 1 && given.contains_key(&key) => {
                    change(app, auth, &id, |props| props.extend(given.clone()))
                        .await
                        .map(|_| json(StatusCode::OK, &json!({ "meta": given })))
                }
                Ok(given) if given.len() > 1 => Err(ImageError::BadRequest(
                    "Request body contains too many items".into(),
                )),
                Ok(_) => Err(ImageError::BadRequest(
                    "Request body and URI mismatch".into(),
                )),
                Err(r) => return Some(r),
            }
        }
        (Method::DELETE, ["images", id, "metadata", key]) => {
            let image = service::visible(app, auth, id).await;
            match image {
                Ok(i) if !i.properties.contains_key(*key) => Err(ImageError::NotFound(format!(
                    "Image {id} has no metadata item {key}"
                ))),
                Ok(_) => change(app, auth, id, |props| {
                    props.remove(*key);
                })
                .await
                .map(|_| empty(StatusCode::NO_CONTENT)),
                Err(e) => Err(e),
            }
        }
        (_, ["images", ..]) => Ok(nova_error(
            StatusCode::NOT_FOUND,
            "The resource could not be found.",
        )),
        _ => return None,
    };
    Some(result.unwrap_or_else(image_error))
}

/// An image service error in Nova's shape.
fn image_error(e: ImageError) -> Response<Body> {
    let status = match e {
        ImageError::Store(e) => return super::compute::store_error(e),
        ImageError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ImageError::Forbidden(_) => StatusCode::FORBIDDEN,
        ImageError::NotFound(_) => StatusCode::NOT_FOUND,
        ImageError::Conflict(_) => StatusCode::CONFLICT,
        ImageError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ImageError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    nova_error(status, &e.to_string())
}

/// The `{field: {...}}` metadata of a body, as strings.
async fn body(
    req: Request<Incoming>,
    field: &str,
) -> Result<BTreeMap<String, String>, Response<Body>> {
    let body = read_json(req, nova_error).await?;
    match body.get(field) {
        Some(m) => super::server_metadata::parse(field, m)
            .map_err(|e| nova_error(StatusCode::BAD_REQUEST, &e)),
        None => Err(nova_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid input for field/attribute {field}: '{field}' is a required property"),
        )),
    }
}

/// Applies `edit` to the image's properties through the image service (a
/// JSON patch, checked there as any other); returns them.
async fn change(
    app: &App,
    auth: &Auth,
    id: &str,
    edit: impl Fn(&mut BTreeMap<String, String>),
) -> Result<BTreeMap<String, String>, ImageError> {
    let image = service::visible(app, auth, id).await?;
    let mut props = image.properties.clone();
    edit(&mut props);
    if props.len() > MAX_ITEMS {
        return Err(ImageError::Forbidden(format!(
            "Quota exceeded for metadata items: at most {MAX_ITEMS}"
        )));
    }
    let mut ops: Vec<Json> = image
        .properties
        .keys()
        .filter(|k| !props.contains_key(*k))
        .map(|k| json!({"op": "remove", "path": format!("/{k}")}))
        .collect();
    ops.extend(
        props
            .iter()
            .filter(|(k, v)| image.properties.get(*k) != Some(v))
            .map(|(k, v)| json!({"op": "add", "path": format!("/{k}"), "value": v})),
    );
    Ok(service::patch(app, auth, id, &ops).await?.properties)
}

/// Nova's status and progress for a Glance status.
fn status(glance: &str) -> (&'static str, u8) {
    match glance {
        "active" => ("ACTIVE", 100),
        "queued" => ("SAVING", 25),
        "saving" | "uploading" | "importing" => ("SAVING", 50),
        "deleted" | "pending_delete" => ("DELETED", 0),
        "killed" => ("ERROR", 0),
        _ => ("UNKNOWN", 0),
    }
}

fn links(app: &App, id: &str) -> Json {
    let base = &app.config.public_url;
    json!([
        {"rel": "self", "href": format!("{base}/compute/v2.1/images/{id}")},
        {"rel": "bookmark", "href": format!("{base}/compute/images/{id}")},
        {"rel": "alternate", "type": "application/vnd.openstack.image",
         "href": format!("{base}/image/images/{id}")},
    ])
}

fn view(app: &App, i: &Image) -> Json {
    let iso = crate::identity::iso_seconds;
    let (status, progress) = status(&i.status);
    let mut v = json!({
        "id": i.id, "name": i.name, "minRam": i.min_ram, "minDisk": i.min_disk,
        "metadata": i.properties, "created": iso(i.created_at), "updated": iso(i.updated_at),
        "status": status, "progress": progress, "links": links(app, &i.id),
        "OS-EXT-IMG-SIZE:size": i.size.unwrap_or(0),
    });
    // A snapshot names the server it was taken of.
    if let Some(server) = i.properties.get("instance_uuid") {
        v["server"] = json!({"id": server, "links": [
            {"rel": "self", "href": format!("{}/compute/v2.1/servers/{server}", app.config.public_url)},
            {"rel": "bookmark", "href": format!("{}/compute/servers/{server}", app.config.public_url)},
        ]});
    }
    v
}

/// `GET /images[/detail]` with Nova's filters (name, status, server,
/// type, changes-since, minRam, minDisk) and paging (limit, marker).
async fn list(
    app: &App,
    auth: &Auth,
    req: &Request<Incoming>,
    detail: bool,
) -> Result<Response<Body>, ImageError> {
    let q = super::http::query_params(req);
    let all = service::list(app, auth, &BTreeMap::new()).await?.images;
    let number = |key: &str| -> Result<Option<i64>, ImageError> {
        q.get(key)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ImageError::BadRequest(format!("{key} must be an integer")))
            })
            .transpose()
    };
    let (min_ram, min_disk) = (number("minRam")?, number("minDisk")?);
    let limit = number("limit")?;
    let since = match q.get("changes-since") {
        Some(t) => Some(
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|_| ImageError::BadRequest(format!("Invalid changes-since value: {t}")))?
                .unix_timestamp(),
        ),
        None => None,
    };
    let kind = |i: &Image| {
        if i.properties.contains_key("instance_uuid") {
            "snapshot"
        } else {
            "image"
        }
    };
    let mut images: Vec<&Image> = all
        .iter()
        .filter(|i| q.get("name").is_none_or(|n| *n == i.name))
        .filter(|i| {
            q.get("status")
                .is_none_or(|s| s.eq_ignore_ascii_case(status(&i.status).0))
        })
        .filter(|i| {
            q.get("server").is_none_or(|s| {
                i.properties
                    .get("instance_uuid")
                    .is_some_and(|u| s.ends_with(u.as_str()))
            })
        })
        .filter(|i| q.get("type").is_none_or(|t| t == kind(i)))
        .filter(|i| since.is_none_or(|t| i.updated_at >= t))
        .filter(|i| min_ram.is_none_or(|m| i.min_ram >= m))
        .filter(|i| min_disk.is_none_or(|m| i.min_disk >= m))
        .collect();
    if let Some(marker) = q.get("marker") {
        match images.iter().position(|i| &i.id == marker) {
            Some(at) => {
                images.drain(..=at);
            }
            None => {
                return Err(ImageError::BadRequest(format!(
                    "marker [{marker}] not found"
                )))
            }
        }
    }
    if let Some(l) = limit {
        images.truncate(usize::try_from(l.max(0)).unwrap_or(0));
    }
    let list: Vec<Json> = images
        .iter()
        .map(|i| {
            if detail {
                view(app, i)
            } else {
                json!({"id": i.id, "name": i.name, "links": links(app, &i.id)})
            }
        })
        .collect();
    Ok(json(StatusCode::OK, &json!({ "images": list })))
}
