//! An object's bytes on disk: one file per version of an object, written
//! once, never changed. Format 1:
//!
//! ```text
//! data            size bytes
//! block sums      a CRC32C (u32 little-endian) of each 64 KiB block of data
//! trailer         32 bytes: "VIRGABLB", format (u32), block size (u32),
//!                 data size (u64), CRC32C of the block sums (u32), 0 (u32)
//! ```
//!
//! Every read checks the blocks it returns against their sums, so a
//! corrupted file answers an error, never wrong bytes.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crc_fast::CrcAlgorithm;

pub const FORMAT: u32 = 1;
pub const BLOCK: u64 = 64 << 10;
const MAGIC: &[u8; 8] = b"VIRGABLB";
const TRAILER: u64 = 32;
/// Blocks read at once by [`Blob::read_range`] (1 MiB).
const SPAN: u64 = 16;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("blob {what}: corrupt ({why})")]
    Corrupt { what: String, why: String },
}

fn crc32c(data: &[u8]) -> u32 {
    crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// Writes a blob: data as it comes, then its sums and trailer at
/// [`BlobWriter::finish`], which makes it durable.
pub struct BlobWriter {
    out: BufWriter<File>,
    sums: Vec<u8>,
    /// The part of the current block written so far.
    block: Vec<u8>,
    size: u64,
}

impl BlobWriter {
    pub fn create(path: &Path) -> Result<Self, BlobError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(BlobWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            sums: Vec::new(),
            block: Vec::with_capacity(BLOCK as usize),
            size: 0,
        })
    }

    pub fn write(&mut self, mut data: &[u8]) -> Result<(), BlobError> {
        self.out.write_all(data)?;
        self.size += data.len() as u64;
        while !data.is_empty() {
            let take = (BLOCK as usize - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.block.len() == BLOCK as usize {
                self.sums
                    .extend_from_slice(&crc32c(&self.block).to_le_bytes());
                self.block.clear();
            }
        }
        Ok(())
    }

    /// Appends the sums and trailer and syncs the file; its size.
    pub fn finish(mut self) -> Result<u64, BlobError> {
        if !self.block.is_empty() {
            self.sums
                .extend_from_slice(&crc32c(&self.block).to_le_bytes());
        }
        self.out.write_all(&self.sums)?;
        let mut trailer = Vec::with_capacity(TRAILER as usize);
        trailer.extend_from_slice(MAGIC);
        trailer.extend_from_slice(&FORMAT.to_le_bytes());
        trailer.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        trailer.extend_from_slice(&self.size.to_le_bytes());
        trailer.extend_from_slice(&crc32c(&self.sums).to_le_bytes());
        trailer.extend_from_slice(&0u32.to_le_bytes());
        self.out.write_all(&trailer)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(self.size)
    }
}

/// A blob opened for reading, its trailer and sums checked.
pub struct Blob {
    file: File,
    size: u64,
    sums: Vec<u32>,
    what: String,
}

