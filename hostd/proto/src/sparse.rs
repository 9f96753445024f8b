//! The sparse stream: a disk image as it crosses the network between hostd
//! and the image store (image downloads to a host's cache, snapshot uploads
//! from it), without its holes. A 1 GiB root disk holding 60 MiB of data
//! sends about 60 MiB: most of a disk is free space, and a plain stream
//! would carry every zero of it.
//!
//! The format (all integers little-endian `u64`):
//! - a header: the magic `VSPARSE1`, then the image's full size;
//! - records: `offset`, `length`, then `length` bytes of data at `offset`.
//!   Offsets only grow, records do not overlap and stay within the size;
//!   whatever no record covers reads as zeros;
//! - an end record: offset `u64::MAX`, and the number of data bytes sent,
//!   so a stream cut short is never taken for a complete one.
//!
//! [`SparseReader`] encodes a file (its data extents, found with
//! `SEEK_DATA`/`SEEK_HOLE`); [`Decoder`] checks and decodes a stream as it
//! arrives, in pieces of any size. [`HoleWriter`] stores a plain stream
//! (a client's upload) with holes where its blocks are zero, so the file a
//! sparse stream is later made from has holes to skip.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use bytes::Bytes;

/// The media type of a sparse stream (`Content-Type`, and `Accept` when a
/// host asks for one).
pub const CONTENT_TYPE: &str = "application/vnd.virga.sparse-v1";

/// Whether a `Content-Type` (or one of an `Accept`'s entries) names a
/// sparse stream, parameters and case aside.
pub fn is_media_type(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(CONTENT_TYPE))
}

const MAGIC: &[u8; 8] = b"VSPARSE1";
const HEADER: usize = 16;
/// The end record's offset.
const END: u64 = u64::MAX;
/// The most data one record carries: extents are split so a reader's
/// buffers stay small whatever the extent.
const MAX_RECORD: u64 = 4 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SparseError {
    #[error("not a sparse stream (bad magic)")]
    BadMagic,
    #[error("the image's size {size} is over the {max} bytes allowed")]
    TooLarge { size: u64, max: u64 },
    #[error(
        "a record at {offset} (length {length}) is out of order or past the image's end ({size})"
    )]
    BadRecord { offset: u64, length: u64, size: u64 },
    #[error("the stream says {said} data bytes were sent; {got} arrived")]
    BadEnd { said: u64, got: u64 },
    #[error("bytes after the end record")]
    TrailingBytes,
    #[error("the stream ended before its end record")]
    Truncated,
}

impl From<SparseError> for io::Error {
    fn from(e: SparseError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// What a stream says, piece by piece, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// The image's full size (first).
    Size(u64),
    /// `len` bytes of zeros at `offset` (a hole: nothing was sent for it).
    Zeros { offset: u64, len: u64 },
    /// Data at `offset`.
    Data { offset: u64, bytes: Bytes },
    /// The stream is complete (last); the trailing hole came before it.
    End,
}

enum State {
    Header,
    RecordHeader,
    Data { offset: u64, left: u64 },
    Ended,
}

/// Decodes a sparse stream fed in pieces as they arrive; every record is
/// checked before its data is passed on.
pub struct Decoder {
    max_size: u64,
    state: State,
    /// A header being gathered across pieces.
    partial: Vec<u8>,
    size: u64,
    /// Where the next record may start (the end of the last one).
    next: u64,
    data_bytes: u64,
}

impl Decoder {
    /// A decoder refusing images larger than `max_size`.
    pub fn new(max_size: u64) -> Self {
        Decoder {
            max_size,
            state: State::Header,
            partial: Vec::with_capacity(HEADER),
            size: 0,
            next: 0,
            data_bytes: 0,
        }
    }

