//! The control API: HTTP/1.1 + JSON on a Unix socket.
//!
//! The server runs on its own thread (a single-threaded tokio runtime) and only
//! translates: each request becomes an [`ApiRequest`] for the VMM's control loop and
//! waits for the reply. A malformed request is answered here and never reaches the
//! VM, so it cannot disturb the guest.
//!
//! | method | path                   | body                              | reply        |
//! |--------|------------------------|-----------------------------------|--------------|
//! | GET    | /vm                    |                                   | 200 VmInfo   |
//! | PUT    | /vm/state              | `{"state": "paused"\|"running"}`  | 204          |
//! | PUT    | /vm/actions/shutdown   | `{"timeout_ms": N}` (optional)    | 202          |
//! | GET    | /metrics               |                                   | 200 Metrics  |
//! | PUT    | /vm/devices/{id}/rate-limit | `{"bytes_per_sec": N, "ops_per_sec": N}` | 204 |
//! | POST   | /vm/nets               | a `nets` entry of the config file | 201 DeviceInfo |
//! | POST   | /vm/disks              | a `disks` entry (no `path` when its descriptor comes along) | 201 DeviceInfo |
//! | DELETE | /vm/devices/{id}       |                                   | 202          |
//! | PUT    | /vm/devices/{disk}/size  | `{"bytes": N}`                  | 204          |
//! | PUT    | /vm/devices/{disk}/files | `{"fds": [..], "backing_fds": [..]}` (positions), descriptors sent | 204 |
//!
//! A NIC plugged through the API runs on TAP descriptors the client sends
//! with the request (SCM_RIGHTS on its first bytes: an empty line, which
//! HTTP lets a server skip before a request), or on a tap the VMM opens by
//! name when it may; a disk on its file's descriptors (`[buffered]` or
//! `[O_DIRECT, buffered]`), or at a path the VMM opens when it may.
//! Descriptor numbers in the body are refused: they would name the VMM's
//! own files. A disk moves to new files (a live snapshot put the old ones
//! under an overlay) on descriptors sent the same way. Unplugging asks the guest; the device is gone from `GET /vm`
//! once the guest has let go of it (or at its next reboot).

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::config::{DiskConfig, NetConfig, VmConfig};
use crate::metrics::{ExitCounts, ProcessMemory};
use crate::rate_limiter::RateLimit;

const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest a graceful shutdown may be given before the VMM stops the guest.
pub const MAX_SHUTDOWN_TIMEOUT_MS: u64 = 600_000;
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
/// The control loop answers within microseconds unless it is tearing the VM down.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// A plug registers the device's interrupts and notifications with KVM
/// (registering an ioeventfd waits for an SRCU grace period): milliseconds
/// normally; once, on a testbed busy with a guest's first boot, over 10 s.
pub const PLUG_REPLY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Paused,
    ShuttingDown,
}

#[derive(Debug)]
pub enum ApiRequest {
    Describe,
    SetState(VmState),
    Shutdown {
        timeout: Duration,
        signal: ShutdownSignal,
    },
    Metrics,
    SetRateLimit {
        device: String,
        limit: RateLimit,
    },
    AddNet {
        net: NetConfig,
        fds: Vec<OwnedFd>,
    },
    AddDisk {
        disk: Box<DiskConfig>,
        fds: Vec<OwnedFd>,
    },
    RemoveDevice(String),
    /// Grows a disk to `bytes`; the guest is told.
    ResizeDisk {
        device: String,
        bytes: u64,
    },
    /// Serves a disk from new files (sent as `fds`) from now on.
    ReplaceDiskFiles {
        device: String,
        files: FilesBody,
        fds: Vec<OwnedFd>,
    },
}

/// A device plugged through the API.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceInfo {
    pub id: String,
    pub pci_slot: Option<u8>,
}

#[derive(Debug, Serialize)]
pub struct VmInfo {
    pub state: VmState,
    pub uptime_ms: u64,
    /// How many times the guest has been booted in this process (restarts count).
    pub boots: u64,
    pub config: VmConfig,
    /// Current limits by device (`disk0`, `net0`, ...), as changed at run time.
    pub rate_limits: std::collections::BTreeMap<String, RateLimit>,
}

#[derive(Debug, Serialize)]
pub struct MetricsReport {
    pub uptime_ms: u64,
    /// CLOCK_MONOTONIC (µs) when this boot's vCPUs started: the guest's
    /// first instruction, on a clock the caller can read too.
    pub boot_started_monotonic_us: u64,
    pub vcpu_exits: ExitCounts,
    pub per_vcpu_exits: Vec<ExitCounts>,
    pub memory: ProcessMemory,
    pub guest_memory_kib: u64,
}

