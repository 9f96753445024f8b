//! Server tags (microversion 2.26 on): `/servers/{id}/tags` (show, replace
//! all, delete all) and `/servers/{id}/tags/{tag}` (check, add, delete).

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::compute::{compute_error, nova_error};
use super::http::{empty, json, read_json, Body};
use super::App;
use crate::compute::service::{self, update, ComputeError};
use crate::context::RequestContext;

/// Handles `/servers/{id}/tags` (tag None) and `/servers/{id}/tags/{tag}`.
pub async fn route(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
    id: &str,
    tag: Option<&str>,
) -> Response<Body> {
    let method = req.method().clone();
    let all = |tags: Vec<String>| json(StatusCode::OK, &json!({ "tags": tags }));
    match (method, tag) {
        (Method::GET, None) => match service::visible(app, ctx, id).await {
            Ok(s) => all(s.tags),
            Err(e) => compute_error(e),
        },
        (Method::GET, Some(tag)) => match service::visible(app, ctx, id).await {
            Ok(s) if s.tags.iter().any(|t| t == tag) => empty(StatusCode::NO_CONTENT),
            Ok(_) => not_found(id, tag),
            Err(e) => compute_error(e),
        },
        (Method::PUT, None) => {
            let body = match read_json(req, nova_error).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let given: Option<Vec<String>> = body["tags"].as_array().and_then(|list| {
                list.iter()
                    .map(|t| {
                        t.as_str()
                            .filter(|t| update::valid_tag(t))
                            .map(str::to_owned)
                    })
                    .collect()
            });
            let Some(given) = given else {
                return nova_error(
                    StatusCode::BAD_REQUEST,
                    "Invalid input for field/attribute tags: a list of tags of 1 to 60 characters without '/' or ','",
                );
            };
            match update::tags(app, ctx, id, |tags| {
                tags.clone_from(&given);
                Ok(())
            })
            .await
            {
                Ok(tags) => all(tags),
                Err(e) => compute_error(e),
            }
        }
        (Method::DELETE, None) => match update::tags(app, ctx, id, |tags| {
            tags.clear();
            Ok(())
        })
        .await
        {
            Ok(_) => empty(StatusCode::NO_CONTENT),
            Err(e) => compute_error(e),
        },
        (Method::PUT, Some(tag)) => {
            if !update::valid_tag(tag) {
                return nova_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Tag {tag:?}: 1 to 60 characters without '/' or ','"),
                );
            }
            let had = match service::visible(app, ctx, id).await {
                Ok(s) => s.tags.iter().any(|t| t == tag),
                Err(e) => return compute_error(e),
            };
            match update::tags(app, ctx, id, |tags| {
                tags.push(tag.to_owned());
                Ok(())
            })
            .await
            {
                Ok(_) if had => empty(StatusCode::NO_CONTENT),
                Ok(_) => {
                    let mut r = empty(StatusCode::CREATED);
                    let at = format!(
                        "{}/compute/v2.1/servers/{id}/tags/{tag}",
                        app.config.public_url
                    );
                    if let Ok(v) = HeaderValue::from_str(&at) {
                        r.headers_mut().insert("location", v);
                    }
                    r
                }
                Err(e) => compute_error(e),
            }
        }
        (Method::DELETE, Some(tag)) => match update::tags(app, ctx, id, |tags| {
            let before = tags.len();
            tags.retain(|t| t != tag);
            if tags.len() == before {
                return Err(ComputeError::NotFound(format!(
                    "Tag {tag} could not be found for instance {id}"
                )));
            }
            Ok(())
        })
        .await
        {
            Ok(_) => empty(StatusCode::NO_CONTENT),
            Err(e) => compute_error(e),
        },
        _ => nova_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
    }
}

fn not_found(id: &str, tag: &str) -> Response<Body> {
    nova_error(
        StatusCode::NOT_FOUND,
        &format!("Tag {tag} could not be found for instance {id}"),
    )
}