    /// Decodes what `input` completes.
    pub fn feed(&mut self, input: Bytes) -> Result<Vec<Piece>, SparseError> {
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::Ended => return Err(SparseError::TrailingBytes),
                State::Data { offset, left } => {
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - at);
                    pieces.push(Piece::Data {
                        offset,
                        bytes: input.slice(at..at + n),
                    });
                    at += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::RecordHeader
                    } else {
                        State::Data {
                            offset: offset + n as u64,
                            left,
                        }
                    };
                }
                State::Header | State::RecordHeader => {
                    let n = (HEADER - self.partial.len()).min(input.len() - at);
                    self.partial.extend_from_slice(&input[at..at + n]);
                    at += n;
                    if self.partial.len() == HEADER {
                        let header = std::mem::take(&mut self.partial);
                        self.header(&header, &mut pieces)?;
                    }
                }
            }
        }
        Ok(pieces)
    }

    fn header(&mut self, h: &[u8], pieces: &mut Vec<Piece>) -> Result<(), SparseError> {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(w)
        };
        if let State::Header = self.state {
            if &h[..8] != MAGIC {
                return Err(SparseError::BadMagic);
            }
            let size = word(8);
            if size > self.max_size {
                return Err(SparseError::TooLarge {
                    size,
                    max: self.max_size,
                });
            }
            self.size = size;
            self.state = State::RecordHeader;
            pieces.push(Piece::Size(size));
            return Ok(());
        }
        let (offset, length) = (word(0), word(8));
        if offset == END {
            if length != self.data_bytes {
                return Err(SparseError::BadEnd {
                    said: length,
                    got: self.data_bytes,
                });
            }
            if self.next < self.size {
                pieces.push(Piece::Zeros {
                    offset: self.next,
                    len: self.size - self.next,
                });
            }
            self.state = State::Ended;
            pieces.push(Piece::End);
            return Ok(());
        }
        let end = offset
            .checked_add(length)
            .filter(|end| length > 0 && offset >= self.next && *end <= self.size)
            .ok_or(SparseError::BadRecord {
                offset,
                length,
                size: self.size,
            })?;
        if offset > self.next {
            pieces.push(Piece::Zeros {
                offset: self.next,
                len: offset - self.next,
            });
        }
        self.next = end;
        self.data_bytes += length;
        self.state = State::Data {
            offset,
            left: length,
        };
        Ok(())
    }

    /// Checks that the stream ended where it should (after its end record).
    pub fn finish(&self) -> Result<(), SparseError> {
        match self.state {
            State::Ended => Ok(()),
            _ => Err(SparseError::Truncated),
        }
    }
}

/// A whole stream decoded in memory (small images: tests, tools).
pub fn decode_all(stream: &[u8], max_size: u64) -> Result<Vec<u8>, SparseError> {
    let mut decoder = Decoder::new(max_size);
    let mut image = Vec::new();
    for piece in decoder.feed(Bytes::copy_from_slice(stream))? {
        match piece {
            Piece::Size(n) => image.resize(usize::try_from(n).unwrap_or(usize::MAX), 0),
            Piece::Data { offset, bytes } => {
                // Checked by the decoder: within the size.
                let at = offset as usize;
                image[at..at + bytes.len()].copy_from_slice(&bytes);
            }
            Piece::Zeros { .. } | Piece::End => {}
        }
    }
    decoder.finish()?;
    Ok(image)
}

/// A whole file encoded in memory (small images: tests, tools).
pub fn encode_all(file: File) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut stream = Vec::new();
    SparseReader::new(file)?.read_to_end(&mut stream)?;
    Ok(stream)
}

/// The data extents (`offset`, `length`) of the first `size` bytes of
/// `file`: where the filesystem cannot say (no `SEEK_DATA`), all of it.
pub fn data_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    use rustix::io::Errno;
    let mut extents = Vec::new();
    let mut at = 0;
    while at < size {
        let start = match seek(file, SeekFrom::Data(at)) {
            Ok(start) => start,
            // Only a hole is left.
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) if at == 0 => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = seek(file, SeekFrom::Hole(start))?.min(size);
        extents.push((start, end - start));
        at = end;
    }
    Ok(extents)
}

/// Writes a sparse stream into a file as it arrives: each record's data at
/// its offset, the file sized by the stream's header, so the holes stay
/// holes. Its calls block (file writes).
pub struct FileWriter {
    file: File,
    decoder: Decoder,
    size: u64,
}

impl FileWriter {
    /// A writer into `file` (empty) of a stream of an image of at most
    /// `max_size` bytes.
    pub fn new(file: File, max_size: u64) -> Self {
        FileWriter {
            file,
            decoder: Decoder::new(max_size),
            size: 0,
        }
    }

