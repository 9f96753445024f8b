//! Nova's deprecated `os-hosts` (admin only, up to microversion 2.42; 404
//! from 2.43, as in Nova): what `openstack host list/show/set` call.
//!
//! - the list names each service a host runs: every compute host
//!   ("compute", in its zone) and the controller ("scheduler" and
//!   "conductor", zone "internal"), filtered by `zone`;
//! - a compute host's detail is its totals, what is claimed now, what its
//!   servers' flavors sum to, and that per project;
//! - an update enables or disables the host for new servers (the same as
//!   `os-services`); maintenance mode and the power actions (startup,
//!   shutdown, reboot) are not something Virga does to a host: 501, as
//!   Nova's libvirt driver answers.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::compute::{nova_error, store_error};
use super::http::{json, query_params, read_json, Body};
use super::App;
use crate::compute::hosts::Host;
use crate::identity::Auth;

/// The zone Nova gives the services that are not compute hosts.
const INTERNAL_ZONE: &str = "internal";

/// Handles `/os-hosts...` below microversion 2.43.
pub async fn route(
    app: &App,
    auth: &Auth,
    req: Request<Incoming>,
    rest: &[&str],
) -> Response<Body> {
    let method = req.method().clone();
    // A blank zone is no filter.
    let zone = query_params(&req).remove("zone").filter(|z| !z.is_empty());
    // Nova checks the body's schema before its policy.
    let body = match (&method, rest) {
        (&Method::PUT, ["os-hosts", _]) => match read_json(req, nova_error).await {
            Ok(b) => match update_request(&b) {
                Ok(u) => Some(u),
                Err(why) => return nova_error(StatusCode::BAD_REQUEST, &why),
            },
            Err(r) => return r,
        },
        _ => None,
    };
    if !auth.is_admin() {
        return nova_error(
            StatusCode::FORBIDDEN,
            "Policy doesn't allow os_compute_api:os-hosts to be performed.",
        );
    }
    match (method, rest, body) {
        (Method::GET, ["os-hosts"], _) => list(app, zone.as_deref()).await,
        (Method::GET, ["os-hosts", name], _) => show(app, name).await,
        (Method::PUT, ["os-hosts", name], Some(update)) => set(app, name, update).await,
        (Method::GET, ["os-hosts", name, "startup" | "shutdown" | "reboot"], _) => {
            match compute_host(app, name).await {
                Ok(_) => nova_error(
                    StatusCode::NOT_IMPLEMENTED,
                    "Virt driver does not implement host power management.",
                ),
                Err(r) => r,
            }
        }
        _ => nova_error(StatusCode::NOT_FOUND, "The resource could not be found."),
    }
}

/// What an update asks: each is "enable" or "disable" (any case), at
/// least one of them, nothing else (Nova's schema).
#[derive(Debug, PartialEq, Eq)]
struct Update {
    status: Option<bool>,
    maintenance: Option<bool>,
}

fn update_request(body: &Json) -> Result<Update, String> {
    let Some(fields) = body.as_object() else {
        return Err("Invalid input: the body must be an object".into());
    };
    if let Some(other) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "status" | "maintenance_mode"))
    {
        return Err(format!(
            "Invalid input: Additional properties are not allowed ('{other}' was unexpected)"
        ));
    }
    let flag = |key: &str| -> Result<Option<bool>, String> {
        match fields.get(key) {
            None => Ok(None),
            Some(Json::String(s)) if s.eq_ignore_ascii_case("enable") => Ok(Some(true)),
            Some(Json::String(s)) if s.eq_ignore_ascii_case("disable") => Ok(Some(false)),
            Some(other) => Err(format!(
                "Invalid input for field/attribute {key}. Value: {other}. {other} is not one of ['enable', 'disable']"
            )),
        }
    };
    let update = Update {
        status: flag("status")?,
        maintenance: flag("maintenance_mode")?,
    };
    if update
        == (Update {
            status: None,
            maintenance: None,
        })
    {
        return Err("Invalid input: 'status' or 'maintenance_mode' is required".into());
    }
    Ok(update)
}

/// The controller's name, as its services' host.
fn controller_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "controller".into())
}

