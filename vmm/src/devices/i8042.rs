//! A minimal i8042 keyboard controller at 0x60/0x64: enough for Linux to find a
//! keyboard, reset the machine through it (`reboot=k`), and receive Ctrl+Alt+Del,
//! which is how the VMM asks a guest to shut down.
//!
//! Every command answers at once: a guest polling the status register for a reply
//! that never comes costs thousands of exits. There is no AUX (mouse) port; the
//! controller's self-tests report it as broken so the guest stops looking.

use std::collections::VecDeque;

use super::irq::IrqLine;
use super::{BusDevice, GuestRequest};

pub const BASE: u64 = 0x60;
/// 0x60 (data) ..= 0x64 (status/command); 0x61 is KVM's in-kernel speaker port and
/// never reaches us.
pub const LEN: u64 = 5;
pub const GSI: u32 = 1;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 1 << 0;
const STATUS_SYSTEM_FLAG: u8 = 1 << 2;
const STATUS_LAST_WAS_COMMAND: u8 = 1 << 3;
const STATUS_UNLOCKED: u8 = 1 << 4;

const CTR_KBD_INT: u8 = 1 << 0;
const CTR_SYSTEM_FLAG: u8 = 1 << 2;
const CTR_KBD_DISABLE: u8 = 1 << 4;
const CTR_AUX_DISABLE: u8 = 1 << 5;
const CTR_TRANSLATE: u8 = 1 << 6;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_PULSE_RESET: u8 = 0xfe;

const KBD_ACK: u8 = 0xfa;
const KBD_CMD_RESET: u8 = 0xff;
const KBD_CMD_GET_ID: u8 = 0xf2;
const KBD_CMD_ECHO: u8 = 0xee;

const SELF_TEST_PASSED: u8 = 0x55;
/// AUX port test result "clock line stuck low": the guest concludes there is no mouse.
const AUX_TEST_FAILED: u8 = 0x01;

const BUFFER_CAPACITY: usize = 16;

