//! Keystone's application credentials:
//! `/identity/v3/users/{user_id}/application_credentials[/{id}]`. A user
//! makes them for the project of the token asking (`openstack application
//! credential create|list|show|delete`); the secret is shown once. An admin
//! may list, show and delete anyone's; a token made with a restricted
//! application credential may not make more (Keystone's rule: a leaked one
//! cannot mint its own successors).

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::http::{empty, json, keystone_error, query_params, read_json, Body};
use super::App;
use crate::identity::app_credentials::{
    format_expiry, parse_expiry, AppCredential, NewAppCredential, RoleRef,
};
use crate::identity::IdentityError;

fn render(app: &App, c: &AppCredential) -> Json {
    json!({
        "id": c.id,
        "name": c.name,
        "description": c.description,
        "user_id": c.user_id,
        "project_id": c.project_id,
        "expires_at": c.expires_us.map(format_expiry),
        "unrestricted": c.unrestricted,
        "roles": c.roles.iter().map(|r| json!({"id": r.id, "name": r.name, "domain_id": null})).collect::<Vec<_>>(),
        "access_rules": [],
        "links": {"self": format!(
            "{}/identity/v3/users/{}/application_credentials/{}",
            app.config.public_url, c.user_id, c.id
        )},
    })
}

fn error(e: IdentityError) -> Response<Body> {
    super::identity_admin::identity_error(e)
}

fn not_found(id: &str) -> Response<Body> {
    keystone_error(
        StatusCode::NOT_FOUND,
        &format!("Could not find application credential: {id}."),
    )
}

fn forbidden(what: &str) -> Response<Body> {
    keystone_error(
        StatusCode::FORBIDDEN,
        &format!("You are not authorized to perform the requested action: {what}."),
    )
}

/// The request body's `application_credential`, checked.
fn parse_new(body: &Json) -> Result<NewAppCredential, String> {
    let c = body
        .get("application_credential")
        .filter(|c| c.is_object())
        .ok_or("application_credential: an object")?;
    let text = |k: &str| -> Result<Option<String>, String> {
        match c.get(k) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("application_credential.{k}: a string")),
        }
    };
    let name = text("name")?.ok_or("application_credential.name is required")?;
    let expires_us = match text("expires_at")? {
        None => None,
        Some(t) => Some(parse_expiry(&t).ok_or_else(|| {
            format!("application_credential.expires_at: {t:?} is not an ISO 8601 time")
        })?),
    };
    let unrestricted = match c.get("unrestricted") {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(_) => return Err("application_credential.unrestricted: a boolean".into()),
    };
    if c.get("access_rules")
        .and_then(Json::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err("application_credential.access_rules: not supported here".into());
    }
    let mut roles = Vec::new();
    if let Some(list) = c.get("roles").filter(|r| !r.is_null()) {
        let list = list
            .as_array()
            .ok_or("application_credential.roles: a list")?;
        for r in list {
            match (
                r.get("id").and_then(Json::as_str),
                r.get("name").and_then(Json::as_str),
            ) {
                (Some(id), _) => roles.push(RoleRef::Id(id.to_owned())),
                (None, Some(name)) => roles.push(RoleRef::Name(name.to_owned())),
                (None, None) => return Err("each role: an id or a name".into()),
            }
        }
    }
    Ok(NewAppCredential {
        name,
        description: text("description")?,
        secret: text("secret")?,
        expires_us,
        unrestricted,
        roles,
    })
}

/// Handles `rest` = `[user_id, "application_credentials", more..]`.
pub async fn route(
    app: &App,
    req: Request<Incoming>,
    user_id: &str,
    more: &[&str],
) -> Response<Body> {
    let caller = match super::identity::caller(app, &req).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let own = caller.user.id == user_id;
    match (req.method().clone(), more) {
        (Method::POST, []) => {
            if !own {
                return forbidden("identity:create_application_credential for another user");
            }
            if caller.app_credential.as_ref().is_some_and(|a| a.restricted) {
                return forbidden(
                    "identity:create_application_credential with a restricted application credential",
                );
            }
            let Some(project) = caller.project_id().map(str::to_owned) else {
                return keystone_error(
                    StatusCode::BAD_REQUEST,
                    "an application credential is made with a project-scoped token",
                );
            };
            let body: Json = match read_json(req, keystone_error).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let new = match parse_new(&body) {
                Ok(n) => n,
                Err(e) => return keystone_error(StatusCode::BAD_REQUEST, &e),
            };
            match app
                .identity
                .create_app_credential(user_id, &project, new)
                .await
            {
                Ok((c, secret)) => {
                    let mut shown = render(app, &c);
                    shown["secret"] = json!(secret);
                    json(
                        StatusCode::CREATED,
                        &json!({"application_credential": shown}),
                    )
                }
                Err(e) => error(e),
            }
        }
        _ if !own && !caller.is_admin() => {
            forbidden("identity:application credentials of another user")
        }
        (Method::GET, []) => {
            let name = query_params(&req).get("name").cloned();
            match app
                .identity
                .list_app_credentials(user_id, name.as_deref())
                .await
            {
                Ok(list) => json(
                    StatusCode::OK,
                    &json!({
                        "application_credentials": list.iter().map(|c| render(app, c)).collect::<Vec<_>>(),
                        "links": {"self": format!(
                            "{}/identity/v3/users/{user_id}/application_credentials",
                            app.config.public_url
                        ), "next": null, "previous": null},
                    }),
                ),
                Err(e) => error(e),
            }
        }
        (Method::GET, [id]) => match app.identity.get_app_credential(user_id, id).await {
            Ok(Some(c)) => json(
                StatusCode::OK,
                &json!({"application_credential": render(app, &c)}),
            ),
            Ok(None) => not_found(id),
            Err(e) => error(e),
        },
        (Method::DELETE, [id]) => match app.identity.delete_app_credential(user_id, id).await {
            Ok(true) => empty(StatusCode::NO_CONTENT),
            Ok(false) => not_found(id),
            Err(e) => error(e),
        },
        (_, [] | [_]) => keystone_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => keystone_error(StatusCode::NOT_FOUND, "The resource could not be found."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked() {
        let ok = parse_new(&json!({"application_credential": {"name": "ci",
            "expires_at": "2030-01-01T00:00:00.5", "roles": [{"name": "member"}, {"id": "r1"}],
            "unrestricted": true}}))
        .unwrap();
        assert_eq!(ok.name, "ci");
        assert_eq!(ok.roles.len(), 2);
        assert!(ok.unrestricted && ok.expires_us.is_some() && ok.secret.is_none());
        for bad in [
            json!({}),
            json!({"application_credential": "x"}),
            json!({"application_credential": {}}),
            json!({"application_credential": {"name": 3}}),
            json!({"application_credential": {"name": "a", "expires_at": "soon"}}),
            json!({"application_credential": {"name": "a", "unrestricted": "yes"}}),
            json!({"application_credential": {"name": "a", "roles": [{}]}}),
            json!({"application_credential": {"name": "a", "roles": "member"}}),
            json!({"application_credential": {"name": "a", "access_rules": [{"path": "/"}]}}),
        ] {
            assert!(parse_new(&bad).is_err(), "{bad}");
        }
    }
}