    /// Writes what `data`, the stream's next bytes, holds (a stream that is
    /// not one is `InvalidData`).
    pub fn push(&mut self, data: Bytes) -> io::Result<()> {
        for piece in self.decoder.feed(data)? {
            match piece {
                Piece::Size(n) => {
                    self.size = n;
                    self.file.set_len(n)?;
                }
                Piece::Data { offset, bytes } => self.file.write_all_at(&bytes, offset)?,
                Piece::Zeros { .. } | Piece::End => {}
            }
        }
        Ok(())
    }

    /// Checks the stream was whole and syncs the file; returns the image's
    /// size.
    pub fn finish(self) -> io::Result<u64> {
        self.decoder.finish()?;
        self.file.sync_all()?;
        Ok(self.size)
    }
}

/// Writes a plain stream of an image's bytes to a file, leaving holes where
/// whole blocks are zero: an uploaded disk image is mostly free space, and
/// the file should not pay for it (nor a sparse stream made from it later
/// carry it). Writes are positional (the file's offset is not used).
pub struct HoleWriter {
    file: File,
    /// The start of a block not yet whole.
    pending: Vec<u8>,
    /// Where `pending` (or the next block) starts.
    offset: u64,
}

/// The granularity of holes (a filesystem block).
const HOLE_BLOCK: usize = 4096;

impl HoleWriter {
    pub fn new(file: File) -> Self {
        HoleWriter {
            file,
            pending: Vec::with_capacity(HOLE_BLOCK),
            offset: 0,
        }
    }

