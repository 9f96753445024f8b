//! The backing file of a virtio-blk device: a raw image (regular file), a block
//! device, or a qcow2 overlay over a raw image, opened O_DIRECT unless told
//! otherwise.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::qcow2::{Overlay, Place};
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
    #[error("disk {path}: not a qcow2 overlay over {base}: {source}")]
    Overlay {
        path: PathBuf,
        base: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("the block device has {has} bytes, fewer than {wanted}: its size is its own, grow the device itself")]
    BlockDevice { has: u64, wanted: u64 },
    #[error("{0} bytes is not a multiple of 512")]
    Unaligned(u64),
    #[error("the disk has {current} bytes; it cannot shrink to {wanted}")]
    Shrink { current: u64, wanted: u64 },
    #[error("growing the file: {0}")]
    Io(#[from] std::io::Error),
}

/// Which file a request's data goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The disk's own file, at the offset given.
    Own,
    /// An overlay's base.
    Base,
    /// The read-only layer of this index under an overlay (0 right under it).
    Layer(usize),
    /// Through the overlay's format driver, at the guest's offset.
    Overlay,
}

/// One part of a read whose parts lie in different files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPart {
    /// Bytes into the read.
    pub skip: u64,
    pub len: u64,
    /// The file and the offset in it; None for zeros.
    pub at: Option<(Target, u64)>,
}

/// The file and offset of the bytes at `offset` of the disk that lie in
/// `place`; bytes in several places go through the format driver, at
/// their offset in the disk.
fn target_of(place: Place, offset: u64) -> (Target, u64) {
    match place {
        Place::Overlay(at) => (Target::Own, at),
        Place::Base(at) => (Target::Base, at),
        Place::Layer(i, at) => (Target::Layer(i), at),
        Place::Mixed => (Target::Overlay, offset),
    }
}

pub struct Disk {
    /// O_DIRECT when requested and the filesystem allows it.
    file: File,
    /// The same file through the page cache, for I/O that O_DIRECT refuses.
    buffered: File,
    pub direct: bool,
    /// In bytes; only ever grows (see [`Disk::grow`]).
    capacity: AtomicU64,
    pub read_only: bool,
    /// Regular files can punch holes and zero ranges with fallocate.
    pub fallocate: bool,
    /// Set when the file is a qcow2 overlay over a raw base.
    overlay: Option<Overlay>,
}

