//! Nova's os-simple-tenant-usage: `GET /os-simple-tenant-usage` (every
//! project's usage, admins; `detailed=1` lists the servers) and
//! `GET /os-simple-tenant-usage/{project}` (one project's, with its servers;
//! its own members or admins). `start` and `end` bound the period (now when
//! left out), as `openstack usage list|show` and Horizon ask for it. From
//! 2.40, `limit` and `marker` page through the servers (by id), as Nova
//! does: a page's totals are its servers', and a full page links the next.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::compute::{nova_error, store_error};
use super::http::{json, Body};
use super::App;
use crate::compute::usage::{by_project, ProjectUsage};
use crate::identity::{now, Auth};

/// `project`: None for every project's usage.
pub async fn get(
    app: &App,
    auth: &Auth,
    req: &Request<Incoming>,
    project: Option<&str>,
) -> Response<Body> {
    let allowed = match project {
        None => auth.is_admin(),
        Some(p) => auth.is_admin() || auth.project_id() == Some(p),
    };
    if !allowed {
        let policy = if project.is_some() { "show" } else { "list" };
        return nova_error(
            StatusCode::FORBIDDEN,
            &format!(
                "Policy doesn't allow os_compute_api:os-simple-tenant-usage:{policy} to be performed."
            ),
        );
    }
    let q = super::http::query_params(req);
    let (start, stop) = match period(q.get("start"), q.get("end"), now()) {
        Ok(p) => p,
        Err(m) => return nova_error(StatusCode::BAD_REQUEST, &m),
    };
    let mut records = match app.servers.ran_between(project, start, stop).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let paged = super::compute::version_of(req) >= (2, 40);
    let next = if paged {
        match page(&mut records, q.get("limit"), q.get("marker")) {
            Ok(next) => next,
            Err(m) => return nova_error(StatusCode::BAD_REQUEST, &m),
        }
    } else {
        None
    };
    let next_link = |path: &str| {
        next.as_ref().map(|marker| {
            let mut params = form_urlencoded::Serializer::new(String::new());
            for (k, v) in q.iter().filter(|(k, _)| *k != "marker") {
                params.append_pair(k, v);
            }
            params.append_pair("marker", marker);
            json!([{"rel": "next", "href": format!(
                "{}/compute/v2.1/{path}?{}", app.config.public_url, params.finish())}])
        })
    };
    let usage = by_project(records, start, stop);
    match project {
        Some(p) => {
            let one = usage
                .first()
                .map_or_else(|| json!({}), |u| render(u, start, stop, true));
            let mut body = json!({ "tenant_usage": one });
            if let Some(links) = next_link(&format!("os-simple-tenant-usage/{p}")) {
                body["tenant_usage_links"] = links;
            }
            json(StatusCode::OK, &body)
        }
        None => {
            // Nova reads only `1`; openstacksdk (`openstack usage list`)
            // sends `True`, and its users want the servers counted.
            let detailed = q
                .get("detailed")
                .is_some_and(|d| ["1", "true", "yes"].contains(&d.to_ascii_lowercase().as_str()));
            let all: Vec<Json> = usage
                .iter()
                .map(|u| render(u, start, stop, detailed))
                .collect();
            let mut body = json!({ "tenant_usages": all });
            if let Some(links) = next_link("os-simple-tenant-usage") {
                body["tenant_usages_links"] = links;
            }
            json(StatusCode::OK, &body)
        }
    }
}

/// Cuts `records` (sorted by id) to the page after `marker` of at most
/// `limit`; returns the next page's marker when this one is full.
fn page(
    records: &mut Vec<crate::compute::servers::UsageRecord>,
    limit: Option<&String>,
    marker: Option<&String>,
) -> Result<Option<String>, String> {
    if let Some(marker) = marker {
        match records.iter().position(|r| &r.id == marker) {
            Some(i) => {
                records.drain(..=i);
            }
            None => return Err(format!("marker [{marker}] not found")),
        }
    }
    let Some(limit) = limit else {
        return Ok(None);
    };
    let limit = limit
        .parse::<usize>()
        .ok()
        .filter(|l| *l > 0)
        .ok_or_else(|| format!("Invalid limit [{limit}]: a positive integer"))?;
    if records.len() <= limit {
        return Ok(None);
    }
    records.truncate(limit);
    Ok(records.last().map(|r| r.id.clone()))
}

