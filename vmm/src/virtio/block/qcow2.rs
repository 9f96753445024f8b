//! qcow2 overlays: a server's writable root disk as a qcow2 file over the
//! host's cached raw image, where the filesystem cannot share blocks (ext4),
//! so that hostd makes a root disk in constant time whatever the image size.
//!
//! The overlay's metadata (L1/L2 tables, refcounts) is imago's; the data
//! path is ours: a request that falls in one place, a cluster of the overlay
//! already written or the base where the overlay has nothing, goes to that
//! file through the block worker's io_uring like a raw disk's. First writes
//! to clusters are synchronous: imago allocates whole ones and the caller
//! writes their data ([`Overlay::write_placed`]); the block worker copies
//! up a partly written one itself (reading what lies under it), or, at the
//! edges of a large write, imago does.
//! A read across differently mapped clusters is split into parts, one per
//! run in one file (or of zeros), which the worker reads all at once
//! ([`Overlay::read_pieces`]); only compressed clusters are read through
//! imago.
//!
//! The overlay is opened with `DenyImplicitOpenGate`: no file it names (a
//! backing file, an external data file) is ever opened; the base is the one
//! hostd chose, opened here read-only.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder, Mapping,
    ShallowMapping, Storage, StorageOpenOptions,
};

type Backing = Arc<FormatAccess<imago::file::File>>;

/// Where the bytes of a request are, when they are all in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// In the overlay file, at this offset.
    Overlay(u64),
    /// In the base (for reads only), at this offset.
    Base(u64),
    /// In the read-only layer of this index (0 right under the overlay),
    /// at this offset of its file (for reads only).
    Layer(usize, u64),
    /// Anywhere else: served through imago.
    Mixed,
}

/// The most pieces [`Overlay::read_pieces`] splits a read into (a 1 MiB
/// read over 64 KiB clusters falls in at most 17).
pub const MAX_READ_PIECES: usize = 64;

/// One part of a read: `len` bytes, `skip` bytes into the read, at `place`
/// (`Overlay`, `Base` or `Layer`), or zeros where `place` is None.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPiece {
    pub skip: u64,
    pub len: u64,
    pub place: Option<Place>,
}

impl ReadPiece {
    /// Whether a run at `place`, `skip` bytes into the read, carries on
    /// where this piece ends in the same file (or in zeros).
    fn follows(&self, place: Option<Place>, skip: u64) -> bool {
        if skip != self.skip + self.len {
            return false;
        }
        match (self.place, place) {
            (None, None) => true,
            (Some(Place::Overlay(a)), Some(Place::Overlay(b)))
            | (Some(Place::Base(a)), Some(Place::Base(b))) => a + self.len == b,
            (Some(Place::Layer(i, a)), Some(Place::Layer(j, b))) => i == j && a + self.len == b,
            _ => false,
        }
    }
}

/// Makes `path` an empty qcow2 overlay of `size` bytes over a raw image
/// (`base_name` is recorded in the header for tools; never opened from it).
pub fn create_overlay(path: &Path, base_name: &str, size: u64) -> io::Result<()> {
    create_layer(path, base_name, "raw", size)
}

/// Makes `path` an empty qcow2 overlay of `size` bytes over an image of
/// `backing_format` ("raw" or "qcow2") named `backing_name` in its header,
/// for tools: whoever opens it says what is under it.
pub fn create_layer(
    path: &Path,
    backing_name: &str,
    backing_format: &str,
    size: u64,
) -> io::Result<()> {
    let file = imago::file::File::try_from(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?,
    )?;
    Qcow2::<imago::file::File>::create_builder(file)
        .size(size)
        .cluster_size(64 << 10)
        .backing(backing_name.to_owned(), backing_format.to_owned())
        .create()?;
    File::open(path)?.sync_all()
}

/// The most read-only qcow2 layers between an overlay and its base (a
/// volume's snapshots, each one a layer until storaged flattens them).
pub const MAX_LAYERS: usize = 32;

/// What a qcow2 file says of itself: the disk's size, and the name its
/// header gives what lies under it. Nothing under it is opened.
pub fn describe(file: &File) -> io::Result<(u64, Option<String>)> {
    let qcow2 =
        Qcow2::<imago::file::File>::builder(imago::file::File::try_from(file.try_clone()?)?)
            .write(false)
            .backing(None)
            .open(DenyImplicitOpenGate::default())?;
    let backing = qcow2.implicit_backing_file().cloned();
    Ok((FormatAccess::new(qcow2).size(), backing))
}

/// Grows the qcow2 disk in `file` (opened read-write) to `size` bytes, the
/// new part reading as zeros, without opening what lies under it; never
/// shrinks it.
pub fn grow_file(file: &File, size: u64) -> io::Result<()> {
    let qcow2 =
        Qcow2::<imago::file::File>::builder(imago::file::File::try_from(file.try_clone()?)?)
            .write(true)
            .backing(None)
            .open(DenyImplicitOpenGate::default())?;
    let access = FormatAccess::new(qcow2);
    if size > access.size() {
        access.resize_grow(size, imago::format::PreallocateMode::Zero)?;
    }
    access.flush()?;
    access.sync()
}

