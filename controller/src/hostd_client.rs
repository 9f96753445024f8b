//! The controller's client for hostd's API (HTTP/1.1 over TCP, bearer token):
//! [`Hostd`] speaks the typed contract of `hostd_proto::instance`; no JSON is
//! built or picked apart by hand on this side.

use std::time::Duration;

use hostd_proto::instance::{Action, ImageInstanceSpec, InstanceStatus, Size};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::Method;

/// How long hostd may take to carry out an action (a start, a graceful
/// stop).
const SLOW_TIMEOUT: Duration = Duration::from_secs(120);
/// How long other calls may take.
pub const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HostdError {
    #[error("hostd at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("hostd answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("hostd's answer is not what the contract says: {0}")]
    BadAnswer(String),
}

impl HostdError {
    /// hostd has no such instance.
    pub fn is_not_found(&self) -> bool {
        matches!(self, HostdError::Refused { status: 404, .. })
    }

    /// hostd has an instance of that id already.
    pub fn is_conflict(&self) -> bool {
        matches!(self, HostdError::Refused { status: 409, .. })
    }

    /// hostd cannot do it now but soon may (the instance's VMM is
    /// restarting), or cannot be reached at all: worth trying again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HostdError::Unreachable { .. } | HostdError::Refused { status: 503, .. }
        )
    }
}

/// One host's hostd: where it listens and the token to call it with.
#[derive(Clone, Debug)]
pub struct Hostd {
    pub url: String,
    token: String,
}

