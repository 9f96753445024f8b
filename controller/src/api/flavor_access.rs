//! Nova's flavor access: which projects a private flavor is open to.
//! `GET /flavors/{id}/os-flavor-access` lists them; the flavor actions
//! `addTenantAccess` and `removeTenantAccess` change them. Admins only, as
//! Nova's defaults. A public flavor is open to everyone and has no list.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::compute::{nova_error, store_error};
use super::http::{json, read_json, Body};
use super::App;
use crate::compute::flavors::Flavor;
use crate::identity::{Auth, Table};

/// `GET /flavors/{id}/os-flavor-access`.
pub async fn list(app: &App, auth: &Auth, id: &str) -> Response<Body> {
    let flavor = match admins_flavor(app, auth, id, "os-flavor-access").await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if flavor.is_public {
        return nova_error(
            StatusCode::NOT_FOUND,
            "Access list not available for public flavors.",
        );
    }
    render(app, id).await
}

/// `POST /flavors/{id}/action`: `addTenantAccess` or `removeTenantAccess`.
pub async fn action(app: &App, auth: &Auth, req: Request<Incoming>, id: &str) -> Response<Body> {
    let body = match read_json(req, nova_error).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (name, args) = match body
        .as_object()
        .map(|o| o.iter().next().filter(|_| o.len() == 1))
    {
        Some(Some((name, args))) => (name.as_str(), args),
        _ => return bad("the body is one action: addTenantAccess or removeTenantAccess"),
    };
    let adding = match name {
        "addTenantAccess" => true,
        "removeTenantAccess" => false,
        other => return bad(&format!("Unsupported flavor action \"{other}\"")),
    };
    let policy = if adding {
        "os-flavor-access:add_tenant_access"
    } else {
        "os-flavor-access:remove_tenant_access"
    };
    let flavor = match admins_flavor(app, auth, id, policy).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let project = match tenant(args, name) {
        Ok(p) => p,
        Err(m) => return bad(&m),
    };
    match app.identity.get(Table::Projects, project).await {
        Ok(Some(_)) => {}
        Ok(None) => return bad(&format!("Project ID {project} is not a valid project.")),
        Err(e) => {
            tracing::error!("looking up project {project}: {e}");
            return nova_error(StatusCode::INTERNAL_SERVER_ERROR, "identity lookup failed");
        }
    }
    if adding {
        if flavor.is_public {
            return nova_error(
                StatusCode::CONFLICT,
                "Can not add access to a public flavor.",
            );
        }
        match app.flavors.add_access(id, project).await {
            Ok(true) => {}
            Ok(false) => {
                return nova_error(
                    StatusCode::CONFLICT,
                    &format!(
                        "Flavor access already exists for flavor {id} and project {project} combination."
                    ),
                )
            }
            Err(e) => return store_error(e),
        }
    } else {
        match app.flavors.remove_access(id, project).await {
            Ok(true) => {}
            Ok(false) => {
                return nova_error(
                    StatusCode::NOT_FOUND,
                    &format!("Flavor access not found for {id} / {project} combination."),
                )
            }
            Err(e) => return store_error(e),
        }
    }
    render(app, id).await
}

/// The flavor, when the caller is an admin and it exists.
async fn admins_flavor(
    app: &App,
    auth: &Auth,
    id: &str,
    policy: &str,
) -> Result<Flavor, Response<Body>> {
    if !auth.is_admin() {
        return Err(nova_error(
            StatusCode::FORBIDDEN,
            &format!("Policy doesn't allow os_compute_api:{policy} to be performed: admin only."),
        ));
    }
    match app.flavors.get(id).await {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(nova_error(
            StatusCode::NOT_FOUND,
            &format!("Flavor {id} could not be found."),
        )),
        Err(e) => Err(store_error(e)),
    }
}

/// The action's `{"tenant": "..."}`, as Nova's schema takes it.
fn tenant<'a>(args: &'a Json, action: &str) -> Result<&'a str, String> {
    let Some(o) = args.as_object() else {
        return Err(format!(
            "Invalid input for field/attribute {action}: must be an object"
        ));
    };
    if let Some(extra) = o.keys().find(|k| *k != "tenant") {
        return Err(format!(
            "Invalid input for field/attribute {action}: Additional properties are not allowed ('{extra}' was unexpected)"
        ));
    }
    match o.get("tenant") {
        Some(Json::String(t)) if (1..=255).contains(&t.len()) => Ok(t),
        Some(_) => Err(format!(
            "Invalid input for field/attribute tenant: a string of 1 to 255 characters is expected in {action}"
        )),
        None => Err(format!(
            "Invalid input for field/attribute {action}: 'tenant' is a required property"
        )),
    }
}

async fn render(app: &App, id: &str) -> Response<Body> {
    match app.flavors.access(id).await {
        Ok(projects) => {
            let access: Vec<Json> = projects
                .iter()
                .map(|p| json!({"flavor_id": id, "tenant_id": p}))
                .collect();
            json(StatusCode::OK, &json!({ "flavor_access": access }))
        }
        Err(e) => store_error(e),
    }
}

fn bad(message: &str) -> Response<Body> {
    nova_error(StatusCode::BAD_REQUEST, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_is_one_non_empty_string() {
        assert_eq!(
            tenant(&json!({"tenant": "p1"}), "addTenantAccess"),
            Ok("p1")
        );
        for (args, says) in [
            (json!("p1"), "must be an object"),
            (json!({}), "'tenant' is a required property"),
            (json!({"tenant": ""}), "1 to 255"),
            (json!({"tenant": 7}), "1 to 255"),
            (json!({"tenant": "p", "x": 1}), "('x' was unexpected)"),
        ] {
            let err = tenant(&args, "addTenantAccess").unwrap_err();
            assert!(err.contains(says), "{args}: {err}");
        }
    }
}
