//! virtio-blk: requests, well-formed and malformed, through the real device
//! (`Block::activate`: its worker thread, io_uring, a temp-file disk).
//!
//! Checked per case: every chain with a valid head is used exactly once and
//! nothing else is; a chain with a writable status byte gets OK, IOERR or UNSUPP
//! there, and exactly what the spec asks when its buffers do not overlap; used
//! lengths never exceed the writable bytes; no guest byte outside the writable
//! buffers and the used ring changes; the worker then serves a write and a read
//! back correctly, and stops when reset. Every wait is bounded.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::chains::{self, AvailSpec, ChainSpec, DescSpec, Rings, Walked, HIGH, QUEUE_SIZE};
use super::Snapshot;
use crate::rate_limiter::{RateLimit, RateLimiter};
use crate::virtio::block::disk::Disk;
use crate::virtio::block::request::{
    MAX_REQUEST_BYTES, SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use crate::virtio::block::Block;
use crate::virtio::{Activation, ActiveQueue, QueueInterrupt, VirtioDevice};

const DISK_BYTES: u64 = 1 << 20;
const SECTORS: u64 = DISK_BYTES / SECTOR_SIZE;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
/// Descriptor tags: what the test writes at a buffer before the run.
const HEADER: u8 = 1;
const SEGMENT: u8 = 2;

#[derive(Clone, Debug)]
struct Req {
    kind: u32,
    sector: u64,
    /// A discard/write-zeroes segment: sector, sectors, flags.
    segment: (u64, u32, u32),
    chain: ChainSpec,
}

#[derive(Clone, Debug)]
struct Case {
    reqs: Vec<Req>,
    avail: AvailSpec,
    /// The good write-then-read after the fuzzed batch.
    good_sector: u64,
    good_sectors: u32,
    seed: u8,
}

fn kind() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => Just(T_IN),
        3 => Just(T_OUT),
        1 => Just(T_FLUSH),
        1 => Just(T_GET_ID),
        1 => Just(T_DISCARD),
        1 => Just(T_WRITE_ZEROES),
        1 => any::<u32>(),
    ]
}

fn sector() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..SECTORS,
        2 => SECTORS - 16..SECTORS + 16,
        1 => (0u64..16).prop_map(|n| u64::MAX - n),
        1 => any::<u64>(),
    ]
}

