//! Nova's keypairs, limits and quota sets, at microversion 2.1.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::compute::{nova_error, store_error};
use super::http::{empty, json, read_json, Body};
use super::App;
use crate::compute::keypairs::{fingerprint, Keypair};
use crate::compute::quotas::{Quota, DEFAULT_QUOTA};
use crate::identity::{now, Auth};

/// Handles keypair, limit and quota paths; None for anything else.
pub async fn route(
    app: &App,
    auth: &Auth,
    req: Request<Incoming>,
    rest: &[&str],
) -> Option<Response<Body>> {
    let user = auth.user.id.as_str();
    let project = auth.project_id().unwrap_or_default().to_owned();
    Some(match (req.method().clone(), rest) {
        (Method::GET, ["os-keypairs"]) => match app.keypairs.list(user).await {
            Ok(list) => json(
                StatusCode::OK,
                &json!({"keypairs": list.iter().map(|k| json!({"keypair": {
                    "name": k.name, "public_key": k.public_key, "fingerprint": k.fingerprint}})).collect::<Vec<_>>()}),
            ),
            Err(e) => store_error(e),
        },
        (Method::POST, ["os-keypairs"]) => create_keypair(app, auth, req).await,
        (Method::GET, ["os-keypairs", name]) => match app.keypairs.get(user, name).await {
            Ok(Some(k)) => json(
                StatusCode::OK,
                &json!({"keypair": {
                    "name": k.name, "public_key": k.public_key, "fingerprint": k.fingerprint,
                    "user_id": user, "id": 0, "deleted": false, "deleted_at": null, "updated_at": null,
                    "created_at": super::http::iso_micros(k.created_at).replace(".000000Z", ".000000"),
                }}),
            ),
            Ok(None) => nova_error(
                StatusCode::NOT_FOUND,
                &format!("Keypair {name} not found for user {user}"),
            ),
            Err(e) => store_error(e),
        },
        (Method::DELETE, ["os-keypairs", name]) => match app.keypairs.delete(user, name).await {
            Ok(true) => empty(StatusCode::ACCEPTED),
            Ok(false) => nova_error(
                StatusCode::NOT_FOUND,
                &format!("Keypair {name} not found for user {user}"),
            ),
            Err(e) => store_error(e),
        },
        (Method::GET, ["limits"]) => limits(app, &project).await,
        (Method::GET, ["os-quota-sets", p]) => quota_set(app, auth, p, false).await,
        (Method::GET, ["os-quota-sets", p, "defaults"]) => quota_set(app, auth, p, true).await,
        (Method::PUT, ["os-quota-sets", p]) => {
            let p = p.to_string();
            update_quota(app, auth, &p, req).await
        }
        _ => return None,
    })
}

async fn create_keypair(app: &App, auth: &Auth, req: Request<Incoming>) -> Response<Body> {
    let body = match read_json(req, nova_error).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(k) = body.get("keypair") else {
        return nova_error(StatusCode::BAD_REQUEST, "'keypair' is a required property");
    };
    let valid_name = |n: &&str| {
        (1..=255).contains(&n.len())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || " _-.@".contains(c))
    };
    let Some(name) = k.get("name").and_then(Json::as_str).filter(valid_name) else {
        return nova_error(
            StatusCode::BAD_REQUEST,
            "Keypair data is invalid: name must be 1-255 of letters, digits, ' _-.@'",
        );
    };
    let Some(public_key) = k.get("public_key").and_then(Json::as_str) else {
        return nova_error(
            StatusCode::BAD_REQUEST,
            "Keypair data is invalid: public_key is required (clients generate their keys)",
        );
    };
    let (key_type, fp) = match fingerprint(public_key) {
        Ok(f) => f,
        Err(e) => {
            return nova_error(
                StatusCode::BAD_REQUEST,
                &format!("Keypair data is invalid: {e}"),
            )
        }
    };
    let user = auth.user.id.as_str();
    let quota = match app.quotas.get(auth.project_id().unwrap_or_default()).await {
        Ok(q) => q,
        Err(e) => return store_error(e),
    };
    match app.keypairs.count(user).await {
        Ok(n) if n >= quota.key_pairs => {
            return nova_error(StatusCode::FORBIDDEN, "Quota exceeded, too many key pairs.")
        }
        Ok(_) => {}
        Err(e) => return store_error(e),
    }
    let keypair = Keypair {
        name: name.to_owned(),
        public_key: public_key.trim().to_owned(),
        fingerprint: fp,
        key_type,
        created_at: now(),
    };
    match app.keypairs.create(user, &keypair).await {
        Ok(()) => json(
            StatusCode::OK,
            &json!({"keypair": {
            "name": keypair.name, "public_key": keypair.public_key,
            "fingerprint": keypair.fingerprint, "user_id": user}}),
        ),
        Err(e) => store_error(e),
    }
}

