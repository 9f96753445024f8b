//! Calls to the controller's internal API, with this host's token: the
//! heartbeat, and fetching an image a volume is made from (which the
//! controller may redirect to the storage host holding it: [`follow`]).

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
    request(
        authority,
        &format!("{prefix}{path}"),
        Some(&config.token),
        method,
        headers,
        body,
    )
    .await
}

/// Follows a redirect the controller answered with: a GET of its
/// `Location` (an `http://` URL carrying its own authorization), without
/// this host's token, which is for the controller only.
pub async fn follow(
    redirect: &hyper::Response<Incoming>,
    headers: &[(&str, &str)],
) -> Result<hyper::Response<Incoming>, String> {
    let location = redirect
        .headers()
        .get(hyper::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("a redirect without a Location")?;
    let (authority, path) =
        split_url(location).ok_or_else(|| format!("a redirect to {location:?}"))?;
    request(
        authority,
        path,
        None,
        hyper::Method::GET,
        headers,
        Bytes::new(),
    )
    .await
}

async fn request(
    authority: &str,
    path_and_query: &str,
    token: Option<&str>,
    method: hyper::Method,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<hyper::Response<Incoming>, String> {
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
        .uri(path_and_query)
        .header("host", authority);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    sender.send_request(req).await.map_err(|e| e.to_string())
}