#[derive(Debug)]
pub enum ApiReply {
    Info(Box<VmInfo>),
    Metrics(Box<MetricsReport>),
    Device(DeviceInfo),
    NoContent,
    Accepted,
    Error(StatusCode, String),
}

/// A request and where its reply goes.
pub type ApiMessage = (ApiRequest, oneshot::Sender<ApiReply>);

/// `PUT /vm/devices/{disk}/files`: where among the descriptors sent the
/// disk's own files are (`[buffered]` or `[O_DIRECT, buffered]`) and its
/// backing, top first, as in a plug. Both empty: every descriptor sent is
/// the disk's own.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesBody {
    #[serde(default)]
    pub fds: Vec<i32>,
    #[serde(default)]
    pub backing_fds: Vec<i32>,
}

/// `PUT /vm/devices/{disk}/size`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeBody {
    pub bytes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: TargetState,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum TargetState {
    Paused,
    Running,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ShutdownBody {
    timeout_ms: Option<u64>,
    #[serde(default)]
    signal: ShutdownSignal,
}

/// How the guest is asked to shut down: as a user at its keyboard would
/// (Ctrl+Alt+Del, which a plain init answers by powering off; systemd maps
/// it to a reboot), or by pressing its ACPI power button (what systemd and
/// acpid answer by powering off cleanly).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownSignal {
    #[default]
    CtrlAltDel,
    PowerButton,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("api_socket {path}: another process is serving it")]
    InUse { path: PathBuf },
    #[error("api_socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the API thread: {0}")]
    Thread(std::io::Error),
}

/// The API server; removes its socket file when dropped. A jailed VMM cannot
/// (the path is outside its jail, and its directory not its user's): the file
/// stays, nobody answers on it, and the next VMM on that path reuses it.
pub struct ApiServer {
    path: PathBuf,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A bound API socket whose server has not started yet.
pub struct ApiListener {
    listener: std::os::unix::net::UnixListener,
    server: ApiServer,
}

/// Binds `path` now, so that a bad path fails before any VM exists and the
/// socket is made before a jail hides the directory it lives in.
pub fn bind(path: &Path) -> Result<ApiListener, ApiError> {
    let bind_error = |source| ApiError::Bind {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        // A socket nobody answers on is left over from a crash: reuse the path.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ApiError::InUse {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(bind_error)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok(ApiListener {
        listener,
        server: ApiServer {
            path: path.to_owned(),
        },
    })
}

impl ApiListener {
    /// Serves the socket on a new thread, forwarding requests through `to_vmm`.
    pub fn serve(self, to_vmm: Sender<crate::vmm::VmmEvent>) -> Result<ApiServer, ApiError> {
        let listener = self.listener;
        std::thread::Builder::new()
            .name("api".into())
            .stack_size(crate::THREAD_STACK_BYTES)
            .spawn(move || serve(listener, to_vmm))
            .map_err(ApiError::Thread)?;
        Ok(self.server)
    }
}

fn serve(listener: std::os::unix::net::UnixListener, to_vmm: Sender<crate::vmm::VmmEvent>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("API runtime: {e}; the control API is unavailable");
            return;
        }
    };
    // Before the first request: what clients send is untrusted.
    if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Api) {
        tracing::error!("{e}; the control API is unavailable");
        return;
    }
    runtime.block_on(async move {
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("API socket: {e}; the control API is unavailable");
                return;
            }
        };
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("API accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let to_vmm = to_vmm.clone();
            tokio::spawn(async move {
                let fds = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                let stream = FdStream {
                    stream,
                    fds: fds.clone(),
                };
                let service = hyper::service::service_fn(move |req| {
                    let to_vmm = to_vmm.clone();
                    let fds = fds.clone();
                    async move { Ok::<_, Infallible>(handle(req, &to_vmm, &fds).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!("API connection: {e}");
                }
            });
        }
    });
}

/// A connection whose reads also take the descriptors the client sends
/// (SCM_RIGHTS), kept for the connection's plug request. One reader and one
/// readiness path: peeking at the first bytes before hyper read them lost a
/// wakeup now and then (the request sat unread in the socket).
struct FdStream {
    stream: tokio::net::UnixStream,
    fds: std::sync::Arc<std::sync::Mutex<Vec<OwnedFd>>>,
}

