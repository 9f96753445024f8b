//! The controller's client for hostd's API (HTTP/1.1 over TCP, bearer token):
//! [`Hostd`] speaks the typed contract of `hostd_proto::instance`; no JSON is
//! built or picked apart by hand on this side.

use std::time::Duration;

use hostd_proto::instance::{Action, ImageInstanceSpec, InstanceStatus};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Method;

/// How long hostd may take to create (and boot to running) an instance, or
/// to carry out an action.
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

    /// Creates and starts the instance (its images fetched first).
    pub async fn create(&self, spec: &ImageInstanceSpec) -> Result<InstanceStatus, HostdError> {
        let body = serde_json::to_value(spec).map_err(|e| HostdError::BadAnswer(e.to_string()))?;
        self.typed(Method::POST, "/instances", Some(&body), SLOW_TIMEOUT)
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
async fn call_raw(
    base_url: &str,
    token: &str,
    method: hyper::Method,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Vec<u8>, HostdError> {
    let unreachable = |m: String| HostdError::Unreachable {
        url: base_url.to_owned(),
        message: m,
    };
    let authority = base_url
        .strip_prefix("http://")
        .map(|a| a.trim_end_matches('/'))
        .ok_or_else(|| unreachable("not an http:// URL".into()))?;
    let work = async {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", authority)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let json: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        if (200..300).contains(&status) {
            Ok(body.to_vec())
        } else {
            let message = json["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            Err(HostdError::Refused { status, message })
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
}
