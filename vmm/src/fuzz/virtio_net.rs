//! virtio-net: TX and RX chains, well-formed and malformed, and packets of any
//! size through the real in-VMM datapath (`Datapath`, as in its unit tests:
//! one end of a datagram socket pair stands in for the tap).
//!
//! Checked per case: every TX chain with a valid head is used once, with length
//! 0, and what reaches the wire is, in order, the readable guest bytes of those
//! chains (the socket may drop some when full, as a tap would); RX used lengths
//! never exceed a chain's writable bytes, nor more chains used than were posted;
//! no guest byte outside the RX buffers and the used rings changes; then the
//! worker thread (`Datapath::run`) still sends a good packet intact and fills
//! good RX buffers, and stops when asked. Every wait is bounded.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::chains::{self, AvailSpec, ChainSpec, DescSpec, Rings, Walked, HIGH, QUEUE_SIZE};
use super::Snapshot;
use crate::rate_limiter::{RateLimit, RateLimiter};
use crate::virtio::net::datapath::{socket_pair, Datapath};
use crate::virtio::worker::Worker;
use crate::virtio::{ActiveQueue, QueueInterrupt};

const MAX_PACKET: u64 = 65_562;
const MAX_IOVECS: usize = 1024;

#[derive(Clone, Debug)]
struct Case {
    tx: Vec<ChainSpec>,
    tx_avail: AvailSpec,
    rx: Vec<ChainSpec>,
    rx_avail: AvailSpec,
    /// Sizes of the packets the "tap" delivers.
    packets: Vec<usize>,
    mergeable: bool,
}

fn chain(write: bool) -> impl Strategy<Value = ChainSpec> {
    let len = prop_oneof![
        3 => 12u32..2048,
        1 => Just(1536u32),
        1 => Just(MAX_PACKET as u32),
        1 => chains::len(),
    ];
    (
        prop::collection::vec(len, 1..4),
        prop_oneof![1 => Just(vec![]), 2 => prop::collection::vec(chains::mutation(), 1..4)],
        chains::indirect(),
    )
        .prop_map(move |(lens, mutations, indirect)| {
            let n = lens.len();
            let descs = lens
                .iter()
                .enumerate()
                .map(|(i, &l)| DescSpec::fresh(l, write, i + 1 == n))
                .collect();
            ChainSpec::mutated(descs, &mutations, indirect)
        })
}

fn case() -> impl Strategy<Value = Case> {
    let packet = prop_oneof![
        0usize..64,
        12usize..1600,
        Just(65_562usize),
        60_000usize..70_000
    ];
    (
        prop::collection::vec(chain(false), 0..6),
        chains::avail(),
        prop::collection::vec(chain(true), 0..8),
        chains::avail(),
        prop::collection::vec(packet, 0..5),
        any::<bool>(),
    )
        .prop_map(|(tx, tx_avail, rx, rx_avail, packets, mergeable)| Case {
            tx,
            tx_avail,
            rx,
            rx_avail,
            packets,
            mergeable,
        })
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

fn send(sock: &File, packet: &[u8]) -> bool {
    // SAFETY: sending from a live buffer within its length.
    let rc = unsafe { libc::send(sock.as_raw_fd(), packet.as_ptr().cast(), packet.len(), 0) };
    rc == packet.len() as isize
}

fn recv(sock: &File) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70_000];
    // SAFETY: receiving into a live buffer within its length.
    let rc = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    buf.truncate(usize::try_from(rc).ok()?);
    Some(buf)
}

/// The packet the device must send for TX chain `c` (None when it has no
/// readable guest bytes): its readable buffers in guest memory, in order,
/// capped at the largest packet.
fn tx_packet(c: &Walked, before: &Snapshot) -> Option<Vec<u8>> {
    let mut p = Vec::new();
    let mut parts = 0;
    for &(addr, len, write) in &c.descs {
        if write || p.len() as u64 >= MAX_PACKET || parts >= MAX_IOVECS {
            continue;
        }
        let n = u64::from(len).min(MAX_PACKET - p.len() as u64);
        if n > 0 && before.contains(addr, n) {
            p.extend((0..n).map(|i| before.byte(addr + i).unwrap()));
            parts += 1;
        }
    }
    (!p.is_empty()).then_some(p)
}

fn active(
    rings: &Rings,
    mem: &GuestMemoryMmap,
    index: usize,
    event_idx: bool,
) -> (ActiveQueue, EventFd) {
    let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let kick = notify.try_clone().unwrap();
    let q = ActiveQueue {
        index,
        queue: rings.queue(mem, event_idx),
        notify,
        interrupt: QueueInterrupt::disconnected(),
    };
    (q, kick)
}

