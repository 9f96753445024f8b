//! The PVH boot structure: `hvm_start_info`, the module list (the initramfs) and the
//! memory map, as the kernel's PVH entry point reads them.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::Initramfs;
use crate::layout::{
    e820_map, CMDLINE_ADDR, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR, PVH_START_INFO_ADDR,
};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Version 1 carries the memory map; without it the kernel asks Xen for one.
const START_INFO_VERSION: u32 = 1;

pub fn start_info(memory: u64, initramfs: Option<Initramfs>, rsdp: GuestAddress) -> hvm_start_info {
    hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: START_INFO_VERSION,
        nr_modules: u32::from(initramfs.is_some()),
        modlist_paddr: if initramfs.is_some() {
            PVH_MODLIST_ADDR
        } else {
            0
        },
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: rsdp.0,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: e820_map(memory).len() as u32,
        ..Default::default()
    }
}

pub fn write_start_info(
    mem: &GuestMemoryMmap,
    memory: u64,
    initramfs: Option<Initramfs>,
    rsdp: GuestAddress,
) -> Result<(), GuestMemoryError> {
    for (i, e) in e820_map(memory).iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        };
        let at = PVH_MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))?;
    }
    if let Some(initrd) = initramfs {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_ADDR))?;
    }
    mem.write_obj(
        start_info(memory, initramfs, rsdp),
        GuestAddress(PVH_START_INFO_ADDR),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_info_points_at_everything() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let initrd = Initramfs {
            addr: 0x800_0000,
            size: 1234,
        };
        write_start_info(&mem, 256 << 20, Some(initrd), GuestAddress(0xe0000)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_START_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.rsdp_paddr, 0xe0000);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR);
        assert_eq!(info.memmap_entries, 4);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x800_0000, 1234));
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(
            (last.addr, last.addr + last.size, last.type_),
            (1 << 20, 256 << 20, 1)
        );

        let bare = start_info(256 << 20, None, GuestAddress(0xe0000));
        assert_eq!((bare.nr_modules, bare.modlist_paddr), (0, 0));
    }
}
