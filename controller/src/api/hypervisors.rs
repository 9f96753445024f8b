//! The operator's view of the hosts hostd registered, as Nova shows compute
//! hosts at 2.1: `os-services` (list; enable and disable a host for new
//! servers, with a reason) and `os-hypervisors` (list, detail, show,
//! statistics). Admin only, as in Nova; `openstack compute service list/set`
//! and `openstack hypervisor list/show` work against them.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::compute::{nova_error, store_error};
use super::http::{json, read_json, Body};
use super::App;
use crate::compute::hosts::Host;
use crate::identity::{now, Auth};

/// The one service binary a Virga host runs, in Nova's terms.
const COMPUTE_BINARY: &str = "nova-compute";

/// Handles `/os-services...` and `/os-hypervisors...`; None for other paths.
pub async fn route(
    app: &App,
    auth: &Auth,
    req: Request<Incoming>,
    rest: &[&str],
) -> Option<Response<Body>> {
    if !matches!(rest.first(), Some(&("os-services" | "os-hypervisors"))) {
        return None;
    }
    if !auth.is_admin() {
        return Some(nova_error(
            StatusCode::FORBIDDEN,
            "Policy doesn't allow this operation to be performed (admin only).",
        ));
    }
    let hosts = match app.hosts.list().await {
        Ok(h) => h,
        Err(e) => return Some(store_error(e)),
    };
    let q = super::http::query_params(&req);
    let version = super::compute::version_of(&req);
    let response = match (req.method().clone(), rest) {
        (Method::GET, ["os-services"]) => {
            let services: Vec<Json> = hosts
                .iter()
                .filter(|h| q.get("host").is_none_or(|x| *x == h.report.host_id))
                .filter(|_| q.get("binary").is_none_or(|b| b == COMPUTE_BINARY))
                .map(|h| at_version(service(app, h), version))
                .collect();
            json(StatusCode::OK, &json!({ "services": services }))
        }
        (Method::PUT, ["os-services", what]) => {
            let what = what.to_string();
            set_service(app, &what, req).await
        }
        (Method::GET, ["os-hypervisors"]) => {
            let list: Vec<Json> = hosts
                .iter()
                .map(|h| at_version(hypervisor(app, h, false), version))
                .collect();
            json(StatusCode::OK, &json!({ "hypervisors": list }))
        }
        (Method::GET, ["os-hypervisors", "detail"]) => {
            let list: Vec<Json> = hosts
                .iter()
                .map(|h| at_version(hypervisor(app, h, true), version))
                .collect();
            json(StatusCode::OK, &json!({ "hypervisors": list }))
        }
        (Method::GET, ["os-hypervisors", "statistics"]) => json(
            StatusCode::OK,
            &json!({ "hypervisor_statistics": statistics(&hosts) }),
        ),
        (Method::GET, ["os-hypervisors", id, "uptime"]) => {
            match hosts.iter().find(|h| h.num.to_string() == *id) {
                // Nova's answer for drivers that do not report it: a hostd
                // older than the field.
                Some(h) if h.report.booted_at == 0 => nova_error(
                    StatusCode::NOT_IMPLEMENTED,
                    "This host's hostd does not report its uptime.",
                ),
                Some(h) => {
                    let mut v = hypervisor(app, h, false);
                    v["uptime"] = json!(uptime_line(
                        now(),
                        h.report.booted_at,
                        h.report.load_average
                    ));
                    json(StatusCode::OK, &json!({ "hypervisor": v }))
                }
                None => nova_error(
                    StatusCode::NOT_FOUND,
                    &format!("Hypervisor with ID '{id}' could not be found."),
                ),
            }
        }
        // Before 2.53: hypervisors whose name contains a pattern, alone or
        // with the servers on them (2.53 made these list filters).
        (Method::GET, ["os-hypervisors", pattern, what @ ("search" | "servers")])
            if version < (2, 53) =>
        {
            let matching: Vec<&Host> = hosts
                .iter()
                .filter(|h| h.report.host_id.contains(*pattern))
                .collect();
            if matching.is_empty() {
                return Some(nova_error(
                    StatusCode::NOT_FOUND,
                    &format!("No hypervisor matching '{pattern}' could be found."),
                ));
            }
            let placed = if *what == "servers" {
                match app.servers.placed().await {
                    Ok(s) => s,
                    Err(e) => return Some(store_error(e)),
                }
            } else {
                Vec::new()
            };
            let list: Vec<Json> = matching
                .into_iter()
                .map(|h| {
                    let mut v = hypervisor(app, h, false);
                    let servers: Vec<Json> = placed
                        .iter()
                        .filter(|s| s.host_id.as_deref() == Some(h.report.host_id.as_str()))
                        .map(|s| json!({"name": s.name, "uuid": s.id}))
                        .collect();
                    // As Nova: no key when the host runs nothing.
                    if !servers.is_empty() {
                        v["servers"] = json!(servers);
                    }
                    v
                })
                .collect();
            json(StatusCode::OK, &json!({ "hypervisors": list }))
        }
        (Method::GET, ["os-hypervisors", id]) => {
            match hosts.iter().find(|h| h.num.to_string() == *id) {
                Some(h) => json(
                    StatusCode::OK,
                    &json!({ "hypervisor": at_version(hypervisor(app, h, true), version) }),
                ),
                None => nova_error(
                    StatusCode::NOT_FOUND,
                    &format!("Hypervisor with ID '{id}' could not be found."),
                ),
            }
        }
        _ => return None,
    };
    Some(response)
}

