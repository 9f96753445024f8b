//! Glance v2, the subset clients use: discovery; create, upload (streamed),
//! download, list with filters, show, JSON-patch update, delete.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::http::{empty, json, read_json, stream_file, Body};
use super::App;
use crate::identity::{now, Auth};
use crate::image::upload::{self, UploadError};
use crate::image::{Image, CONTAINER_FORMATS, DISK_FORMATS, VISIBILITIES};
use crate::store::StoreError;

/// Glance answers errors in plain text; clients only read the code and message.
pub fn glance_error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        &json!({"code": status.as_u16(), "title": status.canonical_reason().unwrap_or("Error"),
                "message": message}),
    )
}

fn versions(app: &App) -> Json {
    json!({"versions": [{"id": "v2.17", "status": "CURRENT",
        "links": [{"rel": "self", "href": format!("{}/image/v2/", app.config.public_url)}]}]})
}

/// Fields a create or patch may set; everything else is a free-form property.
const SETTABLE: &[&str] = &[
    "name",
    "visibility",
    "protected",
    "min_disk",
    "min_ram",
    "tags",
    "disk_format",
    "container_format",
];
const READ_ONLY: &[&str] = &[
    "id",
    "status",
    "owner",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "created_at",
    "updated_at",
    "self",
    "file",
    "schema",
    "direct_url",
    "locations",
    "os_hidden",
];

pub async fn route(
    app: &App,
    req: Request<Incoming>,
    rest: &[&str],
    auth: Option<Auth>,
) -> Response<Body> {
    match (req.method(), rest) {
        (&Method::GET, []) => return json(StatusCode::MULTIPLE_CHOICES, &versions(app)),
        (&Method::GET, ["versions"]) => return json(StatusCode::OK, &versions(app)),
        _ => {}
    }
    let Some(auth) = auth.filter(|a| a.project.is_some()) else {
        return glance_error(StatusCode::UNAUTHORIZED, "This server could not verify that you are authorized to access the document you requested.");
    };
    let Some(rest) = rest.strip_prefix(&["v2"]) else {
        return glance_error(StatusCode::NOT_FOUND, "The resource could not be found.");
    };
    match (req.method().clone(), rest) {
        (Method::GET, ["images"]) => list(app, &auth, &req).await,
        (Method::POST, ["images"]) => create(app, &auth, req).await,
        (Method::GET, ["images", id]) => match visible(app, &auth, id).await {
            Ok(i) => json(StatusCode::OK, &i.to_json()),
            Err(r) => r,
        },
        (Method::PATCH, ["images", id]) => {
            let id = id.to_string();
            patch(app, &auth, &id, req).await
        }
        (Method::DELETE, ["images", id]) => delete(app, &auth, id).await,
        (Method::PUT, ["images", id, "file"]) => {
            let id = id.to_string();
            put_file(app, &auth, &id, req).await
        }
        (Method::GET, ["images", id, "file"]) => get_file(app, &auth, id).await,
        (Method::GET, ["schemas", "image" | "images"]) => json(
            StatusCode::OK,
            &json!({"name": "image", "additionalProperties": {"type": "string"}, "properties": {}}),
        ),
        _ => glance_error(StatusCode::NOT_FOUND, "The resource could not be found."),
    }
}

