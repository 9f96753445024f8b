//! MSI-X: the vector table and pending-bit array a device exposes in a BAR, and
//! delivery of each vector through its own irqfd and MSI route.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::interrupts::{GsiRouter, InterruptError, MsiMessage};

pub const CAPABILITY_ID: u8 = 0x11;
pub const ENTRY_SIZE: u64 = 16;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;

#[derive(Clone, Copy, Default)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

impl Entry {
    fn masked(&self) -> bool {
        self.control & VECTOR_MASKED != 0
    }
}

struct Vector {
    gsi: u32,
    irqfd: EventFd,
}

pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    vectors: Vec<Vector>,
    enabled: bool,
    function_masked: bool,
    router: Arc<GsiRouter>,
}

impl Drop for Msix {
    /// An unplugged device's vectors stop reaching the guest, and their
    /// GSIs are free for the next device.
    fn drop(&mut self) {
        for v in &self.vectors {
            let _ = self.router.vm().unregister_irqfd(&v.irqfd, v.gsi);
            self.router.release(v.gsi);
        }
    }
}

impl Msix {
    /// `count` vectors, each with a GSI and an irqfd registered with KVM.
    pub fn new(count: u16, router: Arc<GsiRouter>) -> Result<Self, InterruptError> {
        let mut vectors = Vec::with_capacity(count.into());
        for _ in 0..count {
            let gsi = router.allocate()?;
            let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| {
                InterruptError::Routing(kvm_ioctls::Error::new(
                    e.raw_os_error().unwrap_or(libc::EIO),
                ))
            })?;
            router
                .vm()
                .register_irqfd(&irqfd, gsi)
                .map_err(InterruptError::Routing)?;
            vectors.push(Vector { gsi, irqfd });
        }
        Ok(Msix {
            // Vectors come out of reset masked.
            entries: vec![
                Entry {
                    control: VECTOR_MASKED,
                    ..Default::default()
                };
                count.into()
            ],
            pending: vec![false; count.into()],
            vectors,
            enabled: false,
            function_masked: false,
            router,
        })
    }

    pub fn count(&self) -> u16 {
        self.entries.len() as u16
    }

    /// The capability body (after ID and next pointer) and its write mask, for a
    /// table at `table_offset` and a PBA at `pba_offset`, both in BAR `bar`.
    pub fn capability(
        count: u16,
        bar: u8,
        table_offset: u32,
        pba_offset: u32,
    ) -> ([u8; 10], [u8; 10]) {
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&(count - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset | u32::from(bar)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_offset | u32::from(bar)).to_le_bytes());
        let mut mask = [0u8; 10];
        mask[1] = ((CONTROL_ENABLE | CONTROL_FUNCTION_MASK) >> 8) as u8;
        (body, mask)
    }

    /// The guest wrote the capability's message control word.
    pub fn set_control(&mut self, control: u16) {
        let enabled = control & CONTROL_ENABLE != 0;
        let masked = control & CONTROL_FUNCTION_MASK != 0;
        if (enabled, masked) == (self.enabled, self.function_masked) {
            return;
        }
        self.enabled = enabled;
        self.function_masked = masked;
        for v in 0..self.entries.len() {
            self.update_route(v);
            self.deliver_pending(v);
        }
    }

    fn update_route(&mut self, v: usize) {
        let e = self.entries[v];
        let message = (self.enabled && !e.masked()).then_some(MsiMessage {
            address: e.address,
            data: e.data,
        });
        if let Err(err) = self.router.set_msi(self.vectors[v].gsi, message) {
            crate::rate_limited_warn!("MSI-X vector {v}: {err}");
        }
    }

    fn deliverable(&self, v: usize) -> bool {
        self.enabled && !self.function_masked && !self.entries[v].masked()
    }

    fn deliver_pending(&mut self, v: usize) {
        if self.pending[v] && self.deliverable(v) {
            self.pending[v] = false;
            let _ = self.vectors[v].irqfd.write(1);
        }
    }

    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let (v, field) = ((offset / ENTRY_SIZE) as usize, offset % ENTRY_SIZE);
        let Some(e) = self.entries.get(v) else { return };
        let words = [
            e.address as u32,
            (e.address >> 32) as u32,
            e.data,
            e.control,
        ];
        read_words(&words, field, data);
    }

    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let (v, field) = ((offset / ENTRY_SIZE) as usize, offset % ENTRY_SIZE);
        let Some(e) = self.entries.get(v).copied() else {
            return;
        };
        let mut words = [
            e.address as u32,
            (e.address >> 32) as u32,
            e.data,
            e.control,
        ];
        write_words(&mut words, field, data);
        let new = Entry {
            address: u64::from(words[0]) | (u64::from(words[1]) << 32),
            data: words[2],
            control: words[3] & VECTOR_MASKED,
        };
        self.entries[v] = new;
        if new.address != e.address || new.data != e.data || new.control != e.control {
            self.update_route(v);
            self.deliver_pending(v);
        }
    }

    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let base = (offset as usize + i) * 8;
            *b = (0..8)
                .filter(|bit| self.pending.get(base + bit).copied().unwrap_or(false))
                .fold(0u8, |acc, bit| acc | (1 << bit));
        }
    }

    /// A handle on vector `v`'s irqfd, for an in-kernel producer (vhost) that
    /// raises the interrupt without us.
    pub fn irqfd(&self, v: u16) -> Option<EventFd> {
        self.vectors.get(usize::from(v))?.irqfd.try_clone().ok()
    }

    /// Signals vector `v`, or marks it pending while it is masked.
    pub fn trigger(&mut self, v: u16) {
        let v = usize::from(v);
        if v >= self.entries.len() || !self.enabled {
            return;
        }
        if self.deliverable(v) {
            if let Err(e) = self.vectors[v].irqfd.write(1) {
                crate::rate_limited_warn!("MSI-X vector {v}: {e}");
            }
        } else {
            self.pending[v] = true;
        }
    }
}

/// Reads little-endian bytes out of a run of 32-bit registers.
fn read_words(words: &[u32], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        let byte = offset as usize + i;
        *b = words.get(byte / 4).map_or(0, |w| w.to_le_bytes()[byte % 4]);
    }
}

fn write_words(words: &mut [u32], offset: u64, data: &[u8]) {
    for (i, b) in data.iter().enumerate() {
        let byte = offset as usize + i;
        if let Some(w) = words.get_mut(byte / 4) {
            let mut bytes = w.to_le_bytes();
            bytes[byte % 4] = *b;
            *w = u32::from_le_bytes(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_words_round_trip() {
        let mut words = [0u32; 4];
        write_words(&mut words, 4, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(words, [0, 0x0403_0201, 0x0807_0605, 0]);
        let mut out = [0u8; 2];
        read_words(&words, 6, &mut out);
        assert_eq!(out, [3, 4]);
        read_words(&words, 15, &mut out);
        assert_eq!(out, [0, 0], "past the end reads zero");
        write_words(&mut words, 15, &[9, 9]);
        assert_eq!(words[3], 0x0900_0000);
    }

    #[test]
    fn capability_layout() {
        let (body, mask) = Msix::capability(3, 0, 0x4000, 0x6000);
        assert_eq!(
            u16::from_le_bytes([body[0], body[1]]),
            2,
            "table size is N-1"
        );
        assert_eq!(u32::from_le_bytes(body[2..6].try_into().unwrap()), 0x4000);
        assert_eq!(u32::from_le_bytes(body[6..10].try_into().unwrap()), 0x6000);
        assert_eq!(mask[1], 0xc0);
    }
}
