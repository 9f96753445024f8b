//! A client for the control API on its Unix socket, for `vmmctl` and hostd.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{socket}: {source}")]
    Connect {
        socket: String,
        source: std::io::Error,
    },
    #[error("control API: {0}")]
    Http(String),
    #[error("control API: no answer within {0:?}")]
    Timeout(Duration),
}

/// One request; returns the status code and the body.
pub async fn request(
    socket: &Path,
    method: hyper::Method,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, Vec<u8>), ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            socket: socket.display().to_string(),
            source,
        })?;
    let http = |e: hyper::Error| ClientError::Http(e.to_string());
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(http)?;
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(http)?
        .to_bytes();
    Ok((status, body.to_vec()))
}

/// As [`request`], giving up after `timeout`.
pub async fn request_within(
    timeout: Duration,
    socket: &Path,
    method: hyper::Method,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, Vec<u8>), ClientError> {
    tokio::time::timeout(timeout, request(socket, method, path, body))
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}