/// An open overlay over its base, through any read-only qcow2 layers
/// between them.
pub struct Overlay {
    access: FormatAccess<imago::file::File>,
    /// The overlay's own file, where a discard punches holes.
    file: File,
    /// Read through the page cache even when the overlay is O_DIRECT: every
    /// overlay over the image shares it, and their reads share its pages.
    base: File,
    base_len: u64,
    /// The read-only layers between the overlay and the base, top first:
    /// what they hold is read from their files directly, as the base's is.
    layers: Vec<File>,
    /// The overlay's cluster size in bytes.
    cluster_size: u64,
}

impl Overlay {
    /// `overlay` is the overlay file opened through the page cache (imago's
    /// metadata I/O goes through it); `base` the raw image, read-only.
    pub fn open(overlay: &File, base: &Path, writable: bool) -> io::Result<Self> {
        Self::open_chain(overlay, Vec::new(), File::open(base)?, writable)
    }

    /// An overlay over `layers` (read-only qcow2 files, the one right under
    /// the overlay first) over the raw `base`. Each layer is read through
    /// the one under it; none of the names their headers hold is followed.
    pub fn open_chain(
        overlay: &File,
        layers: Vec<File>,
        base: File,
        writable: bool,
    ) -> io::Result<Self> {
        if layers.len() > MAX_LAYERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} layers; at most {MAX_LAYERS}", layers.len()),
            ));
        }
        let base_len = base.metadata()?.len();
        let layer_files = layers
            .iter()
            .map(File::try_clone)
            .collect::<io::Result<Vec<_>>>()?;
        let backing = read_only_chain(layers, base.try_clone()?)?;
        let qcow2 = Qcow2::<imago::file::File, Backing>::builder(imago::file::File::try_from(
            overlay.try_clone()?,
        )?)
        .write(writable)
        .backing(Some(backing))
        .open(DenyImplicitOpenGate::default())?;
        // imago keeps it to itself; its open checked the header, whose
        // field this is (a power of two between 512 B and 2 MiB).
        let mut cluster_bits = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(overlay, &mut cluster_bits, 20)?;
        Ok(Overlay {
            access: FormatAccess::new(qcow2),
            file: overlay.try_clone()?,
            base,
            base_len,
            layers: layer_files,
            cluster_size: 1 << u32::from_be_bytes(cluster_bits).min(21),
        })
    }

    /// The disk's size as the guest sees it.
    pub fn size(&self) -> u64 {
        self.access.size()
    }

    /// The overlay's cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    /// The base, for reads of ranges the overlay has not written.
    pub fn base_file(&self) -> &File {
        &self.base
    }

    /// The read-only layer `index` (0 right under the overlay), for reads
    /// of what it holds.
    pub fn layer_file(&self, index: usize) -> Option<&File> {
        self.layers.get(index)
    }

    /// Where `[offset, offset + len)` is, if in one place that a read (or a
    /// write, when `write`) can go to directly.
    pub fn place(&self, offset: u64, len: u64, write: bool) -> io::Result<Place> {
        let (mapping, mapped) = self.access.get_shallow_mapping(offset, len)?;
        if mapped < len {
            return Ok(Place::Mixed);
        }
        Ok(match mapping {
            ShallowMapping::Raw {
                offset, writable, ..
            } if writable || !write => Place::Overlay(offset),
            // Right over the base, what the overlay does not hold is at the
            // same offset in the base: no need to follow any table.
            ShallowMapping::Indirect { offset, .. } if !write && self.layers.is_empty() => {
                if self.in_base(offset, len) {
                    Place::Base(offset)
                } else {
                    Place::Mixed
                }
            }
            ShallowMapping::Indirect { .. } if !write => self.place_below(offset, len)?,
            _ => Place::Mixed,
        })
    }

    /// Where a read the overlay does not hold lies under it: in one layer's
    /// file or in the base, followed down through the layers' tables.
    /// What the layers and the base read never changes (storaged's merge
    /// only adds clusters to a layer holding the bytes it already read
    /// through, and the layer merged away stays open here), so a place
    /// stays right while the overlay is open.
    fn place_below(&self, offset: u64, len: u64) -> io::Result<Place> {
        let (mapping, mapped) = self.access.get_mapping(offset, len)?;
        if mapped < len {
            return Ok(Place::Mixed);
        }
        let Mapping::Raw {
            storage, offset, ..
        } = mapping
        else {
            return Ok(Place::Mixed);
        };
        Ok(
            match storage.get_filename().as_deref().and_then(chain_member) {
                Some(ChainMember::Layer(i)) if i < self.layers.len() => Place::Layer(i, offset),
                Some(ChainMember::Base) if self.in_base(offset, len) => Place::Base(offset),
                _ => Place::Mixed,
            },
        )
    }

    /// Where each part of the read `[offset, offset + len)` lies, when the
    /// parts lie in different places (clusters of the overlay, of layers,
    /// of the base, and zeros): one [`ReadPiece`] per run, in order, so the
    /// caller reads them all at once from their files. None when some part
    /// can be read only through imago (a compressed cluster), or when the
    /// read falls in more than [`MAX_READ_PIECES`] runs.
    /// A piece stays right while the overlay is open, as a place does.
    pub fn read_pieces(&self, offset: u64, len: u64) -> io::Result<Option<Vec<ReadPiece>>> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read range overflows"))?;
        let mut pieces: Vec<ReadPiece> = Vec::new();
        let mut at = offset;
        while at < end {
            let (mapping, n) = self.access.get_mapping(at, end - at)?;
            // Past the disk's end (never asked by the block worker): zeros.
            let n = if n == 0 { end - at } else { n.min(end - at) };
            let place = match mapping {
                Mapping::Zero { .. } | Mapping::Eof { .. } => None,
                Mapping::Raw {
                    storage, offset, ..
                } => match storage.get_filename().as_deref().map(chain_member) {
                    // Only the overlay's own file has no name.
                    None => Some(Place::Overlay(offset)),
                    Some(Some(ChainMember::Layer(i))) if i < self.layers.len() => {
                        Some(Place::Layer(i, offset))
                    }
                    Some(Some(ChainMember::Base)) if self.in_base(offset, n) => {
                        Some(Place::Base(offset))
                    }
                    Some(_) => return Ok(None),
                },
                _ => return Ok(None),
            };
            let skip = at - offset;
            match pieces.last_mut() {
                Some(last) if last.follows(place, skip) => last.len += n,
                _ => {
                    if pieces.len() == MAX_READ_PIECES {
                        return Ok(None);
                    }
                    pieces.push(ReadPiece {
                        skip,
                        len: n,
                        place,
                    });
                }
            }
            at += n;
        }
        Ok(Some(pieces))
    }

    fn in_base(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|e| e <= self.base_len)
    }

    /// Reads `bufs` from the disk at `offset`, wherever the bytes are.
    pub fn read_vectored(&self, bufs: &mut [io::IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let mut vector = imago::io_buffers::IoVectorMut::with_capacity(bufs.len());
        for b in bufs.iter_mut() {
            vector.push_ioslice(io::IoSliceMut::new(&mut b[..]));
        }
        self.access.readv(vector, offset)
    }

    /// Writes `bufs` to the disk at `offset`, allocating clusters as needed.
    pub fn write_vectored(&self, bufs: &[io::IoSlice<'_>], offset: u64) -> io::Result<()> {
        let mut vector = imago::io_buffers::IoVector::with_capacity(bufs.len());
        for b in bufs {
            vector.push_ioslice(io::IoSlice::new(&b[..]));
        }
        self.access.writev(vector, offset)
    }

    /// Writes `len` bytes at the guest's `offset` as [`Overlay::write_vectored`]
    /// does, except that the data itself is written by
    /// `write_data(file_offset, skip, n)`: bytes `[skip, skip + n)` of the
    /// request, to the overlay's own file at `file_offset`. imago allocates
    /// the clusters (and copies up from below whatever the write leaves of
    /// a partly written one); a new cluster becomes visible only once its
    /// data is written, and goes back if `write_data` fails. So the caller
    /// can write whole clusters' data O_DIRECT, as QEMU does with
    /// `cache=none`: a first write then dirties no page cache (buffered,
    /// 1 MiB writes once took up to a second each in the testbed's L1 over
    /// a snapshot layer). Not for partly written clusters: imago copies
    /// their rest through the page cache, and O_DIRECT beside that in one
    /// cluster made 4 KiB first writes 20 times slower.
    ///
    /// Other I/O on the overlay waits while `write_data` runs (imago holds
    /// the L2 table meanwhile).
    pub fn write_placed(
        &self,
        offset: u64,
        len: u64,
        mut write_data: impl FnMut(u64, u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut done = 0;
        while done < len {
            // Without an external data file (refused at open: the gate
            // opens nothing) every mapping is in the overlay's own file.
            let mapping = self
                .access
                .prepare_data_mapping(offset + done, len - done, true)?;
            let (at, n) = (mapping.offset(), mapping.length());
            write_data(at, done, n)?;
            self.access.commit_data_mapping(mapping)?;
            done += n;
        }
        Ok(())
    }

    /// Whether the disk has data (the overlay's or the base's) at `offset`,
    /// and for how many bytes (at most `max`) that stays so; 0 at the end.
    pub fn data_at(&self, offset: u64, max: u64) -> io::Result<(bool, u64)> {
        let (mapping, len) = self.access.get_mapping(offset, max)?;
        let data = !matches!(mapping, Mapping::Zero { .. } | Mapping::Eof { .. });
        Ok((data, len))
    }

    /// Makes `[offset, offset + len)` read as zeros, keeping its clusters
    /// (qcow2 zero clusters where whole, zeros written at the edges): every
    /// place handed out before stays the range's, so requests may run.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.access.write_zeroes(offset, len)
    }

    /// Discards `[offset, offset + len)`: it reads as zeros from now on,
    /// the clusters the overlay held there are freed and their space goes
    /// back to the filesystem (holes punched where it can). What the
    /// layers under the overlay hold stays theirs: a snapshot keeps its
    /// data.
    ///
    /// # Safety
    /// No request may run on the overlay meanwhile, and no place
    /// ([`Overlay::place`]) got before may be used after: freed clusters
    /// go to later writes (imago's own rule for its discard).
    pub unsafe fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset.checked_add(len).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "discard range overflows")
        })?;
        let mut at = offset;
        // Piece by piece, each punched as soon as it is freed: a later
        // piece's discard may allocate a table, possibly in a cluster freed
        // before, which must not be punched after.
        while at < end {
            let (mapping, n) = self.access.get_shallow_mapping(at, end - at)?;
            if n == 0 {
                break;
            }
            let own = match mapping {
                ShallowMapping::Raw {
                    offset,
                    writable: true,
                    ..
                } => Some(offset),
                _ => None,
            };
            // SAFETY: the caller holds every request and place off.
            unsafe { self.access.discard_to_zero_unsafe(at, n)? };
            if let Some(host) = own {
                punch_hole(&self.file, host, n)?;
            }
            at += n;
        }
        Ok(())
    }

    /// Grows the disk to `size` bytes (never shrinks it); the new part
    /// reads as zeros.
    pub fn grow(&self, size: u64) -> io::Result<()> {
        if size > self.size() {
            self.access
                .resize_grow(size, imago::format::PreallocateMode::Zero)?;
        }
        self.flush()
    }

    /// Metadata written back, then the file synced (a guest's FLUSH, and
    /// what a pause or a stop leaves on disk).
    pub fn flush(&self) -> io::Result<()> {
        self.access.flush()?;
        self.access.sync()
    }
}

