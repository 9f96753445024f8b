//! vhost-net: the host kernel moves packets between the tap and the guest's
//! queues; this process only sets it up. KVM's ioeventfd kicks the kernel worker
//! directly and the kernel raises the queue's MSI-X irqfd directly.

use std::sync::Arc;

use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net as KernelNet;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::tap::Tap;
use crate::virtio::ActiveQueue;

pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    #[error("vhost-net: {0}")]
    Vhost(#[from] vhost::Error),
    #[error("vhost-net: queue {0} has no MSI-X vector")]
    NoVector(usize),
    #[error("vhost-net: the tap has no queue {0}")]
    NoTapQueue(usize),
}

/// Whether this host offers vhost-net to us.
pub fn available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(VHOST_NET_PATH)
        .is_ok()
}

/// A running vhost-net instance for one queue pair; dropping it stops the
/// kernel worker.
pub struct VhostNet {
    net: KernelNet<Arc<GuestMemoryMmap>>,
}

impl VhostNet {
    /// Starts moving packets between tap queue `pair` and the guest's RX and TX
    /// queues of that pair (vhost's vrings 0 and 1).
    pub fn start(
        tap: &Tap,
        pair: usize,
        memory: &GuestMemoryMmap,
        acked_features: u64,
        rx: &ActiveQueue,
        tx: &ActiveQueue,
    ) -> Result<Self, VhostError> {
        let backend = tap.file(pair).ok_or(VhostError::NoTapQueue(pair))?;
        let net = KernelNet::new(Arc::new(memory.clone()))?;
        net.set_owner()?;
        let supported = net.get_features()?;
        net.set_features(acked_features & supported)?;
        let regions: Vec<VhostUserMemoryRegionInfo> = memory
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: 0,
                mmap_handle: -1,
            })
            .collect();
        net.set_mem_table(&regions)?;
        for (i, q) in [rx, tx].into_iter().enumerate() {
            let irqfd = q.interrupt.irqfd().ok_or(VhostError::NoVector(q.index))?;
            net.set_vring_num(i, q.queue.size())?;
            net.set_vring_addr(
                i,
                &VringConfigData {
                    queue_max_size: q.queue.max_size(),
                    queue_size: q.queue.size(),
                    flags: 0,
                    desc_table_addr: q.queue.desc_table(),
                    used_ring_addr: q.queue.used_ring(),
                    avail_ring_addr: q.queue.avail_ring(),
                    log_addr: None,
                },
            )?;
            net.set_vring_base(i, q.queue.next_avail())?;
            net.set_vring_call(i, &irqfd)?;
            net.set_vring_kick(i, &q.notify)?;
            net.set_backend(i, Some(backend))?;
        }
        Ok(VhostNet { net })
    }
}

impl Drop for VhostNet {
    fn drop(&mut self) {
        for i in 0..2 {
            let _ = self.net.set_backend(i, None);
        }
    }
}
