//! Nova's server groups (`/os-server-groups`, the shape of microversions
//! 2.1 to 2.47): create with one policy, list (an admin's `all_projects`),
//! show with the members, delete. Servers join one at create through the
//! `group` scheduler hint; the scheduler follows its policy.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::compute::{nova_error, store_error, version_of};
use super::http::{empty, json, read_json, Body, Microversion};
use super::App;
use crate::compute::server_groups::{ServerGroup, MAX_GROUPS, POLICIES};
use crate::identity::{now, Auth};

/// Handles `/os-server-groups...`; None for other paths.
pub async fn route(
    app: &App,
    auth: &Auth,
    req: Request<Incoming>,
    rest: &[&str],
) -> Option<Response<Body>> {
    let version = version_of(&req);
    let q = super::http::query_params(&req);
    Some(match (req.method().clone(), rest) {
        (Method::GET, ["os-server-groups"]) => {
            let all = auth.is_admin()
                && matches!(
                    q.get("all_projects").map(String::as_str),
                    Some("1" | "true" | "True")
                );
            let project = (!all).then(|| auth.project_id().unwrap_or_default());
            match app.server_groups.list(project).await {
                Ok(groups) => {
                    let mut views = Vec::new();
                    for g in &groups {
                        match view(app, g, version).await {
                            Ok(v) => views.push(v),
                            Err(r) => return Some(r),
                        }
                    }
                    json(StatusCode::OK, &json!({ "server_groups": views }))
                }
                Err(e) => store_error(e),
            }
        }
        (Method::POST, ["os-server-groups"]) => create(app, auth, req, version).await,
        (Method::GET, ["os-server-groups", id]) => match visible(app, auth, id).await {
            Ok(g) => match view(app, &g, version).await {
                Ok(v) => json(StatusCode::OK, &json!({ "server_group": v })),
                Err(r) => r,
            },
            Err(r) => r,
        },
        (Method::DELETE, ["os-server-groups", id]) => match visible(app, auth, id).await {
            Ok(g) => match app.server_groups.delete(&g.id).await {
                Ok(_) => empty(StatusCode::NO_CONTENT),
                Err(e) => store_error(e),
            },
            Err(r) => r,
        },
        (_, ["os-server-groups", ..]) => {
            nova_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.")
        }
        _ => return None,
    })
}

/// The group, if the caller's project owns it (any for admins).
pub async fn visible(app: &App, auth: &Auth, id: &str) -> Result<ServerGroup, Response<Body>> {
    match app.server_groups.get(id).await {
        Ok(Some(g)) if auth.is_admin() || Some(g.project_id.as_str()) == auth.project_id() => Ok(g),
        Ok(_) => Err(nova_error(
            StatusCode::NOT_FOUND,
            &format!("Instance group {id} could not be found."),
        )),
        Err(e) => Err(store_error(e)),
    }
}

async fn view(app: &App, g: &ServerGroup, version: Microversion) -> Result<Json, Response<Body>> {
    let members = app
        .server_groups
        .members(&g.id)
        .await
        .map_err(store_error)?;
    let mut v = json!({
        "id": g.id, "name": g.name, "policies": [g.policy], "members": members, "metadata": {},
    });
    if version >= (2, 13) {
        v["project_id"] = json!(g.project_id);
        v["user_id"] = json!(g.user_id);
    }
    Ok(v)
}

async fn create(
    app: &App,
    auth: &Auth,
    req: Request<Incoming>,
    version: Microversion,
) -> Response<Body> {
    let body = match read_json(req, nova_error).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let bad = |m: &str| nova_error(StatusCode::BAD_REQUEST, m);
    let g = &body["server_group"];
    let Some(name) = g["name"]
        .as_str()
        .filter(|n| (1..=255).contains(&n.trim().chars().count()))
    else {
        return bad("Invalid input for field/attribute name: 1 to 255 characters are required");
    };
    // One policy; the soft ones from 2.15.
    let known = |p: &str| POLICIES.contains(&p) && (version >= (2, 15) || !p.starts_with("soft-"));
    let policy = match g["policies"].as_array().map(Vec::as_slice) {
        Some([Json::String(p)]) if known(p) => p.clone(),
        _ => {
            return bad(
                "Invalid input for field/attribute policies: one of affinity, anti-affinity (soft-affinity, soft-anti-affinity from 2.15)",
            )
        }
    };
    let group = ServerGroup {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: auth.project_id().unwrap_or_default().to_owned(),
        user_id: auth.user.id.clone(),
        name: name.trim().to_owned(),
        policy,
        created_at: now(),
    };
    match app.server_groups.create(&group, MAX_GROUPS).await {
        Ok(true) => match view(app, &group, version).await {
            Ok(v) => json(StatusCode::OK, &json!({ "server_group": v })),
            Err(r) => r,
        },
        Ok(false) => nova_error(
            StatusCode::FORBIDDEN,
            "Quota exceeded, too many server groups.",
        ),
        Err(e) => store_error(e),
    }
}