/// Which file of a chain an imago storage object is: each is opened under
/// a name that says (never a path: no file is opened by name).
#[derive(Debug, PartialEq, Eq)]
enum ChainMember {
    Layer(usize),
    Base,
}

const LAYER_NAME: &str = "virga-chain-layer-";
const BASE_NAME: &str = "virga-chain-base";

fn chain_member(name: &Path) -> Option<ChainMember> {
    let name = name.to_str()?;
    if name == BASE_NAME {
        return Some(ChainMember::Base);
    }
    name.strip_prefix(LAYER_NAME)?
        .parse()
        .ok()
        .map(ChainMember::Layer)
}

/// `file` (opened read-only, through the page cache) as imago's storage,
/// named for [`chain_member`].
fn chain_storage(file: File, name: String) -> io::Result<imago::file::File> {
    imago::file::File::from_open_file(file, StorageOpenOptions::new().filename(name))
}

/// `layers` (read-only qcow2 files, the top one first) over the raw
/// `base`, each read through the one under it.
fn read_only_chain(layers: Vec<File>, base: File) -> io::Result<Backing> {
    let raw = Raw::builder(chain_storage(base, BASE_NAME.to_owned())?)
        .open(DenyImplicitOpenGate::default())?;
    let mut backing: Backing = Arc::new(FormatAccess::new(raw));
    for (i, layer) in layers.into_iter().enumerate().rev() {
        let qcow2 = Qcow2::<imago::file::File, Backing>::builder(chain_storage(
            layer,
            format!("{LAYER_NAME}{i}"),
        )?)
        .write(false)
        .backing(Some(backing))
        .open(DenyImplicitOpenGate::default())?;
        backing = Arc::new(FormatAccess::new(qcow2));
    }
    Ok(backing)
}

