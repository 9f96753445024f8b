//! virtio-net over a TAP device: one queue pair, checksum and TSO offloads
//! negotiated with the guest and passed through to the tap with the virtio-net
//! header, packets moved with readv/writev straight between the tap and guest
//! buffers.

pub mod tap;
pub mod vhost;

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::worker::{wait_readable_fds, Worker};
use super::{ActivateError, Activation, ActiveQueue, VirtioDevice};
use crate::devices::lock;
use crate::rate_limiter::SharedRateLimiter;
use tap::Tap;

const VIRTIO_ID_NET: u32 = 1;
const QUEUE_SIZE: u16 = 256;
/// The virtio 1.x net header (with num_buffers), in front of every packet.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame plus header a chain may carry (a 64 KiB TSO segment).
const MAX_PACKET: usize = 65_562;

const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;

const RX: usize = 0;
const TX: usize = 1;

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
    limiter: SharedRateLimiter,
    vhost_mode: VhostMode,
    worker: Option<Worker>,
    vhost: Option<vhost::VhostNet>,
    name: String,
}

impl Net {
    pub fn new(
        tap: Tap,
        mac: [u8; 6],
        vhost_mode: VhostMode,
        limiter: SharedRateLimiter,
        name: String,
    ) -> Self {
        Net {
            tap: Arc::new(tap),
            mac,
            limiter,
            vhost_mode,
            worker: None,
            vhost: None,
            name,
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn pci_class(&self) -> (u8, u8) {
        (0x02, 0x00)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_GUEST_CSUM
            | VIRTIO_NET_F_GUEST_TSO4
            | VIRTIO_NET_F_GUEST_TSO6
            | VIRTIO_NET_F_HOST_TSO4
            | VIRTIO_NET_F_HOST_TSO6
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.mac, offset, data);
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
        let mut queues = a.queues;
        queues.sort_by_key(|q| q.index);
        // A rate limit needs packets to pass through this process.
        let limited = !lock(&self.limiter).limit().is_unlimited();
        if self.vhost_mode == VhostMode::On || (self.vhost_mode == VhostMode::Auto && !limited) {
            match vhost::VhostNet::start(&self.tap, &a.memory, acked, &queues) {
                Ok(v) => {
                    tracing::info!(device = %self.name, tap = %self.tap.name, "packets move through vhost-net");
                    lock(&self.limiter).bypassed = true;
                    self.vhost = Some(v);
                    return Ok(());
                }
                Err(e) if self.vhost_mode == VhostMode::On => {
                    return Err(ActivateError::Device(e.to_string()));
                }
                Err(e) => {
                    tracing::info!(device = %self.name, "no vhost-net ({e}); moving packets in the VMM");
                }
            }
        }
        let (Some(tx), Some(rx)) = (queues.pop(), queues.pop()) else {
            return Err(ActivateError::Device(
                "the RX and TX queues must both be enabled".into(),
            ));
        };
        if (rx.index, tx.index) != (RX, TX) {
            return Err(ActivateError::Device(
                "the RX and TX queues must both be enabled".into(),
            ));
        }
        lock(&self.limiter).bypassed = false;
        let worker = NetWorker {
            tap: self.tap.clone(),
            memory: a.memory,
            rx,
            tx,
            rx_has_buffers: true,
            limiter: self.limiter.clone(),
            timer: TimerFd::new()
                .map_err(|e| ActivateError::Worker(std::io::Error::from_raw_os_error(e.errno())))?,
            throttled: false,
        };
        self.worker = Some(
            Worker::spawn(&self.name, move |stop| worker.run(stop))
                .map_err(ActivateError::Worker)?,
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.vhost = None;
        self.worker = None;
    }
}

struct NetWorker {
    tap: Arc<Tap>,
    memory: GuestMemoryMmap,
    rx: ActiveQueue,
    tx: ActiveQueue,
    /// False once the guest ran out of RX buffers; set again by its RX notify.
    rx_has_buffers: bool,
    limiter: SharedRateLimiter,
    /// Armed while the rate limiter holds packets back, both ways.
    timer: TimerFd,
    throttled: bool,
}

/// Host addresses of a chain's descriptors in one direction, capped at MAX_PACKET.
fn chain_iovecs(
    memory: &GuestMemoryMmap,
    queue: &mut Queue,
    writable: bool,
) -> Option<(u16, Vec<libc::iovec>)> {
    let chain = queue.pop_descriptor_chain(memory)?;
    let head = chain.head_index();
    let mut iovecs = Vec::new();
    let mut total = 0usize;
    for d in chain {
        if d.is_write_only() != writable || total >= MAX_PACKET {
            continue;
        }
        let len = (d.len() as usize).min(MAX_PACKET - total);
        // A buffer outside guest memory (or spanning regions) is skipped.
        if let Ok(slice) = memory.get_slice(d.addr(), len) {
            iovecs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: len,
            });
            total += len;
        }
    }
    Some((head, iovecs))
}

