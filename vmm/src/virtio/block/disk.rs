//! The backing file of a virtio-blk device: a raw image (regular file) or a block
//! device, opened O_DIRECT unless told otherwise.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::request::SECTOR_SIZE;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk {path}: neither a regular file nor a block device")]
    NotADisk { path: PathBuf },
    #[error("disk {path}: size {size} is not a multiple of 512 bytes")]
    Size { path: PathBuf, size: u64 },
}

pub struct Disk {
    /// O_DIRECT when requested and the filesystem allows it.
    file: File,
    /// The same file through the page cache, for I/O that O_DIRECT refuses.
    buffered: File,
    pub direct: bool,
    pub capacity: u64,
    pub read_only: bool,
    /// Regular files can punch holes and zero ranges with fallocate.
    pub fallocate: bool,
}

impl Disk {
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self, DiskError> {
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(!read_only);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        let err = |source| DiskError::Open {
            path: path.to_owned(),
            source,
        };
        let mut buffered = open(false).map_err(err)?;
        let meta = buffered.metadata().map_err(err)?;
        let regular = meta.file_type().is_file();
        if !regular && !meta.file_type().is_block_device() {
            return Err(DiskError::NotADisk {
                path: path.to_owned(),
            });
        }
        let size = buffered.seek(SeekFrom::End(0)).map_err(err)?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::Size {
                path: path.to_owned(),
                size,
            });
        }
        let (file, direct) = match direct.then(|| open(true)) {
            Some(Ok(f)) => (f, true),
            Some(Err(e)) => {
                // tmpfs (before Linux 6.6) and some network filesystems refuse it.
                tracing::warn!(
                    "disk {}: no O_DIRECT ({e}); using the page cache",
                    path.display()
                );
                (open(false).map_err(err)?, false)
            }
            None => (open(false).map_err(err)?, false),
        };
        Ok(Disk {
            file,
            buffered,
            direct,
            capacity: size,
            read_only,
            fallocate: regular,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn buffered_fd(&self) -> RawFd {
        self.buffered.as_raw_fd()
    }

    pub fn sectors(&self) -> u64 {
        self.capacity / SECTOR_SIZE
    }

    /// Punches a hole (discard) or zeroes a range, keeping the file's size.
    pub fn fallocate(&self, offset: u64, len: u64, zero: bool) -> std::io::Result<()> {
        let mode = libc::FALLOC_FL_KEEP_SIZE
            | if zero {
                libc::FALLOC_FL_ZERO_RANGE
            } else {
                libc::FALLOC_FL_PUNCH_HOLE
            };
        // SAFETY: fallocate on our own fd with plain integer arguments.
        let rc = unsafe {
            libc::fallocate(
                self.buffered.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// Synchronous vectored I/O at `offset`: returns the bytes moved.
pub fn preadv_pwritev(
    fd: RawFd,
    write: bool,
    iovecs: &[libc::iovec],
    offset: u64,
) -> std::io::Result<usize> {
    // SAFETY: every iovec points into guest memory that stays mapped for the whole
    // call (the worker holds the memory), with the length checked at parse time.
    let rc = unsafe {
        if write {
            libc::pwritev(
                fd,
                iovecs.as_ptr(),
                iovecs.len() as libc::c_int,
                offset as libc::off_t,
            )
        } else {
            libc::preadv(
                fd,
                iovecs.as_ptr(),
                iovecs.len() as libc::c_int,
                offset as libc::off_t,
            )
        }
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_raw_images_and_rejects_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        std::fs::write(&img, vec![0u8; 8192]).unwrap();
        let disk = Disk::open(&img, false, true).unwrap();
        assert_eq!((disk.capacity, disk.sectors()), (8192, 16));
        assert!(disk.fallocate);

        let odd = dir.path().join("odd.raw");
        std::fs::write(&odd, vec![0u8; 1000]).unwrap();
        assert!(matches!(
            Disk::open(&odd, false, false),
            Err(DiskError::Size { .. })
        ));
        assert!(matches!(
            Disk::open(dir.path(), true, false),
            Err(DiskError::NotADisk { .. }) | Err(DiskError::Open { .. })
        ));
        assert!(matches!(
            Disk::open(&dir.path().join("missing"), false, false),
            Err(DiskError::Open { .. })
        ));
    }
}