/// How much of a layer [`pull_lower`] copies at once.
const PULL_CHUNK: u64 = 1 << 20;

/// The data half of merging the qcow2 layer `lower` into the qcow2 layer
/// `upper` that lies right over it (the other half is [`set_backing`],
/// naming what lay under `lower`): what `lower` itself holds where `upper`
/// holds nothing is copied into `upper` (`lower`'s zeros as zero
/// clusters), and `upper` is synced. `lower` lies over `lower_layers` (top
/// first) over the raw `base`, all opened read-only.
///
/// What `upper` reads, over `lower` or (after [`set_backing`]) over what
/// lay under it, stays the same. Readers holding the old chain open may
/// read all along: a cluster added to `upper` holds what they read
/// through it from `lower` anyway, and they still have `lower` open.
/// Nobody else may write `upper` meanwhile. Repeating it copies nothing
/// more.
pub fn pull_lower(
    upper: &File,
    lower: File,
    lower_layers: Vec<File>,
    base: File,
) -> io::Result<()> {
    let under = read_only_chain(lower_layers, base)?;
    let lower = Qcow2::<imago::file::File, Backing>::builder(imago::file::File::try_from(lower)?)
        .write(false)
        .backing(Some(under))
        .open(DenyImplicitOpenGate::default())?;
    let lower: Backing = Arc::new(FormatAccess::new(lower));
    let access = FormatAccess::new(
        Qcow2::<imago::file::File, Backing>::builder(imago::file::File::try_from(
            upper.try_clone()?,
        )?)
        .write(true)
        .backing(Some(Arc::clone(&lower)))
        .open(DenyImplicitOpenGate::default())?,
    );
    let size = access.size();
    let mut buf = Vec::new();
    let mut at = 0;
    while at < size {
        let (mapping, n) = access.get_shallow_mapping(at, size - at)?;
        if n == 0 {
            break;
        }
        if matches!(mapping, ShallowMapping::Indirect { .. }) {
            copy_own_clusters(&lower, &access, at, at + n, &mut buf)?;
        }
        at += n;
    }
    access.flush()?;
    access.sync()
}