/// What later microversions add to a service or hypervisor: services'
/// `forced_down` (2.11; Virga never forces a service down) and `cpu_info`
/// as an object rather than a JSON string (2.28).
fn at_version(mut item: Json, version: super::http::Microversion) -> Json {
    if let Some(m) = item.as_object_mut() {
        if version >= (2, 11) && m.contains_key("binary") {
            m.insert("forced_down".into(), json!(false));
        }
        if version >= (2, 28) {
            if let Some(Json::String(text)) = m.get("cpu_info") {
                let parsed = serde_json::from_str(text).unwrap_or_else(|_| json!({}));
                m.insert("cpu_info".into(), parsed);
            }
        }
    }
    item
}

/// Whether the host's heartbeats are recent enough to place servers on it.
fn state(app: &App, h: &Host) -> &'static str {
    if now() - h.last_seen <= app.config.scheduler.heartbeat_timeout_secs {
        "up"
    } else {
        "down"
    }
}

fn status(h: &Host) -> &'static str {
    if h.enabled {
        "enabled"
    } else {
        "disabled"
    }
}

fn service(app: &App, h: &Host) -> Json {
    json!({
        "id": h.num, "binary": COMPUTE_BINARY, "host": h.report.host_id,
        "zone": h.availability_zone, "status": status(h), "state": state(app, h),
        "updated_at": super::http::iso_micros(h.last_seen).replace('Z', ""),
        "disabled_reason": h.disabled_reason,
    })
}

/// `PUT /os-services/{enable,disable,disable-log-reason}` with
/// `{"host", "binary"[, "disabled_reason"]}`.
async fn set_service(app: &App, what: &str, req: Request<Incoming>) -> Response<Body> {
    let enable = match what {
        "enable" => true,
        "disable" | "disable-log-reason" => false,
        _ => return nova_error(StatusCode::NOT_FOUND, &format!("Unknown action: {what}")),
    };
    let body = match read_json(req, nova_error).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (Some(host), Some(binary)) = (
        body.get("host").and_then(Json::as_str),
        body.get("binary").and_then(Json::as_str),
    ) else {
        return nova_error(
            StatusCode::BAD_REQUEST,
            "'host' and 'binary' are required properties",
        );
    };
    let reason = body.get("disabled_reason").and_then(Json::as_str);
    if what == "disable-log-reason" && reason.is_none_or(|r| r.is_empty() || r.len() > 255) {
        return nova_error(
            StatusCode::BAD_REQUEST,
            "disabled_reason: a string of 1 to 255 characters is required",
        );
    }
    if binary != COMPUTE_BINARY {
        return nova_error(
            StatusCode::NOT_FOUND,
            &format!("Service {binary} on host {host} could not be found."),
        );
    }
    match app.hosts.set_enabled(host, enable, reason).await {
        Ok(true) => {
            tracing::info!(host, enabled = enable, reason, "host status changed");
            let mut service = json!({"host": host, "binary": binary,
                                     "status": if enable { "enabled" } else { "disabled" }});
            if let Some(r) = reason.filter(|_| !enable) {
                service["disabled_reason"] = json!(r);
            }
            json(StatusCode::OK, &json!({ "service": service }))
        }
        Ok(false) => nova_error(
            StatusCode::NOT_FOUND,
            &format!("Host {host} could not be found."),
        ),
        Err(e) => store_error(e),
    }
}

/// Nova's integer hypervisor_version: 1.2.3 is 1002003.
fn version_number(v: &str) -> i64 {
    v.split('.')
        .take(3)
        .map(|p| {
            p.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<i64>()
                .unwrap_or(0)
        })
        .chain(std::iter::repeat(0))
        .take(3)
        .fold(0, |acc, p| acc * 1000 + p.min(999))
}

/// The figures Nova reports per hypervisor (and sums for statistics).
pub(super) struct Figures {
    pub(super) vcpus: i64,
    pub(super) vcpus_used: i64,
    pub(super) memory_mb: i64,
    pub(super) memory_mb_used: i64,
    pub(super) local_gb: i64,
    pub(super) local_gb_used: i64,
    pub(super) running_vms: i64,
}

