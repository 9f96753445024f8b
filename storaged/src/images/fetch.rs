//! Fetching an image a volume is made from: the controller's raw image
//! (`GET /internal/v1/images/{id}/raw`, redirected to the storage host
//! holding it, which may be this one) as a sparse stream (its data, not its
//! holes) into a file whose holes stay holes. A download may take as long
//! as it needs, but one that stalls ends.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use hostd_proto::sparse;
use http_body_util::{BodyExt, Limited};

use crate::config::Config;

/// How long a download may go without receiving a byte.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes image `id` into `dest` (made new); its size in bytes.
pub async fn fetch(config: &Config, id: &str, dest: &Path, max_size: u64) -> Result<u64, String> {
    let path = format!("/internal/v1/images/{id}/raw");
    let request = crate::controller::send(
        config,
        hyper::Method::GET,
        &path,
        &[("accept", sparse::CONTENT_TYPE)],
        Bytes::new(),
    );
    let mut resp = tokio::time::timeout(STALL_TIMEOUT, request)
        .await
        .map_err(|_| {
            format!("image {id}: the controller did not answer within {STALL_TIMEOUT:?}")
        })??;
    if resp.status() == hyper::StatusCode::TEMPORARY_REDIRECT {
        let request = crate::controller::follow(&resp, &[("accept", sparse::CONTENT_TYPE)]);
        resp = tokio::time::timeout(STALL_TIMEOUT, request)
            .await
            .map_err(|_| {
                format!("image {id}: its storage host did not answer within {STALL_TIMEOUT:?}")
            })?
            .map_err(|e| format!("image {id}: {e}"))?;
    }
    let status = resp.status();
    if status != hyper::StatusCode::OK {
        let text = Limited::new(resp.into_body(), 4096)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(format!(
            "image {id}: fetching it was answered {status}: {text}"
        ));
    }
    let sparse_stream = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(sparse::is_media_type);
    if !sparse_stream {
        return Err(format!("image {id}: no sparse stream came"));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    let mut writer = Some(sparse::FileWriter::new(file, max_size));
    let mut body = resp.into_body();
    loop {
        let frame = match tokio::time::timeout(STALL_TIMEOUT, body.frame()).await {
            Ok(Some(frame)) => frame.map_err(|e| format!("image {id}: {e}"))?,
            Ok(None) => break,
            Err(_) => {
                return Err(format!(
                    "image {id}: the download stalled (nothing for {STALL_TIMEOUT:?})"
                ))
            }
        };
        if let Ok(data) = frame.into_data() {
            // File writes block: off the async threads.
            let mut w = writer.take().ok_or("the writer failed before")?;
            writer = Some(
                tokio::task::spawn_blocking(move || w.push(data).map(|()| w))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("image {id}: {e}"))?,
            );
        }
    }
    let w = writer.ok_or("the writer failed before")?;
    tokio::task::spawn_blocking(move || w.finish())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("image {id}: {e}"))
}
