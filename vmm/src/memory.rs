//! Guest RAM: anonymous mappings aligned to 2 MiB and advised for huge pages.
//!
//! KVM maps guest memory with 2 MiB pages only where the host address and the guest
//! address agree modulo 2 MiB; an arbitrary mmap address would force 4 KiB pages,
//! and every first touch of a 4 KiB page is a nested-paging fault (very costly
//! under nested virtualisation, and a TLB cost everywhere). vm-memory has no
//! aligned allocation, so the mappings are made here and handed to it as raw
//! regions, which this module unmaps.

use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::layout::ram_regions;

const HUGE_PAGE: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("mapping {bytes} bytes of guest memory: {source}")]
    Map {
        bytes: usize,
        source: std::io::Error,
    },
    #[error("guest memory layout: {0}")]
    Layout(String),
}

/// One anonymous mapping, unmapped on drop.
struct Mapping {
    addr: usize,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes (a multiple of 4 KiB) at a 2 MiB-aligned address.
    fn aligned(len: usize) -> Result<Self, MemoryError> {
        let err = |source| MemoryError::Map { bytes: len, source };
        let reserve = len + HUGE_PAGE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks; the
        // result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(err(std::io::Error::last_os_error()));
        }
        let base = base as usize;
        let start = base.next_multiple_of(HUGE_PAGE);
        let (head, tail) = (start - base, base + reserve - (start + len));
        // SAFETY: both ranges lie inside the reservation just made and are not
        // referenced by anything; unmapping them leaves [start, start + len).
        unsafe {
            if head > 0 {
                libc::munmap(base as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
            // Advisory: where THP is "madvise", ask for huge pages; failure is harmless.
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        Ok(Mapping { addr: start, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `aligned` and is unmapped only here; the
        // GuestMemoryMmap views of it are dropped first (see GuestRam's field order).
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// The guest's RAM and the mappings behind it.
pub struct GuestRam {
    // Declared first so it is dropped before the mappings it points into.
    memory: GuestMemoryMmap,
    _mappings: Vec<Mapping>,
}

impl GuestRam {
    pub fn new(bytes: u64) -> Result<Self, MemoryError> {
        let mut regions = Vec::new();
        let mut mappings = Vec::new();
        for (start, len) in ram_regions(bytes) {
            let len =
                usize::try_from(len).map_err(|_| MemoryError::Layout(format!("{len:#x} bytes")))?;
            let mapping = Mapping::aligned(len)?;
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
            // SAFETY: [addr, addr + len) is the live mapping just created, made with
            // these protection and flags, and it outlives the region (GuestRam drops
            // `memory` before `_mappings`).
            let region = unsafe {
                MmapRegion::build_raw(
                    mapping.addr as *mut u8,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                )
            }
            .map_err(|e| MemoryError::Layout(e.to_string()))?;
            mappings.push(mapping);
            regions.push(
                GuestRegionMmap::new(region, GuestAddress(start)).ok_or_else(|| {
                    MemoryError::Layout(format!("region at {start:#x} overflows"))
                })?,
            );
        }
        let memory = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| MemoryError::Layout(e.to_string()))?;
        Ok(GuestRam {
            memory,
            _mappings: mappings,
        })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn regions_are_huge_page_aligned_and_usable() {
        let ram = GuestRam::new(64 << 20).unwrap();
        let mem = ram.memory();
        for region in mem.iter() {
            assert_eq!(region.as_ptr() as usize % HUGE_PAGE, 0);
        }
        mem.write_obj(0xdead_beef_u32, GuestAddress((64 << 20) - 4))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress((64 << 20) - 4)).unwrap(),
            0xdead_beef
        );
        assert!(mem.write_obj(1u8, GuestAddress(64 << 20)).is_err());
    }
}
