//! What the compute API says about itself and the cloud's layout: the
//! legacy extension list (`/extensions`), availability zones
//! (`/os-availability-zone`, and `detail` for admins).

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::compute::{nova_error, store_error};
use super::http::{json, Body};
use super::App;
use crate::compute::hosts::Host;
use crate::identity::{now, Auth};

/// The v2 extensions whose APIs Virga serves: `(alias, name, description)`.
/// Nova 2.1 keeps this list for old clients; it names APIs, and every one
/// here answers.
const EXTENSIONS: &[(&str, &str, &str)] = &[
    (
        "os-admin-actions",
        "AdminActions",
        "Enable admin-only server actions: injectNetworkInfo, os-resetState.",
    ),
    (
        "os-availability-zone",
        "AvailabilityZone",
        "1. Add availability_zone to the Create Server API. 2. Add availability zones describing.",
    ),
    (
        "os-console-output",
        "ConsoleOutput",
        "Console log output support, with tailing ability.",
    ),
    ("os-consoles", "Consoles", "Interactive Console support."),
    ("OS-DCF", "DiskConfig", "Disk Management Extension."),
    (
        "OS-EXT-AZ",
        "ExtendedAvailabilityZone",
        "Extended Availability Zone support.",
    ),
    (
        "OS-EXT-SRV-ATTR",
        "ExtendedServerAttributes",
        "Extended Server Attributes support.",
    ),
    ("OS-EXT-STS", "ExtendedStatus", "Extended Status support."),
    (
        "os-extended-volumes",
        "ExtendedVolumes",
        "Extended Volumes support.",
    ),
    (
        "OS-FLV-DISABLED",
        "FlavorDisabled",
        "Support to show the disabled status of a flavor.",
    ),
    ("os-flavor-access", "FlavorAccess", "Flavor access support."),
    (
        "OS-FLV-EXT-DATA",
        "FlavorExtraData",
        "Provide additional data for flavors.",
    ),
    (
        "os-flavor-extra-specs",
        "FlavorExtraSpecs",
        "Flavors extra specs support.",
    ),
    (
        "os-flavor-manage",
        "FlavorManage",
        "Flavor create/delete API support.",
    ),
    ("os-hosts", "Hosts", "Admin-only host administration."),
    (
        "os-hypervisors",
        "Hypervisors",
        "Admin-only hypervisor administration.",
    ),
    (
        "os-instance-actions",
        "InstanceActions",
        "View a log of actions and events taken on an instance.",
    ),
    ("os-keypairs", "Keypairs", "Keypair Support."),
    (
        "os-pause-server",
        "PauseServer",
        "Enable pause/unpause server actions.",
    ),
    ("os-quota-sets", "Quotas", "Quotas management support."),
    (
        "os-remote-consoles",
        "Consoles",
        "Interactive Console support.",
    ),
    (
        "os-server-start-stop",
        "ServerStartStop",
        "Start/Stop instance compute API support.",
    ),
    (
        "os-server-diagnostics",
        "ServerDiagnostics",
        "Allow Admins to view server diagnostics through server action.",
    ),
    ("os-services", "Services", "Services support."),
    (
        "os-aggregates",
        "Aggregates",
        "Admin-only aggregate administration.",
    ),
    (
        "os-instance-usage-audit-log",
        "OSInstanceUsageAuditLog",
        "Admin-only Task Log Monitoring.",
    ),
    (
        "os-simple-tenant-usage",
        "SimpleTenantUsage",
        "Simple tenant usage extension.",
    ),
    (
        "os-suspend-server",
        "SuspendServer",
        "Enable suspend/resume server actions.",
    ),
    (
        "os-used-limits",
        "UsedLimits",
        "Provide data on limited resources that are being used.",
    ),
    (
        "os-attach-interfaces",
        "AttachInterfaces",
        "Attach interface support.",
    ),
];

/// Handles `/extensions...` and `/os-availability-zone...`.
pub async fn route(
    app: &App,
    auth: &Auth,
    req: &Request<Incoming>,
    rest: &[&str],
) -> Response<Body> {
    match (req.method().clone(), rest) {
        (Method::GET, ["extensions"]) => {
            let list: Vec<Json> = EXTENSIONS.iter().map(extension).collect();
            json(StatusCode::OK, &json!({ "extensions": list }))
        }
        (Method::GET, ["extensions", alias]) => {
            match EXTENSIONS.iter().find(|(a, _, _)| a == alias) {
                Some(e) => json(StatusCode::OK, &json!({ "extension": extension(e) })),
                None => nova_error(
                    StatusCode::NOT_FOUND,
                    &format!("Extension {alias} could not be found."),
                ),
            }
        }
        (Method::GET, ["os-availability-zone"]) => zones(app, false).await,
        (Method::GET, ["os-availability-zone", "detail"]) if auth.is_admin() => {
            zones(app, true).await
        }
        (Method::GET, ["os-availability-zone", "detail"]) => nova_error(
            StatusCode::FORBIDDEN,
            "Policy doesn't allow this operation to be performed (admin only).",
        ),
        _ => nova_error(StatusCode::NOT_FOUND, "The resource could not be found."),
    }
}

fn extension((alias, name, description): &(&str, &str, &str)) -> Json {
    json!({
        "alias": alias, "name": name, "description": description, "links": [],
        "namespace": "http://docs.openstack.org/compute/ext/fake_xml",
        "updated": "2014-12-03T00:00:00Z",
    })
}

/// Each zone some host is in; a zone is available while one of its enabled
/// hosts reports. The detailed form (admins) names the hosts.
async fn zones(app: &App, detail: bool) -> Response<Body> {
    let hosts = match app.hosts.list().await {
        Ok(h) => h,
        Err(e) => return store_error(e),
    };
    let alive =
        |h: &Host| h.enabled && now() - h.last_seen <= app.config.scheduler.heartbeat_timeout_secs;
    let mut names: Vec<&str> = hosts.iter().map(|h| h.availability_zone.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let info: Vec<Json> = names
        .iter()
        .map(|zone| {
            let members: Vec<&Host> = hosts
                .iter()
                .filter(|h| h.availability_zone == *zone)
                .collect();
            let hosts = detail.then(|| {
                members
                    .iter()
                    .map(|h| {
                        let service = json!({"available": alive(h), "active": h.enabled,
                            "updated_at": super::http::iso_micros(h.last_seen).replace('Z', "")});
                        (h.report.host_id.clone(), json!({ "nova-compute": service }))
                    })
                    .collect::<serde_json::Map<_, _>>()
            });
            json!({"zoneName": zone, "zoneState": {"available": members.iter().any(|h| alive(h))},
                   "hosts": hosts})
        })
        .collect();
    json(StatusCode::OK, &json!({ "availabilityZoneInfo": info }))
}