impl tokio::io::AsyncRead for FdStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::os::fd::AsFd;
        let this = self.get_mut();
        loop {
            std::task::ready!(this.stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match this.stream.try_io(tokio::io::Interest::READABLE, || {
                receive(this.stream.as_fd(), unfilled, &this.fds)
            }) {
                Ok(n) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for FdStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write(cx, data)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Most descriptors one request may bring (a NIC's queue pairs).
const MAX_FDS: usize = crate::virtio::net::MAX_QUEUE_PAIRS as usize;

/// One read of the connection; descriptors that come with the bytes go to
/// `fds`.
fn receive(
    fd: std::os::fd::BorrowedFd<'_>,
    into: &mut [u8],
    fds: &std::sync::Mutex<Vec<OwnedFd>>,
) -> std::io::Result<usize> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        fd,
        &mut [std::io::IoSliceMut::new(into)],
        &mut ancillary,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut held = fds.lock().unwrap_or_else(|e| e.into_inner());
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = message {
            held.extend(got);
        }
    }
    Ok(received.bytes)
}

type Reply = Response<Full<Bytes>>;

async fn handle(
    req: Request<Incoming>,
    to_vmm: &Sender<crate::vmm::VmmEvent>,
    connection_fds: &std::sync::Mutex<Vec<OwnedFd>>,
) -> Reply {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_BODY_BYTES} bytes"),
            )
        }
    };
    let mut request = match route(&parts.method, parts.uri.path(), &body) {
        Ok(request) => request,
        Err(reply) => return *reply,
    };
    let plugging = matches!(
        request,
        ApiRequest::AddNet { .. } | ApiRequest::AddDisk { .. }
    );
    if let ApiRequest::AddNet { fds, .. }
    | ApiRequest::AddDisk { fds, .. }
    | ApiRequest::ReplaceDiskFiles { fds, .. } = &mut request
    {
        // The descriptors go with the first request that takes any.
        *fds = std::mem::take(&mut *connection_fds.lock().unwrap_or_else(|e| e.into_inner()));
    }
    let (reply_tx, reply_rx) = oneshot::channel();
    if to_vmm
        .send(crate::vmm::VmmEvent::Api((request, reply_tx)))
        .is_err()
    {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the VM is shutting down");
    }
    let timeout = if plugging {
        PLUG_REPLY_TIMEOUT
    } else {
        REPLY_TIMEOUT
    };
    match tokio::time::timeout(timeout, reply_rx).await {
        Ok(Ok(reply)) => render(reply),
        Ok(Err(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "the VM is shutting down"),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the VMM did not answer in time",
        ),
    }
}

/// Maps method and path to a request, or to the 4xx reply that refuses it.
fn route(method: &Method, path: &str, body: &[u8]) -> Result<ApiRequest, Box<Reply>> {
    let rate_limit_device = path
        .strip_prefix("/vm/devices/")
        .and_then(|rest| rest.strip_suffix("/rate-limit"))
        .filter(|d| !d.is_empty() && !d.contains('/'));
    let size_device = path
        .strip_prefix("/vm/devices/")
        .and_then(|rest| rest.strip_suffix("/size"))
        .filter(|d| !d.is_empty() && !d.contains('/'));
    let files_device = path
        .strip_prefix("/vm/devices/")
        .and_then(|rest| rest.strip_suffix("/files"))
        .filter(|d| !d.is_empty() && !d.contains('/'));
    let device = path
        .strip_prefix("/vm/devices/")
        .filter(|d| !d.is_empty() && !d.contains('/'));
    let allowed = match path {
        "/vm" | "/metrics" => "GET",
        "/vm/state" | "/vm/actions/shutdown" => "PUT",
        "/vm/nets" | "/vm/disks" => "POST",
        _ if rate_limit_device.is_some() || size_device.is_some() || files_device.is_some() => {
            "PUT"
        }
        _ if device.is_some() => "DELETE",
        _ => {
            return Err(Box::new(error(
                StatusCode::NOT_FOUND,
                format!("no such resource: {path}"),
            )))
        }
    };
    if method.as_str() != allowed {
        let mut reply = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} supports {allowed}, not {method}"),
        );
        reply
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allowed));
        return Err(Box::new(reply));
    }
    if let Some(device) = rate_limit_device {
        let limit: RateLimit = parse(body)?;
        limit
            .validate()
            .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e)))?;
        return Ok(ApiRequest::SetRateLimit {
            device: device.to_owned(),
            limit,
        });
    }
    if let Some(device) = size_device {
        let size: SizeBody = parse(body)?;
        return Ok(ApiRequest::ResizeDisk {
            device: device.to_owned(),
            bytes: size.bytes,
        });
    }
    if let Some(device) = files_device {
        return Ok(ApiRequest::ReplaceDiskFiles {
            device: device.to_owned(),
            files: parse(body)?,
            fds: Vec::new(),
        });
    }
    if let Some(device) = device {
        return Ok(ApiRequest::RemoveDevice(device.to_owned()));
    }
    match path {
        "/vm" => Ok(ApiRequest::Describe),
        "/vm/nets" => {
            let net: NetConfig = parse(body)?;
            no_fd_numbers(&net.fds)?;
            Ok(ApiRequest::AddNet {
                net,
                fds: Vec::new(),
            })
        }
        "/vm/disks" => {
            // Its fds and backing_fds, if any, are positions among the
            // descriptors sent: the VMM checks them against those.
            let disk: DiskConfig = parse(body)?;
            Ok(ApiRequest::AddDisk {
                disk: Box::new(disk),
                fds: Vec::new(),
            })
        }
        "/metrics" => Ok(ApiRequest::Metrics),
        "/vm/state" => {
            let body: StateBody = parse(body)?;
            Ok(ApiRequest::SetState(match body.state {
                TargetState::Paused => VmState::Paused,
                TargetState::Running => VmState::Running,
            }))
        }
        _ => {
            let body: ShutdownBody = if body.iter().all(u8::is_ascii_whitespace) {
                ShutdownBody::default()
            } else {
                parse(body)?
            };
            let timeout_ms = body.timeout_ms.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_MS);
            if timeout_ms > MAX_SHUTDOWN_TIMEOUT_MS {
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    format!("timeout_ms: at most {MAX_SHUTDOWN_TIMEOUT_MS}, got {timeout_ms}"),
                )));
            }
            Ok(ApiRequest::Shutdown {
                timeout: Duration::from_millis(timeout_ms),
                signal: body.signal,
            })
        }
    }
}

