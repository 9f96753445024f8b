//! hostd's HTTP API: HTTP/1.1 + JSON on TCP and on a Unix socket, every request
//! authenticated with the configured bearer token.
//!
//! | method | path                                   | what                              |
//! |--------|----------------------------------------|-----------------------------------|
//! | GET    | /host                                  | capacity, KVM mode, versions      |
//! | GET    | /instances                             | all instances                     |
//! | POST   | /instances[?start=false][&wait=false]  | create (and start) one; `wait=false` answers 202 once it is recorded (BUILDING while its images are fetched) |
//! | GET    | /instances/{id}                        | one instance                      |
//! | DELETE | /instances/{id}                        | stop hard and remove              |
//! | POST   | /instances/{id}/actions/{action}       | start, stop, reboot, pause, resume; body `{"hard": bool, "timeout_ms": N}` |
//! | GET    | /instances/{id}/console?tail=N[&follow=true] | console lines; follow streams  |
//! | POST   | /instances/{id}/console                | types the body (at most 4 KiB) on the serial console |
//! | POST   | /instances/{id}/resize                 | `{"vcpus", "memory_mib", "root_disk_gib"}` for a stopped instance; the old size and root disk kept |
//! | POST   | /instances/{id}/resize/confirm\|revert | ends a resize: the old root disk goes, or comes back with the old size |
//! | POST   | /instances/{id}/snapshot               | `{"image_id"}`: copies the root disk (guest paused) and uploads it to the controller as that image's data; 202 once copied |
//! | POST   | /instances/{id}/nics                   | a NIC (`{"tap", "mac", "mtu"}`): plugged into the running guest, kept for later starts |
//! | DELETE | /instances/{id}/nics/{tap}             | that NIC goes, once the running guest has let go of it (409 if it does not within a minute) |
//! | POST   | /instances/{id}/disks                  | a disk (a volume: `{"id", "path", "serial", "read_only"}`, the id naming the device; one on another host `{"id", "serial", "nbd": {"address", "export"}}`, connected through the kernel's NBD client): plugged into the running guest as descriptors hostd opens, kept for later starts |
//! | DELETE | /instances/{id}/disks/{dev}            | that disk goes, as a NIC does |
//! | PUT    | /instances/{id}/disks/{dev}/size       | `{"bytes"}`: the disk (attached or the root volume) grows, in the running guest (which is told) or in its file |
//! | PUT    | /instances/{id}/disks/{dev}/files      | `{"path", "base", "layers"}`: the disk (attached or the root volume) moves onto these files (its volume was snapshotted in use): the running VMM at once, and every later start |
//! | GET    | /instances/{id}/metrics                | the VMM's own metrics             |
//! | GET    | /events                                | state changes, one JSON per line  |
//! | GET    | /metrics                               | Prometheus text                   |
//!
//! Errors are `{"error": {"code": N, "message": "..."}}`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;

use crate::host;
use crate::instance::{InstanceSpec, State};
use crate::supervisor::{OpError, Supervisor};
use hostd_proto::instance::ActionBody;

/// `PUT /instances/{id}/disks/{dev}/files`: where a disk's data is now (its
/// volume was snapshotted in use): `path`, a qcow2 overlay over `layers`
/// (top first) over `base`, or a raw file alone.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskFiles {
    path: std::path::PathBuf,
    #[serde(default)]
    base: Option<std::path::PathBuf>,
    #[serde(default)]
    layers: Vec<std::path::PathBuf>,
}

pub type ResponseBody = BoxBody<Bytes, std::io::Error>;

const MAX_BODY: usize = 1 << 20;
const MAX_TAIL: usize = 10_000;

pub struct Api {
    sup: Arc<Supervisor>,
    token: Vec<u8>,
    vmm_version: String,
    /// Responses by status code, for /metrics.
    responses: Mutex<BTreeMap<u16, u64>>,
}

fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<ResponseBody> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<ResponseBody> {
    json(
        status,
        &serde_json::json!({"error": {"code": status.as_u16(), "message": message.into()}}),
    )
}

