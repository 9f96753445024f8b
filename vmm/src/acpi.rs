//! ACPI tables: how the guest learns its CPUs, interrupt controllers, legacy devices
//! and how to power off.
//!
//! The Debian cloud kernel has no MP-table parser, so the MADT is the only way it
//! finds more than one CPU. The platform is "hardware-reduced" ACPI: no PM timer or
//! fixed-event registers for the guest to poll (every port access is an exit), just a
//! sleep-control and a reset register backed by [`crate::devices::acpi_pm`].

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::{acpi_pm, ged, pci_hotplug};
use crate::layout::{
    ACPI_END, ACPI_START, ECAM_BASE, IOAPIC_ADDR, LAPIC_ADDR, PCI_MMIO_END, PCI_MMIO_START,
};

const OEM_ID: [u8; 6] = *b"VIRGA ";
const OEM_REVISION: u32 = 1;

/// IAPC_BOOT_ARCH: an 8042 is present (so the guest probes it), no VGA.
const IAPC_8042_PRESENT: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// MADT flag: a PC-AT dual 8259 is present (KVM's in-kernel PIC); the guest masks it.
const MADT_PCAT_COMPAT: u32 = 1;

/// Value of `_S5_` SLP_TYP: what the guest writes to the sleep-control register to power off.
pub const S5_SLEEP_TYPE: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables need {needed} bytes, more than the {available} reserved for them")]
    TooLarge { needed: u64, available: u64 },
    #[error("writing ACPI tables to guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// The tables, serialised, with the guest address each one goes to.
pub struct AcpiTables {
    pub rsdp_addr: GuestAddress,
    tables: Vec<(GuestAddress, Vec<u8>)>,
}

impl AcpiTables {
    /// Builds RSDP -> XSDT -> {FADT -> DSDT, MADT, MCFG}, laid out from `ACPI_START`.
    pub fn build(vcpus: u8) -> Result<Self, AcpiError> {
        let mut next = ACPI_START;
        let mut place = |len: usize| {
            let addr = next;
            next = (next + len as u64 + 15) & !15;
            addr
        };

        let rsdp_addr = place(Rsdp::len());
        let dsdt = bytes_of(&dsdt());
        let dsdt_addr = place(dsdt.len());
        let fadt = bytes_of(&fadt(dsdt_addr));
        let fadt_addr = place(fadt.len());
        let madt = madt(vcpus);
        let madt_addr = place(madt.len());
        let mut mcfg = MCFG::new(OEM_ID, *b"VIRGAMCF", OEM_REVISION);
        mcfg.add_ecam(ECAM_BASE, 0, 0, 0);
        let mcfg = bytes_of(&mcfg);
        let mcfg_addr = place(mcfg.len());

        let mut xsdt = XSDT::new(OEM_ID, *b"VIRGAXSD", OEM_REVISION);
        xsdt.add_entry(fadt_addr);
        xsdt.add_entry(madt_addr);
        xsdt.add_entry(mcfg_addr);
        let xsdt = bytes_of(&xsdt);
        let xsdt_addr = place(xsdt.len());
        let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr));

        if next > ACPI_END {
            return Err(AcpiError::TooLarge {
                needed: next - ACPI_START,
                available: ACPI_END - ACPI_START,
            });
        }
        Ok(AcpiTables {
            rsdp_addr: GuestAddress(rsdp_addr),
            tables: vec![
                (GuestAddress(rsdp_addr), rsdp),
                (GuestAddress(dsdt_addr), dsdt),
                (GuestAddress(fadt_addr), fadt),
                (GuestAddress(madt_addr), madt),
                (GuestAddress(mcfg_addr), mcfg),
                (GuestAddress(xsdt_addr), xsdt),
            ],
        })
    }

    pub fn write_to(&self, memory: &GuestMemoryMmap) -> Result<(), AcpiError> {
        for (addr, bytes) in &self.tables {
            memory.write_slice(bytes, *addr)?;
        }
        Ok(())
    }

    /// The serialised table whose signature is `sig` ("RSD " finds the RSDP).
    pub fn table(&self, sig: &[u8; 4]) -> Option<&[u8]> {
        self.tables
            .iter()
            .map(|(_, t)| t.as_slice())
            .find(|t| t.starts_with(sig))
    }
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// The DSDT describes the PCI root bridge, the legacy devices we emulate and the
/// S5 (soft-off) state.
fn dsdt() -> Sdt {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"VIRGADSD", OEM_REVISION);

    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE, &aml::ZERO]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut dsdt);

    legacy_device(
        &mut dsdt,
        "\\_SB_.COM1",
        "PNP0501",
        &[&aml::IO::new(0x3f8, 0x3f8, 0, 8), &irq(4)],
    );
    legacy_device(
        &mut dsdt,
        "\\_SB_.PS2K",
        "PNP0303",
        &[
            &aml::IO::new(0x60, 0x60, 0, 1),
            &aml::IO::new(0x64, 0x64, 0, 1),
            &irq(1),
        ],
    );
    legacy_device(
        &mut dsdt,
        "\\_SB_.RTC_",
        "PNP0B00",
        &[&aml::IO::new(0x70, 0x70, 0, 2), &irq(8)],
    );
    pci_root(&mut dsdt);
    power_button(&mut dsdt);
    dsdt.update_checksum();
    dsdt
}

