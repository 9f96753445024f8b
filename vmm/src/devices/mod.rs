//! Emulated devices and the buses that route guest port and MMIO accesses to them.
//!
//! Every access here is a VM exit into this process, which is expensive (very much
//! so under nested virtualisation), so devices answer in as few accesses as the guest
//! driver allows and unclaimed addresses read as all ones.

pub mod acpi_pm;
pub mod ged;
pub mod i8042;
pub mod irq;
pub mod pci_hotplug;
pub mod rtc;
pub mod serial;

use std::sync::{Arc, Mutex};

/// Something the guest asked of the machine through a device register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestRequest {
    PowerOff,
    Reboot,
}

/// A device on the port-I/O or the MMIO bus.
pub trait BusDevice: Send {
    /// Fills `data` with the value of the register at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes a register; returns what the guest asked of the machine, if anything.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest>;
}

struct Range {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges (ports or guest-physical addresses) and the device behind each.
/// Built once, then shared by all vCPUs.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

/// No device sits at the address written to.
#[derive(Debug, PartialEq, Eq)]
pub struct Unclaimed;

#[derive(Debug, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps a device already on the bus")]
pub struct OverlapError {
    base: u64,
    len: u64,
}

impl Bus {
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), OverlapError> {
        let end = base.checked_add(len).ok_or(OverlapError { base, len })?;
        let overlaps = self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < end);
        if overlaps || len == 0 {
            return Err(OverlapError { base, len });
        }
        self.ranges.push(Range { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Range, u64)> {
        self.ranges
            .iter()
            .find(|r| addr >= r.base && addr - r.base < r.len)
            .map(|r| (r, addr - r.base))
    }

    /// Returns false when no device claims `addr`; `data` then reads as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((range, offset)) => {
                lock(&range.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Fails when no device claims `addr` (the write is dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<Option<GuestRequest>, Unclaimed> {
        match self.find(addr) {
            Some((range, offset)) => Ok(lock(&range.device).write(offset, data)),
            None => Err(Unclaimed),
        }
    }
}

/// A poisoned device lock means a vCPU thread panicked mid-access; the device state
/// is still the best we have, so keep serving it rather than cascade the panic.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> Option<GuestRequest> {
            self.0 = data[0];
            (data[0] == 0xfe).then_some(GuestRequest::Reboot)
        }
    }

    #[test]
    fn routes_by_range_and_reports_unclaimed_ports() {
        let mut bus = Bus::default();
        bus.insert(0x60, 1, Arc::new(Mutex::new(Echo(1)))).unwrap();
        bus.insert(0x70, 2, Arc::new(Mutex::new(Echo(10)))).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x71, &mut b));
        assert_eq!(b, [11]);
        assert!(!bus.read(0x72, &mut b));
        assert_eq!(b, [0xff]);
        assert_eq!(bus.write(0x60, &[0xfe]), Ok(Some(GuestRequest::Reboot)));
        assert_eq!(bus.write(0x61, &[0]), Err(Unclaimed));
        let mut w = [0u8; 4];
        assert!(!bus.read(0xcfc, &mut w));
        assert_eq!(w, [0xff; 4]);
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::default();
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Echo(0)))).unwrap();
        assert!(bus.insert(0x3ff, 1, Arc::new(Mutex::new(Echo(0)))).is_err());
        assert!(bus.insert(0x3f0, 9, Arc::new(Mutex::new(Echo(0)))).is_err());
        assert!(bus.insert(0x400, 0, Arc::new(Mutex::new(Echo(0)))).is_err());
        assert!(bus.insert(0xffff, 1, Arc::new(Mutex::new(Echo(0)))).is_ok());
        assert!(bus
            .insert(u64::MAX, 2, Arc::new(Mutex::new(Echo(0))))
            .is_err());
    }
}
