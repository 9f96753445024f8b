//! Glance v2's HTTP handlers, the subset clients use: discovery; create,
//! upload (streamed), download, list with filters, show, JSON-patch update,
//! delete. They parse, call the image service (`image::service`) and render
//! its result or its error in Glance's shape.

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::http::{empty, json, read_json, stream_file, Body};
use super::App;
use crate::identity::Auth;
use crate::image::data::Opened;
use crate::image::members;
use crate::image::service::{self, ImageError};
use crate::store::StoreError;

/// Glance answers errors in plain text; clients only read the code and message.
pub fn glance_error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        &json!({"code": status.as_u16(), "title": status.canonical_reason().unwrap_or("Error"),
                "message": message}),
    )
}

/// The image service's errors, as Glance answers them.
pub fn image_error(e: ImageError) -> Response<Body> {
    let status = match &e {
        ImageError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ImageError::Forbidden(_) => StatusCode::FORBIDDEN,
        ImageError::NotFound(_) => StatusCode::NOT_FOUND,
        ImageError::Conflict(_) | ImageError::Store(StoreError::Conflict(_)) => {
            StatusCode::CONFLICT
        }
        ImageError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ImageError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ImageError::Store(other) => {
            tracing::error!("image: {other}");
            return glance_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    glance_error(status, &e.to_string())
}

fn versions(app: &App) -> Json {
    json!({"versions": [{"id": "v2.17", "status": "CURRENT",
        "links": [{"rel": "self", "href": format!("{}/image/v2/", app.config.public_url)}]}]})
}

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
    // `/v2/images/` names an image with an empty id: there is none (the
    // list is `/v2/images`).
    if rest == ["images"] && req.uri().path().ends_with("/images/") {
        return glance_error(StatusCode::NOT_FOUND, "No image found with ID ");
    }
    let result = match (req.method().clone(), rest) {
        (Method::GET, ["images"]) => list(app, &auth, &req).await,
        (Method::POST, ["images"]) => create(app, &auth, req).await,
        (Method::GET, ["images", id]) => service::visible(app, &auth, id)
            .await
            .map(|i| json(StatusCode::OK, &i.to_json())),
        (Method::PATCH, ["images", id]) => {
            let id = id.to_string();
            patch(app, &auth, &id, req).await
        }
        (Method::DELETE, ["images", id]) => service::delete(app, &auth, id)
            .await
            .map(|()| empty(StatusCode::NO_CONTENT)),
        (Method::PUT, ["images", id, "file"]) => {
            let id = id.to_string();
            service::upload(app, &auth, &id, req.into_body())
                .await
                .map(|()| empty(StatusCode::NO_CONTENT))
        }
        (Method::GET, ["images", id, "file"]) => get_file(app, &auth, id).await,
        // The tasks (imports, locations) that worked on an image (2.12):
        // none run here, images are uploaded or snapshotted whole.
        (Method::GET, ["images", id, "tasks"]) => service::visible(app, &auth, id)
            .await
            .map(|_| json(StatusCode::OK, &json!({ "tasks": [] }))),
        (Method::POST, ["images", id, "actions", action @ ("deactivate" | "reactivate")]) => {
            service::set_active(app, &auth, id, *action == "reactivate")
                .await
                .map(|()| empty(StatusCode::NO_CONTENT))
        }
        (Method::PUT, ["images", id, "tags", tag]) => service::add_tag(app, &auth, id, tag)
            .await
            .map(|()| empty(StatusCode::NO_CONTENT)),
        (Method::DELETE, ["images", id, "tags", tag]) => service::remove_tag(app, &auth, id, tag)
            .await
            .map(|()| empty(StatusCode::NO_CONTENT)),
        (Method::GET, ["images", id, "members"]) => members::list(app, &auth, id).await.map(|list| {
            json(
                StatusCode::OK,
                &json!({"members": list.iter().map(members::Member::to_json).collect::<Vec<_>>(),
                        "schema": "/v2/schemas/members"}),
            )
        }),
        (Method::POST, ["images", id, "members"]) => {
            let id = id.to_string();
            match read_json(req, glance_error).await {
                Ok(body) => match body.get("member").and_then(Json::as_str) {
                    Some(member) => members::add(app, &auth, &id, member)
                        .await
                        .map(|m| json(StatusCode::OK, &m.to_json())),
                    None => Err(ImageError::BadRequest("member: a project id is required".into())),
                },
                Err(r) => Ok(r),
            }
        }
        (Method::GET, ["images", id, "members", member]) => members::get(app, &auth, id, member)
            .await
            .map(|m| json(StatusCode::OK, &m.to_json())),
        (Method::PUT, ["images", id, "members", member]) => {
            let (id, member) = (id.to_string(), member.to_string());
            match read_json(req, glance_error).await {
                Ok(body) => match body.get("status").and_then(Json::as_str) {
                    Some(status) => members::answer(app, &auth, &id, &member, status)
                        .await
                        .map(|m| json(StatusCode::OK, &m.to_json())),
                    None => Err(ImageError::BadRequest("status: required".into())),
                },
                Err(r) => Ok(r),
            }
        }
        (Method::DELETE, ["images", id, "members", member]) => {
            members::remove(app, &auth, id, member)
                .await
                .map(|()| empty(StatusCode::NO_CONTENT))
        }
        (Method::GET, ["schemas", which @ ("member" | "members")]) => {
            Ok(json(StatusCode::OK, &members::schema(*which == "members")))
        }
        (Method::GET, ["schemas", "metadefs", which]) => {
            Ok(match crate::image::schemas::metadefs(which) {
                Some(s) => json(StatusCode::OK, &s),
                None => glance_error(StatusCode::NOT_FOUND, "The resource could not be found."),
            })
        }
        // No interoperable import (glance-direct, web-download): images are
        // uploaded with PUT .../file.
        (Method::GET, ["info", "import"]) => Ok(json(
            StatusCode::OK,
            &json!({"import-methods": {"description": "Import methods available.",
                                       "type": "array", "value": []}}),
        )),
        (Method::GET, ["schemas", "image" | "images"]) => Ok(json(
            StatusCode::OK,
            &json!({"name": "image", "additionalProperties": {"type": "string"}, "properties": {}}),
        )),
        _ => Ok(glance_error(
            StatusCode::NOT_FOUND,
            "The resource could not be found.",
        )),
    };
    result.unwrap_or_else(image_error)
}

async fn list(
    app: &App,
    auth: &Auth,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ImageError> {
    let page = service::list(app, auth, &super::http::query_params(req)).await?;
    let mut body = json!({
        "images": page.images.iter().map(|i| i.to_json()).collect::<Vec<_>>(),
        "first": "/v2/images",
        "schema": "/v2/schemas/images",
    });
    if let Some((marker, limit)) = page.next {
        body["next"] = json!(format!("/v2/images?marker={marker}&limit={limit}"));
    }
    Ok(json(StatusCode::OK, &body))
}

async fn create(
    app: &App,
    auth: &Auth,
    req: Request<Incoming>,
) -> Result<Response<Body>, ImageError> {
    let body = match read_json(req, glance_error).await {
        Ok(Json::Object(m)) => m,
        Ok(_) => {
            return Err(ImageError::BadRequest(
                "the body must be a JSON object".into(),
            ))
        }
        Err(r) => return Ok(r),
    };
    let image = service::create(app, auth, body).await?;
    let mut r = json(StatusCode::CREATED, &image.to_json());
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/images/{}", image.id)) {
        r.headers_mut().insert("location", v);
    }
    Ok(r)
}

async fn patch(
    app: &App,
    auth: &Auth,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ImageError> {
    // Checked before the body is read, as Glance does.
    service::owned(app, auth, id).await?;
    let ops = match read_json(req, glance_error).await {
        Ok(Json::Array(ops)) => ops,
        Ok(_) => {
            return Err(ImageError::BadRequest(
                "a JSON patch is a list of operations".into(),
            ))
        }
        Err(r) => return Ok(r),
    };
    let image = service::patch(app, auth, id, &ops).await?;
    Ok(json(StatusCode::OK, &image.to_json()))
}

async fn get_file(app: &App, auth: &Auth, id: &str) -> Result<Response<Body>, ImageError> {
    let Some((image, opened)) = service::data(app, auth, id).await? else {
        return Ok(empty(StatusCode::NO_CONTENT));
    };
    let mut r = match opened {
        Opened::Local(file) => stream_file(file).await,
        // Streamed on from the storage host, never whole in memory.
        Opened::Remote(resp) => {
            let len = resp.headers().get(hyper::header::CONTENT_LENGTH).cloned();
            let mut r = Response::new(resp.into_body().map_err(std::io::Error::other).boxed());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if let Some(len) = len {
                r.headers_mut().insert(hyper::header::CONTENT_LENGTH, len);
            }
            r
        }
    };
    if let Some(md5) = image
        .checksum
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        r.headers_mut().insert("content-md5", md5);
    }
    Ok(r)
}
