//! CPUID for each vCPU: what KVM supports, plus the topology this VM has (one
//! socket, one thread per core) and the hypervisor bit, less hardware
//! virtualization (VMX, SVM): Virga offers no nested virtualization, as
//! Firecracker and most clouds' standard instance types do not. It keeps the
//! host kernel's nested KVM out of tenants' reach, and a guest that sees
//! neither flag does not load kvm at boot (seconds of a cloud image's boot).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_STRUCTURED_FEATURES: u32 = 0x7;
const LEAF_XSAVE: u32 = 0xd;
const LEAF_AMD_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_SVM: u32 = 0x8000_000a;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_VMX: u32 = 1 << 5;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 0x8000_0001 ECX.
const ECX_SVM: u32 = 1 << 2;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Size of the legacy XSAVE area plus its header: what XCR0 = x87 needs at reset.
const XSAVE_LEGACY_AND_HEADER: u32 = 576;

/// XSAVE state components and the CPUID feature (leaf, register, bit) that must be
/// present for the guest to use each.
#[derive(Clone, Copy)]
enum Reg {
    Ecx1,
    Ebx7,
    Ecx7,
    Edx7,
}
const XSAVE_COMPONENT_FEATURES: [(u32, Reg, u32); 8] = [
    (2, Reg::Ecx1, 28),  // AVX
    (3, Reg::Ebx7, 14),  // MPX bounds
    (4, Reg::Ebx7, 14),  // MPX config
    (5, Reg::Ebx7, 16),  // AVX-512 opmask
    (6, Reg::Ebx7, 16),  // AVX-512 ZMM_Hi256
    (7, Reg::Ebx7, 16),  // AVX-512 Hi16_ZMM
    (9, Reg::Ecx7, 3),   // PKRU
    (17, Reg::Edx7, 24), // AMX tile config (and 18, tile data, below)
];

/// Topology level types in leaf 0xb/0x1f ECX[15:8].
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

