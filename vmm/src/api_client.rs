//! A client for the control API on its Unix socket, for `vmmctl` and hostd.

use std::os::fd::{AsFd, BorrowedFd};
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
    request_with_fds(socket, method, path, body, &[]).await
}

/// As [`request`], sending `fds` along (the way `POST /vm/nets` takes a
/// NIC's TAP queues): with an empty line ahead of the request, which the
/// server's reads take them from and HTTP lets it skip.
pub async fn request_with_fds(
    socket: &Path,
    method: hyper::Method,
    path: &str,
    body: Option<&str>,
    fds: &[BorrowedFd<'_>],
) -> Result<(u16, Vec<u8>), ClientError> {
    let connect_error = |source| ClientError::Connect {
        socket: socket.display().to_string(),
        source,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(connect_error)?;
    if !fds.is_empty() {
        send_fds(&stream, fds).await.map_err(connect_error)?;
    }
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

async fn send_fds(stream: &tokio::net::UnixStream, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space =
        vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !ancillary.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other(
            "too many descriptors for one message",
        ));
    }
    loop {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::net::sendmsg(
                stream.as_fd(),
                &[std::io::IoSlice::new(b"\r\n")],
                &mut ancillary,
                SendFlags::NOSIGNAL,
            )
            .map_err(std::io::Error::from)
        }) {
            // Two bytes go in one piece on a fresh connection.
            Ok(2) => return Ok(()),
            Ok(n) => return Err(std::io::Error::other(format!("sent {n} of 2 bytes"))),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
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
