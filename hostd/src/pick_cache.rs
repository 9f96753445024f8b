//! Picks kept per image. A root disk made from an image holds exactly what
//! the image holds until its guest first runs, so its first boot is what the
//! picker finds on the image. The first root disk of an image is picked as
//! any other; its kernel, initramfs and command line are then kept beside
//! the cached image (`images/ID.boot/`), and every later new root disk of
//! that image boots from them without running the picker (which reads and
//! writes the kernel and initramfs: seconds on a busy host).
//!
//! - Images never change under their id. A kept pick is used only by the
//!   hostd and picker binaries that made it (their sizes and times say so):
//!   an upgraded picker picks again.
//! - After its first boot a root disk is the guest's (it may upgrade its
//!   kernel), and it is picked before every boot.
//! - The kept files are links to the ones the picker wrote for the first
//!   root disk (the picker always makes new files, never rewrites old ones),
//!   synced before the pick that names them is renamed into place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::boot_picker::Picked;
use crate::images::valid_image_id;

const KEPT: &str = "pick.json";
const KERNEL: &str = "kernel";
const INITRAMFS: &str = "initramfs";
/// In the name of a kept pick being made (removed at start if left).
const PART: &str = ".boot.part-";

pub struct PickCache {
    dir: PathBuf,
    /// The binaries that pick, as their files are now.
    made_by: String,
    parts: AtomicU64,
}

#[derive(Serialize, Deserialize)]
struct Kept {
    made_by: String,
    cmdline: String,
    how: String,
    kernel_bytes: u64,
    /// None when the pick names no initramfs.
    initramfs_bytes: Option<u64>,
}

impl PickCache {
    /// The kept picks in `images_dir`, for picks made by `picker` (and this
    /// hostd); what a killed hostd left half-made is removed.
    pub fn new(images_dir: PathBuf, picker: &Path) -> std::io::Result<PickCache> {
        std::fs::create_dir_all(&images_dir)?;
        for entry in std::fs::read_dir(&images_dir)?.flatten() {
            if entry.file_name().to_string_lossy().contains(PART) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let exe = std::env::current_exe().unwrap_or_default();
        Ok(PickCache {
            dir: images_dir,
            made_by: format!("{}/{}", identity(picker), identity(&exe)),
            parts: AtomicU64::new(0),
        })
    }

    fn dir_of(&self, image: &str) -> PathBuf {
        self.dir.join(format!("{image}.boot"))
    }

    /// The pick kept for `image`'s new root disks, if one was kept by these
    /// binaries and is whole.
    pub fn get(&self, image: &str) -> Option<Picked> {
        if !valid_image_id(image) {
            return None;
        }
        let dir = self.dir_of(image);
        let kept: Kept = serde_json::from_slice(&std::fs::read(dir.join(KEPT)).ok()?).ok()?;
        if kept.made_by != self.made_by {
            return None;
        }
        let whole = |name: &str, bytes: u64| {
            let path = dir.join(name);
            let len = std::fs::metadata(&path).ok()?.len();
            (len == bytes).then_some(path)
        };
        let kernel = whole(KERNEL, kept.kernel_bytes)?;
        let initramfs = match kept.initramfs_bytes {
            Some(bytes) => Some(whole(INITRAMFS, bytes)?),
            None => None,
        };
        Some(Picked {
            kernel,
            initramfs,
            cmdline: kept.cmdline,
            how: format!("{}, kept from the image's first pick", kept.how),
            cpu_ms: 0,
            blocks_read: 0,
        })
    }

    /// Keeps `picked`, which the picker found on a root disk of `image`
    /// that no guest had run on, for the image's later root disks.
    pub fn put(&self, image: &str, picked: &Picked) -> std::io::Result<()> {
        if !valid_image_id(image) {
            return Err(std::io::Error::other(format!(
                "image id {image:?} is not valid"
            )));
        }
        let n = self.parts.fetch_add(1, Ordering::Relaxed);
        let part = self
            .dir
            .join(format!("{image}{PART}{}-{n}", std::process::id()));
        std::fs::create_dir(&part)?;
        let made = self.fill(&part, picked).and_then(|()| {
            let dir = self.dir_of(image);
            match std::fs::rename(&part, &dir) {
                Ok(()) => {}
                // Another root disk of the image kept it first: servers
                // may be booting from that one.
                Err(_) if self.get(image).is_some() => {}
                // One kept by other binaries goes.
                Err(_) => {
                    std::fs::remove_dir_all(&dir)?;
                    std::fs::rename(&part, &dir)?;
                }
            }
            std::fs::File::open(&self.dir)?.sync_all()
        });
        if part.exists() {
            let _ = std::fs::remove_dir_all(&part);
        }
        made
    }

    fn fill(&self, part: &Path, picked: &Picked) -> std::io::Result<()> {
        let kernel_bytes = keep(&picked.kernel, &part.join(KERNEL))?;
        let initramfs_bytes = match &picked.initramfs {
            Some(initramfs) => Some(keep(initramfs, &part.join(INITRAMFS))?),
            None => None,
        };
        let kept = Kept {
            made_by: self.made_by.clone(),
            cmdline: picked.cmdline.clone(),
            how: picked.how.clone(),
            kernel_bytes,
            initramfs_bytes,
        };
        let path = part.join(KEPT);
        std::fs::write(
            &path,
            serde_json::to_vec(&kept).map_err(std::io::Error::other)?,
        )?;
        std::fs::File::open(&path)?.sync_all()?;
        std::fs::File::open(part)?.sync_all()
    }
}

/// `from` at `to` (a link where both lie on one filesystem, else a copy),
/// on stable storage; returns its length.
fn keep(from: &Path, to: &Path) -> std::io::Result<u64> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)?;
    }
    let file = std::fs::File::open(to)?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// A file as it is now: its length and modification time.
