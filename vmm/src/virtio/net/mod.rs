//! virtio-net over a TAP device: checksum and TSO offloads negotiated with the
//! guest and passed through to the tap with the virtio-net header; one queue pair
//! per tap queue (multiqueue with a control queue when there are several), each
//! pair served by vhost-net in the host kernel or by a worker thread here that
//! moves packets with readv/writev straight between the tap and guest buffers.

pub mod ctrl;
pub(crate) mod datapath;
pub mod tap;
pub mod vhost;

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::worker::Worker;
use super::{ActivateError, Activation, ActiveQueue, VirtioDevice};
use crate::devices::lock;
use crate::rate_limiter::SharedRateLimiter;
use ctrl::QueueSelector;
use tap::Tap;

const VIRTIO_ID_NET: u32 = 1;
const QUEUE_SIZE: u16 = 256;
/// The virtio 1.x net header (with num_buffers), in front of every packet.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame plus header a chain may carry (a 64 KiB TSO segment).
const MAX_PACKET: usize = 65_562;

const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
const VIRTIO_NET_F_MTU: u64 = 1 << 3;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
const VIRTIO_NET_F_MQ: u64 = 1 << 22;

/// Most queue pairs a NIC may have.
pub const MAX_QUEUE_PAIRS: u16 = 8;

/// Whether packets move through vhost-net (in the host kernel) or this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VhostMode {
    /// vhost-net when /dev/vhost-net is usable, this process otherwise.
    #[default]
    Auto,
    On,
    Off,
}

pub struct Net {
    tap: Arc<Tap>,
    mac: [u8; 6],
    /// Offered to the guest as the device's MTU, when set.
    mtu: Option<u16>,
    limiter: SharedRateLimiter,
    vhost_mode: VhostMode,
    /// RX and TX of each pair, then the control queue when multiqueue.
    queue_sizes: Vec<u16>,
    workers: Vec<Worker>,
    vhost: Vec<vhost::VhostNet>,
    name: String,
}

impl Net {
    pub fn new(
        tap: Tap,
        mac: [u8; 6],
        mtu: Option<u16>,
        vhost_mode: VhostMode,
        limiter: SharedRateLimiter,
        name: String,
    ) -> Self {
        let pairs = tap.queue_count();
        let queues = if pairs > 1 { 2 * pairs + 1 } else { 2 };
        Net {
            tap: Arc::new(tap),
            mac,
            mtu,
            limiter,
            vhost_mode,
            queue_sizes: vec![QUEUE_SIZE; queues],
            workers: Vec::new(),
            vhost: Vec::new(),
            name,
        }
    }

    fn pairs(&self) -> usize {
        self.tap.queue_count()
    }

    /// The device's configuration space (virtio 1.2, 5.1.4): mac, status
    /// (not offered), max_virtqueue_pairs, mtu.
    fn config_space(&self) -> [u8; 12] {
        config_space(&self.mac, self.pairs(), self.mtu)
    }

    /// Starts vhost-net on every pair, or says why it cannot.
    fn start_vhost(
        &mut self,
        memory: &GuestMemoryMmap,
        acked: u64,
        pairs: &[QueuePair],
    ) -> Result<(), vhost::VhostError> {
        let mut started = Vec::new();
        for (p, (rx, tx)) in pairs.iter().enumerate() {
            started.push(vhost::VhostNet::start(&self.tap, p, memory, acked, rx, tx)?);
        }
        self.vhost = started;
        Ok(())
    }
}

