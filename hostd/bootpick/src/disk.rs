//! The image as positional reads of one file, and the partitions on it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Partitions looked at, at most.
pub const MAX_PARTITIONS: usize = 16;
/// qcow2 layers between an overlay and its base, at most (the VMM's limit).
pub const MAX_LAYERS: usize = 32;
const SECTOR: u64 = 512;

/// A disk image, read by position only.
#[derive(Clone, Debug)]
pub struct Image {
    source: Arc<Source>,
    len: u64,
}

#[derive(Debug)]
enum Source {
    Raw(File),
    /// A root disk that is a qcow2 overlay over a raw image (hostd makes
    /// them where the filesystem cannot share blocks), or a volume's overlay
    /// over its snapshots' layers.
    Overlay(imago::FormatAccess<imago::file::File>),
}

impl Image {
    pub fn new(file: File) -> std::io::Result<Image> {
        // A block device (a volume on another host, through NBD) has no
        // length of its own in its metadata: its end says it.
        let meta = file.metadata()?;
        let len = if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
            std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0))?
        } else {
            meta.len()
        };
        Ok(Image {
            source: Arc::new(Source::Raw(file)),
            len,
        })
    }

    /// The disk a qcow2 `overlay` over the raw `base` holds. Files the
    /// overlay names (its backing file) are never opened. Everything that
    /// asks the kernel more than positional reads happens here, before the
    /// sandbox.
    pub fn overlay(overlay: File, base: File) -> std::io::Result<Image> {
        Self::chain(overlay, Vec::new(), base)
    }

    /// The disk a qcow2 `overlay` over qcow2 `layers` (the one right under
    /// it first) over the raw `base` holds; as [`Image::overlay`], nothing
    /// any of them names is opened.
    pub fn chain(overlay: File, layers: Vec<File>, base: File) -> std::io::Result<Image> {
        use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder};
        type Backing = Arc<FormatAccess<imago::file::File>>;
        if layers.len() > MAX_LAYERS {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} layers; at most {MAX_LAYERS}", layers.len()),
            ));
        }
        let base = imago::raw::Raw::builder(imago::file::File::try_from(base)?)
            .open(DenyImplicitOpenGate::default())?;
        let mut under: Backing = Arc::new(FormatAccess::new(base));
        for layer in layers.into_iter().rev() {
            let qcow2 = imago::qcow2::Qcow2::<imago::file::File, Backing>::builder(
                imago::file::File::try_from(layer)?,
            )
            .write(false)
            .backing(Some(under))
            .open(DenyImplicitOpenGate::default())?;
            under = Arc::new(FormatAccess::new(qcow2));
        }
        let qcow2 = imago::qcow2::Qcow2::<imago::file::File, Backing>::builder(
            imago::file::File::try_from(overlay)?,
        )
        .write(false)
        .backing(Some(under))
        .open(DenyImplicitOpenGate::default())?;
        let access = FormatAccess::new(qcow2);
        Ok(Image {
            len: access.size(),
            source: Arc::new(Source::Overlay(access)),
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes `[offset, offset + len)` of the image, as a region.
    pub fn region(&self, offset: u64, len: u64) -> Option<Region> {
        let end = offset.checked_add(len)?;
        (end <= self.len).then(|| Region {
            image: self.clone(),
            offset,
            len,
        })
    }

    /// The whole image as a region.
    pub fn whole(&self) -> Region {
        Region {
            image: self.clone(),
            offset: 0,
            len: self.len,
        }
    }
}

/// A part of the image (a partition, or all of it); reads outside it fail.
#[derive(Clone, Debug)]
pub struct Region {
    image: Image,
    pub offset: u64,
    pub len: u64,
}

impl Region {
    pub fn read_at(&self, start: u64, dst: &mut [u8]) -> std::io::Result<()> {
        let out_of_range = || std::io::Error::other("read beyond the region");
        let end = start
            .checked_add(dst.len() as u64)
            .ok_or_else(out_of_range)?;
        if end > self.len {
            return Err(out_of_range());
        }
        match &*self.image.source {
            Source::Raw(file) => file.read_exact_at(dst, self.offset + start),
            // Reads to the end of the disk, which the range check above
            // keeps them within.
            Source::Overlay(access) => access.read(&mut *dst, self.offset + start),
        }
    }
}

impl ext4_view::Ext4Read for Region {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(self.read_at(start_byte, dst)?)
    }
}

/// A region as a seekable stream, for the partition-table crates; writes
/// fail (they are opened read-only).
#[derive(Debug)]
struct Cursor {
    region: Region,
    pos: u64,
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf
            .len()
            .min(self.region.len.saturating_sub(self.pos) as usize);
        self.region.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.region.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}

impl Write for Cursor {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("the image is read-only"))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The regions that may hold a filesystem: a GPT's partitions, else an MBR's
/// primary partitions, else the whole image. At most [`MAX_PARTITIONS`];
/// partitions that lie outside the image are left out.
pub fn partitions(image: &Image) -> Vec<Region> {
    if let Some(parts) = gpt_partitions(image) {
        return parts;
    }
    if let Some(parts) = mbr_partitions(image) {
        return parts;
    }
    vec![image.whole()]
}

fn gpt_partitions(image: &Image) -> Option<Vec<Region>> {
    let cursor = Cursor {
        region: image.whole(),
        pos: 0,
    };
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open_from_device(cursor)
        .ok()?;
    let regions = disk
        .partitions()
        .values()
        .filter(|p| p.is_used())
        .filter_map(|p| {
            let start = p.first_lba.checked_mul(SECTOR)?;
            let len = p
                .last_lba
                .checked_sub(p.first_lba)?
                .checked_add(1)?
                .checked_mul(SECTOR)?;
            image.region(start, len)
        })
        .take(MAX_PARTITIONS)
        .collect();
    Some(regions)
}

fn mbr_partitions(image: &Image) -> Option<Vec<Region>> {
    let mut cursor = Cursor {
        region: image.whole(),
        pos: 0,
    };
    let mbr = mbrman::MBR::read_from(&mut cursor, SECTOR as u32).ok()?;
    let regions: Vec<Region> = mbr
        .iter()
        .filter(|(_, p)| p.is_used())
        // Extended partitions hold more tables, not filesystems.
        .filter(|(_, p)| !matches!(p.sys, 0x05 | 0x0f | 0x85))
        .filter_map(|(_, p)| {
            image.region(
                u64::from(p.starting_lba) * SECTOR,
                u64::from(p.sectors) * SECTOR,
            )
        })
        .take(MAX_PARTITIONS)
        .collect();
    (!regions.is_empty()).then_some(regions)
}
