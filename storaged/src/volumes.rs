//! The local-file backend. Under `DATA_DIR`:
//!
//! - `volumes/<id>.raw`: a volume as a sparse raw file, thin from the start
//!   (only what the guest writes takes space);
//! - `volumes/<id>.qcow2`: a volume as a qcow2 overlay over a layer, which
//!   the VMM serves (the volume was snapshotted, or made from a snapshot,
//!   on a filesystem that cannot share blocks);
//! - `layers/<id>.raw|.qcow2`: frozen data, never written again: a
//!   snapshot's, a volume's as it was when a clone was made from it, or an
//!   image's under a volume made from it (a hard link of the image store's
//!   file). A qcow2 layer lies over another layer; its header names it by
//!   id;
//! - `snapshots/<id>`: a snapshot that exists (its volume's id inside).
//!   Deleting a snapshot removes this; its layer goes once nothing lies
//!   over it;
//! - `moving/<id>`: layer `id` was frozen from a volume a VMM on this host
//!   had open, which goes on writing it until the controller has moved it
//!   onto the volume's new files and said so ([`FileBackend::settle`]).
//!
//! Layers that only lie in chains' way are merged away, so that chains
//! stay short however many snapshots come and go: a layer that is no
//! snapshot and has one qcow2 layer right over it (a deleted snapshot
//! under a later one) is absorbed into that layer
//! ([`qcow2::pull_lower`], [`qcow2::set_backing`]), then removed. A raw bottom layer stays;
//! one under a volume waits until the volume is frozen over it again.
//!
//! Snapshots and clones take constant time whatever the size. Where the
//! filesystem shares blocks (`FICLONE`: XFS, btrfs) a raw volume's snapshot
//! or clone is a reflinked raw file and nothing depends on anything. Else
//! (ext4, tmpfs) a snapshot freezes the volume's file as a layer (a hard
//! link, so nothing is copied) and gives the volume a fresh overlay over
//! it; a clone is an overlay over the layer.
//!
//! A file's format is told by its name, never by its contents: a guest can
//! write a qcow2 header into a raw volume. A qcow2 header is ours: guests'
//! writes land in data clusters.
//!
//! Every change is durable before it is answered, and made so that a crash
//! at any point leaves a state that [`FileBackend::open`] tidies and the
//! controller's repeat of the call finishes: new files are made under a
//! `.tmp` name, synced and renamed into place, directories synced.
//!
//! Other backends (Ceph RBD, when users bring a cluster) answer the same
//! calls: see ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use storaged_proto::{
    is_volume_id, Connection, SnapshotInfo, VolumeInfo, VolumeSource, MAX_SIZE_GIB,
};
use virga_imagefile::clone::reflink;
use vmm::virtio::block::qcow2;

const GIB: u64 = 1 << 30;