fn one(case: Case) -> Result<(), TestCaseError> {
    let mem = chains::memory();
    let (rx_rings, tx_rings) = (Rings::at(0), Rings::at(0x1000));
    let mut alloc = chains::Alloc::default();
    let rx_laid = rx_rings.lay_out(&mem, &mut alloc, &case.rx, &case.rx_avail);
    let tx_laid = tx_rings.lay_out(&mem, &mut alloc, &case.tx, &case.tx_avail);
    // Something recognisable in every TX buffer.
    for (_, bufs) in &tx_laid.chains {
        for (i, &(addr, len, _)) in bufs.iter().enumerate() {
            let n = (len as usize).min(4096);
            let bytes: Vec<u8> = (0..n).map(|j| (i * 37 + j) as u8).collect();
            let _ = mem.write_slice(&bytes, GuestAddress(addr));
        }
    }
    let rx_walk = chains::walk(&mem, rx_rings.queue(&mem, case.rx_avail.event_idx));
    let tx_walk = chains::walk(&mem, tx_rings.queue(&mem, case.tx_avail.event_idx));
    let before = Snapshot::of(&mem);

    let (port, peer) = socket_pair();
    let port_reader = port.try_clone().unwrap();
    let (rx, rx_kick) = active(&rx_rings, &mem, 0, case.rx_avail.event_idx);
    let (tx, tx_kick) = active(&tx_rings, &mem, 1, case.tx_avail.event_idx);
    let limiter = Arc::new(Mutex::new(RateLimiter::new(RateLimit::default())));
    let mut path = Datapath::new(port, mem.clone(), rx, tx, case.mergeable, limiter).unwrap();
    for (i, &n) in case.packets.iter().enumerate() {
        let p: Vec<u8> = (0..n).map(|j| (i * 7 + j) as u8).collect();
        send(&peer, &p);
    }
    let path = super::within("virtio-net process_tx/process_rx", move || {
        path.process_tx();
        path.process_rx();
        path
    })?;
    let after = Snapshot::of(&mem);

    // RX buffers the device was told to write into the rings: what the rings
    // say afterwards is not the test's to predict; that nothing hung is
    // checked above (TX writes no guest buffers).
    let rx_seen = rx_walk.as_deref().unwrap_or(&[]);
    if chains::clobbers_rings(rx_seen) {
        return Ok(());
    }
    // TX: every chain with a valid head used once, length 0; the wire carries
    // their packets in order, less any the full socket dropped.
    let tx_seen = tx_walk.as_deref().unwrap_or(&[]);
    let tx_valid: Vec<&Walked> = tx_seen.iter().filter(|c| c.head < QUEUE_SIZE).collect();
    check(tx_rings.used_idx(&mem) == tx_valid.len() as u16, || {
        format!(
            "TX used index {} for {} chains",
            tx_rings.used_idx(&mem),
            tx_valid.len()
        )
    })?;
    for (i, c) in tx_valid.iter().enumerate() {
        let got = tx_rings.used_entry(&mem, i as u16);
        check(got == (u32::from(c.head), 0), || {
            format!("TX used entry {i}: {got:?}")
        })?;
    }
    let mut expected = tx_valid.iter().filter_map(|c| tx_packet(c, &before));
    while let Some(p) = recv(&peer) {
        check(expected.any(|e| e == p), || {
            format!(
                "a {}-byte packet on the wire that no chain held, or out of order",
                p.len()
            )
        })?;
    }

    // RX: no more chains used than were posted, none longer than its buffers.
    let rx_valid: Vec<&Walked> = rx_seen.iter().filter(|c| c.head < QUEUE_SIZE).collect();
    let rx_used = rx_rings.used_idx(&mem);
    check(usize::from(rx_used) <= rx_valid.len(), || {
        format!("RX used index {rx_used} for {} chains", rx_valid.len())
    })?;
    for i in 0..rx_used {
        let (head, len) = rx_rings.used_entry(&mem, i);
        let c = rx_valid
            .iter()
            .find(|c| u32::from(c.head) == head)
            .ok_or_else(|| TestCaseError::fail(format!("RX used head {head} never posted")))?;
        check(u64::from(len) <= c.writable_bytes().min(MAX_PACKET), || {
            format!(
                "RX head {head}: used length {len} > its buffers {:?}",
                c.descs
            )
        })?;
    }
    let mut allowed = chains::writable_ranges(rx_seen);
    allowed.push(rx_rings.used_range());
    allowed.push(tx_rings.used_range());
    if chains::disjoint(rx_seen, &rx_laid.tables) && chains::disjoint(tx_seen, &tx_laid.tables) {
        before.only_changed_in(&after, &allowed)?;
    }

    // The worker thread still serves both ways. Drivers with broken rings mend
    // them first; packets still in the "tap" are dropped so the next is ours.
    while recv(&port_reader).is_some() {}
    let mut worker = Worker::spawn("fuzz-net", crate::seccomp::ThreadKind::Net, move |stop| {
        path.run(stop)
    })
    .unwrap();
    if tx_walk.is_none() {
        tx_rings.set_avail_idx(&mem, 0);
    }
    if rx_walk.is_none() {
        rx_rings.set_avail_idx(&mem, 0);
    }
    let good: Vec<u8> = (0..12 + 300).map(|i| (i % 251) as u8).collect();
    let at = HIGH;
    mem.write_slice(&good, GuestAddress(at)).unwrap();
    tx_rings.write_desc(&mem, tx_rings.desc, 0, (at, 12, 1, 1));
    tx_rings.write_desc(&mem, tx_rings.desc, 1, (at + 12, 300, 0, 0));
    tx_rings.push(&mem, 0);
    tx_kick.write(1).unwrap();
    let mut found = false;
    super::wait_until("the good TX packet on the wire", || {
        while let Some(p) = recv(&peer) {
            found |= p == good;
        }
        found
    })?;
    let rx_before = rx_rings.used_idx(&mem);
    for i in 0..4u16 {
        let addr = HIGH + 0x1000 + u64::from(i) * 0x1_1000;
        rx_rings.write_desc(&mem, rx_rings.desc, i, (addr, MAX_PACKET as u32, 2, 0));
        rx_rings.push(&mem, i);
    }
    rx_kick.write(1).unwrap();
    super::wait_until("the worker taking a packet into good RX buffers", || {
        send(&peer, &good[..100]);
        std::thread::sleep(std::time::Duration::from_millis(1));
        rx_rings.used_idx(&mem) != rx_before
    })?;
    super::within("virtio-net worker stop", move || worker.stop())?;
    Ok(())
}

#[test]
fn virtio_net() {
    super::run("virtio_net", case(), one);
}
