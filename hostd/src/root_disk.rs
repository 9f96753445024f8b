//! Root disks: an instance booted from a disk image gets its own writable
//! disk over the cached image, made once when the instance is created, in
//! constant time whatever the image's size, kept across stops, starts and
//! reboots, and removed with the instance (it lives in the instance's run
//! directory).
//!
//! Where the filesystem shares blocks (`FICLONE`: XFS, btrfs) the root disk
//! is a raw file cloned from the image (`root.img`). Elsewhere (ext4) it is a
//! qcow2 overlay over the image (`root.qcow2`), which the VMM serves: the
//! image stays in the cache while an overlay uses it. Either is made at the
//! size asked for; the guest's cloud-init grows its partition and filesystem
//! into it.
//!
//! Which one an instance has is told by the file's name, never by its
//! contents: a guest can write a qcow2 header into a raw disk.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use virga_imagefile::clone::{self, Cloned};
use vmm::virtio::block::qcow2::{self, Overlay};

/// The largest root disk hostd makes (16 TiB).
pub const MAX_GIB: u32 = 16 << 10;
const RAW_NAME: &str = "root.img";
const OVERLAY_NAME: &str = "root.qcow2";

/// An instance's root disk, in its run directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootDisk {
    /// A raw file of its own (sharing the image's blocks where it can).
    Raw(PathBuf),
    /// A qcow2 overlay over the cached image.
    Overlay(PathBuf),
}

impl RootDisk {
    /// The root disk in `dir`, if it has one.
    pub fn find(dir: &Path) -> Option<RootDisk> {
        let overlay = dir.join(OVERLAY_NAME);
        if overlay.exists() {
            return Some(RootDisk::Overlay(overlay));
        }
        let raw = dir.join(RAW_NAME);
        raw.exists().then_some(RootDisk::Raw(raw))
    }

    pub fn path(&self) -> &Path {
        match self {
            RootDisk::Raw(p) | RootDisk::Overlay(p) => p,
        }
    }

    pub fn is_overlay(&self) -> bool {
        matches!(self, RootDisk::Overlay(_))
    }

    /// Where the disk as it was before a resize is kept until the resize is
    /// confirmed or reverted.
    pub fn kept(&self) -> PathBuf {
        let mut name = self.path().as_os_str().to_owned();
        name.push(".pre-resize");
        PathBuf::from(name)
    }

    /// The disk's size as the guest sees it.
    pub fn size(&self, base: &Path) -> io::Result<u64> {
        match self {
            RootDisk::Raw(p) => Ok(std::fs::metadata(p)?.len()),
            RootDisk::Overlay(p) => Ok(Overlay::open(&File::open(p)?, base, false)?.size()),
        }
    }

    /// Grows the (stopped instance's) disk to `bytes`; never shrinks it.
    pub fn grow(&self, base: &Path, bytes: u64) -> io::Result<()> {
        match self {
            RootDisk::Raw(p) => {
                let disk = std::fs::OpenOptions::new().write(true).open(p)?;
                if disk.metadata()?.len() < bytes {
                    disk.set_len(bytes)?;
                }
                disk.sync_all()
            }
            RootDisk::Overlay(p) => {
                let file = std::fs::OpenOptions::new().read(true).write(true).open(p)?;
                Overlay::open(&file, base, true)?.grow(bytes)
            }
        }
    }
}

/// How a root disk was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Made {
    /// Blocks shared with the image (copy-on-write by the filesystem).
    Reflinked,
    /// A qcow2 overlay over the image.
    Overlay,
    /// The image's data copied (`bytes` of it), holes kept.
    Copied { bytes: u64 },
}