pub fn vendor(cpuid: &CpuId) -> Vendor {
    let Some(leaf0) = cpuid.as_slice().iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    id[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to number `count` items: the APIC-ID shift for a topology level.
fn id_bits(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

/// Rewrites `cpuid` (from `KVM_GET_SUPPORTED_CPUID`) for vCPU `id` of `count`.
pub fn customize(cpuid: &mut CpuId, id: u8, count: u8, tsc_deadline: bool) {
    align_xsave_with_features(cpuid);
    let vendor = vendor(cpuid);
    let apic_id = u32::from(id);
    let count32 = u32::from(count);
    let core_bits = id_bits(count);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX: [31:24] initial APIC ID, [23:16] logical CPUs, [15:8] CLFLUSH
                // line size in 8-byte units.
                entry.ebx = (apic_id << 24) | (count32 << 16) | (8 << 8) | (entry.ebx & 0xff);
                entry.ecx |= ECX_HYPERVISOR;
                entry.ecx &= !ECX_VMX;
                if tsc_deadline {
                    entry.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS if vendor == Vendor::Intel => {
                // EAX[31:26]: cores per package - 1; [25:14]: threads sharing this
                // cache - 1 (each core has its own, except the shared last level).
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count32 - 1 } else { 0 };
                entry.eax =
                    (entry.eax & 0x3fff) | ((count32 - 1) << 26) | ((sharing & 0xfff) << 14);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                topology_level(entry, apic_id, count32, core_bits);
            }
            LEAF_AMD_EXT_FEATURES => entry.ecx &= !ECX_SVM,
            LEAF_AMD_SVM => (entry.eax, entry.ebx, entry.ecx, entry.edx) = (0, 0, 0, 0),
            LEAF_AMD_ADDR_SIZES if vendor == Vendor::Amd => {
                // ECX[15:12]: APIC-ID bits for cores, [7:0]: cores - 1.
                entry.ecx = (entry.ecx & !0xf0ff) | (core_bits << 12) | (count32 - 1);
            }
            LEAF_AMD_EXT_APIC_ID if vendor == Vendor::Amd => {
                entry.eax = apic_id;
                entry.ebx = apic_id & 0xff; // core id; one thread per core
                entry.ecx = 0; // node 0, one node per package
            }
            _ => {}
        }
    }
}

/// Nested hosts can report XSAVE components (leaf 0xD) whose feature flags they do
/// not report (leaf 1/7), or a stale size; Linux then warns "XSAVE consistency
/// problem". Drop such components and recompute the sizes.
fn align_xsave_with_features(cpuid: &mut CpuId) {
    let reg = |cpuid: &CpuId, r: Reg| {
        let (function, pick): (u32, fn(&kvm_cpuid_entry2) -> u32) = match r {
            Reg::Ecx1 => (LEAF_FEATURES, |e| e.ecx),
            Reg::Ebx7 => (LEAF_STRUCTURED_FEATURES, |e| e.ebx),
            Reg::Ecx7 => (LEAF_STRUCTURED_FEATURES, |e| e.ecx),
            Reg::Edx7 => (LEAF_STRUCTURED_FEATURES, |e| e.edx),
        };
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == 0)
            .map_or(0, pick)
    };
    let mut unsupported = 0u64;
    for (component, r, bit) in XSAVE_COMPONENT_FEATURES {
        if reg(cpuid, r) & (1 << bit) == 0 {
            unsupported |= 1 << component;
            if component == 17 {
                unsupported |= 1 << 18;
            }
        }
    }
    let entries = cpuid.as_mut_slice();
    let Some(base) = entries
        .iter()
        .position(|e| e.function == LEAF_XSAVE && e.index == 0)
    else {
        return;
    };
    let mask = (u64::from(entries[base].edx) << 32 | u64::from(entries[base].eax)) & !unsupported;
    let mut max_size = XSAVE_LEGACY_AND_HEADER;
    for e in entries
        .iter_mut()
        .filter(|e| e.function == LEAF_XSAVE && e.index >= 2)
    {
        if e.index < 64 && mask & (1 << e.index) != 0 {
            max_size = max_size.max(e.ebx.saturating_add(e.eax));
        } else {
            (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
        }
    }
    let base = &mut entries[base];
    base.eax = mask as u32;
    base.edx = (mask >> 32) as u32;
    // EBX is the size for the XCR0 in force. KVM should refresh it when the guest
    // writes XCR0, but a nested KVM was seen not to, and Linux enables every
    // component offered; so start from the size with all of them, as QEMU does.
    base.ebx = max_size;
    base.ecx = max_size;
}

/// The user state components (XCR0 bits) the CPUID offers the guest.
pub fn xcr0_offered(cpuid: &CpuId) -> u64 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == LEAF_XSAVE && e.index == 0)
        .map_or(0, |e| u64::from(e.edx) << 32 | u64::from(e.eax))
}

