//! Root disks: an instance booted from a disk image gets its own writable
//! copy of the cached image, made once when the instance is created, kept
//! across stops, starts and reboots, and removed with the instance (it lives
//! in the instance's run directory).
//!
//! The copy shares the image's blocks where the filesystem can (`FICLONE`:
//! XFS, btrfs), which takes the same few milliseconds whatever the size;
//! elsewhere (ext4) only the image's data is copied, holes stay holes, so a
//! 2 GiB cloud image with 1 GiB of data costs 1 GiB of writes. The copy is
//! then grown to the size asked for (sparse); the guest's cloud-init grows
//! its partition and filesystem into it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The largest root disk hostd makes (16 TiB).
pub const MAX_GIB: u32 = 16 << 10;

/// How a root disk was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Made {
    /// Blocks shared with the image (copy-on-write by the filesystem).
    Reflinked,
    /// The image's data copied (`bytes` of it), holes kept.
    Copied { bytes: u64 },
}

/// Makes `dest` a writable copy of `image` of at least `gib` GiB. The copy
/// is written beside `dest` and renamed over it when whole, so `dest` is
/// either absent or complete.
pub fn create(image: &Path, dest: &Path, gib: Option<u32>) -> io::Result<Made> {
    let source = File::open(image)?;
    let len = source.metadata()?.len();
    let part = dest.with_extension("part");
    let _ = std::fs::remove_file(&part);
    let target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&part)?;
    let made = copy(&source, &target, len).and_then(|made| {
        // Whole sectors, as the VMM serves them.
        let want = (u64::from(gib.unwrap_or(0)) << 30).max(len.next_multiple_of(512));
        if want > len {
            target.set_len(want)?;
        }
        target.sync_all()?;
        Ok(made)
    });
    match made {
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

/// Shares `source`'s blocks with `target` if the filesystem can, else copies
/// its data ranges.
fn copy(source: &File, target: &File, len: u64) -> io::Result<Made> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are open files owned by the caller for the whole call.
    let cloned = unsafe { libc::ioctl(target.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) };
    if cloned == 0 {
        return Ok(Made::Reflinked);
    }
    let mut bytes = 0;
    for (start, n) in hostd_proto::sparse::data_extents(source, len)? {
        copy_range(source, target, start, n)?;
        bytes += n;
    }
    target.set_len(len)?;
    Ok(Made::Copied { bytes })
}

/// Copies `len` bytes at `offset` from `source` to the same place in
/// `target`, in the kernel (which may share blocks or copy server-side).
fn copy_range(source: &File, target: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let mut from = (offset + done) as i64;
        let mut to = from;
        let chunk = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        // SAFETY: both descriptors are open files owned by the caller; the
        // offsets are this function's own variables, valid for the call.
        let n = unsafe {
            libc::copy_file_range(
                source.as_raw_fd(),
                &mut from,
                target.as_raw_fd(),
                &mut to,
                chunk,
                0,
            )
        };
        match n {
            n if n > 0 => done += n as u64,
            0 => return Err(io::Error::other("the image ended while it was copied")),
            _ => {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    // Not between these files (another filesystem, one
                    // that cannot): copied through this process instead.
                    Some(libc::EXDEV | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
                        return copy_through_buffer(source, target, offset + done, len - done)
                    }
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(())
}

fn copy_through_buffer(source: &File, target: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = source.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            return Err(io::Error::other("the image ended while it was copied"));
        }
        target.write_all_at(&buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
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
        let made = create(&image, &disk, Some(1)).unwrap();
        if let Made::Copied { bytes } = made {
            assert!(bytes < 8 << 20, "copied {bytes} bytes of 12 KiB of data");
        }
        let meta = std::fs::metadata(&disk).unwrap();
        assert_eq!(meta.len(), 1 << 30, "grown to the size asked for");
        assert!(meta.blocks() * 512 < 16 << 20, "holes stay holes");
        assert_eq!(read_at(&disk, 0, 4096), vec![0xab; 4096]);
        assert_eq!(read_at(&disk, 64 << 20, 8192), vec![0xcd; 8192]);
        assert_eq!(read_at(&disk, 32 << 20, 4096), vec![0; 4096]);
        assert!(!disk.with_extension("part").exists());

        // The copy is the instance's own: its writes leave the image alone.
        let mut w = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        w.write_all(&[1; 4096]).unwrap();
        drop(w);
        assert_eq!(read_at(&image, 0, 4096), vec![0xab; 4096]);
    }

    #[test]
    fn the_userspace_copy_copies_what_the_kernel_would() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(3 << 20) + 77).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("a"), &data).unwrap();
        let source = File::open(dir.path().join("a")).unwrap();
        let target = File::create(dir.path().join("b")).unwrap();
        copy_through_buffer(&source, &target, 4096, data.len() as u64 - 4096).unwrap();
        let got = std::fs::read(dir.path().join("b")).unwrap();
        assert_eq!(&got[4096..], &data[4096..]);
        assert!(copy_through_buffer(&source, &target, 0, data.len() as u64 + 1).is_err());
    }

    #[test]
    fn a_disk_is_never_smaller_than_its_image_and_a_failed_copy_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::write(&image, vec![7u8; (3 << 20) + 100]).unwrap();
        let disk = dir.path().join("root.img");
        create(&image, &disk, None).unwrap();
        assert_eq!(
            std::fs::metadata(&disk).unwrap().len(),
            (3 << 20) + 512,
            "whole sectors"
        );
        assert_eq!(read_at(&disk, (3 << 20) - 4, 4), vec![7; 4]);

        let missing = create(&dir.path().join("gone"), &dir.path().join("b.img"), Some(1));
        assert!(missing.is_err());
        assert!(!dir.path().join("b.img").exists());
        assert!(!dir.path().join("b.part").exists());
    }
}