/// Copies what `lower` itself holds in `[from, to)` into `upper` (which
/// holds nothing there).
fn copy_own_clusters(
    lower: &FormatAccess<imago::file::File>,
    upper: &FormatAccess<imago::file::File>,
    from: u64,
    to: u64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let (mapping, n) = lower.get_shallow_mapping(at, (to - at).min(PULL_CHUNK))?;
        match mapping {
            ShallowMapping::Eof { .. } => break,
            _ if n == 0 => break,
            // Under `lower`: stays under `upper` too.
            ShallowMapping::Indirect { .. } => {}
            // Zeros `lower` says itself: what lies under it must not show.
            ShallowMapping::Zero { .. } => upper.write_zeroes(at, n)?,
            // Data (raw, or compressed in a file some tool wrote).
            _ => {
                // n <= PULL_CHUNK, which fits in usize.
                buf.resize(n as usize, 0);
                lower.read(&mut buf[..], at)?;
                upper.write(&buf[..], at)?;
            }
        }
        at += n;
    }
    Ok(())
}

/// qcow2's header extension naming the backing file's format.
const BACKING_FORMAT_EXTENSION: u32 = 0xE279_2ACA;

/// Makes the qcow2 header of `file` name `name` (of `format`) as the file
/// under it, in one write of the header's cluster prefix, then syncs it.
/// The name must fit where the old one starts, within the header's
/// cluster, and the format in the old format's padded length (both hold
/// for a layer id and "raw"/"qcow2").
pub fn set_backing(file: &File, name: &str, format: &str) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut head = [0u8; 104];
    file.read_exact_at(&mut head, 0)?;
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    if head[..4] != *b"QFI\xfb" || be32(&head, 4) != 3 {
        return Err(bad("not a qcow2 v3 file".into()));
    }
    let name_at = u64::from_be_bytes(head[8..16].try_into().unwrap_or_default());
    let old_len = be32(&head, 16) as u64;
    let cluster = 1u64 << be32(&head, 20).min(21);
    let header_len = be32(&head, 100) as u64;
    let name_end = name_at
        .checked_add(name.len().max(old_len as usize) as u64)
        .filter(|&end| name_at >= header_len && end <= cluster)
        .ok_or_else(|| bad(format!("a backing name at {name_at} cannot take {name:?}")))?;
    // name_end <= cluster <= 2 MiB: fits in usize.
    let mut header = vec![0u8; name_end as usize];
    file.read_exact_at(&mut header, 0)?;
    // The header extensions, from the header's end to the name.
    let mut at = header_len as usize;
    while at + 8 <= name_at as usize {
        let (kind, len) = (be32(&header, at), be32(&header, at + 4) as usize);
        if kind == 0 {
            break;
        }
        let padded = len.next_multiple_of(8);
        if kind == BACKING_FORMAT_EXTENSION {
            if format.len().next_multiple_of(8) != padded || at + 8 + padded > name_at as usize {
                return Err(bad(format!("a backing format {format:?} does not fit")));
            }
            header[at + 4..at + 8].copy_from_slice(&(format.len() as u32).to_be_bytes());
            let data = &mut header[at + 8..at + 8 + padded];
            data.fill(0);
            data[..format.len()].copy_from_slice(format.as_bytes());
        }
        at += 8 + padded;
    }
    header[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
    let name_at = name_at as usize;
    header[name_at..].fill(0);
    header[name_at..name_at + name.len()].copy_from_slice(name.as_bytes());
    file.write_all_at(&header, 0)?;
    file.sync_all()
}

