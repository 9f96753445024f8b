//! Virtio devices and their PCI transport.
//!
//! A device ([`VirtioDevice`]) knows its queues and config space; the transport
//! ([`pci::VirtioPciDevice`]) speaks the virtio 1.x PCI protocol to the driver and,
//! when the driver sets DRIVER_OK, hands the device its queues, each with the
//! eventfd KVM signals on a notification (ioeventfd) and the MSI-X vector to raise.
//! Devices process queues on their own worker threads, never on a vCPU.

pub mod block;
pub mod net;
pub mod pci;
pub mod rng;
pub mod worker;

use std::sync::{Arc, Mutex};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::lock;
use crate::pci::msix::Msix;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

/// MSI-X vector value meaning "no vector".
pub const NO_VECTOR: u16 = 0xffff;

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not valid in guest memory")]
    InvalidQueue(usize),
    #[error("starting the device worker: {0}")]
    Worker(std::io::Error),
    #[error("{0}")]
    Device(String),
}

/// Raises one queue's MSI-X vector.
#[derive(Clone)]
pub struct QueueInterrupt {
    msix: Option<Arc<Mutex<Msix>>>,
    vector: u16,
}

impl QueueInterrupt {
    pub fn new(msix: Arc<Mutex<Msix>>, vector: u16) -> Self {
        QueueInterrupt {
            msix: Some(msix),
            vector,
        }
    }

    /// An interrupt that goes nowhere: for exercising queues without a VM.
    #[cfg(test)]
    pub fn disconnected() -> Self {
        QueueInterrupt {
            msix: None,
            vector: NO_VECTOR,
        }
    }

    pub fn trigger(&self) {
        if let Some(msix) = self.msix.as_ref().filter(|_| self.vector != NO_VECTOR) {
            lock(msix).trigger(self.vector);
        }
    }

    /// The vector's irqfd, for producers in the host kernel.
    pub fn irqfd(&self) -> Option<EventFd> {
        let msix = self.msix.as_ref().filter(|_| self.vector != NO_VECTOR)?;
        lock(msix).irqfd(self.vector)
    }
}

/// A queue the driver enabled, handed to the device at activation.
pub struct ActiveQueue {
    pub index: usize,
    pub queue: Queue,
    pub notify: EventFd,
    pub interrupt: QueueInterrupt,
}

pub struct Activation {
    pub memory: GuestMemoryMmap,
    pub acked_features: u64,
    pub queues: Vec<ActiveQueue>,
}

/// Copies `data.len()` bytes of a device config space from `offset`; bytes past
/// its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| config.get(o.checked_add(i)?))
            .copied()
            .unwrap_or(0);
    }
}

/// Pops the next available chain, for every device's drain loop.
///
/// `Queue::pop_descriptor_chain` answers None both when the ring is empty and
/// when the driver's avail index is more than a queue ahead (a broken or hostile
/// driver); `enable_notification` still reports work in the second case, so a
/// loop that pops again on it spun forever at 100% CPU and never saw its stop
/// request (found by `fuzz::virtio_blk`). Here that is an error, which callers
/// answer by leaving the queue alone until the next kick. Heads past the
/// descriptor table are skipped: they name no chain and cannot be used.
/// Neither case logs: callers rate-limit what the guest can trigger.
pub fn pop_chain<'a>(
    queue: &mut Queue,
    memory: &'a GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'a GuestMemoryMmap>>, virtio_queue::Error> {
    let size = queue.size();
    Ok(queue.iter(memory)?.find(|c| c.head_index() < size))
}

pub trait VirtioDevice: Send {
    /// The virtio device ID (4 = entropy, 2 = block, 1 = network).
    fn device_type(&self) -> u32;
    /// PCI class and subclass the device presents.
    fn pci_class(&self) -> (u8, u8);
    /// Largest size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Reads the device-specific config space; unknown bytes read as zero.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts processing the queues the driver set up.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops processing and forgets the queues (the driver reset the device).
    fn reset(&mut self);
    /// Serves the device from new files from now on (disks only). Returns
    /// whether the disk grew.
    fn replace_disk(
        &mut self,
        _disk: std::sync::Arc<block::disk::Disk>,
    ) -> Result<bool, block::ReplaceDiskError> {
        Err(block::ReplaceDiskError::NotADisk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let config = [1u8, 2, 3, 4];
        let mut out = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut out);
        assert_eq!(out, [3, 4, 0, 0]);
        read_config_bytes(&config, u64::MAX, &mut out);
        assert_eq!(out, [0; 4]);
    }
}