/// PCI0: bus 0 with the 32-bit BAR window; and a motherboard resource reserving
/// ECAM, without which Linux refuses MMCONFIG.
fn pci_root(table: &mut Sdt) {
    let buses = aml::AddressSpace::new_bus_number(0x0u16, 0x0u16);
    let window = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO_START as u32,
        (PCI_MMIO_END - 1) as u32,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&buses, &window]);
    let hid = aml::EISAName::new("PNP0A03");
    let hid_name = aml::Name::new("_HID".into(), &hid);
    let adr = aml::Name::new("_ADR".into(), &aml::ZERO);
    let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
    let crs_name = aml::Name::new("_CRS".into(), &crs);
    let slots: Vec<HotplugSlot> = (1..crate::pci::SLOTS as u8).map(HotplugSlot).collect();
    let notifies: Vec<SlotNotify> = (1..crate::pci::SLOTS as u8).map(SlotNotify).collect();
    let mut children: Vec<&dyn Aml> = vec![&hid_name, &adr, &seg, &uid, &bbn, &crs_name];
    children.extend(slots.iter().map(|s| s as &dyn Aml));
    // DVNT(bitmap, code): notifies each slot named in the bitmap.
    let dvnt = aml::Method::new(
        "DVNT".into(),
        2,
        true,
        notifies.iter().map(|n| n as &dyn Aml).collect(),
    );
    // PCNT: what the GED's PCI event runs; "device check" (1) for the
    // slots plugged, "eject request" (3) for those to unplug.
    let up: aml::Path = "\\_SB_.PHPR.PCIU".into();
    let down: aml::Path = "\\_SB_.PHPR.PCID".into();
    let three = 3u8;
    let check = aml::MethodCall::new("DVNT".into(), vec![&up, &aml::ONE]);
    let eject = aml::MethodCall::new("DVNT".into(), vec![&down, &three]);
    let acquire = aml::Acquire::new("\\_SB_.PHPR.BLCK".into(), 0xffff);
    let release = aml::Release::new("\\_SB_.PHPR.BLCK".into());
    let pcnt = aml::Method::new(
        "PCNT".into(),
        0,
        true,
        vec![&acquire, &check, &eject, &release],
    );
    children.push(&dvnt);
    children.push(&pcnt);
    aml::Device::new("\\_SB_.PCI0".into(), children).to_aml_bytes(table);
    hotplug_controller(table);

    let ecam = aml::Memory32Fixed::new(false, ECAM_BASE as u32, crate::pci::ECAM_SIZE as u32);
    legacy_device(table, "\\_SB_.MRES", "PNP0C02", &[&ecam]);
}

