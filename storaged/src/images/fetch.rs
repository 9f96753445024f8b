//! Fetching an image a volume is made from: the controller's raw image
//! (`GET /internal/v1/images/{id}/raw`, redirected to the storage host
//! holding it, which may be this one) as a sparse stream into a file whose
//! holes stay holes (`virga_imagefile::download`).

use std::path::Path;

use bytes::Bytes;
use hostd_proto::sparse;
use virga_imagefile::download::{self, Accept, STALL_TIMEOUT};

use crate::config::Config;

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
    let resp = tokio::time::timeout(STALL_TIMEOUT, request)
        .await
        .map_err(|_| {
            format!("image {id}: the controller did not answer within {STALL_TIMEOUT:?}")
        })??;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    download::receive(resp, file, max_size, Accept::Sparse)
        .await
        .map_err(|e| format!("image {id}: {e}"))
}
