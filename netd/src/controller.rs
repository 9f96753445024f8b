//! netd's calls to the controller, as its host: `PUT
//! /internal/v1/hosts/{host}/network` with its report, answered by the
//! host's intended networks, and a guest's metadata for the metadata service.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use netd_proto::{GuestMetadata, HostNetworks, Report};

use crate::config::Config;

/// How long one call may take, connection to last byte.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer taken (about 10,000 ports).
const MAX_ANSWER: usize = 8 << 20;

/// `http://HOST:PORT/PREFIX` as (`HOST:PORT`, `/PREFIX`).
pub fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (!authority.is_empty()).then_some((authority, path))
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("controller {0}: {1}")]
    Transport(String, String),
    #[error("controller answered {0}: {1}")]
    Refused(u16, String),
    #[error("controller's answer: {0}")]
    Answer(String),
    #[error("controller did not answer within {0:?}")]
    Timeout(Duration),
}

/// Reports and fetches, once.
pub async fn sync(config: &Config, report: &Report) -> Result<HostNetworks, SyncError> {
    tokio::time::timeout(CALL_TIMEOUT, call(config, report))
        .await
        .unwrap_or(Err(SyncError::Timeout(CALL_TIMEOUT)))
}

/// What the guest behind `port` (bound to this host) is told.
pub async fn guest_metadata(config: &Config, port: &str) -> Result<GuestMetadata, SyncError> {
    let path = format!(
        "/internal/v1/hosts/{}/ports/{port}/metadata",
        config.host_id
    );
    tokio::time::timeout(
        CALL_TIMEOUT,
        request(config, hyper::Method::GET, &path, Vec::new()),
    )
    .await
    .unwrap_or(Err(SyncError::Timeout(CALL_TIMEOUT)))
}

async fn call(config: &Config, report: &Report) -> Result<HostNetworks, SyncError> {
    let body = serde_json::to_vec(report).map_err(|e| SyncError::Answer(e.to_string()))?;
    let path = format!("/internal/v1/hosts/{}/network", config.host_id);
    request(config, hyper::Method::PUT, &path, body).await
}

/// One call to the controller as this host, its JSON answer read.
async fn request<T: serde::de::DeserializeOwned>(
    config: &Config,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<T, SyncError> {
    let (authority, prefix) = split_url(&config.controller_url)
        .ok_or_else(|| SyncError::Transport(config.controller_url.clone(), "bad URL".into()))?;
    let transport =
        |e: &dyn std::fmt::Display| SyncError::Transport(authority.into(), e.to_string());
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| transport(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| transport(&e))?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("{prefix}{path}"))
        .header("host", authority)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", config.token))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| transport(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| transport(&e))?;
    let status = resp.status().as_u16();
    let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| transport(&e))?
        .to_bytes();
    if status != 200 {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned();
        return Err(SyncError::Refused(status, text));
    }
    serde_json::from_slice(&bytes).map_err(|e| SyncError::Answer(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_prefix() {
        assert_eq!(split_url("http://c:8774"), Some(("c:8774", "")));
        assert_eq!(split_url("http://c:8774/virga"), Some(("c:8774", "/virga")));
        assert_eq!(split_url("https://c"), None);
        assert_eq!(split_url("http:///x"), None);
    }
}
