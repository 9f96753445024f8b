//! The metadata service at 169.254.169.254, in each DHCP network's
//! namespace on each host: OpenStack's layout (`/openstack/...`, what
//! cloud-init's OpenStack datasource reads) and EC2's (`/latest/meta-data/...`,
//! what CirrOS and cloud-init's Ec2 datasource read), with IMDSv2 tokens.
//!
//! Who asks is known from where the request comes from: the source address
//! on this network is a port of this host (anti-spoofing holds guests to
//! their own addresses), whose metadata the controller gives this host
//! only for ports bound to it. Answers are cached for a few seconds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use netd_proto::GuestMetadata;
use serde_json::{json, Value};

use crate::config::Config;
use crate::controller;

/// The OpenStack versions offered, oldest first (cloud-init takes the
/// newest it knows, or `latest`).
const OPENSTACK_VERSIONS: &[&str] = &[
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
    "latest",
];
const EC2_VERSIONS: &[&str] = &["1.0", "2007-01-19", "2009-04-04", "latest"];
const CACHE_FOR: Duration = Duration::from_secs(10);

/// An answer: status, content type, body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

fn text(body: impl Into<String>) -> Answer {
    Answer {
        status: 200,
        content_type: "text/plain",
        body: body.into().into_bytes(),
    }
}

fn json_answer(v: &Value) -> Answer {
    Answer {
        status: 200,
        content_type: "application/json",
        body: serde_json::to_vec(v).unwrap_or_default(),
    }
}

fn not_found() -> Answer {
    Answer {
        status: 404,
        content_type: "text/plain",
        body: b"Not Found".to_vec(),
    }
}

fn user_data(meta: &GuestMetadata) -> Option<Vec<u8>> {
    let b64 = meta.user_data.as_deref()?;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
}

/// The EC2 instance id: `i-` and eight hex digits (CirrOS waits for the
/// `i-`), from the server's id.
fn ec2_id(meta: &GuestMetadata) -> String {
    let uuid = meta
        .meta_data
        .get("uuid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let hex: String = uuid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    format!("i-{hex:0>8}")
}

fn field<'a>(meta: &'a GuestMetadata, key: &str) -> &'a str {
    meta.meta_data
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The first key pair: (name, key).
fn key(meta: &GuestMetadata) -> Option<(String, String)> {
    let keys = meta.meta_data.get("public_keys")?.as_object()?;
    let (name, key) = keys.iter().next()?;
    Some((name.clone(), key.as_str()?.to_owned()))
}

/// The answer to `GET path` for the guest at `ip` with `meta`.
pub fn answer(path: &str, meta: &GuestMetadata, ip: Ipv4Addr) -> Answer {
    let path = path.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        ["openstack"] => text(OPENSTACK_VERSIONS.join("\n")),
        ["openstack", v] if OPENSTACK_VERSIONS.contains(v) => {
            let mut files = vec![
                "meta_data.json",
                "network_data.json",
                "vendor_data.json",
                "vendor_data2.json",
            ];
            if meta.user_data.is_some() {
                files.push("user_data");
            }
            text(files.join("\n"))
        }
        ["openstack", v, file] if OPENSTACK_VERSIONS.contains(v) => match *file {
            "meta_data.json" => json_answer(&Value::Object(meta.meta_data.clone())),
            "network_data.json" => json_answer(&Value::Object(meta.network_data.clone())),
            "vendor_data.json" => json_answer(&Value::Object(meta.vendor_data.clone())),
            "vendor_data2.json" => json_answer(&json!({})),
            "user_data" => match user_data(meta) {
                Some(bytes) => Answer {
                    status: 200,
                    content_type: "application/octet-stream",
                    body: bytes,
                },
                None => not_found(),
            },
            _ => not_found(),
        },
        [] => text(EC2_VERSIONS.join("\n")),
        [v] if EC2_VERSIONS.contains(v) => text("meta-data/\nuser-data"),
        [v, "user-data"] if EC2_VERSIONS.contains(v) => match user_data(meta) {
            Some(bytes) => Answer {
                status: 200,
                content_type: "application/octet-stream",
                body: bytes,
            },
            None => not_found(),
        },
        [v, "meta-data", rest @ ..] if EC2_VERSIONS.contains(v) => ec2(rest, meta, ip),
        _ => not_found(),
    }
}