fn store_error(e: StoreError) -> Response<Body> {
    match e {
        StoreError::Conflict(m) => glance_error(StatusCode::CONFLICT, &m),
        other => {
            tracing::error!("image: {other}");
            glance_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// The image if the caller may see it; 404 otherwise (never 403: a private
/// image's existence is not disclosed).
async fn visible(app: &App, auth: &Auth, id: &str) -> Result<Image, Response<Body>> {
    let project = auth.project_id().unwrap_or_default();
    match app.images.get(id).await {
        Ok(Some(i)) if i.visible_to(project, auth.is_admin()) => Ok(i),
        Ok(_) => Err(glance_error(
            StatusCode::NOT_FOUND,
            &format!("No image found with ID {id}"),
        )),
        Err(e) => Err(store_error(e)),
    }
}

/// The caller must own the image (or be an admin) to change it.
async fn owned(app: &App, auth: &Auth, id: &str) -> Result<Image, Response<Body>> {
    let image = visible(app, auth, id).await?;
    if image.owner != auth.project_id().unwrap_or_default() && !auth.is_admin() {
        return Err(glance_error(
            StatusCode::FORBIDDEN,
            "You are not permitted to modify this image.",
        ));
    }
    Ok(image)
}

async fn list(app: &App, auth: &Auth, req: &Request<Incoming>) -> Response<Body> {
    let q = super::http::query_params(req);
    let project = auth.project_id().unwrap_or_default();
    let all = match app.images.list().await {
        Ok(l) => l,
        Err(e) => return store_error(e),
    };
    let ids: Option<Vec<&str>> = q
        .get("id")
        .and_then(|v| v.strip_prefix("in:"))
        .map(|v| v.split(',').collect());
    let names: Option<Vec<&str>> = q
        .get("name")
        .map(|v| v.strip_prefix("in:").unwrap_or(v).split(',').collect());
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let mut images: Vec<&Image> = all
        .iter()
        .filter(|i| i.visible_to(project, auth.is_admin()))
        // Admins list their own and public images unless they ask for all.
        .filter(|i| match q.get("visibility").map(String::as_str) {
            Some("all") | None if !auth.is_admin() => true,
            Some("all") => true,
            None => i.owner == project || i.visibility == "public",
            Some(v) => i.visibility == v,
        })
        .filter(|i| ids.as_ref().is_none_or(|ids| ids.contains(&i.id.as_str())))
        .filter(|i| names.as_ref().is_none_or(|n| n.contains(&i.name.as_str())))
        .filter(|i| q.get("status").is_none_or(|s| &i.status == s))
        .filter(|i| q.get("owner").is_none_or(|o| &i.owner == o))
        .filter(|i| {
            q.get("disk_format")
                .is_none_or(|f| i.disk_format.as_ref() == Some(f))
        })
        .filter(|i| {
            q.get("container_format")
                .is_none_or(|f| i.container_format.as_ref() == Some(f))
        })
        .filter(|i| q.get("tag").is_none_or(|t| i.tags.contains(t)))
        .collect();
    if let Some(marker) = q.get("marker") {
        match images.iter().position(|i| &i.id == marker) {
            Some(p) => images.drain(..=p).for_each(drop),
            None => {
                return glance_error(
                    StatusCode::BAD_REQUEST,
                    &format!("marker {marker} not found"),
                )
            }
        }
    }
    let more = images.len() > limit;
    images.truncate(limit);
    let mut body = json!({
        "images": images.iter().map(|i| i.to_json()).collect::<Vec<_>>(),
        "first": "/v2/images",
        "schema": "/v2/schemas/images",
    });
    if more {
        if let Some(last) = images.last() {
            body["next"] = json!(format!("/v2/images?marker={}&limit={limit}", last.id));
        }
    }
    json(StatusCode::OK, &body)
}

fn int_of(v: &Json, key: &str) -> Result<i64, String> {
    match v {
        Json::Number(n) => n
            .as_i64()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("{key}: not a non-negative integer")),
        Json::String(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("{key}: not a non-negative integer")),
        _ => Err(format!("{key}: not a non-negative integer")),
    }
}

/// Applies one settable field or property to `image`.
fn set_field(
    image: &mut Image,
    key: &str,
    v: &Json,
    admin: bool,
) -> Result<(), (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    match key {
        "name" => {
            image.name = v
                .as_str()
                .ok_or_else(|| bad("name: must be a string".into()))?
                .chars()
                .take(255)
                .collect()
        }
        "visibility" => {
            let vis = v
                .as_str()
                .filter(|s| VISIBILITIES.contains(s))
                .ok_or_else(|| bad(format!("visibility: one of {VISIBILITIES:?}")))?;
            if vis == "public" && !admin {
                return Err((
                    StatusCode::FORBIDDEN,
                    "Only administrators may publicize images.".into(),
                ));
            }
            image.visibility = vis.to_owned();
        }
        "protected" => {
            image.protected = v
                .as_bool()
                .ok_or_else(|| bad("protected: must be a boolean".into()))?
        }
        "min_disk" => image.min_disk = int_of(v, key).map_err(bad)?,
        "min_ram" => image.min_ram = int_of(v, key).map_err(bad)?,
        "tags" => {
            image.tags = v
                .as_array()
                .ok_or_else(|| bad("tags: must be a list of strings".into()))?
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad("tags: must be a list of strings".into()))
                })
                .collect::<Result<_, _>>()?
        }
        "disk_format" | "container_format" => {
            let allowed = if key == "disk_format" {
                DISK_FORMATS
            } else {
                CONTAINER_FORMATS
            };
            let f = v
                .as_str()
                .filter(|s| allowed.contains(s))
                .ok_or_else(|| bad(format!("{key}: one of {allowed:?}")))?;
            if image.status != "queued" {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("{key} cannot change once data is uploaded"),
                ));
            }
            if key == "disk_format" {
                image.disk_format = Some(f.to_owned());
            } else {
                image.container_format = Some(f.to_owned());
            }
        }
        k if READ_ONLY.contains(&k) => {
            return Err((
                StatusCode::FORBIDDEN,
                format!("Attribute '{k}' is read-only."),
            ))
        }
        k => {
            let s = v
                .as_str()
                .ok_or_else(|| bad(format!("property {k}: values must be strings")))?;
            if k.is_empty() || k.len() > 255 || s.len() > 65_535 {
                return Err(bad(format!(
                    "property {k:?}: key 1-255 bytes, value at most 65535"
                )));
            }
            image.properties.insert(k.to_owned(), s.to_owned());
        }
    }
    Ok(())
}