/// The power button (`PNP0C0C`) and the Generic Event Device that signals
/// it (see `devices::ged`): on the GED's interrupt the guest runs `_EVT`,
/// which reads the pending events and notifies the button (0x80: pressed).
fn power_button(table: &mut Sdt) {
    let hid = aml::EISAName::new("PNP0C0C");
    let hid_name = aml::Name::new("_HID".into(), &hid);
    let uid_name = aml::Name::new("_UID".into(), &aml::ZERO);
    aml::Device::new("\\_SB_.PWRB".into(), vec![&hid_name, &uid_name]).to_aml_bytes(table);

    let ged_hid = aml::Name::new("_HID".into(), &"ACPI0013");
    // Level-triggered, active-high: held until `_EVT` reads the events.
    let interrupt = aml::Interrupt::new(true, false, false, false, ged::GSI);
    let crs = aml::ResourceTemplate::new(vec![&interrupt]);
    let crs_name = aml::Name::new("_CRS".into(), &crs);
    let (base, len) = (ged::BASE as usize, ged::LEN as usize);
    let region = aml::OpRegion::new("GDST".into(), aml::OpRegionSpace::SystemIO, &base, &len);
    let field = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::Byte,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"GDAT", 8)],
    );
    let events = aml::Local(0);
    let gdat: aml::Path = "GDAT".into();
    let take = aml::Store::new(&events, &gdat);
    let button: aml::Path = "\\_SB_.PWRB".into();
    let pressed = 0x80u8;
    let notify = aml::Notify::new(&button, &pressed);
    let bit = ged::POWER_BUTTON;
    let is_button = aml::And::new(&aml::ZERO, &events, &bit);
    let if_button = aml::If::new(&is_button, vec![&notify]);
    let pci_bit = ged::PCI_HOTPLUG;
    let is_pci = aml::And::new(&aml::ZERO, &events, &pci_bit);
    let scan = aml::MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
    let if_pci = aml::If::new(&is_pci, vec![&scan]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&take, &if_button, &if_pci]);
    aml::Device::new(
        "\\_SB_.GED_".into(),
        vec![&ged_hid, &uid_name, &crs_name, &region, &field, &evt],
    )
    .to_aml_bytes(table);
}

/// A slot of bus 0 as ACPI PCI hotplug sees it: its address, its number,
/// and `_EJ0`, which tells the hotplug device the guest let go of it.
struct HotplugSlot(u8);

impl Aml for HotplugSlot {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let adr = u32::from(self.0) << 16;
        let sun = u32::from(self.0);
        let adr_name = aml::Name::new("_ADR".into(), &adr);
        let sun_name = aml::Name::new("_SUN".into(), &sun);
        let sun_path: aml::Path = "_SUN".into();
        let eject = aml::MethodCall::new("\\_SB_.PHPR.PCEJ".into(), vec![&sun_path]);
        let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&eject]);
        aml::Device::new(
            slot_name(self.0).as_str().into(),
            vec![&adr_name, &sun_name, &ej0],
        )
        .to_aml_bytes(sink);
    }
}

/// In `DVNT`: notifies slot `self.0` with code Arg1 when Arg0 names it.
struct SlotNotify(u8);

impl Aml for SlotNotify {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let bit = 1u32 << self.0;
        let named = aml::And::new(&aml::ZERO, &aml::Arg(0), &bit);
        let slot: aml::Path = slot_name(self.0).as_str().into();
        let notify = aml::Notify::new(&slot, &aml::Arg(1));
        aml::If::new(&named, vec![&notify]).to_aml_bytes(sink);
    }
}

fn slot_name(slot: u8) -> String {
    format!("S{slot:03}")
}

