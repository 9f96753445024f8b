//! Uploading a server snapshot: the copy of a root disk the instance's actor
//! took, streamed to the controller's internal API as the data of the image
//! made for it (`PUT /internal/v1/images/{id}/file`, with this host's
//! token; the controller takes it only for a snapshot of a server placed
//! here).

use std::path::Path;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::config::Controller;

/// The file's bytes as they are read, with its length announced
/// (`content-length`: the controller knows what is coming, and a body cut
/// short is an error, not a smaller image).
struct FileBody {
    chunks: mpsc::Receiver<Bytes>,
    len: u64,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.chunks
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len)
    }
}

/// How long the controller may take to answer once all is sent.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
const CHUNK: usize = 1 << 20;

/// Sends the file at `path` as image `image_id`'s data; returns its size.
pub async fn upload(controller: &Controller, image_id: &str, path: &Path) -> Result<u64, String> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    // Read ahead of the network a few chunks at most.
    let reader = tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = match file.read(&mut buf).await {
                Ok(0) => return Ok(sent),
                Ok(n) => n,
                Err(e) => return Err(e.to_string()),
            };
            buf.truncate(n);
            sent += n as u64;
            if tx.send(Bytes::from(buf)).await.is_err() {
                return Err("the controller stopped reading".to_owned());
            }
        }
    });
    let resp = crate::controller_client::send(
        controller,
        hyper::Method::PUT,
        &format!("/internal/v1/images/{image_id}/file"),
        "application/octet-stream",
        FileBody { chunks: rx, len },
    )
    .await?;
    let status = resp.status();
    let body = tokio::time::timeout(ANSWER_TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| "the controller did not answer".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    let sent = reader
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if !status.is_success() {
        return Err(format!(
            "the controller answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(sent)
}