async fn create(app: &App, auth: &Auth, req: Request<Incoming>) -> Response<Body> {
    let body = match read_json(req, glance_error).await {
        Ok(Json::Object(m)) => m,
        Ok(_) => return glance_error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
        Err(r) => return r,
    };
    let t = now();
    let id = match body.get("id") {
        None | Some(Json::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Json::String(s)) if uuid::Uuid::parse_str(s).is_ok() => s.clone(),
        Some(_) => return glance_error(StatusCode::BAD_REQUEST, "id: must be a UUID"),
    };
    let mut image = Image {
        id,
        name: String::new(),
        owner: auth.project_id().unwrap_or_default().to_owned(),
        status: "queued".into(),
        visibility: "shared".into(),
        disk_format: None,
        container_format: None,
        size: None,
        virtual_size: None,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        min_disk: 0,
        min_ram: 0,
        protected: false,
        properties: BTreeMap::new(),
        tags: Vec::new(),
        created_at: t,
        updated_at: t,
    };
    for (k, v) in &body {
        if k == "id" {
            continue;
        }
        if let Err((code, m)) = set_field(&mut image, k, v, auth.is_admin()) {
            return glance_error(code, &m);
        }
    }
    match app.images.insert(&image).await {
        Ok(()) => {
            let mut r = json(StatusCode::CREATED, &image.to_json());
            if let Ok(v) = HeaderValue::from_str(&format!("/v2/images/{}", image.id)) {
                r.headers_mut().insert("location", v);
            }
            r
        }
        Err(e) => store_error(e),
    }
}

