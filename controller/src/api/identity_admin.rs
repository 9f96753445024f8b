//! Keystone v3 administration: domains, projects, users and roles (made,
//! listed, changed, deleted) and role grants on projects. Admin only (403 for everyone else); ids that are not
//! found are 404 so that clients fall back to looking names up.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::http::{empty, json, keystone_error, read_json, Body};
use super::App;
use crate::identity::{Entity, IdentityError, Table};

fn links(app: &App, collection: &str, id: &str) -> Json {
    json!({"self": format!("{}/identity/v3/{collection}/{id}", app.config.public_url)})
}

fn render(app: &App, table: Table, e: &Entity) -> Json {
    match table {
        Table::Domains => {
            json!({"id": e.id, "name": e.name, "enabled": e.enabled, "description": e.description,
                                 "tags": [], "options": {}, "links": links(app, "domains", &e.id)})
        }
        Table::Projects => {
            json!({"id": e.id, "name": e.name, "domain_id": e.domain_id, "enabled": e.enabled,
                                  "description": e.description, "is_domain": false, "parent_id": e.domain_id,
                                  "tags": [], "options": {}, "links": links(app, "projects", &e.id)})
        }
        Table::Users => {
            json!({"id": e.id, "name": e.name, "domain_id": e.domain_id, "enabled": e.enabled,
                               "password_expires_at": null, "options": {}, "links": links(app, "users", &e.id)})
        }
        Table::Roles => {
            let options = if crate::identity::is_immutable_role(&e.name) {
                json!({"immutable": true})
            } else {
                json!({})
            };
            json!({"id": e.id, "name": e.name, "domain_id": null,
                   "description": (!e.description.is_empty()).then_some(&e.description),
                   "options": options, "links": links(app, "roles", &e.id)})
        }
    }
}

/// Keystone's schema: domain and project names up to 64 characters, user
/// and role names up to 255.
fn max_name_len(table: Table) -> usize {
    match table {
        Table::Domains | Table::Projects => 64,
        Table::Users | Table::Roles => 255,
    }
}

fn names(table: Table) -> (&'static str, &'static str) {
    match table {
        Table::Domains => ("domain", "domains"),
        Table::Projects => ("project", "projects"),
        Table::Users => ("user", "users"),
        Table::Roles => ("role", "roles"),
    }
}

