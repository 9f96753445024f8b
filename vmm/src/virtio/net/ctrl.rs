//! The virtio-net control queue: the guest says how many queue pairs it uses
//! (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET), and the tap's queues follow. Every other
//! command class is refused with VIRTIO_NET_ERR (none is offered).

use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_OK,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{GuestMemoryMmap, Le16};
use vmm_sys_util::eventfd::EventFd;

use super::tap::Tap;
use crate::virtio::worker::wait_readable;
use crate::virtio::ActiveQueue;

/// Applies the guest's queue-pair choices to the tap.
pub trait QueueSelector {
    /// Use pairs `0..pairs` and no others.
    fn select(&self, pairs: usize) -> bool;
}

impl QueueSelector for Tap {
    fn select(&self, pairs: usize) -> bool {
        (0..self.queue_count()).all(|q| match self.set_queue_enabled(q, q < pairs) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("virtio-net: {e}");
                false
            }
        })
    }
}

/// Serves the control queue until stopped.
pub struct CtrlWorker<S> {
    pub selector: Arc<S>,
    pub memory: GuestMemoryMmap,
    pub queue: ActiveQueue,
    /// Pairs whose queues the driver enabled: the most it may select.
    pub usable_pairs: usize,
}

impl<S: QueueSelector> CtrlWorker<S> {
    pub fn run(mut self, stop: EventFd) {
        loop {
            match wait_readable(&[&stop, &self.queue.notify]) {
                Ok(ready) if ready.contains(&0) => return,
                Ok(_) => {
                    let _ = self.queue.notify.read();
                    let used = process_commands(
                        &mut self.queue.queue,
                        &self.memory,
                        &*self.selector,
                        self.usable_pairs,
                    );
                    if used
                        && self
                            .queue
                            .queue
                            .needs_notification(&self.memory)
                            .unwrap_or(true)
                    {
                        self.queue.interrupt.trigger();
                    }
                }
                Err(e) => {
                    tracing::error!("virtio-net control queue: {e}");
                    return;
                }
            }
        }
    }
}

/// Handles every available command; true when any chain was used.
pub fn process_commands<S: QueueSelector>(
    queue: &mut Queue,
    memory: &GuestMemoryMmap,
    selector: &S,
    usable_pairs: usize,
) -> bool {
    let mut used = false;
    loop {
        let chain = match crate::virtio::pop_chain(queue, memory) {
            Ok(Some(chain)) => chain,
            Ok(None) => break,
            Err(e) => {
                crate::rate_limited_warn!("virtio-net control queue: {e:?}");
                break;
            }
        };
        let head = chain.head_index();
        let written = command(chain, memory, selector, usable_pairs);
        let _ = queue.add_used(memory, head, written);
        used = true;
    }
    used
}

/// Runs one command and writes its ack; returns the bytes written (0 when the
/// chain has no room for the ack, which the driver then sees as a failure).
fn command<S: QueueSelector>(
    chain: DescriptorChain<&GuestMemoryMmap>,
    memory: &GuestMemoryMmap,
    selector: &S,
    usable_pairs: usize,
) -> u32 {
    let ack = match chain.clone().reader(memory) {
        Ok(mut r) => match (r.read_obj::<u8>(), r.read_obj::<u8>()) {
            (Ok(class), Ok(cmd))
                if u32::from(class) == VIRTIO_NET_CTRL_MQ
                    && u32::from(cmd) == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET =>
            {
                match r.read_obj::<Le16>() {
                    Ok(n) => set_pairs(selector, usize::from(n.to_native()), usable_pairs),
                    Err(_) => VIRTIO_NET_ERR,
                }
            }
            _ => VIRTIO_NET_ERR,
        },
        Err(_) => VIRTIO_NET_ERR,
    };
    // The ack is the last byte of the device-writable part.
    match chain.writer(memory) {
        Ok(mut w) if w.available_bytes() > 0 => {
            let skip = w.available_bytes() - 1;
            match w.split_at(skip) {
                Ok(mut last) => u32::from(last.write_obj(ack as u8).is_ok()),
                Err(_) => 0,
            }
        }
        _ => 0,
    }
}