/// The hotplug device's registers (see `devices::pci_hotplug`), and `PCEJ`,
/// which `_EJ0` calls with the slot's number.
fn hotplug_controller(table: &mut Sdt) {
    let hid = aml::EISAName::new("PNP0A06");
    let hid_name = aml::Name::new("_HID".into(), &hid);
    let uid_name = aml::Name::new("_UID".into(), &"PCI Hotplug Controller");
    let (base, len) = (pci_hotplug::BASE as u16, pci_hotplug::LEN as u8);
    let io = aml::IO::new(base, base, 1, len);
    let crs = aml::ResourceTemplate::new(vec![&io]);
    let crs_name = aml::Name::new("_CRS".into(), &crs);
    let mutex = aml::Mutex::new("BLCK".into(), 0);
    let (region_base, region_len) = (pci_hotplug::BASE as usize, pci_hotplug::LEN as usize);
    let region = aml::OpRegion::new(
        "PCST".into(),
        aml::OpRegionSpace::SystemIO,
        &region_base,
        &region_len,
    );
    let field = aml::Field::new(
        "PCST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![
            aml::FieldEntry::Named(*b"PCIU", 32),
            aml::FieldEntry::Named(*b"PCID", 32),
            aml::FieldEntry::Named(*b"B0EJ", 32),
        ],
    );
    let acquire = aml::Acquire::new("BLCK".into(), 0xffff);
    let b0ej: aml::Path = "B0EJ".into();
    let bit = aml::ShiftLeft::new(&b0ej, &aml::ONE, &aml::Arg(0));
    let release = aml::Release::new("BLCK".into());
    let pcej = aml::Method::new("PCEJ".into(), 1, true, vec![&acquire, &bit, &release]);
    aml::Device::new(
        "\\_SB_.PHPR".into(),
        vec![
            &hid_name, &uid_name, &crs_name, &mutex, &region, &field, &pcej,
        ],
    )
    .to_aml_bytes(table);
}

/// An ISA interrupt: edge-triggered, active-high, exclusive.
fn irq(number: u32) -> aml::Interrupt {
    aml::Interrupt::new(true, true, false, false, number)
}

/// Appends `Device(path) { _HID, _UID 0, _CRS }` to `table`.
fn legacy_device(table: &mut Sdt, path: &str, hid: &str, resources: &[&dyn Aml]) {
    let crs = aml::ResourceTemplate::new(resources.to_vec());
    let hid = aml::EISAName::new(hid);
    let hid_name = aml::Name::new("_HID".into(), &hid);
    let uid_name = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs_name = aml::Name::new("_CRS".into(), &crs);
    aml::Device::new(path.into(), vec![&hid_name, &uid_name, &crs_name]).to_aml_bytes(table);
}

fn fadt(dsdt_addr: u64) -> acpi_tables::fadt::FADT {
    let io_register =
        |port: u64| GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port);
    let mut fadt = FADTBuilder::new(OEM_ID, *b"VIRGAFAC", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = (IAPC_8042_PRESENT | IAPC_VGA_NOT_PRESENT).into();
    fadt.reset_reg = io_register(acpi_pm::BASE + acpi_pm::RESET_OFFSET);
    fadt.reset_value = acpi_pm::RESET_VALUE;
    fadt.sleep_control_reg = io_register(acpi_pm::BASE + acpi_pm::SLEEP_CONTROL_OFFSET);
    fadt.sleep_status_reg = io_register(acpi_pm::BASE + acpi_pm::SLEEP_STATUS_OFFSET);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"VIRGAVMM").into();
    fadt.finalize()
}

/// The MADT, serialised: the crate's builder has no setter for the header flags, so
/// they are patched in and the checksum fixed up.
fn madt(vcpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"VIRGAAPI",
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR as u32),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR as u32, 0));
    let mut bytes = bytes_of(&madt);
    bytes[40..44].copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    fix_checksum(&mut bytes);
    bytes
}

