//! A PCI root complex: one bus, configuration space through ECAM (PCIe
//! MMCONFIG) and through the legacy ports 0xcf8/0xcfc (configuration
//! mechanism #1), and the 32-bit window where device BARs live.
//!
//! The ports are there because Linux trusts ECAM early only when it can check
//! the E820 map with mechanism #1 at hand: without them every boot prints
//! "PCI: Fatal: No config space access function found" (ECAM is taken later
//! from ACPI), and firmware-era kernels and tools look for them.

pub mod config;
pub mod msix;

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use config::{PciConfig, PciId, NUM_BARS};

use crate::devices::{lock, BusDevice, GuestRequest};

pub const SLOTS: usize = 32;
/// Bytes of ECAM per function: bus 0 needs 32 devices x 8 functions x 4 KiB.
const ECAM_FUNCTION_SIZE: u64 = 4096;
pub const ECAM_SIZE: u64 = SLOTS as u64 * 8 * ECAM_FUNCTION_SIZE;

/// A PCI function on the root bus.
pub trait PciDevice: Send {
    fn config(&self) -> &PciConfig;
    fn config_mut(&mut self) -> &mut PciConfig;
    /// The guest wrote `len` bytes of config space at `offset` (already applied).
    fn config_written(&mut self, _offset: usize, _len: usize) {}
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// The device's own configuration changed (a disk grew): the driver is
    /// to be told.
    fn device_config_changed(&mut self) {}
    /// The virtio device behind this function, if it is one.
    fn virtio_mut(&mut self) -> Option<&mut dyn crate::virtio::VirtioDevice> {
        None
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// The host bridge at 00.0: only identifies the root complex.
pub struct HostBridge {
    config: PciConfig,
}

impl Default for HostBridge {
    fn default() -> Self {
        HostBridge {
            config: PciConfig::new(PciId {
                // Red Hat's QEMU PCIe host bridge ID, which guests know as a plain
                // host bridge needing no driver.
                vendor: 0x1b36,
                device: 0x0008,
                class: 0x06,
                subclass: 0x00,
                prog_if: 0,
                revision: 0,
                subsystem_vendor: 0x1b36,
                subsystem: 0x0008,
            }),
        }
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
    fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
}

pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("no free PCI slot")]
    NoFreeSlot,
    #[error("PCI slot {0} is taken or does not exist")]
    Taken(u8),
}

/// The devices on bus 0, by slot. Slots change while the guest runs
/// (hotplug), so they sit behind a lock; every access takes it for reading.
pub struct PciBus {
    slots: RwLock<Vec<Option<SharedPciDevice>>>,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    pub fn new() -> Self {
        let mut slots = vec![None; SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::default())) as SharedPciDevice);
        PciBus {
            slots: RwLock::new(slots),
        }
    }

    fn slots(&self) -> RwLockReadGuard<'_, Vec<Option<SharedPciDevice>>> {
        self.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn slots_mut(&self) -> RwLockWriteGuard<'_, Vec<Option<SharedPciDevice>>> {
        self.slots.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The lowest free slot.
    pub fn free_slot(&self) -> Result<u8, SlotError> {
        self.slots()
            .iter()
            .position(Option::is_none)
            .map(|s| s as u8)
            .ok_or(SlotError::NoFreeSlot)
    }

    /// Puts `device` in the lowest free slot and returns it.
    pub fn add(&self, device: SharedPciDevice) -> Result<u8, SlotError> {
        let slot = self.free_slot()?;
        self.add_at(slot, device)?;
        Ok(slot)
    }

    /// Puts `device` in `slot`, which must be free.
    pub fn add_at(&self, slot: u8, device: SharedPciDevice) -> Result<(), SlotError> {
        let mut slots = self.slots_mut();
        match slots.get_mut(usize::from(slot)) {
            Some(s @ None) => {
                *s = Some(device);
                Ok(())
            }
            _ => Err(SlotError::Taken(slot)),
        }
    }

    /// Takes the device out of `slot` (never the host bridge's).
    pub fn remove(&self, slot: u8) -> Option<SharedPciDevice> {
        if slot == 0 {
            return None;
        }
        self.slots_mut().get_mut(usize::from(slot))?.take()
    }

    /// The device in `slot`, if any.
    pub fn get(&self, slot: u8) -> Option<SharedPciDevice> {
        self.device(usize::from(slot))
    }

    fn device(&self, slot: usize) -> Option<SharedPciDevice> {
        self.slots().get(slot)?.clone()
    }

    /// Reads config space register `reg` of the device in `slot`; all ones
    /// for an empty slot.
    fn read_config(&self, slot: usize, reg: usize, data: &mut [u8]) {
        match self.device(slot) {
            Some(dev) => lock(&dev).config().read(reg, data),
            None => data.fill(0xff),
        }
    }

    fn write_config(&self, slot: usize, reg: usize, data: &[u8]) {
        if let Some(dev) = self.device(slot) {
            let mut dev = lock(&dev);
            if dev.config_mut().write(reg, data) {
                dev.config_written(reg, data.len());
            }
        }
    }
}

