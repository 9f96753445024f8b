//! Where an image's bytes are: on a storage host (the live one with the most
//! free space when the upload starts), or in the controller's own image
//! directory when no storage host is registered and alive. Uploads stream
//! through to storaged; hosts fetch what they boot from the storage host
//! directly (the controller answers them with a redirect carrying a
//! ticket), so those bytes never pass through here.

use hyper::body::Incoming;
use virga_imagefile::{Encoding, UploadError};

use super::service::ImageError;
use super::Image;
use crate::app::App;
use crate::identity::now;
use crate::storaged_client::{StorageError, Storaged};

/// How long a redirect's ticket lets a host start fetching an image.
const TICKET_SECS: u64 = 300;

/// What an upload stored.
pub struct Stored {
    pub size: u64,
    pub md5: String,
    pub sha512: String,
    pub virtual_size: u64,
    /// The storage host holding it; None for the controller's directory.
    pub location: Option<String>,
}

/// An image's bytes as uploaded, opened for a download.
pub enum Opened {
    Local(tokio::fs::File),
    /// The storage host's answer, its body still to read.
    Remote(hyper::Response<Incoming>),
}

fn storage_error(e: StorageError) -> ImageError {
    match e {
        StorageError::Refused(413, m) => ImageError::TooLarge(m),
        StorageError::Refused(400, m) => ImageError::BadRequest(m),
        e => {
            tracing::warn!("image data on a storage host: {e}");
            ImageError::Unavailable(format!("the image store is unavailable: {e}"))
        }
    }
}

/// The client's fault (bad or too much data) or ours (the disk, a tool).
fn upload_error(e: UploadError) -> ImageError {
    match e {
        UploadError::TooLarge(_) => ImageError::TooLarge(e.to_string()),
        UploadError::Io(_) => {
            tracing::error!("storing an image: {e}");
            ImageError::Unavailable(e.to_string())
        }
        UploadError::Body(_) | UploadError::Format(_) => ImageError::BadRequest(e.to_string()),
    }
}

/// The storaged of storage host `host_id`, and where other hosts reach it.
async fn storaged(app: &App, host_id: &str) -> Result<(Storaged, String), ImageError> {
    let host = app
        .volumes
        .store
        .storage_host(host_id)
        .await?
        .ok_or_else(|| {
            ImageError::Unavailable(format!("storage host {host_id} is not registered"))
        })?;
    let storaged = Storaged::new(&host.url, app.hostd_token(host_id));
    Ok((storaged, host.peer_url.unwrap_or(host.url)))
}

/// Stores `body` as `image`'s data.
pub async fn store(
    app: &App,
    image: &Image,
    body: Incoming,
    encoding: Encoding,
) -> Result<Stored, ImageError> {
    let max = app.config.max_image_bytes;
    let disk_format = image.disk_format.as_deref().unwrap_or_default();
    let host = app
        .volumes
        .live_hosts(app)
        .await
        .map_err(|e| ImageError::Unavailable(e.to_string()))?
        .into_iter()
        .max_by_key(|h| h.free_bytes);
    if let Some(host) = host {
        let storaged = Storaged::new(&host.url, app.hostd_token(&host.host_id));
        let sparse = encoding == Encoding::Sparse;
        let stored = storaged
            .put_image(&image.id, disk_format, max, sparse, body)
            .await
            .map_err(storage_error)?;
        return Ok(Stored {
            size: stored.size,
            md5: stored.md5,
            sha512: stored.sha512,
            virtual_size: stored.virtual_size,
            location: Some(host.host_id),
        });
    }
    let dest = app.images.data_path(&image.id);
    let stored = virga_imagefile::store(body, &dest, max, encoding)
        .await
        .map_err(upload_error)?;
    let virtual_size = if disk_format == "qcow2" {
        match virga_imagefile::qcow2_to_raw(&dest, &app.images.raw_path(image)).await {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&dest);
                return Err(upload_error(e));
            }
        }
    } else {
        stored.size
    };
    Ok(Stored {
        size: stored.size,
        md5: stored.md5_hex,
        sha512: stored.sha512_hex,
        virtual_size,
        location: None,
    })
}

/// Opens an image's bytes as uploaded.
pub async fn open(app: &App, image: &Image) -> Result<Opened, ImageError> {
    if let Some(host) = &image.location {
        let resp = storaged(app, host)
            .await?
            .0
            .image_file(&image.id)
            .await
            .map_err(storage_error)?;
        return Ok(Opened::Remote(resp));
    }
    let path = app.images.data_path(&image.id);
    tokio::fs::File::open(&path)
        .await
        .map(Opened::Local)
        .map_err(|e| {
            tracing::error!(image = image.id, "opening {}: {e}", path.display());
            ImageError::Unavailable("the image data is unavailable".into())
        })
}

/// Where a host fetches the raw disk of an image a storage host holds (a
/// URL with a ticket); None for one in the controller's directory.
pub async fn raw_redirect(app: &App, image: &Image) -> Result<Option<String>, ImageError> {
    match &image.location {
        Some(host) => {
            let (storaged, peer_url) = storaged(app, host).await?;
            let now = u64::try_from(now()).unwrap_or_default();
            let url = storaged.image_ticket_url(&peer_url, &image.id, now, TICKET_SECS);
            Ok(Some(url))
        }
        None => Ok(None),
    }
}

/// Removes an image's bytes wherever they are. A storage host that cannot
/// be reached keeps them (logged): the image record goes regardless.
pub async fn remove(app: &App, image: &Image) {
    match &image.location {
        Some(host) => {
            let removed = match storaged(app, host).await {
                Ok((s, _)) => s.delete_image(&image.id).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = removed {
                tracing::warn!(
                    image = image.id,
                    host,
                    "image data left on the storage host: {e}"
                );
            }
        }
        None => app.images.remove_local(&image.id),
    }
}
