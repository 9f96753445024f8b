//! Nova's `os-migrations` (admin only): the migration records of servers'
//! resizes ([`crate::compute::migrations`]), filtered by `host`, `status`,
//! `instance_uuid` and `migration_type`; from 2.23 each names its type.
//! `openstack server migration list` reads it.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::compute::{nova_error, store_error, version_of};
use super::http::{iso_micros, json, query_params, Body};
use super::App;
use crate::compute::migrations::{Filter, Migration};
use crate::identity::Auth;

/// Handles `/os-migrations`.
pub async fn route(app: &App, auth: &Auth, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return nova_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.");
    }
    if !auth.is_admin() {
        return nova_error(
            StatusCode::FORBIDDEN,
            "Policy doesn't allow os_compute_api:os-migrations:index to be performed.",
        );
    }
    let with_type = version_of(&req) >= (2, 23);
    let q = query_params(&req);
    let arg = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let filter = Filter {
        host: arg("host"),
        status: arg("status"),
        instance_uuid: arg("instance_uuid"),
        migration_type: arg("migration_type"),
    };
    match app.migrations.list(&filter).await {
        Ok(list) => {
            let list: Vec<Json> = list.iter().map(|m| view(m, with_type)).collect();
            json(StatusCode::OK, &json!({ "migrations": list }))
        }
        Err(e) => store_error(e),
    }
}

/// Nova's view: its time stamps without a zone, and the flavors' integer
/// ids (which Virga's flavors do not have) null.
fn view(m: &Migration, with_type: bool) -> Json {
    let time = |t: i64| iso_micros(t).replace('Z', "");
    let mut v = json!({
        "id": m.id, "status": m.status, "instance_uuid": m.instance_uuid,
        "source_node": m.source_compute, "source_compute": m.source_compute,
        "dest_node": m.dest_compute, "dest_compute": m.dest_compute, "dest_host": null,
        "old_instance_type_id": null, "new_instance_type_id": null,
        "created_at": time(m.created_at), "updated_at": m.updated_at.map(time),
    });
    if with_type {
        v["migration_type"] = json!(m.migration_type);
    }
    v
}
