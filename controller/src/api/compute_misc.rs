//! Nova's keypairs, limits and quota sets, at microversion 2.1.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::compute::{nova_error, store_error};
use super::http::{empty, json, read_json, Body, Microversion};
use super::App;
use crate::compute::keypairs::{self, fingerprint, x509_fingerprint, Keypair};
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
    let version = super::compute::version_of(&req);
    // From 2.10 an admin may name another user's keypairs.
    let q = super::http::query_params(&req);
    let user = match q.get("user_id") {
        Some(other) if version >= (2, 10) && other != user => {
            if !auth.is_admin() {
                return Some(nova_error(
                    StatusCode::FORBIDDEN,
                    "Policy doesn't allow another user's keypairs (admin only).",
                ));
            }
            other.as_str()
        }
        _ => user,
    };
    let typed = version >= (2, 2);
    Some(match (req.method().clone(), rest) {
        (Method::GET, ["os-keypairs"]) => match app.keypairs.list(user).await {
            Ok(list) => match keypair_page(list, &q, version) {
                Ok((page, next)) => {
                    let mut body = json!({"keypairs": page.iter().map(|k| {
                        let mut v = json!({"name": k.name, "public_key": k.public_key,
                                           "fingerprint": k.fingerprint});
                        if typed {
                            v["type"] = json!(k.key_type);
                        }
                        json!({ "keypair": v })
                    }).collect::<Vec<_>>()});
                    if let Some(marker) = next {
                        body["keypairs_links"] = json!([{"rel": "next", "href": format!(
                            "{}/compute/v2.1/os-keypairs?limit={}&marker={marker}",
                            app.config.public_url, page.len())}]);
                    }
                    json(StatusCode::OK, &body)
                }
                Err(m) => nova_error(StatusCode::BAD_REQUEST, &m),
            },
            Err(e) => store_error(e),
        },
        (Method::POST, ["os-keypairs"]) => create_keypair(app, auth, req, version).await,
        (Method::GET, ["os-keypairs", name]) => match app.keypairs.get(user, name).await {
            Ok(Some(k)) => {
                let mut v = json!({
                    "name": k.name, "public_key": k.public_key, "fingerprint": k.fingerprint,
                    "user_id": user, "id": 0, "deleted": false, "deleted_at": null, "updated_at": null,
                    "created_at": super::http::iso_micros(k.created_at).replace(".000000Z", ".000000"),
                });
                if typed {
                    v["type"] = json!(k.key_type);
                }
                json(StatusCode::OK, &json!({ "keypair": v }))
            }
            Ok(None) => nova_error(
                StatusCode::NOT_FOUND,
                &format!("Keypair {name} not found for user {user}"),
            ),
            Err(e) => store_error(e),
        },
        (Method::DELETE, ["os-keypairs", name]) => match app.keypairs.delete(user, name).await {
            // 202 at 2.1, 204 from 2.2.
            Ok(true) if version >= (2, 2) => empty(StatusCode::NO_CONTENT),
            Ok(true) => empty(StatusCode::ACCEPTED),
            Ok(false) => nova_error(
                StatusCode::NOT_FOUND,
                &format!("Keypair {name} not found for user {user}"),
            ),
            Err(e) => store_error(e),
        },
        (Method::GET, ["limits"]) => limits(app, &project, version).await,
        (Method::GET, ["os-quota-sets", p]) => quota_set(app, auth, p, false, version).await,
        (Method::GET, ["os-quota-sets", p, "defaults"]) => {
            quota_set(app, auth, p, true, version).await
        }
        (Method::GET, ["os-quota-sets", p, "detail"]) => quota_detail(app, auth, p, version).await,
        (Method::DELETE, ["os-quota-sets", p]) => {
            if !auth.is_admin() {
                return Some(nova_error(
                    StatusCode::FORBIDDEN,
                    "Policy doesn't allow os_compute_api:os-quota-sets:delete to be performed: admin only.",
                ));
            }
            // Back to the defaults (202 whether it had its own or not, as Nova).
            match app.quotas.delete(p).await {
                Ok(_) => empty(StatusCode::ACCEPTED),
                Err(e) => store_error(e),
            }
        }
        (Method::PUT, ["os-quota-sets", p]) => {
            let p = p.to_string();
            update_quota(app, auth, &p, req, version).await
        }
        _ => return None,
    })
}

