//! PCI hotplug the ACPI way (the design of QEMU's PIIX4 and Cloud
//! Hypervisor): it needs only conventional PCI and ACPI in the guest
//! (`CONFIG_HOTPLUG_PCI_ACPI`, which distribution kernels have).
//!
//! The DSDT (see `acpi::pci_hotplug`) gives each slot of bus 0 an ACPI
//! device with `_EJ0`, and declares these registers. To plug or unplug, the
//! VMM sets the slot's bit in "up" or "down" and raises the GED's PCI event;
//! the guest's `_EVT` reads both (reading clears them) and notifies each
//! named slot: "device check" for up (the guest scans the slot and binds a
//! driver), "eject request" for down (the guest unbinds the driver, then
//! writes the slot's bit to "eject"). Ejecting takes the device off the bus
//! at once, so a rescan never finds it again, and hands it to the VMM's
//! control loop, which lets go of it.
//!
//! | offset | register | access                                   |
//! |--------|----------|------------------------------------------|
//! | 0      | PCIU     | read: slots to check (cleared by read)   |
//! | 4      | PCID     | read: slots to eject (cleared by read)   |
//! | 8      | B0EJ     | write: slots the guest has ejected       |

use std::sync::Arc;

use super::{BusDevice, GuestRequest};
use crate::pci::{PciBus, SharedPciDevice};

pub const BASE: u64 = 0xae00;
pub const LEN: u64 = 12;
pub const UP_OFFSET: u64 = 0;
pub const DOWN_OFFSET: u64 = 4;
pub const EJECT_OFFSET: u64 = 8;

/// Called with each slot the guest ejected and the device that was in it.
pub type OnEject = Box<dyn Fn(u8, SharedPciDevice) + Send>;

pub struct PciHotplug {
    bus: Arc<PciBus>,
    up: u32,
    down: u32,
    on_eject: OnEject,
}

impl PciHotplug {
    pub fn new(bus: Arc<PciBus>, on_eject: OnEject) -> Self {
        PciHotplug {
            bus,
            up: 0,
            down: 0,
            on_eject,
        }
    }

    /// Tells the guest, once the GED interrupts it, that `slot` has a new
    /// device.
    pub fn plugged(&mut self, slot: u8) {
        self.up |= slot_bit(slot);
        self.down &= !slot_bit(slot);
    }

    /// Asks the guest, once the GED interrupts it, to let go of `slot`.
    pub fn unplug_requested(&mut self, slot: u8) {
        self.down |= slot_bit(slot);
        self.up &= !slot_bit(slot);
    }
}

fn slot_bit(slot: u8) -> u32 {
    1u32.checked_shl(u32::from(slot)).unwrap_or(0)
}

impl BusDevice for PciHotplug {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            UP_OFFSET => std::mem::take(&mut self.up),
            DOWN_OFFSET => std::mem::take(&mut self.down),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (d, b) in data
            .iter_mut()
            .zip(bytes.iter().chain(std::iter::repeat(&0)))
        {
            *d = *b;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        if offset != EJECT_OFFSET {
            return None;
        }
        let mut word = [0u8; 4];
        for (w, d) in word.iter_mut().zip(data) {
            *w = *d;
        }
        let slots = u32::from_le_bytes(word);
        // Slot 0 is the host bridge, which no guest may take away.
        for slot in 1..crate::pci::SLOTS as u8 {
            if slots & slot_bit(slot) != 0 {
                if let Some(device) = self.bus.remove(slot) {
                    (self.on_eject)(slot, device);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{mpsc, Mutex};

    use super::*;
    use crate::pci::config::{PciConfig, PciId};
    use crate::pci::PciDevice;

    struct Dummy(PciConfig);
    impl PciDevice for Dummy {
        fn config(&self) -> &PciConfig {
            &self.0
        }
        fn config_mut(&mut self) -> &mut PciConfig {
            &mut self.0
        }
        fn bar_read(&mut self, _: usize, _: u64, _: &mut [u8]) {}
        fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
    }

    fn dummy() -> SharedPciDevice {
        Arc::new(Mutex::new(Dummy(PciConfig::new(PciId {
            vendor: 1,
            device: 2,
            class: 0,
            subclass: 0,
            prog_if: 0,
            revision: 0,
            subsystem_vendor: 0,
            subsystem: 0,
        }))))
    }

    fn read32(h: &mut PciHotplug, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        h.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn bits_are_read_once_and_ejects_take_the_device_off_the_bus() {
        let bus = Arc::new(PciBus::new());
        assert_eq!(bus.add(dummy()).unwrap(), 1);
        assert_eq!(bus.add(dummy()).unwrap(), 2);
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let mut h = PciHotplug::new(
            bus.clone(),
            Box::new(move |slot, _| tx.lock().unwrap().send(slot).unwrap()),
        );
        h.plugged(2);
        h.unplug_requested(1);
        assert_eq!(read32(&mut h, UP_OFFSET), 1 << 2);
        assert_eq!(read32(&mut h, UP_OFFSET), 0, "cleared by the read");
        assert_eq!(read32(&mut h, DOWN_OFFSET), 1 << 1);
        assert_eq!(read32(&mut h, DOWN_OFFSET), 0);
        // A later request for the same slot replaces an unread one.
        h.plugged(1);
        h.unplug_requested(1);
        assert_eq!(read32(&mut h, UP_OFFSET), 0);
        assert_eq!(read32(&mut h, DOWN_OFFSET), 1 << 1);

        // The guest ejects slot 1, and names the host bridge and an empty
        // slot, which nothing happens to.
        h.write(EJECT_OFFSET, &(1u32 | 1 << 1 | 1 << 9).to_le_bytes());
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![1]);
        assert_eq!(bus.free_slot().unwrap(), 1, "slot 1 is free again");
        assert!(bus.remove(0).is_none(), "the host bridge stays");
        // Writes elsewhere and narrow reads do nothing harmful.
        h.write(UP_OFFSET, &[0xff; 4]);
        h.write(EJECT_OFFSET, &[]);
        assert_eq!(rx.try_iter().count(), 0);
        let mut byte = [0xffu8; 1];
        h.read(EJECT_OFFSET, &mut byte);
        assert_eq!(byte, [0]);
        h.write(EJECT_OFFSET, &[1 << 2]);
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            vec![2],
            "a byte write ejects too"
        );
    }
}
