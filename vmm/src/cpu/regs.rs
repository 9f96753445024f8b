//! Register state for the boot vCPU and the boot-time tables it needs in memory
//! (GDT, and identity page tables for the 64-bit Linux boot protocol).

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_xcr, kvm_xcrs, Msrs,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::layout::{
    BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR, ZERO_PAGE_ADDR,
};

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, EBX = start_info.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity-mapped, RSI = zero page.
    Linux64,
}

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing boot tables to guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM took {set} of the {total} boot MSRs")]
    PartialMsrs { set: usize, total: usize },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Descriptor flags (access byte and granularity nibble, as in `gdt_entry`).
const CODE64: u16 = 0xa09b;
const CODE32: u16 = 0xc09b;
const DATA: u16 = 0xc093;
const TSS: u16 = 0x808b;

/// Encodes a GDT descriptor. `flags` packs the access byte (bits 0..8) and the
/// G/DB/L/AVL nibble (bits 12..16), the layout the Linux boot code uses.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
        | ((limit & 0x000f_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

/// The hidden segment state a descriptor loads.
pub fn segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = bit(55);
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit,
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

fn gdt_for(mode: EntryMode) -> [u64; 4] {
    let code = match mode {
        EntryMode::Pvh => CODE32,
        EntryMode::Linux64 => CODE64,
    };
    [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA, 0, 0xfffff),
        gdt_entry(TSS, 0, 0xfffff),
    ]
}

/// Writes the GDT/IDT (and, for 64-bit entry, identity page tables covering the
/// first GiB with 2 MiB pages) into guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap, mode: EntryMode) -> Result<(), RegsError> {
    for (i, entry) in gdt_for(mode).iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    if mode == EntryMode::Linux64 {
        mem.write_obj(PDPT_ADDR | 0x03, GuestAddress(PML4_ADDR))?;
        mem.write_obj(PD_ADDR | 0x03, GuestAddress(PDPT_ADDR))?;
        for i in 0..512u64 {
            // Present, writable, 2 MiB page.
            mem.write_obj((i << 21) | 0x83, GuestAddress(PD_ADDR + i * 8))?;
        }
    }
    Ok(())
}

pub fn boot_sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let gdt = gdt_for(mode);
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);

    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match mode {
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Linux64 => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    sregs
}

pub fn boot_regs(mode: EntryMode, entry: u64, pvh_start_info: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh => regs.rbx = pvh_start_info,
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_ADDR;
        }
    }
    regs
}

/// Sets the boot vCPU's registers for `mode`.
pub fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    mode: EntryMode,
    entry: u64,
    pvh_start_info: u64,
) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&boot_sregs(sregs, mode))
        .map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&boot_regs(mode, entry, pvh_start_info))
        .map_err(kvm("KVM_SET_REGS"))
}

/// FPU and MSR state every vCPU starts with.
/// Starts the vCPU with XCR0 holding every state component its CPUID
/// offers, the value Linux itself sets early in boot. KVM reports the XSAVE
/// area's size (CPUID 0xD EBX) for the XCR0 in force and refreshes it when
/// the guest writes XCR0; a nested KVM whose guest's XSETBV never exits to
/// it (QEMU's TCG) keeps reporting the reset value's size, and Linux warns
/// "XSAVE consistency problem" with a call trace at every boot. Not fatal:
/// a host without XSAVE refuses it, and the guest sets XCR0 itself anyway.
pub fn setup_xcr0(vcpu: &VcpuFd, offered: u64) {
    // x87 always; nothing beyond x87 and SSE without XSAVE offered.
    if offered & 0b11 != 0b11 {
        return;
    }
    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0] = kvm_xcr {
        xcr: 0,
        reserved: 0,
        value: offered,
    };
    if let Err(e) = vcpu.set_xcrs(&xcrs) {
        tracing::debug!("KVM_SET_XCRS (XCR0 {offered:#x}): {e}");
    }
}

pub fn setup_fpu_and_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;

    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::PartialMsrs {
        set: 0,
        total: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(RegsError::PartialMsrs {
            set,
            total: entries.len(),
        });
    }
    Ok(())
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back: without it the guest runs uncached.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// LINT0 delivers the PIC's ExtINT, LINT1 delivers NMI, as firmware would leave them.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let reg = &mut lapic.regs[offset..offset + 4];
        let bytes: [u8; 4] = std::array::from_fn(|i| reg[i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (dst, src) in reg.iter_mut().zip(value.to_le_bytes()) {
            *dst = src as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_round_trip_into_segments() {
        let code64 = segment_from_gdt(gdt_entry(CODE64, 0, 0xfffff), 1);
        assert_eq!(
            (code64.l, code64.db, code64.type_, code64.present),
            (1, 0, 0xb, 1)
        );
        assert_eq!(
            (code64.base, code64.limit, code64.selector),
            (0, 0xffff_ffff, 8)
        );

        let code32 = segment_from_gdt(gdt_entry(CODE32, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db, code32.g, code32.s), (0, 1, 1, 1));

        let data = segment_from_gdt(gdt_entry(DATA, 0x1234_5678, 0xfffff), 2);
        assert_eq!(
            (data.type_, data.base, data.selector),
            (0x3, 0x1234_5678, 16)
        );

        let tss = segment_from_gdt(gdt_entry(TSS, 0, 0xfffff), 3);
        assert_eq!((tss.type_, tss.s, tss.g), (0xb, 0, 1));
        assert_eq!(tss.limit, 0xffff_ffff);
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn entry_modes() {
        let pvh = boot_sregs(kvm_sregs::default(), EntryMode::Pvh);
        assert_eq!(pvh.cr0 & X86_CR0_PG, 0);
        assert_eq!(pvh.cr0 & X86_CR0_PE, X86_CR0_PE);
        assert_eq!((pvh.cs.l, pvh.cs.db), (0, 1));
        let r = boot_regs(EntryMode::Pvh, 0x100_0000, 0x6000);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x100_0000, 0x6000, 2));

        let lm = boot_sregs(kvm_sregs::default(), EntryMode::Linux64);
        assert_eq!(lm.efer, EFER_LME | EFER_LMA);
        assert_eq!(lm.cr3, PML4_ADDR);
        assert_eq!(lm.cs.l, 1);
        let r = boot_regs(EntryMode::Linux64, 0x10_0200, 0);
        assert_eq!((r.rsi, r.rsp), (ZERO_PAGE_ADDR, BOOT_STACK_POINTER));
    }

    #[test]
    fn identity_page_tables_cover_the_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem, EntryMode::Linux64).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT_ADDR);
        let last: u64 = mem.read_obj(GuestAddress(PD_ADDR + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
        let gdt1: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 8)).unwrap();
        assert_eq!(gdt1, gdt_entry(CODE64, 0, 0xfffff));
    }
}