pub(super) fn identity_error(e: IdentityError) -> Response<Body> {
    let status = match &e {
        IdentityError::Unauthorized => StatusCode::UNAUTHORIZED,
        IdentityError::BadRequest(_) => StatusCode::BAD_REQUEST,
        IdentityError::Conflict(_) => StatusCode::CONFLICT,
        IdentityError::NotFound(_) => StatusCode::NOT_FOUND,
        IdentityError::Forbidden(_) => StatusCode::FORBIDDEN,
        IdentityError::Store(_) | IdentityError::Internal(_) => {
            tracing::error!("identity admin: {e}");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    keystone_error(status, &e.to_string())
}

fn name_filter(req: &Request<Incoming>) -> Option<String> {
    super::http::query_params(req).remove("name")
}

/// Handles `/identity/v3/{domains,projects,users,roles}...`; None when the
/// path is not one of them.
pub async fn route(app: &App, req: Request<Incoming>, rest: &[&str]) -> Option<Response<Body>> {
    let table = match rest.first() {
        Some(&"domains") => Table::Domains,
        Some(&"projects") => Table::Projects,
        Some(&"users") => Table::Users,
        Some(&"roles") => Table::Roles,
        _ => return None,
    };
    let caller = match super::identity::caller(app, &req).await {
        Ok(a) => a,
        Err(r) => return Some(r),
    };
    // What anyone may read about themselves (Keystone's defaults): their
    // own projects, and the domain their project is in.
    let in_domain = |domain: &str| {
        caller
            .project
            .as_ref()
            .is_some_and(|(_, project_domain)| project_domain.id == domain)
    };
    let own = match (req.method(), table, &rest[1..]) {
        (&Method::GET, Table::Users, [user, "projects"]) if *user == caller.user.id => {
            Some(own_projects(app, user).await)
        }
        (&Method::GET, Table::Domains, [domain]) if in_domain(domain) => {
            Some(own_domain(app, domain).await)
        }
        _ => None,
    };
    if own.is_some() {
        return own;
    }
    if !caller.is_admin() {
        return Some(keystone_error(
            StatusCode::FORBIDDEN,
            "You are not authorized to perform the requested action: admin required.",
        ));
    }
    let (one, many) = names(table);
    let response = match (req.method().clone(), &rest[1..]) {
        (Method::GET, []) => match app.identity.list(table, name_filter(&req).as_deref()).await {
            Ok(list) => json(
                StatusCode::OK,
                &json!({ many: list.iter().map(|e| render(app, table, e)).collect::<Vec<_>>(),
                         "links": {"self": format!("{}/identity/v3/{many}", app.config.public_url), "next": null, "previous": null} }),
            ),
            Err(e) => identity_error(e),
        },
        (Method::GET, [id]) => match app.identity.get(table, id).await {
            Ok(Some(e)) => json(StatusCode::OK, &json!({ one: render(app, table, &e) })),
            Ok(None) => keystone_error(
                StatusCode::NOT_FOUND,
                &format!("Could not find {one}: {id}."),
            ),
            Err(e) => identity_error(e),
        },
        (Method::POST, []) => create(app, table, req).await,
        (Method::PATCH, [id]) => update(app, table, id, req).await,
        (Method::DELETE, [id]) => match app.identity.delete(table, id).await {
            Ok(true) => empty(StatusCode::NO_CONTENT),
            Ok(false) => keystone_error(
                StatusCode::NOT_FOUND,
                &format!("Could not find {one}: {id}."),
            ),
            Err(e) => identity_error(e),
        },
        (m, [project, "users", user, "roles", role]) if table == Table::Projects => {
            grant(app, m, project, user, role).await
        }
        (Method::GET, [project, "users", user, "roles"]) if table == Table::Projects => {
            match app.identity.project_roles(user, project).await {
                Ok(roles) => json(
                    StatusCode::OK,
                    &json!({"roles": roles.iter().map(|r| json!({"id": r.id, "name": r.name,
                        "links": links(app, "roles", &r.id)})).collect::<Vec<_>>()}),
                ),
                Err(e) => identity_error(e),
            }
        }
        _ => keystone_error(StatusCode::NOT_FOUND, "The resource could not be found."),
    };
    Some(response)
}

/// `GET /v3/users/{id}/projects`: the projects a user holds a role in.
async fn own_projects(app: &App, user: &str) -> Response<Body> {
    match app.identity.user_projects(user).await {
        Ok(list) => json(
            StatusCode::OK,
            &json!({"projects": list.iter().map(|e| render(app, Table::Projects, e)).collect::<Vec<_>>(),
                        "links": {"self": format!("{}/identity/v3/users/{user}/projects", app.config.public_url),
                                  "next": null, "previous": null}}),
        ),
        Err(e) => identity_error(e),
    }
}

async fn own_domain(app: &App, domain: &str) -> Response<Body> {
    match app.identity.get(Table::Domains, domain).await {
        Ok(Some(e)) => json(
            StatusCode::OK,
            &json!({"domain": render(app, Table::Domains, &e)}),
        ),
        Ok(None) => keystone_error(
            StatusCode::NOT_FOUND,
            &format!("Could not find domain: {domain}."),
        ),
        Err(e) => identity_error(e),
    }
}

/// Keystone's PATCH of a project, user or role: name, enabled (not a
/// role's), a project's or role's description, a user's password; other
/// fields are refused rather than dropped.
async fn update(app: &App, table: Table, id: &str, req: Request<Incoming>) -> Response<Body> {
    let (one, _) = names(table);
    let body = match read_json(req, keystone_error).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(obj) = body.get(one).and_then(Json::as_object) else {
        return keystone_error(
            StatusCode::BAD_REQUEST,
            &format!("'{one}' is a required property"),
        );
    };
    let mut change = crate::identity::EntityChange::default();
    let longest = max_name_len(table);
    for (key, value) in obj {
        let bad = |what: &str| keystone_error(StatusCode::BAD_REQUEST, &format!("{key}: {what}"));
        match (key.as_str(), value) {
            ("name", Json::String(n)) if (1..=longest).contains(&n.chars().count()) => {
                change.name = Some(n.clone())
            }
            ("name", _) => return bad(&format!("a string of 1 to {longest} characters")),
            ("enabled", Json::Bool(b)) if table != Table::Roles => change.enabled = Some(*b),
            ("enabled", _) if table != Table::Roles => return bad("true or false"),
            ("description", Json::String(d)) if table != Table::Users => {
                change.description = Some(d.clone())
            }
            ("password", Json::String(p)) if table == Table::Users && p.len() >= 8 => {
                change.password = Some(p.clone())
            }
            ("password", _) if table == Table::Users => return bad("at least 8 characters"),
            // Fields clients send back unchanged.
            ("id" | "links" | "domain_id" | "options" | "is_domain" | "parent_id", _) => {}
            _ => return bad("cannot be changed here"),
        }
    }
    match app.identity.update(table, id, &change).await {
        Ok(true) => match app.identity.get(table, id).await {
            Ok(Some(e)) => json(StatusCode::OK, &json!({ one: render(app, table, &e) })),
            Ok(None) => keystone_error(
                StatusCode::NOT_FOUND,
                &format!("Could not find {one}: {id}."),
            ),
            Err(e) => identity_error(e),
        },
        Ok(false) => keystone_error(
            StatusCode::NOT_FOUND,
            &format!("Could not find {one}: {id}."),
        ),
        Err(e) => identity_error(e),
    }
}

async fn create(app: &App, table: Table, req: Request<Incoming>) -> Response<Body> {
    let (one, _) = names(table);
    let body = match read_json(req, keystone_error).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(obj) = body.get(one) else {
        return keystone_error(
            StatusCode::BAD_REQUEST,
            &format!("'{one}' is a required property"),
        );
    };
    let longest = max_name_len(table);
    let Some(name) = obj
        .get("name")
        .and_then(Json::as_str)
        .filter(|n| (1..=longest).contains(&n.chars().count()))
    else {
        return keystone_error(
            StatusCode::BAD_REQUEST,
            &format!("name: a string of 1 to {longest} characters is required"),
        );
    };
    let domain_id = obj
        .get("domain_id")
        .and_then(Json::as_str)
        .unwrap_or(crate::identity::DEFAULT_DOMAIN_ID);
    let created = match table {
        Table::Domains => {
            let description = match obj.get("description") {
                None | Some(Json::Null) => "",
                Some(Json::String(d)) => d,
                Some(_) => return keystone_error(StatusCode::BAD_REQUEST, "description: a string"),
            };
            let enabled = match obj.get("enabled") {
                None => true,
                Some(Json::Bool(b)) => *b,
                Some(_) => {
                    return keystone_error(StatusCode::BAD_REQUEST, "enabled: true or false")
                }
            };
            app.identity.create_domain(name, description, enabled).await
        }
        Table::Roles => {
            // Domain-specific roles are not built: refused, not made global.
            if obj.get("domain_id").is_some_and(|d| !d.is_null()) {
                return keystone_error(
                    StatusCode::BAD_REQUEST,
                    "domain_id: domain-specific roles are not supported",
                );
            }
            let description = match obj.get("description") {
                None | Some(Json::Null) => "",
                Some(Json::String(d)) => d,
                Some(_) => return keystone_error(StatusCode::BAD_REQUEST, "description: a string"),
            };
            app.identity.create_role(name, description).await
        }
        Table::Projects => {
            let description = obj.get("description").and_then(Json::as_str).unwrap_or("");
            app.identity
                .create_project_with(name, domain_id, description)
                .await
        }
        _ => {
            let Some(password) = obj
                .get("password")
                .and_then(Json::as_str)
                .filter(|p| p.len() >= 8)
            else {
                return keystone_error(
                    StatusCode::BAD_REQUEST,
                    "password: at least 8 characters are required",
                );
            };
            app.identity.create_user(name, domain_id, password).await
        }
    };
    match created {
        Ok(id) => match app.identity.get(table, &id).await {
            Ok(Some(e)) => json(StatusCode::CREATED, &json!({ one: render(app, table, &e) })),
            Ok(None) => {
                keystone_error(StatusCode::INTERNAL_SERVER_ERROR, "created, then not found")
            }
            Err(e) => identity_error(e),
        },
        Err(e) => identity_error(e),
    }
}

async fn grant(app: &App, method: Method, project: &str, user: &str, role: &str) -> Response<Body> {
    for (table, id) in [
        (Table::Projects, project),
        (Table::Users, user),
        (Table::Roles, role),
    ] {
        match app.identity.get(table, id).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return keystone_error(
                    StatusCode::NOT_FOUND,
                    &format!("Could not find {}: {id}.", names(table).0),
                )
            }
            Err(e) => return identity_error(e),
        }
    }
    let result = match method {
        Method::PUT => app.identity.grant(user, project, role).await.map(|()| true),
        Method::DELETE => app.identity.ungrant(user, project, role).await,
        Method::HEAD => app
            .identity
            .project_roles(user, project)
            .await
            .map(|roles| roles.iter().any(|r| r.id == role)),
        _ => return keystone_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    };
    match result {
        Ok(true) => empty(StatusCode::NO_CONTENT),
        Ok(false) => keystone_error(StatusCode::NOT_FOUND, "Could not find role assignment."),
        Err(e) => identity_error(e),
    }
}