async fn list(app: &App, zone: Option<&str>) -> Response<Body> {
    let hosts = match app.hosts.list().await {
        Ok(h) => h,
        Err(e) => return store_error(e),
    };
    let controller = controller_name();
    let entries = hosts
        .iter()
        .map(|h| {
            (
                h.report.host_id.clone(),
                "compute",
                h.availability_zone.clone(),
            )
        })
        .chain(
            ["scheduler", "conductor"]
                .into_iter()
                .map(|s| (controller.clone(), s, INTERNAL_ZONE.to_owned())),
        )
        .filter(|(_, _, z)| zone.is_none_or(|want| want == z))
        .map(|(host, service, zone)| json!({"host_name": host, "service": service, "zone": zone}))
        .collect::<Vec<_>>();
    json(StatusCode::OK, &json!({ "hosts": entries }))
}

/// Compute host `name`, or Nova's 404.
async fn compute_host(app: &App, name: &str) -> Result<Host, Response<Body>> {
    match app.hosts.list().await {
        Ok(hosts) => hosts
            .into_iter()
            .find(|h| h.report.host_id == name)
            .ok_or_else(|| {
                nova_error(
                    StatusCode::NOT_FOUND,
                    &format!("Compute host {name} could not be found."),
                )
            }),
        Err(e) => Err(store_error(e)),
    }
}

async fn show(app: &App, name: &str) -> Response<Body> {
    let host = match compute_host(app, name).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let servers = match app.servers.placed().await {
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    let f = super::hypervisors::figures(&host);
    let resource = |project: &str, cpu: i64, memory_mb: i64, disk_gb: i64| {
        json!({"resource": {"host": name, "project": project, "cpu": cpu,
                            "memory_mb": memory_mb, "disk_gb": disk_gb}})
    };
    let mut used_max = (0, 0, 0);
    let mut per_project: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    for s in servers
        .iter()
        .filter(|s| s.host_id.as_deref() == Some(name))
    {
        let disk = s.disk_gib + s.ephemeral_gib;
        for sum in [
            &mut used_max,
            per_project.entry(s.project_id.as_str()).or_default(),
        ] {
            sum.0 += s.vcpus;
            sum.1 += s.ram_mib;
            sum.2 += disk;
        }
    }
    let mut resources = vec![
        resource("(total)", f.vcpus, f.memory_mb, f.local_gb),
        resource(
            "(used_now)",
            f.vcpus_used,
            f.memory_mb_used,
            f.local_gb_used,
        ),
        resource("(used_max)", used_max.0, used_max.1, used_max.2),
    ];
    resources.extend(
        per_project
            .iter()
            .map(|(project, (c, m, d))| resource(project, *c, *m, *d)),
    );
    json(StatusCode::OK, &json!({ "host": resources }))
}

async fn set(app: &App, name: &str, update: Update) -> Response<Body> {
    if let Err(r) = compute_host(app, name).await {
        return r;
    }
    let mut answer = json!({ "host": name });
    if let Some(enable) = update.status {
        match app.hosts.set_enabled(name, enable, None).await {
            Ok(true) => {
                tracing::info!(
                    host = name,
                    enabled = enable,
                    "host status changed (os-hosts)"
                );
                answer["status"] = json!(if enable { "enabled" } else { "disabled" });
            }
            Ok(false) => {
                return nova_error(
                    StatusCode::NOT_FOUND,
                    &format!("Compute host {name} could not be found."),
                )
            }
            Err(e) => return store_error(e),
        }
    }
    if update.maintenance.is_some() {
        return nova_error(
            StatusCode::NOT_IMPLEMENTED,
            "Virt driver does not implement host maintenance mode.",
        );
    }
    json(StatusCode::OK, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_take_nova_schema() {
        let ok = |b: Json| update_request(&b);
        assert_eq!(
            ok(json!({"status": "Enable"})),
            Ok(Update {
                status: Some(true),
                maintenance: None
            })
        );
        assert_eq!(
            ok(json!({"status": "disable", "maintenance_mode": "ENABLE"})),
            Ok(Update {
                status: Some(false),
                maintenance: Some(true)
            })
        );
        for bad in [
            json!({}),
            json!({"status": null, "maintenance_mode": null}),
            json!({"status": "invalid", "maintenance_mode": "enable"}),
            json!({"status": "enable", "maintenance_mode": "invalid"}),
            json!({"status": "enable", "force": true}),
            json!(["status"]),
        ] {
            assert!(ok(bad.clone()).is_err(), "{bad}");
        }
    }
}