impl Disk {
    /// The disk at `path`: raw, or with `base` a qcow2 overlay over the
    /// read-only qcow2 `layers` (top first) over that raw base.
    pub fn open(
        path: &Path,
        base: Option<&Path>,
        layers: &[PathBuf],
        read_only: bool,
        direct: bool,
    ) -> Result<Self, DiskError> {
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
        let overlay = match base {
            Some(base) if regular => {
                let overlay_err = |source| DiskError::Overlay {
                    path: path.to_owned(),
                    base: base.to_owned(),
                    source,
                };
                let layers = layers
                    .iter()
                    .map(File::open)
                    .collect::<std::io::Result<Vec<_>>>()
                    .map_err(overlay_err)?;
                let base_file = File::open(base).map_err(overlay_err)?;
                Some(
                    Overlay::open_chain(&buffered, layers, base_file, !read_only)
                        .map_err(overlay_err)?,
                )
            }
            Some(_) => {
                return Err(DiskError::NotADisk {
                    path: path.to_owned(),
                })
            }
            None => None,
        };
        let size = match &overlay {
            Some(o) => o.size(),
            None => buffered.seek(SeekFrom::End(0)).map_err(err)?,
        };
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
            capacity: AtomicU64::new(size),
            read_only,
            fallocate: regular && overlay.is_none(),
            overlay,
        })
    }

    /// A disk on descriptors its supervisor sent: `[buffered]`, or
    /// `[direct, buffered]` (one opened O_DIRECT, one not: the VMM, jailed,
    /// cannot reopen the file itself). Raw, or with `backing` (read-only:
    /// qcow2 layers top first, then the raw base) a qcow2 overlay over them.
    /// Each is duplicated; the caller keeps the originals (they serve every
    /// boot).
    pub fn from_fds(fds: &[RawFd], backing: &[RawFd], read_only: bool) -> Result<Self, DiskError> {
        let label = PathBuf::from(format!("fd{}", fds.first().copied().unwrap_or(-1)));
        let err = |source| DiskError::Open {
            path: label.clone(),
            source,
        };
        let dup = |fd: RawFd| -> Result<File, DiskError> {
            // SAFETY: F_DUPFD_CLOEXEC only reads the descriptor number; an
            // invalid one fails with EBADF, which is checked.
            let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
            if new < 0 {
                return Err(err(std::io::Error::last_os_error()));
            }
            // SAFETY: `new` is a fresh descriptor nothing else owns.
            Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(new) })
        };
        let (direct, mut buffered) = match fds {
            [buffered] => (None, dup(*buffered)?),
            [direct, buffered] => (Some(dup(*direct)?), dup(*buffered)?),
            _ => return Err(err(std::io::Error::from_raw_os_error(libc::EINVAL))),
        };
        let meta = buffered.metadata().map_err(err)?;
        let regular = meta.file_type().is_file();
        if !regular && !meta.file_type().is_block_device() {
            return Err(DiskError::NotADisk { path: label });
        }
        let overlay = match backing.split_last() {
            Some((base, layers)) if regular => {
                let overlay_err = |source| DiskError::Overlay {
                    path: label.clone(),
                    base: PathBuf::from(format!("fd{base}")),
                    source,
                };
                let layers = layers
                    .iter()
                    .map(|fd| dup(*fd))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(
                    Overlay::open_chain(&buffered, layers, dup(*base)?, !read_only)
                        .map_err(overlay_err)?,
                )
            }
            Some(_) => return Err(DiskError::NotADisk { path: label }),
            None => None,
        };
        let size = match &overlay {
            Some(o) => o.size(),
            None => buffered.seek(SeekFrom::End(0)).map_err(err)?,
        };
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::Size { path: label, size });
        }
        let (file, direct) = match direct {
            Some(f) => (f, true),
            None => (buffered.try_clone().map_err(err)?, false),
        };
        Ok(Disk {
            file,
            buffered,
            direct,
            capacity: AtomicU64::new(size),
            read_only,
            fallocate: regular && overlay.is_none(),
            overlay,
        })
    }

    /// Where the bytes `[offset, offset + len)` of a read or write go, and
    /// at which offset of that file.
    pub fn place(&self, offset: u64, len: u64, write: bool) -> std::io::Result<(Target, u64)> {
        let Some(overlay) = &self.overlay else {
            return Ok((Target::Own, offset));
        };
        Ok(target_of(overlay.place(offset, len, write)?, offset))
    }

    /// The parts of a read that lie in different files (a read
    /// [`Disk::place`] sent to `Target::Overlay`), each as `(skip, len,
    /// where)`: `len` bytes `skip` bytes into the read, in that file at
    /// that offset, or zeros where None. None when the format driver has
    /// to read it (see [`Overlay::read_pieces`]).
    pub fn read_pieces(&self, offset: u64, len: u64) -> std::io::Result<Option<Vec<ReadPart>>> {
        let Some(overlay) = &self.overlay else {
            return Ok(None);
        };
        Ok(overlay.read_pieces(offset, len)?.map(|pieces| {
            pieces
                .into_iter()
                .map(|p| ReadPart {
                    skip: p.skip,
                    len: p.len,
                    at: p.place.map(|place| target_of(place, offset + p.skip)),
                })
                .collect()
        }))
    }

    /// The descriptor for I/O to `target` (through the page cache when
    /// `buffered`, or when the disk is not O_DIRECT anyway).
    pub fn fd_for(&self, target: Target, buffered: bool) -> Option<RawFd> {
        match (target, &self.overlay) {
            (Target::Own, _) if buffered => Some(self.buffered.as_raw_fd()),
            (Target::Own, _) => Some(self.file.as_raw_fd()),
            (Target::Base, Some(o)) => Some(o.base_file().as_raw_fd()),
            (Target::Layer(i), Some(o)) => o.layer_file(i).map(AsRawFd::as_raw_fd),
            _ => None,
        }
    }

    /// A FLUSH goes through the format driver (its metadata first).
    pub fn is_overlay(&self) -> bool {
        self.overlay.is_some()
    }

    /// Reads or writes through the overlay's format driver.
    pub fn overlay_io(
        &self,
        write: bool,
        iovecs: &[libc::iovec],
        offset: u64,
    ) -> std::io::Result<()> {
        let Some(overlay) = &self.overlay else {
            return Err(std::io::Error::other("not an overlay"));
        };
        if write {
            let len: u64 = iovecs.iter().map(|v| v.iov_len as u64).sum();
            // The whole clusters in the middle O_DIRECT, the partly written
            // ones at the edges through the page cache (Overlay::write_placed).
            let cluster = overlay.cluster_size();
            let end = offset + len;
            let (first, last) = (offset.next_multiple_of(cluster), end / cluster * cluster);
            if self.direct && first < last && direct_aligned(iovecs) {
                let fd = self.file.as_raw_fd();
                let placed = overlay.write_placed(first, last - first, |at, skip, n| {
                    pwritev_all(fd, &sub_iovecs(iovecs, first - offset + skip, n), at)
                });
                match placed {
                    Ok(()) => {
                        write_buffered(overlay, &sub_iovecs(iovecs, 0, first - offset), offset)?;
                        return write_buffered(
                            overlay,
                            &sub_iovecs(iovecs, last - offset, end - last),
                            last,
                        );
                    }
                    // O_DIRECT refused it (a device with larger sectors):
                    // the page cache below writes it all again.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(e) => return Err(e),
                }
            }
            write_buffered(overlay, iovecs, offset)
        } else {
            // SAFETY: each iovec points into guest memory that stays mapped
            // for the whole call (the worker holds the memory), its length
            // checked when the request was parsed; the buffers are the
            // guest's for this request (device-writable descriptors), nothing
            // else writes them meanwhile.
            let mut bufs: Vec<std::io::IoSliceMut<'_>> = iovecs
                .iter()
                .map(|v| unsafe {
                    std::io::IoSliceMut::new(std::slice::from_raw_parts_mut(
                        v.iov_base.cast::<u8>(),
                        v.iov_len,
                    ))
                })
                .collect();
            overlay.read_vectored(&mut bufs, offset)
        }
    }

    /// The overlay's cluster size in bytes; None for a raw disk.
    pub fn cluster_size(&self) -> Option<u64> {
        self.overlay.as_ref().map(Overlay::cluster_size)
    }

    /// Writes `data` at the guest's `offset` into an overlay's clusters,
    /// all of which it covers whole, up to the disk's end (new ones are
    /// allocated and made visible once their data is written: nothing is
    /// copied up). O_DIRECT when the disk is and `data` lies on sectors.
    pub fn write_whole_clusters(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let Some(overlay) = &self.overlay else {
            return Err(std::io::Error::other("not an overlay"));
        };
        let write = |fd: RawFd| {
            overlay.write_placed(offset, data.len() as u64, |at, skip, n| {
                // The mappings lie within the write, which is `data`.
                let bytes = &data[skip as usize..(skip + n) as usize];
                let iovec = libc::iovec {
                    iov_base: bytes.as_ptr().cast_mut().cast(),
                    iov_len: bytes.len(),
                };
                pwritev_all(fd, &[iovec], at)
            })
        };
        let aligned = direct_aligned(&[libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        }]);
        if self.direct && aligned {
            match write(self.file.as_raw_fd()) {
                // O_DIRECT refused it (a device with larger sectors).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                done => return done,
            }
        }
        write(self.buffered.as_raw_fd())
    }

    /// Reads `buf` at the guest's `offset`, wherever the bytes are (the
    /// disk's file, an overlay's base, or through its layers, part by part
    /// from the files that hold them), past a shorter base's end as zeros:
    /// for callers other than the virtio worker (storaged's NBD server).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let len = buf.len() as u64;
        let parts = match self.place(offset, len, false)? {
            (Target::Overlay, _) => self.read_pieces(offset, len)?,
            (target, at) => Some(vec![ReadPart {
                skip: 0,
                len,
                at: Some((target, at)),
            }]),
        };
        let Some(parts) = parts else {
            return match &self.overlay {
                Some(o) => o.read_vectored(&mut [std::io::IoSliceMut::new(buf)], offset),
                None => Err(std::io::Error::other("not an overlay")),
            };
        };
        for part in parts {
            // The parts lie within the read, which is `buf`.
            let piece = &mut buf[part.skip as usize..(part.skip + part.len) as usize];
            let Some((target, at)) = part.at else {
                piece.fill(0);
                continue;
            };
            let file = match (target, &self.overlay) {
                (Target::Own, _) => Some(&self.buffered),
                (Target::Base, Some(o)) => Some(o.base_file()),
                (Target::Layer(i), Some(o)) => o.layer_file(i),
                _ => None,
            }
            .ok_or_else(|| std::io::Error::other(format!("no file for {target:?}")))?;
            let mut done = 0;
            while done < piece.len() {
                match file.read_at(&mut piece[done..], at + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            piece[done..].fill(0);
        }
        Ok(())
    }

    /// Reads `buf` at the guest's `offset` only if that needs no wait on the
    /// device: a raw disk whose range the page cache holds whole
    /// (`RWF_NOWAIT`). False otherwise (an overlay, data not cached, an
    /// error), `buf` then unspecified: the caller reads with
    /// [`Disk::read_at`] on a thread that may block. An event loop serves
    /// cached reads inline this way.
    pub fn read_cached(&self, buf: &mut [u8], offset: u64) -> bool {
        if self.overlay.is_some() {
            return false;
        }
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::preadv2(
                &self.buffered,
                &mut [std::io::IoSliceMut::new(&mut buf[done..])],
                offset + done as u64,
                rustix::io::ReadWriteFlags::NOWAIT,
            ) {
                // Past the end of the file: zeros, as read_at gives.
                Ok(0) => {
                    buf[done..].fill(0);
                    return true;
                }
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Writes `buf` at the guest's `offset` (an overlay allocates clusters
    /// as needed): as [`Disk::read_at`], for callers other than the worker.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.read_only {
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
        match (self.place(offset, buf.len() as u64, true)?, &self.overlay) {
            ((Target::Own, at), _) => self.buffered.write_all_at(buf, at),
            (_, Some(o)) => o.write_vectored(&[std::io::IoSlice::new(buf)], offset),
            (_, None) => Err(std::io::Error::other("not an overlay")),
        }
    }

    /// Makes completed writes durable: the file's data, and an overlay's
    /// metadata first.
    pub fn flush(&self) -> std::io::Result<()> {
        if let Some(overlay) = &self.overlay {
            return overlay.flush();
        }
        // SAFETY: fdatasync on our own descriptor.
        if unsafe { libc::fdatasync(self.buffered.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// The disk's size in bytes, as the guest sees it now.
    pub fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Acquire)
    }

    pub fn sectors(&self) -> u64 {
        self.capacity() / SECTOR_SIZE
    }

    /// Grows the disk to `size` bytes while the guest may be using it: the
    /// file (thin: the new part reads as zeros) or the overlay's virtual
    /// size first, then the size requests are checked against. Growing to
    /// the current size does nothing; shrinking is refused (the guest's
    /// data would go).
    pub fn grow(&self, size: u64) -> Result<(), GrowError> {
        if self.read_only {
            return Err(GrowError::ReadOnly);
        }
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(GrowError::Unaligned(size));
        }
        let current = self.capacity();
        if size < current {
            return Err(GrowError::Shrink {
                current,
                wanted: size,
            });
        }
        if size == current {
            return Ok(());
        }
        match &self.overlay {
            Some(overlay) => overlay.grow(size)?,
            None if self.buffered.metadata()?.file_type().is_file() => {
                self.buffered.set_len(size)?;
                self.buffered.sync_all()?;
            }
            // A block device's size is its own (an NBD device its host
            // resized): the guest gets it once it is what was asked.
            None => {
                let has = (&self.buffered).seek(SeekFrom::End(0))?;
                if has < size {
                    return Err(GrowError::BlockDevice { has, wanted: size });
                }
            }
        }
        self.capacity.store(size, Ordering::Release);
        Ok(())
    }

    /// Whether the disk takes discard and write-zeroes: a writable raw
    /// file (holes, zeroed ranges) or a writable overlay (freed clusters,
    /// zero clusters).
    pub fn takes_discard(&self) -> bool {
        !self.read_only && (self.fallocate || self.overlay.is_some())
    }

    /// Makes `[offset, offset + len)` read as zeros; safe while other
    /// requests run (an overlay keeps the range's clusters).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        match &self.overlay {
            _ if self.read_only => Err(std::io::Error::from_raw_os_error(libc::EPERM)),
            Some(overlay) => overlay.write_zeroes(offset, len),
            None if self.fallocate => self.fallocate(offset, len, true),
            None => Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
        }
    }

    /// Discards `[offset, offset + len)`, giving its space back where the
    /// disk's own file holds it; it reads as zeros after.
    ///
    /// # Safety
    /// For an overlay, no other request may run on the disk meanwhile, and
    /// no place ([`Disk::place`]) got before may be used after: the freed
    /// clusters go to later writes. (A raw file has no such rule.)
    pub unsafe fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        match &self.overlay {
            _ if self.read_only => Err(std::io::Error::from_raw_os_error(libc::EPERM)),
            // SAFETY: the caller's promise, passed on.
            Some(overlay) => unsafe { overlay.discard(offset, len) },
            None if self.fallocate => self.fallocate(offset, len, false),
            None => Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
        }
    }

    /// Punches a hole (discard) or zeroes a range, keeping the file's size.
    fn fallocate(&self, offset: u64, len: u64, zero: bool) -> std::io::Result<()> {
        fallocate(&self.buffered, offset, len, zero)
    }
}