/// Sets byte 9 of a table so that all its bytes sum to zero.
fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    table[9] = 0u8.wrapping_sub(sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(table: &[u8]) -> bool {
        table.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)) == 0
    }

    fn u32_at(bytes: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_checksums_to_zero_and_has_its_length() {
        for vcpus in [1, 2, 4, 32] {
            let tables = AcpiTables::build(vcpus).unwrap();
            for sig in [b"DSDT", b"FACP", b"APIC", b"XSDT", b"MCFG"] {
                let t = tables.table(sig).unwrap();
                assert!(checksum_ok(t), "{} checksum", String::from_utf8_lossy(sig));
                assert_eq!(u32_at(t, 4) as usize, t.len());
            }
            let rsdp = tables.table(b"RSD ").unwrap();
            assert_eq!(&rsdp[..8], b"RSD PTR ");
            assert!(checksum_ok(&rsdp[..20]), "RSDP v1 checksum");
            assert!(checksum_ok(rsdp), "RSDP extended checksum");
        }
    }

    #[test]
    fn madt_lists_one_enabled_lapic_per_vcpu_and_one_ioapic() {
        for vcpus in [1u8, 2, 4, 32] {
            let tables = AcpiTables::build(vcpus).unwrap();
            let madt = tables.table(b"APIC").unwrap();
            assert_eq!(u32_at(madt, 36), LAPIC_ADDR as u32);
            assert_eq!(u32_at(madt, 40), MADT_PCAT_COMPAT);
            let mut lapic_ids = Vec::new();
            let mut ioapics = 0;
            let mut off = 44;
            while off < madt.len() {
                let (kind, len) = (madt[off], madt[off + 1] as usize);
                assert!(len >= 2, "zero-length MADT entry");
                match kind {
                    0 => {
                        assert_eq!(u32_at(madt, off + 4) & 1, 1, "LAPIC enabled");
                        lapic_ids.push(madt[off + 3]);
                    }
                    1 => {
                        assert_eq!(u32_at(madt, off + 4), IOAPIC_ADDR as u32);
                        ioapics += 1;
                    }
                    other => panic!("unexpected MADT entry type {other}"),
                }
                off += len;
            }
            assert_eq!(off, madt.len());
            assert_eq!(lapic_ids, (0..vcpus).collect::<Vec<_>>());
            assert_eq!(ioapics, 1);
        }
    }

    #[test]
    fn pointers_chain_from_rsdp_to_dsdt() {
        let tables = AcpiTables::build(2).unwrap();
        let addr_of = |sig: &[u8; 4]| {
            tables
                .tables
                .iter()
                .find(|(_, t)| t.starts_with(sig))
                .map(|(a, _)| a.0)
                .unwrap()
        };
        let rsdp = tables.table(b"RSD ").unwrap();
        assert_eq!(u64_at(rsdp, 24), addr_of(b"XSDT"));
        let xsdt = tables.table(b"XSDT").unwrap();
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        assert_eq!(
            entries,
            vec![addr_of(b"FACP"), addr_of(b"APIC"), addr_of(b"MCFG")]
        );
        let fadt = tables.table(b"FACP").unwrap();
        assert_eq!(u64_at(fadt, 140), addr_of(b"DSDT"), "X_DSDT");
        assert_eq!(u32_at(fadt, 112) & (1 << 20), 1 << 20, "HW_REDUCED_ACPI");
        assert_eq!(tables.rsdp_addr.0, ACPI_START);
    }

    #[test]
    fn dsdt_declares_s5() {
        let tables = AcpiTables::build(1).unwrap();
        let dsdt = tables.table(b"DSDT").unwrap();
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(4).any(|w| w == b"COM1"));
        assert!(dsdt.windows(4).any(|w| w == b"PCI0"));
        let mcfg = tables.table(b"MCFG").unwrap();
        assert_eq!(u64_at(mcfg, 44), ECAM_BASE, "ECAM base of segment 0");
    }

    #[test]
    fn dsdt_declares_the_power_button_and_its_event_device() {
        let tables = AcpiTables::build(1).unwrap();
        let dsdt = tables.table(b"DSDT").unwrap();
        let has = |s: &[u8]| dsdt.windows(s.len()).any(|w| w == s);
        for name in [
            &b"PWRB"[..],
            b"GED_",
            b"ACPI0013\0",
            b"_EVT",
            b"GDST",
            b"GDAT",
        ] {
            assert!(has(name), "{}", String::from_utf8_lossy(name));
        }
        // PNP0C0C as an EISA id, and the GED's port in its OperationRegion
        // (SystemIO, then the base as a WordConst).
        assert!(has(&[0x41, 0xd0, 0x0c, 0x0c]), "PNP0C0C");
        let base = u16::try_from(ged::BASE).unwrap().to_le_bytes();
        assert!(
            has(&[0x01, 0x0b, base[0], base[1]]),
            "OperationRegion at the GED's port"
        );
    }
}
