//! virtio-rng: request chains, well-formed and malformed, through the real
//! device (`Rng::activate` and its worker thread).
//!
//! Checked per case: every chain with a valid head is used exactly once; a used
//! length never exceeds the writable bytes or the per-request cap, and covers
//! only writable buffers that are guest memory, in order (the guest takes the
//! first `len` bytes of its buffers as entropy); no guest byte outside the
//! writable buffers and the used ring changes; the worker then fills a good
//! request, and stops when reset. Every wait is bounded.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::chains::{self, AvailSpec, ChainSpec, DescSpec, Rings, Walked, HIGH, QUEUE_SIZE};
use super::Snapshot;
use crate::virtio::rng::Rng;
use crate::virtio::{Activation, ActiveQueue, QueueInterrupt, VirtioDevice};

/// The device's cap on one request.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

#[derive(Clone, Debug)]
struct Case {
    chains: Vec<ChainSpec>,
    avail: AvailSpec,
}

fn chain() -> impl Strategy<Value = ChainSpec> {
    let len = prop_oneof![3 => 1u32..0x1_0000, 1 => chains::len()];
    (
        prop::collection::vec(len, 1..4),
        prop_oneof![1 => Just(vec![]), 2 => prop::collection::vec(chains::mutation(), 1..4)],
        chains::indirect(),
    )
        .prop_map(|(lens, mutations, indirect)| {
            let n = lens.len();
            let descs = lens
                .iter()
                .enumerate()
                .map(|(i, &l)| DescSpec::fresh(l, true, i + 1 == n))
                .collect();
            ChainSpec::mutated(descs, &mutations, indirect)
        })
}

fn case() -> impl Strategy<Value = Case> {
    (prop::collection::vec(chain(), 1..10), chains::avail())
        .prop_map(|(chains, avail)| Case { chains, avail })
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

/// A running device on `rings`, its next avail and used index at `next`.
fn start(mem: &GuestMemoryMmap, rings: &Rings, event_idx: bool, next: u16) -> (Rng, EventFd) {
    use virtio_queue::QueueT;
    let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let kick = notify.try_clone().unwrap();
    let mut queue = rings.queue(mem, event_idx);
    queue.set_next_avail(next);
    queue.set_next_used(next);
    let mut rng = Rng::default();
    rng.activate(Activation {
        memory: mem.clone(),
        acked_features: 0,
        queues: vec![ActiveQueue {
            index: 0,
            queue,
            notify,
            interrupt: QueueInterrupt::disconnected(),
        }],
    })
    .unwrap();
    (rng, kick)
}

/// The used length `len` of `c` may only cover its writable buffers, in order,
/// each of them guest memory, up to the device's cap.
fn check_used_len(c: &Walked, len: u32, before: &Snapshot) -> Result<(), TestCaseError> {
    let len = u64::from(len);
    check(len <= c.writable_bytes().min(MAX_REQUEST_BYTES), || {
        format!("head {}: used length {len} > what it may fill", c.head)
    })?;
    let mut left = len;
    for (addr, l) in c.writable() {
        let n = left.min(u64::from(l));
        check(before.contains(addr, n), || {
            format!(
                "head {} {:?}: used length {len} counts bytes at {addr:#x} outside guest memory",
                c.head, c.descs
            )
        })?;
        left -= n;
    }
    Ok(())
}

fn one(case: Case) -> Result<(), TestCaseError> {
    let mem = chains::memory();
    let rings = Rings::at(0);
    let mut alloc = chains::Alloc::default();
    let laid = rings.lay_out(&mem, &mut alloc, &case.chains, &case.avail);
    let walked = chains::walk(&mem, rings.queue(&mem, case.avail.event_idx));
    let before = Snapshot::of(&mem);
    let (mut rng, mut kick) = start(&mem, &rings, case.avail.event_idx, 0);
    kick.write(1).unwrap();

    let seen = walked.as_deref().unwrap_or(&[]);
    let valid: Vec<&Walked> = seen.iter().filter(|c| c.head < QUEUE_SIZE).collect();
    let expected = valid.len() as u16;
    // Rings the device was told to overwrite (with entropy): only liveness
    // is checked, on a fresh device that starts after the fuzzed chains.
    let clobbered = chains::clobbers_rings(seen);
    if walked.is_none() || clobbered {
        // A broken avail ring: the worker must still stop when reset.
        std::thread::sleep(std::time::Duration::from_millis(20));
        super::within("virtio-rng reset on a broken queue", move || rng.reset())?;
        (rng, kick) = start(&mem, &rings, case.avail.event_idx, seen.len() as u16);
    } else {
        super::wait_until("the fuzzed chains being used", || {
            rings.used_idx(&mem) >= expected
        })?;
        let after = Snapshot::of(&mem);
        check(rings.used_idx(&mem) == expected, || {
            format!("used index {} for {expected} chains", rings.used_idx(&mem))
        })?;
        // The worker serves chains in order: used entry i is chain i.
        for (i, c) in valid.iter().enumerate() {
            let (head, len) = rings.used_entry(&mem, i as u16);
            check(head == u32::from(c.head), || {
                format!("used entry {i} is head {head}, want {}", c.head)
            })?;
            check_used_len(c, len, &before)?;
        }
        let mut allowed = chains::writable_ranges(seen);
        allowed.push(rings.used_range());
        if chains::disjoint(seen, &laid.tables) {
            before.only_changed_in(&after, &allowed)?;
        }
    }

    // A good request is still filled.
    rings.set_avail_idx(&mem, seen.len() as u16);
    let (a, b) = (HIGH, HIGH + 0x1000);
    mem.write_slice(&[0u8; 128], GuestAddress(a)).unwrap();
    mem.write_slice(&[0u8; 128], GuestAddress(b)).unwrap();
    rings.write_desc(&mem, rings.desc, 0, (a, 128, 3, 1));
    rings.write_desc(&mem, rings.desc, 1, (b, 128, 2, 0));
    // Where the device's used index stands (rings it overwrote say nothing).
    let used = if clobbered {
        let restarted_at = seen.len() as u16;
        rings.set_used_idx(&mem, restarted_at);
        restarted_at
    } else {
        rings.used_idx(&mem)
    };
    rings.push(&mem, 0);
    kick.write(1).unwrap();
    super::wait_until("a good request being filled", || {
        rings.used_idx(&mem) != used
    })?;
    check(rings.used_entry(&mem, used) == (0, 256), || {
        format!("good request: {:?}", rings.used_entry(&mem, used))
    })?;
    let mut got = [0u8; 128];
    mem.read_slice(&mut got, GuestAddress(b)).unwrap();
    check(got != [0u8; 128], || {
        "no entropy in the second buffer".into()
    })?;

    super::within("virtio-rng reset", move || rng.reset())?;
    check(rings.used_idx(&mem) == used.wrapping_add(1), || {
        "more chains used than were available".into()
    })
}

#[test]
fn virtio_rng() {
    super::run("virtio_rng", case(), one);
}