fn ec2(rest: &[&str], meta: &GuestMetadata, ip: Ipv4Addr) -> Answer {
    let hostname = field(meta, "hostname");
    match rest {
        [] => {
            let mut keys = vec![
                "ami-id",
                "ami-launch-index",
                "hostname",
                "instance-id",
                "local-hostname",
                "local-ipv4",
                "placement/",
                "public-hostname",
                "public-ipv4",
                "reservation-id",
                "security-groups",
            ];
            if key(meta).is_some() {
                keys.push("public-keys/");
            }
            text(keys.join("\n"))
        }
        ["ami-id"] => text("ami-00000000"),
        ["ami-launch-index"] => text("0"),
        ["instance-id"] => text(ec2_id(meta)),
        ["hostname" | "local-hostname" | "public-hostname"] => text(hostname),
        ["local-ipv4"] => text(ip.to_string()),
        ["public-ipv4"] => text(""),
        ["reservation-id"] => text(format!("r-{}", &ec2_id(meta)[2..])),
        ["security-groups"] => text("default"),
        ["placement"] => text("availability-zone"),
        ["placement", "availability-zone"] => text(field(meta, "availability_zone")),
        ["public-keys"] => match key(meta) {
            Some((name, _)) => text(format!("0={name}")),
            None => not_found(),
        },
        ["public-keys", "0"] => match key(meta) {
            Some(_) => text("openssh-key"),
            None => not_found(),
        },
        ["public-keys", "0", "openssh-key"] => match key(meta) {
            Some((_, k)) => text(k),
            None => not_found(),
        },
        _ => not_found(),
    }
}

/// One network's metadata service: who its guests are, and what the
/// controller said of them lately.
pub struct Service {
    config: Config,
    /// A guest's address on this network: its port.
    pub guests: RwLock<HashMap<Ipv4Addr, String>>,
    cache: Mutex<HashMap<String, (Instant, Arc<GuestMetadata>)>>,
}

impl Service {
    pub fn new(config: Config) -> Service {
        Service {
            config,
            guests: RwLock::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn metadata(&self, port: &str) -> Option<Arc<GuestMetadata>> {
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, m)) = cache.get(port) {
                if at.elapsed() < CACHE_FOR {
                    return Some(m.clone());
                }
            }
        }
        let fetched = match controller::guest_metadata(&self.config, port).await {
            Ok(m) => Arc::new(m),
            Err(e) => {
                tracing::warn!(port, "guest metadata: {e}");
                return None;
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
        cache.insert(port.to_owned(), (Instant::now(), fetched.clone()));
        Some(fetched)
    }

    async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
        from: IpAddr,
    ) -> Response<Full<Bytes>> {
        let reply = |a: Answer| {
            let mut r = Response::new(Full::new(Bytes::from(a.body)));
            *r.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::NOT_FOUND);
            if let Ok(v) = hyper::header::HeaderValue::from_str(a.content_type) {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r
        };
        // IMDSv2's session token: any token is as good (the caller is known
        // by its address), but clients that ask must get one.
        if req.method() == Method::PUT && req.uri().path() == "/latest/api/token" {
            return reply(text("virga-imds-token"));
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(Answer {
                status: 405,
                content_type: "text/plain",
                body: b"Method Not Allowed".to_vec(),
            });
        }
        let IpAddr::V4(ip) = from else {
            return reply(not_found());
        };
        let port = self
            .guests
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .cloned();
        let Some(port) = port else {
            return reply(not_found());
        };
        let path = req.uri().path().to_owned();
        drop(req.into_body().collect().await);
        match self.metadata(&port).await {
            Some(meta) => reply(answer(&path, &meta, ip)),
            None => reply(Answer {
                status: 503,
                content_type: "text/plain",
                body: b"metadata unavailable".to_vec(),
            }),
        }
    }
}