/// Makes the root disk in `dir` over `image`, of at least `gib` GiB (and
/// whole sectors), in constant time: a reflinked copy where the filesystem
/// can, else a qcow2 overlay.
pub fn make(image: &Path, dir: &Path, gib: Option<u32>) -> io::Result<(RootDisk, Made)> {
    let source = File::open(image)?;
    let len = source.metadata()?.len();
    let size = (u64::from(gib.unwrap_or(0)) << 30).max(len.next_multiple_of(512));
    let raw = dir.join(RAW_NAME);
    let cloned = write_beside(&raw, |part| {
        let target = create_new(part)?;
        if !clone::reflink(&source, &target)? {
            return Ok(false);
        }
        if size > len {
            target.set_len(size)?;
        }
        target.sync_all()?;
        Ok(true)
    });
    match cloned {
        Ok(true) => return Ok((RootDisk::Raw(raw), Made::Reflinked)),
        Ok(false) => {}
        Err(e) => return Err(e),
    }
    let overlay = dir.join(OVERLAY_NAME);
    // The image's path in the header is for people and tools (qemu-img
    // info); the VMM and the picker are given the image by hostd.
    let base_name = image.to_string_lossy();
    write_beside(&overlay, |part| {
        qcow2::create_overlay(part, &base_name, size)
    })?;
    Ok((RootDisk::Overlay(overlay), Made::Overlay))
}

/// Makes `dest` a writable raw copy of the raw `image` of at least `gib`
/// GiB: blocks shared where the filesystem can, else the data copied (holes
/// stay holes). `dest` is either absent or complete.
pub fn copy(image: &Path, dest: &Path, gib: Option<u32>) -> io::Result<Made> {
    let source = File::open(image)?;
    let len = source.metadata()?.len();
    write_beside(dest, |part| {
        let target = create_new(part)?;
        let made = match clone::clone_file(&source, &target, len)? {
            Cloned::Reflinked => Made::Reflinked,
            Cloned::Copied { bytes } => Made::Copied { bytes },
        };
        // Whole sectors, as the VMM serves them.
        let want = (u64::from(gib.unwrap_or(0)) << 30).max(len.next_multiple_of(512));
        if want > len {
            target.set_len(want)?;
        }
        target.sync_all()?;
        Ok(made)
    })
}

/// Makes `dest` a sparse raw file holding the disk a qcow2 `overlay` over
/// `base` shows the guest (for a snapshot): ranges without data stay holes,
/// and so do zero blocks. Returns the data bytes written.
pub fn flatten(overlay: &Path, base: &Path, dest: &Path) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 1 << 20;
    const BLOCK: usize = 4096;
    let disk = Overlay::open(&File::open(overlay)?, base, false)?;
    let size = disk.size();
    write_beside(dest, |part| {
        let target = create_new(part)?;
        let mut buf = vec![0u8; CHUNK as usize];
        let (mut at, mut written) = (0u64, 0u64);
        while at < size {
            let (data, len) = disk.data_at(at, size - at)?;
            if len == 0 {
                break;
            }
            if data {
                let end = at + len;
                while at < end {
                    let n = (end - at).min(CHUNK) as usize;
                    disk.read_vectored(&mut [io::IoSliceMut::new(&mut buf[..n])], at)?;
                    for (i, block) in buf[..n].chunks(BLOCK).enumerate() {
                        if block.iter().any(|b| *b != 0) {
                            target.write_all_at(block, at + (i * BLOCK) as u64)?;
                            written += block.len() as u64;
                        }
                    }
                    at += n as u64;
                }
            } else {
                at += len;
            }
        }
        target.set_len(size)?;
        target.sync_all()?;
        Ok(written)
    })
}