fn topology_level(entry: &mut kvm_cpuid_entry2, apic_id: u32, count: u32, core_bits: u32) {
    entry.edx = apic_id;
    match entry.index {
        0 => {
            entry.eax = 0;
            entry.ebx = 1;
            entry.ecx = (LEVEL_TYPE_SMT << 8) | entry.index;
        }
        1 => {
            entry.eax = core_bits;
            entry.ebx = count;
            entry.ecx = (LEVEL_TYPE_CORE << 8) | entry.index;
        }
        _ => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = entry.index;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn amd_base() -> CpuId {
        let mut leaf0 = entry(0, 0);
        leaf0.ebx = u32::from_le_bytes(*b"Auth");
        leaf0.edx = u32::from_le_bytes(*b"enti");
        leaf0.ecx = u32::from_le_bytes(*b"cAMD");
        let mut leaf1 = entry(1, 0);
        leaf1.ebx = 0xffff_ffff;
        CpuId::from_entries(&[
            leaf0,
            leaf1,
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(LEAF_AMD_ADDR_SIZES, 0),
            entry(LEAF_AMD_EXT_APIC_ID, 0),
        ])
        .unwrap()
    }

    #[test]
    fn vendor_is_read_from_leaf0() {
        assert_eq!(vendor(&amd_base()), Vendor::Amd);
        assert_eq!(vendor(&CpuId::new(0).unwrap()), Vendor::Other);
    }

    #[test]
    fn apic_ids_and_counts_per_vcpu() {
        for (id, count) in [(0u8, 1u8), (2, 4), (31, 32)] {
            let mut c = amd_base();
            customize(&mut c, id, count, true);
            let l1 = find(&c, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(id));
            assert_eq!((l1.ebx >> 16) & 0xff, u32::from(count));
            assert_eq!(l1.ebx & 0xff, 0xff, "brand index kept");
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
            assert_eq!(l1.edx & EDX_HTT != 0, count > 1);

            let smt = find(&c, 0xb, 0);
            let core = find(&c, 0xb, 1);
            let end = find(&c, 0xb, 2);
            assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8), (0, 1, LEVEL_TYPE_SMT));
            assert_eq!(core.ebx, u32::from(count));
            assert!(1u32 << core.eax >= u32::from(count));
            assert_eq!(core.ecx >> 8, LEVEL_TYPE_CORE);
            assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
            assert_eq!(smt.edx, u32::from(id));

            let sizes = find(&c, LEAF_AMD_ADDR_SIZES, 0);
            assert_eq!(sizes.ecx & 0xff, u32::from(count) - 1);
            assert_eq!(find(&c, LEAF_AMD_EXT_APIC_ID, 0).eax, u32::from(id));
        }
    }

    #[test]
    fn xsave_components_follow_feature_flags() {
        let mut leaf1 = entry(1, 0);
        leaf1.ecx = 1 << 28; // AVX, but no PKU in leaf 7
        let mut xsave0 = entry(0xd, 0);
        xsave0.eax = 0x207; // x87, SSE, AVX, PKRU
        (xsave0.ebx, xsave0.ecx) = (0x240, 0xa88);
        let mut avx = entry(0xd, 2);
        (avx.eax, avx.ebx) = (256, 576);
        let mut pkru = entry(0xd, 9);
        (pkru.eax, pkru.ebx) = (8, 2688);
        let mut c = CpuId::from_entries(&[leaf1, entry(7, 0), xsave0, avx, pkru]).unwrap();
        customize(&mut c, 0, 1, false);
        let x = find(&c, 0xd, 0);
        assert_eq!(x.eax, 0x7, "PKRU dropped, AVX kept");
        assert_eq!(x.ecx, 576 + 256, "max size covers AVX only");
        assert_eq!(x.ebx, 576 + 256, "size for every component offered");
        assert_eq!(find(&c, 0xd, 9).eax, 0);
        assert_eq!(find(&c, 0xd, 2).eax, 256);
    }

    #[test]
    fn no_hardware_virtualization_is_offered() {
        let mut leaf1 = entry(1, 0);
        leaf1.ecx = ECX_VMX | 1; // and SSE3, kept
        let mut ext = entry(LEAF_AMD_EXT_FEATURES, 0);
        ext.ecx = ECX_SVM | 1; // and LAHF/SAHF, kept
        let mut svm = entry(LEAF_AMD_SVM, 0);
        (svm.eax, svm.ebx, svm.edx) = (1, 0x8000, 0x1ebfbcff);
        let mut c = CpuId::from_entries(&[leaf1, ext, svm]).unwrap();
        customize(&mut c, 0, 1, false);
        assert_eq!(find(&c, 1, 0).ecx & (ECX_VMX | 1), 1);
        assert_eq!(find(&c, LEAF_AMD_EXT_FEATURES, 0).ecx, 1);
        let svm = find(&c, LEAF_AMD_SVM, 0);
        assert_eq!((svm.eax, svm.ebx, svm.ecx, svm.edx), (0, 0, 0, 0));
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(32), 5);
    }
}
