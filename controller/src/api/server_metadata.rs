//! Nova's server metadata API: `/servers/{id}/metadata` (show all, replace
//! all with PUT, merge with POST) and `/servers/{id}/metadata/{key}` (show,
//! set, delete one). Keys are 1 to 255 characters, values at most 255, at
//! most 128 items (`compute::service::update`).

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::compute::{compute_error, nova_error};
use super::http::{empty, json, read_json, Body};
use super::App;
use crate::compute::service::{self, ComputeError};
use crate::context::RequestContext;

/// Checks a metadata object as Nova's schema does (`field` names it in the
/// error).
pub fn parse(field: &str, v: &Json) -> Result<BTreeMap<String, String>, String> {
    let Some(m) = v.as_object() else {
        return Err(format!(
            "Invalid input for field/attribute {field}: must be an object"
        ));
    };
    m.iter()
        .map(|(k, v)| {
            if !(1..=255).contains(&k.chars().count()) {
                return Err(format!(
                    "Invalid input for field/attribute {field}: keys are 1 to 255 characters ({k:?})"
                ));
            }
            match v.as_str() {
                Some(v) if v.chars().count() <= 255 => Ok((k.clone(), v.to_owned())),
                Some(_) => Err(format!(
                    "Invalid input for field/attribute {field}: the value of {k:?} is longer than 255 characters"
                )),
                None => Err(format!(
                    "Invalid input for field/attribute {field}: the value of {k:?} is not a string"
                )),
            }
        })
        .collect()
}

/// Handles `/servers/{id}/metadata` (key None) and `/metadata/{key}`.
pub async fn route(
    app: &App,
    ctx: &RequestContext,
    req: Request<Incoming>,
    id: &str,
    key: Option<&str>,
) -> Response<Body> {
    let method = req.method().clone();
    let all = |m: BTreeMap<String, String>| json(StatusCode::OK, &json!({ "metadata": m }));
    match (method, key) {
        (Method::GET, None) => match service::visible(app, ctx, id).await {
            Ok(s) => all(s.metadata),
            Err(e) => compute_error(e),
        },
        (Method::GET, Some(key)) => match service::visible(app, ctx, id).await {
            Ok(s) => match s.metadata.get(key) {
                Some(v) => json(StatusCode::OK, &json!({"meta": { key: v }})),
                None => not_found(),
            },
            Err(e) => compute_error(e),
        },
        (method @ (Method::PUT | Method::POST), None) => {
            let given = match body(req, "metadata").await {
                Ok(m) => m,
                Err(r) => return r,
            };
            let replace = method == Method::PUT;
            let changed = service::update::metadata(app, ctx, id, |m| {
                if replace {
                    m.clear();
                }
                m.extend(given.clone());
                Ok(())
            })
            .await;
            match changed {
                Ok(m) => all(m),
                Err(e) => compute_error(e),
            }
        }
        (Method::PUT, Some(key)) => {
            let given = match body(req, "meta").await {
                Ok(m) => m,
                Err(r) => return r,
            };
            let Some(value) = given.get(key) else {
                return nova_error(StatusCode::BAD_REQUEST, "Request body and URI mismatch");
            };
            if given.len() > 1 {
                return nova_error(
                    StatusCode::BAD_REQUEST,
                    "Request body contains too many items",
                );
            }
            let changed = service::update::metadata(app, ctx, id, |m| {
                m.insert(key.to_owned(), value.clone());
                Ok(())
            })
            .await;
            match changed {
                Ok(_) => json(StatusCode::OK, &json!({"meta": { key: value }})),
                Err(e) => compute_error(e),
            }
        }
        (Method::DELETE, Some(key)) => {
            let changed = service::update::metadata(app, ctx, id, |m| {
                m.remove(key)
                    .map(drop)
                    .ok_or_else(|| ComputeError::NotFound("Metadata item was not found".into()))
            })
            .await;
            match changed {
                Ok(_) => empty(StatusCode::NO_CONTENT),
                Err(e) => compute_error(e),
            }
        }
        _ => nova_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
    }
}

fn not_found() -> Response<Body> {
    nova_error(StatusCode::NOT_FOUND, "Metadata item was not found")
}

/// The `{field: {...}}` body of a change.
async fn body(
    req: Request<Incoming>,
    field: &str,
) -> Result<BTreeMap<String, String>, Response<Body>> {
    let body = read_json(req, nova_error).await?;
    let Some(v) = body.get(field) else {
        return Err(nova_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid input for field/attribute {field}: '{field}' is a required property"),
        ));
    };
    parse(field, v).map_err(|m| nova_error(StatusCode::BAD_REQUEST, &m))
}
