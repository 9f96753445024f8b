//! The Linux x86 boot protocol's zero page (`boot_params`), for bzImages and for ELF
//! kernels without a PVH note.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::Initramfs;
use crate::layout::{e820_map, CMDLINE_ADDR, ZERO_PAGE_ADDR};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;

pub fn zero_page(
    memory: u64,
    header: Option<setup_header>,
    cmdline_len: usize,
    initramfs: Option<Initramfs>,
    rsdp: GuestAddress,
) -> boot_params {
    let mut params = boot_params::default();
    match header {
        Some(hdr) => params.hdr = hdr,
        None => params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT,
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initramfs {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = rsdp.0;
    let map = e820_map(memory);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    params
}

pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    memory: u64,
    header: Option<setup_header>,
    cmdline_len: usize,
    initramfs: Option<Initramfs>,
    rsdp: GuestAddress,
) -> Result<(), GuestMemoryError> {
    let params = zero_page(memory, header, cmdline_len, initramfs, rsdp);
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_page_carries_e820_cmdline_initrd_and_rsdp() {
        let header = setup_header {
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        let initrd = Initramfs {
            addr: 0x0f00_0000,
            size: 0x1000,
        };
        let p = zero_page(
            256 << 20,
            Some(header),
            42,
            Some(initrd),
            GuestAddress(0xe0000),
        );
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.type_of_loader }, KERNEL_LOADER_OTHER);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!(
            { p.hdr.initrd_addr_max },
            0x7fff_ffff,
            "kernel's header kept"
        );
        assert_eq!({ p.hdr.ramdisk_image }, 0x0f00_0000);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries, 4);
        let ram = p.e820_table[2];
        assert_eq!(
            ({ ram.addr }, { ram.size }, { ram.r#type }),
            (1 << 20, (256 << 20) - (1 << 20), 1)
        );

        let elf = zero_page(256 << 20, None, 1, None, GuestAddress(0xe0000));
        assert_eq!({ elf.hdr.kernel_alignment }, KERNEL_MIN_ALIGNMENT);
        assert_eq!({ elf.hdr.ramdisk_size }, 0);
    }
}