impl Blob {
    /// Opens `path`, which must hold `size` bytes of data.
    pub fn open(path: &Path, size: u64) -> Result<Self, BlobError> {
        let what = path.display().to_string();
        let corrupt = |why: &str| BlobError::Corrupt {
            what: what.clone(),
            why: why.to_owned(),
        };
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let blocks = size.div_ceil(BLOCK);
        if len != size + blocks * 4 + TRAILER {
            return Err(corrupt("length"));
        }
        let mut trailer = [0u8; TRAILER as usize];
        file.seek(SeekFrom::Start(len - TRAILER))?;
        file.read_exact(&mut trailer)?;
        let word = |at: usize| {
            u32::from_le_bytes([
                trailer[at],
                trailer[at + 1],
                trailer[at + 2],
                trailer[at + 3],
            ])
        };
        let mut size_bytes = [0u8; 8];
        size_bytes.copy_from_slice(&trailer[16..24]);
        if &trailer[..8] != MAGIC
            || word(8) != FORMAT
            || u64::from(word(12)) != BLOCK
            || u64::from_le_bytes(size_bytes) != size
        {
            return Err(corrupt("trailer"));
        }
        let mut raw = vec![0u8; (blocks * 4) as usize];
        file.read_exact_at(&mut raw, size)?;
        if crc32c(&raw) != word(24) {
            return Err(corrupt("block sums"));
        }
        let sums = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Blob {
            file,
            size,
            sums,
            what,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Block `index`'s data, checked.
    pub fn block(&self, index: u64) -> Result<Vec<u8>, BlobError> {
        let start = index * BLOCK;
        let len = (self.size - start).min(BLOCK) as usize;
        let mut data = vec![0u8; len];
        self.file.read_exact_at(&mut data, start)?;
        if self.sums.get(index as usize).copied() != Some(crc32c(&data)) {
            return Err(BlobError::Corrupt {
                what: self.what.clone(),
                why: format!("block {index}"),
            });
        }
        Ok(data)
    }

    /// The checked bytes of `[start, end)` to `each`, in pieces of up to
    /// [`SPAN`] blocks (one read each); stops early when `each` says so.
    pub fn read_range(
        &self,
        start: u64,
        end: u64,
        mut each: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<(), BlobError> {
        let end = end.min(self.size);
        let mut at = start;
        while at < end {
            let first = at / BLOCK;
            // Whole blocks (their sums cover them whole), none past `end`'s.
            let span_end = ((first + SPAN) * BLOCK)
                .min(end.div_ceil(BLOCK) * BLOCK)
                .min(self.size);
            let mut data = vec![0u8; (span_end - first * BLOCK) as usize];
            self.file.read_exact_at(&mut data, first * BLOCK)?;
            for (i, block) in data.chunks(BLOCK as usize).enumerate() {
                let index = first + i as u64;
                if self.sums.get(index as usize).copied() != Some(crc32c(block)) {
                    return Err(BlobError::Corrupt {
                        what: self.what.clone(),
                        why: format!("block {index}"),
                    });
                }
            }
            let from = (at - first * BLOCK) as usize;
            let to = (end.min(span_end) - first * BLOCK) as usize;
            if from > 0 || to < data.len() {
                data = data[from..to].to_vec();
            }
            at += data.len() as u64;
            if !each(data) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, data: &[u8], pieces: usize) -> u64 {
        let mut w = BlobWriter::create(path).unwrap();
        for chunk in data.chunks(pieces.max(1)) {
            w.write(chunk).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(b: &Blob, start: u64, end: u64) -> Result<Vec<u8>, BlobError> {
        let mut out = Vec::new();
        b.read_range(start, end, |p| {
            out.extend(p);
            true
        })?;
        Ok(out)
    }

    #[test]
    fn blobs_read_back_whole_and_in_ranges_whatever_the_write_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(3 * BLOCK + 123))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for (n, pieces) in [1usize, 1000, 65536, 1 << 20].into_iter().enumerate() {
            let path = dir.path().join(format!("b{n}"));
            assert_eq!(write(&path, &data, pieces), data.len() as u64);
            let b = Blob::open(&path, data.len() as u64).unwrap();
            assert_eq!(read_all(&b, 0, u64::MAX).unwrap(), data);
            for (s, e) in [
                (0, 1),
                (BLOCK - 1, BLOCK + 1),
                (5, 3 * BLOCK + 100),
                (3 * BLOCK, 3 * BLOCK + 123),
            ] {
                assert_eq!(read_all(&b, s, e).unwrap(), data[s as usize..e as usize]);
            }
        }
        let empty = dir.path().join("empty");
        assert_eq!(write(&empty, &[], 1), 0);
        assert!(read_all(&Blob::open(&empty, 0).unwrap(), 0, 10)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_flipped_bit_or_a_wrong_length_is_an_error_never_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let data = vec![5u8; (2 * BLOCK) as usize];
        write(&path, &data, 4096);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[6], BLOCK + 10).unwrap();
        let b = Blob::open(&path, data.len() as u64).unwrap();
        assert_eq!(read_all(&b, 0, BLOCK).unwrap(), data[..BLOCK as usize]);
        assert!(matches!(
            read_all(&b, 0, 2 * BLOCK),
            Err(BlobError::Corrupt { .. })
        ));
        assert!(matches!(
            Blob::open(&path, 5),
            Err(BlobError::Corrupt { .. })
        ));
        // The sums themselves damaged.
        f.write_all_at(&[0xff], 2 * BLOCK).unwrap();
        assert!(matches!(
            Blob::open(&path, 2 * BLOCK),
            Err(BlobError::Corrupt { .. })
        ));
    }
}