fn set_pairs<S: QueueSelector>(selector: &S, pairs: usize, usable_pairs: usize) -> u32 {
    if !(1..=usable_pairs).contains(&pairs) {
        return VIRTIO_NET_ERR;
    }
    if selector.select(pairs) {
        tracing::debug!(pairs, "virtio-net: guest selected queue pairs");
        VIRTIO_NET_OK
    } else {
        VIRTIO_NET_ERR
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<usize>>);

    impl QueueSelector for Recorder {
        fn select(&self, pairs: usize) -> bool {
            self.0.lock().unwrap().push(pairs);
            true
        }
    }

    /// Sends one command chain built from (address, len, flags) descriptors and
    /// returns (used length, ack byte at `ack_at`, pairs selected so far).
    fn send(payload: &[u8], descs: &[(u64, u32, u16)], ack_at: u64) -> (u32, u8, Vec<usize>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        mem.write_slice(payload, GuestAddress(0x8000)).unwrap();
        mem.write_obj(0xaau8, GuestAddress(ack_at)).unwrap();
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = if flags & F_NEXT != 0 { i as u16 + 1 } else { 0 };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        mock.build_desc_chain(&raw).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        let selector = Recorder::default();
        assert!(process_commands(&mut queue, &mem, &selector, 2));
        let used_len: u32 = mem.read_obj(mock.used_addr().unchecked_add(8)).unwrap();
        let ack: u8 = mem.read_obj(GuestAddress(ack_at)).unwrap();
        let picks = selector.0.lock().unwrap().clone();
        (used_len, ack, picks)
    }

    #[test]
    fn queue_pair_selection() {
        // class, cmd, then the pair count, then a one-byte writable ack.
        let set = |n: u16| {
            let mut v = vec![
                VIRTIO_NET_CTRL_MQ as u8,
                VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8,
            ];
            v.extend_from_slice(&n.to_le_bytes());
            v
        };
        let good = [
            (0x8000, 2, F_NEXT),
            (0x8002, 2, F_NEXT),
            (0x9000, 1, F_WRITE),
        ];
        assert_eq!(
            send(&set(2), &good, 0x9000),
            (1, VIRTIO_NET_OK as u8, vec![2])
        );
        // Zero pairs and more than the driver enabled are refused.
        assert_eq!(
            send(&set(0), &good, 0x9000),
            (1, VIRTIO_NET_ERR as u8, vec![])
        );
        assert_eq!(
            send(&set(3), &good, 0x9000),
            (1, VIRTIO_NET_ERR as u8, vec![])
        );
        // Header and data in one descriptor; a larger writable part gets the ack last.
        let merged = [(0x8000, 4, F_NEXT), (0x9000, 4, F_WRITE)];
        assert_eq!(
            send(&set(1), &merged, 0x9003),
            (1, VIRTIO_NET_OK as u8, vec![1])
        );
    }

    #[test]
    fn malformed_commands_are_refused() {
        let ack = [(0x8000, 2, F_NEXT), (0x9000, 1, F_WRITE)];
        // Unknown class (RX mode) and a truncated MQ command.
        assert_eq!(send(&[0, 0], &ack, 0x9000).1, VIRTIO_NET_ERR as u8);
        let short = [
            VIRTIO_NET_CTRL_MQ as u8,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8,
        ];
        assert_eq!(
            send(&short, &ack, 0x9000),
            (1, VIRTIO_NET_ERR as u8, vec![])
        );
        // No writable descriptor: nothing written, the chain is still returned.
        assert_eq!(send(&short, &[(0x8000, 2, 0)], 0x9000), (0, 0xaa, vec![]));
        // A buffer outside guest memory.
        let outside = [(0x10_0000_0000, 4, F_NEXT), (0x9000, 1, F_WRITE)];
        assert_eq!(send(&[], &outside, 0x9000).2, Vec::<usize>::new());
    }
}