/// A page of keypairs (2.35 on: `limit`, and `marker` naming the last
/// keypair of the page before); with the marker of the next page when full.
fn keypair_page(
    mut list: Vec<Keypair>,
    q: &std::collections::BTreeMap<String, String>,
    version: Microversion,
) -> Result<(Vec<Keypair>, Option<String>), String> {
    if version < (2, 35) {
        return Ok((list, None));
    }
    if let Some(marker) = q.get("marker") {
        match list.iter().position(|k| &k.name == marker) {
            Some(i) => {
                list.drain(..=i);
            }
            None => return Err(format!("marker [{marker}] not found")),
        }
    }
    let Some(limit) = q.get("limit") else {
        return Ok((list, None));
    };
    let limit: usize = limit
        .parse()
        .map_err(|_| format!("limit must be a non-negative integer: {limit:?}"))?;
    let full = list.len() > limit;
    list.truncate(limit);
    let next = full.then(|| list.last().map(|k| k.name.clone())).flatten();
    Ok((list, next))
}

async fn create_keypair(
    app: &App,
    auth: &Auth,
    req: Request<Incoming>,
    version: Microversion,
) -> Response<Body> {
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
    let given = match k.get("public_key") {
        None => None,
        Some(Json::String(key)) => Some(key.as_str()),
        Some(_) => {
            return nova_error(
                StatusCode::BAD_REQUEST,
                "Invalid input for field/attribute public_key. Value is not a string",
            )
        }
    };
    // 2.2 adds the type: ssh (the default) or x509.
    let asked_type = match k.get("type") {
        None => "ssh",
        Some(Json::String(t)) if version >= (2, 2) && (t == "ssh" || t == "x509") => t.as_str(),
        Some(_) if version < (2, 2) => {
            return nova_error(
                StatusCode::BAD_REQUEST,
                "Invalid input for field/attribute keypair. Additional properties are not allowed ('type' was unexpected)",
            )
        }
        Some(other) => {
            return nova_error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid input for field/attribute type. Value: {other}. not one of ssh, x509"),
            )
        }
    };
    // From 2.10 an admin may make a keypair for another user.
    let user = match k.get("user_id") {
        None => auth.user.id.as_str(),
        Some(Json::String(other)) if version >= (2, 10) && (1..=255).contains(&other.len()) => {
            if other != &auth.user.id && !auth.is_admin() {
                return nova_error(
                    StatusCode::FORBIDDEN,
                    "Policy doesn't allow a keypair for another user (admin only).",
                );
            }
            other.as_str()
        }
        Some(_) if version < (2, 10) => {
            return nova_error(
                StatusCode::BAD_REQUEST,
                "Invalid input for field/attribute keypair. Additional properties are not allowed ('user_id' was unexpected)",
            )
        }
        Some(other) => {
            return nova_error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid input for field/attribute user_id. Value: {other}. not a string of 1 to 255 characters"),
            )
        }
    };
    // Without a public key, one is made here (Nova's behaviour before
    // 2.92) and its private half answered once.
    let (public_key, private_key) = match given {
        Some(key) => (key.to_owned(), None),
        None if asked_type == "x509" => {
            let user = user.to_owned();
            match tokio::task::spawn_blocking(move || keypairs::generate_x509(&user)).await {
                Ok(Ok((cert, private))) => (cert, Some(private)),
                Ok(Err(e)) => return nova_error(StatusCode::INTERNAL_SERVER_ERROR, &e),
                Err(e) => {
                    return nova_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("generating an x509 key pair: {e}"),
                    )
                }
            }
        }
        None => match keypairs::generate("Generated-by-Virga") {
            Ok((public, private)) => (public, Some(private)),
            Err(e) => return nova_error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        },
    };
    let public_key = public_key.as_str();
    let checked = if asked_type == "x509" {
        x509_fingerprint(public_key).map(|fp| ("x509".to_owned(), fp))
    } else {
        fingerprint(public_key)
    };
    let (key_type, fp) = match checked {
        Ok(f) => f,
        Err(e) => {
            return nova_error(
                StatusCode::BAD_REQUEST,
                &format!("Keypair data is invalid: {e}"),
            )
        }
    };
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
        Ok(()) => {
            let mut v = json!({"name": keypair.name, "public_key": keypair.public_key,
                               "fingerprint": keypair.fingerprint, "user_id": user});
            if let Some(private) = private_key {
                v["private_key"] = json!(private);
            }
            // 2.2 also answers 201.
            if version >= (2, 2) {
                v["type"] = json!(keypair.key_type);
                return json(StatusCode::CREATED, &json!({ "keypair": v }));
            }
            json(StatusCode::OK, &json!({ "keypair": v }))
        }
        Err(e) => store_error(e),
    }
}

