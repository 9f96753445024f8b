//! The guest-physical memory map: where boot structures live, which ranges are RAM,
//! and the E820 table that tells the guest so.
//!
//! ```text
//! 0x0000_0500  GDT (boot)            0x0000_9000  page tables (64-bit boot)
//! 0x0000_6000  PVH start_info        0x0002_0000  kernel command line
//! 0x0000_7000  zero page             0x0009_fc00  EBDA .. 1 MiB: reserved
//! 0x0000_8ff0  boot stack            0x000e_0000  ACPI tables (RSDP first)
//!                                    0x000f_0000  SMBIOS entry point and tables
//! 0x0010_0000  RAM: kernel, then free; initramfs at the top of low RAM
//! 0xc000_0000  32-bit MMIO hole .. 4 GiB: PCI BARs, then ECAM at 0xe000_0000,
//!              IOAPIC, LAPIC; RAM continues above 4 GiB
//! ```

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const PVH_START_INFO_ADDR: u64 = 0x6000;
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
pub const PVH_MEMMAP_ADDR: u64 = 0x6100;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const EBDA_START: u64 = 0x9fc00;
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = SMBIOS_START;
/// SMBIOS: where Linux scans for its entry point without firmware.
pub const SMBIOS_START: u64 = 0xf0000;
pub const SMBIOS_END: u64 = 0x10_0000;
pub const HIMEM_START: u64 = 0x10_0000;
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// Where PCI BARs are placed (and may be moved by the guest).
pub const PCI_MMIO_START: u64 = MMIO_HOLE_START;
pub const PCI_MMIO_END: u64 = 0xe000_0000;
/// PCIe configuration space (ECAM) for bus 0.
pub const ECAM_BASE: u64 = 0xe000_0000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

pub const PAGE_SIZE: u64 = 4096;

// The boot structures must not overlap each other or the reserved legacy area.
const _: () = assert!(PVH_MEMMAP_ADDR + 16 * 24 <= ZERO_PAGE_ADDR);
const _: () = assert!(CMDLINE_ADDR + crate::config::MAX_CMDLINE_LEN as u64 <= EBDA_START);
const _: () = assert!(ACPI_START >= EBDA_START && SMBIOS_END == HIMEM_START);

/// E820 entry types, as the guest reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    Ram = 1,
    Reserved = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Type,
}

/// The (start, length) pairs of guest RAM for `memory` bytes, skipping the MMIO hole.
pub fn ram_regions(memory: u64) -> Vec<(u64, u64)> {
    if memory <= MMIO_HOLE_START {
        vec![(0, memory)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, memory - MMIO_HOLE_START),
        ]
    }
}

/// End of the RAM below the MMIO hole: where the initramfs goes (just under it).
pub fn low_ram_end(memory: u64) -> u64 {
    memory.min(MMIO_HOLE_START)
}

/// The E820 map: the legacy area below 1 MiB that holds the EBDA, the ACPI tables and
/// the old BIOS window is reserved, so the guest never allocates over our tables.
pub fn e820_map(memory: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Type::Ram,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820Type::Reserved,
        },
    ];
    let low_end = low_ram_end(memory);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820Type::Ram,
        });
    }
    // Linux only trusts MMCONFIG in reserved space.
    map.push(E820Entry {
        addr: ECAM_BASE,
        size: crate::pci::ECAM_SIZE,
        kind: E820Type::Reserved,
    });
    if memory > MMIO_HOLE_START {
        map.push(E820Entry {
            addr: MMIO_HOLE_END,
            size: memory - MMIO_HOLE_START,
            kind: E820Type::Ram,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(256 * MIB), vec![(0, 256 * MIB)]);
        let map = e820_map(256 * MIB);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820Type::Ram
            }
        );
        assert_eq!(map[1].kind, E820Type::Reserved);
        assert_eq!(map[1].addr + map[1].size, HIMEM_START);
        assert_eq!(
            map[2],
            E820Entry {
                addr: HIMEM_START,
                size: 256 * MIB - HIMEM_START,
                kind: E820Type::Ram
            }
        );
        assert_eq!((map[3].addr, map[3].kind), (ECAM_BASE, E820Type::Reserved));
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let memory = 4 * GIB;
        assert_eq!(
            ram_regions(memory),
            vec![
                (0, MMIO_HOLE_START),
                (MMIO_HOLE_END, memory - MMIO_HOLE_START)
            ]
        );
        let map = e820_map(memory);
        assert_eq!(map.len(), 5);
        assert_eq!(map[2].addr + map[2].size, MMIO_HOLE_START);
        assert_eq!(map[4].addr, MMIO_HOLE_END);
        assert_eq!(map[4].size, memory - MMIO_HOLE_START);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Type::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, memory - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn entries_are_sorted_and_disjoint() {
        for memory in [64 * MIB, 3 * GIB, 3 * GIB + MIB, 8 * GIB] {
            let map = e820_map(memory);
            for pair in map.windows(2) {
                assert!(
                    pair[0].addr + pair[0].size <= pair[1].addr,
                    "{memory:#x}: {map:?}"
                );
            }
        }
    }
}
