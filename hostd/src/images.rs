//! The image cache: images a spec names by id (`kernel_image`,
//! `initramfs_image`, `root_image`, `disk_images`) are fetched once through
//! the controller's internal API (which redirects to the storage host
//! holding an image), into `state_dir/images/ID`, written to a temporary
//! file and renamed, so a cached image is always whole. A disk image comes
//! as a sparse stream (its data, not its holes); the cached file keeps the
//! holes.
//!
//! Instances of one image that is not cached yet share one download (the
//! others wait for it). A download may take as long as it needs, but one
//! that stalls ends; one abandoned (its instance deleted meanwhile) leaves
//! no temporary file behind.
//!
//! An image no instance has used for a while goes, with the pick kept for
//! it (see [`ImageCache::sweep`]), as Nova's image cache removes unused
//! base images: a host that boots many images over months keeps only those
//! its instances still use, whether or not Glance still has them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostd_proto::sparse;
use http_body_util::Empty;
use hyper::body::Bytes;
use virga_imagefile::download::{self, Accept, STALL_TIMEOUT};

use crate::config::Controller;

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
    /// When each cached image was last fetched or seen in use (since this
    /// hostd started: one it has not seen yet counts from its first sweep).
    last_used: Mutex<BTreeMap<String, Instant>>,
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
            last_used: Mutex::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn touch(&self, id: &str) {
        let mut last_used = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        last_used.insert(id.to_owned(), Instant::now());
    }

    /// Removes the cached images that are not in `in_use` and have not been
    /// fetched or in use for `unused_for`, each with the pick kept for it
    /// (`ID.boot`); returns their ids. An image being fetched stays; one
    /// fetched while this runs either stays or is fetched again (both
    /// take `last_used`'s lock, and a fetch finds the file or downloads).
    pub fn sweep(&self, in_use: &BTreeSet<String>, unused_for: Duration) -> Vec<String> {
        let now = Instant::now();
        let mut last_used = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !valid_image_id(&id) || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue; // a download under way, a kept pick, a stranger
            }
            if in_use.contains(&id) {
                last_used.insert(id, now);
                continue;
            }
            let seen = *last_used.entry(id.clone()).or_insert(now);
            let fetching = self
                .fetching
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&id);
            if fetching || now.duration_since(seen) < unused_for {
                continue;
            }
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(image = id, "removing the unused cached image: {e}");
                continue;
            }
            let _ = std::fs::remove_dir_all(self.dir.join(format!("{id}.boot")));
            last_used.remove(&id);
            removed.push(id);
        }
        removed
    }

    /// The local file of image `id`, fetched first when not cached.
    pub async fn fetch(&self, id: &str) -> Result<PathBuf, String> {
        if !valid_image_id(id) {
            return Err(format!("image id {id:?} is not valid"));
        }
        // Before looking: a sweep now either finds it fresh or has removed
        // it, and then it is fetched again.
        self.touch(id);
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
            // Readable by the jailed VMMs' users: root disks on ext4 are
            // overlays that read through to the cached image.
            std::fs::set_permissions(&part.0, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .map_err(|e| format!("image {id}: {e}"))?;
            std::fs::rename(&part.0, &path).map_err(|e| format!("image {id}: {e}"))?;
            self.touch(id);
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
        &[("accept", sparse::CONTENT_TYPE)],
        Empty::<Bytes>::new(),
    );
    let resp = tokio::time::timeout(STALL_TIMEOUT, request)
        .await
        .map_err(|_| format!("image {id}: the controller did not answer within {STALL_TIMEOUT:?}"))?
        .map_err(|e| format!("image {id}: {e}"))?;
    let file = std::fs::File::create(dest).map_err(|e| e.to_string())?;
    let max = u64::from(crate::root_disk::MAX_GIB) << 30;
    // An image on a storage host comes from there (a redirect); an older
    // controller may send plain bytes.
    download::receive(resp, file, max, Accept::Either)
        .await
        .map_err(|e| format!("image {id}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0a0a0a0a-0000-4000-8000-00000000000a";
    const B: &str = "0b0b0b0b-0000-4000-8000-00000000000b";

    #[tokio::test]
    async fn images_unused_for_long_enough_go_with_their_kept_picks() {
        let t = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(t.path().to_owned(), None).unwrap();
        for id in [A, B] {
            std::fs::write(t.path().join(id), b"image").unwrap();
            std::fs::create_dir(t.path().join(format!("{id}.boot"))).unwrap();
            std::fs::write(t.path().join(format!("{id}.boot/kernel")), b"k").unwrap();
        }
        std::fs::write(t.path().join("notes.txt"), b"not an image").unwrap();
        let in_use: BTreeSet<String> = [A.to_owned()].into();
        let hour = Duration::from_secs(3600);

        // First seen now: nothing is old yet.
        assert!(cache.sweep(&in_use, hour).is_empty());
        // Unused for longer than asked: B goes, A (in use) stays.
        assert_eq!(cache.sweep(&in_use, Duration::ZERO), vec![B.to_owned()]);
        assert!(!t.path().join(B).exists());
        assert!(!t.path().join(format!("{B}.boot")).exists());
        assert!(t.path().join(A).exists());
        assert!(t.path().join(format!("{A}.boot/kernel")).exists());
        assert!(t.path().join("notes.txt").exists());

        // A no longer in use, but fetched a moment ago: it stays until
        // unused for as long as asked.
        assert_eq!(cache.fetch(A).await.unwrap(), t.path().join(A));
        assert!(cache.sweep(&BTreeSet::new(), hour).is_empty());
        assert_eq!(
            cache.sweep(&BTreeSet::new(), Duration::ZERO),
            vec![A.to_owned()]
        );
        // Gone, it is fetched again (here: no controller to fetch from).
        assert!(cache.fetch(A).await.is_err());
    }

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
