//! The controller's client for hostd's API (HTTP/1.1 over TCP, bearer token).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum HostdError {
    #[error("hostd at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("hostd answered {status}: {message}")]
    Refused { status: u16, message: String },
}

/// One request to the hostd at `base_url` (`http://HOST:PORT`); the body of a
/// 2xx answer, parsed as JSON (null when it is not JSON).
pub async fn call(
    base_url: &str,
    token: &str,
    method: hyper::Method,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<serde_json::Value, HostdError> {
    let bytes = call_raw(base_url, token, method, path, body, timeout).await?;
    Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// As [`call`], returning the body's bytes.
pub async fn call_raw(
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
