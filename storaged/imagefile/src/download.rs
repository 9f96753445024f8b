//! Fetching an image into a file, for hosts (hostd's image cache) and
//! storage hosts (a volume made from an image): the controller's answer to
//! `GET /internal/v1/images/{id}/raw`, or, when it redirects (the image is
//! on a storage host), that storage host's answer, fetched without the
//! asker's token (the redirect carries its own ticket). The body is a sparse
//! stream (or plain bytes from a controller that predates them) written so
//! that holes stay holes. A download may take as long as it needs, but one
//! that stalls ends.

use std::time::Duration;

use bytes::Bytes;
use hostd_proto::sparse;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;

/// How long a download may go without receiving a byte.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{0}")]
    Request(String),
    #[error("fetching it was answered {status}: {text}")]
    Refused { status: u16, text: String },
    #[error("no sparse stream came")]
    NotSparse,
    #[error("the download stalled (nothing for {0:?})")]
    Stalled(Duration),
    #[error("{0}")]
    Write(#[from] std::io::Error),
}

/// Whether only a sparse stream will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    Sparse,
    /// A sparse stream, or plain bytes (older controllers).
    Either,
}

/// Writes the image `first` (the controller's answer) carries, or the
/// answer where it redirects, into `file`; its size in bytes, the file
/// synced. The data may describe a disk of at most `max_size` bytes.
pub async fn receive(
    first: hyper::Response<Incoming>,
    file: std::fs::File,
    max_size: u64,
    accept: Accept,
) -> Result<u64, DownloadError> {
    let resp = match first.status() {
        hyper::StatusCode::TEMPORARY_REDIRECT => follow(&first).await?,
        _ => first,
    };
    let status = resp.status();
    if status != hyper::StatusCode::OK {
        let text = Limited::new(resp.into_body(), 4096)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(DownloadError::Refused {
            status: status.as_u16(),
            text,
        });
    }
    let is_sparse = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(sparse::is_media_type);
    let mut sink = match (is_sparse, accept) {
        (true, _) => Sink::Sparse(sparse::FileWriter::new(file, max_size)),
        (false, Accept::Either) => Sink::Plain(sparse::HoleWriter::new(file)),
        (false, Accept::Sparse) => return Err(DownloadError::NotSparse),
    };
    let mut body = resp.into_body();
    loop {
        let frame = match tokio::time::timeout(STALL_TIMEOUT, body.frame()).await {
            Ok(Some(frame)) => frame.map_err(|e| DownloadError::Request(e.to_string()))?,
            Ok(None) => break,
            Err(_) => return Err(DownloadError::Stalled(STALL_TIMEOUT)),
        };
        if let Ok(data) = frame.into_data() {
            // File writes block: off the async threads.
            sink = blocking(move || sink.push(data).map(|()| sink)).await?;
        }
    }
    blocking(move || sink.finish()).await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, DownloadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DownloadError::Request(e.to_string()))?
        .map_err(DownloadError::Write)
}

/// Where a download goes: plain bytes through a writer that leaves holes
/// for zero blocks, or a sparse stream decoded (its holes stay holes).
enum Sink {
    Plain(sparse::HoleWriter),
    Sparse(sparse::FileWriter),
}

impl Sink {
    fn push(&mut self, data: Bytes) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.push(&data),
            Sink::Sparse(w) => w.push(data),
        }
    }

    fn finish(self) -> std::io::Result<u64> {
        match self {
            Sink::Plain(w) => w.finish(),
            Sink::Sparse(w) => w.finish(),
        }
    }
}

/// A GET of a redirect's `Location` (an `http://` URL), asking for a sparse
/// stream, with no credentials but what the URL carries.
async fn follow(
    redirect: &hyper::Response<Incoming>,
) -> Result<hyper::Response<Incoming>, DownloadError> {
    let location = redirect
        .headers()
        .get(hyper::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| DownloadError::Request("a redirect without a Location".into()))?;
    let bad = || DownloadError::Request(format!("a redirect to {location:?}"));
    let rest = location.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = rest.split_at(rest.find('/').ok_or_else(bad)?);
    let request = async {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, sparse::CONTENT_TYPE)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender.send_request(req).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(STALL_TIMEOUT, request)
        .await
        .map_err(|_| {
            DownloadError::Request(format!(
                "{authority} did not answer within {STALL_TIMEOUT:?}"
            ))
        })?
        .map_err(DownloadError::Request)
}
