//! Nova's flavor extra specs: `/flavors/{id}/os-extra_specs` (list; set
//! several with POST) and `/flavors/{id}/os-extra_specs/{key}` (show, set
//! one with PUT, unset with DELETE). Anyone who sees the flavor reads
//! them; admins change them. Keys match Nova's schema
//! (`[a-zA-Z0-9-_:. ]`, 1 to 255), values are strings, numbers or
//! booleans of at most 255 characters, kept as strings as Nova keeps them.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::compute::{nova_error, store_error};
use super::http::{empty, json, read_json, Body};
use super::App;
use crate::identity::Auth;

/// Handles `rest` = `[flavor_id, "os-extra_specs", key?]`.
pub async fn route(
    app: &App,
    auth: &Auth,
    req: Request<Incoming>,
    id: &str,
    key: Option<&str>,
) -> Response<Body> {
    match app
        .flavors
        .get_for(id, auth.project_id(), auth.is_admin())
        .await
    {
        Ok(Some(_)) => {}
        Ok(None) => {
            return nova_error(
                StatusCode::NOT_FOUND,
                &format!("Flavor {id} could not be found."),
            )
        }
        Err(e) => return store_error(e),
    }
    let method = req.method().clone();
    if method != Method::GET && !auth.is_admin() {
        return nova_error(
            StatusCode::FORBIDDEN,
            "Policy doesn't allow os_compute_api:os-flavor-extra-specs to be performed: admin only.",
        );
    }
    let specs = match app.flavors.extra_specs(id).await {
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    match (method, key) {
        (Method::GET, None) => json(StatusCode::OK, &json!({ "extra_specs": specs })),
        (Method::GET, Some(key)) => match specs.get(key) {
            Some(value) => json(StatusCode::OK, &json!({ key: value })),
            None => no_key(id, key),
        },
        (Method::POST, None) => {
            let body = match read_json(req, nova_error).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Some(given) = body.get("extra_specs") else {
                return bad("'extra_specs' is a required property");
            };
            set(app, id, given, |s| json!({ "extra_specs": s })).await
        }
        (Method::PUT, Some(key)) => {
            let body = match read_json(req, nova_error).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match body.as_object().map(|o| (o.len(), o.contains_key(key))) {
                Some((1, true)) => {}
                Some((1, false)) => return bad("Request body and URI mismatch"),
                Some((n, _)) if n > 1 => return bad("Request body contains too many items"),
                _ => return bad(&format!("the body is {{\"{key}\": value}}")),
            }
            set(app, id, &body, |s| json!(s)).await
        }
        (Method::DELETE, Some(key)) => match app.flavors.unset_extra_spec(id, key).await {
            Ok(true) => empty(StatusCode::OK),
            Ok(false) => no_key(id, key),
            Err(e) => store_error(e),
        },
        _ => nova_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
    }
}

/// Checks and stores `given` (an object of specs); answers 200 with
/// `render` of what was set.
async fn set(
    app: &App,
    id: &str,
    given: &Json,
    render: impl FnOnce(&BTreeMap<String, String>) -> Json,
) -> Response<Body> {
    let specs = match parse(given) {
        Ok(s) => s,
        Err(m) => return bad(&m),
    };
    match app.flavors.set_extra_specs(id, &specs).await {
        Ok(()) => json(StatusCode::OK, &render(&specs)),
        Err(e) => store_error(e),
    }
}

fn bad(message: &str) -> Response<Body> {
    nova_error(StatusCode::BAD_REQUEST, message)
}

fn no_key(id: &str, key: &str) -> Response<Body> {
    nova_error(
        StatusCode::NOT_FOUND,
        &format!("Flavor {id} has no extra specs with key {key}."),
    )
}

/// Nova's schema for a set of extra specs.
fn parse(given: &Json) -> Result<BTreeMap<String, String>, String> {
    let Some(m) = given.as_object() else {
        return Err("Invalid input for field/attribute extra_specs: must be an object".into());
    };
    m.iter()
        .map(|(k, v)| {
            let key_ok = (1..=255).contains(&k.len())
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_:. ".contains(c));
            if !key_ok {
                return Err(format!(
                    "Invalid input for field/attribute extra_specs: key {k:?} is not 1 to 255 of [a-zA-Z0-9-_:. ]"
                ));
            }
            let value = match v {
                Json::String(s) => s.clone(),
                Json::Number(n) => n.to_string(),
                // As Python's str() of a boolean, which Nova stores.
                Json::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
                _ => {
                    return Err(format!(
                        "Invalid input for field/attribute extra_specs: the value of {k:?} is not a string, number or boolean"
                    ))
                }
            };
            if value.chars().count() > 255 {
                return Err(format!(
                    "Invalid input for field/attribute extra_specs: the value of {k:?} is longer than 255 characters"
                ));
            }
            Ok((k.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked_as_novas_schema_does() {
        let ok = parse(
            &json!({"hw:cpu_policy": "dedicated", "quota:vif_inbound_peak": 10, "trait:X": true}),
        )
        .unwrap();
        assert_eq!(ok["quota:vif_inbound_peak"], "10");
        assert_eq!(ok["trait:X"], "True");
        for bad in [
            json!([]),
            json!({"": "x"}),
            json!({"a/b": "x"}),
            json!({"k": null}),
            json!({"k": {"nested": 1}}),
            json!({"k": "v".repeat(256)}),
            json!({"k".repeat(256): "v"}),
        ] {
            assert!(parse(&bad).is_err(), "{bad}");
        }
    }
}