fn op_error(e: OpError) -> Response<ResponseBody> {
    let status = match &e {
        OpError::BadRequest(_) => StatusCode::BAD_REQUEST,
        OpError::NotFound(_) => StatusCode::NOT_FOUND,
        OpError::Conflict(_) => StatusCode::CONFLICT,
        OpError::Unbootable(_) => StatusCode::UNPROCESSABLE_ENTITY,
        OpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        OpError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

fn stream(rx: mpsc::Receiver<Bytes>, content_type: &'static str) -> Response<ResponseBody> {
    // A body fed by a channel: console follow and the event stream.
    let mut r = Response::new(virga_imagefile::serve::ChannelBody(rx).boxed());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Compares in time that depends only on the lengths, not on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (!k.is_empty()).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

impl Api {
    pub fn new(sup: Arc<Supervisor>, vmm_version: String) -> Arc<Api> {
        Arc::new(Api {
            token: sup.config.token.as_bytes().to_vec(),
            sup,
            vmm_version,
            responses: Mutex::new(BTreeMap::new()),
        })
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        req.headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|t| constant_time_eq(t, &self.token))
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let response = if self.authorized(&req) {
            self.route(req).await
        } else {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        };
        let code = response.status().as_u16();
        *self
            .responses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
        tracing::debug!(%method, path, code, "api request");
        Ok(response)
    }

    async fn route(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let method = req.method().clone();
        match (method.clone(), segments.as_slice()) {
            (Method::GET, ["host"]) => json(StatusCode::OK, &self.host()),
            (Method::GET, ["metrics"]) => {
                let mut r = Response::new(full(self.prometheus()));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            (Method::GET, ["events"]) => self.events(),
            (Method::GET, ["instances"]) => json(StatusCode::OK, &self.sup.list()),
            (Method::POST, ["instances"]) => {
                let q = query(&req);
                let start = q.get("start").map(String::as_str) != Some("false");
                let wait = q.get("wait").map(String::as_str) != Some("false");
                let spec: InstanceSpec = match read_json(req).await {
                    Ok(s) => s,
                    Err(r) => return r,
                };
                match self.sup.create(spec, start, wait).await {
                    Ok(i) if wait => json(StatusCode::CREATED, &i),
                    Ok(i) => json(StatusCode::ACCEPTED, &i),
                    Err(e) => op_error(e),
                }
            }
            (Method::GET, ["instances", id]) => match self.sup.show(id) {
                Ok(i) => json(StatusCode::OK, &i),
                Err(e) => op_error(e),
            },
            (Method::DELETE, ["instances", id]) => match self.sup.delete(id).await {
                Ok(()) => Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(full(Bytes::new()))
                    .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response")),
                Err(e) => op_error(e),
            },
            (Method::POST, ["instances", id, "actions", action]) => {
                let (id, action) = (id.to_string(), action.to_string());
                let body: ActionBody = match read_json_or_empty(req).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                self.action(&id, &action, body).await
            }
            (Method::GET, ["instances", id, "console"]) => {
                let q = query(&req);
                self.console(id, &q)
            }
            (Method::POST, ["instances", id, "nics"]) => {
                let id = id.to_string();
                let nic: crate::instance::NicSpec = match read_json(req).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                match self.sup.add_nic(&id, nic).await {
                    Ok(i) => json(StatusCode::OK, &i),
                    Err(e) => op_error(e),
                }
            }
            (Method::POST, ["instances", id, "disks"]) => {
                let id = id.to_string();
                let mut body: serde_json::Value = match read_json(req).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                // A volume on another host names its NBD export; the rest
                // is the disk as the VMM takes it.
                let nbd = body.as_object_mut().and_then(|m| m.remove("nbd"));
                let nbd: Option<crate::instance::NbdSource> =
                    match nbd.map(serde_json::from_value).transpose() {
                        Ok(n) => n,
                        Err(e) => return error(StatusCode::BAD_REQUEST, format!("nbd: {e}")),
                    };
                let disk: vmm::config::DiskConfig = match serde_json::from_value(body) {
                    Ok(d) => d,
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("disk: {e}")),
                };
                match self.sup.add_disk(&id, disk, nbd).await {
                    Ok(i) => json(StatusCode::OK, &i),
                    Err(e) => op_error(e),
                }
            }
            (Method::DELETE, ["instances", id, "disks", dev]) => {
                match self.sup.remove_disk(id, dev).await {
                    Ok(i) => json(StatusCode::OK, &i),
                    Err(e) => op_error(e),
                }
            }
            (Method::PUT, ["instances", id, "disks", dev, "files"]) => {
                let (id, dev) = (id.to_string(), dev.to_string());
                let files: DiskFiles = match read_json(req).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                let disk = serde_json::json!({"id": dev, "path": files.path,
                    "base": files.base, "layers": files.layers});
                let disk: vmm::config::DiskConfig = match serde_json::from_value(disk) {
                    Ok(d) => d,
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("disk: {e}")),
                };
                match self.sup.move_disk(&id, disk).await {
                    Ok(i) => json(StatusCode::OK, &i),
                    Err(e) => op_error(e),
                }
            }
            (Method::PUT, ["instances", id, "disks", dev, "size"]) => {
                let (id, dev) = (id.to_string(), dev.to_string());
                let size: vmm::api::SizeBody = match read_json(req).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                match self.sup.grow_disk(&id, &dev, size.bytes).await {
                    Ok(i) => json(StatusCode::OK, &i),
                    Err(e) => op_error(e),
                }
            }
            (Method::DELETE, ["instances", id, "nics", tap]) => {
                match self.sup.remove_nic(id, tap).await {
                    Ok(i) => json(StatusCode::OK, &i),
                    Err(e) => op_error(e),
                }
            }
            (Method::POST, ["instances", id, "resize"]) => {
                let id = id.to_string();
                let size: crate::instance::Size = match read_json(req).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                match self.sup.resize(&id, size).await {
                    Ok(i) => json(StatusCode::OK, &i),
                    Err(e) => op_error(e),
                }
            }
            (Method::POST, ["instances", id, "resize", end @ ("confirm" | "revert")]) => {
                match self.sup.end_resize(id, *end == "confirm").await {
                    Ok(i) => json(StatusCode::OK, &i),
                    Err(e) => op_error(e),
                }
            }
            (Method::POST, ["instances", id, "snapshot"]) => {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Snapshot {
                    image_id: String,
                }
                let id = id.to_string();
                let body: Snapshot = match read_json(req).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                match self.sup.snapshot(&id, &body.image_id).await {
                    Ok(()) => json(StatusCode::ACCEPTED, &serde_json::json!({})),
                    Err(e) => op_error(e),
                }
            }
            (Method::POST, ["instances", id, "console"]) => {
                let id = id.to_string();
                let bytes = match read_body(req).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                match self.sup.console_input(&id, &bytes) {
                    Ok(()) => Response::builder()
                        .status(StatusCode::NO_CONTENT)
                        .body(full(Bytes::new()))
                        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response")),
                    Err(e) => op_error(e),
                }
            }
            (Method::GET, ["instances", id, "metrics"]) => match self.sup.vmm_metrics(id).await {
                Ok(m) => json(StatusCode::OK, &m),
                Err(e) => op_error(e),
            },
            (_, ["host"] | ["metrics"] | ["events"] | ["instances"])
            | (_, ["instances", _])
            | (_, ["instances", _, "actions", _])
            | (_, ["instances", _, "console" | "metrics"]) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} not allowed on {path}"),
            ),
            _ => error(StatusCode::NOT_FOUND, format!("no such resource: {path}")),
        }
    }

    async fn action(&self, id: &str, action: &str, body: ActionBody) -> Response<ResponseBody> {
        let timeout = body.timeout_ms.map(Duration::from_millis);
        if timeout.is_some_and(|t| t > Duration::from_secs(600)) {
            return error(StatusCode::BAD_REQUEST, "timeout_ms: at most 600000");
        }
        let result = match action {
            "start" => self.sup.start_instance(id).await,
            "stop" => self.sup.stop(id, body.hard, timeout).await,
            "reboot" => self.sup.reboot(id, body.hard).await,
            "pause" => self.sup.set_paused(id, true).await,
            "resume" => self.sup.set_paused(id, false).await,
            _ => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no action {action:?}: start, stop, reboot, pause or resume"),
                )
            }
        };
        match result {
            Ok(i) => json(StatusCode::OK, &i),
            Err(e) => op_error(e),
        }
    }

    fn console(&self, id: &str, q: &BTreeMap<String, String>) -> Response<ResponseBody> {
        if let Err(e) = self.sup.show(id) {
            return op_error(e);
        }
        let tail = match q.get("tail").map(|t| t.parse::<usize>()) {
            None => 100,
            Some(Ok(n)) if n <= MAX_TAIL => n,
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("tail: a number of lines up to {MAX_TAIL}"),
                )
            }
        };
        // Where following starts: measured before the tail is read, so a line
        // written in between is sent twice at worst, never lost.
        let follow_from = self
            .sup
            .console_path(id)
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        let lines = match self.sup.console_tail(id, tail) {
            Ok(l) => l,
            Err(e) => return op_error(e),
        };
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        if q.get("follow").map(String::as_str) != Some("true") {
            let mut r = Response::new(full(text));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return r;
        }
        let Ok(path) = self.sup.console_path(id) else {
            return error(StatusCode::NOT_FOUND, format!("no instance {id:?}"));
        };
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(follow_file(path, Bytes::from(text), follow_from, tx));
        stream(rx, "text/plain; charset=utf-8")
    }

    fn events(&self) -> Response<ResponseBody> {
        let mut events = self.sup.subscribe();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let line = match events.recv().await {
                    Ok(e) => serde_json::to_string(&e).unwrap_or_default(),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        format!(r#"{{"lagged": {n}}}"#)
                    }
                    Err(_) => return,
                };
                if tx.send(Bytes::from(line + "\n")).await.is_err() {
                    return; // the client went away
                }
            }
        });
        stream(rx, "application/x-ndjson")
    }

    fn host(&self) -> host::HostInfo {
        let (memory_mib, memory_available_mib, hugepages) = host::memory();
        let instances = self.sup.list();
        let (vcpus_used, memory_used_mib) = self.sup.used();
        let config = &self.sup.config;
        host::HostInfo {
            host_id: config.host_id.clone(),
            cpus: host::cpus(),
            memory_mib,
            memory_available_mib,
            memory_usable_mib: memory_mib.saturating_sub(config.reserved_memory_mib),
            hugepages,
            disk: host::disk(&config.state_dir),
            kvm: host::kvm(),
            instances: host::InstanceCounts {
                total: instances.len(),
                running: instances
                    .iter()
                    .filter(|i| i.state == State::Running)
                    .count(),
                vcpus_used,
                memory_used_mib,
            },
            versions: host::Versions {
                hostd: env!("CARGO_PKG_VERSION"),
                vmm: self.vmm_version.clone(),
            },
            cgroups: self.sup.cgroups_enabled(),
        }
    }

    fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in samples {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        let instances = self.sup.list();
        let states = State::ALL;
        metric(
            "hostd_instances",
            "gauge",
            "Instances by state.",
            states
                .iter()
                .map(|s| {
                    let n = instances.iter().filter(|i| i.state == *s).count();
                    (format!("{{state=\"{}\"}}", s.as_str()), n as u64)
                })
                .collect(),
        );
        let per_instance = |f: fn(&crate::instance::Instance) -> u64| {
            instances
                .iter()
                .filter(|i| i.state.has_process())
                .map(|i| (format!("{{instance=\"{}\"}}", i.spec.id), f(i)))
                .collect::<Vec<_>>()
        };
        metric(
            "hostd_instance_vcpus",
            "gauge",
            "vCPUs of each instance with a VMM.",
            per_instance(|i| u64::from(i.spec.vcpus)),
        );
        metric(
            "hostd_instance_memory_bytes",
            "gauge",
            "Guest memory of each instance with a VMM.",
            per_instance(|i| u64::from(i.spec.memory_mib) << 20),
        );
        let c = &self.sup.counters;
        metric(
            "hostd_vmm_starts_total",
            "counter",
            "VMM processes started.",
            vec![(String::new(), c.vmm_starts.load(Ordering::Relaxed))],
        );
        metric(
            "hostd_vmm_exits_total",
            "counter",
            "VMM processes that ended, by outcome.",
            vec![
                (
                    "{outcome=\"shutoff\"}".into(),
                    c.vmm_exits_clean.load(Ordering::Relaxed),
                ),
                (
                    "{outcome=\"error\"}".into(),
                    c.vmm_exits_failed.load(Ordering::Relaxed),
                ),
            ],
        );
        metric(
            "hostd_vmm_adopted_total",
            "counter",
            "Running VMMs taken back after a hostd restart.",
            vec![(String::new(), c.adopted.load(Ordering::Relaxed))],
        );
        let responses = self
            .responses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(code, n)| (format!("{{code=\"{code}\"}}"), *n))
            .collect();
        metric(
            "hostd_api_responses_total",
            "counter",
            "API responses by status code.",
            responses,
        );
        metric(
            "hostd_resident_memory_bytes",
            "gauge",
            "hostd's own resident memory.",
            vec![(String::new(), resident_bytes())],
        );
        out
    }
}

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib << 10)
}

