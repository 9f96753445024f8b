//! Calls to the controller's internal API (heartbeats, image downloads,
//! snapshot uploads): one HTTP/1.1 connection per call, with this host's
//! token when it has one.

use hyper::body::{Body, Incoming};

use crate::config::Controller;

/// `http://HOST:PORT/PREFIX` as (`HOST:PORT`, `/PREFIX`).
pub fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (!authority.is_empty()).then_some((authority, path))
}

/// Sends one request to `path` under the controller's URL, with `headers`
/// besides the host's token; the answer's head, its body still to read.
pub async fn send<B>(
    controller: &Controller,
    method: hyper::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: B,
) -> Result<hyper::Response<Incoming>, String>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (authority, prefix) =
        split_url(&controller.url).ok_or_else(|| format!("bad URL {}", controller.url))?;
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("controller {authority}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("{prefix}{path}"))
        .header("host", authority);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(token) = &controller.token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req.body(body).map_err(|e| e.to_string())?;
    sender.send_request(req).await.map_err(|e| e.to_string())
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