/// The most files a volume's data may lie across: its own, then its layers
/// and base, as the VMM opens them.
const MAX_CHAIN: usize = qcow2::MAX_LAYERS + 2;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0:?} is not a volume or snapshot id")]
    BadId(String),
    #[error("a volume of {0} GiB: sizes are 1 to {MAX_SIZE_GIB} GiB")]
    BadSize(u64),
    #[error("volume {0} does not exist")]
    NotFound(String),
    #[error("snapshot {0} does not exist")]
    SnapshotNotFound(String),
    #[error("volume {id} exists with {have} GiB, not {want} GiB")]
    Exists { id: String, have: u64, want: u64 },
    #[error("snapshot {id} exists, of volume {volume_id}")]
    SnapshotExists { id: String, volume_id: String },
    #[error("volume {id} has {have} GiB: it cannot shrink to {want} GiB")]
    Shrink { id: String, have: u64, want: u64 },
    #[error("{what} has {have} GiB: a volume made from it needs at least that, not {want} GiB")]
    SmallerThanSource { what: String, have: u64, want: u64 },
    #[error("volume {0} lies over {MAX_CHAIN} files already: no more snapshots or clones of it")]
    TooDeep(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{path}: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Export(#[from] crate::exports::ExportError),
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Raw,
    Qcow2,
}

impl Format {
    fn ext(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// A volume's or layer's file.
#[derive(Clone, Debug)]
struct Image {
    path: PathBuf,
    format: Format,
}

impl Image {
    /// The disk's size in bytes, and the id of the layer under it.
    fn describe(&self) -> Result<(u64, Option<String>), VolumeError> {
        let file = File::open(&self.path).map_err(io_err(&self.path))?;
        match self.format {
            Format::Raw => Ok((file.metadata().map_err(io_err(&self.path))?.len(), None)),
            Format::Qcow2 => {
                let (size, under) = qcow2::describe(&file).map_err(io_err(&self.path))?;
                match under {
                    Some(id) if is_volume_id(&id) => Ok((size, Some(id))),
                    other => Err(VolumeError::Damaged {
                        path: self.path.clone(),
                        reason: format!("a qcow2 volume or layer over {other:?}, not a layer"),
                    }),
                }
            }
        }
    }

    fn size_gib(&self) -> Result<u64, VolumeError> {
        Ok(self.describe()?.0 / GIB)
    }
}

/// The volumes and snapshots under one directory.
pub struct FileBackend {
    volumes: PathBuf,
    layers: PathBuf,
    snapshots: PathBuf,
    moving: PathBuf,
    /// Changes go one at a time: a sweep for unused layers must not meet a
    /// snapshot half made.
    changing: Mutex<()>,
    /// The layers in merges under way, both the one merged and the one it
    /// goes into (the copy runs without `changing`): a layer takes part in
    /// one merge at a time, so the one under a merge's lower layer stays
    /// what its upper layer is made to name.
    merging: Mutex<BTreeSet<String>>,
}

impl FileBackend {
    /// The backend over `data_dir` (made if missing). What a crash left
    /// half made is tidied: temporary files, a raw volume a snapshot had
    /// already replaced, layers nothing needs.
    pub fn open(data_dir: &Path) -> Result<FileBackend, VolumeError> {
        let backend = FileBackend {
            volumes: data_dir.join("volumes"),
            layers: data_dir.join("layers"),
            snapshots: data_dir.join("snapshots"),
            moving: data_dir.join("moving"),
            changing: Mutex::new(()),
            merging: Mutex::new(BTreeSet::new()),
        };
        for dir in [
            &backend.volumes,
            &backend.layers,
            &backend.snapshots,
            &backend.moving,
        ] {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
                let path = entry.map_err(io_err(dir))?.path();
                if path.extension().is_some_and(|e| e == "tmp") {
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
        }
        // A snapshot renames the new overlay into place before it drops the
        // raw name: both there means the overlay won.
        for id in backend.ids(&backend.volumes)? {
            let raw = backend.volumes.join(format!("{id}.raw"));
            if raw.exists() && backend.volumes.join(format!("{id}.qcow2")).exists() {
                std::fs::remove_file(&raw).map_err(io_err(&raw))?;
            }
        }
        backend.sweep_layers()?;
        // Finishes a merge a crash cut short.
        backend.merge_layers()?;
        Ok(backend)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_id(id: &str) -> Result<(), VolumeError> {
        if is_volume_id(id) {
            Ok(())
        } else {
            Err(VolumeError::BadId(id.to_owned()))
        }
    }

    /// The file `id` has in `dir`, if any (an overlay first).
    fn find(dir: &Path, id: &str) -> Result<Option<Image>, VolumeError> {
        Self::check_id(id)?;
        for format in [Format::Qcow2, Format::Raw] {
            let path = dir.join(format!("{id}.{}", format.ext()));
            if path.exists() {
                return Ok(Some(Image { path, format }));
            }
        }
        Ok(None)
    }

    fn volume(&self, id: &str) -> Result<Image, VolumeError> {
        Self::find(&self.volumes, id)?.ok_or_else(|| VolumeError::NotFound(id.to_owned()))
    }

    /// The layers `image` lies over, the one right under it first, down
    /// to a raw base.
    fn chain(&self, image: &Image) -> Result<Vec<Image>, VolumeError> {
        let mut chain = Vec::new();
        let mut under = image.describe()?.1;
        while let Some(id) = under {
            let layer = Self::find(&self.layers, &id)?.ok_or_else(|| VolumeError::Damaged {
                path: image.path.clone(),
                reason: format!("the layer {id} it lies over is missing"),
            })?;
            if chain.len() >= MAX_CHAIN {
                return Err(VolumeError::Damaged {
                    path: image.path.clone(),
                    reason: format!("lies over more than {MAX_CHAIN} layers"),
                });
            }
            under = layer.describe()?.1;
            chain.push(layer);
        }
        Ok(chain)
    }

    fn sync(dir: &Path) -> Result<(), VolumeError> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    }

    /// The ids of the files in `dir` (temporary ones aside).
    fn ids(&self, dir: &Path) -> Result<BTreeSet<String>, VolumeError> {
        let mut ids = BTreeSet::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                continue;
            }
            if let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) {
                if is_volume_id(&stem) {
                    ids.insert(stem);
                }
            }
        }
        Ok(ids)
    }

    /// Makes volume `id` of `size_gib`, blank or from `source`, or finds it
    /// made with that size.
    pub fn create(
        &self,
        id: &str,
        size_gib: u64,
        source: Option<&VolumeSource>,
    ) -> Result<(VolumeInfo, Made), VolumeError> {
        if !(1..=MAX_SIZE_GIB).contains(&size_gib) {
            return Err(VolumeError::BadSize(size_gib));
        }
        let _changing = self.lock();
        if let Some(info) = self.made_already(id, size_gib)? {
            return Ok((info, Made::Existing));
        }
        match source {
            None => {
                let tmp = self.volumes.join(format!("{id}.tmp"));
                let file = create_new(&tmp)?;
                file.set_len(size_gib * GIB).map_err(io_err(&tmp))?;
                self.put_in_place(&tmp, file, id, Format::Raw)?;
            }
            Some(VolumeSource::Snapshot(snap)) => {
                if !self.snapshot_exists(snap)? {
                    return Err(VolumeError::SnapshotNotFound(snap.clone()));
                }
                let layer = Self::find(&self.layers, snap)?
                    .ok_or_else(|| VolumeError::SnapshotNotFound(snap.clone()))?;
                self.check_source_size(&format!("snapshot {snap}"), &layer, size_gib)?;
                self.copy_of(&layer, snap, id, size_gib)?;
            }
            Some(VolumeSource::Image(_)) => {
                return Err(VolumeError::Unsupported(
                    "a volume from an image is fetched, then adopted".into(),
                ))
            }
            Some(VolumeSource::Volume(from)) => {
                let source = self.volume(from)?;
                self.check_source_size(&format!("volume {from}"), &source, size_gib)?;
                if source.format == Format::Raw && self.reflinked(&source, id, size_gib)? {
                    // Done: a raw file of its own.
                } else {
                    // The source's data, frozen under the new volume's id,
                    // is what both go on from.
                    self.freeze(from, id)?;
                    let layer = Self::find(&self.layers, id)?.ok_or_else(|| {
                        VolumeError::NotFound(format!("{from} (frozen for {id})"))
                    })?;
                    self.copy_of(&layer, id, id, size_gib)?;
                }
            }
        }
        let info = self
            .info_of(id)?
            .ok_or_else(|| VolumeError::NotFound(id.into()))?;
        Ok((info, Made::New))
    }

    /// Makes volume `id` of `size_gib` start as the raw disk image `image`
    /// (a file of this host's image store: replaced, never written in
    /// place), in constant time whatever its size. The image becomes the
    /// volume's bottom layer by a hard link, so it stays while the volume
    /// needs it, even after the image is deleted; the volume is a
    /// reflinked copy of it where the filesystem can, else an overlay over
    /// it. `None` (nothing made) when the image is on another filesystem
    /// than the volumes: the caller fetches it then.
    pub fn from_image_file(
        &self,
        id: &str,
        image: &Path,
        size_gib: u64,
    ) -> Result<Option<(VolumeInfo, Made)>, VolumeError> {
        if !(1..=MAX_SIZE_GIB).contains(&size_gib) {
            return Err(VolumeError::BadSize(size_gib));
        }
        Self::check_id(id)?;
        let _changing = self.lock();
        if let Some(info) = self.made_already(id, size_gib)? {
            return Ok(Some((info, Made::Existing)));
        }
        let have = std::fs::metadata(image).map_err(io_err(image))?.len();
        if have > size_gib * GIB {
            return Err(VolumeError::SmallerThanSource {
                what: "the image".into(),
                have: have.div_ceil(GIB),
                want: size_gib,
            });
        }
        // The layer is named after the volume, as a clone's is. One left by
        // a crash before the volume was made is this image's; any other
        // layer of that name is someone's data, never replaced.
        let layer = Image {
            path: self.layers.join(format!("{id}.raw")),
            format: Format::Raw,
        };
        match Self::find(&self.layers, id)? {
            Some(found) if found.format == Format::Raw && same_file(&found.path, image)? => {}
            Some(found) => {
                return Err(VolumeError::Damaged {
                    path: found.path,
                    reason: format!("a layer named after volume {id} is there already"),
                })
            }
            None => match std::fs::hard_link(image, &layer.path) {
                Ok(()) => Self::sync(&self.layers)?,
                Err(e) if e.kind() == io::ErrorKind::CrossesDevices => return Ok(None),
                Err(e) => return Err(io_err(&layer.path)(e)),
            },
        }
        self.copy_of(&layer, id, id, size_gib)?;
        let info = self
            .info_of(id)?
            .ok_or_else(|| VolumeError::NotFound(id.into()))?;
        Ok(Some((info, Made::New)))
    }

    /// Volume `id` if a repeat of its create finds it made, at the size
    /// asked for; another size is a conflict.
    fn made_already(&self, id: &str, size_gib: u64) -> Result<Option<VolumeInfo>, VolumeError> {
        match self.info_of(id)? {
            Some(info) if info.size_gib != size_gib => Err(VolumeError::Exists {
                id: id.to_owned(),
                have: info.size_gib,
                want: size_gib,
            }),
            found => Ok(found),
        }
    }

    /// Where an image a volume is made from is fetched to.
    pub fn fetch_path(&self, id: &str) -> Result<PathBuf, VolumeError> {
        Self::check_id(id)?;
        Ok(self.volumes.join(format!("{id}.image.tmp")))
    }

    /// Makes volume `id` of `size_gib` from the image fetched to `fetched`
    /// (taken: renamed into place, or removed when it cannot be).
    pub fn adopt(
        &self,
        id: &str,
        fetched: &Path,
        size_gib: u64,
    ) -> Result<VolumeInfo, VolumeError> {
        let result = self.adopt_inner(id, fetched, size_gib);
        if result.is_err() {
            let _ = std::fs::remove_file(fetched);
        }
        result
    }

    fn adopt_inner(
        &self,
        id: &str,
        fetched: &Path,
        size_gib: u64,
    ) -> Result<VolumeInfo, VolumeError> {
        if !(1..=MAX_SIZE_GIB).contains(&size_gib) {
            return Err(VolumeError::BadSize(size_gib));
        }
        let _changing = self.lock();
        let file = OpenOptions::new()
            .write(true)
            .open(fetched)
            .map_err(io_err(fetched))?;
        let have = file.metadata().map_err(io_err(fetched))?.len();
        if have > size_gib * GIB {
            return Err(VolumeError::SmallerThanSource {
                what: "the image".into(),
                have: have.div_ceil(GIB),
                want: size_gib,
            });
        }
        file.set_len(size_gib * GIB).map_err(io_err(fetched))?;
        self.put_in_place(fetched, file, id, Format::Raw)?;
        self.info_of(id)?
            .ok_or_else(|| VolumeError::NotFound(id.into()))
    }

    fn check_source_size(&self, what: &str, source: &Image, want: u64) -> Result<(), VolumeError> {
        let have = source.size_gib()?;
        if want < have {
            return Err(VolumeError::SmallerThanSource {
                what: what.to_owned(),
                have,
                want,
            });
        }
        Ok(())
    }

    /// Syncs `file` (at the temporary `tmp`) and renames it into place as
    /// volume `id`.
    fn put_in_place(
        &self,
        tmp: &Path,
        file: File,
        id: &str,
        format: Format,
    ) -> Result<(), VolumeError> {
        file.sync_all().map_err(io_err(tmp))?;
        let path = self.volumes.join(format!("{id}.{}", format.ext()));
        std::fs::rename(tmp, &path).map_err(io_err(&path))?;
        Self::sync(&self.volumes)
    }

    /// Makes volume `id` a raw copy of `source` sharing its blocks, if the
    /// filesystem can; false (and nothing made) if it cannot.
    fn reflinked(&self, source: &Image, id: &str, size_gib: u64) -> Result<bool, VolumeError> {
        let tmp = self.volumes.join(format!("{id}.tmp"));
        let file = create_new(&tmp)?;
        let from = File::open(&source.path).map_err(io_err(&source.path))?;
        if !reflink(&from, &file).map_err(io_err(&tmp))? {
            drop(file);
            std::fs::remove_file(&tmp).map_err(io_err(&tmp))?;
            return Ok(false);
        }
        let size = size_gib * GIB;
        if file.metadata().map_err(io_err(&tmp))?.len() < size {
            file.set_len(size).map_err(io_err(&tmp))?;
        }
        self.put_in_place(&tmp, file, id, Format::Raw)?;
        Ok(true)
    }

    /// Makes volume `id` start as `layer` (named `layer_id`): a reflinked
    /// copy of a raw layer where the filesystem can, else an overlay.
    fn copy_of(
        &self,
        layer: &Image,
        layer_id: &str,
        id: &str,
        size_gib: u64,
    ) -> Result<(), VolumeError> {
        if layer.format == Format::Raw && self.reflinked(layer, id, size_gib)? {
            return Ok(());
        }
        if self.chain(layer)?.len() + 2 > MAX_CHAIN {
            return Err(VolumeError::TooDeep(id.to_owned()));
        }
        let tmp = self.volumes.join(format!("{id}.qcow2.tmp"));
        qcow2::create_layer(&tmp, layer_id, layer.format.ext(), size_gib * GIB)
            .map_err(io_err(&tmp))?;
        let file = File::open(&tmp).map_err(io_err(&tmp))?;
        self.put_in_place(&tmp, file, id, Format::Qcow2)
    }

    /// Freezes volume `volume_id`'s data as it is now as layer `layer_id`,
    /// without copying it: the volume's file becomes the layer (a hard
    /// link) and the volume a new overlay over it. Repeating it after a
    /// crash finishes it; once done, it is done.
    fn freeze(&self, volume_id: &str, layer_id: &str) -> Result<(), VolumeError> {
        let volume = self.volume(volume_id)?;
        let layer_path = self
            .layers
            .join(format!("{layer_id}.{}", volume.format.ext()));
        match Self::find(&self.layers, layer_id)? {
            Some(layer) if !same_file(&layer.path, &volume.path)? => return Ok(()),
            Some(_) => {} // linked before a crash: go on
            None => {
                if self.chain(&volume)?.len() + 2 > MAX_CHAIN {
                    return Err(VolumeError::TooDeep(volume_id.to_owned()));
                }
                std::fs::hard_link(&volume.path, &layer_path).map_err(io_err(&layer_path))?;
                Self::sync(&self.layers)?;
            }
        }
        let size = volume.describe()?.0;
        let tmp = self.volumes.join(format!("{volume_id}.qcow2.tmp"));
        qcow2::create_layer(&tmp, layer_id, volume.format.ext(), size).map_err(io_err(&tmp))?;
        let file = File::open(&tmp).map_err(io_err(&tmp))?;
        self.put_in_place(&tmp, file, volume_id, Format::Qcow2)?;
        if volume.format == Format::Raw {
            std::fs::remove_file(&volume.path).map_err(io_err(&volume.path))?;
            Self::sync(&self.volumes)?;
        }
        Ok(())
    }

    /// Takes snapshot `id` of volume `volume_id`: its data as it is now.
    /// `in_use`: a VMM on this host has the volume open and goes on writing
    /// its old file until it is moved: the layer is not merged until
    /// [`FileBackend::settle`].
    pub fn snapshot(
        &self,
        id: &str,
        volume_id: &str,
        in_use: bool,
    ) -> Result<(SnapshotInfo, Made), VolumeError> {
        Self::check_id(id)?;
        let _changing = self.lock();
        if let Some(info) = self.snapshot_info_of(id)? {
            return if info.volume_id == volume_id {
                Ok((info, Made::Existing))
            } else {
                Err(VolumeError::SnapshotExists {
                    id: id.to_owned(),
                    volume_id: info.volume_id,
                })
            };
        }
        let volume = self.volume(volume_id)?;
        if in_use {
            // Before the freeze: a crash after it must find the mark.
            let mark = self.moving.join(id);
            File::create(&mark)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&mark))?;
            Self::sync(&self.moving)?;
        }
        let made_raw = volume.format == Format::Raw && Self::find(&self.layers, id)?.is_none() && {
            let tmp = self.layers.join(format!("{id}.tmp"));
            let file = create_new(&tmp)?;
            let from = File::open(&volume.path).map_err(io_err(&volume.path))?;
            if reflink(&from, &file).map_err(io_err(&tmp))? {
                file.sync_all().map_err(io_err(&tmp))?;
                let path = self.layers.join(format!("{id}.raw"));
                std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
                Self::sync(&self.layers)?;
                true
            } else {
                drop(file);
                std::fs::remove_file(&tmp).map_err(io_err(&tmp))?;
                false
            }
        };
        if !made_raw {
            self.freeze(volume_id, id)?;
        }
        let tmp = self.snapshots.join(format!("{id}.tmp"));
        std::fs::write(&tmp, volume_id).map_err(io_err(&tmp))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        let marker = self.snapshots.join(id);
        std::fs::rename(&tmp, &marker).map_err(io_err(&marker))?;
        Self::sync(&self.snapshots)?;
        let info = self
            .snapshot_info_of(id)?
            .ok_or_else(|| VolumeError::SnapshotNotFound(id.to_owned()))?;
        Ok((info, Made::New))
    }

    fn snapshot_exists(&self, id: &str) -> Result<bool, VolumeError> {
        Self::check_id(id)?;
        Ok(self.snapshots.join(id).exists())
    }

    fn snapshot_info_of(&self, id: &str) -> Result<Option<SnapshotInfo>, VolumeError> {
        if !self.snapshot_exists(id)? {
            return Ok(None);
        }
        let marker = self.snapshots.join(id);
        let volume_id = std::fs::read_to_string(&marker).map_err(io_err(&marker))?;
        let layer = Self::find(&self.layers, id)?.ok_or_else(|| VolumeError::Damaged {
            path: marker.clone(),
            reason: "a snapshot without its layer".into(),
        })?;
        Ok(Some(SnapshotInfo {
            id: id.to_owned(),
            volume_id,
            size_gib: layer.size_gib()?,
        }))
    }

    /// What snapshot `id` is, if it exists.
    pub fn snapshot_info(&self, id: &str) -> Result<Option<SnapshotInfo>, VolumeError> {
        let _changing = self.lock();
        self.snapshot_info_of(id)
    }

    /// Removes snapshot `id`; gone already is fine. Its data stays while a
    /// volume made from it needs it.
    pub fn delete_snapshot(&self, id: &str) -> Result<(), VolumeError> {
        Self::check_id(id)?;
        let _changing = self.lock();
        let marker = self.snapshots.join(id);
        match std::fs::remove_file(&marker) {
            Ok(()) => Self::sync(&self.snapshots)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&marker)(e)),
        }
        self.sweep_layers()?;
        drop(_changing);
        self.merge_layers()
    }

    /// Says that the VMM that had snapshot `id`'s volume open has moved
    /// onto the volume's new files: the layer is written no more, and may
    /// be merged. Said already (or never needed) is fine.
    pub fn settle(&self, id: &str) -> Result<(), VolumeError> {
        Self::check_id(id)?;
        let _changing = self.lock();
        let mark = self.moving.join(id);
        match std::fs::remove_file(&mark) {
            Ok(()) => Self::sync(&self.moving)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&mark)(e)),
        }
        drop(_changing);
        self.merge_layers()
    }

    /// What lies right over each layer: (id, whether it is a layer).
    fn tops_of_layers(&self) -> Result<BTreeMap<String, Vec<(String, bool)>>, VolumeError> {
        let mut over: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
        for (dir, is_layer) in [(&self.volumes, false), (&self.layers, true)] {
            for id in self.ids(dir)? {
                if let Some(image) = Self::find(dir, &id)? {
                    if let Some(under) = image.describe()?.1 {
                        over.entry(under).or_default().push((id, is_layer));
                    }
                }
            }
        }
        Ok(over)
    }

    /// The next layer to merge into the one right over it (see the
    /// module's doc), with both, unless it is in `skip` or being merged.
    fn next_merge(
        &self,
        skip: &BTreeSet<String>,
    ) -> Result<Option<(String, Image, Image)>, VolumeError> {
        let snapshots = self.ids(&self.snapshots)?;
        let moving = self.ids(&self.moving)?;
        let merging = self.merging.lock().unwrap_or_else(|e| e.into_inner());
        for (lower, tops) in self.tops_of_layers()? {
            let [(upper, true)] = tops.as_slice() else {
                continue;
            };
            if snapshots.contains(&lower)
                || moving.contains(&lower)
                || moving.contains(upper)
                || skip.contains(&lower)
                || merging.contains(&lower)
                || merging.contains(upper)
            {
                continue;
            }
            if let (Some(l), Some(u)) = (
                Self::find(&self.layers, &lower)?,
                Self::find(&self.layers, upper)?,
            ) {
                if l.format == Format::Qcow2 && u.format == Format::Qcow2 {
                    return Ok(Some((lower, l, u)));
                }
            }
        }
        Ok(None)
    }

    /// Merges away the layers that only lie in chains' way, one at a time.
    /// Each is picked under the lock, copied into the layer over it without
    /// it (other calls go on meanwhile: a merge copies a layer's data), and
    /// finished under it. A merge that fails is logged and left: the
    /// chain stays as it was, whole.
    fn merge_layers(&self) -> Result<(), VolumeError> {
        let mut skip = BTreeSet::new();
        loop {
            let next = {
                let _changing = self.lock();
                let next = self.next_merge(&skip)?;
                if let Some((id, _, upper)) = &next {
                    let mut merging = self.merging.lock().unwrap_or_else(|e| e.into_inner());
                    merging.insert(id.clone());
                    merging.insert(stem(&upper.path));
                }
                next
            };
            let Some((id, lower, upper)) = next else {
                return Ok(());
            };
            let merged = self.absorb(&id, &upper, &lower);
            {
                let mut merging = self.merging.lock().unwrap_or_else(|e| e.into_inner());
                merging.remove(&id);
                merging.remove(&stem(&upper.path));
            }
            match merged {
                Ok(true) => {
                    tracing::info!(layer = id, into = %upper.path.display(), "layer merged");
                }
                Ok(false) => {
                    skip.insert(id);
                }
                Err(e) => {
                    tracing::warn!(layer = id, "merging a layer into the one over it: {e}");
                    skip.insert(id);
                }
            }
        }
    }

    /// Merges layer `lower` (`lower_id`) into `upper`, the one layer right
    /// over it; false if that changed meanwhile. Called without the lock.
    /// Neither file is written by anyone else: `upper` is a layer no VMM
    /// writes, `lower` is frozen; both stay while `upper` names `lower`
    /// (and if `upper` goes meanwhile, what was copied goes with it).
    fn absorb(&self, lower_id: &str, upper: &Image, lower: &Image) -> Result<bool, VolumeError> {
        let mut under = self.chain(lower)?;
        let base = match under.pop() {
            Some(base) if base.format == Format::Raw => base,
            _ => {
                return Err(VolumeError::Damaged {
                    path: lower.path.clone(),
                    reason: "a qcow2 layer whose chain does not end in a raw layer".into(),
                })
            }
        };
        // What `upper` lies over from now on, named by its id like every
        // layer.
        let right_under = under.first().unwrap_or(&base);
        let backing_name = stem(&right_under.path);
        let open = |i: &Image| File::open(&i.path).map_err(io_err(&i.path));
        let layers = under.iter().map(open).collect::<Result<Vec<_>, _>>()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&upper.path)
            .map_err(io_err(&upper.path))?;
        qcow2::pull_lower(&file, open(lower)?, layers, open(&base)?)
            .map_err(io_err(&upper.path))?;
        let _changing = self.lock();
        // Still the pair it was, over what it was (`upper` may have gone:
        // its snapshot deleted, nothing over it).
        let still = |image: &Image, under: &str| -> Result<bool, VolumeError> {
            Ok(match Self::find(&self.layers, &stem(&image.path))? {
                Some(now) => now.path == image.path && now.describe()?.1.as_deref() == Some(under),
                None => false,
            })
        };
        if !still(upper, lower_id)? || !still(lower, &backing_name)? {
            return Ok(false);
        }
        qcow2::set_backing(&file, &backing_name, right_under.format.ext())
            .map_err(io_err(&upper.path))?;
        self.sweep_layers()?;
        Ok(true)
    }

    /// Removes the layers no snapshot is and no volume or kept layer lies
    /// over.
    fn sweep_layers(&self) -> Result<(), VolumeError> {
        let mut keep = self.ids(&self.snapshots)?;
        let tops = self
            .ids(&self.volumes)?
            .into_iter()
            .map(|id| Self::find(&self.volumes, &id))
            .chain(
                keep.clone()
                    .into_iter()
                    .map(|id| Self::find(&self.layers, &id)),
            )
            .collect::<Result<Vec<_>, _>>()?;
        for top in tops.into_iter().flatten() {
            for layer in self.chain(&top)? {
                if let Some(id) = layer.path.file_stem() {
                    keep.insert(id.to_string_lossy().into_owned());
                }
            }
        }
        let mut removed = false;
        for id in self.ids(&self.layers)? {
            if keep.contains(&id) {
                continue;
            }
            while let Some(layer) = Self::find(&self.layers, &id)? {
                std::fs::remove_file(&layer.path).map_err(io_err(&layer.path))?;
                removed = true;
            }
        }
        if removed {
            Self::sync(&self.layers)?;
        }
        // Marks of layers gone (or of snapshots never taken).
        let layers = self.ids(&self.layers)?;
        for id in self.ids(&self.moving)?.difference(&layers) {
            let mark = self.moving.join(id);
            std::fs::remove_file(&mark).map_err(io_err(&mark))?;
        }
        Ok(())
    }

    fn info_of(&self, id: &str) -> Result<Option<VolumeInfo>, VolumeError> {
        let Some(image) = Self::find(&self.volumes, id)? else {
            return Ok(None);
        };
        let meta = std::fs::metadata(&image.path).map_err(io_err(&image.path))?;
        Ok(Some(VolumeInfo {
            id: id.to_owned(),
            size_gib: image.size_gib()?,
            allocated_bytes: meta.blocks() * 512,
        }))
    }

    /// What volume `id` is, if it exists.
    pub fn info(&self, id: &str) -> Result<Option<VolumeInfo>, VolumeError> {
        let _changing = self.lock();
        self.info_of(id)
    }

    /// Grows volume `id` to `size_gib` (already that size: nothing to do).
    pub fn extend(&self, id: &str, size_gib: u64) -> Result<VolumeInfo, VolumeError> {
        if !(1..=MAX_SIZE_GIB).contains(&size_gib) {
            return Err(VolumeError::BadSize(size_gib));
        }
        let _changing = self.lock();
        let volume = self.volume(id)?;
        let have = volume.size_gib()?;
        if have > size_gib {
            return Err(VolumeError::Shrink {
                id: id.to_owned(),
                have,
                want: size_gib,
            });
        }
        if have < size_gib {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&volume.path)
                .map_err(io_err(&volume.path))?;
            match volume.format {
                Format::Raw => file.set_len(size_gib * GIB),
                Format::Qcow2 => qcow2::grow_file(&file, size_gib * GIB),
            }
            .and_then(|()| file.sync_all())
            .map_err(io_err(&volume.path))?;
        }
        self.info_of(id)?
            .ok_or_else(|| VolumeError::NotFound(id.into()))
    }

    /// Removes volume `id` (and the layers only it needed); gone already
    /// is fine.
    pub fn delete(&self, id: &str) -> Result<(), VolumeError> {
        Self::check_id(id)?;
        let _changing = self.lock();
        let mut removed = false;
        while let Some(image) = Self::find(&self.volumes, id)? {
            std::fs::remove_file(&image.path).map_err(io_err(&image.path))?;
            removed = true;
        }
        if removed {
            Self::sync(&self.volumes)?;
        }
        self.sweep_layers()?;
        drop(_changing);
        self.merge_layers()
    }

    /// The files holding volume `id`, which exists, as a host opens them.
    pub fn files(&self, id: &str) -> Result<Connection, VolumeError> {
        let _changing = self.lock();
        let volume = self.volume(id)?;
        let backing = self
            .chain(&volume)?
            .into_iter()
            .map(|l| l.path.display().to_string())
            .collect();
        Ok(Connection {
            path: volume.path.display().to_string(),
            backing,
            nbd: None,
        })
    }

    /// Every volume, by id.
    pub fn list(&self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let _changing = self.lock();
        let mut out = Vec::new();
        for id in self.ids(&self.volumes)? {
            if let Some(info) = self.info_of(&id)? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// (total, free) bytes of the volumes' filesystem.
    pub fn capacity(&self) -> Result<(u64, u64), VolumeError> {
        let s = rustix::fs::statvfs(&self.volumes).map_err(|e| io_err(&self.volumes)(e.into()))?;
        Ok((s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize))
    }
}

/// A volume's or layer's id: its file's name without the format.
fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn create_new(path: &Path) -> Result<File, VolumeError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path))
}

