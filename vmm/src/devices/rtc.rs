//! A CMOS real-time clock at 0x70/0x71 that reads the host's clock.
//!
//! The guest reads the time once at boot; the update-in-progress bit is never set,
//! so that read never spins.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{BusDevice, GuestRequest};

pub const BASE: u64 = 0x70;
pub const LEN: u64 = 2;

const INDEX_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Status B: 24-hour mode; bit 2 (binary, not BCD) is the guest's to choose.
const STATUS_B_24H: u8 = 1 << 1;
const STATUS_B_BINARY: u8 = 1 << 2;
/// Status D: valid RAM and time (the battery is fine).
const STATUS_D_VALID: u8 = 1 << 7;
/// Status A: 32.768 kHz time base, 1024 Hz rate; UIP (bit 7) clear.
const STATUS_A_DEFAULT: u8 = 0x26;

pub struct Rtc {
    index: u8,
    ram: [u8; 128],
    now: fn() -> u64,
}

impl Default for Rtc {
    fn default() -> Self {
        Self::with_clock(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        })
    }
}

impl Rtc {
    fn with_clock(now: fn() -> u64) -> Self {
        let mut ram = [0u8; 128];
        ram[REG_STATUS_A as usize] = STATUS_A_DEFAULT;
        ram[REG_STATUS_B as usize] = STATUS_B_24H;
        ram[REG_STATUS_D as usize] = STATUS_D_VALID;
        Rtc { index: 0, ram, now }
    }

    fn encode(&self, value: u8) -> u8 {
        if self.ram[REG_STATUS_B as usize] & STATUS_B_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn register(&self, reg: u8) -> u8 {
        let secs = (self.now)();
        let days = secs / 86_400;
        let (year, month, day) = civil_from_days(days);
        let sod = secs % 86_400;
        match reg {
            REG_SECONDS => self.encode((sod % 60) as u8),
            REG_MINUTES => self.encode((sod / 60 % 60) as u8),
            REG_HOURS => self.encode((sod / 3600) as u8),
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            REG_WEEKDAY => self.encode(((days + 4) % 7 + 1) as u8),
            REG_DAY => self.encode(day),
            REG_MONTH => self.encode(month),
            REG_YEAR => self.encode((year % 100) as u8),
            REG_CENTURY => self.encode((year / 100) as u8),
            REG_STATUS_C => 0,
            other => self.ram[usize::from(other & 0x7f)],
        }
    }
}

/// (year, month, day) of a count of days since 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u8, u8) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = match offset {
                DATA_OFFSET => self.register(self.index),
                _ => self.index,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        let &value = data.first()?;
        match offset {
            // Bit 7 of the index port is the NMI mask, not part of the index.
            INDEX_OFFSET => self.index = value & 0x7f,
            DATA_OFFSET => match self.index {
                // The guest may not set the clock (host time is the truth) nor the
                // read-only status bits.
                REG_SECONDS..=REG_YEAR | REG_CENTURY | REG_STATUS_C | REG_STATUS_D => {}
                REG_STATUS_A => self.ram[REG_STATUS_A as usize] = value & 0x7f,
                idx => self.ram[usize::from(idx)] = value,
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(rtc: &mut Rtc, reg: u8) -> u8 {
        rtc.write(INDEX_OFFSET, &[reg | 0x80]);
        let mut b = [0u8];
        rtc.read(DATA_OFFSET, &mut b);
        b[0]
    }

    #[test]
    fn calendar_conversion() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
    }

    #[test]
    fn reads_time_in_bcd_then_binary() {
        // 2026-11-22 19:24:55 UTC, a Sunday.
        let mut rtc = Rtc::with_clock(|| 1_795_375_495);
        assert_eq!(read(&mut rtc, REG_SECONDS), 0x55);
        assert_eq!(read(&mut rtc, REG_MINUTES), 0x24);
        assert_eq!(read(&mut rtc, REG_HOURS), 0x19);
        assert_eq!(read(&mut rtc, REG_DAY), 0x22);
        assert_eq!(read(&mut rtc, REG_MONTH), 0x11);
        assert_eq!(read(&mut rtc, REG_YEAR), 0x26);
        assert_eq!(read(&mut rtc, REG_CENTURY), 0x20);
        assert_eq!(read(&mut rtc, REG_WEEKDAY), 1);
        assert_eq!(
            read(&mut rtc, REG_STATUS_A) & 0x80,
            0,
            "never update-in-progress"
        );

        rtc.write(INDEX_OFFSET, &[REG_STATUS_B]);
        rtc.write(DATA_OFFSET, &[STATUS_B_24H | STATUS_B_BINARY]);
        assert_eq!(read(&mut rtc, REG_MINUTES), 24);
    }

    #[test]
    fn cmos_ram_keeps_writes_but_not_to_the_clock() {
        let mut rtc = Rtc::with_clock(|| 0);
        rtc.write(INDEX_OFFSET, &[0x40]);
        rtc.write(DATA_OFFSET, &[0xab]);
        assert_eq!(read(&mut rtc, 0x40), 0xab);
        rtc.write(INDEX_OFFSET, &[REG_SECONDS]);
        rtc.write(DATA_OFFSET, &[0x30]);
        assert_eq!(read(&mut rtc, REG_SECONDS), 0);
        assert_eq!(read(&mut rtc, REG_STATUS_D), STATUS_D_VALID);
    }
}