/// Punches a hole in `file` (or zeroes it, when `zero`) over `[offset,
/// offset + len)`, keeping the file's size: a raw disk's discard and
/// write-zeroes, and an overlay giving freed clusters back.
pub(super) fn fallocate(file: &File, offset: u64, len: u64, zero: bool) -> std::io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "range too large",
        ));
    };
    let mode = libc::FALLOC_FL_KEEP_SIZE
        | if zero {
            libc::FALLOC_FL_ZERO_RANGE
        } else {
            libc::FALLOC_FL_PUNCH_HOLE
        };
    // SAFETY: fallocate on a descriptor `file` keeps open, with plain
    // integer arguments.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes the guest's buffers `iovecs` at its `offset` through the
/// overlay's format driver (the page cache), allocating clusters as needed.
fn write_buffered(overlay: &Overlay, iovecs: &[libc::iovec], offset: u64) -> std::io::Result<()> {
    if iovecs.is_empty() {
        return Ok(());
    }
    // SAFETY: each iovec points into guest memory that stays mapped for the
    // whole call (the worker holds the memory), its length checked when the
    // request was parsed; the slices die with it.
    let bufs: Vec<std::io::IoSlice<'_>> = iovecs
        .iter()
        .map(|v| unsafe {
            std::io::IoSlice::new(std::slice::from_raw_parts(
                v.iov_base as *const u8,
                v.iov_len,
            ))
        })
        .collect();
    overlay.write_vectored(&bufs, offset)
}

