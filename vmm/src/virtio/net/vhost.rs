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
}

/// Whether this host offers vhost-net to us.
pub fn available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(VHOST_NET_PATH)
        .is_ok()
}

/// A running vhost-net instance; dropping it stops the kernel worker.
pub struct VhostNet {
    net: KernelNet<Arc<GuestMemoryMmap>>,
    queues: Vec<usize>,
}

impl VhostNet {
    pub fn start(
        tap: &Tap,
        memory: &GuestMemoryMmap,
        acked_features: u64,
        queues: &[ActiveQueue],
    ) -> Result<Self, VhostError> {
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
        for q in queues {
            let i = q.index;
            let irqfd = q.interrupt.irqfd().ok_or(VhostError::NoVector(i))?;
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
            net.set_backend(i, Some(tap.file()))?;
        }
        Ok(VhostNet {
            net,
            queues: queues.iter().map(|q| q.index).collect(),
        })
    }
}

impl Drop for VhostNet {
    fn drop(&mut self) {
        for &i in &self.queues {
            let _ = self.net.set_backend(i, None);
        }
    }
}
