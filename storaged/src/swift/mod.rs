//! storaged's Swift API (v1): `/v1/AUTH_{project}[/{container}[/{object}]]`
//! and `/info`, with Keystone tokens. Containers are the object store's
//! buckets (one namespace with S3's, as Ceph's RGW has by default) and
//! objects its objects: what S3 puts, Swift reads, and back.
//!
//! - [`auth`]: who a token speaks for, from the controller
//!
//! A token works on its own project's account only; a token whose only
//! role there is `reader` reads and lists but changes nothing.
//! Static (`?multipart-manifest=put`) and dynamic (`X-Object-Manifest`)
//! large objects read as their segments; `?bulk-delete` deletes many paths
//! in one request. Not yet: container ACLs, account and container metadata,
//! temporary URLs.

mod acl;
pub mod auth;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use md5::{Digest, Md5};
use serde_json::json;

use crate::objects::sink::BlobSink;
use crate::objects::{ContainerUpdate, ObjectError, ObjectInfo, ObjectStore};

use self::acl::Acl;
use self::auth::Tokens;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// The largest object a single PUT makes (Swift's default).
const MAX_FILE_SIZE: u64 = 5 * 1024 * 1024 * 1024 + 2;
/// A static large object's limits: segments, manifest bytes, and the
/// smallest segment but the last.
const SLO_SEGMENTS: usize = 1000;
const SLO_MANIFEST_BYTES: usize = 8 << 20;
const SLO_MIN_SEGMENT: u64 = 1 << 20;
/// The most paths one bulk delete takes.
const BULK_DELETES: usize = 10_000;
/// The most names one listing gives.
const LISTING_LIMIT: usize = 10_000;

pub struct SwiftApi {
    pub store: Arc<ObjectStore>,
    pub tokens: Tokens,
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

/// A Swift error: its status and a short text body, as Swift gives.
fn error(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = full(status, format!("<html><h1>{text}</h1></html>"));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/html; charset=UTF-8"),
    );
    r
}

fn store_error(e: ObjectError) -> Response<Body> {
    match e {
        ObjectError::NoSuchBucket | ObjectError::NoSuchKey => {
            error(StatusCode::NOT_FOUND, "Not Found")
        }
        ObjectError::BucketNotEmpty => error(
            StatusCode::CONFLICT,
            "There was a conflict when trying to complete your request.",
        ),
        ObjectError::BucketExists { .. } => error(StatusCode::CONFLICT, "Conflict"),
        ObjectError::BadMetadata(why) => error(StatusCode::BAD_REQUEST, &why),
        e => {
            tracing::error!("swift: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Error")
        }
    }
}

fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
}

/// Swift's listing time: `2024-01-31T12:00:00.000000`.
fn listing_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri().query().map(url_pairs).unwrap_or_default()
}

/// `a=b&c=d`, percent-decoded.
fn url_pairs(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode_query(k), decode_query(v))
        })
        .collect()
}

/// A percent-encoded path segment, as text.
fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A query value: `+` is a space there, unlike in a path.
fn decode_query(s: &str) -> String {
    decode(&s.replace('+', " "))
}

/// The request's `X-Object-Meta-*` headers, by name without the prefix.
fn object_meta(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.headers()
        .iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix("x-object-meta-")?;
            Some((name.to_owned(), v.to_str().ok()?.to_owned()))
        })
        .collect()
}

/// Swift's limits on a metadata item.
const MAX_META_NAME: usize = 128;
const MAX_META_VALUE: usize = 256;

/// What a container PUT or POST asks to change: `X-Container-Meta-*` (an
/// empty value removes), `X-Remove-Container-Meta-*`, the ACLs
/// (`X-Container-Read`/`-Write`, empty or `X-Remove-Container-Read`/`-Write`
/// to remove); the refusal's text for what Swift would refuse.
fn container_update(req: &Request<Incoming>) -> Result<ContainerUpdate, String> {
    let mut update = ContainerUpdate::default();
    for (k, v) in req.headers() {
        let value = v
            .to_str()
            .map_err(|_| format!("{k}: not a text value"))?
            .trim();
        if let Some(name) = k.as_str().strip_prefix("x-container-meta-") {
            if name.len() > MAX_META_NAME || value.len() > MAX_META_VALUE {
                return Err(format!(
                    "Metadata names are at most {MAX_META_NAME} bytes and values {MAX_META_VALUE}"
                ));
            }
            update
                .set_metadata
                .insert(name.to_owned(), value.to_owned());
        } else if let Some(name) = k.as_str().strip_prefix("x-remove-container-meta-") {
            update.remove_metadata.push(name.to_owned());
        }
    }
    let acl =
        |header_name: &str, remove: &str, read: bool| -> Result<Option<Option<String>>, String> {
            if header(req, remove).is_some() {
                return Ok(Some(None));
            }
            let Some(value) = header(req, header_name) else {
                return Ok(None);
            };
            Acl::parse(value, read)?;
            Ok(Some(
                Some(value.trim().to_owned()).filter(|v| !v.is_empty()),
            ))
        };
    update.read_acl = acl("x-container-read", "x-remove-container-read", true)?;
    update.write_acl = acl("x-container-write", "x-remove-container-write", false)?;
    // S3 sees a container anyone may list and read as `public-read`.
    if let Some(read) = &update.read_acl {
        let parsed = Acl::parse(read.as_deref().unwrap_or_default(), true)?;
        update.public_read = Some(parsed.public_listing());
    }
    Ok(update)
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// What a listing is asked for, and how to give it.
struct ListingQuery {
    prefix: String,
    delimiter: Option<String>,
    marker: Option<String>,
    end_marker: Option<String>,
    limit: usize,
    json: bool,
}

impl ListingQuery {
    /// The query of `req`; a refusal's text (412) for a limit too high.
    fn from(req: &Request<Incoming>) -> Result<Self, &'static str> {
        let q = query(req);
        let limit = match q.get("limit") {
            None => LISTING_LIMIT,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if n <= LISTING_LIMIT => n,
                _ => return Err("Maximum limit is 10000"),
            },
        };
        let json = q.get("format").map(String::as_str) == Some("json")
            || header(req, "accept").is_some_and(|a| a.contains("application/json"));
        Ok(ListingQuery {
            prefix: q.get("prefix").cloned().unwrap_or_default(),
            delimiter: q.get("delimiter").cloned().filter(|d| !d.is_empty()),
            marker: q.get("marker").cloned().filter(|m| !m.is_empty()),
            end_marker: q.get("end_marker").cloned().filter(|m| !m.is_empty()),
            limit,
            json,
        })
    }
}