impl NetWorker {
    fn run(mut self, stop: EventFd) {
        use std::os::fd::AsRawFd;
        loop {
            let tap_fd: RawFd = if self.rx_has_buffers {
                self.tap.fd()
            } else {
                -1
            };
            let fds = [
                stop.as_raw_fd(),
                self.rx.notify.as_raw_fd(),
                self.tx.notify.as_raw_fd(),
                tap_fd,
            ];
            let ready = match wait_readable_fds(&fds) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("virtio-net worker: {e}");
                    return;
                }
            };
            if ready.contains(&0) {
                return;
            }
            if ready.contains(&1) {
                let _ = self.rx.notify.read();
                self.rx_has_buffers = true;
            }
            if ready.contains(&2) {
                let _ = self.tx.notify.read();
            }
            if ready.contains(&4) {
                let _ = self.timer.wait();
                self.throttled = false;
            }
            if !self.throttled {
                self.process_tx();
                self.process_rx();
            }
        }
    }

    /// Charges a packet (or, with 0/0, checks the debt) to the limiter; on refusal
    /// arms the timer and stops both directions until it fires.
    fn admit(&mut self, bytes: u64, packets: u64) -> bool {
        match lock(&self.limiter).consume(bytes, packets, std::time::Instant::now()) {
            Ok(()) => true,
            Err(wait) => {
                self.throttled = self
                    .timer
                    .reset(wait.max(std::time::Duration::from_micros(100)), None)
                    .is_ok();
                !self.throttled
            }
        }
    }

    fn process_tx(&mut self) {
        let mut sent = false;
        while let Some((head, iovecs)) = chain_iovecs(&self.memory, &mut self.tx.queue, false) {
            let bytes: usize = iovecs.iter().map(|v| v.iov_len).sum();
            if !self.admit(bytes.saturating_sub(VNET_HDR_LEN) as u64, 1) {
                self.tx.queue.go_to_previous_position();
                break;
            }
            if !iovecs.is_empty() {
                // SAFETY: the iovecs point into mapped guest memory held by this
                // worker; writev only reads them.
                let rc = unsafe {
                    libc::writev(self.tap.fd(), iovecs.as_ptr(), iovecs.len() as libc::c_int)
                };
                if rc < 0 {
                    // A full or downed tap drops the packet, as a wire would.
                    crate::rate_limited_warn!("virtio-net tx: {}", std::io::Error::last_os_error());
                }
            }
            let _ = self.tx.queue.add_used(&self.memory, head, 0);
            sent = true;
        }
        if sent
            && self
                .tx
                .queue
                .needs_notification(&self.memory)
                .unwrap_or(true)
        {
            self.tx.interrupt.trigger();
        }
    }

    fn process_rx(&mut self) {
        let mut received = false;
        while self.rx_has_buffers {
            // The size of the next packet is unknown until it is read: read while
            // the limiter is not in debt, and charge each packet after the fact.
            if !self.admit(0, 0) {
                break;
            }
            let Some((head, iovecs)) = chain_iovecs(&self.memory, &mut self.rx.queue, true) else {
                self.rx_has_buffers = false;
                break;
            };
            // SAFETY: the iovecs point into mapped guest memory held by this worker.
            let rc =
                unsafe { libc::readv(self.tap.fd(), iovecs.as_ptr(), iovecs.len() as libc::c_int) };
            if rc < 0 {
                // Nothing to read (or the tap failed): give the buffers back.
                self.rx.queue.go_to_previous_position();
                break;
            }
            let _ = self.rx.queue.add_used(&self.memory, head, rc as u32);
            let _ = lock(&self.limiter).consume(
                (rc as u64).saturating_sub(VNET_HDR_LEN as u64),
                1,
                std::time::Instant::now(),
            );
            received = true;
        }
        if received
            && self
                .rx
                .queue
                .needs_notification(&self.memory)
                .unwrap_or(true)
        {
            self.rx.interrupt.trigger();
        }
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
}
