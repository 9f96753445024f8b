//! Uploading a server snapshot: the copy of a root disk the instance's actor
//! took, streamed to the controller's internal API (as a sparse stream: only
//! its data, not its holes) as the data of the image made for it (`PUT /internal/v1/images/{id}/file`, with this host's
//! token; the controller takes it only for a snapshot of a server placed
//! here).

use std::path::Path;
use std::time::Duration;

use hostd_proto::sparse;
use http_body_util::BodyExt;
use hyper::body::Bytes;
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

/// Sends the file at `path` as image `image_id`'s data, as a sparse stream
/// (its holes are not sent); returns the data bytes sent.
pub async fn upload(controller: &Controller, image_id: &str, path: &Path) -> Result<u64, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let stream = tokio::task::spawn_blocking(move || sparse::SparseReader::new(file))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (len, data_bytes) = (stream.encoded_len(), stream.data_bytes());
    // Read ahead of the network a few chunks at most.
    let (chunks, reader) = sparse::spawn_reader(stream, CHUNK);
    let resp = crate::controller_client::send(
        controller,
        hyper::Method::PUT,
        &format!("/internal/v1/images/{image_id}/file"),
        &[("content-type", sparse::CONTENT_TYPE)],
        FileBody { chunks, len },
    )
    .await?;
    let status = resp.status();
    let body = tokio::time::timeout(ANSWER_TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| "the controller did not answer".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    // The controller's answer first: a refusal ends the upload early, and
    // says why better than the reader left waiting.
    if !status.is_success() {
        reader.abort();
        return Err(format!(
            "the controller answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    reader
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(data_bytes)
}