impl Hostd {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Hostd {
            url: url.into(),
            token: token.into(),
        }
    }

    /// Creates the instance; hostd answers once it is recorded, and then
    /// fetches its images and starts it (BUILDING until it runs: see
    /// [`Hostd::get`]).
    /// (`start: false`: it stays SHUTOFF once prepared.)
    pub async fn create(
        &self,
        spec: &ImageInstanceSpec,
        start: bool,
    ) -> Result<InstanceStatus, HostdError> {
        let body = serde_json::to_value(spec).map_err(|e| HostdError::BadAnswer(e.to_string()))?;
        let path = format!("/instances?wait=false&start={start}");
        self.typed(Method::POST, &path, Some(&body), TIMEOUT).await
    }

    pub async fn get(&self, id: &str) -> Result<InstanceStatus, HostdError> {
        self.typed(Method::GET, &format!("/instances/{id}"), None, TIMEOUT)
            .await
    }

    /// The instance's VMM's own metrics (uptime, memory, exits per vCPU).
    pub async fn metrics(&self, id: &str) -> Result<serde_json::Value, HostdError> {
        self.typed(
            Method::GET,
            &format!("/instances/{id}/metrics"),
            None,
            TIMEOUT,
        )
        .await
    }

    pub async fn list(&self) -> Result<Vec<InstanceStatus>, HostdError> {
        self.typed(Method::GET, "/instances", None, TIMEOUT).await
    }

    /// Stops and removes the instance; one hostd does not have counts as
    /// removed.
    pub async fn remove(&self, id: &str) -> Result<(), HostdError> {
        match call_raw(
            &self.url,
            &self.token,
            Method::DELETE,
            &format!("/instances/{id}"),
            None,
            TIMEOUT,
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn act(&self, id: &str, action: Action) -> Result<InstanceStatus, HostdError> {
        let body = serde_json::to_value(action.body())
            .map_err(|e| HostdError::BadAnswer(e.to_string()))?;
        self.typed(
            Method::POST,
            &format!("/instances/{id}/actions/{}", action.name()),
            Some(&body),
            SLOW_TIMEOUT,
        )
        .await
    }

    /// Snapshots the instance's root disk into image `image_id`: answered
    /// once hostd has its copy; the upload to this controller follows.
    pub async fn snapshot(&self, id: &str, image_id: &str) -> Result<(), HostdError> {
        let body = serde_json::json!({ "image_id": image_id });
        call_raw(
            &self.url,
            &self.token,
            Method::POST,
            &format!("/instances/{id}/snapshot"),
            Some(&body),
            SLOW_TIMEOUT,
        )
        .await
        .map(|_| ())
    }

    /// Resizes the stopped instance; the old size and root disk are kept
    /// until [`Hostd::end_resize`].
    pub async fn resize(&self, id: &str, to: Size) -> Result<InstanceStatus, HostdError> {
        let body = serde_json::to_value(to).map_err(|e| HostdError::BadAnswer(e.to_string()))?;
        self.typed(
            Method::POST,
            &format!("/instances/{id}/resize"),
            Some(&body),
            SLOW_TIMEOUT,
        )
        .await
    }

    /// Confirms (`keep`) or reverts the instance's resize.
    /// Plugs a NIC into the instance (into its guest, when running).
    pub async fn add_nic(
        &self,
        id: &str,
        nic: &hostd_proto::instance::PortNic,
    ) -> Result<InstanceStatus, HostdError> {
        let body = serde_json::to_value(nic).map_err(|e| HostdError::BadAnswer(e.to_string()))?;
        self.typed(
            Method::POST,
            &format!("/instances/{id}/nics"),
            Some(&body),
            // A starved host may take a minute to plug (see the VMM's
            // PLUG_REPLY_TIMEOUT).
            SLOW_TIMEOUT,
        )
        .await
    }

    /// Attaches a disk (a volume's files, `dev` naming the device): plugged
    /// into the running guest, and in every later start. With `backing`
    /// (read-only layers, then a raw base) `path` is a qcow2 overlay.
    pub async fn add_disk(
        &self,
        id: &str,
        dev: &str,
        connection: &storaged_proto::Connection,
        serial: &str,
    ) -> Result<InstanceStatus, HostdError> {
        let mut body = match &connection.nbd {
            // On another host: hostd connects the kernel's NBD client.
            Some(nbd) => serde_json::json!({"id": dev, "serial": serial, "path": "",
                "nbd": {"address": nbd.address, "export": nbd.export}}),
            None => serde_json::json!({"id": dev, "path": connection.path, "serial": serial}),
        };
        if let Some((base, layers)) = connection.backing.split_last() {
            body["base"] = serde_json::json!(base);
            body["layers"] = serde_json::json!(layers);
        }
        self.typed(
            Method::POST,
            &format!("/instances/{id}/disks"),
            Some(&body),
            SLOW_TIMEOUT,
        )
        .await
    }

    /// Detaches the disk `dev`; hostd answers once the guest has let go.
    pub async fn remove_disk(&self, id: &str, dev: &str) -> Result<InstanceStatus, HostdError> {
        self.typed(
            Method::DELETE,
            &format!("/instances/{id}/disks/{dev}"),
            None,
            SLOW_TIMEOUT,
        )
        .await
    }

    /// Moves the disk `dev` (an attached volume or the root volume) onto
    /// the volume's files as `connection` gives them now: its volume was
    /// snapshotted in use, and its old files are the snapshot's.
    pub async fn move_disk(
        &self,
        id: &str,
        dev: &str,
        connection: &storaged_proto::Connection,
    ) -> Result<InstanceStatus, HostdError> {
        let mut body = serde_json::json!({ "path": connection.path });
        if let Some((base, layers)) = connection.backing.split_last() {
            body["base"] = serde_json::json!(base);
            body["layers"] = serde_json::json!(layers);
        }
        self.typed(
            Method::PUT,
            &format!("/instances/{id}/disks/{dev}/files"),
            Some(&body),
            SLOW_TIMEOUT,
        )
        .await
    }

    /// Grows the disk `dev` (an attached volume or the root volume) to
    /// `bytes`: in the running guest, which is told, or in its file.
    pub async fn grow_disk(
        &self,
        id: &str,
        dev: &str,
        bytes: u64,
    ) -> Result<InstanceStatus, HostdError> {
        self.typed(
            Method::PUT,
            &format!("/instances/{id}/disks/{dev}/size"),
            Some(&serde_json::json!({ "bytes": bytes })),
            SLOW_TIMEOUT,
        )
        .await
    }

    /// Unplugs the instance's NIC on `tap`; hostd answers once the guest
    /// has let go of it (it waits up to a minute).
    pub async fn remove_nic(&self, id: &str, tap: &str) -> Result<InstanceStatus, HostdError> {
        self.typed(
            Method::DELETE,
            &format!("/instances/{id}/nics/{tap}"),
            None,
            SLOW_TIMEOUT,
        )
        .await
    }

    pub async fn end_resize(&self, id: &str, keep: bool) -> Result<InstanceStatus, HostdError> {
        let end = if keep { "confirm" } else { "revert" };
        self.typed(
            Method::POST,
            &format!("/instances/{id}/resize/{end}"),
            None,
            SLOW_TIMEOUT,
        )
        .await
    }

    /// Types `bytes` (at most 4 KiB) on the instance's serial console.
    pub async fn console_input(&self, id: &str, bytes: &[u8]) -> Result<(), HostdError> {
        let path = format!("/instances/{id}/console");
        let sent = send(
            &self.url,
            &self.token,
            Method::POST,
            &path,
            Bytes::copy_from_slice(bytes),
        );
        tokio::time::timeout(TIMEOUT, sent)
            .await
            .map_err(|_| unreachable(&self.url, format!("no answer within {TIMEOUT:?}")))?
            .map(|_| ())
    }

    /// The instance's console from now on, as hostd streams it (until the
    /// body is dropped).
    pub async fn console_stream(&self, id: &str) -> Result<Incoming, HostdError> {
        let path = format!("/instances/{id}/console?tail=0&follow=true");
        let sent = send(&self.url, &self.token, Method::GET, &path, Bytes::new());
        let resp = tokio::time::timeout(TIMEOUT, sent)
            .await
            .map_err(|_| unreachable(&self.url, format!("no answer within {TIMEOUT:?}")))??;
        Ok(resp.into_body())
    }

    /// The last `lines` lines of the instance's console.
    pub async fn console(&self, id: &str, lines: u32) -> Result<Vec<u8>, HostdError> {
        call_raw(
            &self.url,
            &self.token,
            Method::GET,
            &format!("/instances/{id}/console?tail={lines}"),
            None,
            TIMEOUT,
        )
        .await
    }

    async fn typed<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<T, HostdError> {
        let bytes = call_raw(&self.url, &self.token, method, path, body, timeout).await?;
        serde_json::from_slice(&bytes).map_err(|e| HostdError::BadAnswer(format!("{path}: {e}")))
    }
}

/// One request to the hostd at `base_url` (`http://HOST:PORT`): the body of
/// a 2xx answer.
pub(crate) async fn call_raw(
    base_url: &str,
    token: &str,
    method: hyper::Method,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Vec<u8>, HostdError> {
    let bytes = body
        .map(|b| serde_json::to_vec(b).unwrap_or_default())
        .unwrap_or_default();
    let work = async {
        let resp = send(base_url, token, method, path, Bytes::from(bytes)).await?;
        Ok(read_body(base_url, resp).await?.to_vec())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| unreachable(base_url, format!("no answer within {timeout:?}")))?
}

fn unreachable(base_url: &str, message: String) -> HostdError {
    HostdError::Unreachable {
        url: base_url.to_owned(),
        message,
    }
}

/// Sends one request; returns a 2xx answer with its body still to read, or
/// the error another answer carries.
async fn send(
    base_url: &str,
    token: &str,
    method: hyper::Method,
    path: &str,
    body: Bytes,
) -> Result<hyper::Response<Incoming>, HostdError> {
    let json = "application/json";
    send_body(base_url, token, method, path, json, Full::new(body)).await
}

/// [`send`] with a body of any kind (streamed image data).
pub(crate) async fn send_body<B>(
    base_url: &str,
    token: &str,
    method: hyper::Method,
    path: &str,
    content_type: &str,
    body: B,
) -> Result<hyper::Response<Incoming>, HostdError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let authority = base_url
        .strip_prefix("http://")
        .map(|a| a.trim_end_matches('/'))
        .ok_or_else(|| unreachable(base_url, "not an http:// URL".into()))?;
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| unreachable(base_url, e.to_string()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(base_url, e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type)
        .body(body)
        .map_err(|e| unreachable(base_url, e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(base_url, e.to_string()))?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let body = read_body(base_url, resp).await?;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let message = json["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(HostdError::Refused { status, message })
}

pub(crate) async fn read_body(
    base_url: &str,
    resp: hyper::Response<Incoming>,
) -> Result<Bytes, HostdError> {
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(base_url, e.to_string()))?
        .to_bytes())
}
