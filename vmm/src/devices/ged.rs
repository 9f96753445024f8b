//! The ACPI Generic Event Device (ACPI 6.x, `ACPI0013`): how a
//! hardware-reduced platform, which has no fixed-feature power button,
//! tells the guest about events. The VMM sets an event bit and raises the
//! device's interrupt; the guest's GED driver runs the DSDT's `_EVT`, which
//! reads (and so clears) the bits through this port and notifies the
//! devices they name. The interrupt is level-triggered and stays raised
//! until the bits are read: an event that comes while the guest boots
//! (an unplug right after a start) waits for the guest's GED driver
//! instead of being lost. Two events exist: the power button (`PNP0C0C`),
//! which a systemd guest answers by shutting down cleanly, and PCI hotplug
//! (see `pci_hotplug`).

use super::irq::LevelLine;
use super::{BusDevice, GuestRequest};

pub const BASE: u64 = 0x610;
pub const LEN: u64 = 1;
/// An ISA interrupt nothing else uses (level-triggered, active-high), on
/// the IOAPIC alone (see `GsiRouter::ioapic_only`).
pub const GSI: u32 = 5;
/// Event bits in the selector register.
pub const POWER_BUTTON: u8 = 1 << 0;
pub const PCI_HOTPLUG: u8 = 1 << 1;

pub struct Ged {
    irq: Box<dyn LevelLine>,
    pending: u8,
}

impl Ged {
    pub fn new(irq: Box<dyn LevelLine>) -> Self {
        Ged { irq, pending: 0 }
    }

    /// Queues `event` and interrupts the guest (until it reads the events).
    pub fn notify(&mut self, event: u8) -> std::io::Result<()> {
        self.pending |= event;
        self.irq.set(true)
    }
}

impl BusDevice for Ged {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Reading takes the pending events, and with them the interrupt.
        data.fill(0);
        let events = std::mem::take(&mut self.pending);
        if let Some(first) = data.first_mut() {
            *first = events;
        }
        if events != 0 {
            if let Err(e) = self.irq.set(false) {
                tracing::warn!("lowering the GED's interrupt: {e}");
            }
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) -> Option<GuestRequest> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The line's levels, as set.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<bool>>>);

    impl LevelLine for Recorded {
        fn set(&self, high: bool) -> std::io::Result<()> {
            self.0.lock().unwrap().push(high);
            Ok(())
        }
    }

    #[test]
    fn events_are_read_once_and_hold_the_interrupt_until_then() {
        let line = Recorded::default();
        let mut ged = Ged::new(Box::new(line.clone()));
        let levels = || line.0.lock().unwrap().clone();
        let mut byte = [0xffu8; 1];
        ged.read(0, &mut byte);
        assert_eq!(byte, [0], "nothing pending");
        assert!(levels().is_empty(), "nothing to lower");
        ged.notify(POWER_BUTTON).unwrap();
        ged.notify(PCI_HOTPLUG).unwrap();
        assert_eq!(levels(), [true, true], "raised, and held");
        ged.read(0, &mut byte);
        assert_eq!(byte, [POWER_BUTTON | PCI_HOTPLUG]);
        assert_eq!(levels(), [true, true, false], "lowered by the read");
        ged.read(0, &mut byte);
        assert_eq!(byte, [0], "cleared by the read");
        let mut wide = [0xffu8; 4];
        ged.notify(POWER_BUTTON).unwrap();
        ged.read(0, &mut wide);
        assert_eq!(wide, [POWER_BUTTON, 0, 0, 0]);
        assert_eq!(ged.write(0, &[1]), None);
    }
}
