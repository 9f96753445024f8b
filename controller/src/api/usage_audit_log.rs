//! Nova's `os-instance_usage_audit_log` (admins): the usage audit of the
//! last completed month (`GET .../os-instance_usage_audit_log`) or of the
//! month completed before a time (`.../{YYYY-MM-DD HH:MM:SS}`). Nova's
//! compute hosts run that audit only when `instance_usage_audit` is on (it
//! is off by default) and report it as task logs; Virga's hosts do not run
//! it, so every host is reported as not having run it, as Nova reports a
//! deployment with the audit off. Usage itself is in os-simple-tenant-usage.

use hyper::{Response, StatusCode};
use serde_json::json;
use time::{Date, Month, PrimitiveDateTime, Time};

use super::compute::{nova_error, store_error};
use super::http::{json, Body};
use super::App;
use crate::identity::{now, Auth};

/// `before`: the path's timestamp, if any (still percent-encoded).
pub async fn get(app: &App, auth: &Auth, before: Option<&str>) -> Response<Body> {
    if !auth.is_admin() {
        return nova_error(
            StatusCode::FORBIDDEN,
            "Policy doesn't allow os_compute_api:os-instance-usage-audit-log:list to be performed.",
        );
    }
    // The index answers under a plural key, the show under a singular one.
    let key = if before.is_some() {
        "instance_usage_audit_log"
    } else {
        "instance_usage_audit_logs"
    };
    let before = match before {
        None => now(),
        Some(raw) => {
            let text = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
            match parse_timestamp(&text) {
                Some(t) => t,
                None => {
                    return nova_error(
                        StatusCode::BAD_REQUEST,
                        &format!("Invalid timestamp for date {text}"),
                    )
                }
            }
        }
    };
    let hosts = match app.hosts.list().await {
        Ok(h) => h,
        Err(e) => return store_error(e),
    };
    let (begin, end) = last_completed_month(before);
    let names: Vec<&str> = hosts.iter().map(|h| h.report.host_id.as_str()).collect();
    let log = json!({
        "period_beginning": begin,
        "period_ending": end,
        "num_hosts": names.len(),
        "num_hosts_done": 0,
        "num_hosts_running": 0,
        "num_hosts_not_run": names.len(),
        "hosts_not_run": names,
        "total_instances": 0,
        "total_errors": 0,
        "overall_status": format!("0 of {} hosts done. 0 errors.", names.len()),
        "log": {},
    });
    json(StatusCode::OK, &json!({ key: log }))
}

/// Nova's two forms: `YYYY-MM-DD HH:MM:SS`, with or without microseconds.
fn parse_timestamp(s: &str) -> Option<i64> {
    let (date, time) = s.split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i32>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    // Microseconds, when given, do not move a period's bounds.
    let hms = match time.split_once('.') {
        Some((hms, frac))
            if !frac.is_empty() && frac.len() <= 6 && frac.bytes().all(|b| b.is_ascii_digit()) =>
        {
            hms
        }
        Some(_) => return None,
        None => time,
    };
    let mut t = hms.split(':').map(|p| p.parse::<u8>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    if d.next().is_some() || t.next().is_some() {
        return None;
    }
    let date = Date::from_calendar_date(
        y,
        Month::try_from(u8::try_from(m).ok()?).ok()?,
        u8::try_from(day).ok()?,
    )
    .ok()?;
    let time = Time::from_hms(h, min, sec).ok()?;
    Some(
        PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// The last whole month ending at or before `before` (Nova's
/// `last_completed_audit_period` for its default monthly period), as
/// Nova prints its bounds.
fn last_completed_month(before: i64) -> (String, String) {
    let at = time::OffsetDateTime::from_unix_timestamp(before)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let first_of = |y: i32, m: Month| {
        Date::from_calendar_date(y, m, 1)
            .map(|d| PrimitiveDateTime::new(d, Time::MIDNIGHT))
            .unwrap_or(PrimitiveDateTime::MIN)
    };
    let previous = |d: PrimitiveDateTime| {
        let (y, m) = match d.month() {
            Month::January => (d.year() - 1, Month::December),
            m => (d.year(), m.previous()),
        };
        first_of(y, m)
    };
    let mut end = first_of(at.year(), at.month());
    if end.assume_utc() >= at {
        end = previous(end);
    }
    let begin = previous(end);
    let show = |t: PrimitiveDateTime| {
        t.format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .unwrap_or_default()
    };
    (show(begin), show(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_as_nova_takes_them() {
        let t = parse_timestamp("2026-12-06 07:00:00").unwrap();
        assert_eq!(t, 1_796_540_400);
        assert_eq!(parse_timestamp("2026-12-06 07:00:00.123456"), Some(t));
        for bad in [
            "2026-12-06",
            "2026-13-06 07:00:00",
            "2026-12-06T07:00:00",
            "2026-12-06 25:00:00",
            "2026-12-06 07:00:00.",
            "x-12-06 07:00:00",
            "2026-12-06 07:00:00:00",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_period_is_the_last_whole_month() {
        let at = |s: &str| parse_timestamp(s).unwrap();
        assert_eq!(
            last_completed_month(at("2026-12-06 07:00:00")),
            ("2026-11-01 00:00:00".into(), "2026-12-01 00:00:00".into())
        );
        // On the first, at midnight, the month just ended is not over yet.
        assert_eq!(
            last_completed_month(at("2026-12-01 00:00:00")),
            ("2026-10-01 00:00:00".into(), "2026-11-01 00:00:00".into())
        );
        assert_eq!(
            last_completed_month(at("2027-01-15 12:00:00")),
            ("2026-12-01 00:00:00".into(), "2027-01-01 00:00:00".into())
        );
        assert_eq!(
            last_completed_month(at("2027-02-01 00:00:00")),
            ("2026-12-01 00:00:00".into(), "2027-01-01 00:00:00".into())
        );
    }
}
