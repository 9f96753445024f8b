//! Fetching an image a volume is made from. An image this storage host
//! holds is copied on its disk (`virga_imagefile::clone`: blocks shared
//! where the filesystem can, else its data copied in the kernel). Any other
//! is the controller's raw image (`GET /internal/v1/images/{id}/raw`,
//! redirected to the storage host holding it) as a sparse stream into a
//! file. Either way the holes stay holes.

use std::path::Path;

use bytes::Bytes;
use hostd_proto::sparse;
use virga_imagefile::download::{self, Accept, STALL_TIMEOUT};

use super::{ImageError, ImageStore};
use crate::config::Config;

/// Writes image `id` into `dest` (made new); its size in bytes.
pub async fn fetch(
    config: &Config,
    images: &ImageStore,
    id: &str,
    dest: &Path,
    max_size: u64,
) -> Result<u64, String> {
    match images.open_raw(id) {
        Ok(source) => {
            let (id, dest) = (id.to_owned(), dest.to_owned());
            tokio::task::spawn_blocking(move || copy_held(source, &id, &dest, max_size))
                .await
                .map_err(|e| format!("copying image: {e}"))?
        }
        Err(ImageError::NotFound(_)) => from_controller(config, id, dest, max_size).await,
        Err(e) => Err(format!("image {id}: {e}")),
    }
}

/// Copies the raw image this host holds (`source`) into `dest`.
fn copy_held(source: std::fs::File, id: &str, dest: &Path, max_size: u64) -> Result<u64, String> {
    let len = source
        .metadata()
        .map_err(|e| format!("image {id}: {e}"))?
        .len();
    if len > max_size {
        return Err(format!(
            "image {id} is {len} bytes, more than the {max_size} the volume holds"
        ));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    let cloned = virga_imagefile::clone::clone_file(&source, &file, len)
        .map_err(|e| format!("copying image {id} to {}: {e}", dest.display()))?;
    tracing::debug!(image = id, ?cloned, "image copied on this storage host");
    Ok(len)
}

async fn from_controller(
    config: &Config,
    id: &str,
    dest: &Path,
    max_size: u64,
) -> Result<u64, String> {
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
