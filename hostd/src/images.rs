//! The image cache: images a spec names by id (`kernel_image`,
//! `initramfs_image`, `root_image`, `disk_images`) are fetched from the
//! controller's internal API once, into `state_dir/images/ID`, written to a
//! temporary file and renamed, so a cached image is always whole.
//!
//! Instances of one image that is not cached yet share one download (the
//! others wait for it). A download may take as long as it needs, but one
//! that stalls ends; one abandoned (its instance deleted meanwhile) leaves
//! no temporary file behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use tokio::io::AsyncWriteExt;

use crate::config::Controller;

/// How long a download may go without receiving a byte.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Image ids are UUIDs (hex and dashes); nothing else reaches a path.
pub fn valid_image_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

pub struct ImageCache {
    dir: PathBuf,
    controller: Option<Controller>,
    /// One lock per image being fetched: its download is done once.
    fetching: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Makes temporary file names unique within this hostd.
    downloads: AtomicU64,
}

/// A temporary download, removed unless it was renamed into place.
struct Part(PathBuf);

impl Drop for Part {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl ImageCache {
    pub fn new(dir: PathBuf, controller: Option<Controller>) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        // Downloads a killed hostd left.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().contains(".part-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ImageCache {
            dir,
            controller,
            fetching: Mutex::default(),
            downloads: AtomicU64::new(0),
        })
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
        let lock = self
            .fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone();
        let result = async {
            let _one_download = lock.lock().await;
            if path.exists() {
                return Ok(path.clone()); // fetched while this one waited
            }
            let n = self.downloads.fetch_add(1, Ordering::Relaxed);
            let part = Part(
                self.dir
                    .join(format!("{id}.part-{}-{n}", std::process::id())),
            );
            let started = std::time::Instant::now();
            let bytes = download(controller, id, &part.0).await?;
            std::fs::rename(&part.0, &path).map_err(|e| format!("image {id}: {e}"))?;
            tracing::info!(image = id, bytes, took = ?started.elapsed(), "image cached");
            Ok(path.clone())
        }
        .await;
        // The last one out forgets the lock.
        let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&lock) == 2 {
            fetching.remove(id);
        }
        result
    }
}

async fn download(controller: &Controller, id: &str, dest: &Path) -> Result<u64, String> {
    let path = format!("/internal/v1/images/{id}/raw");
    let request = crate::controller_client::send(
        controller,
        hyper::Method::GET,
        &path,
        "application/json",
        Empty::<Bytes>::new(),
    );
    let resp = tokio::time::timeout(STALL_TIMEOUT, request)
        .await
        .map_err(|_| format!("image {id}: the controller did not answer within {STALL_TIMEOUT:?}"))?
        .map_err(|e| format!("image {id}: {e}"))?;
    if resp.status() != hyper::StatusCode::OK {
        return Err(format!(
            "image {id}: the controller answered {}",
            resp.status()
        ));
    }
    let mut body = resp.into_body();
    let file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = SparseWriter::new(file);
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
        if let Some(data) = frame.data_ref() {
            out.push(data).await.map_err(|e| e.to_string())?;
        }
    }
    out.finish().await.map_err(|e| e.to_string())
}

/// Writes a stream to a file, leaving holes where whole blocks are zero: a
/// disk image is mostly free space, and the cache (and every root disk
/// copied from it, which keeps holes) should not pay for it.
struct SparseWriter {
    file: tokio::fs::File,
    /// The start of a block not yet whole.
    pending: Vec<u8>,
    offset: u64,
}

const SPARSE_BLOCK: usize = 4096;

impl SparseWriter {
    fn new(file: tokio::fs::File) -> Self {
        SparseWriter {
            file,
            pending: Vec::with_capacity(SPARSE_BLOCK),
            offset: 0,
        }
    }

    async fn push(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let take = data.len().min(SPARSE_BLOCK - self.pending.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < SPARSE_BLOCK {
                return Ok(());
            }
            let block = std::mem::take(&mut self.pending);
            self.block(&block).await?;
            self.pending = block;
            self.pending.clear();
        }
        let whole = data.len() - data.len() % SPARSE_BLOCK;
        let mut run_start = 0;
        // Runs of data blocks go in one write; zero blocks are skipped.
        for (i, block) in data[..whole].chunks(SPARSE_BLOCK).enumerate() {
            if block.iter().all(|b| *b == 0) {
                let at = i * SPARSE_BLOCK;
                self.write(&data[run_start..at]).await?;
                self.skip(SPARSE_BLOCK).await?;
                run_start = at + SPARSE_BLOCK;
            }
        }
        self.write(&data[run_start..whole]).await?;
        self.pending.extend_from_slice(&data[whole..]);
        Ok(())
    }

    async fn block(&mut self, block: &[u8]) -> std::io::Result<()> {
        if block.iter().all(|b| *b == 0) {
            self.skip(block.len()).await
        } else {
            self.write(block).await
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if !bytes.is_empty() {
            self.file.write_all(bytes).await?;
            self.offset += bytes.len() as u64;
        }
        Ok(())
    }

    async fn skip(&mut self, len: usize) -> std::io::Result<()> {
        use tokio::io::AsyncSeekExt;
        self.offset += len as u64;
        self.file
            .seek(std::io::SeekFrom::Start(self.offset))
            .await?;
        Ok(())
    }

    /// Writes the tail, sizes the file (a trailing hole) and syncs it;
    /// returns its length.
    async fn finish(mut self) -> std::io::Result<u64> {
        let tail = std::mem::take(&mut self.pending);
        self.write(&tail).await?;
        self.file.flush().await?;
        self.file.set_len(self.offset).await?;
        self.file.sync_all().await?;
        Ok(self.offset)
    }
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
    async fn downloads_keep_zero_blocks_as_holes_and_every_byte_as_sent() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let mut sent = vec![0u8; 8 << 20];
        sent[100] = 1; // data in the first block
        sent[(4 << 20) + 5000] = 2; // and in one in the middle
        let last = sent.len() - 1;
        sent[last] = 3;
        let mut out = SparseWriter::new(tokio::fs::File::create(&path).await.unwrap());
        // Frames of awkward sizes, as a network delivers them.
        for chunk in sent.chunks(3001) {
            out.push(chunk).await.unwrap();
        }
        assert_eq!(out.finish().await.unwrap(), sent.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), sent);
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            allocated < 1 << 20,
            "{allocated} bytes allocated for 12 KiB of data"
        );

        // A stream ending in zeros still has its full length.
        let path = dir.path().join("zeros");
        let mut out = SparseWriter::new(tokio::fs::File::create(&path).await.unwrap());
        out.push(&[0u8; 10_000]).await.unwrap();
        assert_eq!(out.finish().await.unwrap(), 10_000);
        assert_eq!(std::fs::read(&path).unwrap(), vec![0u8; 10_000]);
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