/// Quota keys of the network proxies, gone from 2.36 on.
const NETWORK_QUOTAS: &[&str] = &[
    "fixed_ips",
    "floating_ips",
    "security_groups",
    "security_group_rules",
];

fn quota_json(project: &str, q: &Quota, version: Microversion) -> Json {
    let mut set = json!({
        "id": project, "instances": q.instances, "cores": q.cores, "ram": q.ram_mib,
        "key_pairs": q.key_pairs, "metadata_items": 128, "injected_files": 5,
        "injected_file_content_bytes": 10240, "injected_file_path_bytes": 255,
        "server_groups": 10, "server_group_members": 10, "fixed_ips": -1, "floating_ips": -1,
        "security_groups": -1, "security_group_rules": -1,
    });
    if version >= (2, 36) {
        if let Some(m) = set.as_object_mut() {
            m.retain(|k, _| !NETWORK_QUOTAS.contains(&k.as_str()));
        }
    }
    json!({ "quota_set": set })
}

/// A project's quotas are read by its members and by admins.
fn others_quota(auth: &Auth, project: &str) -> Option<Response<Body>> {
    (project != auth.project_id().unwrap_or_default() && !auth.is_admin()).then(|| {
        nova_error(
            StatusCode::FORBIDDEN,
            "Policy doesn't allow this operation.",
        )
    })
}

async fn quota_set(
    app: &App,
    auth: &Auth,
    project: &str,
    defaults: bool,
    version: Microversion,
) -> Response<Body> {
    if let Some(refused) = others_quota(auth, project) {
        return refused;
    }
    if defaults {
        return json(
            StatusCode::OK,
            &quota_json(project, &DEFAULT_QUOTA, version),
        );
    }
    match app.quotas.get(project).await {
        Ok(q) => json(StatusCode::OK, &quota_json(project, &q, version)),
        Err(e) => store_error(e),
    }
}

