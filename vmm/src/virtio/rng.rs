//! virtio-rng: entropy from the host's getrandom(2), so a guest never stalls
//! waiting for it.

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::worker::{wait_readable, Worker};
use super::{ActivateError, Activation, ActiveQueue, VirtioDevice};

const QUEUE_SIZE: u16 = 256;
/// Most bytes served per request, however large the guest's buffers.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
const VIRTIO_ID_RNG: u32 = 4;

#[derive(Default)]
pub struct Rng {
    worker: Option<Worker>,
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn pci_class(&self) -> (u8, u8) {
        (0xff, 0x00)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation { memory, queues, .. } = activation;
        let Some(queue) = queues.into_iter().find(|q| q.index == 0) else {
            return Err(ActivateError::Device(
                "the request queue is not enabled".into(),
            ));
        };
        let worker = Worker::spawn("virtio-rng", crate::seccomp::ThreadKind::Rng, move |stop| {
            serve(stop, queue, memory)
        })
        .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }
}

fn serve(stop: vmm_sys_util::eventfd::EventFd, mut q: ActiveQueue, memory: GuestMemoryMmap) {
    loop {
        match wait_readable(&[&stop, &q.notify]) {
            Ok(ready) if ready.contains(&0) => return,
            Ok(_) => {
                let _ = q.notify.read();
            }
            Err(e) => {
                tracing::error!("virtio-rng worker: {e}");
                return;
            }
        }
        if fill_requests(&mut q.queue, &memory) {
            q.interrupt.trigger();
        }
    }
}

/// Serves every available request; returns whether the driver wants an interrupt.
pub fn fill_requests(queue: &mut virtio_queue::Queue, memory: &GuestMemoryMmap) -> bool {
    let mut served = false;
    let mut buf = [0u8; 4096];
    loop {
        // Skips heads past the table: one used to end this loop (its add_used
        // failed), leaving the requests behind it unserved until another kick.
        let chain = match super::pop_chain(queue, memory) {
            Ok(Some(chain)) => chain,
            Ok(None) => break,
            Err(e) => {
                crate::rate_limited_warn!("virtio-rng: {e:?}");
                break;
            }
        };
        let head = chain.head_index();
        let mut written = 0usize;
        'chain: for desc in chain {
            // A request is a chain of device-writable buffers; anything else ends it.
            if !desc.is_write_only() || written >= MAX_REQUEST_BYTES {
                break;
            }
            let mut remaining = (desc.len() as usize).min(MAX_REQUEST_BYTES - written);
            let mut addr = desc.addr();
            while remaining > 0 {
                let n = remaining.min(buf.len());
                if !getrandom(&mut buf[..n]) || memory.write_slice(&buf[..n], addr).is_err() {
                    // The used length says the first `written` bytes of the
                    // buffers are entropy: stop at the first that could not be
                    // filled rather than count the buffers after it.
                    break 'chain;
                }
                written += n;
                remaining -= n;
                addr = vm_memory::GuestAddress(addr.0.wrapping_add(n as u64));
            }
        }
        if queue.add_used(memory, head, written as u32).is_err() {
            break;
        }
        served = true;
    }
    served && queue.needs_notification(memory).unwrap_or(true)
}

fn getrandom(buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        filled += n as usize;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, GuestAddress};

    const WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn used_len(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, i: u64) -> u32 {
        mem.read_obj(q.used_addr().unchecked_add(4 + 8 * i + 4))
            .unwrap()
    }

    #[test]
    fn fills_writable_buffers() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x8000, 16, WRITE | NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x9000, 32, WRITE, 0)),
        ];
        mq.build_desc_chain(&descs).unwrap();
        let mut q: virtio_queue::Queue = mq.create_queue().unwrap();
        assert!(fill_requests(&mut q, &mem));
        assert_eq!(used_len(&mem, &mq, 0), 48);
        let mut got = [0u8; 32];
        mem.read_slice(&mut got, GuestAddress(0x9000)).unwrap();
        assert_ne!(got, [0u8; 32], "entropy written");
    }

    #[test]
    fn bad_heads_and_buffers_do_not_cost_the_requests_after_them() {
        // Found by fuzz::virtio_rng: a head past the table ended the loop (its
        // add_used failed) and stranded the requests behind it; a buffer outside
        // guest memory was skipped but the ones after it counted, so the used
        // length claimed bytes that were never written.
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let table = [
            SplitDescriptor::new(0xffff_0000, 16, WRITE | NEXT, 1),
            SplitDescriptor::new(0x8000, 16, WRITE, 0),
            SplitDescriptor::new(0x9000, 32, WRITE, 0),
        ];
        for (i, d) in table.into_iter().enumerate() {
            mq.desc_table()
                .store(i as u16, RawDescriptor::from(d))
                .unwrap();
        }
        for (i, head) in [0u16, 99, 2].into_iter().enumerate() {
            mq.avail().ring().ref_at(i).unwrap().store(head);
        }
        mq.avail().idx().store(3);
        let mut q: virtio_queue::Queue = mq.create_queue().unwrap();
        assert!(fill_requests(&mut q, &mem));
        let used: u16 = mem.read_obj(mq.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used, 2, "the bad head is skipped, the one after it served");
        assert_eq!(used_len(&mem, &mq, 0), 0, "nothing before the bad buffer");
        assert_eq!(used_len(&mem, &mq, 1), 32);
    }

    #[test]
    fn malformed_chains_are_completed_without_panicking() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        // Read-only buffer, then a buffer outside guest memory.
        mq.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(0x8000, 16, 0, 0))])
            .unwrap();
        mq.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(
            0xffff_0000,
            4096,
            WRITE,
            0,
        ))])
        .unwrap();
        let mut q: virtio_queue::Queue = mq.create_queue().unwrap();
        assert!(fill_requests(&mut q, &mem));
        assert_eq!(used_len(&mem, &mq, 0), 0);
        assert_eq!(used_len(&mem, &mq, 1), 0);
    }
}