impl SwiftApi {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        Ok(self.route(req).await)
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        if path == "/info" && matches!(*req.method(), Method::GET | Method::HEAD) {
            return self.info();
        }
        let parts: Vec<&str> = path.trim_start_matches('/').splitn(4, '/').collect();
        let (account, container, object) = match parts.as_slice() {
            ["v1", account] => (*account, None, None),
            ["v1", account, ""] => (*account, None, None),
            ["v1", account, container] => (*account, Some(decode(container)), None),
            ["v1", account, container, ""] => (*account, Some(decode(container)), None),
            ["v1", account, container, object] => {
                (*account, Some(decode(container)), Some(decode(object)))
            }
            _ => return error(StatusCode::NOT_FOUND, "Not Found"),
        };
        let Some(project) = account.strip_prefix("AUTH_") else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        let owner = match header(&req, "x-auth-token") {
            None => None,
            Some(token) => match self.tokens.owner(token).await {
                Ok(Some(o)) => Some(o),
                Ok(None) => return error(StatusCode::UNAUTHORIZED, "Unauthorized"),
                Err(e) => {
                    tracing::warn!("swift: checking a token: {e}");
                    return error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
                }
            },
        };
        let owner = match owner {
            Some(o) if o.project_id == project => o,
            // Not the account's own: what the container's ACLs grant.
            other => {
                let container = container.unwrap_or_default();
                let object = object.unwrap_or_default();
                if let Err(r) = self
                    .granted(&req, project, &container, &object, other)
                    .await
                {
                    return r;
                }
                return match object.is_empty() {
                    true => self.container(req, project, &container, false).await,
                    false => self.object(req, project, &container, &object).await,
                };
            }
        };
        let reads = matches!(*req.method(), Method::GET | Method::HEAD);
        let writer = owner.roles.iter().any(|r| r != "reader");
        if !reads && !writer {
            return error(StatusCode::FORBIDDEN, "Forbidden");
        }
        match (container, object) {
            (None, _) if *req.method() == Method::POST || *req.method() == Method::DELETE => {
                if query(&req).contains_key("bulk-delete") {
                    self.bulk_delete(req, project).await
                } else {
                    error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
                }
            }
            (None, _) => self.account(req, project).await,
            (Some(c), None) => self.container(req, project, &c, true).await,
            (Some(c), Some(o)) => self.object(req, project, &c, &o).await,
        }
    }

    /// Whether the container's ACLs let a caller from outside the account
    /// (anonymous, or a token of another project) make this request; the
    /// refusal otherwise (401 without a token, 403 with one), also for a
    /// container that does not exist, so that ACLs disclose nothing. Such a
    /// caller reads objects and listings, and writes objects, but never
    /// copies, large objects (their segments may be in containers it cannot
    /// read) or the container itself.
    async fn granted(
        &self,
        req: &Request<Incoming>,
        project: &str,
        container: &str,
        object: &str,
        caller: Option<storaged_proto::TokenOwner>,
    ) -> Result<(), Response<Body>> {
        let denied = || match caller {
            None => error(StatusCode::UNAUTHORIZED, "Unauthorized"),
            Some(_) => error(StatusCode::FORBIDDEN, "Forbidden"),
        };
        if container.is_empty() {
            return Err(denied());
        }
        let bucket = match self.store.bucket(container).await {
            Ok(Some(b)) if b.project_id == project => b,
            Ok(_) => return Err(denied()),
            Err(e) => return Err(store_error(e)),
        };
        // Buckets S3 made public-read, before Swift ACLs were kept.
        let public = bucket.public_read.then_some(".r:*,.rlistings");
        let read = Acl::parse(
            bucket.read_acl.as_deref().or(public).unwrap_or_default(),
            true,
        )
        .unwrap_or_default();
        let write =
            Acl::parse(bucket.write_acl.as_deref().unwrap_or_default(), false).unwrap_or_default();
        let user = caller
            .as_ref()
            .map(|c| (c.project_id.as_str(), c.user_id.as_str()));
        let reads = matches!(*req.method(), Method::GET | Method::HEAD);
        let allowed = match (reads, object.is_empty()) {
            (true, true) => read.public_listing() || user.is_some_and(|(p, u)| read.grants(p, u)),
            (true, false) => read.anyone || user.is_some_and(|(p, u)| read.grants(p, u)),
            (false, true) => false,
            (false, false) => {
                matches!(*req.method(), Method::PUT | Method::POST | Method::DELETE)
                    && user.is_some_and(|(p, u)| write.grants(p, u))
            }
        };
        if !allowed {
            return Err(denied());
        }
        let q = query(req);
        let large = q.contains_key("multipart-manifest")
            || header(req, "x-object-manifest").is_some()
            || header(req, "x-copy-from").is_some();
        if large {
            return Err(error(
                StatusCode::FORBIDDEN,
                "copies and large objects are for the account's own users",
            ));
        }
        if reads && !object.is_empty() {
            match self.store.head(container, object).await {
                Ok(o) if o.manifest.is_some() || o.segments.is_some() => {
                    return Err(error(
                        StatusCode::FORBIDDEN,
                        "large objects are for the account's own users",
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn info(&self) -> Response<Body> {
        let body = json!({
            "swift": {
                "version": env!("CARGO_PKG_VERSION"),
                "max_file_size": MAX_FILE_SIZE,
                "max_object_name_length": 1024,
                "max_container_name_length": 63,
                "container_listing_limit": LISTING_LIMIT,
                "account_listing_limit": LISTING_LIMIT,
                "max_meta_name_length": 128,
                "max_meta_value_length": 256,
                "strict_cors_mode": true,
                "policies": [{"name": "default", "default": true}],
            },
            "slo": {
                "max_manifest_segments": SLO_SEGMENTS,
                "max_manifest_size": SLO_MANIFEST_BYTES,
                "min_segment_size": SLO_MIN_SEGMENT,
            },
            "bulk_delete": {
                "max_deletes_per_request": BULK_DELETES,
                "max_failed_deletes": BULK_DELETES,
            }
        });
        let mut r = full(StatusCode::OK, body.to_string());
        r.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
        );
        r
    }

    /// The container `name` of `project`, or the answer why not.
    async fn owned(&self, project: &str, name: &str) -> Result<(), Response<Body>> {
        match self.store.bucket(name).await {
            Ok(Some(b)) if b.project_id == project => Ok(()),
            // Another project's name: as if absent (Swift's accounts are
            // apart; here the namespace is shared).
            Ok(_) => Err(error(StatusCode::NOT_FOUND, "Not Found")),
            Err(e) => Err(store_error(e)),
        }
    }

    /// `?bulk-delete`: the body lists `/container/object` or `/container`
    /// paths (URL-encoded, one per line); each is deleted (objects before
    /// their containers, if listed so), and the answer counts them, as
    /// Swift's bulk middleware does.
    async fn bulk_delete(&self, req: Request<Incoming>, project: &str) -> Response<Body> {
        let json = header(&req, "accept").is_some_and(|a| a.contains("json"));
        let body = match http_body_util::Limited::new(req.into_body(), BULK_DELETES * 2048)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large"),
        };
        let text = String::from_utf8_lossy(&body);
        let paths: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if paths.len() > BULK_DELETES {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large");
        }
        let (mut deleted, mut not_found) = (0u64, 0u64);
        let mut errors: Vec<(String, &str)> = Vec::new();
        for raw in paths {
            let path = decode(raw);
            let path = path.trim_start_matches('/');
            let (container, object) = match path.split_once('/') {
                Some((c, o)) if !o.is_empty() => (c, Some(o)),
                Some((c, _)) => (c, None),
                None => (path, None),
            };
            if let Err(r) = self.owned(project, container).await {
                match r.status() {
                    StatusCode::NOT_FOUND => not_found += 1,
                    _ => errors.push((raw.to_owned(), "403 Forbidden")),
                }
                continue;
            }
            let result = match object {
                Some(o) => self
                    .store
                    .delete(container, o)
                    .await
                    .map(|gone| gone as u64),
                None => self.store.delete_bucket(container).await.map(|()| 1),
            };
            match result {
                Ok(1) => deleted += 1,
                Ok(_) | Err(ObjectError::NoSuchBucket) => not_found += 1,
                Err(ObjectError::BucketNotEmpty) => errors.push((raw.to_owned(), "409 Conflict")),
                Err(e) => {
                    tracing::error!("swift: bulk delete of {raw}: {e}");
                    errors.push((raw.to_owned(), "500 Internal Error"));
                }
            }
        }
        let status = if errors.is_empty() {
            "200 OK"
        } else {
            "400 Bad Request"
        };
        let (text, kind) = if json {
            (
                json!({"Number Deleted": deleted, "Number Not Found": not_found,
                       "Response Status": status, "Response Body": "",
                       "Errors": errors.iter().map(|(p, e)| json!([p, e])).collect::<Vec<_>>()})
                .to_string(),
                "application/json; charset=utf-8",
            )
        } else {
            let mut t = format!(
                "Number Deleted: {deleted}\nNumber Not Found: {not_found}\nResponse Status: {status}\nErrors:\n"
            );
            for (p, e) in &errors {
                t.push_str(&format!("{p}, {e}\n"));
            }
            (t, "text/plain; charset=utf-8")
        };
        let mut r = full(StatusCode::OK, text);
        r.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static(kind),
        );
        r
    }

    async fn account(&self, req: Request<Incoming>, project: &str) -> Response<Body> {
        let buckets = match self.store.list_buckets(project).await {
            Ok(b) => b,
            Err(e) => return store_error(e),
        };
        let (mut objects, mut bytes) = (0u64, 0u64);
        let mut rows = Vec::new();
        for b in &buckets {
            let (n, size) = match self.store.bucket_usage(&b.name).await {
                Ok(u) => u,
                Err(e) => return store_error(e),
            };
            objects += n;
            bytes += size;
            rows.push((b, n, size));
        }
        let head = |status| {
            let mut r = full(status, Bytes::new());
            let h = r.headers_mut();
            h.insert("x-account-container-count", buckets.len().into());
            h.insert("x-account-object-count", objects.into());
            h.insert("x-account-bytes-used", bytes.into());
            r
        };
        match *req.method() {
            Method::HEAD => head(StatusCode::NO_CONTENT),
            Method::GET => {
                let q = match ListingQuery::from(&req) {
                    Ok(q) => q,
                    Err(why) => return error(StatusCode::PRECONDITION_FAILED, why),
                };
                let chosen: Vec<_> = rows
                    .into_iter()
                    .filter(|(b, _, _)| b.name.starts_with(&q.prefix))
                    .filter(|(b, _, _)| {
                        q.marker
                            .as_ref()
                            .is_none_or(|m| b.name.as_str() > m.as_str())
                    })
                    .filter(|(b, _, _)| {
                        q.end_marker
                            .as_ref()
                            .is_none_or(|m| b.name.as_str() < m.as_str())
                    })
                    .take(q.limit)
                    .collect();
                let json_list = chosen
                    .iter()
                    .map(|(b, n, size)| {
                        json!({"name": b.name, "count": n, "bytes": size,
                               "last_modified": listing_time(b.created_ms)})
                    })
                    .collect();
                let names = chosen.iter().map(|(b, _, _)| b.name.clone()).collect();
                let mut r = head(StatusCode::OK);
                listing_body(&mut r, q.json, json_list, names);
                r
            }
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
        }
    }

    /// A container request; `owner`: the caller is the account's own (only
    /// they see its ACLs).
    async fn container(
        &self,
        req: Request<Incoming>,
        project: &str,
        name: &str,
        owner: bool,
    ) -> Response<Body> {
        if name.is_empty() || name.len() > 63 || name.contains('/') {
            return error(StatusCode::BAD_REQUEST, "Container name is invalid");
        }
        match *req.method() {
            Method::PUT => {
                let update = match container_update(&req) {
                    Ok(u) => u,
                    Err(why) => return error(StatusCode::BAD_REQUEST, &why),
                };
                let made = match self.store.create_bucket(name, project, false).await {
                    Ok(()) => StatusCode::CREATED,
                    Err(ObjectError::BucketExists { mine: true }) => StatusCode::ACCEPTED,
                    Err(e) => return store_error(e),
                };
                match self.store.update_container(name, update).await {
                    Ok(()) => full(made, Bytes::new()),
                    Err(e) => store_error(e),
                }
            }
            Method::POST => {
                if let Err(r) = self.owned(project, name).await {
                    return r;
                }
                let update = match container_update(&req) {
                    Ok(u) => u,
                    Err(why) => return error(StatusCode::BAD_REQUEST, &why),
                };
                match self.store.update_container(name, update).await {
                    Ok(()) => full(StatusCode::NO_CONTENT, Bytes::new()),
                    Err(e) => store_error(e),
                }
            }
            Method::DELETE => {
                if let Err(r) = self.owned(project, name).await {
                    return r;
                }
                match self.store.delete_bucket(name).await {
                    Ok(()) => full(StatusCode::NO_CONTENT, Bytes::new()),
                    Err(e) => store_error(e),
                }
            }
            Method::HEAD | Method::GET => {
                let bucket = match self.store.bucket(name).await {
                    Ok(Some(b)) if b.project_id == project => b,
                    Ok(_) => return error(StatusCode::NOT_FOUND, "Not Found"),
                    Err(e) => return store_error(e),
                };
                let (count, bytes) = match self.store.bucket_usage(name).await {
                    Ok(u) => u,
                    Err(e) => return store_error(e),
                };
                let mut r = full(StatusCode::NO_CONTENT, Bytes::new());
                r.headers_mut()
                    .insert("x-container-object-count", count.into());
                r.headers_mut()
                    .insert("x-container-bytes-used", bytes.into());
                let public = bucket.public_read.then(|| ".r:*,.rlistings".to_owned());
                let acls = [
                    ("x-container-read", bucket.read_acl.or(public)),
                    ("x-container-write", bucket.write_acl),
                ];
                let acls = acls.into_iter().filter(|_| owner);
                let meta = bucket
                    .metadata
                    .into_iter()
                    .map(|(k, v)| (format!("x-container-meta-{k}"), Some(v)));
                for (k, v) in meta.chain(acls.map(|(k, v)| (k.to_owned(), v))) {
                    let (Ok(k), Some(Ok(v))) = (
                        hyper::header::HeaderName::try_from(k),
                        v.map(hyper::header::HeaderValue::try_from),
                    ) else {
                        continue;
                    };
                    r.headers_mut().insert(k, v);
                }
                if *req.method() == Method::HEAD {
                    return r;
                }
                let q = match ListingQuery::from(&req) {
                    Ok(q) => q,
                    Err(why) => return error(StatusCode::PRECONDITION_FAILED, why),
                };
                let listing = match self
                    .store
                    .list(
                        name,
                        &q.prefix,
                        q.delimiter.as_deref(),
                        q.marker.as_deref(),
                        q.limit,
                    )
                    .await
                {
                    Ok(l) => l,
                    Err(e) => return store_error(e),
                };
                let before_end = |k: &str| q.end_marker.as_ref().is_none_or(|m| k < m.as_str());
                // Objects and subdirectories, in name order.
                let mut entries: Vec<(String, Option<&ObjectInfo>)> = listing
                    .objects
                    .iter()
                    .map(|o| (o.key.clone(), Some(o)))
                    .chain(listing.common_prefixes.iter().map(|p| (p.clone(), None)))
                    .filter(|(k, _)| before_end(k))
                    .collect();
                entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                *r.status_mut() = StatusCode::OK;
                let json_list = entries
                    .iter()
                    .map(|(k, o)| match o {
                        Some(o) => json!({"name": k, "hash": o.etag, "bytes": o.size,
                            "content_type": o.content_type.clone().unwrap_or_else(|| "application/octet-stream".into()),
                            "last_modified": listing_time(o.modified_ms)}),
                        None => json!({"subdir": k}),
                    })
                    .collect();
                let names = entries.iter().map(|(k, _)| k.clone()).collect();
                listing_body(&mut r, q.json, json_list, names);
                r
            }
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
        }
    }

    async fn object(
        &self,
        req: Request<Incoming>,
        project: &str,
        container: &str,
        key: &str,
    ) -> Response<Body> {
        if key.is_empty() || key.len() > 1024 {
            return error(StatusCode::BAD_REQUEST, "Object name is invalid");
        }
        let meta = object_meta(&req);
        let meta_bytes: usize = meta.iter().map(|(k, v)| k.len() + v.len()).sum();
        if meta
            .iter()
            .any(|(k, v)| k.len() > MAX_META_NAME || v.len() > MAX_META_VALUE)
            || meta.len() > crate::objects::MAX_META_ITEMS
            || meta_bytes > crate::objects::MAX_META_BYTES
        {
            return error(
                StatusCode::BAD_REQUEST,
                "Metadata: at most 90 items, names of 128 bytes, values of 256, 4096 bytes in all",
            );
        }
        if let Err(r) = self.owned(project, container).await {
            return r;
        }
        let copy = *req.method() == Method::PUT && header(&req, "x-copy-from").is_some();
        match req.method().clone() {
            Method::PUT if copy => {
                // Decoded once, here: COPY's source (the path) already is.
                let from = decode(header(&req, "x-copy-from").unwrap_or_default());
                self.copy(req, project, &from, container, key).await
            }
            Method::PUT
                if query(&req).get("multipart-manifest").map(String::as_str) == Some("put") =>
            {
                self.put_slo(req, project, container, key).await
            }
            Method::PUT => self.put(req, container, key).await,
            Method::GET
                if query(&req).get("multipart-manifest").map(String::as_str) == Some("get") =>
            {
                match self.store.head(container, key).await {
                    Ok(ObjectInfo {
                        segments: Some(m), ..
                    }) => {
                        let mut r = full(StatusCode::OK, m);
                        r.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static(
                                "application/json; charset=utf-8",
                            ),
                        );
                        r
                    }
                    Ok(_) => self.get(req, project, container, key).await,
                    Err(e) => store_error(e),
                }
            }
            Method::DELETE
                if query(&req).get("multipart-manifest").map(String::as_str) == Some("delete") =>
            {
                // The segments first, then the manifest.
                let info = match self.store.head(container, key).await {
                    Ok(i) => i,
                    Err(e) => return store_error(e),
                };
                for path in slo_paths(info.segments.as_deref()) {
                    if let Some((c, o)) = path.split_once('/') {
                        if self.owned(project, c).await.is_ok() {
                            let _ = self.store.delete(c, o).await;
                        }
                    }
                }
                match self.store.delete(container, key).await {
                    Ok(true) => full(StatusCode::NO_CONTENT, Bytes::new()),
                    Ok(false) => error(StatusCode::NOT_FOUND, "Not Found"),
                    Err(e) => store_error(e),
                }
            }
            Method::POST => {
                let content_type = header(&req, "content-type").map(str::to_owned);
                match self
                    .store
                    .set_metadata(container, key, &object_meta(&req), content_type.as_deref())
                    .await
                {
                    Ok(()) => full(StatusCode::ACCEPTED, Bytes::new()),
                    Err(e) => store_error(e),
                }
            }
            m if m.as_str() == "COPY" => {
                // COPY /v1/A/c/o, Destination: c2/o2.
                let Some(dest) = header(&req, "destination").map(str::to_owned) else {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        "Destination header required",
                    );
                };
                let Some((dc, dk)) = dest.trim_start_matches('/').split_once('/') else {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        "Destination is container/object",
                    );
                };
                let (dc, dk) = (decode(dc), decode(dk));
                if let Err(r) = self.owned(project, &dc).await {
                    return r;
                }
                let from = format!("{container}/{key}");
                self.copy(req, project, &from, &dc, &dk).await
            }
            Method::GET | Method::HEAD => self.get(req, project, container, key).await,
            Method::DELETE => match self.store.delete(container, key).await {
                Ok(true) => full(StatusCode::NO_CONTENT, Bytes::new()),
                Ok(false) => error(StatusCode::NOT_FOUND, "Not Found"),
                Err(e) => store_error(e),
            },
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
        }
    }

    /// Copies object `from` (`container/object`, decoded, of this project) to
    /// `container`/`key`: its data, and its metadata unless the request
    /// gives some (`X-Object-Meta-*`), as Swift does.
    async fn copy(
        &self,
        req: Request<Incoming>,
        project: &str,
        from: &str,
        container: &str,
        key: &str,
    ) -> Response<Body> {
        let Some((sc, sk)) = from.trim_start_matches('/').split_once('/') else {
            return error(
                StatusCode::PRECONDITION_FAILED,
                "X-Copy-From is container/object",
            );
        };
        let (sc, sk) = (sc.to_owned(), sk.to_owned());
        if let Err(r) = self.owned(project, &sc).await {
            return r;
        }
        let src = match self.store.head(&sc, &sk).await {
            Ok(i) => i,
            Err(e) => return store_error(e),
        };
        let (id, path, size, md5) = match self.store.copy_data(&src, 0, src.size).await {
            Ok(c) => c,
            Err(e) => return store_error(e),
        };
        let given = object_meta(&req);
        let etag: String = md5.iter().map(|b| format!("{b:02x}")).collect();
        let info = ObjectInfo {
            key: key.to_owned(),
            size,
            etag: etag.clone(),
            content_type: header(&req, "content-type")
                .map(str::to_owned)
                .or(src.content_type.clone()),
            content_encoding: src.content_encoding.clone(),
            metadata: if given.is_empty() {
                src.metadata.clone()
            } else {
                given
            },
            ..Default::default()
        };
        if let Err(e) = self.store.commit(container, &id, info).await {
            self.store.discard(&path);
            return store_error(e);
        }
        let mut r = full(StatusCode::CREATED, Bytes::new());
        if let Ok(v) = etag.parse() {
            r.headers_mut().insert("etag", v);
        }
        r
    }

    async fn put(&self, req: Request<Incoming>, container: &str, key: &str) -> Response<Body> {
        // A dynamic large object: `container/prefix` of its segments.
        let manifest = match header(&req, "x-object-manifest") {
            None => None,
            Some(m) => match decode(m).split_once('/') {
                Some((c, _)) if !c.is_empty() => Some(decode(m)),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "X-Object-Manifest must be in the format container/prefix",
                    )
                }
            },
        };
        let expected_etag = header(&req, "etag").map(|e| e.trim_matches('"').to_ascii_lowercase());
        let length = match header(&req, "content-length").map(str::parse::<u64>) {
            Some(Ok(n)) if n > MAX_FILE_SIZE => {
                return error(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large")
            }
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "Invalid Content-Length"),
            None if header(&req, "transfer-encoding").is_some_and(|t| t.contains("chunked")) => {
                None
            }
            None => return error(StatusCode::LENGTH_REQUIRED, "Length Required"),
        };
        let content_type = header(&req, "content-type").map(str::to_owned);
        let content_encoding = header(&req, "content-encoding").map(str::to_owned);
        let metadata = object_meta(&req);
        let mut sink = match BlobSink::start(&self.store) {
            Ok(s) => s,
            Err(e) => return store_error(e),
        };
        let mut md5 = Md5::new();
        let mut body = req.into_body();
        let received: Result<(), Response<Body>> = async {
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|_| error(StatusCode::REQUEST_TIMEOUT, "Request Timeout"))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if sink.size() + data.len() as u64 > MAX_FILE_SIZE {
                    return Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "Request Entity Too Large",
                    ));
                }
                md5.update(&data);
                sink.push(&data).await.map_err(store_error)?;
            }
            if length.is_some_and(|l| l != sink.size()) {
                return Err(error(StatusCode::REQUEST_TIMEOUT, "Request Timeout"));
            }
            Ok(())
        }
        .await;
        if let Err(r) = received {
            sink.abandon(&self.store).await;
            return r;
        }
        let (id, path) = (sink.id.clone(), sink.path.clone());
        let size = match sink.finish(&self.store).await {
            Ok(n) => n,
            Err(e) => return store_error(e),
        };
        let etag: String = md5.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if expected_etag.as_ref().is_some_and(|e| *e != etag) {
            self.store.discard(&path);
            return error(StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable Entity");
        }
        let info = ObjectInfo {
            key: key.to_owned(),
            size,
            etag: etag.clone(),
            content_type,
            content_encoding,
            metadata,
            manifest,
            ..Default::default()
        };
        if let Err(e) = self.store.commit(container, &id, info).await {
            self.store.discard(&path);
            return store_error(e);
        }
        let mut r = full(StatusCode::CREATED, Bytes::new());
        r.headers_mut().insert(
            "etag",
            etag.parse()
                .unwrap_or(hyper::header::HeaderValue::from_static("")),
        );
        r
    }

    /// `?multipart-manifest=put`: a static large object from the JSON list
    /// of its segments (`path` `/container/object`, optional `etag` and
    /// `size_bytes`), each checked against what is stored now; all but the
    /// last at least 1 MiB. Its ETag is the MD5 of the segments' ETags.
    async fn put_slo(
        &self,
        req: Request<Incoming>,
        project: &str,
        container: &str,
        key: &str,
    ) -> Response<Body> {
        let content_type = header(&req, "content-type").map(str::to_owned);
        let metadata = object_meta(&req);
        let body = match http_body_util::Limited::new(req.into_body(), SLO_MANIFEST_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "Manifest too large"),
        };
        let bad = |why: String| error(StatusCode::BAD_REQUEST, &why);
        let Ok(serde_json::Value::Array(list)) = serde_json::from_slice::<serde_json::Value>(&body)
        else {
            return bad("Manifest must be valid JSON: a list of segments".into());
        };
        if list.is_empty() || list.len() > SLO_SEGMENTS {
            return bad(format!("A manifest has 1 to {SLO_SEGMENTS} segments"));
        }
        let mut segments = Vec::with_capacity(list.len());
        let mut md5 = Md5::new();
        let mut size = 0u64;
        for (i, item) in list.iter().enumerate() {
            let Some(path) = item["path"].as_str() else {
                return bad(format!("Segment {i}: a path is needed"));
            };
            let path = decode(path.trim_start_matches('/'));
            let Some((c, o)) = path.split_once('/') else {
                return bad(format!("Segment {i}: the path is /container/object"));
            };
            if self.owned(project, c).await.is_err() {
                return bad(format!("Segment {i}: {path} not found"));
            }
            let seg = match self.store.head(c, o).await {
                Ok(s) => s,
                Err(_) => return bad(format!("Segment {i}: {path} not found")),
            };
            if seg.manifest.is_some() || seg.segments.is_some() {
                return bad(format!("Segment {i}: {path} is a manifest itself"));
            }
            if item["etag"]
                .as_str()
                .is_some_and(|e| e.trim_matches('"') != seg.etag)
            {
                return bad(format!("Segment {i}: {path}: Etag Mismatch"));
            }
            if item["size_bytes"].as_u64().is_some_and(|n| n != seg.size) {
                return bad(format!("Segment {i}: {path}: Size Mismatch"));
            }
            if i + 1 < list.len() && seg.size < SLO_MIN_SEGMENT {
                return bad(format!("Segment {i}: {path}: Too Small; each segment but the last must be at least 1 MiB"));
            }
            md5.update(seg.etag.as_bytes());
            size += seg.size;
            segments.push(
                json!({"path": format!("/{path}"), "etag": seg.etag, "size_bytes": seg.size}),
            );
        }
        let etag: String = md5.finalize().iter().map(|b| format!("{b:02x}")).collect();
        // The manifest has no data of its own: an empty blob.
        let sink = match BlobSink::start(&self.store) {
            Ok(s) => s,
            Err(e) => return store_error(e),
        };
        let (id, path) = (sink.id.clone(), sink.path.clone());
        if let Err(e) = sink.finish(&self.store).await {
            return store_error(e);
        }
        let info = ObjectInfo {
            key: key.to_owned(),
            size,
            etag: etag.clone(),
            content_type,
            metadata,
            segments: Some(serde_json::Value::Array(segments).to_string()),
            ..Default::default()
        };
        if let Err(e) = self.store.commit(container, &id, info).await {
            self.store.discard(&path);
            return store_error(e);
        }
        let mut r = full(StatusCode::CREATED, Bytes::new());
        if let Ok(v) = format!("\"{etag}\"").parse() {
            r.headers_mut().insert("etag", v);
        }
        r
    }

    /// A static large object's segments, as stored now; 409 when one is
    /// gone (the object cannot be read whole).
    async fn slo_segments(
        &self,
        project: &str,
        list: &str,
    ) -> Result<Vec<ObjectInfo>, Response<Body>> {
        let mut parts = Vec::new();
        for path in slo_paths(Some(list)) {
            let Some((c, o)) = path.split_once('/') else {
                return Err(error(
                    StatusCode::CONFLICT,
                    "A segment of the object is gone",
                ));
            };
            self.owned(project, c).await?;
            match self.store.head(c, o).await {
                Ok(seg) => parts.push(seg),
                Err(_) => {
                    return Err(error(
                        StatusCode::CONFLICT,
                        "A segment of the object is gone",
                    ))
                }
            }
        }
        Ok(parts)
    }

    /// A dynamic large object's segments: the objects of its manifest's
    /// container (this project's) whose names start with its prefix, in
    /// name order.
    async fn segments(
        &self,
        project: &str,
        manifest: &str,
    ) -> Result<Vec<ObjectInfo>, Response<Body>> {
        let (container, prefix) = manifest.split_once('/').unwrap_or((manifest, ""));
        self.owned(project, container).await?;
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list(container, prefix, None, after.as_deref(), 1000)
                .await
                .map_err(store_error)?;
            all.extend(page.objects);
            if !page.truncated || all.len() > 100_000 {
                return Ok(all);
            }
            after = page.last;
        }
    }

    async fn get(
        &self,
        req: Request<Incoming>,
        project: &str,
        container: &str,
        key: &str,
    ) -> Response<Body> {
        let info = match self.store.head(container, key).await {
            Ok(i) => i,
            Err(e) => return store_error(e),
        };
        // A dynamic large object reads as its segments, and its ETag is
        // the MD5 of theirs, quoted (as Swift gives it).
        let listed = match (&info.manifest, &info.segments) {
            (Some(m), _) => Some(self.segments(project, m).await),
            (None, Some(list)) => Some(self.slo_segments(project, list).await),
            (None, None) => None,
        };
        let (info, parts) = match listed {
            None => (info, None),
            Some(parts) => {
                let parts = match parts {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                let mut md5 = Md5::new();
                for p in &parts {
                    md5.update(p.etag.as_bytes());
                }
                let etag: String = md5.finalize().iter().map(|b| format!("{b:02x}")).collect();
                let whole = ObjectInfo {
                    size: parts.iter().map(|p| p.size).sum(),
                    etag: format!("\"{etag}\""),
                    ..info
                };
                (whole, Some(parts))
            }
        };
        let (start, end, partial) = match header(&req, "range").map(|r| parse_range(r, info.size)) {
            None => (0, info.size, false),
            Some(Some((s, e))) => (s, e, true),
            Some(None) => {
                let mut r = error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "Requested Range Not Satisfiable",
                );
                if let Ok(v) = format!("bytes */{}", info.size).parse() {
                    r.headers_mut().insert("content-range", v);
                }
                return r;
            }
        };
        let mut r = if *req.method() == Method::HEAD {
            full(StatusCode::OK, Bytes::new())
        } else {
            // The pieces read: one blob, or the segments' overlapping
            // `[start, end)`, each opened (and checked) as it comes.
            let pieces: Vec<(ObjectInfo, u64, u64)> = match &parts {
                None => vec![(info.clone(), start, end)],
                Some(parts) => {
                    let mut at = 0u64;
                    let mut pieces = Vec::new();
                    for p in parts {
                        let (from, to) = (at, at + p.size);
                        if to > start && from < end {
                            pieces.push((p.clone(), start.max(from) - from, end.min(to) - from));
                        }
                        at = to;
                    }
                    pieces
                }
            };
            let store = self.store.clone();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::task::spawn_blocking(move || {
                for (piece, from, to) in pieces {
                    let mut open = true;
                    let read =
                        store
                            .open_blob(&piece)
                            .map_err(|e| e.to_string())
                            .and_then(|blob| {
                                blob.read_range(from, to, |part| {
                                    open = tx
                                        .blocking_send(Ok(Frame::data(Bytes::from(part))))
                                        .is_ok();
                                    open
                                })
                                .map_err(|e| e.to_string())
                            });
                    if let Err(e) = read {
                        tracing::error!("swift: {e}");
                        let _ = tx.blocking_send(Err(std::io::Error::other(e)));
                        return;
                    }
                    if !open {
                        return;
                    }
                }
            });
            let mut r = Response::new(http_body_util::StreamBody::new(Frames(rx)).boxed());
            *r.status_mut() = if partial {
                StatusCode::PARTIAL_CONTENT
            } else {
                StatusCode::OK
            };
            r
        };
        let h = r.headers_mut();
        h.insert("content-length", (end - start).into());
        h.insert(
            "accept-ranges",
            hyper::header::HeaderValue::from_static("bytes"),
        );
        if let Ok(v) = info.etag.parse() {
            h.insert("etag", v);
        }
        if let Ok(v) = http_date(info.modified_ms).parse() {
            h.insert("last-modified", v);
        }
        if let Ok(v) = format!("{:.5}", info.modified_ms as f64 / 1000.0).parse() {
            h.insert("x-timestamp", v);
        }
        let ctype = info
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into());
        if let Ok(v) = ctype.parse() {
            h.insert("content-type", v);
        }
        if let Some(Ok(v)) = info.content_encoding.as_deref().map(str::parse) {
            h.insert("content-encoding", v);
        }
        for (k, v) in &info.metadata {
            if let (Ok(name), Ok(value)) = (
                hyper::header::HeaderName::from_bytes(format!("x-object-meta-{k}").as_bytes()),
                hyper::header::HeaderValue::from_str(v),
            ) {
                h.insert(name, value);
            }
        }
        if partial {
            if let Ok(v) = format!("bytes {}-{}/{}", start, end - 1, info.size).parse() {
                h.insert("content-range", v);
            }
        }
        if let Some(Ok(v)) = info
            .manifest
            .as_deref()
            .map(hyper::header::HeaderValue::from_str)
        {
            h.insert("x-object-manifest", v);
        }
        if info.segments.is_some() {
            h.insert(
                "x-static-large-object",
                hyper::header::HeaderValue::from_static("True"),
            );
        }
        r
    }
}

