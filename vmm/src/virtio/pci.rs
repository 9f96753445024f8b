//! The virtio 1.x PCI transport (modern interface only).
//!
//! BAR 0 (64-bit, 32 KiB) holds every structure the capabilities point at:
//!
//! | offset  | structure                                   |
//! |---------|---------------------------------------------|
//! | 0x0000  | common configuration                        |
//! | 0x1000  | ISR status                                  |
//! | 0x2000  | device-specific configuration               |
//! | 0x3000  | notifications, 4 bytes per queue (ioeventfd)|
//! | 0x4000  | MSI-X table                                 |
//! | 0x6000  | MSI-X pending-bit array                     |

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, ActiveQueue, QueueInterrupt, VirtioDevice, NO_VECTOR, VIRTIO_F_VERSION_1};
use crate::devices::lock;
use crate::interrupts::{GsiRouter, InterruptError};
use crate::pci::config::{ConfigSpaceError, PciConfig, PciId, BAR0};
use crate::pci::msix::{self, Msix};
use crate::pci::PciDevice;

pub const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const DEVICE_LEN: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x6000;

const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
const VIRTIO_PCI_MODERN_DEVICE_BASE: u16 = 0x1040;
const CAP_VENDOR_SPECIFIC: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const ISR_CONFIG_CHANGED: u8 = 1 << 1;
const CFG_DEVICE: u8 = 4;

