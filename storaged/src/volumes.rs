//! The local-file backend: each volume is one sparse raw file,
//! `DATA_DIR/volumes/<id>.raw`, thin from the start (only what the guest
//! writes takes space). Every change is made durable before it is
//! answered: a new file is sized and synced under a temporary name, renamed
//! into place, and the directory synced; a growth is synced; a removal
//! syncs the directory. So a crash at any point leaves either the old state
//! or the new one, and the controller's repeat of the call finishes it.
//!
//! Other backends (Ceph RBD, when users bring a cluster) answer the same
//! calls: see ARCHITECTURE.md.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use storaged_proto::{is_volume_id, VolumeInfo, MAX_SIZE_GIB};

const GIB: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0:?} is not a volume id")]
    BadId(String),
    #[error("a volume of {0} GiB: sizes are 1 to {MAX_SIZE_GIB} GiB")]
    BadSize(u64),
    #[error("volume {0} does not exist")]
    NotFound(String),
    #[error("volume {id} exists with {have} GiB, not {want} GiB")]
    Exists { id: String, have: u64, want: u64 },
    #[error("volume {id} has {have} GiB: it cannot shrink to {want} GiB")]
    Shrink { id: String, have: u64, want: u64 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Whether a call made something new or found it done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Made {
    New,
    Existing,
}

/// The volumes under one directory.
pub struct FileBackend {
    dir: PathBuf,
}

impl FileBackend {
    /// The backend over `data_dir` (made if missing); leftovers of creates
    /// a crash interrupted are removed.
    pub fn open(data_dir: &Path) -> Result<FileBackend, VolumeError> {
        let dir = data_dir.join("volumes");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(FileBackend { dir })
    }

    fn path(&self, id: &str) -> Result<PathBuf, VolumeError> {
        if !is_volume_id(id) {
            return Err(VolumeError::BadId(id.to_owned()));
        }
        Ok(self.dir.join(format!("{id}.raw")))
    }

    fn sync_dir(&self) -> Result<(), VolumeError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }

    /// Makes volume `id` of `size_gib`, or finds it made with that size.
    pub fn create(&self, id: &str, size_gib: u64) -> Result<(VolumeInfo, Made), VolumeError> {
        if !(1..=MAX_SIZE_GIB).contains(&size_gib) {
            return Err(VolumeError::BadSize(size_gib));
        }
        let path = self.path(id)?;
        if let Some(info) = self.info(id)? {
            return if info.size_gib == size_gib {
                Ok((info, Made::Existing))
            } else {
                Err(VolumeError::Exists {
                    id: id.to_owned(),
                    have: info.size_gib,
                    want: size_gib,
                })
            };
        }
        let tmp = path.with_extension("tmp");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.set_len(size_gib * GIB).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        self.sync_dir()?;
        let info = self
            .info(id)?
            .ok_or_else(|| VolumeError::NotFound(id.into()))?;
        Ok((info, Made::New))
    }

    /// What volume `id` is, if it exists.
    pub fn info(&self, id: &str) -> Result<Option<VolumeInfo>, VolumeError> {
        let path = self.path(id)?;
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(VolumeInfo {
                id: id.to_owned(),
                size_gib: m.len() / GIB,
                allocated_bytes: m.blocks() * 512,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Grows volume `id` to `size_gib` (already that size: nothing to do).
    pub fn extend(&self, id: &str, size_gib: u64) -> Result<VolumeInfo, VolumeError> {
        if !(1..=MAX_SIZE_GIB).contains(&size_gib) {
            return Err(VolumeError::BadSize(size_gib));
        }
        let path = self.path(id)?;
        let info = self
            .info(id)?
            .ok_or_else(|| VolumeError::NotFound(id.into()))?;
        if info.size_gib > size_gib {
            return Err(VolumeError::Shrink {
                id: id.to_owned(),
                have: info.size_gib,
                want: size_gib,
            });
        }
        if info.size_gib < size_gib {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            file.set_len(size_gib * GIB).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        self.info(id)?
            .ok_or_else(|| VolumeError::NotFound(id.into()))
    }

    /// Removes volume `id`; gone already is fine.
    pub fn delete(&self, id: &str) -> Result<(), VolumeError> {
        let path = self.path(id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The file holding volume `id`, which exists.
    pub fn file(&self, id: &str) -> Result<PathBuf, VolumeError> {
        let path = self.path(id)?;
        if self.info(id)?.is_none() {
            return Err(VolumeError::NotFound(id.to_owned()));
        }
        Ok(path)
    }

    /// Every volume, by id.
    pub fn list(&self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let path = entry.map_err(io_err(&self.dir))?.path();
            let id = match (path.file_stem(), path.extension()) {
                (Some(stem), Some(ext)) if ext == "raw" => stem.to_string_lossy().into_owned(),
                _ => continue,
            };
            if let Some(info) = is_volume_id(&id)
                .then(|| self.info(&id))
                .transpose()?
                .flatten()
            {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// (total, free) bytes of the volumes' filesystem.
    pub fn capacity(&self) -> Result<(u64, u64), VolumeError> {
        let s = rustix::fs::statvfs(&self.dir).map_err(|e| io_err(&self.dir)(e.into()))?;
        Ok((s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "5d3f9a7e-6c1b-4e0a-9f2d-8b7c6a5e4d3c";
    const B: &str = "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d";

    #[test]
    fn volumes_are_thin_files_made_grown_and_removed_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileBackend::open(dir.path()).unwrap();
        let (info, made) = v.create(A, 100).unwrap();
        assert_eq!(made, Made::New);
        assert_eq!(info.size_gib, 100);
        assert!(info.allocated_bytes < 1 << 20, "thin: {info:?}");
        // The same create again finds it; another size is a conflict.
        assert_eq!(v.create(A, 100).unwrap().1, Made::Existing);
        assert!(matches!(
            v.create(A, 5),
            Err(VolumeError::Exists { have: 100, .. })
        ));
        assert_eq!(v.extend(A, 200).unwrap().size_gib, 200);
        assert_eq!(v.extend(A, 200).unwrap().size_gib, 200);
        assert!(matches!(v.extend(A, 1), Err(VolumeError::Shrink { .. })));
        assert!(matches!(v.extend(B, 2), Err(VolumeError::NotFound(_))));
        v.create(B, 1).unwrap();
        let ids: Vec<_> = v.list().unwrap().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, [B, A]);
        v.delete(A).unwrap();
        v.delete(A).unwrap();
        assert_eq!(v.info(A).unwrap(), None);
        let (total, free) = v.capacity().unwrap();
        assert!(total >= free && total > 0);
    }

    #[test]
    fn bad_ids_and_sizes_touch_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileBackend::open(dir.path()).unwrap();
        for id in ["../escape", "", "x"] {
            assert!(matches!(v.create(id, 1), Err(VolumeError::BadId(_))));
            assert!(matches!(v.delete(id), Err(VolumeError::BadId(_))));
        }
        assert!(matches!(v.create(A, 0), Err(VolumeError::BadSize(0))));
        assert!(matches!(
            v.create(A, MAX_SIZE_GIB + 1),
            Err(VolumeError::BadSize(_))
        ));
        assert!(v.list().unwrap().is_empty());
    }

    #[test]
    fn an_interrupted_create_leaves_nothing_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        FileBackend::open(dir.path()).unwrap();
        let tmp = dir.path().join(format!("volumes/{A}.tmp"));
        std::fs::write(&tmp, b"half").unwrap();
        let v = FileBackend::open(dir.path()).unwrap();
        assert!(!tmp.exists());
        assert!(v.list().unwrap().is_empty());
        assert_eq!(v.create(A, 1).unwrap().1, Made::New);
    }
}