/// A plug's descriptors come with the request; numbers in its body would
/// name the VMM's own files.
fn no_fd_numbers(fds: &[i32]) -> Result<(), Box<Reply>> {
    if fds.is_empty() {
        return Ok(());
    }
    Err(Box::new(error(
        StatusCode::BAD_REQUEST,
        "fds: descriptors come with the request (SCM_RIGHTS), not as numbers",
    )))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Box<Reply>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        ))
    })
}

fn render(reply: ApiReply) -> Reply {
    match reply {
        ApiReply::Info(info) => json(StatusCode::OK, &*info),
        ApiReply::Metrics(m) => json(StatusCode::OK, &m),
        ApiReply::Device(d) => json(StatusCode::CREATED, &d),
        ApiReply::NoContent => empty(StatusCode::NO_CONTENT),
        ApiReply::Accepted => empty(StatusCode::ACCEPTED),
        ApiReply::Error(status, message) => error(status, message),
    }
}

fn empty(status: StatusCode) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut r = Response::new(Full::new(Bytes::from(bytes)));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    #[derive(Serialize)]
    struct Body {
        error: String,
    }
    let body = serde_json::to_vec(&Body {
        error: message.into(),
    })
    .unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(r: Result<ApiRequest, Box<Reply>>) -> StatusCode {
        match r {
            Ok(req) => panic!("expected a refusal, got {req:?}"),
            Err(reply) => reply.status(),
        }
    }

    #[test]
    fn routes_valid_requests() {
        assert!(matches!(
            route(&Method::GET, "/vm", b""),
            Ok(ApiRequest::Describe)
        ));
        assert!(matches!(
            route(&Method::GET, "/metrics", b""),
            Ok(ApiRequest::Metrics)
        ));
        assert!(matches!(
            route(&Method::PUT, "/vm/state", br#"{"state":"paused"}"#),
            Ok(ApiRequest::SetState(VmState::Paused))
        ));
        match route(&Method::PUT, "/vm/actions/shutdown", b"") {
            Ok(ApiRequest::Shutdown { timeout, signal }) => {
                assert_eq!(timeout, Duration::from_millis(DEFAULT_SHUTDOWN_TIMEOUT_MS));
                assert_eq!(signal, ShutdownSignal::CtrlAltDel);
            }
            other => panic!("{other:?}"),
        }
        match route(
            &Method::PUT,
            "/vm/actions/shutdown",
            br#"{"timeout_ms": 250, "signal": "power_button"}"#,
        ) {
            Ok(ApiRequest::Shutdown { timeout, signal }) => {
                assert_eq!(timeout, Duration::from_millis(250));
                assert_eq!(signal, ShutdownSignal::PowerButton);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            status_of(route(
                &Method::PUT,
                "/vm/actions/shutdown",
                br#"{"signal": "reset"}"#
            )),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn routes_plugging_and_unplugging() {
        match route(
            &Method::POST,
            "/vm/nets",
            br#"{"mac": "02:00:00:00:00:01"}"#,
        ) {
            Ok(ApiRequest::AddNet { net, fds }) => {
                assert_eq!(net.mac.as_deref(), Some("02:00:00:00:00:01"));
                assert!(fds.is_empty(), "descriptors come from the connection");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            route(&Method::DELETE, "/vm/devices/net1", b""),
            Ok(ApiRequest::RemoveDevice(id)) if id == "net1"
        ));
        assert!(matches!(
            route(&Method::PUT, "/vm/devices/disk1/size", br#"{"bytes": 1048576}"#),
            Ok(ApiRequest::ResizeDisk { device, bytes }) if device == "disk1" && bytes == 1 << 20
        ));
        assert!(matches!(
            route(&Method::PUT, "/vm/devices/vol-1/files", br#"{"fds": [1], "backing_fds": [0]}"#),
            Ok(ApiRequest::ReplaceDiskFiles { device, files, fds })
                if device == "vol-1" && files.fds == [1] && files.backing_fds == [0] && fds.is_empty()
        ));
        for (method, path, body) in [
            (
                Method::PUT,
                "/vm/devices/disk1/size",
                &br#"{"bytes": -1}"#[..],
            ),
            (Method::PUT, "/vm/devices/disk1/size", br#"{"size": 1}"#),
            (Method::PUT, "/vm/devices/disk1/size", b""),
            (
                Method::PUT,
                "/vm/devices/disk1/files",
                br#"{"path": "/etc/shadow"}"#,
            ),
            (Method::POST, "/vm/nets", &br#"{"fds": [3]}"#[..]),
            (Method::POST, "/vm/disks", br#"{"size": 1}"#),
            (Method::POST, "/vm/nets", br#"{"colour": "red"}"#),
        ] {
            assert_eq!(
                status_of(route(&method, path, body)),
                StatusCode::BAD_REQUEST
            );
        }
        assert_eq!(
            status_of(route(&Method::PUT, "/vm/nets", b"{}")),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status_of(route(&Method::DELETE, "/vm/devices/a/b", b"")),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_of(route(&Method::POST, "/vm/devices/disk1/size", b"{}")),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn refuses_bad_requests_with_4xx() {
        assert_eq!(
            status_of(route(&Method::GET, "/nope", b"")),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_of(route(&Method::POST, "/vm", b"")),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status_of(route(&Method::GET, "/vm/state", b"")),
            StatusCode::METHOD_NOT_ALLOWED
        );
        for body in [
            &b"{"[..],
            br#"{"state":"sleeping"}"#,
            br#"{"state":"paused","extra":1}"#,
            br#"{}"#,
            b"\xff\xfe",
        ] {
            assert_eq!(
                status_of(route(&Method::PUT, "/vm/state", body)),
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            status_of(route(
                &Method::PUT,
                "/vm/actions/shutdown",
                br#"{"timeout_ms": -1}"#
            )),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(route(
                &Method::PUT,
                "/vm/actions/shutdown",
                br#"{"timeout_ms": 600001}"#
            )),
            StatusCode::BAD_REQUEST
        );
    }
}

#[cfg(test)]
mod plug_tests {
    use super::*;

    /// Plug requests with descriptors, one after another on fresh
    /// connections, each answered (a plug once hung until its client gave
    /// up).
    #[test]
    fn every_plug_request_with_descriptors_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let (to_vmm, events) = std::sync::mpsc::channel();
        let _server = bind(&socket).unwrap().serve(to_vmm).unwrap();
        std::thread::spawn(move || {
            for event in events {
                if let crate::vmm::VmmEvent::Api((ApiRequest::AddNet { fds, .. }, reply)) = event {
                    let _ = reply.send(ApiReply::Device(DeviceInfo {
                        id: format!("fds{}", fds.len()),
                        pci_slot: None,
                    }));
                }
            }
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let file = tempfile::tempfile().unwrap();
        for i in 0..200 {
            let fds = [std::os::fd::AsFd::as_fd(&file)];
            let answer = runtime.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    crate::api_client::request_with_fds(
                        &socket,
                        Method::POST,
                        "/vm/nets",
                        Some("{}"),
                        &fds,
                    ),
                )
                .await
            });
            let (status, body) = answer
                .unwrap_or_else(|_| panic!("request {i} not answered"))
                .unwrap();
            assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
            assert!(String::from_utf8_lossy(&body).contains("fds1"));
        }
    }
}