fn req() -> impl Strategy<Value = Req> {
    let data_len = prop_oneof![4 => (1u32..=16).prop_map(|n| n * 512), 1 => chains::len()];
    let segment = (sector(), prop_oneof![0u32..64, any::<u32>()], any::<u32>());
    (
        kind(),
        sector(),
        segment,
        prop::collection::vec(data_len, 0..4),
        prop_oneof![2 => Just(vec![]), 3 => prop::collection::vec(chains::mutation(), 1..4)],
        chains::indirect(),
    )
        .prop_map(|(kind, sector, segment, data, mutations, indirect)| {
            let writes_data = matches!(kind, T_IN | T_GET_ID);
            let mut descs = vec![DescSpec::fresh(16, false, false).tagged(HEADER)];
            match kind {
                T_DISCARD | T_WRITE_ZEROES => {
                    descs.push(DescSpec::fresh(16, false, false).tagged(SEGMENT))
                }
                T_GET_ID => descs.push(DescSpec::fresh(20, true, false)),
                T_FLUSH => {}
                _ => descs.extend(data.iter().map(|&l| DescSpec::fresh(l, writes_data, false))),
            }
            descs.push(DescSpec::fresh(1, true, true));
            Req {
                kind,
                sector,
                segment,
                chain: ChainSpec::mutated(descs, &mutations, indirect),
            }
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(req(), 1..10),
        chains::avail(),
        0..SECTORS - 16,
        1u32..=16,
        any::<u8>(),
    )
        .prop_map(|(reqs, avail, good_sector, good_sectors, seed)| Case {
            reqs,
            avail,
            good_sector,
            good_sectors,
            seed,
        })
}

/// What a status byte may read after the device answered.
#[derive(Debug, PartialEq)]
enum Want {
    Exactly(u8),
    /// Discard/write-zeroes: the host filesystem may not support it.
    OkOrUnsupp,
    /// An empty discard: the spec does not say (fallocate calls it EINVAL).
    Any,
}

/// What the spec (virtio 1.2, 5.2.6) asks of the device for `c`, judged from
/// guest memory before the run: where the status goes (if anywhere), what it
/// must read, and the used length.
fn expect(c: &Walked, before: &Snapshot) -> (Option<u64>, Want, u32) {
    let mem_ok = |a: u64, l: u64| before.contains(a, l);
    let read = |a: u64, n: usize| -> Vec<u8> {
        (0..n as u64)
            .map(|i| before.byte(a + i).unwrap_or(0))
            .collect()
    };
    let Some(&(sa, sl, sw)) = c.descs.last() else {
        return (None, Want::Exactly(0), 0);
    };
    let status = u64::from(sl).checked_sub(1).and_then(|l| sa.checked_add(l));
    let Some(status) = status.filter(|&s| sw && mem_ok(s, 1)) else {
        return (None, Want::Exactly(0), 0);
    };
    let err = (Some(status), Want::Exactly(VIRTIO_BLK_S_IOERR), 1);
    let descs = &c.descs[..c.descs.len() - 1];
    let Some((&(ha, hl, hw), data)) = descs.split_first() else {
        return err;
    };
    if hw || hl < 16 || !mem_ok(ha, 16) {
        return err;
    }
    let h = read(ha, 16);
    let kind = u32::from_le_bytes(h[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(h[8..16].try_into().unwrap());
    let known = matches!(
        kind,
        T_IN | T_OUT | T_FLUSH | T_GET_ID | T_DISCARD | T_WRITE_ZEROES
    );
    let device_writes = matches!(kind, T_IN | T_GET_ID);
    if known && data.iter().any(|d| d.2 != device_writes) {
        return err;
    }
    let total: u64 = data.iter().map(|d| u64::from(d.1)).sum();
    if total > MAX_REQUEST_BYTES || data.iter().any(|d| !mem_ok(d.0, u64::from(d.1))) {
        return err;
    }
    let ok = |used| (Some(status), Want::Exactly(VIRTIO_BLK_S_OK), used);
    match kind {
        T_IN | T_OUT => {
            let in_range = sector
                .checked_mul(SECTOR_SIZE)
                .and_then(|o| o.checked_add(total))
                .is_some_and(|end| end <= DISK_BYTES);
            if !total.is_multiple_of(SECTOR_SIZE) || !in_range {
                err
            } else if kind == T_IN {
                ok(total as u32 + 1)
            } else {
                ok(1)
            }
        }
        T_FLUSH => ok(1),
        T_GET_ID => match data.first() {
            Some(d) => ok(d.1.min(20) + 1),
            None => err,
        },
        T_DISCARD | T_WRITE_ZEROES => {
            let Some(&(sa, sl, _)) = data.first().filter(|d| d.1 >= 16) else {
                return err;
            };
            let _ = sl;
            let s = read(sa, 12);
            let seg_sector = u64::from_le_bytes(s[0..8].try_into().unwrap());
            let count = u32::from_le_bytes(s[8..12].try_into().unwrap());
            let end = seg_sector
                .saturating_mul(SECTOR_SIZE)
                .checked_add(u64::from(count) * SECTOR_SIZE);
            if end.is_none_or(|e| e > DISK_BYTES) {
                err
            } else if count == 0 {
                (Some(status), Want::Any, 1)
            } else {
                (Some(status), Want::OkOrUnsupp, 1)
            }
        }
        _ => (Some(status), Want::Exactly(VIRTIO_BLK_S_UNSUPP), 1),
    }
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

/// Writes each request's header, segment and status sentinel where its
/// descriptors point (where that is guest memory).
fn fill(mem: &GuestMemoryMmap, reqs: &[Req], laid: &chains::Laid) {
    for (req, (spec, bufs)) in reqs.iter().zip(&laid.chains) {
        for (d, &(addr, len, _)) in spec.descs.iter().zip(bufs) {
            let mut bytes = Vec::new();
            match d.tag {
                HEADER => {
                    bytes.extend_from_slice(&req.kind.to_le_bytes());
                    bytes.extend_from_slice(&0u32.to_le_bytes());
                    bytes.extend_from_slice(&req.sector.to_le_bytes());
                }
                SEGMENT => {
                    bytes.extend_from_slice(&req.segment.0.to_le_bytes());
                    bytes.extend_from_slice(&req.segment.1.to_le_bytes());
                    bytes.extend_from_slice(&req.segment.2.to_le_bytes());
                }
                _ => {}
            }
            bytes.truncate(len as usize);
            let _ = mem.write_slice(&bytes, GuestAddress(addr));
        }
        // A sentinel where the status byte goes, so an unwritten status shows.
        if let Some(&(addr, len, true)) = bufs.last() {
            if let Some(s) = u64::from(len)
                .checked_sub(1)
                .and_then(|l| addr.checked_add(l))
            {
                let _ = mem.write_obj(0xaau8, GuestAddress(s));
            }
        }
    }
}

/// A driver's view of one queue on a running device.
struct Driver {
    mem: GuestMemoryMmap,
    rings: Rings,
    kick: EventFd,
}

impl Driver {
    /// Submits header/data/status at fixed spots in the second region and
    /// returns (status, used length) once the device used the chain.
    fn request(&self, kind: u32, sector: u64, data: &mut [u8]) -> Result<(u8, u32), TestCaseError> {
        let (hdr, buf, status) = (HIGH, HIGH + 0x1000, HIGH + 0x3000);
        let mem = &self.mem;
        mem.write_obj(kind, GuestAddress(hdr)).unwrap();
        mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
        mem.write_obj(0xaau8, GuestAddress(status)).unwrap();
        let flags = if kind == T_IN { 3 } else { 1 };
        if kind == T_IN {
            mem.write_slice(&vec![0x55; data.len()], GuestAddress(buf))
                .unwrap();
        } else {
            mem.write_slice(data, GuestAddress(buf)).unwrap();
        }
        let table = self.rings.desc;
        self.rings.write_desc(mem, table, 0, (hdr, 16, 1, 1));
        self.rings
            .write_desc(mem, table, 1, (buf, data.len() as u32, flags, 2));
        self.rings.write_desc(mem, table, 2, (status, 1, 2, 0));
        let used = self.rings.used_idx(mem);
        self.rings.push(mem, 0);
        self.kick.write(1).unwrap();
        super::wait_until("a good request completing", || {
            self.rings.used_idx(mem) != used
        })?;
        let (head, len) = self.rings.used_entry(mem, used);
        check(head == 0, || format!("good request used as head {head}"))?;
        if kind == T_IN {
            mem.read_slice(data, GuestAddress(buf)).unwrap();
        }
        Ok((mem.read_obj(GuestAddress(status)).unwrap(), len))
    }
}

/// A running device on `rings`, the device's next avail and used index at
/// `next`; returns it and the eventfd that kicks it.
fn start(
    mem: &GuestMemoryMmap,
    rings: &Rings,
    event_idx: bool,
    disk_path: &DiskPaths,
    next: u16,
) -> (Block, EventFd) {
    use virtio_queue::QueueT;
    let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let kick = notify.try_clone().unwrap();
    let mut queue = rings.queue(mem, event_idx);
    queue.set_next_avail(next);
    queue.set_next_used(next);
    let disk = Disk::open(&disk_path.0, disk_path.1.as_deref(), &[], false, false).unwrap();
    let limiter = Arc::new(Mutex::new(RateLimiter::new(RateLimit::default())));
    let mut block = Block::new(Arc::new(disk), "fuzz-blk", 1, limiter, "fuzz-blk".into());
    block
        .activate(Activation {
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
    (block, kick)
}

/// The disk's file, and its base when it is a qcow2 overlay.
type DiskPaths = (std::path::PathBuf, Option<std::path::PathBuf>);

fn one(case: Case, disk_path: &DiskPaths) -> Result<(), TestCaseError> {
    let mem = chains::memory();
    let rings = Rings::at(0);
    let mut alloc = chains::Alloc::default();
    let specs: Vec<ChainSpec> = case.reqs.iter().map(|r| r.chain.clone()).collect();
    let laid = rings.lay_out(&mem, &mut alloc, &specs, &case.avail);
    fill(&mem, &case.reqs, &laid);
    let walked = chains::walk(&mem, rings.queue(&mem, case.avail.event_idx));
    let before = Snapshot::of(&mem);

    let (mut block, mut kick) = start(&mem, &rings, case.avail.event_idx, disk_path, 0);
    kick.write(1).unwrap();

    // Every chain with a valid head comes back once; with an avail index more
    // than a queue ahead, none may be popped.
    let chains_seen = walked.as_deref().unwrap_or(&[]);
    let valid: Vec<&Walked> = chains_seen.iter().filter(|c| c.head < QUEUE_SIZE).collect();
    let expected = valid.len() as u16;
    let clobbered = chains::clobbers_rings(chains_seen);
    if walked.is_none() || clobbered {
        // An avail index more than a queue ahead, or rings the device was
        // told to overwrite: give the worker time to act on the kick, then
        // reset it; a worker spinning on the broken queue shows as a reset
        // that never returns. A new worker serves the rest.
        std::thread::sleep(std::time::Duration::from_millis(20));
        super::within("virtio-blk reset on a broken queue", move || block.reset())?;
        (block, kick) = start(
            &mem,
            &rings,
            case.avail.event_idx,
            disk_path,
            chains_seen.len() as u16,
        );
    } else {
        super::wait_until("the fuzzed chains being used", || {
            rings.used_idx(&mem) >= expected
        })?;
    }
    // What the next good request's used index follows.
    let used_before_good = if clobbered {
        chains_seen.len() as u16
    } else {
        expected
    };
    let after = Snapshot::of(&mem);
    if clobbered {
        return good_requests(
            case,
            mem,
            rings,
            kick,
            block,
            used_before_good,
            chains_seen.len(),
        );
    }
    check(rings.used_idx(&mem) == expected, || {
        format!(
            "used index {} for {expected} usable chains",
            rings.used_idx(&mem)
        )
    })?;
    let mut used: Vec<(u32, u32)> = (0..expected).map(|i| rings.used_entry(&mem, i)).collect();
    let mut heads: Vec<u32> = used.iter().map(|u| u.0).collect();
    let mut want_heads: Vec<u32> = valid.iter().map(|c| u32::from(c.head)).collect();
    heads.sort_unstable();
    want_heads.sort_unstable();
    check(heads == want_heads, || {
        format!("used heads {heads:?}, available {want_heads:?}")
    })?;

    let mut allowed = chains::writable_ranges(chains_seen);
    allowed.push(rings.used_range());
    if chains::disjoint(chains_seen, &laid.tables) {
        before.only_changed_in(&after, &allowed)?;
        used.sort_unstable();
        for c in &valid {
            let (_, len) = used
                .iter()
                .find(|u| u.0 == u32::from(c.head))
                .copied()
                .unwrap();
            check(u64::from(len) <= c.writable_bytes(), || {
                format!("head {}: used length {len} > writable bytes", c.head)
            })?;
            let (status, want, want_len) = expect(c, &before);
            let Some(at) = status else {
                check(len == 0, || {
                    format!("head {}: no status, used length {len}", c.head)
                })?;
                continue;
            };
            let got = after.byte(at).unwrap();
            // A status byte the guest put inside the rings is overwritten by
            // the device's own used-ring writes: only its used length counts.
            if at < chains::RINGS_END {
                check(len == want_len, || {
                    format!("head {}: status in the rings, used length {len}", c.head)
                })?;
                continue;
            }
            let fine = match want {
                Want::Exactly(s) => got == s,
                Want::OkOrUnsupp => got == VIRTIO_BLK_S_OK || got == VIRTIO_BLK_S_UNSUPP,
                Want::Any => got <= VIRTIO_BLK_S_UNSUPP,
            };
            check(fine && len == want_len, || {
                format!(
                    "head {} {:?}: status {got} used length {len}, want {want:?} and {want_len}",
                    c.head, c.descs
                )
            })?;
        }
    }

    good_requests(
        case,
        mem,
        rings,
        kick,
        block,
        used_before_good,
        chains_seen.len(),
    )
}

/// The worker still serves a good write and reads it back, and stops when
/// reset. The avail and used indexes go back to where the device stopped
/// (`avail`, `used`: a driver recovering).
fn good_requests(
    case: Case,
    mem: GuestMemoryMmap,
    rings: Rings,
    kick: EventFd,
    mut block: Block,
    used: u16,
    avail: usize,
) -> Result<(), TestCaseError> {
    rings.set_avail_idx(&mem, avail as u16);
    // The used index too: a device restarted at `used` counts from there,
    // whatever rings the guest let it overwrite say.
    rings.set_used_idx(&mem, used);
    let driver = Driver {
        mem: mem.clone(),
        rings,
        kick,
    };
    let n = case.good_sectors as usize * SECTOR_SIZE as usize;
    let mut pattern: Vec<u8> = (0..n)
        .map(|i| (i as u8).wrapping_mul(31) ^ case.seed)
        .collect();
    let wrote = driver.request(T_OUT, case.good_sector, &mut pattern)?;
    check(wrote == (VIRTIO_BLK_S_OK, 1), || {
        format!("good write: {wrote:?}")
    })?;
    let mut back = vec![0u8; n];
    let read = driver.request(T_IN, case.good_sector, &mut back)?;
    check(read == (VIRTIO_BLK_S_OK, n as u32 + 1), || {
        format!("good read: {read:?}")
    })?;
    check(back == pattern, || "good read returned other data".into())?;

    let _block = super::within("virtio-blk reset", move || {
        block.reset();
        block
    })?;
    check(driver.rings.used_idx(&mem) == used.wrapping_add(2), || {
        "more chains used than were available".into()
    })?;
    Ok(())
}

#[test]
fn virtio_blk() {
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(DISK_BYTES).unwrap();
    let disk = (file.path().to_owned(), None);
    super::run("virtio_blk", case(), |c| one(c, &disk));
}

/// The same on a qcow2 overlay (hostd's root disks on ext4) over a base
/// half its size: requests mapped to the overlay, the base, past the base,
/// and through the format driver's helpers.
#[test]
fn virtio_blk_on_a_qcow2_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0x5au8; (DISK_BYTES / 2) as usize]).unwrap();
    let overlay = dir.path().join("root.qcow2");
    crate::virtio::block::qcow2::create_overlay(&overlay, "base.raw", DISK_BYTES).unwrap();
    let disk = (overlay, Some(base));
    super::run("virtio_blk", case(), |c| one(c, &disk));
}

/// A discard whose segment descriptor also says INDIRECT, so the device
/// reads the segment (`segment`'s bytes) as an indirect table, after `first`
/// requests; run through [`one`] with `extra_heads` in the avail ring.
fn indirect_segment_case(first: Vec<Req>, segment: (u64, u32, u32), extra_heads: Vec<u16>) {
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(DISK_BYTES).unwrap();
    let mut seg = DescSpec::fresh(16, false, false).tagged(SEGMENT);
    seg.flags = chains::F_INDIRECT;
    let mut reqs = first;
    reqs.push(Req {
        kind: T_DISCARD,
        sector: 0,
        segment,
        chain: ChainSpec {
            descs: vec![
                DescSpec::fresh(16, false, false).tagged(HEADER),
                seg,
                DescSpec::fresh(1, true, true),
            ],
            indirect: None,
        },
    });
    let case = Case {
        reqs,
        avail: AvailSpec {
            extra_heads,
            idx: None,
            event_idx: false,
        },
        good_sector: 0,
        good_sectors: 1,
        seed: 0,
    };
    one(case, &(file.path().to_owned(), None)).unwrap();
}

/// Found by a 46-minute run: the segment, read as an indirect table, names a
/// writable buffer over the avail and used rings; the request's status byte
/// then lands in the first used entry's head. The device did what the guest
/// asked; the target now checks only liveness for rings a guest let the
/// device overwrite.
#[test]
fn a_status_byte_the_guest_placed_over_the_used_ring() {
    // Before it, a read whose header is device-writable (refused).
    let bad_read = Req {
        kind: T_IN,
        sector: 0,
        segment: (0, 0, 0),
        chain: ChainSpec {
            descs: vec![
                DescSpec::fresh(16, true, false).tagged(HEADER),
                DescSpec::fresh(1, true, true),
            ],
            indirect: None,
        },
    };
    indirect_segment_case(vec![bad_read], (526, 63, 1_084_010_058), vec![]);
}

/// Found by the next run, after the fix above: the table names a writable
/// byte at address 0 (the descriptor table), with an invalid head after it.
/// The restarted device counts used entries from where it starts; the
/// recovering driver must too.
#[test]
fn a_status_byte_the_guest_placed_over_the_descriptor_table() {
    indirect_segment_case(vec![], (0, 1, 1_611_542_690), vec![32]);
}