/// Whether O_DIRECT takes these buffers: each starts and ends on a sector.
pub fn direct_aligned(iovecs: &[libc::iovec]) -> bool {
    let a = SECTOR_SIZE as usize;
    iovecs
        .iter()
        .all(|v| (v.iov_base as usize).is_multiple_of(a) && v.iov_len.is_multiple_of(a))
}

/// Bytes `[skip, skip + len)` of the buffers `iovecs` describe, as iovecs
/// (shorter when the buffers end first).
pub fn sub_iovecs(iovecs: &[libc::iovec], skip: u64, len: u64) -> Vec<libc::iovec> {
    let (mut skip, mut left) = (skip as usize, len as usize);
    let mut out = Vec::new();
    for v in iovecs {
        if left == 0 {
            break;
        }
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - skip).min(left);
        out.push(libc::iovec {
            iov_base: v.iov_base.cast::<u8>().wrapping_add(skip).cast(),
            iov_len: n,
        });
        (skip, left) = (0, left - n);
    }
    out
}

/// Writes all of `iovecs` at `offset`, going on after short writes.
fn pwritev_all(fd: RawFd, iovecs: &[libc::iovec], offset: u64) -> std::io::Result<()> {
    let len: u64 = iovecs.iter().map(|v| v.iov_len as u64).sum();
    let mut done = 0;
    while done < len {
        match preadv_pwritev(
            fd,
            true,
            &sub_iovecs(iovecs, done, len - done),
            offset + done,
        ) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
    fn sub_iovecs_cut_across_buffers() {
        let (a, b) = ([0u8; 8], [0u8; 8]);
        let v = |s: &[u8]| libc::iovec {
            iov_base: s.as_ptr() as *mut libc::c_void,
            iov_len: s.len(),
        };
        let all = [v(&a), v(&b)];
        let parts = |skip, len| {
            sub_iovecs(&all, skip, len)
                .iter()
                .map(|p| (p.iov_base as usize, p.iov_len))
                .collect::<Vec<_>>()
        };
        let (pa, pb) = (a.as_ptr() as usize, b.as_ptr() as usize);
        assert_eq!(parts(0, 16), [(pa, 8), (pb, 8)]);
        assert_eq!(parts(6, 4), [(pa + 6, 2), (pb, 2)]);
        assert_eq!(parts(8, 3), [(pb, 3)]);
        assert_eq!(parts(12, 100), [(pb + 4, 4)]);
        assert!(parts(16, 4).is_empty());
    }

    #[test]
    fn cached_reads_give_what_read_at_gives_or_decline() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&img, &data).unwrap();
        let disk = Disk::open(&img, None, &[], false, false).unwrap();
        // Just written: in the page cache (tmpfs or not, a fresh write is).
        let mut buf = vec![0xaa; 4096];
        assert!(disk.read_cached(&mut buf, 4096));
        assert_eq!(buf, data[4096..]);
        // An overlay goes through its format driver: always declined.
        let overlay = dir.path().join("top.qcow2");
        crate::virtio::block::qcow2::create_overlay(&overlay, "disk.raw", 8192).unwrap();
        let top = Disk::open(&overlay, Some(&img), &[], false, false).unwrap();
        assert!(!top.read_cached(&mut buf, 0));
        let mut whole = vec![0u8; 4096];
        top.read_at(&mut whole, 0).unwrap();
        assert_eq!(whole, data[..4096]);
    }

    #[test]
    fn opens_raw_images_and_rejects_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        std::fs::write(&img, vec![0u8; 8192]).unwrap();
        let disk = Disk::open(&img, None, &[], false, true).unwrap();
        assert_eq!((disk.capacity(), disk.sectors()), (8192, 16));
        assert!(disk.fallocate);

        let odd = dir.path().join("odd.raw");
        std::fs::write(&odd, vec![0u8; 1000]).unwrap();
        assert!(matches!(
            Disk::open(&odd, None, &[], false, false),
            Err(DiskError::Size { .. })
        ));
        assert!(matches!(
            Disk::open(dir.path(), None, &[], true, false),
            Err(DiskError::NotADisk { .. }) | Err(DiskError::Open { .. })
        ));
        assert!(matches!(
            Disk::open(&dir.path().join("missing"), None, &[], false, false),
            Err(DiskError::Open { .. })
        ));
    }

    #[test]
    fn a_disk_on_descriptors_can_be_an_overlay_over_layers() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n);
        std::fs::write(path("base"), vec![5u8; 1 << 20]).unwrap();
        super::super::qcow2::create_overlay(&path("snap"), "base", 2 << 20).unwrap();
        {
            let snap = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path("snap"))
                .unwrap();
            let o = Overlay::open(&snap, &path("base"), true).unwrap();
            o.write_vectored(&[std::io::IoSlice::new(&[6u8; 4096])], 64 << 10)
                .unwrap();
            o.flush().unwrap();
        }
        super::super::qcow2::create_layer(&path("vol"), "snap", "qcow2", 2 << 20).unwrap();
        let vol = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path("vol"))
            .unwrap();
        let (snap, base) = (
            File::open(path("snap")).unwrap(),
            File::open(path("base")).unwrap(),
        );
        let disk = Disk::from_fds(
            &[vol.as_raw_fd()],
            &[snap.as_raw_fd(), base.as_raw_fd()],
            false,
        )
        .unwrap();
        assert_eq!(disk.capacity(), 2 << 20);
        assert!(disk.is_overlay() && !disk.fallocate);
        // Reads go straight to the file holding the bytes, at any depth.
        assert_eq!(disk.place(0, 4096, false).unwrap(), (Target::Base, 0));
        let (target, _) = disk.place(64 << 10, 4096, false).unwrap();
        assert_eq!(target, Target::Layer(0));
        assert!(disk.fd_for(target, false).is_some());
        let mut buf = vec![0u8; 8192];
        disk.read_at(&mut buf, 62 << 10).unwrap();
        assert!(buf[..2048].iter().all(|b| *b == 5) && buf[2048..6144].iter().all(|b| *b == 6));
        disk.read_at(&mut buf[..4096], 64 << 10).unwrap();
        assert!(buf[..4096].iter().all(|b| *b == 6));
        assert_eq!(disk.place(0, 4096, true).unwrap().0, Target::Overlay);
        // A raw file is no overlay.
        assert!(matches!(
            Disk::from_fds(&[base.as_raw_fd()], &[base.as_raw_fd()], true),
            Err(DiskError::Overlay { .. })
        ));
    }

    #[test]
    fn disks_grow_in_place_and_never_shrink() {
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n);
        std::fs::write(path("raw"), vec![7u8; 8192]).unwrap();
        let raw = Disk::open(&path("raw"), None, &[], false, false).unwrap();
        raw.grow(1 << 20).unwrap();
        assert_eq!(raw.capacity(), 1 << 20);
        let meta = std::fs::metadata(path("raw")).unwrap();
        assert_eq!(meta.len(), 1 << 20);
        // Thin: the new part is a hole.
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 1 << 20);
        raw.grow(1 << 20).unwrap();
        assert!(matches!(raw.grow(4096), Err(GrowError::Shrink { .. })));
        assert!(matches!(
            raw.grow((2 << 20) + 1),
            Err(GrowError::Unaligned(_))
        ));
        assert_eq!(raw.capacity(), 1 << 20);

        let ro = Disk::open(&path("raw"), None, &[], true, false).unwrap();
        assert!(matches!(ro.grow(2 << 20), Err(GrowError::ReadOnly)));

        // An overlay grows its virtual size; its base stays as it was.
        std::fs::write(path("base"), vec![5u8; 1 << 20]).unwrap();
        super::super::qcow2::create_overlay(&path("top"), "base", 1 << 20).unwrap();
        let top = Disk::open(&path("top"), Some(&path("base")), &[], false, false).unwrap();
        top.grow(3 << 20).unwrap();
        assert_eq!(top.capacity(), 3 << 20);
        assert_eq!(std::fs::metadata(path("base")).unwrap().len(), 1 << 20);
        drop(top);
        let again = Disk::open(&path("top"), Some(&path("base")), &[], false, false).unwrap();
        assert_eq!(again.capacity(), 3 << 20);
        // Past the base's end, the grown part reads as zeros.
        let mut buf = vec![1u8; 4096];
        let iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        again.overlay_io(false, &iov, 2 << 20).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }
}
