//! Cutting the uncompressed ELF vmlinux out of a bzImage.
//!
//! Debian's kernel compresses its payload with LZ4 in the legacy frame format: a
//! magic number, then blocks of `[u32 compressed length][data]`, each inflating to
//! at most 8 MiB. The ELF is trimmed to the extent its headers describe, dropping
//! whatever the decompressor found after the stream.

const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

#[derive(Debug, thiserror::Error)]
pub enum VmlinuxError {
    #[error("not a bzImage (no HdrS signature)")]
    NotBzImage,
    #[error("no LZ4 legacy payload in the bzImage (is it compressed another way?)")]
    NoLz4Payload,
    #[error("the LZ4 payload does not inflate to an ELF image")]
    NotElf,
    #[error("the ELF headers are truncated or inconsistent")]
    BadElf,
}

pub fn extract(bzimage: &[u8]) -> Result<Vec<u8>, VmlinuxError> {
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err(VmlinuxError::NotBzImage);
    }
    let mut search = 0;
    while let Some(pos) = find(&bzimage[search..], &LZ4_LEGACY_MAGIC) {
        let start = search + pos;
        let out = inflate_legacy(&bzimage[start + LZ4_LEGACY_MAGIC.len()..]);
        if out.starts_with(&ELF_MAGIC) {
            let len = elf_extent(&out).ok_or(VmlinuxError::BadElf)?;
            let mut out = out;
            out.truncate(len);
            return Ok(out);
        }
        search = start + 1;
    }
    Err(if search == 0 {
        VmlinuxError::NoLz4Payload
    } else {
        VmlinuxError::NotElf
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Inflates blocks until one fails to parse: the stream has no end marker, and the
/// kernel appends its own trailer after it.
fn inflate_legacy(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while data.len() >= 4 {
        let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let Some(compressed) = data.get(4..4 + len) else {
            break;
        };
        match lz4_flex::block::decompress_into(compressed, &mut block) {
            Ok(n) => out.extend_from_slice(&block[..n]),
            Err(_) => break,
        }
        data = &data[4 + len..];
    }
    out
}

fn u16_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from(u16::from_le_bytes(
        b.get(off..off + 2)?.try_into().ok()?,
    )))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// The bytes an ELF64 file spans: the furthest of its section table, program
/// headers and segment contents.
fn elf_extent(elf: &[u8]) -> Option<usize> {
    let (phoff, shoff) = (u64_at(elf, 0x20)?, u64_at(elf, 0x28)?);
    let (phentsize, phnum) = (u16_at(elf, 0x36)?, u16_at(elf, 0x38)?);
    let (shentsize, shnum) = (u16_at(elf, 0x3a)?, u16_at(elf, 0x3c)?);
    let mut end = phoff.checked_add(phentsize * phnum)?;
    end = end.max(shoff.checked_add(shentsize * shnum)?);
    for i in 0..phnum {
        let ph = usize::try_from(phoff + i * phentsize).ok()?;
        let (offset, filesz) = (u64_at(elf, ph + 8)?, u64_at(elf, ph + 32)?);
        end = end.max(offset.checked_add(filesz)?);
    }
    for i in 0..shnum {
        let sh = usize::try_from(shoff + i * shentsize).ok()?;
        let kind = u64::from(u32::from_le_bytes(
            elf.get(sh + 4..sh + 8)?.try_into().ok()?,
        ));
        // SHT_NOBITS occupies no file space.
        if kind != 8 {
            let (offset, size) = (u64_at(elf, sh + 24)?, u64_at(elf, sh + 32)?);
            end = end.max(offset.checked_add(size)?);
        }
    }
    let end = usize::try_from(end).ok()?;
    (end <= elf.len()).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one program header covering bytes 0..0x100.
    fn tiny_elf() -> Vec<u8> {
        let mut e = vec![0u8; 0x100];
        e[..4].copy_from_slice(&ELF_MAGIC);
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // phoff
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // phnum
        e[0x40 + 8..0x40 + 16].copy_from_slice(&0u64.to_le_bytes()); // p_offset
        e[0x40 + 32..0x40 + 40].copy_from_slice(&0x100u64.to_le_bytes()); // p_filesz
        e
    }

    fn bzimage_with(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 0x400];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img.extend_from_slice(&LZ4_LEGACY_MAGIC);
        let block = lz4_flex::block::compress(payload);
        img.extend_from_slice(&(block.len() as u32).to_le_bytes());
        img.extend_from_slice(&block);
        // The kernel's trailer: the uncompressed size, which must not be taken as a block.
        img.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        img
    }

    #[test]
    fn extracts_and_trims_the_elf() {
        let mut payload = tiny_elf();
        payload.extend_from_slice(&[0xaa; 64]); // padding past the ELF's extent
        let out = extract(&bzimage_with(&payload)).unwrap();
        assert_eq!(out, tiny_elf());
    }

    #[test]
    fn rejects_what_is_not_a_bzimage_or_not_lz4() {
        assert!(matches!(
            extract(&[0u8; 0x300]),
            Err(VmlinuxError::NotBzImage)
        ));
        let mut img = vec![0u8; 0x400];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(matches!(extract(&img), Err(VmlinuxError::NoLz4Payload)));
        assert!(matches!(
            extract(&bzimage_with(b"not an elf at all")),
            Err(VmlinuxError::NotElf)
        ));
    }

    #[test]
    fn truncated_elf_headers_are_an_error() {
        let mut elf = tiny_elf();
        elf[0x40 + 32..0x40 + 40].copy_from_slice(&0x1_0000u64.to_le_bytes());
        assert!(matches!(
            extract(&bzimage_with(&elf)),
            Err(VmlinuxError::BadElf)
        ));
    }
}