    /// The bytes taken so far.
    pub fn len(&self) -> u64 {
        self.offset + self.pending.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the stream's next bytes.
    pub fn push(&mut self, mut data: &[u8]) -> io::Result<()> {
        if !self.pending.is_empty() {
            let take = data.len().min(HOLE_BLOCK - self.pending.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < HOLE_BLOCK {
                return Ok(());
            }
            let block = std::mem::take(&mut self.pending);
            self.write_blocks(&block)?;
            self.pending = block;
            self.pending.clear();
        }
        let whole = data.len() - data.len() % HOLE_BLOCK;
        self.write_blocks(&data[..whole])?;
        self.pending.extend_from_slice(&data[whole..]);
        Ok(())
    }

    /// Writes whole blocks at the offset: runs of data in one write each,
    /// zero blocks skipped.
    fn write_blocks(&mut self, blocks: &[u8]) -> io::Result<()> {
        let mut run = 0;
        for (i, block) in blocks.chunks(HOLE_BLOCK).enumerate() {
            if block.iter().all(|b| *b == 0) {
                let at = i * HOLE_BLOCK;
                self.file
                    .write_all_at(&blocks[run..at], self.offset + run as u64)?;
                run = at + HOLE_BLOCK;
            }
        }
        self.file
            .write_all_at(&blocks[run..], self.offset + run as u64)?;
        self.offset += blocks.len() as u64;
        Ok(())
    }

    /// Writes the tail, sizes the file (a trailing hole stays one) and
    /// syncs it; returns its length.
    pub fn finish(mut self) -> io::Result<u64> {
        let tail = std::mem::take(&mut self.pending);
        if tail.iter().any(|b| *b != 0) {
            self.file.write_all_at(&tail, self.offset)?;
        }
        self.offset += tail.len() as u64;
        self.file.set_len(self.offset)?;
        self.file.sync_all()?;
        Ok(self.offset)
    }
}

/// Holes shorter than this are sent as zeros: a record costs more than a
/// few zero blocks, and a file of alternating data and hole blocks would
/// otherwise take a record (and memory) per block.
const MIN_HOLE: u64 = 64 << 10;

fn merge_small_gaps(extents: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(extents.len());
    for (offset, len) in extents {
        match merged.last_mut() {
            Some((o, l)) if offset - (*o + *l) < MIN_HOLE => *l = offset + len - *o,
            _ => merged.push((offset, len)),
        }
    }
    merged
}

/// A file encoded as a sparse stream, read like any reader. Its length is
/// known before the first byte ([`SparseReader::encoded_len`]): the file
/// must not change while it is read (a snapshot's copy, a cached image).
pub struct SparseReader {
    file: File,
    size: u64,
    records: VecDeque<(u64, u64)>,
    data_bytes: u64,
    /// Header bytes not yet read out.
    pending: VecDeque<u8>,
    /// The record whose data is being read: where, and how much is left.
    current: Option<(u64, u64)>,
    ended: bool,
}

impl SparseReader {
    pub fn new(file: File) -> io::Result<Self> {
        let size = file.metadata()?.len();
        let mut records = VecDeque::new();
        for (mut offset, mut len) in merge_small_gaps(data_extents(&file, size)?) {
            while len > 0 {
                let n = len.min(MAX_RECORD);
                records.push_back((offset, n));
                offset += n;
                len -= n;
            }
        }
        let data_bytes = records.iter().map(|(_, n)| n).sum();
        let mut pending = VecDeque::with_capacity(HEADER);
        pending.extend(MAGIC);
        pending.extend(size.to_le_bytes());
        Ok(SparseReader {
            file,
            size,
            records,
            data_bytes,
            pending,
            current: None,
            ended: false,
        })
    }

    /// The image's full size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The data bytes the stream carries (the rest are holes).
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// The stream's length in bytes.
    pub fn encoded_len(&self) -> u64 {
        let headers = HEADER as u64 * (2 + self.records.len() as u64);
        headers + self.data_bytes
    }
}

impl Read for SparseReader {
    /// Fills `buf` as far as the stream goes (headers and data alike).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            if !self.pending.is_empty() {
                let take = self.pending.len().min(buf.len() - n);
                for (b, p) in buf[n..n + take].iter_mut().zip(self.pending.drain(..take)) {
                    *b = p;
                }
                n += take;
                continue;
            }
            if let Some((offset, left)) = self.current {
                let want = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(buf.len() - n);
                let got = self.file.read_at(&mut buf[n..n + want], offset)?;
                if got == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was sent",
                    ));
                }
                n += got;
                let left = left - got as u64;
                self.current = (left > 0).then_some((offset + got as u64, left));
                continue;
            }
            match self.records.pop_front() {
                Some((offset, len)) => {
                    self.pending.extend(offset.to_le_bytes());
                    self.pending.extend(len.to_le_bytes());
                    self.current = Some((offset, len));
                }
                None if !self.ended => {
                    self.ended = true;
                    self.pending.extend(END.to_le_bytes());
                    self.pending.extend(self.data_bytes.to_le_bytes());
                }
                None => break,
            }
        }
        Ok(n)
    }
}

