//! Keystone's `OS-EC2` credentials: `/identity/v3/users/{user_id}/credentials/OS-EC2[/{access}]`.
//! A user makes, lists, shows and deletes their own (an admin anyone's);
//! `openstack ec2 credentials create|list|show|delete` calls these.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::http::{empty, json, keystone_error, read_json, Body};
use super::App;
use crate::identity::ec2::Ec2Credential;
use crate::identity::IdentityError;

fn render(app: &App, c: &Ec2Credential) -> Json {
    json!({
        "user_id": c.user_id,
        "tenant_id": c.project_id,
        "access": c.access,
        "secret": c.secret,
        "trust_id": null,
        "links": {"self": format!(
            "{}/identity/v3/users/{}/credentials/OS-EC2/{}",
            app.config.public_url, c.user_id, c.access
        )},
    })
}

fn error(e: IdentityError) -> Response<Body> {
    super::identity_admin::identity_error(e)
}

fn not_found(access: &str) -> Response<Body> {
    keystone_error(
        StatusCode::NOT_FOUND,
        &format!("Could not find credential: {access}."),
    )
}

/// Handles `rest` = `[user_id, "credentials", "OS-EC2", more..]`.
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
    if caller.user.id != user_id && !caller.is_admin() {
        return keystone_error(
            StatusCode::FORBIDDEN,
            "You are not authorized to perform the requested action: \
             identity:ec2 credentials of another user.",
        );
    }
    match (req.method().clone(), more) {
        (Method::POST, []) => {
            let body: Json = match read_json(req, keystone_error).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            // Keystone's field is still `tenant_id`; the token's project
            // when it is absent.
            let project = body
                .get("tenant_id")
                .or_else(|| body.get("project_id"))
                .and_then(Json::as_str)
                .map(str::to_owned)
                .or_else(|| caller.project_id().map(str::to_owned));
            let Some(project) = project else {
                return keystone_error(
                    StatusCode::BAD_REQUEST,
                    "tenant_id: the project the credential is for",
                );
            };
            match app.identity.create_ec2(user_id, &project).await {
                Ok(c) => json(StatusCode::CREATED, &json!({"credential": render(app, &c)})),
                Err(e) => error(e),
            }
        }
        (Method::GET, []) => match app.identity.list_ec2(user_id).await {
            Ok(list) => json(
                StatusCode::OK,
                &json!({
                    "credentials": list.iter().map(|c| render(app, c)).collect::<Vec<_>>(),
                    "links": {"self": format!(
                        "{}/identity/v3/users/{user_id}/credentials/OS-EC2",
                        app.config.public_url
                    ), "next": null, "previous": null},
                }),
            ),
            Err(e) => error(e),
        },
        (Method::GET, [access]) => match app.identity.get_ec2(user_id, access).await {
            Ok(Some(c)) => json(StatusCode::OK, &json!({"credential": render(app, &c)})),
            Ok(None) => not_found(access),
            Err(e) => error(e),
        },
        (Method::DELETE, [access]) => match app.identity.delete_ec2(user_id, access).await {
            Ok(true) => empty(StatusCode::NO_CONTENT),
            Ok(false) => not_found(access),
            Err(e) => error(e),
        },
        (_, [] | [_]) => keystone_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => keystone_error(StatusCode::NOT_FOUND, "The resource could not be found."),
    }
}
