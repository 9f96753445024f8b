//! The hardware-reduced ACPI registers named in the FADT: sleep control (S5 = power
//! off), sleep status, and reset.

use super::{BusDevice, GuestRequest};
use crate::acpi::S5_SLEEP_TYPE;

pub const BASE: u64 = 0x600;
pub const LEN: u64 = 3;
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
pub const SLEEP_STATUS_OFFSET: u64 = 1;
pub const RESET_OFFSET: u64 = 2;
pub const RESET_VALUE: u8 = 1;

/// SLP_TYPx sits in bits 2..=4 of the sleep-control register, SLP_EN is bit 5.
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0b111;
const SLEEP_ENABLE: u8 = 1 << 5;

#[derive(Default)]
pub struct AcpiPm;

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // No wake events ever pend.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        let value = *data.first()?;
        match offset {
            SLEEP_CONTROL_OFFSET
                if value & SLEEP_ENABLE != 0
                    && (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK == S5_SLEEP_TYPE =>
            {
                Some(GuestRequest::PowerOff)
            }
            RESET_OFFSET if value == RESET_VALUE => Some(GuestRequest::Reboot),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_enable_powers_off() {
        let mut pm = AcpiPm;
        // What Linux's acpi_hw_extended_sleep writes for _S5_ = 5.
        assert_eq!(
            pm.write(SLEEP_CONTROL_OFFSET, &[0x34]),
            Some(GuestRequest::PowerOff)
        );
        assert_eq!(pm.write(SLEEP_CONTROL_OFFSET, &[0x14]), None, "no SLP_EN");
        assert_eq!(
            pm.write(SLEEP_CONTROL_OFFSET, &[0x20 | (3 << 2)]),
            None,
            "S3"
        );
        assert_eq!(pm.write(SLEEP_STATUS_OFFSET, &[0x80]), None);
        assert_eq!(
            pm.write(RESET_OFFSET, &[RESET_VALUE]),
            Some(GuestRequest::Reboot)
        );
        assert_eq!(pm.write(RESET_OFFSET, &[]), None);
        let mut b = [0xffu8];
        pm.read(SLEEP_STATUS_OFFSET, &mut b);
        assert_eq!(b, [0]);
    }
}
