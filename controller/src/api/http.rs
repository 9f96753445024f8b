//! HTTP plumbing shared by the APIs: request ids, JSON bodies and the error
//! shapes OpenStack clients parse.

use std::collections::BTreeMap;

use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

pub type Body = BoxBody<Bytes, std::io::Error>;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-openstack-request-id");
const MAX_BODY: usize = 1 << 20;

pub fn new_request_id() -> String {
    format!("req-{}", uuid::Uuid::new_v4())
}

/// Streams a file as a 200 response (image downloads), never the whole
/// file in memory; `Content-Length` from the file's size.
pub async fn stream_file(file: tokio::fs::File) -> Response<Body> {
    let (body, len) = virga_imagefile::serve::plain(file).await;
    let mut r = Response::new(body.boxed());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = len {
        r.headers_mut()
            .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    r
}

/// A disk image as a sparse stream (`hostd_proto::sparse`): its data, not
/// its holes, for hosts that ask for one.
pub async fn stream_sparse(file: std::fs::File) -> std::io::Result<Response<Body>> {
    let (body, len) = virga_imagefile::serve::sparse(file).await?;
    let mut r = Response::new(body.boxed());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(hostd_proto::sparse::CONTENT_TYPE),
    );
    r.headers_mut()
        .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(r)
}

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r
}

pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Keystone's error shape: `{"error": {"code", "title", "message"}}`.
pub fn keystone_error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"error": {
            "code": status.as_u16(),
            "title": status.canonical_reason().unwrap_or("Error"),
            "message": message,
        }}),
    )
}

/// Reads a JSON body (at most 1 MiB); the error is a ready 400/413 response.
pub async fn read_json(
    req: Request<Incoming>,
    error: fn(StatusCode, &str) -> Response<Body>,
) -> Result<serde_json::Value, Response<Body>> {
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body: {e} (at most {MAX_BODY} bytes)"),
            ))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("malformed JSON body: {e}"),
        )
    })
}

/// ISO 8601 UTC with microseconds, as Keystone writes `expires_at`.
/// A request's query string, percent-decoded (`+` is a space); the last of
/// repeated keys wins.
/// A microversion, `(major, minor)`.
pub type Microversion = (u32, u32);

/// The microversion a request asks of `service` (`OpenStack-API-Version:
/// <service> X.Y`, or the service's older `legacy` header): `min` when it
/// asks none, `max` for `latest`; None when outside `min..=max` or not a
/// version at all.
pub fn microversion<B>(
    req: &Request<B>,
    service: &str,
    legacy: &str,
    min: Microversion,
    max: Microversion,
) -> Option<Microversion> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let asked = header("openstack-api-version")
        .and_then(|v| v.strip_prefix(service))
        .map(str::trim)
        .or_else(|| header(legacy));
    let Some(asked) = asked else {
        return Some(min);
    };
    if asked == "latest" {
        return Some(max);
    }
    let (major, minor) = asked.split_once('.')?;
    let v = (major.parse().ok()?, minor.parse().ok()?);
    (min..=max).contains(&v).then_some(v)
}

pub fn query_params<B>(req: &Request<B>) -> BTreeMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn iso_micros(unix: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].000000Z"
    ))
    .unwrap_or_default()
}

/// A boolean as Nova's schemas take one: JSON's, or one of the words its
/// `parameter_types.boolean` lists (Cinder's `force` takes them too).
pub fn parse_boolean(v: &serde_json::Value) -> Option<bool> {
    match v {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "on" | "yes" => Some(true),
            "false" | "0" | "off" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(iso_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(iso_micros(1_795_000_000), "2026-11-18T11:06:40.000000Z");
    }

    #[test]
    fn request_ids() {
        let id = new_request_id();
        assert!(id.starts_with("req-") && id.len() == 40, "{id}");
    }
}
