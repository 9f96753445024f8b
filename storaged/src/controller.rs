//! Calls to the controller's internal API, with this host's token: the
//! heartbeat, and fetching an image a volume is made from.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;

use crate::config::{split_url, Config};

/// Sends one request to the controller; its answer, whatever the status,
/// with the body still to read.
pub async fn send(
    config: &Config,
    method: hyper::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<hyper::Response<Incoming>, String> {
    let (authority, prefix) =
        split_url(&config.controller_url).ok_or("the controller URL is not http://")?;
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("{prefix}{path}"))
        .header("host", authority)
        .header("authorization", format!("Bearer {}", config.token));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    sender.send_request(req).await.map_err(|e| e.to_string())
}