/// Sends `first`, then whatever `path` holds past `offset` as it grows, until
/// the client leaves.
async fn follow_file(
    path: std::path::PathBuf,
    first: Bytes,
    mut offset: u64,
    tx: mpsc::Sender<Bytes>,
) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    if tx.send(first).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let Ok(mut f) = tokio::fs::File::open(&path).await else {
            continue;
        };
        let len = f.metadata().await.map_or(0, |m| m.len());
        if len < offset {
            offset = 0; // truncated or replaced
        }
        if len == offset || f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
            continue;
        }
        while let Ok(n) = f.read(&mut buf).await {
            if n == 0 {
                break;
            }
            offset += n as u64;
            if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                return;
            }
        }
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<ResponseBody>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body: {e} (at most {MAX_BODY} bytes)"),
        )),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Response<ResponseBody>> {
    let body = read_body(req).await?;
    serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}

async fn read_json_or_empty<T: serde::de::DeserializeOwned + Default>(
    req: Request<Incoming>,
) -> Result<T, Response<ResponseBody>> {
    let body = read_body(req).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}

/// Serves one accepted connection.
pub fn serve_connection<IO>(api: Arc<Api>, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| api.clone().handle(req));
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(io), service)
            .await
        {
            tracing::debug!("api connection: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret-token-123", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret-token-123", b"secret-token-124"));
        assert!(!constant_time_eq(b"secret", b"secret-token-123"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
