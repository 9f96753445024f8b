//! COM1: a 16550A UART (vm-superio) at 0x3f8, IRQ 4.

use std::io::Write;
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::irq::IrqLine;
use super::{BusDevice, GuestRequest};
use crate::coalesced_pio::CoalescedPort;

pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;
pub const COM1_GSI: u32 = 4;
/// The transmit register (THR), offset 0.
pub const COM1_TX_PORT: u16 = 0x3f8;

/// The offsets whose writes can change the interrupt enable register.
const IER_OFFSET: u8 = 1;
const LCR_OFFSET: u8 = 3;
const LCR_DLAB: u8 = 0x80;

pub struct SerialDevice {
    uart: Serial<IrqLine, NoEvents, Box<dyn Write + Send>>,
    /// The transmit register's writes, queued by KVM while the guest has
    /// every UART interrupt off (`coalesced_pio`).
    tx_coalescing: Option<Arc<CoalescedPort>>,
}

impl SerialDevice {
    pub fn new(irq: IrqLine, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Serial::new(irq, out),
            tx_coalescing: None,
        }
    }

    /// Lets KVM queue transmit writes while no UART interrupt is enabled
    /// (as at reset): no write then expects an interrupt, so its effect
    /// may wait for the vCPU's next exit, where queued writes are replayed.
    pub fn coalesce_tx(&mut self, port: Arc<CoalescedPort>) {
        self.tx_coalescing = Some(port);
        self.update_coalescing();
    }

    fn update_coalescing(&mut self) {
        let Some(port) = &self.tx_coalescing else {
            return;
        };
        // With DLAB set, offset 1 is the divisor, not IER (left as it is).
        if self.uart.read(LCR_OFFSET) & LCR_DLAB == 0 {
            port.set(self.uart.read(IER_OFFSET) == 0);
        }
    }

    /// Queues host input for the guest to read; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART's registers are bytes; a wider access reads the byte and zeros.
        data.fill(0);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) else {
            return None;
        };
        if let Err(e) = self.uart.write(offset, value) {
            // The console sink failed (a closed pipe, a full disk). The guest must not
            // notice; say so once in a while rather than per byte.
            crate::rate_limited_warn!("serial console output failed: {e}");
        }
        if offset == IER_OFFSET || offset == LCR_OFFSET {
            self.update_coalescing();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_bytes_and_receives_input() {
        let sink = Sink::default();
        let mut dev = SerialDevice::new(IrqLine::new(4).unwrap(), Box::new(sink.clone()));
        for b in b"ok\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"ok\n");
        assert_eq!(dev.enqueue_input(b"x"), 1);
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rbr = [0u8; 2];
        dev.read(0, &mut rbr);
        assert_eq!(rbr, [b'x', 0]);
        // Out-of-range offsets and empty accesses are ignored, not a panic.
        dev.write(0x1234, &[1]);
        dev.write(0, &[]);
        dev.read(0, &mut []);
    }
}