fn same_file(a: &Path, b: &Path) -> Result<bool, VolumeError> {
    let (ma, mb) = (
        std::fs::metadata(a).map_err(io_err(a))?,
        std::fs::metadata(b).map_err(io_err(b))?,
    );
    Ok(ma.dev() == mb.dev() && ma.ino() == mb.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    const A: &str = "5d3f9a7e-6c1b-4e0a-9f2d-8b7c6a5e4d3c";
    const B: &str = "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d";
    const C: &str = "1b2c3d4e-5f60-4718-8293-a4b5c6d7e8f9";
    const S1: &str = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a";
    const S2: &str = "2a3b4c5d-6e7f-4809-9a1b-2c3d4e5f6a7b";

    /// Reads or writes a volume as a guest would, through the VMM's disk.
    fn disk(v: &FileBackend, id: &str) -> vmm::virtio::block::disk::Disk {
        let c = v.files(id).unwrap();
        let layers: Vec<PathBuf> = c.backing.iter().map(PathBuf::from).collect();
        let (base, layers) = match layers.split_last() {
            Some((base, layers)) => (Some(base.clone()), layers.to_vec()),
            None => (None, Vec::new()),
        };
        vmm::virtio::block::disk::Disk::open(
            Path::new(&c.path),
            base.as_deref(),
            &layers,
            false,
            false,
        )
        .unwrap()
    }

    fn write(v: &FileBackend, id: &str, offset: u64, data: &[u8]) {
        let d = disk(v, id);
        let iov = [libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        }];
        if d.is_overlay() {
            d.overlay_io(true, &iov, offset).unwrap();
        } else {
            let f = OpenOptions::new()
                .write(true)
                .open(v.files(id).unwrap().path)
                .unwrap();
            f.write_all_at(data, offset).unwrap();
        }
        d.flush().unwrap();
    }

    fn read(v: &FileBackend, id: &str, offset: u64, len: usize) -> Vec<u8> {
        let d = disk(v, id);
        let mut buf = vec![0u8; len];
        let iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: len,
        }];
        if d.is_overlay() {
            d.overlay_io(false, &iov, offset).unwrap();
        } else {
            File::open(v.files(id).unwrap().path)
                .unwrap()
                .read_exact_at(&mut buf, offset)
                .unwrap();
        }
        buf
    }

    fn layer_count(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("layers")).unwrap().count()
    }

    #[test]
    fn volumes_are_thin_files_made_grown_and_removed_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileBackend::open(dir.path()).unwrap();
        let (info, made) = v.create(A, 100, None).unwrap();
        assert_eq!(made, Made::New);
        assert_eq!(info.size_gib, 100);
        assert!(info.allocated_bytes < 1 << 20, "thin: {info:?}");
        // The same create again finds it; another size is a conflict.
        assert_eq!(v.create(A, 100, None).unwrap().1, Made::Existing);
        assert!(matches!(
            v.create(A, 5, None),
            Err(VolumeError::Exists { have: 100, .. })
        ));
        assert_eq!(v.extend(A, 200).unwrap().size_gib, 200);
        assert_eq!(v.extend(A, 200).unwrap().size_gib, 200);
        assert!(matches!(v.extend(A, 1), Err(VolumeError::Shrink { .. })));
        assert!(matches!(v.extend(B, 2), Err(VolumeError::NotFound(_))));
        v.create(B, 1, None).unwrap();
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
            assert!(matches!(v.create(id, 1, None), Err(VolumeError::BadId(_))));
            assert!(matches!(v.delete(id), Err(VolumeError::BadId(_))));
            assert!(matches!(
                v.snapshot(id, A, false),
                Err(VolumeError::BadId(_))
            ));
            assert!(matches!(v.delete_snapshot(id), Err(VolumeError::BadId(_))));
        }
        assert!(matches!(v.create(A, 0, None), Err(VolumeError::BadSize(0))));
        assert!(matches!(
            v.create(A, MAX_SIZE_GIB + 1, None),
            Err(VolumeError::BadSize(_))
        ));
        assert!(matches!(
            v.snapshot(S1, A, false),
            Err(VolumeError::NotFound(_))
        ));
        let from = |s: &str| Some(VolumeSource::Snapshot(s.to_owned()));
        assert!(matches!(
            v.create(B, 1, from(S1).as_ref()),
            Err(VolumeError::SnapshotNotFound(_))
        ));
        assert!(matches!(
            v.create(B, 1, Some(&VolumeSource::Volume(A.into()))),
            Err(VolumeError::NotFound(_))
        ));
        assert!(v.list().unwrap().is_empty());
        assert_eq!(layer_count(dir.path()), 0);
    }

    #[test]
    fn snapshots_and_clones_hold_the_data_of_their_time_and_outlive_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileBackend::open(dir.path()).unwrap();
        v.create(A, 2, None).unwrap();
        write(&v, A, 4096, b"before the snapshot");
        assert_eq!(v.snapshot(S1, A, false).unwrap().1, Made::New);
        let (again, made) = v.snapshot(S1, A, false).unwrap();
        assert_eq!(
            (made, again.volume_id.as_str(), again.size_gib),
            (Made::Existing, A, 2)
        );
        assert!(matches!(
            v.snapshot(S1, B, false),
            Err(VolumeError::SnapshotExists { .. })
        ));
        write(&v, A, 4096, b"after the snapshot!");
        write(&v, A, 1 << 30, b"far");

        // A volume from the snapshot: the data of its time, bigger if asked.
        let snap = Some(VolumeSource::Snapshot(S1.into()));
        assert!(matches!(
            v.create(B, 1, snap.as_ref()),
            Err(VolumeError::SmallerThanSource { have: 2, .. })
        ));
        assert_eq!(v.create(B, 3, snap.as_ref()).unwrap().0.size_gib, 3);
        assert_eq!(read(&v, B, 4096, 19), b"before the snapshot");
        assert_eq!(read(&v, B, 1 << 30, 3), [0, 0, 0]);
        // A volume from the volume: its data now.
        v.create(C, 2, Some(&VolumeSource::Volume(A.into())))
            .unwrap();
        assert_eq!(read(&v, C, 4096, 19), b"after the snapshot!");
        assert_eq!(read(&v, C, 1 << 30, 3), b"far");
        // Each goes on on its own.
        write(&v, C, 4096, b"the clone's own");
        write(&v, B, 4096, b"the other's own");
        assert_eq!(read(&v, A, 4096, 19), b"after the snapshot!");
        assert_eq!(read(&v, B, 4096, 15), b"the other's own");

        // A second snapshot of the same volume, and the first deleted: what
        // the volumes made from it read stays.
        v.snapshot(S2, A, false).unwrap();
        v.delete_snapshot(S1).unwrap();
        v.delete_snapshot(S1).unwrap();
        assert_eq!(v.snapshot_info(S1).unwrap(), None);
        assert!(matches!(
            v.create("7c6b5a49-3827-4165-9504-f3e2d1c0b9a8", 3, snap.as_ref()),
            Err(VolumeError::SnapshotNotFound(_))
        ));
        assert_eq!(read(&v, B, 0, 4096), vec![0u8; 4096]);
        assert_eq!(read(&v, A, 4096, 19), b"after the snapshot!");
        // A restart keeps what is needed.
        drop(v);
        let v = FileBackend::open(dir.path()).unwrap();
        assert_eq!(read(&v, C, 4096, 15), b"the clone's own");
        assert_eq!(v.snapshot_info(S2).unwrap().unwrap().volume_id, A);

        // Once nothing lies over them, layers go; the volumes' data stays.
        for id in [B, C, A] {
            v.delete(id).unwrap();
        }
        // S2 lay over A as frozen for C, over S1's layer: the frozen A,
        // now under S2 alone, was merged into it; S1's raw layer stays.
        assert_eq!(layer_count(dir.path()), 2);
        assert_eq!(
            v.files(B).unwrap_err().to_string(),
            format!("volume {B} does not exist")
        );
        let s2 = Some(VolumeSource::Snapshot(S2.into()));
        v.create(B, 2, s2.as_ref()).unwrap();
        assert_eq!(read(&v, B, 4096, 19), b"after the snapshot!");
        v.delete(B).unwrap();
        v.delete_snapshot(S2).unwrap();
        assert_eq!(layer_count(dir.path()), 0);
    }

    #[test]
    fn snapshots_and_clones_take_constant_time_and_space_whatever_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileBackend::open(dir.path()).unwrap();
        for (id, snap, clone, gib) in [
            (A, S1, B, 1),
            (C, S2, "3c4d5e6f-7a8b-49c0-8d1e-2f3a4b5c6d7e", 10_000),
        ] {
            v.create(id, gib, None).unwrap();
            write(&v, id, 0, &[7u8; 65536]);
            let started = std::time::Instant::now();
            v.snapshot(snap, id, false).unwrap();
            v.create(clone, gib, Some(&VolumeSource::Snapshot(snap.into())))
                .unwrap();
            assert!(started.elapsed() < std::time::Duration::from_secs(2));
            assert!(v.info(clone).unwrap().unwrap().allocated_bytes < 1 << 20);
            assert_eq!(read(&v, clone, 0, 65536), vec![7u8; 65536]);
        }
    }

    /// A volume from an image this host holds: made in constant time over
    /// the image's own file (not a whole number of GiB), its data the
    /// image's and then zeros; its writes leave the image alone, and it
    /// outlives the image; deleting it leaves no layer behind.
    #[test]
    fn a_volume_from_an_image_file_lies_over_it_and_outlives_it() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileBackend::open(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        let image = dir.path().join("images/debian.raw");
        let f = File::create(&image).unwrap();
        f.write_all_at(&[0x5a; 2 << 20], 4096).unwrap();
        f.write_all_at(b"boot sector", 0).unwrap();
        f.write_all_at(b"root fs", (3 << 20) + 5).unwrap();
        let image_len = (3 << 20) + 12;
        drop(f);

        let started = std::time::Instant::now();
        let (info, made) = v.from_image_file(A, &image, 2).unwrap().unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!((info.size_gib, made), (2, Made::New));
        if !v.files(A).unwrap().backing.is_empty() {
            // An overlay (no reflink here) over the image's own file: its
            // 2 MiB not copied.
            assert!(info.allocated_bytes < 1 << 20, "nothing copied: {info:?}");
            let layer = dir.path().join(format!("layers/{A}.raw"));
            assert!(same_file(&layer, &image).unwrap(), "the image's file");
        }
        assert_eq!(read(&v, A, 4096, 4096), vec![0x5a; 4096]);
        assert_eq!(read(&v, A, 0, 11), b"boot sector");
        assert_eq!(read(&v, A, (3 << 20) + 5, 7), b"root fs");
        assert_eq!(
            read(&v, A, image_len, 4096),
            vec![0; 4096],
            "past the image"
        );
        assert_eq!(read(&v, A, (2 << 30) - 4096, 4096), vec![0; 4096]);
        // Asked again (the controller repeats itself): the same volume.
        let (_, again) = v.from_image_file(A, &image, 2).unwrap().unwrap();
        assert_eq!(again, Made::Existing);
        assert!(matches!(
            v.from_image_file(A, &image, 3),
            Err(VolumeError::Exists { .. })
        ));

        write(&v, A, 0, b"BOOT");
        assert_eq!(read(&v, A, 0, 11), b"BOOT sector");
        assert_eq!(&std::fs::read(&image).unwrap()[..11], b"boot sector");
        std::fs::remove_file(&image).unwrap();
        assert_eq!(
            read(&v, A, (3 << 20) + 5, 7),
            b"root fs",
            "the image deleted"
        );
        // A snapshot and a clone of it, as of any volume.
        v.snapshot(S1, A, false).unwrap();
        v.create(B, 2, Some(&VolumeSource::Snapshot(S1.into())))
            .unwrap();
        assert_eq!(read(&v, B, 0, 11), b"BOOT sector");
        for id in [A, B] {
            v.delete(id).unwrap();
        }
        v.delete_snapshot(S1).unwrap();
        assert_eq!(layer_count(dir.path()), 0);

        // Too small for the image, or a bad size: nothing made.
        let big = dir.path().join("images/big.raw");
        File::create(&big).unwrap().set_len(GIB + 1).unwrap();
        assert!(matches!(
            v.from_image_file(C, &big, 1),
            Err(VolumeError::SmallerThanSource {
                have: 2,
                want: 1,
                ..
            })
        ));
        assert!(matches!(
            v.from_image_file(C, &big, 0),
            Err(VolumeError::BadSize(0))
        ));
        assert!(v.info(C).unwrap().is_none());
        assert_eq!(layer_count(dir.path()), 0);
    }

    #[test]
    fn a_chain_too_deep_for_the_vmm_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileBackend::open(dir.path()).unwrap();
        v.create(A, 1, None).unwrap();
        let id = |n: usize| format!("00000000-0000-4000-8000-{n:012}");
        let mut n = 0;
        let refused = loop {
            n += 1;
            match v.snapshot(&id(n), A, false) {
                Ok(_) => assert!(n <= qcow2::MAX_LAYERS + 1),
                Err(e) => break e,
            }
        };
        assert!(matches!(refused, VolumeError::TooDeep(_)), "{refused}");
        assert_eq!(n, qcow2::MAX_LAYERS + 2);
        // What is there still opens in the VMM.
        write(&v, A, 0, b"deep");
        assert_eq!(read(&v, A, 0, 4), b"deep");
        assert_eq!(v.files(A).unwrap().backing.len(), qcow2::MAX_LAYERS + 1);
    }

    #[test]
    fn rolling_snapshots_keep_the_chain_short_and_every_snapshot_whole() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileBackend::open(dir.path()).unwrap();
        v.create(A, 1, None).unwrap();
        let id = |n: usize| format!("00000000-0000-4000-8000-{n:012}");
        // A snapshot a round, the three newest kept, for more rounds than
        // a chain can be deep; each round writes its number at an offset
        // of its own and over a shared block.
        let rounds = qcow2::MAX_LAYERS + 10;
        for n in 1..=rounds {
            let mark = format!("round {n:04}");
            write(&v, A, (n as u64) << 16, mark.as_bytes());
            write(&v, A, 0, mark.as_bytes());
            v.snapshot(&id(n), A, false).unwrap();
            if n > 3 {
                v.delete_snapshot(&id(n - 3)).unwrap();
            }
            // A volume over the deleted snapshots' successors, a raw
            // bottom layer and the three kept.
            assert!(v.files(A).unwrap().backing.len() <= 5, "round {n}");
        }
        assert!(layer_count(dir.path()) <= 5);
        // Each kept snapshot reads what the volume held when it was taken.
        for n in rounds - 2..=rounds {
            let clone = format!("10000000-0000-4000-8000-{n:012}");
            v.create(&clone, 1, Some(&VolumeSource::Snapshot(id(n))))
                .unwrap();
            assert_eq!(read(&v, &clone, 0, 10), format!("round {n:04}").as_bytes());
            for m in [1, n / 2, n] {
                assert_eq!(
                    read(&v, &clone, (m as u64) << 16, 10),
                    format!("round {m:04}").as_bytes()
                );
            }
            assert_eq!(read(&v, &clone, ((n + 1) as u64) << 16, 10), [0; 10]);
        }
        // A restart finds it all whole.
        drop(v);
        let v = FileBackend::open(dir.path()).unwrap();
        assert_eq!(read(&v, A, 0, 10), format!("round {rounds:04}").as_bytes());
    }

    #[test]
    fn merges_run_beside_other_calls_and_every_snapshot_stays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let v = std::sync::Arc::new(FileBackend::open(dir.path()).unwrap());
        // Two volumes snapshotted round after round on two threads, the
        // oldest of three deleted each round (a merge), while a third
        // thread makes volumes from the kept snapshots and reads them.
        let id = |vol: usize, n: usize| format!("00000000-0000-4000-8{vol:03}-{n:012}");
        let rounds = 12;
        let workers: Vec<_> = [A, B]
            .into_iter()
            .enumerate()
            .map(|(k, vol)| {
                let v = std::sync::Arc::clone(&v);
                std::thread::spawn(move || {
                    v.create(vol, 1, None).unwrap();
                    for n in 1..=rounds {
                        write(
                            &v,
                            vol,
                            (n as u64) << 20,
                            format!("{k} round {n:04}").as_bytes(),
                        );
                        v.snapshot(&id(k, n), vol, false).unwrap();
                        if n > 3 {
                            v.delete_snapshot(&id(k, n - 3)).unwrap();
                        }
                    }
                })
            })
            .collect();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (v, done) = (std::sync::Arc::clone(&v), std::sync::Arc::clone(&done));
            std::thread::spawn(move || {
                let mut made = 0;
                let mut round = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) || made < 4 {
                    round += 1;
                    let k = round % 2;
                    // A kept snapshot: the newest one there is.
                    let Some(n) = (1..=rounds)
                        .rev()
                        .find(|&n| v.snapshot_info(&id(k, n)).unwrap().is_some())
                    else {
                        continue;
                    };
                    let clone = format!("20000000-0000-4000-8000-{round:012}");
                    match v.create(&clone, 1, Some(&VolumeSource::Snapshot(id(k, n)))) {
                        Ok(_) => {}
                        // Deleted since: the next round takes another.
                        Err(VolumeError::SnapshotNotFound(_)) => continue,
                        Err(e) => panic!("{e}"),
                    }
                    for m in 1..=n {
                        assert_eq!(
                            read(&v, &clone, (m as u64) << 20, 12),
                            format!("{k} round {m:04}").as_bytes()
                        );
                    }
                    v.delete(&clone).unwrap();
                    made += 1;
                }
                made
            })
        };
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() >= 4);
        for (k, vol) in [A, B].into_iter().enumerate() {
            assert!(v.files(vol).unwrap().backing.len() <= 5);
            assert_eq!(
                read(&v, vol, (rounds as u64) << 20, 12),
                format!("{k} round {rounds:04}").as_bytes()
            );
        }
    }

    #[test]
    fn a_layer_a_vmm_may_still_write_is_merged_only_once_settled() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileBackend::open(dir.path()).unwrap();
        v.create(A, 1, None).unwrap();
        write(&v, A, 0, b"one");
        v.snapshot(S1, A, false).unwrap();
        write(&v, A, 0, b"two");
        v.snapshot(S2, A, false).unwrap();
        // C is taken with A in use: A's VMM goes on writing what became
        // C's layer until it is moved. S2 deleted: its layer stays under
        // C's.
        v.snapshot(C, A, true).unwrap();
        assert!(v.files(A).unwrap().backing[0].contains(C));
        v.delete_snapshot(S2).unwrap();
        assert_eq!(v.files(A).unwrap().backing.len(), 3);
        drop(v);
        let v = FileBackend::open(dir.path()).unwrap();
        assert_eq!(v.files(A).unwrap().backing.len(), 3, "nor at a restart");
        // Moved: S2's layer is merged into C's.
        v.settle(C).unwrap();
        v.settle(C).unwrap();
        let backing = v.files(A).unwrap().backing;
        assert_eq!(backing.len(), 2);
        assert!(!backing.iter().any(|p| p.contains(S2)));
        assert!(!dir.path().join(format!("moving/{C}")).exists());
        v.create(B, 1, Some(&VolumeSource::Snapshot(C.into())))
            .unwrap();
        assert_eq!(read(&v, B, 0, 3), b"two");
        v.create(
            "3c4d5e6f-7a8b-49c0-8d1e-2f3a4b5c6d7e",
            1,
            Some(&VolumeSource::Snapshot(S1.into())),
        )
        .unwrap();
        assert_eq!(
            read(&v, "3c4d5e6f-7a8b-49c0-8d1e-2f3a4b5c6d7e", 0, 3),
            b"one"
        );
    }

    #[test]
    fn what_a_crash_left_half_made_is_tidied_or_finished() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileBackend::open(dir.path()).unwrap();
        v.create(A, 1, None).unwrap();
        write(&v, A, 0, b"data");
        let raw = dir.path().join(format!("volumes/{A}.raw"));
        // A snapshot cut off after the volume's file was linked as its layer.
        std::fs::hard_link(&raw, dir.path().join(format!("layers/{S1}.raw"))).unwrap();
        drop(v);
        let v = FileBackend::open(dir.path()).unwrap();
        assert_eq!(layer_count(dir.path()), 0, "a layer nothing needs");
        // The same, repeated rather than restarted: finished.
        std::fs::hard_link(&raw, dir.path().join(format!("layers/{S1}.raw"))).unwrap();
        v.snapshot(S1, A, false).unwrap();
        write(&v, A, 0, b"DATA");
        v.create(B, 1, Some(&VolumeSource::Snapshot(S1.into())))
            .unwrap();
        assert_eq!(read(&v, B, 0, 4), b"data");
        // Cut off after the overlay took the volume's place, before the raw
        // name went.
        std::fs::hard_link(dir.path().join(format!("layers/{S1}.raw")), &raw).unwrap();
        // And a half-made create.
        std::fs::write(dir.path().join(format!("volumes/{C}.tmp")), b"half").unwrap();
        drop(v);
        let v = FileBackend::open(dir.path()).unwrap();
        assert!(!raw.exists());
        assert_eq!(read(&v, A, 0, 4), b"DATA");
        let ids: Vec<_> = v.list().unwrap().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, [B, A]);
        assert_eq!(v.create(C, 1, None).unwrap().1, Made::New);
    }
}