/// Reads `reader` in chunks of `chunk` bytes on tokio's blocking threads,
/// one read at a time (no thread waits on a slow receiver), into a channel
/// a few chunks deep; the task ends with the stream, a read error, or the
/// receiver gone, and says which.
pub fn spawn_reader(
    mut reader: SparseReader,
    chunk: usize,
) -> (
    tokio::sync::mpsc::Receiver<Bytes>,
    tokio::task::JoinHandle<io::Result<()>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(async move {
        loop {
            let (back, read) = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; chunk];
                let read = reader.read(&mut buf).map(|n| {
                    buf.truncate(n);
                    buf
                });
                (reader, read)
            })
            .await
            .map_err(io::Error::other)?;
            reader = back;
            let buf = read?;
            if buf.is_empty() {
                return Ok(());
            }
            if tx.send(Bytes::from(buf)).await.is_err() {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the receiver stopped reading",
                ));
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    /// Decodes `stream` fed in pieces of `step` bytes into a flat image.
    fn decode(stream: &[u8], step: usize, max: u64) -> Result<Vec<u8>, SparseError> {
        let mut d = Decoder::new(max);
        let mut image = Vec::new();
        let mut ended = false;
        for chunk in stream.chunks(step) {
            for piece in d.feed(Bytes::copy_from_slice(chunk))? {
                assert!(!ended, "a piece after End");
                match piece {
                    Piece::Size(n) => image = vec![0xEE; n as usize],
                    Piece::Zeros { offset, len } => {
                        image[offset as usize..(offset + len) as usize].fill(0)
                    }
                    Piece::Data { offset, bytes } => image
                        [offset as usize..offset as usize + bytes.len()]
                        .copy_from_slice(&bytes),
                    Piece::End => ended = true,
                }
            }
        }
        d.finish()?;
        assert!(image.iter().all(|b| *b != 0xEE), "every byte accounted for");
        Ok(image)
    }

    fn encode(file: File) -> (Vec<u8>, u64) {
        let mut r = SparseReader::new(file).unwrap();
        let len = r.encoded_len();
        let data = r.data_bytes();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, len, "the announced length");
        (out, data)
    }

    #[test]
    fn a_sparse_file_crosses_as_its_data_only_and_arrives_whole() {
        let mut f = tempfile::tempfile().unwrap();
        let size = 64u64 << 20;
        f.set_len(size).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[7u8; 10_000]).unwrap();
        f.seek(SeekFrom::Start(size - 3)).unwrap();
        f.write_all(b"end").unwrap();
        let mut want = vec![0u8; size as usize];
        want[1 << 20..(1 << 20) + 10_000].fill(7);
        want[size as usize - 3..].copy_from_slice(b"end");

        let (stream, data) = encode(f);
        // Two data blocks of the filesystem's, not 64 MiB.
        assert!(data < 1 << 20, "{data} data bytes sent");
        for step in [1, 7, 4096, 1 << 20] {
            assert_eq!(decode(&stream, step, size).unwrap(), want, "step {step}");
        }
        assert_eq!(
            decode(&stream, 4096, size - 1),
            Err(SparseError::TooLarge {
                size,
                max: size - 1
            })
        );
    }

    #[test]
    fn a_full_file_and_an_empty_one() {
        let mut f = tempfile::tempfile().unwrap();
        // Never 0xEE, which marks bytes no piece covered.
        let want: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 200) as u8 + 1).collect();
        f.write_all(&want).unwrap();
        let (stream, data) = encode(f);
        assert_eq!(data, want.len() as u64);
        assert_eq!(decode(&stream, 65536, u64::MAX).unwrap(), want);

        let (stream, data) = encode(tempfile::tempfile().unwrap());
        assert_eq!((data, stream.len()), (0, 32));
        assert_eq!(decode(&stream, 3, 0).unwrap(), Vec::<u8>::new());
    }

    fn stream(size: u64, records: &[(u64, u64)], end: u64) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(MAGIC);
        s.extend(size.to_le_bytes());
        for (o, l) in records {
            s.extend(o.to_le_bytes());
            s.extend(l.to_le_bytes());
            s.extend(std::iter::repeat_n(1u8, *l as usize));
        }
        s.extend(END.to_le_bytes());
        s.extend(end.to_le_bytes());
        s
    }

    /// Whatever arrives, in whatever pieces: the decoder answers with pieces
    /// or an error, never a panic; what it accepts covers the image exactly
    /// once, in order, within its size.
    fn check_any(stream: &[u8], cuts: &[usize]) {
        let mut d = Decoder::new(1 << 20);
        let mut covered = 0u64;
        let mut size = None;
        let mut at = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        bounds.push(stream.len());
        bounds.sort_unstable();
        for end in bounds {
            let Ok(pieces) = d.feed(Bytes::copy_from_slice(&stream[at..end])) else {
                return;
            };
            at = end;
            for piece in pieces {
                match piece {
                    Piece::Size(n) => size = Some(n),
                    Piece::Zeros { offset, len } => {
                        assert_eq!(offset, covered);
                        covered += len;
                    }
                    Piece::Data { offset, bytes } => {
                        // Every gap came as Zeros before.
                        assert_eq!(offset, covered);
                        covered = offset + bytes.len() as u64;
                    }
                    Piece::End => assert_eq!(Some(covered), size),
                }
                assert!(covered <= size.unwrap_or(0));
            }
        }
        if d.finish().is_ok() {
            assert_eq!(Some(covered), size);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            magic in proptest::prelude::any::<bool>(),
            size in 0u64..512,
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            cuts in proptest::collection::vec(0usize..4096, 0..8),
        ) {
            // Past the magic and a plausible size (mostly), or not at all.
            let mut stream = Vec::new();
            if magic {
                stream.extend(MAGIC);
                stream.extend(size.to_le_bytes());
            }
            stream.extend(rest);
            check_any(&stream, &cuts);
        }

        #[test]
        fn damaged_streams_never_panic(
            records in proptest::collection::vec((0u64..64, 1u64..64), 0..6),
            flip in 0usize..4096,
            value in proptest::prelude::any::<u8>(),
            cuts in proptest::collection::vec(0usize..4096, 0..8),
        ) {
            // Records laid out in order, then one byte changed anywhere.
            let (mut at, mut laid) = (0, Vec::new());
            for (gap, len) in records {
                laid.push((at + gap, len));
                at += gap + len;
            }
            let sent = laid.iter().map(|r| r.1).sum();
            let mut s = stream(at + 10, &laid, sent);
            let i = flip % s.len();
            s[i] = value;
            check_any(&s, &cuts);
        }
    }

    #[test]
    fn plain_streams_are_stored_with_holes_for_zero_blocks() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let mut sent = vec![0u8; 8 << 20];
        sent[100] = 1; // data in the first block
        sent[(4 << 20) + 5000] = 2; // and in one in the middle
        let last = sent.len() - 1;
        sent[last] = 3;
        let mut w = HoleWriter::new(File::create(&path).unwrap());
        // Pieces of awkward sizes, as a network delivers them.
        for chunk in sent.chunks(3001) {
            w.push(chunk).unwrap();
        }
        assert_eq!(w.len(), sent.len() as u64);
        assert_eq!(w.finish().unwrap(), sent.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), sent);
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            allocated < 1 << 20,
            "{allocated} bytes allocated for 12 KiB of data"
        );
        // And a sparse stream of it carries three blocks.
        let r = SparseReader::new(File::open(&path).unwrap()).unwrap();
        assert!(r.data_bytes() <= 3 * 4096, "{}", r.data_bytes());

        // A stream ending in zeros, or shorter than a block, keeps its length.
        for len in [10_000, 7] {
            let path = dir.path().join(format!("zeros-{len}"));
            let mut w = HoleWriter::new(File::create(&path).unwrap());
            w.push(&vec![0u8; len]).unwrap();
            assert_eq!(w.finish().unwrap(), len as u64);
            assert_eq!(std::fs::read(&path).unwrap(), vec![0u8; len]);
        }
    }

    #[test]
    fn broken_streams_are_refused() {
        let ok = stream(100, &[(0, 10), (50, 50)], 60);
        assert!(decode(&ok, 5, 1000).is_ok());
        // Cut anywhere before the end record's last byte.
        for cut in [0, 5, 16, 20, 40, ok.len() - 1] {
            assert_eq!(
                decode(&ok[..cut], 3, 1000),
                Err(SparseError::Truncated),
                "cut at {cut}"
            );
        }
        let mut trailing = ok.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing, 5, 1000), Err(SparseError::TrailingBytes));
        let mut magic = ok.clone();
        magic[0] = b'X';
        assert_eq!(decode(&magic, 5, 1000), Err(SparseError::BadMagic));
        assert_eq!(
            decode(&stream(100, &[(0, 10)], 11), 5, 1000),
            Err(SparseError::BadEnd { said: 11, got: 10 })
        );
        for records in [
            &[(50, 10), (40, 5)][..], // backwards
            &[(0, 10), (5, 10)],      // overlapping
            &[(95, 10)],              // past the end
            &[(10, 0)],               // empty
        ] {
            let sent = records.iter().map(|r| r.1).sum();
            assert!(
                matches!(
                    decode(&stream(100, records, sent), 7, 1000),
                    Err(SparseError::BadRecord { .. })
                ),
                "{records:?}"
            );
        }
        // An offset and length that overflow.
        let mut s = Vec::new();
        s.extend(MAGIC);
        s.extend(100u64.to_le_bytes());
        s.extend(10u64.to_le_bytes());
        s.extend((u64::MAX - 5).to_le_bytes());
        assert!(matches!(
            decode(&s, 16, 1000),
            Err(SparseError::BadRecord { .. })
        ));
    }
}
