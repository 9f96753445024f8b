//! The ACPI Generic Event Device (ACPI 6.x, `ACPI0013`): how a
//! hardware-reduced platform, which has no fixed-feature power button,
//! tells the guest about events. The VMM sets an event bit and raises the
//! device's interrupt; the guest's GED driver runs the DSDT's `_EVT`, which
//! reads (and so clears) the bits through this port and notifies the
//! devices they name. Two events exist: the power button (`PNP0C0C`),
//! which a systemd guest answers by shutting down cleanly, and PCI hotplug
//! (see `pci_hotplug`).

use super::irq::IrqLine;
use super::{BusDevice, GuestRequest};

pub const BASE: u64 = 0x610;
pub const LEN: u64 = 1;
/// An ISA interrupt nothing else uses (edge-triggered, active-high).
pub const GSI: u32 = 5;
/// Event bits in the selector register.
pub const POWER_BUTTON: u8 = 1 << 0;
pub const PCI_HOTPLUG: u8 = 1 << 1;

pub struct Ged {
    irq: IrqLine,
    pending: u8,
}

impl Ged {
    pub fn new(irq: IrqLine) -> Self {
        Ged { irq, pending: 0 }
    }

    /// Queues `event` and interrupts the guest.
    pub fn notify(&mut self, event: u8) -> std::io::Result<()> {
        self.pending |= event;
        self.irq.raise()
    }
}

impl BusDevice for Ged {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Reading takes the pending events.
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = std::mem::take(&mut self.pending);
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) -> Option<GuestRequest> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_once_and_interrupt_the_guest() {
        let irq = IrqLine::new(GSI).unwrap();
        let evt = irq.eventfd().try_clone().unwrap();
        let mut ged = Ged::new(irq);
        let mut byte = [0xffu8; 1];
        ged.read(0, &mut byte);
        assert_eq!(byte, [0], "nothing pending");
        ged.notify(POWER_BUTTON).unwrap();
        assert_eq!(evt.read().unwrap(), 1, "the interrupt was raised");
        ged.read(0, &mut byte);
        assert_eq!(byte, [POWER_BUTTON]);
        ged.read(0, &mut byte);
        assert_eq!(byte, [0], "cleared by the read");
        let mut wide = [0xffu8; 4];
        ged.notify(POWER_BUTTON).unwrap();
        ged.read(0, &mut wide);
        assert_eq!(wide, [POWER_BUTTON, 0, 0, 0]);
        assert_eq!(ged.write(0, &[1]), None);
    }
}