pub(super) fn figures(h: &Host) -> Figures {
    let r = &h.report;
    let mib = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Figures {
        vcpus: mib(r.cpus),
        vcpus_used: h.claimed_vcpus,
        memory_mb: mib(r.memory_usable_mib),
        memory_mb_used: h.claimed_ram_mib,
        local_gb: mib(r.disk_total_mib) / 1024,
        local_gb_used: mib(r.disk_total_mib.saturating_sub(r.disk_free_mib)) / 1024,
        running_vms: mib(r.instances as u64),
    }
}

fn hypervisor(app: &App, h: &Host, detail: bool) -> Json {
    let mut v = json!({
        "id": h.num, "hypervisor_hostname": h.report.host_id,
        "state": state(app, h), "status": status(h),
    });
    if detail {
        let f = figures(h);
        let host_ip = h
            .report
            .url
            .trim_start_matches("http://")
            .rsplit_once(':')
            .map_or("", |(host, _)| host)
            .to_owned();
        let extra = json!({
            "hypervisor_type": "virga", "hypervisor_version": version_number(&h.report.version),
            "host_ip": host_ip, "cpu_info": "{}", "current_workload": 0,
            "vcpus": f.vcpus, "vcpus_used": f.vcpus_used,
            "memory_mb": f.memory_mb, "memory_mb_used": f.memory_mb_used,
            "free_ram_mb": f.memory_mb - f.memory_mb_used,
            "local_gb": f.local_gb, "local_gb_used": f.local_gb_used,
            "free_disk_gb": f.local_gb - f.local_gb_used,
            "disk_available_least": f.local_gb - f.local_gb_used,
            "running_vms": f.running_vms,
            "service": {"host": h.report.host_id, "id": h.num, "disabled_reason": h.disabled_reason},
        });
        if let (Some(v), Json::Object(extra)) = (v.as_object_mut(), extra) {
            v.extend(extra);
        }
    }
    v
}

/// The host's uptime as the `uptime` command prints it, which is what
/// Nova's libvirt driver answers: ` 08:32:11 up 93 days, 18:25,  0 users,
/// load average: 0.20, 0.12, 0.14` (times in UTC; hostd counts no users).
fn uptime_line(now: i64, booted_at: i64, load: [f64; 3]) -> String {
    let clock = now.rem_euclid(86_400);
    let up = (now - booted_at).max(0);
    let (days, hours, minutes) = (up / 86_400, up % 86_400 / 3600, up % 3600 / 60);
    let mut since = match days {
        0 => String::new(),
        1 => "1 day, ".into(),
        d => format!("{d} days, "),
    };
    if hours == 0 {
        since.push_str(&format!("{minutes} min"));
    } else {
        since.push_str(&format!("{hours:2}:{minutes:02}"));
    }
    format!(
        " {:02}:{:02}:{:02} up {since},  0 users,  load average: {:.2}, {:.2}, {:.2}",
        clock / 3600,
        clock % 3600 / 60,
        clock % 60,
        load[0],
        load[1],
        load[2]
    )
}

fn statistics(hosts: &[Host]) -> Json {
    let sum = |get: fn(&Figures) -> i64| hosts.iter().map(|h| get(&figures(h))).sum::<i64>();
    let (vcpus, memory_mb, local_gb) =
        (sum(|f| f.vcpus), sum(|f| f.memory_mb), sum(|f| f.local_gb));
    let (memory_mb_used, local_gb_used) = (sum(|f| f.memory_mb_used), sum(|f| f.local_gb_used));
    json!({
        "count": hosts.len(), "vcpus": vcpus, "vcpus_used": sum(|f| f.vcpus_used),
        "memory_mb": memory_mb, "memory_mb_used": memory_mb_used,
        "free_ram_mb": memory_mb - memory_mb_used,
        "local_gb": local_gb, "local_gb_used": local_gb_used,
        "free_disk_gb": local_gb - local_gb_used, "disk_available_least": local_gb - local_gb_used,
        "current_workload": 0, "running_vms": sum(|f| f.running_vms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_as_the_uptime_command_prints_it() {
        let now = 1_796_000_000; // 00:53:20 UTC
        assert_eq!(
            uptime_line(
                now,
                now - 93 * 86_400 - 18 * 3600 - 25 * 60,
                [0.2, 0.12, 0.14]
            ),
            " 00:53:20 up 93 days, 18:25,  0 users,  load average: 0.20, 0.12, 0.14"
        );
        assert_eq!(
            uptime_line(now, now - 86_400 - 300, [0.0; 3]),
            " 00:53:20 up 1 day, 5 min,  0 users,  load average: 0.00, 0.00, 0.00"
        );
        assert!(uptime_line(now, now - 3 * 3600 - 60, [1.0; 3]).contains(" up  3:01, "));
    }

    #[test]
    fn hypervisor_versions_as_nova_numbers() {
        assert_eq!(version_number("0.1.0"), 1000);
        assert_eq!(version_number("1.2.3"), 1_002_003);
        assert_eq!(version_number("2.10"), 2_010_000);
        assert_eq!(version_number("3.0.0-rc1"), 3_000_000);
        assert_eq!(version_number("garbage"), 0);
    }
}