fn identity(path: &Path) -> String {
    match std::fs::metadata(path).and_then(|m| Ok((m.len(), m.modified()?))) {
        Ok((len, modified)) => {
            let since = modified
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            format!("{len}@{}", since.as_nanos())
        }
        // Nothing kept is ever taken for it.
        Err(e) => format!("unknown ({e}) {:?}", std::time::Instant::now()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picked(dir: &Path, initramfs: bool) -> Picked {
        std::fs::write(dir.join("kernel"), b"a kernel").unwrap();
        if initramfs {
            std::fs::write(dir.join("initramfs"), b"an initramfs").unwrap();
        }
        Picked {
            kernel: dir.join("kernel"),
            initramfs: initramfs.then(|| dir.join("initramfs")),
            cmdline: "root=PARTUUID=x ro console=ttyS0".into(),
            how: "grub.cfg entry 'Debian'".into(),
            cpu_ms: 9,
            blocks_read: 9,
        }
    }

    const IMAGE: &str = "2e2fd5b4-7b81-4a36-8339-6a77b13a9ebf";

    struct Setup {
        t: tempfile::TempDir,
        images: PathBuf,
        /// An instance's run directory, where the picker writes.
        run: PathBuf,
        picker: PathBuf,
        cache: PickCache,
    }

    fn setup() -> Setup {
        let t = tempfile::tempdir().unwrap();
        let (images, run) = (t.path().join("images"), t.path().join("run"));
        std::fs::create_dir_all(&run).unwrap();
        let picker = t.path().join("virga-bootpick");
        std::fs::write(&picker, b"v1").unwrap();
        let cache = PickCache::new(images.clone(), &picker).unwrap();
        Setup {
            t,
            images,
            run,
            picker,
            cache,
        }
    }

    #[test]
    fn a_kept_pick_is_taken_by_the_same_binaries_only() {
        let Setup {
            t,
            images,
            run,
            picker,
            cache,
        } = setup();
        assert!(cache.get(IMAGE).is_none());

        let first = picked(&run, true);
        cache.put(IMAGE, &first).unwrap();
        let kept = cache.get(IMAGE).expect("kept");
        assert_eq!(kept.cmdline, first.cmdline);
        // A second root disk picked before the first was kept leaves the
        // one kept (servers may boot from it) and nothing of its own.
        let mut other = picked(&t.path().join("run"), true);
        other.cmdline = "ro".into();
        cache.put(IMAGE, &other).unwrap();
        assert_eq!(cache.get(IMAGE).unwrap().cmdline, first.cmdline);
        assert_eq!(std::fs::read_dir(&images).unwrap().count(), 1);
        assert!(
            kept.how.starts_with("grub.cfg entry 'Debian', kept"),
            "{}",
            kept.how
        );
        assert_eq!(std::fs::read(&kept.kernel).unwrap(), b"a kernel");
        assert_eq!(
            std::fs::read(kept.initramfs.as_ref().unwrap()).unwrap(),
            b"an initramfs"
        );
        assert_ne!(kept.kernel, first.kernel);

        // The instance's next pick makes new files: the kept ones stay.
        std::fs::remove_file(&first.kernel).unwrap();
        std::fs::write(&first.kernel, b"an upgraded kernel").unwrap();
        assert_eq!(std::fs::read(&kept.kernel).unwrap(), b"a kernel");

        // A picker upgraded: nothing kept is taken, and a new pick replaces it.
        std::fs::write(&picker, b"v2, longer").unwrap();
        let upgraded = PickCache::new(images.clone(), &picker).unwrap();
        assert!(upgraded.get(IMAGE).is_none());
        upgraded.put(IMAGE, &picked(&run, false)).unwrap();
        let kept = upgraded.get(IMAGE).expect("kept again");
        assert_eq!(kept.initramfs, None);
        assert!(cache.get(IMAGE).is_none());
    }

    #[test]
    fn a_kept_pick_that_is_not_whole_is_not_taken() {
        let Setup {
            t: _dir,
            images,
            run,
            picker,
            cache,
        } = setup();
        cache.put(IMAGE, &picked(&run, true)).unwrap();
        let dir = images.join(format!("{IMAGE}.boot"));

        // A shorter initramfs (cut off by a crash) is not booted.
        std::fs::remove_file(dir.join("initramfs")).unwrap();
        std::fs::write(dir.join("initramfs"), b"an").unwrap();
        assert!(cache.get(IMAGE).is_none());
        std::fs::write(dir.join(KEPT), b"{").unwrap();
        assert!(cache.get(IMAGE).is_none());
        // Nor anything for a name that is no image id.
        assert!(cache.get("../x").is_none());
        assert!(cache.put("../x", &picked(&run, true)).is_err());

        // Half-made ones a killed hostd left are removed at start.
        let part = images.join(format!("{IMAGE}{PART}1-0"));
        std::fs::create_dir(&part).unwrap();
        std::fs::write(part.join("kernel"), b"k").unwrap();
        PickCache::new(images.clone(), &picker).unwrap();
        assert!(!part.exists());
        assert!(dir.exists());
    }
}