/// ECAM: config space of function f of device d on bus 0 at `(d << 15) | (f << 12)`.
pub struct EcamWindow(pub Arc<PciBus>);

impl EcamWindow {
    /// (slot, register) for function 0 of bus 0; other functions are absent.
    fn decode(offset: u64) -> Option<(usize, usize)> {
        let function = (offset >> 12) & 0x7;
        let slot = (offset >> 15) as usize;
        (function == 0 && offset < ECAM_SIZE).then_some((slot, (offset & 0xfff) as usize))
    }
}

impl BusDevice for EcamWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::decode(offset) {
            Some((slot, reg)) => self.0.read_config(slot, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        if let Some((slot, reg)) = Self::decode(offset) {
            self.0.write_config(slot, reg, data);
        }
        None
    }
}

/// Configuration mechanism #1's ports: the address register at 0xcf8 (taken
/// only as a whole 32-bit access, as the PCI spec has it: byte accesses there
/// belong to other devices) and the data window at 0xcfc-0xcff.
pub const CONFIG_PORTS_BASE: u64 = 0xcf8;
pub const CONFIG_PORTS_LEN: u64 = 8;
const ADDRESS_ENABLE: u32 = 1 << 31;
/// The address register's writable bits: enable, bus, device, function and
/// a dword-aligned register.
const ADDRESS_MASK: u32 = ADDRESS_ENABLE | 0x00ff_fffc;

pub struct ConfigPorts {
    bus: Arc<PciBus>,
    address: u32,
}

impl ConfigPorts {
    pub fn new(bus: Arc<PciBus>) -> Self {
        ConfigPorts { bus, address: 0 }
    }

    /// (slot, register) an access of `len` bytes at `within` (0-3) of the
    /// data window reaches: function 0 of bus 0 only, and within the dword.
    fn target(&self, within: u64, len: usize) -> Option<(usize, usize)> {
        let a = self.address;
        let (bus, slot, function) = ((a >> 16) & 0xff, (a >> 11) & 0x1f, (a >> 8) & 0x7);
        let fits = within as usize + len <= 4;
        (a & ADDRESS_ENABLE != 0 && bus == 0 && function == 0 && fits)
            .then_some((slot as usize, (a & 0xfc) as usize + within as usize))
    }
}

impl BusDevice for ConfigPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => match self.target(offset - 4, data.len()) {
                Some((slot, reg)) => self.bus.read_config(slot, reg, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        match (offset, <[u8; 4]>::try_from(data)) {
            (0, Ok(value)) => self.address = u32::from_le_bytes(value) & ADDRESS_MASK,
            (4..=7, _) => {
                if let Some((slot, reg)) = self.target(offset - 4, data.len()) {
                    self.bus.write_config(slot, reg, data);
                }
            }
            _ => {}
        }
        None
    }
}

/// The 32-bit MMIO window: an access goes to whichever device's BAR covers it.
/// BARs can move (the guest may reprogram them), so this is looked up per access
/// rather than registered once.
pub struct BarWindow {
    pub bus: Arc<PciBus>,
    pub base: u64,
}