/// Serves `listener` (169.254.169.254:80 in a network's namespace) until
/// dropped.
pub async fn serve(listener: tokio::net::TcpListener, service: Arc<Service>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metadata: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, std::convert::Infallible>(service.handle(req, peer.ip()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            // A guest that holds a connection open holds only that.
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> GuestMetadata {
        let mut m = GuestMetadata::default();
        m.meta_data
            .insert("uuid".into(), json!("0a1b2c3d-4e5f-6789-abcd-ef0123456789"));
        m.meta_data.insert("hostname".into(), json!("vm1"));
        m.meta_data
            .insert("availability_zone".into(), json!("nova"));
        m.meta_data
            .insert("public_keys".into(), json!({"k1": "ssh-ed25519 AAAA k1"}));
        m.user_data = Some(base64::engine::general_purpose::STANDARD.encode("#cloud-config\n"));
        m.network_data.insert("links".into(), json!([]));
        m
    }

    fn body(a: Answer) -> String {
        assert_eq!(a.status, 200);
        String::from_utf8(a.body).unwrap_or_default()
    }

    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

    #[test]
    fn openstack_paths_answer_as_nova_does() {
        let m = meta();
        assert!(body(answer("/openstack", &m, IP)).ends_with("2018-08-27\nlatest"));
        assert!(body(answer("/openstack/latest/", &m, IP)).contains("user_data"));
        let md: Value = serde_json::from_str(&body(answer(
            "/openstack/2018-08-27/meta_data.json",
            &m,
            IP,
        )))
        .unwrap_or_default();
        assert_eq!(md["uuid"], "0a1b2c3d-4e5f-6789-abcd-ef0123456789");
        assert_eq!(
            body(answer("/openstack/latest/user_data", &m, IP)),
            "#cloud-config\n"
        );
        assert_eq!(
            body(answer("/openstack/latest/network_data.json", &m, IP)),
            r#"{"links":[]}"#
        );
        assert_eq!(
            answer("/openstack/1999-01-01/meta_data.json", &m, IP).status,
            404
        );
        let mut none = meta();
        none.user_data = None;
        assert_eq!(answer("/openstack/latest/user_data", &none, IP).status, 404);
    }

    #[test]
    fn ec2_paths_answer_as_cirros_and_cloud_init_read_them() {
        let m = meta();
        assert_eq!(
            body(answer("/2009-04-04/meta-data/instance-id", &m, IP)),
            "i-0a1b2c3d"
        );
        assert_eq!(
            body(answer("/latest/meta-data/local-ipv4", &m, IP)),
            "10.0.0.5"
        );
        assert_eq!(body(answer("/latest/meta-data/hostname", &m, IP)), "vm1");
        assert_eq!(
            body(answer("/latest/meta-data/public-keys/", &m, IP)),
            "0=k1"
        );
        assert_eq!(
            body(answer(
                "/latest/meta-data/public-keys/0/openssh-key",
                &m,
                IP
            )),
            "ssh-ed25519 AAAA k1"
        );
        assert_eq!(
            body(answer(
                "/latest/meta-data/placement/availability-zone",
                &m,
                IP
            )),
            "nova"
        );
        assert_eq!(
            body(answer("/2009-04-04/user-data", &m, IP)),
            "#cloud-config\n"
        );
        assert!(body(answer("/latest/meta-data/", &m, IP)).contains("public-keys/"));
        assert_eq!(answer("/latest/meta-data/nothing", &m, IP).status, 404);
        assert_eq!(answer("/../../etc/passwd", &m, IP).status, 404);
    }
}
