//! The image cache: images a spec names by id (`kernel_image`,
//! `initramfs_image`, `disk_images`) are fetched from the controller's internal
//! API once, into `state_dir/images/ID`, written to a temporary file and
//! renamed, so a cached image is always whole.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use tokio::io::AsyncWriteExt;

use crate::config::Controller;

const FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// Image ids are UUIDs (hex and dashes); nothing else reaches a path.
pub fn valid_image_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

pub struct ImageCache {
    dir: PathBuf,
    controller: Option<Controller>,
}

impl ImageCache {
    pub fn new(dir: PathBuf, controller: Option<Controller>) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(ImageCache { dir, controller })
    }

    /// The local file of image `id`, fetched first when not cached.
    pub async fn fetch(&self, id: &str) -> Result<PathBuf, String> {
        if !valid_image_id(id) {
            return Err(format!("image id {id:?} is not valid"));
        }
        let path = self.dir.join(id);
        if path.exists() {
            return Ok(path);
        }
        let Some(controller) = &self.controller else {
            return Err(format!(
                "image {id}: no controller_url configured to fetch images from"
            ));
        };
        let part = self.dir.join(format!("{id}.part-{}", std::process::id()));
        let result = tokio::time::timeout(FETCH_TIMEOUT, download(controller, id, &part))
            .await
            .map_err(|_| format!("image {id}: download took longer than {FETCH_TIMEOUT:?}"))
            .and_then(|r| r);
        match result {
            Ok(bytes) => {
                std::fs::rename(&part, &path).map_err(|e| format!("image {id}: {e}"))?;
                tracing::info!(image = id, bytes, "image cached");
                Ok(path)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                Err(e)
            }
        }
    }
}

async fn download(controller: &Controller, id: &str, dest: &Path) -> Result<u64, String> {
    let rest = controller
        .url
        .strip_prefix("http://")
        .ok_or("controller_url is not http://")?;
    let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("image {id}: controller {authority}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .uri(format!("{prefix}/internal/v1/images/{id}/raw"))
        .header("host", authority);
    if let Some(t) = &controller.token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != hyper::StatusCode::OK {
        return Err(format!(
            "image {id}: the controller answered {}",
            resp.status()
        ));
    }
    let mut body = resp.into_body();
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| e.to_string())?;
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("image {id}: {e}"))?;
        if let Some(data) = frame.data_ref() {
            file.write_all(data).await.map_err(|e| e.to_string())?;
            total += data.len() as u64;
        }
    }
    file.sync_all().await.map_err(|e| e.to_string())?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_image_id("6d68a36a-39b8-46d8-985f-ae4c5621c54b"));
        for bad in ["", "../etc", "a/b", "x", &"a".repeat(65)] {
            assert!(!valid_image_id(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn without_a_controller_nothing_is_fetched() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(dir.path().join("images"), None).unwrap();
        let e = cache.fetch("abcd").await.unwrap_err();
        assert!(e.contains("no controller_url"), "{e}");
        std::fs::write(dir.path().join("images/abcd"), b"cached").unwrap();
        assert_eq!(
            cache.fetch("abcd").await.unwrap(),
            dir.path().join("images/abcd")
        );
        assert!(cache.fetch("../x").await.is_err());
    }
}