const STATUS_FEATURES_OK: u8 = 8;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_NEEDS_RESET: u8 = 0x40;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Config(#[from] ConfigSpaceError),
    #[error(transparent)]
    Interrupts(#[from] InterruptError),
    #[error("queue: {0}")]
    Queue(String),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

struct QueueSlot {
    queue: Queue,
    vector: u16,
    notify: EventFd,
}

pub struct VirtioPciDevice {
    config: PciConfig,
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    router: Arc<GsiRouter>,
    msix: Arc<Mutex<Msix>>,
    msix_control_offset: usize,
    queues: Vec<QueueSlot>,
    /// BAR 0 address the notification ioeventfds are registered at.
    ioeventfds_at: Option<u64>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_vector: u16,
    /// Bumped on each change of the device's config space, so a driver
    /// reading it in pieces can tell it changed under it.
    config_generation: u8,
    /// Interrupt status: bit 1 is a pending config change (read clears).
    isr: u8,
    status: u8,
    queue_select: u16,
    active: bool,
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    // cap_len counts the ID and next-pointer bytes the config space adds.
    let mut body = vec![(16 + extra.len()) as u8, cfg_type, 0, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

impl VirtioPciDevice {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        router: Arc<GsiRouter>,
        bar_addr: u64,
    ) -> Result<Self, TransportError> {
        let (class, subclass) = device.pci_class();
        let mut config = PciConfig::new(PciId {
            vendor: VIRTIO_PCI_VENDOR,
            device: VIRTIO_PCI_MODERN_DEVICE_BASE + device.device_type() as u16,
            class,
            subclass,
            prog_if: 0,
            revision: 1,
            subsystem_vendor: VIRTIO_PCI_VENDOR,
            subsystem: 0x40,
        });
        config.add_bar64(0, BAR_SIZE, bar_addr)?;
        let num_queues = device.queue_max_sizes().len() as u64;
        for body in [
            vendor_cap(CFG_COMMON, COMMON_OFFSET, COMMON_LEN, &[]),
            vendor_cap(CFG_ISR, ISR_OFFSET, 4, &[]),
            vendor_cap(CFG_DEVICE, DEVICE_OFFSET, DEVICE_LEN, &[]),
            vendor_cap(
                CFG_NOTIFY,
                NOTIFY_OFFSET,
                num_queues * u64::from(NOTIFY_MULTIPLIER),
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
        ] {
            config.add_capability(CAP_VENDOR_SPECIFIC, &body, &[])?;
        }
        // One vector per queue plus one for configuration changes.
        let vectors = num_queues as u16 + 1;
        let (body, mask) =
            Msix::capability(vectors, 0, MSIX_TABLE_OFFSET as u32, MSIX_PBA_OFFSET as u32);
        let msix_cap = config.add_capability(msix::CAPABILITY_ID, &body, &mask)?;
        let msix = Arc::new(Mutex::new(Msix::new(vectors, router.clone())?));

        let mut queues = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(QueueSlot {
                queue: Queue::new(max).map_err(|e| TransportError::Queue(format!("{e:?}")))?,
                vector: NO_VECTOR,
                notify: EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd)?,
            });
        }
        let mut dev = VirtioPciDevice {
            config,
            device,
            memory,
            router,
            msix,
            msix_control_offset: msix_cap + 2,
            queues,
            ioeventfds_at: None,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_vector: NO_VECTOR,
            config_generation: 0,
            isr: 0,
            status: 0,
            queue_select: 0,
            active: false,
        };
        dev.sync_ioeventfds();
        Ok(dev)
    }

    fn device_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    /// Keeps each queue's notification ioeventfd at the BAR's current address, so
    /// a notification costs no exit to this process.
    fn sync_ioeventfds(&mut self) {
        self.place_ioeventfds(self.config.bar_address(0));
    }

    /// Moves the queues' notification ioeventfds to BAR address `bar`, or
    /// (None) takes them out of KVM.
    fn place_ioeventfds(&mut self, bar: Option<u64>) {
        if bar == self.ioeventfds_at {
            return;
        }
        let vm = self.router.vm();
        for (i, q) in self.queues.iter().enumerate() {
            let offset = NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_MULTIPLIER);
            if let Some(old) = self.ioeventfds_at {
                let _ = vm.unregister_ioevent(
                    &q.notify,
                    &IoEventAddress::Mmio(old + offset),
                    NoDatamatch,
                );
            }
            if let Some(new) = bar {
                if let Err(e) =
                    vm.register_ioevent(&q.notify, &IoEventAddress::Mmio(new + offset), NoDatamatch)
                {
                    // Notifications then arrive as MMIO exits and still work.
                    tracing::warn!("queue {i}: no ioeventfd: {e}");
                }
            }
        }
        self.ioeventfds_at = bar;
    }

    fn reset(&mut self) {
        self.device.reset();
        self.active = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.config_vector = NO_VECTOR;
        self.isr = 0;
        for q in &mut self.queues {
            q.queue.reset();
            q.vector = NO_VECTOR;
        }
    }

    fn set_status(&mut self, status: u8) {
        if status == 0 {
            self.reset();
            return;
        }
        let mut status = status;
        if status & STATUS_FEATURES_OK != 0 && self.driver_features & !self.device_features() != 0 {
            // The driver accepted features we never offered: refuse FEATURES_OK.
            status &= !STATUS_FEATURES_OK;
        }
        self.status = status;
        if status & STATUS_DRIVER_OK != 0 && status & STATUS_FEATURES_OK != 0 && !self.active {
            if let Err(e) = self.activate() {
                crate::rate_limited_warn!("virtio device {}: {e}", self.device.device_type());
                self.status |= STATUS_NEEDS_RESET;
            }
        }
    }

    fn activate(&mut self) -> Result<(), super::ActivateError> {
        let mut active = Vec::new();
        let event_idx = self.driver_features & super::VIRTIO_RING_F_EVENT_IDX != 0;
        for (index, q) in self.queues.iter_mut().enumerate() {
            if !q.queue.ready() {
                continue;
            }
            q.queue.set_event_idx(event_idx);
            if !q.queue.is_valid(&self.memory) {
                return Err(super::ActivateError::InvalidQueue(index));
            }
            active.push(ActiveQueue {
                index,
                queue: Queue::try_from(q.queue.state())
                    .map_err(|_| super::ActivateError::InvalidQueue(index))?,
                notify: q.notify.try_clone().map_err(super::ActivateError::Worker)?,
                interrupt: QueueInterrupt::new(self.msix.clone(), q.vector),
            });
        }
        self.device.activate(Activation {
            memory: self.memory.clone(),
            acked_features: self.driver_features,
            queues: active,
        })?;
        self.active = true;
        Ok(())
    }

    fn selected(&mut self) -> Option<&mut QueueSlot> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn common_read(&mut self, offset: u64, data: &mut [u8]) {
        let features = self.device_features();
        let v: u64 = match offset {
            0x00 => self.device_feature_select.into(),
            0x04 => match self.device_feature_select {
                0 => features & 0xffff_ffff,
                1 => features >> 32,
                _ => 0,
            },
            0x08 => self.driver_feature_select.into(),
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => self.config_vector.into(),
            0x12 => self.queues.len() as u64,
            0x14 => self.status.into(),
            0x15 => self.config_generation.into(),
            0x16 => self.queue_select.into(),
            0x18 => self.selected().map_or(0, |q| q.queue.size().into()),
            0x1a => self.selected().map_or(NO_VECTOR, |q| q.vector).into(),
            0x1c => self.selected().map_or(0, |q| q.queue.ready().into()),
            0x1e => self.queue_select.into(), // notify offset = index (multiplier 4)
            0x20 => self.selected().map_or(0, |q| q.queue.desc_table()),
            0x24 => self.selected().map_or(0, |q| q.queue.desc_table() >> 32),
            0x28 => self.selected().map_or(0, |q| q.queue.avail_ring()),
            0x2c => self.selected().map_or(0, |q| q.queue.avail_ring() >> 32),
            0x30 => self.selected().map_or(0, |q| q.queue.used_ring()),
            0x34 => self.selected().map_or(0, |q| q.queue.used_ring() >> 32),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        let n = data.len().min(8);
        bytes[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(bytes);
        let (v32, v16) = (v as u32, v as u16);
        // Queue configuration is frozen once the device runs.
        let queue_writable = !self.active;
        match offset {
            0x00 => self.device_feature_select = v32,
            0x08 => self.driver_feature_select = v32,
            0x0c => match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v32),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v32) << 32)
                }
                _ => {}
            },
            0x10 => self.config_vector = v16,
            0x14 => self.set_status(v as u8),
            0x16 => self.queue_select = v16,
            0x18 if queue_writable => {
                if let Some(q) = self.selected() {
                    q.queue.set_size(v16);
                }
            }
            0x1a => {
                if let Some(q) = self.selected() {
                    q.vector = v16;
                }
            }
            0x1c if queue_writable => {
                if let Some(q) = self.selected() {
                    q.queue.set_ready(v16 == 1);
                }
            }
            0x20..=0x37 if queue_writable => {
                let high = offset % 8 == 4;
                let (lo, hi) = if high {
                    (None, Some(v32))
                } else {
                    (Some(v32), None)
                };
                if let Some(q) = self.selected() {
                    match offset & !7 {
                        0x20 => q.queue.set_desc_table_address(lo, hi),
                        0x28 => q.queue.set_avail_ring_address(lo, hi),
                        _ => q.queue.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => {}
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_written(&mut self, offset: usize, len: usize) {
        let touches = |start: usize, end: usize| offset < end && start < offset + len;
        if touches(self.msix_control_offset, self.msix_control_offset + 2) {
            let control = self.config.u16_at(self.msix_control_offset);
            lock(&self.msix).set_control(control);
        }
        if touches(BAR0, BAR0 + 8)
            || touches(crate::pci::config::COMMAND, crate::pci::config::COMMAND + 2)
        {
            self.sync_ioeventfds();
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        match offset {
            o if o < COMMON_OFFSET + COMMON_LEN => self.common_read(o - COMMON_OFFSET, data),
            // Queue interrupts always go by MSI-X; a config change is also
            // flagged here, and reading takes the flag down.
            ISR_OFFSET => {
                if let Some(b) = data.first_mut() {
                    *b = std::mem::take(&mut self.isr);
                }
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_LEN).contains(&o) => {
                self.device.read_config(o - DEVICE_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                lock(&self.msix).table_read(o - MSIX_TABLE_OFFSET, data)
            }
            o if o >= MSIX_PBA_OFFSET => lock(&self.msix).pba_read(o - MSIX_PBA_OFFSET, data),
            _ => {}
        }
    }

    fn virtio_mut(&mut self) -> Option<&mut dyn VirtioDevice> {
        Some(self.device.as_mut())
    }

    fn device_config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.isr |= ISR_CONFIG_CHANGED;
        if self.status & STATUS_DRIVER_OK != 0 && self.config_vector != NO_VECTOR {
            lock(&self.msix).trigger(self.config_vector);
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match offset {
            o if o < COMMON_OFFSET + COMMON_LEN => self.common_write(o - COMMON_OFFSET, data),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                // Reached only when no ioeventfd caught it (e.g. while the BAR moves).
                let index = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(q) = self.queues.get(index) {
                    let _ = q.notify.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                lock(&self.msix).table_write(o - MSIX_TABLE_OFFSET, data)
            }
            _ => {}
        }
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        // Workers hold guest memory; they must be gone before it is unmapped.
        self.device.reset();
        // An unplugged device's notifications must not stay registered at
        // its BAR, where the next device plugged there would find them.
        self.place_ioeventfds(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_capability_layout() {
        let c = vendor_cap(CFG_NOTIFY, 0x3000, 8, &4u32.to_le_bytes());
        assert_eq!(c[0], 20, "cap_len includes ID and next");
        assert_eq!(c[1], CFG_NOTIFY);
        assert_eq!(u32::from_le_bytes(c[6..10].try_into().unwrap()), 0x3000);
        assert_eq!(u32::from_le_bytes(c[10..14].try_into().unwrap()), 8);
        assert_eq!(u32::from_le_bytes(c[14..18].try_into().unwrap()), 4);
    }
}