fn config_space(mac: &[u8; 6], pairs: usize, mtu: Option<u16>) -> [u8; 12] {
    let mut config = [0u8; 12];
    config[..6].copy_from_slice(mac);
    let pairs = u16::try_from(pairs).unwrap_or(u16::MAX);
    config[8..10].copy_from_slice(&pairs.to_le_bytes());
    config[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
    config
}

/// A queue pair: (RX, TX).
type QueuePair = (ActiveQueue, ActiveQueue);

/// Splits the enabled queues into (RX, TX) pairs and the control queue. Pair
/// `p` is queues 2p and 2p+1; the control queue follows the last pair the device
/// offers when multiqueue was negotiated, and is queue 2 otherwise.
fn split_queues(
    mut queues: Vec<ActiveQueue>,
    offered_pairs: usize,
    multiqueue: bool,
) -> Result<(Vec<QueuePair>, Option<ActiveQueue>), ActivateError> {
    queues.sort_by_key(|q| q.index);
    let ctrl_index = if multiqueue { 2 * offered_pairs } else { 2 };
    let ctrl = queues
        .iter()
        .position(|q| q.index == ctrl_index)
        .map(|i| queues.remove(i));
    let usable = if multiqueue { offered_pairs } else { 1 };
    let mut pairs = Vec::new();
    let mut queues = queues.into_iter().peekable();
    for p in 0..usable {
        let rx = queues.next_if(|q| q.index == 2 * p);
        let tx = queues.next_if(|q| q.index == 2 * p + 1);
        match (rx, tx) {
            (Some(rx), Some(tx)) => pairs.push((rx, tx)),
            // Pairs after the first the driver left disabled are unused.
            _ if p > 0 => break,
            _ => {
                return Err(ActivateError::Device(
                    "the RX and TX queues must both be enabled".into(),
                ))
            }
        }
    }
    Ok((pairs, ctrl))
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn pci_class(&self) -> (u8, u8) {
        (0x02, 0x00)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let multiqueue = if self.pairs() > 1 {
            VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_MQ
        } else {
            0
        };
        let mtu = if self.mtu.is_some() {
            VIRTIO_NET_F_MTU
        } else {
            0
        };
        VIRTIO_NET_F_MAC
            | mtu
            | VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_GUEST_CSUM
            | VIRTIO_NET_F_GUEST_TSO4
            | VIRTIO_NET_F_GUEST_TSO6
            | VIRTIO_NET_F_HOST_TSO4
            | VIRTIO_NET_F_HOST_TSO6
            | VIRTIO_NET_F_MRG_RXBUF
            | super::VIRTIO_RING_F_EVENT_IDX
            | super::VIRTIO_RING_F_INDIRECT_DESC
            | multiqueue
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config_space(), offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let acked = a.acked_features;
        let mut offload = 0;
        if acked & VIRTIO_NET_F_GUEST_CSUM != 0 {
            offload |= tap::TUN_F_CSUM;
            if acked & VIRTIO_NET_F_GUEST_TSO4 != 0 {
                offload |= tap::TUN_F_TSO4;
            }
            if acked & VIRTIO_NET_F_GUEST_TSO6 != 0 {
                offload |= tap::TUN_F_TSO6;
            }
        }
        self.tap
            .set_offload(offload)
            .map_err(|e| ActivateError::Device(e.to_string()))?;
        let multiqueue = acked & VIRTIO_NET_F_MQ != 0;
        let (pairs, ctrl) = split_queues(a.queues, self.pairs(), multiqueue)?;
        // Until the driver selects more, only the first pair carries packets.
        if !self.tap.select(1) {
            return Err(ActivateError::Device(format!(
                "tap {}: cannot select its first queue",
                self.tap.name
            )));
        }
        if let Some(queue) = ctrl {
            let worker = ctrl::CtrlWorker {
                selector: self.tap.clone(),
                memory: a.memory.clone(),
                queue,
                usable_pairs: pairs.len(),
            };
            self.workers.push(
                Worker::spawn(
                    &format!("{}-ctrl", self.name),
                    crate::seccomp::ThreadKind::Net,
                    move |stop| worker.run(stop),
                )
                .map_err(ActivateError::Worker)?,
            );
        }
        // A rate limit needs packets to pass through this process.
        let limited = !lock(&self.limiter).limit().is_unlimited();
        if self.vhost_mode == VhostMode::On || (self.vhost_mode == VhostMode::Auto && !limited) {
            match self.start_vhost(&a.memory, acked, &pairs) {
                Ok(()) => {
                    tracing::info!(device = %self.name, tap = %self.tap.name, pairs = pairs.len(), "packets move through vhost-net");
                    lock(&self.limiter).bypassed = true;
                    return Ok(());
                }
                Err(e) if self.vhost_mode == VhostMode::On => {
                    self.reset();
                    return Err(ActivateError::Device(e.to_string()));
                }
                Err(e) => {
                    tracing::info!(device = %self.name, "no vhost-net ({e}); moving packets in the VMM");
                }
            }
        }
        lock(&self.limiter).bypassed = false;
        let mergeable = acked & VIRTIO_NET_F_MRG_RXBUF != 0;
        for (p, (rx, tx)) in pairs.into_iter().enumerate() {
            let port = self
                .tap
                .file(p)
                .ok_or_else(|| ActivateError::Device(format!("tap has no queue {p}")))?
                .try_clone()
                .map_err(ActivateError::Worker)?;
            let path = datapath::Datapath::new(
                port,
                a.memory.clone(),
                rx,
                tx,
                mergeable,
                self.limiter.clone(),
            )
            .map_err(ActivateError::Worker)?;
            self.workers.push(
                Worker::spawn(
                    &format!("{}-q{p}", self.name),
                    crate::seccomp::ThreadKind::Net,
                    move |stop| path.run(stop),
                )
                .map_err(ActivateError::Worker)?,
            );
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.vhost.clear();
        self.workers.clear();
    }
}

/// Parses `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses() {
        assert_eq!(
            parse_mac("52:54:00:ab:CD:0f"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0x0f])
        );
        assert_eq!(parse_mac("52:54:00:ab:cd"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:0f:00"), None);
        assert_eq!(parse_mac("zz:54:00:ab:cd:0f"), None);
    }

    #[test]
    fn the_config_space_carries_the_mtu_after_the_queue_pairs() {
        let mac = [0xfa, 0x16, 0x3e, 1, 2, 3];
        let c = config_space(&mac, 2, Some(1450));
        assert_eq!(&c[..6], &mac);
        assert_eq!(u16::from_le_bytes([c[8], c[9]]), 2);
        assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1450);
        assert_eq!(&config_space(&mac, 1, None)[10..], &[0, 0]);
    }
}