async fn patch(app: &App, auth: &Auth, id: &str, req: Request<Incoming>) -> Response<Body> {
    let mut image = match owned(app, auth, id).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let ops = match read_json(req, glance_error).await {
        Ok(Json::Array(ops)) => ops,
        Ok(_) => {
            return glance_error(
                StatusCode::BAD_REQUEST,
                "a JSON patch is a list of operations",
            )
        }
        Err(r) => return r,
    };
    for op in &ops {
        let (Some(kind), Some(path)) = (
            op.get("op").and_then(Json::as_str),
            op.get("path").and_then(Json::as_str),
        ) else {
            return glance_error(StatusCode::BAD_REQUEST, "each operation needs op and path");
        };
        let Some(key) = path
            .strip_prefix('/')
            .filter(|k| !k.is_empty() && !k.contains('/'))
        else {
            return glance_error(
                StatusCode::BAD_REQUEST,
                &format!("unsupported path {path:?}"),
            );
        };
        let result = match kind {
            "add" | "replace" => match op.get("value") {
                Some(v) => set_field(&mut image, key, v, auth.is_admin()),
                None => Err((StatusCode::BAD_REQUEST, format!("{kind} needs a value"))),
            },
            "remove" if SETTABLE.contains(&key) || READ_ONLY.contains(&key) => Err((
                StatusCode::FORBIDDEN,
                format!("Attribute '{key}' cannot be removed."),
            )),
            "remove" => match image.properties.remove(key) {
                Some(_) => Ok(()),
                None => Err((
                    StatusCode::CONFLICT,
                    format!("Property {key} does not exist."),
                )),
            },
            other => Err((StatusCode::BAD_REQUEST, format!("unsupported op {other:?}"))),
        };
        if let Err((code, m)) = result {
            return glance_error(code, &m);
        }
    }
    image.updated_at = now();
    match app.images.save(&image).await {
        Ok(()) => json(StatusCode::OK, &image.to_json()),
        Err(e) => store_error(e),
    }
}

async fn delete(app: &App, auth: &Auth, id: &str) -> Response<Body> {
    let image = match owned(app, auth, id).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    if image.protected {
        return glance_error(
            StatusCode::FORBIDDEN,
            &format!("Image {id} is protected and cannot be deleted."),
        );
    }
    match app.images.delete(id).await {
        Ok(()) => empty(StatusCode::NO_CONTENT),
        Err(e) => store_error(e),
    }
}

async fn put_file(app: &App, auth: &Auth, id: &str, req: Request<Incoming>) -> Response<Body> {
    let image = match owned(app, auth, id).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    if image.disk_format.is_none() || image.container_format.is_none() {
        return glance_error(
            StatusCode::BAD_REQUEST,
            "set disk_format and container_format before uploading",
        );
    }
    match app.images.transition(id, "queued", "saving").await {
        Ok(true) => {}
        Ok(false) => {
            return glance_error(
                StatusCode::CONFLICT,
                &format!(
                    "Image {id} is {}: data can only be uploaded once",
                    image.status
                ),
            )
        }
        Err(e) => return store_error(e),
    }
    let fail = |code: StatusCode, m: String| async move {
        // Back to queued so the upload can be retried.
        let _ = app.images.transition(id, "saving", "queued").await;
        glance_error(code, &m)
    };
    let dest = app.images.data_path(id);
    let stored = match upload::store(req.into_body(), &dest, app.config.max_image_bytes).await {
        Ok(s) => s,
        Err(e @ UploadError::TooLarge(_)) => {
            return fail(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).await
        }
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.to_string()).await,
    };
    let virtual_size = if image.disk_format.as_deref() == Some("qcow2") {
        match upload::qcow2_to_raw(&dest, &app.images.raw_path(&image)).await {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&dest);
                return fail(StatusCode::BAD_REQUEST, e.to_string()).await;
            }
        }
    } else {
        stored.size
    };
    let Ok(Some(mut image)) = app.images.get(id).await else {
        return glance_error(
            StatusCode::NOT_FOUND,
            &format!("No image found with ID {id}"),
        );
    };
    image.status = "active".into();
    image.size = Some(stored.size as i64);
    image.virtual_size = Some(virtual_size as i64);
    image.checksum = Some(stored.md5_hex);
    image.os_hash_algo = Some("sha512".into());
    image.os_hash_value = Some(stored.sha512_hex);
    image.updated_at = now();
    match app.images.save(&image).await {
        Ok(()) => empty(StatusCode::NO_CONTENT),
        Err(e) => store_error(e),
    }
}

async fn get_file(app: &App, auth: &Auth, id: &str) -> Response<Body> {
    let image = match visible(app, auth, id).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    if image.status != "active" {
        return empty(StatusCode::NO_CONTENT);
    }
    let path = app.images.data_path(id);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(image = id, "opening {}: {e}", path.display());
            return glance_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the image data is unavailable",
            );
        }
    };
    let mut r = stream_file(file).await;
    if let Some(md5) = image
        .checksum
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        r.headers_mut().insert("content-md5", md5);
    }
    r
}