impl BarWindow {
    fn find(&self, addr: u64) -> Option<(SharedPciDevice, usize, u64)> {
        for dev in self.bus.slots().iter().flatten() {
            let d = lock(dev);
            let config = d.config();
            if !config.memory_enabled() {
                continue;
            }
            for bar in 0..NUM_BARS {
                let (Some(b), Some(start)) = (config.bar(bar), config.bar_address(bar)) else {
                    continue;
                };
                if addr >= start && addr - start < b.size {
                    return Some((dev.clone(), bar, addr - start));
                }
            }
        }
        None
    }
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.find(self.base + offset) {
            Some((dev, bar, off)) => lock(&dev).bar_read(bar, off, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        if let Some((dev, bar, off)) = self.find(self.base + offset) {
            lock(&dev).bar_write(bar, off, data);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecam_reaches_function_zero_only() {
        let mut ecam = EcamWindow(Arc::new(PciBus::new()));
        let mut id = [0u8; 4];
        ecam.read(0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0008_1b36, "host bridge at 00.0");
        ecam.read(1 << 15, &mut id);
        assert_eq!(id, [0xff; 4], "empty slot");
        ecam.read(1 << 12, &mut id);
        assert_eq!(id, [0xff; 4], "function 1 absent");
        ecam.read(ECAM_SIZE + 8, &mut id);
        assert_eq!(id, [0xff; 4], "beyond bus 0");
        ecam.write(0, &[0; 4]);
        ecam.read(0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0008_1b36, "read-only ID");
    }

    #[test]
    fn config_ports_reach_function_zero_of_bus_zero_as_ecam_does() {
        let mut ports = ConfigPorts::new(Arc::new(PciBus::new()));
        let mut dword = [0u8; 4];
        // Linux's probe: the enable bit reads back as written.
        ports.write(0, &0x8000_0000u32.to_le_bytes());
        ports.read(0, &mut dword);
        assert_eq!(u32::from_le_bytes(dword), 0x8000_0000);
        ports.read(4, &mut dword);
        assert_eq!(
            u32::from_le_bytes(dword),
            0x0008_1b36,
            "host bridge at 00.0"
        );
        // Bytes and words of the dword, at their port.
        let mut word = [0u8; 2];
        ports.read(6, &mut word);
        assert_eq!(u16::from_le_bytes(word), 0x0008, "device id");
        ports.write(0, &0x8000_0008u32.to_le_bytes());
        let mut byte = [0u8; 1];
        ports.read(7, &mut byte);
        assert_eq!(byte, [0x06], "class: bridge");
        // What does not reach a device reads all ones.
        for address in [
            0x0000_0000u32, // not enabled
            0x8000_0800,    // slot 1: empty
            0x8000_0100,    // function 1
            0x8001_0000,    // bus 1
        ] {
            ports.write(0, &address.to_le_bytes());
            ports.read(4, &mut dword);
            assert_eq!(dword, [0xff; 4], "{address:#x}");
        }
        ports.write(0, &0x8000_0000u32.to_le_bytes());
        ports.read(6, &mut dword);
        assert_eq!(dword, [0xff; 4], "past the dword");
        // Reserved and low bits do not stick; byte writes to 0xcf8 are not
        // the address register's.
        ports.write(0, &0xffff_ffffu32.to_le_bytes());
        ports.read(0, &mut dword);
        assert_eq!(u32::from_le_bytes(dword), 0x80ff_fffc);
        ports.write(1, &[0x06]);
        ports.read(0, &mut dword);
        assert_eq!(u32::from_le_bytes(dword), 0x80ff_fffc);
        // Writes reach config space as through ECAM (the ID is read-only).
        ports.write(0, &0x8000_0000u32.to_le_bytes());
        ports.write(4, &[0; 4]);
        ports.read(4, &mut dword);
        assert_eq!(u32::from_le_bytes(dword), 0x0008_1b36);
    }

    struct OneBar {
        config: PciConfig,
        last_write: Option<(usize, u64, Vec<u8>)>,
    }
    impl PciDevice for OneBar {
        fn config(&self) -> &PciConfig {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfig {
            &mut self.config
        }
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill((bar as u8) << 4 | offset as u8);
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.last_write = Some((bar, offset, data.to_vec()));
        }
    }

    #[test]
    fn bar_window_follows_bars_and_memory_enable() {
        let mut config = PciConfig::new(PciId {
            vendor: 1,
            device: 2,
            class: 0,
            subclass: 0,
            prog_if: 0,
            revision: 0,
            subsystem_vendor: 0,
            subsystem: 0,
        });
        config.add_bar64(0, 0x1000, 0xc000_2000).unwrap();
        let dev = Arc::new(Mutex::new(OneBar {
            config,
            last_write: None,
        }));
        let bus = PciBus::new();
        assert_eq!(bus.add(dev.clone()).unwrap(), 1);
        let mut window = BarWindow {
            bus: Arc::new(bus),
            base: 0xc000_0000,
        };
        let mut b = [0u8; 1];
        window.read(0x2004, &mut b);
        assert_eq!(b, [0xff], "memory decoding off");
        lock(&dev).config_mut().write(config::COMMAND, &[2, 0]);
        window.read(0x2004, &mut b);
        assert_eq!(b, [0x04]);
        window.write(0x2010, &[7]);
        assert_eq!(lock(&dev).last_write, Some((0, 0x10, vec![7])));
        window.read(0x3000, &mut b);
        assert_eq!(b, [0xff], "past the BAR");
    }
}