fn quota_json(project: &str, q: &Quota) -> Json {
    json!({"quota_set": {
        "id": project, "instances": q.instances, "cores": q.cores, "ram": q.ram_mib,
        "key_pairs": q.key_pairs, "metadata_items": 128, "injected_files": 5,
        "injected_file_content_bytes": 10240, "injected_file_path_bytes": 255,
        "server_groups": 10, "server_group_members": 10, "fixed_ips": -1, "floating_ips": -1,
        "security_groups": -1, "security_group_rules": -1,
    }})
}

async fn quota_set(app: &App, auth: &Auth, project: &str, defaults: bool) -> Response<Body> {
    if project != auth.project_id().unwrap_or_default() && !auth.is_admin() {
        return nova_error(
            StatusCode::FORBIDDEN,
            "Policy doesn't allow this operation.",
        );
    }
    if defaults {
        return json(StatusCode::OK, &quota_json(project, &DEFAULT_QUOTA));
    }
    match app.quotas.get(project).await {
        Ok(q) => json(StatusCode::OK, &quota_json(project, &q)),
        Err(e) => store_error(e),
    }
}

async fn update_quota(
    app: &App,
    auth: &Auth,
    project: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    if !auth.is_admin() {
        return nova_error(
            StatusCode::FORBIDDEN,
            "Policy doesn't allow this operation: admin only.",
        );
    }
    let body = match read_json(req, nova_error).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(set) = body.get("quota_set").and_then(Json::as_object) else {
        return nova_error(
            StatusCode::BAD_REQUEST,
            "'quota_set' is a required property",
        );
    };
    let mut q = match app.quotas.get(project).await {
        Ok(q) => q,
        Err(e) => return store_error(e),
    };
    for (k, v) in set {
        let n = match v {
            Json::Number(n) => n.as_i64(),
            Json::String(s) => s.parse().ok(),
            _ => None,
        };
        let Some(n) = n.filter(|n| *n >= -1) else {
            return nova_error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid input for field/attribute {k}: not an integer >= -1"),
            );
        };
        match k.as_str() {
            "instances" => q.instances = n,
            "cores" => q.cores = n,
            "ram" => q.ram_mib = n,
            "key_pairs" => q.key_pairs = n,
            "force" => {}
            other => {
                return nova_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Additional properties are not allowed ('{other}' was unexpected)"),
                )
            }
        }
    }
    match app.quotas.set(project, &q).await {
        Ok(()) => json(StatusCode::OK, &quota_json(project, &q)),
        Err(e) => store_error(e),
    }
}

async fn limits(app: &App, project: &str) -> Response<Body> {
    let (q, used) = match (
        app.quotas.get(project).await,
        app.servers.usage(project).await,
    ) {
        (Ok(q), Ok(u)) => (q, u),
        (Err(e), _) | (_, Err(e)) => return store_error(e),
    };
    json(
        StatusCode::OK,
        &json!({"limits": {"rate": [], "absolute": {
            "maxTotalInstances": q.instances, "maxTotalCores": q.cores, "maxTotalRAMSize": q.ram_mib,
            "maxTotalKeypairs": q.key_pairs, "maxServerMeta": 128, "maxImageMeta": 128, "maxPersonality": 5,
            "maxPersonalitySize": 10240, "maxServerGroups": 10, "maxServerGroupMembers": 10,
            "maxSecurityGroups": -1, "maxSecurityGroupRules": -1, "maxTotalFloatingIps": -1,
            "totalInstancesUsed": used.instances, "totalCoresUsed": used.cores, "totalRAMUsed": used.ram_mib,
            "totalServerGroupsUsed": 0, "totalSecurityGroupsUsed": 0, "totalFloatingIpsUsed": 0,
        }}}),
    )
}