/// Gives `[offset, offset + len)` of `file` back to its filesystem (it
/// reads as zeros); nothing where the filesystem cannot.
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    match super::disk::fallocate(file, offset, len, false) {
        // The clusters are free and reused by later writes all the same.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
        other => other,
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!("flushing a qcow2 overlay on close: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path, base: &Path, writable: bool) -> Overlay {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .unwrap();
        Overlay::open(&file, base, writable).unwrap()
    }

    /// A file opened to read and write.
    fn rw(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    fn read(disk: &Overlay, len: usize, offset: u64) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        disk.read_vectored(&mut [io::IoSliceMut::new(&mut buf)], offset)
            .unwrap();
        buf
    }

    #[test]
    fn an_overlay_reads_its_base_and_keeps_its_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let pattern: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
        std::fs::write(&base, &pattern).unwrap();
        let overlay = dir.path().join("root.qcow2");
        create_overlay(&overlay, "base.raw", 8 << 30).unwrap();
        // Constant size whatever the disk's: a few clusters of metadata.
        assert!(std::fs::metadata(&overlay).unwrap().len() < 1 << 20);

        let disk = open(&overlay, &base, true);
        assert_eq!(disk.size(), 8 << 30);
        assert_eq!(read(&disk, 4096, 8192), pattern[8192..8192 + 4096]);
        assert_eq!(disk.place(8192, 4096, false).unwrap(), Place::Base(8192));
        // Nothing written there yet: a write must allocate first.
        assert_eq!(disk.place(8192, 4096, true).unwrap(), Place::Mixed);
        // Past the base: zeros.
        assert!(read(&disk, 4096, 2 << 20).iter().all(|b| *b == 0));
        assert_eq!(disk.place(2 << 20, 4096, false).unwrap(), Place::Mixed);

        disk.write_vectored(&[io::IoSlice::new(b"written by the guest")], 10_000)
            .unwrap();
        disk.write_vectored(&[io::IoSlice::new(b"far away")], 7 << 30)
            .unwrap();
        // The written cluster is the overlay's now, for reads and writes.
        let Place::Overlay(at) = disk.place(0, 4096, true).unwrap() else {
            panic!("cluster 0 is not in the overlay")
        };
        assert_eq!(disk.place(0, 4096, false).unwrap(), Place::Overlay(at));
        // A read across the written cluster and an unwritten one is mixed.
        assert_eq!(disk.place(60 << 10, 8192, false).unwrap(), Place::Mixed);
        disk.flush().unwrap();
        drop(disk);

        // The base is untouched; the overlay kept the writes.
        assert_eq!(std::fs::read(&base).unwrap(), pattern);
        let disk = open(&overlay, &base, false);
        assert_eq!(read(&disk, 20, 10_000), b"written by the guest");
        let around = read(&disk, 64 << 10, 0);
        assert_eq!(around[..10_000], pattern[..10_000]);
        assert_eq!(around[10_020..], pattern[10_020..64 << 10]);
        assert_eq!(read(&disk, 8, 7 << 30), b"far away");
        assert!(disk.write_vectored(&[io::IoSlice::new(b"x")], 0).is_err());
    }

    #[test]
    fn an_overlay_grows_with_zeros_and_says_where_its_data_is() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
        let overlay = dir.path().join("root.qcow2");
        create_overlay(&overlay, "base.raw", 2 << 20).unwrap();
        {
            let disk = open(&overlay, &base, true);
            disk.write_vectored(&[io::IoSlice::new(&[9u8; 4096])], 3 << 19)
                .unwrap();
            // The base's data, then nothing, then the write's cluster.
            assert_eq!(disk.data_at(0, 4 << 20).unwrap(), (true, 1 << 20));
            assert_eq!(disk.data_at(1 << 20, 4 << 20).unwrap(), (false, 1 << 19));
            assert_eq!(disk.data_at(3 << 19, 4 << 20).unwrap(), (true, 64 << 10));
            let started = std::time::Instant::now();
            disk.grow(10 << 30).unwrap();
            assert!(started.elapsed() < std::time::Duration::from_secs(2));
            disk.grow(1 << 20).unwrap(); // never shrinks
        }
        let disk = open(&overlay, &base, false);
        assert_eq!(disk.size(), 10 << 30);
        assert!(read(&disk, 4096, 9 << 30).iter().all(|b| *b == 0));
        assert!(read(&disk, 4096, 3 << 19).iter().all(|b| *b == 9));
        assert!(read(&disk, 4096, 0).iter().all(|b| *b == 7));
        assert_eq!(disk.data_at(10 << 30, 4096).unwrap().1, 0);
    }

    #[test]
    fn layers_read_through_to_the_base_each_keeping_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![1u8; 1 << 20]).unwrap();
        let path = |n: &str| dir.path().join(n);
        let ro = |p: &Path| File::open(p).unwrap();
        // snap1 over the base, snap2 over snap1, the volume over snap2.
        create_overlay(&path("snap1"), "base", 4 << 20).unwrap();
        let one = Overlay::open(&rw(&path("snap1")), &base, true).unwrap();
        one.write_vectored(&[io::IoSlice::new(&[2u8; 4096])], 64 << 10)
            .unwrap();
        drop(one);
        create_layer(&path("snap2"), "snap1", "qcow2", 4 << 20).unwrap();
        let two = Overlay::open_chain(
            &rw(&path("snap2")),
            vec![ro(&path("snap1"))],
            ro(&base),
            true,
        )
        .unwrap();
        two.write_vectored(&[io::IoSlice::new(&[3u8; 4096])], 128 << 10)
            .unwrap();
        drop(two);
        create_layer(&path("vol"), "snap2", "qcow2", 8 << 20).unwrap();
        let layers = || vec![ro(&path("snap2")), ro(&path("snap1"))];
        let vol = Overlay::open_chain(&rw(&path("vol")), layers(), ro(&base), true).unwrap();
        vol.write_vectored(&[io::IoSlice::new(&[4u8; 4096])], 64 << 10)
            .unwrap();
        assert_eq!(vol.size(), 8 << 20);
        assert!(read(&vol, 4096, 0).iter().all(|b| *b == 1));
        assert!(read(&vol, 4096, 64 << 10).iter().all(|b| *b == 4));
        assert!(read(&vol, 4096, 128 << 10).iter().all(|b| *b == 3));
        assert!(read(&vol, 4096, 6 << 20).iter().all(|b| *b == 0));
        // Reads go to the file that holds the bytes, however deep: the
        // base (at the same offset), snap2's own cluster, or through imago
        // where a read spans files.
        assert_eq!(vol.place(0, 4096, false).unwrap(), Place::Base(0));
        let Place::Layer(0, at) = vol.place(128 << 10, 4096, false).unwrap() else {
            panic!("snap2's cluster is not placed in snap2")
        };
        let mut direct = vec![0u8; 4096];
        use std::os::unix::fs::FileExt;
        vol.layer_file(0)
            .unwrap()
            .read_exact_at(&mut direct, at)
            .unwrap();
        assert!(direct.iter().all(|b| *b == 3));
        assert_eq!(
            vol.place((128 << 10) - 4096, 8192, false).unwrap(),
            Place::Mixed
        );
        // Never for writes, nor past the base's end (zeros).
        assert_eq!(vol.place(128 << 10, 4096, true).unwrap(), Place::Mixed);
        assert_eq!(vol.place(6 << 20, 4096, false).unwrap(), Place::Mixed);
        drop(vol);
        // The layers under it are as they were: snap2 still reads 2 where
        // the volume wrote 4.
        let snap2 = Overlay::open_chain(
            &ro(&path("snap2")),
            vec![ro(&path("snap1"))],
            ro(&base),
            false,
        )
        .unwrap();
        assert!(read(&snap2, 4096, 64 << 10).iter().all(|b| *b == 2));
        assert_eq!(std::fs::read(&base).unwrap(), vec![1u8; 1 << 20]);
        let too_many = (0..=MAX_LAYERS).map(|_| ro(&path("snap1"))).collect();
        assert!(Overlay::open_chain(&ro(&path("vol")), too_many, ro(&base), false).is_err());
    }

    /// Bytes the filesystem holds for `path` (its allocated blocks).
    #[test]
    fn a_layer_absorbs_the_one_under_it_and_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n);
        let ro = |p: &Path| File::open(p).unwrap();
        let base = path("base");
        let mut pattern = vec![1u8; 4 << 20];
        pattern[3 << 20..].fill(9);
        std::fs::write(&base, &pattern).unwrap();
        // lower over the base: data, a zero range over the base's 9s, and
        // a write across a cluster's edge.
        create_overlay(&path("lower"), "base", 4 << 20).unwrap();
        let lower = Overlay::open(&rw(&path("lower")), &base, true).unwrap();
        lower
            .write_vectored(&[io::IoSlice::new(&[2u8; 8192])], (64 << 10) - 4096)
            .unwrap();
        lower
            .write_vectored(&[io::IoSlice::new(&[5u8; 2 << 20])], 512 << 10)
            .unwrap();
        lower.write_zeroes(3 << 20, 256 << 10).unwrap();
        drop(lower);
        // upper over lower, bigger (grown in between), partly over lower's data.
        create_layer(&path("upper"), "lower", "qcow2", 6 << 20).unwrap();
        let upper = Overlay::open_chain(
            &rw(&path("upper")),
            vec![ro(&path("lower"))],
            ro(&base),
            true,
        )
        .unwrap();
        upper
            .write_vectored(&[io::IoSlice::new(&[3u8; 4096])], 64 << 10)
            .unwrap();
        upper
            .write_vectored(&[io::IoSlice::new(&[4u8; 4096])], 5 << 20)
            .unwrap();
        drop(upper);
        create_layer(&path("top"), "upper", "qcow2", 6 << 20).unwrap();
        let before = Overlay::open_chain(
            &ro(&path("top")),
            vec![ro(&path("upper")), ro(&path("lower"))],
            ro(&base),
            false,
        )
        .unwrap();
        let want = read(&before, 6 << 20, 0);

        let upper = rw(&path("upper"));
        pull_lower(&upper, ro(&path("lower")), Vec::new(), ro(&base)).unwrap();
        // Over lower still, with more of its own: it reads the same.
        assert!(read(&before, 6 << 20, 0) == want);
        set_backing(&upper, "base", "raw").unwrap();
        // Its header names the base now, as a tool reads it.
        assert_eq!(describe(&upper).unwrap(), (6 << 20, Some("base".into())));
        let header = std::fs::read(path("upper")).unwrap();
        assert!(header.windows(3).any(|w| w == b"raw"));
        assert!(!header[..4096].windows(5).any(|w| w == b"lower"));
        // Without lower the chain reads what it read; a reader opened
        // before reads the same too.
        let after = Overlay::open_chain(
            &ro(&path("top")),
            vec![ro(&path("upper"))],
            ro(&base),
            false,
        )
        .unwrap();
        assert!(read(&after, 6 << 20, 0) == want);
        assert!(read(&before, 6 << 20, 0) == want);
        assert_eq!(&want[3 << 20..(3 << 20) + 4], [0; 4]);
        assert_eq!(want[(3 << 20) + (256 << 10)], 9);
        // Repeated (as after a crash): nothing left to copy.
        let len = upper.metadata().unwrap().len();
        pull_lower(&upper, ro(&path("lower")), Vec::new(), ro(&base)).unwrap();
        assert_eq!(upper.metadata().unwrap().len(), len);
        assert!(read(&after, 6 << 20, 0) == want);
        // A raw file is no layer to absorb; a header takes no name or
        // format that does not fit.
        pull_lower(&upper, ro(&base), Vec::new(), ro(&base)).unwrap_err();
        let long = "x".repeat(128 << 10);
        assert!(set_backing(&upper, &long, "raw").is_err());
        assert!(set_backing(&upper, "base", "qcow2-but-longer").is_err());
        assert!(set_backing(&ro(&base), "x", "raw").is_err());
    }

    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn a_discard_frees_the_overlays_clusters_and_leaves_its_layers_alone() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![1u8; 4 << 20]).unwrap();
        let (snap, vol) = (dir.path().join("snap"), dir.path().join("vol"));
        // A snapshot layer holding 2s at [1 MiB, 2 MiB), the volume over it.
        create_overlay(&snap, "base", 8 << 20).unwrap();
        let layer = Overlay::open(&rw(&snap), &base, true).unwrap();
        layer
            .write_vectored(&[io::IoSlice::new(&vec![2u8; 1 << 20])], 1 << 20)
            .unwrap();
        drop(layer);
        let snap_bytes = std::fs::read(&snap).unwrap();
        create_layer(&vol, "snap", "qcow2", 8 << 20).unwrap();
        let open_vol = || {
            Overlay::open_chain(
                &rw(&vol),
                vec![File::open(&snap).unwrap()],
                File::open(&base).unwrap(),
                true,
            )
            .unwrap()
        };
        let disk = open_vol();
        // The volume's own 3s over [3 MiB, 7 MiB): 4 MiB of its file.
        disk.write_vectored(&[io::IoSlice::new(&vec![3u8; 4 << 20])], 3 << 20)
            .unwrap();
        disk.flush().unwrap();
        let before = allocated(&vol);
        assert!(before >= 4 << 20, "{before}");

        // A discard over the snapshot's data, the base's and the volume's
        // own, starting and ending mid-cluster.
        let (from, len) = ((1 << 20) + 4096, (5 << 20) - 8192);
        // SAFETY: nothing else uses the disk.
        unsafe { disk.discard(from, len) }.unwrap();
        disk.flush().unwrap();
        let after = allocated(&vol);
        // Its 3 MiB there, less a table for the zero clusters over the
        // layers' data.
        assert!(
            after + (5 << 19) < before,
            "the volume's clusters given back: {before} -> {after} bytes"
        );
        let check = |disk: &Overlay| {
            assert!(read(disk, 4096, 1 << 20).iter().all(|b| *b == 2));
            assert!(read(disk, len as usize, from).iter().all(|b| *b == 0));
            let tail = read(disk, 8192, from + len - 4096);
            assert!(tail[..4096].iter().all(|b| *b == 0));
            assert!(tail[4096..].iter().all(|b| *b == 3));
            assert!(read(disk, 4096, 0).iter().all(|b| *b == 1));
        };
        check(&disk);
        // Later writes take the freed clusters and keep their data.
        disk.write_vectored(&[io::IoSlice::new(&vec![5u8; 1 << 20])], 7 << 20)
            .unwrap();
        disk.write_vectored(&[io::IoSlice::new(&[6u8; 4096])], 2 << 20)
            .unwrap();
        drop(disk);
        let disk = open_vol();
        assert!(read(&disk, 1 << 20, 7 << 20).iter().all(|b| *b == 5));
        assert!(read(&disk, 4096, 2 << 20).iter().all(|b| *b == 6));
        // The rest of the discarded range still reads as zeros.
        assert!(read(&disk, 4096, (2 << 20) + 4096).iter().all(|b| *b == 0));
        assert!(read(&disk, 4096, 5 << 20).iter().all(|b| *b == 0));
        // Write-zeroes over the base's data and the volume's: zeros, the
        // clusters kept.
        disk.write_zeroes(0, 64 << 10).unwrap();
        disk.write_zeroes(7 << 20, 4096).unwrap();
        assert!(read(&disk, 64 << 10, 0).iter().all(|b| *b == 0));
        let edge = read(&disk, 8192, 7 << 20);
        assert!(edge[..4096].iter().all(|b| *b == 0));
        assert!(edge[4096..].iter().all(|b| *b == 5));
        drop(disk);
        // The snapshot under it never changed.
        assert_eq!(std::fs::read(&snap).unwrap(), snap_bytes);
    }

    #[test]
    fn a_file_is_described_and_grown_without_what_lies_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        create_layer(
            &layer,
            "5d3f9a7e-6c1b-4e0a-9f2d-8b7c6a5e4d3c",
            "qcow2",
            1 << 30,
        )
        .unwrap();
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&layer)
            .unwrap();
        let described = describe(&rw).unwrap();
        assert_eq!(
            described,
            (1 << 30, Some("5d3f9a7e-6c1b-4e0a-9f2d-8b7c6a5e4d3c".into()))
        );
        grow_file(&rw, 3 << 30).unwrap();
        grow_file(&rw, 1 << 30).unwrap();
        assert_eq!(describe(&rw).unwrap().0, 3 << 30);
        let raw = dir.path().join("raw");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        assert!(describe(&File::open(&raw).unwrap()).is_err());
    }

    #[test]
    fn files_the_image_names_are_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let overlay = dir.path().join("evil.qcow2");
        // Names a host file as its backing file.
        create_overlay(&overlay, "/etc/shadow", 1 << 20).unwrap();
        let image = imago::file::File::try_from(File::open(&overlay).unwrap()).unwrap();
        let implicit =
            Qcow2::<imago::file::File>::builder(image).open(DenyImplicitOpenGate::default());
        assert!(implicit.is_err(), "the image's own backing file was opened");
    }

    #[test]
    fn a_file_that_is_not_qcow2_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (base, bogus) = (dir.path().join("base"), dir.path().join("bogus"));
        std::fs::write(&base, vec![0u8; 4096]).unwrap();
        std::fs::write(&bogus, vec![0x51u8; 4096]).unwrap();
        let file = File::open(&bogus).unwrap();
        assert!(Overlay::open(&file, &base, false).is_err());
    }
}