/// Ctrl, Alt, Del pressed then released, in scan-code set 1 (what the guest reads
/// when the controller translates) and set 2 (when it does not).
const CTRL_ALT_DEL_SET1: &[u8] = &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
const CTRL_ALT_DEL_SET2: &[u8] = &[
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

pub struct I8042 {
    irq: IrqLine,
    ctr: u8,
    output: VecDeque<u8>,
    /// A controller command waiting for its data byte on port 0x60.
    pending: Option<u8>,
    last_was_command: bool,
}

impl I8042 {
    pub fn new(irq: IrqLine) -> Self {
        I8042 {
            irq,
            ctr: CTR_KBD_INT | CTR_SYSTEM_FLAG | CTR_AUX_DISABLE | CTR_TRANSLATE,
            output: VecDeque::with_capacity(BUFFER_CAPACITY),
            pending: None,
            last_was_command: false,
        }
    }

    /// Types Ctrl+Alt+Del. Linux passes it to init as SIGINT (or reboots, by sysctl).
    pub fn send_ctrl_alt_del(&mut self) {
        let codes = if self.ctr & CTR_TRANSLATE != 0 {
            CTRL_ALT_DEL_SET1
        } else {
            CTRL_ALT_DEL_SET2
        };
        self.push(codes);
    }

    fn push(&mut self, bytes: &[u8]) {
        let was_empty = self.output.is_empty();
        for &b in bytes {
            if self.output.len() < BUFFER_CAPACITY {
                self.output.push_back(b);
            }
        }
        if was_empty && !self.output.is_empty() {
            self.notify();
        }
    }

    fn notify(&self) {
        if self.ctr & CTR_KBD_INT != 0 {
            if let Err(e) = self.irq.raise() {
                crate::rate_limited_warn!("i8042 interrupt: {e}");
            }
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_UNLOCKED;
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.ctr & CTR_SYSTEM_FLAG != 0 {
            status |= STATUS_SYSTEM_FLAG;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn command(&mut self, cmd: u8) -> Option<GuestRequest> {
        match cmd {
            CMD_READ_CTR => self.push(&[self.ctr]),
            CMD_WRITE_CTR
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_BUFFER
            | CMD_WRITE_AUX_BUFFER
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_AUX_DISABLE => self.ctr |= CTR_AUX_DISABLE,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUX_DISABLE,
            CMD_AUX_TEST => self.push(&[AUX_TEST_FAILED]),
            CMD_SELF_TEST => self.push(&[SELF_TEST_PASSED]),
            CMD_KBD_TEST => self.push(&[0x00]),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLE,
            // Bit 0: system reset line (high = running), bit 1: A20 gate.
            CMD_READ_OUTPUT_PORT => self.push(&[0x03]),
            CMD_PULSE_RESET => return Some(GuestRequest::Reboot),
            _ => {}
        }
        None
    }

    fn data(&mut self, value: u8) -> Option<GuestRequest> {
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = value,
            Some(CMD_WRITE_OUTPUT_PORT) if value & 1 == 0 => return Some(GuestRequest::Reboot),
            Some(CMD_WRITE_OUTPUT_PORT) => {}
            Some(CMD_WRITE_KBD_BUFFER) => self.push(&[value]),
            // No AUX device: a loopback byte comes back wrong so the probe gives up.
            Some(CMD_WRITE_AUX_BUFFER) => self.push(&[!value]),
            Some(_) => {}
            None => self.keyboard_command(value),
        }
        None
    }

    /// A byte for the keyboard itself: acknowledge, and answer the identifying ones.
    fn keyboard_command(&mut self, cmd: u8) {
        match cmd {
            KBD_CMD_RESET => self.push(&[KBD_ACK, 0xaa]),
            KBD_CMD_GET_ID => self.push(&[KBD_ACK, 0xab, 0x83]),
            KBD_CMD_ECHO => self.push(&[KBD_CMD_ECHO]),
            _ => self.push(&[KBD_ACK]),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        match offset {
            DATA_OFFSET => {
                *first = self.output.pop_front().unwrap_or(0);
                if !self.output.is_empty() {
                    self.notify();
                }
            }
            COMMAND_OFFSET => *first = self.status(),
            _ => *first = 0xff,
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        let &value = data.first()?;
        match offset {
            DATA_OFFSET => {
                self.last_was_command = false;
                self.data(value)
            }
            COMMAND_OFFSET => {
                self.last_was_command = true;
                self.command(value)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> I8042 {
        I8042::new(IrqLine::new(GSI).unwrap())
    }

    fn read_data(d: &mut I8042) -> u8 {
        let mut b = [0u8];
        d.read(DATA_OFFSET, &mut b);
        b[0]
    }

    fn status(d: &mut I8042) -> u8 {
        let mut b = [0u8];
        d.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    #[test]
    fn self_test_and_ctr_round_trip() {
        let mut d = dev();
        assert_eq!(status(&mut d) & STATUS_OUTPUT_FULL, 0);
        d.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(status(&mut d) & STATUS_OUTPUT_FULL, STATUS_OUTPUT_FULL);
        assert_eq!(read_data(&mut d), SELF_TEST_PASSED);
        d.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        d.write(DATA_OFFSET, &[0x47]);
        d.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read_data(&mut d), 0x47);
        assert_eq!(status(&mut d) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn aux_port_probe_fails_fast() {
        let mut d = dev();
        d.write(COMMAND_OFFSET, &[CMD_WRITE_AUX_BUFFER]);
        d.write(DATA_OFFSET, &[0x5a]);
        assert_ne!(read_data(&mut d), 0x5a);
        d.write(COMMAND_OFFSET, &[CMD_AUX_TEST]);
        assert_eq!(read_data(&mut d), AUX_TEST_FAILED);
    }

    #[test]
    fn keyboard_commands_are_acknowledged() {
        let mut d = dev();
        d.write(DATA_OFFSET, &[KBD_CMD_GET_ID]);
        assert_eq!(
            [read_data(&mut d), read_data(&mut d), read_data(&mut d)],
            [KBD_ACK, 0xab, 0x83]
        );
        d.write(DATA_OFFSET, &[0xed]);
        assert_eq!(read_data(&mut d), KBD_ACK);
    }

    #[test]
    fn reset_requests() {
        let mut d = dev();
        assert_eq!(
            d.write(COMMAND_OFFSET, &[CMD_PULSE_RESET]),
            Some(GuestRequest::Reboot)
        );
        assert_eq!(d.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]), None);
        assert_eq!(d.write(DATA_OFFSET, &[0xfe]), Some(GuestRequest::Reboot));
        assert_eq!(d.write(COMMAND_OFFSET, &[0xff]), None);
    }

    #[test]
    fn ctrl_alt_del_follows_translation_and_buffer_is_bounded() {
        let mut d = dev();
        d.send_ctrl_alt_del();
        let got: Vec<u8> = (0..CTRL_ALT_DEL_SET1.len())
            .map(|_| read_data(&mut d))
            .collect();
        assert_eq!(got, CTRL_ALT_DEL_SET1);

        d.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        d.write(DATA_OFFSET, &[CTR_KBD_INT]);
        d.send_ctrl_alt_del();
        d.send_ctrl_alt_del();
        assert_eq!(d.output.len(), BUFFER_CAPACITY);
        assert_eq!(read_data(&mut d), CTRL_ALT_DEL_SET2[0]);
    }
}