/// Runs `fill` on a file beside `dest` and renames it over `dest` when it
/// succeeds (and the directory is synced), else removes it: `dest` is
/// either absent or complete.
fn write_beside<T>(dest: &Path, fill: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let _ = std::fs::remove_file(&part);
    match fill(&part) {
        Ok(made) => {
            std::fs::rename(&part, dest)?;
            if let Some(dir) = dest.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(made)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

fn create_new(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn read_at(path: &Path, at: u64, len: usize) -> Vec<u8> {
        let mut f = File::open(path).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).unwrap();
        buf
    }

    #[test]
    fn a_root_disk_is_a_grown_private_copy_with_the_images_holes() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        let mut f = File::create(&image).unwrap();
        // Data at 0 and at 64 MiB, a hole between, 80 MiB in all.
        f.write_all(&[0xab; 4096]).unwrap();
        f.seek(SeekFrom::Start(64 << 20)).unwrap();
        f.write_all(&[0xcd; 8192]).unwrap();
        f.set_len(80 << 20).unwrap();
        drop(f);

        let disk = dir.path().join("root.img");
        let made = copy(&image, &disk, Some(1)).unwrap();
        if let Made::Copied { bytes } = made {
            assert!(bytes < 8 << 20, "copied {bytes} bytes of 12 KiB of data");
        }
        let meta = std::fs::metadata(&disk).unwrap();
        assert_eq!(meta.len(), 1 << 30, "grown to the size asked for");
        assert!(meta.blocks() * 512 < 16 << 20, "holes stay holes");
        assert_eq!(read_at(&disk, 0, 4096), vec![0xab; 4096]);
        assert_eq!(read_at(&disk, 64 << 20, 8192), vec![0xcd; 8192]);
        assert_eq!(read_at(&disk, 32 << 20, 4096), vec![0; 4096]);
        assert!(!dir.path().join("root.img.part").exists());

        // The copy is the instance's own: its writes leave the image alone.
        let mut w = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        w.write_all(&[1; 4096]).unwrap();
        drop(w);
        assert_eq!(read_at(&image, 0, 4096), vec![0xab; 4096]);
    }

    #[test]
    fn a_disk_is_never_smaller_than_its_image_and_a_failed_copy_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::write(&image, vec![7u8; (3 << 20) + 100]).unwrap();
        let disk = dir.path().join("root.img");
        copy(&image, &disk, None).unwrap();
        assert_eq!(
            std::fs::metadata(&disk).unwrap().len(),
            (3 << 20) + 512,
            "whole sectors"
        );
        assert_eq!(read_at(&disk, (3 << 20) - 4, 4), vec![7; 4]);

        let missing = copy(&dir.path().join("gone"), &dir.path().join("b.img"), Some(1));
        assert!(missing.is_err());
        assert!(!dir.path().join("b.img").exists());
        assert!(!dir.path().join("b.img.part").exists());
    }

    #[test]
    fn a_root_disk_is_made_in_constant_time_and_keeps_the_instances_writes() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        let mut f = File::create(&image).unwrap();
        f.write_all(&[0xab; 4096]).unwrap();
        f.seek(SeekFrom::Start(64 << 20)).unwrap();
        f.write_all(&[0xcd; 8192]).unwrap();
        f.set_len(80 << 20).unwrap();
        drop(f);
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        assert_eq!(RootDisk::find(&run), None);

        let (disk, made) = make(&image, &run, Some(10)).unwrap();
        assert_eq!(RootDisk::find(&run).as_ref(), Some(&disk));
        assert_eq!(disk.size(&image).unwrap(), 10 << 30);
        match made {
            Made::Overlay => {
                assert!(disk.is_overlay());
                // Metadata only, whatever the sizes.
                assert!(std::fs::metadata(disk.path()).unwrap().len() < 1 << 20);
            }
            Made::Reflinked => assert!(!disk.is_overlay()),
            Made::Copied { .. } => panic!("a root disk was copied"),
        }
        assert!(!run.join("root.img.part").exists() && !run.join("root.qcow2.part").exists());

        // Grown, then flattened for a snapshot: the image's data, in place.
        disk.grow(&image, 11 << 30).unwrap();
        assert_eq!(disk.size(&image).unwrap(), 11 << 30);
        if disk.is_overlay() {
            let flat = dir.path().join("flat.img");
            let written = flatten(disk.path(), &image, &flat).unwrap();
            assert_eq!(written, 12 << 10, "only the non-zero blocks");
            let meta = std::fs::metadata(&flat).unwrap();
            assert_eq!(meta.len(), 11 << 30);
            assert!(meta.blocks() * 512 < 16 << 20, "holes stay holes");
            assert_eq!(read_at(&flat, 0, 4096), vec![0xab; 4096]);
            assert_eq!(read_at(&flat, 64 << 20, 8192), vec![0xcd; 8192]);
            assert_eq!(read_at(&flat, 10 << 30, 4096), vec![0; 4096]);
        }
        assert_eq!(
            disk.kept(),
            PathBuf::from(format!("{}.pre-resize", disk.path().display()))
        );
    }
}