/// `GET /os-quota-sets/{project}/detail`: each limit with what is in use
/// (`reserved` is always 0: nothing is held back between a check and its
/// use, which happen in one transaction).
async fn quota_detail(
    app: &App,
    auth: &Auth,
    project: &str,
    version: Microversion,
) -> Response<Body> {
    if let Some(refused) = others_quota(auth, project) {
        return refused;
    }
    let (q, used, groups) = match (
        app.quotas.get(project).await,
        app.servers.usage(project).await,
        app.server_groups.list(Some(project)).await,
    ) {
        (Ok(q), Ok(u), Ok(g)) => (q, u, g.len() as i64),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return store_error(e),
    };
    let mut set = quota_json(project, &q, version)["quota_set"].take();
    if let Some(o) = set.as_object_mut() {
        for (key, limit) in o.iter_mut().filter(|(k, _)| *k != "id") {
            let in_use = match key.as_str() {
                "instances" => used.instances,
                "cores" => used.cores,
                "ram" => used.ram_mib,
                "server_groups" => groups,
                // Per-request limits, and key pairs (counted per user).
                _ => 0,
            };
            *limit = json!({"limit": limit.take(), "in_use": in_use, "reserved": 0});
        }
    }
    json(StatusCode::OK, &json!({ "quota_set": set }))
}

async fn update_quota(
    app: &App,
    auth: &Auth,
    project: &str,
    req: Request<Incoming>,
    version: Microversion,
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
        // `force` (set below what is in use) is a boolean, as in Nova's
        // schema; no limit here is checked against use.
        if k == "force" {
            let boolean = matches!(v, Json::Bool(_))
                || v.as_str().is_some_and(|s| {
                    ["true", "false", "yes", "no", "on", "off", "1", "0"]
                        .contains(&s.to_ascii_lowercase().as_str())
                });
            if !boolean {
                return nova_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid input for field/attribute force. Value: {v}. {v} is not of type 'boolean'"),
                );
            }
            continue;
        }
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
            other => {
                return nova_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Additional properties are not allowed ('{other}' was unexpected)"),
                )
            }
        }
    }
    match app.quotas.set(project, &q).await {
        Ok(()) => {
            // Nova's update answers the set without its `id`.
            let mut set = quota_json(project, &q, version);
            if let Some(o) = set["quota_set"].as_object_mut() {
                o.remove("id");
            }
            json(StatusCode::OK, &set)
        }
        Err(e) => store_error(e),
    }
}

async fn limits(app: &App, project: &str, version: Microversion) -> Response<Body> {
    let (q, used) = match (
        app.quotas.get(project).await,
        app.servers.usage(project).await,
    ) {
        (Ok(q), Ok(u)) => (q, u),
        (Err(e), _) | (_, Err(e)) => return store_error(e),
    };
    let mut absolute = json!({
            "maxTotalInstances": q.instances, "maxTotalCores": q.cores, "maxTotalRAMSize": q.ram_mib,
            "maxTotalKeypairs": q.key_pairs, "maxServerMeta": 128, "maxImageMeta": 128, "maxPersonality": 5,
            "maxPersonalitySize": 10240, "maxServerGroups": 10, "maxServerGroupMembers": 10,
            "maxSecurityGroups": -1, "maxSecurityGroupRules": -1, "maxTotalFloatingIps": -1,
            "totalInstancesUsed": used.instances, "totalCoresUsed": used.cores, "totalRAMUsed": used.ram_mib,
            "totalServerGroupsUsed": 0, "totalSecurityGroupsUsed": 0, "totalFloatingIpsUsed": 0,
    });
    // The network proxies' limits end at 2.36, image metadata's at 2.39.
    let gone: &[&str] = match version {
        v if v >= (2, 39) => &[
            "maxSecurityGroups",
            "maxSecurityGroupRules",
            "maxTotalFloatingIps",
            "totalSecurityGroupsUsed",
            "totalFloatingIpsUsed",
            "maxImageMeta",
        ],
        v if v >= (2, 36) => &[
            "maxSecurityGroups",
            "maxSecurityGroupRules",
            "maxTotalFloatingIps",
            "totalSecurityGroupsUsed",
            "totalFloatingIpsUsed",
        ],
        _ => &[],
    };
    if let Some(m) = absolute.as_object_mut() {
        m.retain(|k, _| !gone.contains(&k.as_str()));
    }
    json(
        StatusCode::OK,
        &json!({"limits": {"rate": [], "absolute": absolute}}),
    )
}