/// The period asked for, as Unix seconds; either end is now when not given.
fn period(start: Option<&String>, end: Option<&String>, now: i64) -> Result<(i64, i64), String> {
    let parse = |v: Option<&String>| match v {
        None => Ok(now),
        Some(s) if s.is_empty() => Ok(now),
        Some(s) => parse_time(s)
            .ok_or_else(|| format!("Invalid datetime string: {s} (YYYY-MM-DDTHH:MM:SS[.ffffff])")),
    };
    let (start, stop) = (parse(start)?, parse(end)?);
    // Nova refuses an empty period too, but its default ends (both "now")
    // differ by microseconds; here, to the second, they are one instant.
    if start > stop {
        return Err("Invalid start time. The start time cannot occur after the end time.".into());
    }
    Ok((start, stop))
}

/// Nova's formats: `YYYY-MM-DDTHH:MM:SS`, with `.ffffff`, or with a space
/// and `.ffffff`; UTC. Fractions of a second are dropped.
fn parse_time(s: &str) -> Option<i64> {
    let (whole, fraction) = match s.split_once('.') {
        Some((w, f)) if !f.is_empty() && f.len() <= 6 && f.bytes().all(|b| b.is_ascii_digit()) => {
            (w, true)
        }
        Some(_) => return None,
        None => (s, false),
    };
    let with_t = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let with_space =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(whole, &with_t)
        .or_else(|e| {
            if fraction {
                time::PrimitiveDateTime::parse(whole, &with_space)
            } else {
                Err(e)
            }
        })
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

/// A time as Nova writes these: `2026-12-06T10:00:00.000000`, no zone.
fn nova_time(unix: i64) -> String {
    let iso = super::http::iso_micros(unix);
    iso.trim_end_matches('Z').to_owned()
}

fn render(u: &ProjectUsage, start: i64, stop: i64, detailed: bool) -> Json {
    let mut v = json!({
        "tenant_id": u.project_id,
        "start": nova_time(start),
        "stop": nova_time(stop),
        "total_hours": u.total_hours,
        "total_vcpus_usage": u.vcpu_hours,
        "total_memory_mb_usage": u.ram_mib_hours,
        "total_local_gb_usage": u.local_gib_hours,
    });
    if detailed {
        let now = now();
        v["server_usages"] = u
            .servers
            .iter()
            .map(|(r, hours)| {
                let uptime = r.terminated_at.unwrap_or(now) - r.launched_at;
                json!({
                    "instance_id": r.id,
                    "name": r.name,
                    "tenant_id": r.project_id,
                    "flavor": r.flavor_name,
                    "vcpus": r.vcpus,
                    "memory_mb": r.ram_mib,
                    "local_gb": r.local_gib,
                    "hours": hours,
                    "started_at": nova_time(r.launched_at),
                    "ended_at": r.terminated_at.map(nova_time),
                    "state": r.state,
                    "uptime": uptime.max(0),
                })
            })
            .collect();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn novas_time_formats_are_read() {
        let t = 1_796_000_000; // 2026-11-30T00:53:20Z
        assert_eq!(parse_time("2026-11-30T00:53:20"), Some(t));
        assert_eq!(parse_time("2026-11-30T00:53:20.123456"), Some(t));
        assert_eq!(parse_time("2026-11-30 00:53:20.5"), Some(t));
        for bad in [
            "2026-11-30",
            "2026-11-30 00:53:20",
            "yesterday",
            "2026-11-30T00:53:20.",
            "2026-11-30T00:53:20.1234567",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        assert_eq!(nova_time(t), "2026-11-30T00:53:20.000000");
    }

    #[test]
    fn a_period_must_end_after_it_starts() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(period(None, None, 100), Ok((100, 100)));
        assert_eq!(
            period(s("2026-11-30T00:00:00").as_ref(), None, 1_796_000_000),
            Ok((1_795_996_800, 1_796_000_000))
        );
        let err = period(
            s("2026-12-01T00:00:00").as_ref(),
            s("2026-11-30T00:00:00").as_ref(),
            0,
        );
        assert!(err.unwrap_err().contains("cannot occur after"));
        assert!(period(s("soon").as_ref(), None, 0)
            .unwrap_err()
            .contains("Invalid datetime"));
    }
}
