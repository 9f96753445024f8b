//! Copies of disk files that cost what the filesystem lets them cost: blocks
//! shared (`FICLONE`: XFS, btrfs) in constant time, else the data ranges
//! copied inside the kernel (`copy_file_range`), holes kept. Root disks
//! (hostd), volume snapshots and volumes made from images (storaged) start
//! this way.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::io::Errno;

/// How a copy was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cloned {
    /// Blocks shared with the source (copy-on-write by the filesystem).
    Reflinked,
    /// The source's data copied (`bytes` of it), holes kept.
    Copied { bytes: u64 },
}

/// Shares `source`'s blocks with `target` (empty) if the filesystem can;
/// false if it cannot (the target is left empty).
pub fn reflink(source: &File, target: &File) -> io::Result<bool> {
    match rustix::fs::ioctl_ficlone(target, source) {
        Ok(()) => Ok(true),
        // Not a filesystem that shares blocks, or not between these files
        // (some filesystems answer EBADF for that: ioctl_ficlone(2)).
        Err(
            Errno::OPNOTSUPP
            | Errno::XDEV
            | Errno::INVAL
            | Errno::NOTTY
            | Errno::NOSYS
            | Errno::BADF,
        ) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Makes `target` (empty) a copy of the first `len` bytes of `source`:
/// reflinked where the filesystem can, else its data ranges copied (holes
/// stay holes). `target` ends `len` bytes long; it is not synced.
pub fn clone_file(source: &File, target: &File, len: u64) -> io::Result<Cloned> {
    if reflink(source, target)? {
        // A clone is the whole file; the caller asked for `len`.
        target.set_len(len)?;
        return Ok(Cloned::Reflinked);
    }
    let mut bytes = 0;
    for (start, n) in hostd_proto::sparse::data_extents(source, len)? {
        copy_range(source, target, start, n)?;
        bytes += n;
    }
    target.set_len(len)?;
    Ok(Cloned::Copied { bytes })
}

/// Copies `len` bytes at `offset` from `source` to the same place in
/// `target`, in the kernel (which may share blocks or copy server-side).
fn copy_range(source: &File, target: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let (mut from, mut to) = (offset + done, offset + done);
        let chunk = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(source, Some(&mut from), target, Some(&mut to), chunk) {
            Ok(0) => return Err(io::Error::other("the source ended while it was copied")),
            Ok(n) => done += n as u64,
            Err(Errno::INTR) => {}
            // Not between these files (another filesystem, one that
            // cannot): copied through this process instead.
            Err(Errno::XDEV | Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
                return copy_through_buffer(source, target, offset + done, len - done)
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_through_buffer(source: &File, target: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = source.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            return Err(io::Error::other("the source ended while it was copied"));
        }
        target.write_all_at(&buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn a_clone_has_the_sources_data_and_holes_and_the_length_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        let f = File::create(&source).unwrap();
        // Data at 0 and at 64 MiB, a hole between, 80 MiB in all.
        f.write_all_at(&[0xab; 4096], 0).unwrap();
        f.write_all_at(&[0xcd; 8192], 64 << 20).unwrap();
        f.set_len(80 << 20).unwrap();
        drop(f);

        let source = File::open(&source).unwrap();
        let target_path = dir.path().join("target");
        let target = read_write(&target_path);
        let cloned = clone_file(&source, &target, 80 << 20).unwrap();
        if let Cloned::Copied { bytes } = cloned {
            assert!(bytes < 8 << 20, "copied {bytes} bytes of 12 KiB of data");
        }
        let meta = std::fs::metadata(&target_path).unwrap();
        assert_eq!(meta.len(), 80 << 20);
        assert!(meta.blocks() * 512 < 16 << 20, "holes stay holes");
        let read = |at: u64, len: usize| {
            let mut buf = vec![0; len];
            target.read_exact_at(&mut buf, at).unwrap();
            buf
        };
        assert_eq!(read(0, 4096), vec![0xab; 4096]);
        assert_eq!(read(64 << 20, 8192), vec![0xcd; 8192]);
        assert_eq!(read(32 << 20, 4096), vec![0; 4096]);
    }

    #[test]
    fn a_clone_longer_than_its_source_ends_in_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::write(&source, [7u8; 4096]).unwrap();
        let source = File::open(&source).unwrap();
        let target = read_write(&dir.path().join("target"));
        // Past the source's end is a hole: a volume larger than its image.
        assert_eq!(
            clone_file(&source, &target, 8192).unwrap(),
            if reflink_works(dir.path()) {
                Cloned::Reflinked
            } else {
                Cloned::Copied { bytes: 4096 }
            }
        );
        let mut buf = vec![1u8; 8192];
        target.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..4096], &[7u8; 4096][..]);
        assert_eq!(&buf[4096..], &[0u8; 4096][..]);
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

    fn read_write(path: &std::path::Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap()
    }

    fn reflink_works(dir: &std::path::Path) -> bool {
        let a = read_write(&dir.join("probe-a"));
        a.write_all_at(b"x", 0).unwrap();
        let b = read_write(&dir.join("probe-b"));
        reflink(&a, &b).unwrap()
    }
}