/// The `container/object` paths of a static large object's manifest.
fn slo_paths(list: Option<&str>) -> Vec<String> {
    list.and_then(|l| serde_json::from_str::<Vec<serde_json::Value>>(l).ok())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| {
            s["path"]
                .as_str()
                .map(|p| p.trim_start_matches('/').to_owned())
        })
        .collect()
}

/// Puts a listing in `r`: JSON, or one name per line (204 when there are
/// none, as Swift answers a plain listing).
fn listing_body(
    r: &mut Response<Body>,
    json: bool,
    entries: Vec<serde_json::Value>,
    names: Vec<String>,
) {
    let (body, kind) = if json {
        (
            serde_json::Value::Array(entries).to_string(),
            "application/json; charset=utf-8",
        )
    } else if names.is_empty() {
        *r.status_mut() = StatusCode::NO_CONTENT;
        return;
    } else {
        (
            names.iter().map(|n| format!("{n}\n")).collect(),
            "text/plain; charset=utf-8",
        )
    };
    *r.body_mut() = Full::new(Bytes::from(body))
        .map_err(|never: Infallible| match never {})
        .boxed();
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static(kind),
    );
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` within `size`: `[start, end)`;
/// None when it cannot be satisfied.
fn parse_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (n > 0 && size > 0).then(|| (size.saturating_sub(n), size))
        }
        (a, "") => {
            let a: u64 = a.parse().ok()?;
            (a < size).then_some((a, size))
        }
        (a, b) => {
            let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b && a < size).then(|| (a, (b + 1).min(size)))
        }
    }
}

/// A GET's body frames, read (and checked) on a blocking thread.
struct Frames(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl futures_core::Stream for Frames {
    type Item = Result<Frame<Bytes>, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_as_http_has_them() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=-5", 100), Some((95, 100)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 100)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-2", 100), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let q = url_pairs("prefix=a%2Fb&delimiter=%2F&format=json&marker=x+y");
        assert_eq!(q["prefix"], "a/b");
        assert_eq!(q["delimiter"], "/");
        assert_eq!(q["marker"], "x y");
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(
            listing_time(1_700_000_000_123),
            "2023-11-14T22:13:20.123000"
        );
    }
}
