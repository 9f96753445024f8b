//! virtio-blk: raw images, block devices and qcow2 overlays, served through
//! io_uring.
//!
//! One worker thread per disk serves all of its queues with one ring: requests
//! popped from any queue are submitted in one batch, completions are reaped in
//! batches when the ring's eventfd fires. The ring has a fixed number of slots and
//! a request is only popped when a slot is free, so a full ring is back-pressure,
//! never a failed request. Without io_uring the same worker does synchronous I/O.

pub mod disk;
pub mod qcow2;
pub mod request;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::worker::{wait_readable_fds, Worker};
use super::{ActivateError, Activation, ActiveQueue, VirtioDevice};
use crate::devices::lock;
use crate::rate_limiter::SharedRateLimiter;
use disk::{preadv_pwritev, Disk, Target};
use request::{
    Rejected, Request, RequestType, SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
};

const VIRTIO_ID_BLOCK: u32 = 2;
const QUEUE_SIZE: u16 = 256;
const RING_ENTRIES: u32 = 128;
/// Alignment of the worker's own buffers, for O_DIRECT.
const DIRECT_ALIGN: usize = 4096;
const SERIAL_LEN: usize = 20;
/// The worker runs below the vCPUs' priority. Where it shares a CPU with the vCPU
/// that feeds it, a worker at equal priority preempts the vCPU on every kick and
/// sees one request at a time; yielding lets the guest queue a batch first. In
/// the one-CPU testbed this took 4 KiB random reads at QD32 from ~680 to ~7900
/// IOPS (QD1: ~650 -> ~600). A worker with a core of its own is unaffected.
const WORKER_NICE: libc::c_int = 10;

/// How long moving a running disk to new files may wait for the requests
/// the kernel holds: a local file's finish in milliseconds.
const REPLACE_TIMEOUT: Duration = Duration::from_secs(20);

const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

#[derive(Debug, thiserror::Error)]
pub enum ReplaceDiskError {
    #[error("not a disk")]
    NotADisk,
    #[error("the new files are {}, the disk is not: a disk keeps its read-only flag", if *.0 { "read-only" } else { "writable" })]
    ReadOnly(bool),
    #[error("the new files hold {new} bytes, fewer than the disk's {old}")]
    Smaller { old: u64, new: u64 },
    #[error(
        "the requests in flight did not finish within {0:?}; the disk moves to the new files once they do"
    )]
    Busy(Duration),
    #[error("the disk's worker has stopped")]
    Stopped,
    #[error("the old files could not be flushed, so the disk stays on them: {0}")]
    Flush(String),
}

pub struct Block {
    disk: Arc<Disk>,
    limiter: SharedRateLimiter,
    serial: [u8; SERIAL_LEN],
    queue_sizes: Vec<u16>,
    config: [u8; 60],
    worker: Option<Worker>,
    /// How new files reach the running worker (see [`Block::replace_disk`]).
    replacing: Option<ReplaceLink>,
    name: String,
}

/// The device's end of the path to its worker for new files.
struct ReplaceLink {
    disks: mpsc::Sender<Arc<Disk>>,
    wake: EventFd,
    done: mpsc::Receiver<Result<(), String>>,
}

/// The worker's end.
struct ReplaceInbox {
    disks: mpsc::Receiver<Arc<Disk>>,
    wake: EventFd,
    done: mpsc::SyncSender<Result<(), String>>,
}

impl Block {
    pub fn new(
        disk: Arc<Disk>,
        serial: &str,
        queues: u16,
        limiter: SharedRateLimiter,
        name: String,
    ) -> Self {
        let mut id = [0u8; SERIAL_LEN];
        let n = serial.len().min(SERIAL_LEN);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        let queues = queues.max(1);
        let mut config = [0u8; 60];
        config[0..8].copy_from_slice(&disk.sectors().to_le_bytes());
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes()); // seg_max
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
        config[34..36].copy_from_slice(&queues.to_le_bytes());
        // Discard and write-zeroes: one segment per request, any length, 4 KiB aligned.
        config[36..40].copy_from_slice(&(u32::MAX >> 9).to_le_bytes());
        config[40..44].copy_from_slice(&1u32.to_le_bytes());
        config[44..48].copy_from_slice(&8u32.to_le_bytes());
        config[48..52].copy_from_slice(&(u32::MAX >> 9).to_le_bytes());
        config[52..56].copy_from_slice(&1u32.to_le_bytes());
        Block {
            disk,
            limiter,
            serial: id,
            queue_sizes: vec![QUEUE_SIZE; usize::from(queues)],
            config,
            worker: None,
            replacing: None,
            name,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn pci_class(&self) -> (u8, u8) {
        (0x01, 0x00)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        // EVENT_IDX lets both sides suppress kicks and interrupts while the other
        // is still busy: fewer exits per request as the queue deepens.
        let mut f = VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH
            | super::VIRTIO_RING_F_EVENT_IDX;
        if self.queue_sizes.len() > 1 {
            f |= VIRTIO_BLK_F_MQ;
        }
        if self.disk.read_only {
            f |= VIRTIO_BLK_F_RO;
        } else if self.disk.takes_discard() {
            f |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // The capacity as it is now: the disk may have grown since (the
        // transport tells the driver to look again).
        let mut config = self.config;
        config[0..8].copy_from_slice(&self.disk.sectors().to_le_bytes());
        super::read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let (link, inbox) = replace_channel().map_err(ActivateError::Worker)?;
        let worker = BlockWorker::new(
            self.disk.clone(),
            self.serial,
            self.limiter.clone(),
            activation,
            inbox,
        )
        .map_err(ActivateError::Worker)?;
        self.replacing = Some(link);
        self.worker = Some(
            Worker::spawn(&self.name, crate::seccomp::ThreadKind::Block, move |stop| {
                worker.run(stop)
            })
            .map_err(ActivateError::Worker)?,
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        self.replacing = None;
    }

    /// Moves the disk to new files while the guest runs (a live snapshot
    /// froze the old ones under an overlay): the worker finishes what the
    /// kernel holds on the old files, then takes every later request from
    /// the new ones. The guest notices nothing; a disk that grew is for the
    /// caller to announce. Returns whether it grew.
    fn replace_disk(&mut self, disk: Arc<Disk>) -> Result<bool, ReplaceDiskError> {
        if disk.read_only != self.disk.read_only {
            return Err(ReplaceDiskError::ReadOnly(disk.read_only));
        }
        let (old, new) = (self.disk.capacity(), disk.capacity());
        if new < old {
            return Err(ReplaceDiskError::Smaller { old, new });
        }
        if let Some(link) = &self.replacing {
            // Drop an answer a timed-out call left behind.
            while link.done.try_recv().is_ok() {}
            if link.disks.send(disk.clone()).is_err() || link.wake.write(1).is_err() {
                return Err(ReplaceDiskError::Stopped);
            }
            link.done
                .recv_timeout(REPLACE_TIMEOUT)
                .map_err(|_| ReplaceDiskError::Busy(REPLACE_TIMEOUT))?
                .map_err(ReplaceDiskError::Flush)?;
        }
        self.disk = disk;
        Ok(new > old)
    }
}

fn replace_channel() -> std::io::Result<(ReplaceLink, ReplaceInbox)> {
    let (disks_tx, disks_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let wake = EventFd::new(libc::EFD_NONBLOCK)?;
    Ok((
        ReplaceLink {
            disks: disks_tx,
            wake: wake.try_clone()?,
            done: done_rx,
        },
        ReplaceInbox {
            disks: disks_rx,
            wake,
            done: done_tx,
        },
    ))
}

/// A request handed to the kernel; its iovecs must live until it completes.
struct Pending {
    queue: usize,
    head: u16,
    status: GuestAddress,
    used_len: u32,
    /// Bytes a read or write must move; None for a flush.
    expected: Option<u64>,
    write: bool,
    /// In the target's file (an overlay's guest offset for Target::Overlay).
    offset: u64,
    target: Target,
    iovecs: Vec<libc::iovec>,
    /// What this is one part of, if anything.
    part_of: Option<PartOf>,
}

/// What a request handed to the kernel is a part of, by number.
#[derive(Clone, Copy, Debug)]
enum PartOf {
    /// A guest's read served in parts ([`Parts`]).
    Read(u64),
    /// The read under a first write's clusters ([`CopyUp`]).
    CopyUp(u64),
}

/// The largest span of clusters a first write copies up itself (larger
/// ones go through the format driver).
const MAX_COPY_UP: u64 = 256 << 10;

/// A first write into part of clusters the overlay does not hold yet:
/// what lies under the clusters is read into `buf` (each part from its
/// file, all in flight together), the guest's data laid over it, and the
/// clusters written whole, so the format driver copies nothing up. While
/// it runs, other writes to its clusters wait ([`BlockWorker::busy`]).
struct CopyUp {
    queue: usize,
    head: u16,
    status: GuestAddress,
    /// The guest's buffers, and the write's offset on the disk.
    data: Vec<(GuestAddress, u32)>,
    offset: u64,
    /// The clusters' span on the disk: from `start`, `len` bytes, read
    /// into `buf[align..align + len]` (aligned for O_DIRECT).
    start: u64,
    len: u64,
    buf: Vec<u8>,
    align: usize,
    reads: Countdown,
}

/// The parts of a request still to complete, and whether all went well.
struct Countdown {
    left: usize,
    ok: bool,
}

impl Countdown {
    fn of(parts: usize) -> Self {
        Countdown {
            left: parts,
            ok: true,
        }
    }

    /// One part done; true when it was the last.
    fn done(&mut self, ok: bool) -> bool {
        self.ok &= ok;
        self.left = self.left.saturating_sub(1);
        self.left == 0
    }
}

impl Pending {
    /// A read of `iovecs` from `target` at `offset`, one part of `part_of`.
    fn part_read(
        req: &Request,
        queue: usize,
        (target, offset): (Target, u64),
        iovecs: Vec<libc::iovec>,
        part_of: PartOf,
    ) -> Self {
        Pending {
            queue,
            head: req.head,
            status: req.status,
            used_len: 0,
            expected: Some(iovecs.iter().map(|v| v.iov_len as u64).sum()),
            write: false,
            offset,
            target,
            iovecs,
            part_of: Some(part_of),
        }
    }
}

/// A guest's read served in parts, one per file its bytes lie in: it
/// completes when the last part does.
struct Parts {
    queue: usize,
    head: u16,
    status: GuestAddress,
    used_len: u32,
    reads: Countdown,
}

// SAFETY: the iovecs point into guest memory, which the worker owns a handle to
// and which outlives every pending request (the worker drains them before exit).
unsafe impl Send for Pending {}

struct BlockWorker {
    disk: Arc<Disk>,
    limiter: SharedRateLimiter,
    /// Armed while the rate limiter holds requests back.
    timer: TimerFd,
    throttled: bool,
    serial: [u8; SERIAL_LEN],
    memory: GuestMemoryMmap,
    queues: Vec<ActiveQueue>,
    ring: Option<IoUring>,
    ring_event: EventFd,
    slots: Vec<Option<Pending>>,
    free: Vec<usize>,
    interrupt_due: Vec<bool>,
    replacing: ReplaceInbox,
    /// Reads served in parts, by number.
    parted: BTreeMap<u64, Parts>,
    /// First writes copying up their clusters, by number.
    copy_ups: BTreeMap<u64, CopyUp>,
    /// The number of the next read in parts or copy-up.
    next_part_of: u64,
    /// Clusters (by index) a copy-up is filling: writes to them wait.
    busy: BTreeSet<u64>,
    /// Requests waiting for a copy-up, in the order they came.
    deferred: VecDeque<(usize, Request)>,
}

impl BlockWorker {
    fn new(
        disk: Arc<Disk>,
        serial: [u8; SERIAL_LEN],
        limiter: SharedRateLimiter,
        a: Activation,
        replacing: ReplaceInbox,
    ) -> std::io::Result<Self> {
        let ring_event = EventFd::new(libc::EFD_NONBLOCK)?;
        let ring = match IoUring::new(RING_ENTRIES) {
            Ok(ring) => match ring
                .submitter()
                .register_eventfd(std::os::fd::AsRawFd::as_raw_fd(&ring_event))
            {
                Ok(()) => Some(ring),
                Err(e) => {
                    tracing::warn!(
                        "io_uring eventfd registration failed ({e}); using synchronous I/O"
                    );
                    None
                }
            },
            Err(e) => {
                tracing::warn!("io_uring unavailable ({e}); using synchronous I/O");
                None
            }
        };
        let n = a.queues.len();
        Ok(BlockWorker {
            disk,
            limiter,
            timer: TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?,
            throttled: false,
            serial,
            memory: a.memory,
            queues: a.queues,
            ring,
            ring_event,
            slots: (0..RING_ENTRIES).map(|_| None).collect(),
            free: (0..RING_ENTRIES as usize).rev().collect(),
            interrupt_due: vec![false; n],
            replacing,
            parted: BTreeMap::new(),
            copy_ups: BTreeMap::new(),
            next_part_of: 0,
            busy: BTreeSet::new(),
            deferred: VecDeque::new(),
        })
    }

    fn run(mut self, stop: EventFd) {
        // SAFETY: gettid and setpriority take plain integers; raising our own
        // thread's nice value needs no privilege, and failure is harmless.
        unsafe {
            let tid = libc::gettid() as libc::id_t;
            if libc::setpriority(libc::PRIO_PROCESS, tid, WORKER_NICE) != 0 {
                tracing::debug!(
                    "virtio-blk worker priority unchanged: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        loop {
            let ready = {
                let mut fds = vec![
                    stop.as_raw_fd(),
                    self.ring_event.as_raw_fd(),
                    self.timer.as_raw_fd(),
                    self.replacing.wake.as_raw_fd(),
                ];
                fds.extend(self.queues.iter().map(|q| q.notify.as_raw_fd()));
                match wait_readable_fds(&fds) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("virtio-blk worker: {e}");
                        break;
                    }
                }
            };
            if ready.contains(&0) {
                break;
            }
            let _ = self.ring_event.read();
            if ready.contains(&2) {
                let _ = self.timer.wait();
                self.throttled = false;
            }
            for q in &self.queues {
                let _ = q.notify.read();
            }
            self.reap();
            if ready.contains(&3) {
                let _ = self.replacing.wake.read();
                self.take_new_disks();
            }
            self.resume_deferred();
            for qi in 0..self.queues.len() {
                if !self.throttled {
                    self.process_queue(qi);
                }
            }
            self.resume_deferred();
            if let Some(ring) = &self.ring {
                if let Err(e) = ring.submit() {
                    crate::rate_limited_warn!("io_uring submit: {e}");
                }
            }
            self.signal();
        }
        self.drain();
    }

    /// Moves to the disk the device sent: every request on the old files
    /// finishes first, and an overlay's metadata reaches its file, where
    /// the new files' overlay reads it through.
    fn take_new_disks(&mut self) {
        while let Ok(disk) = self.replacing.disks.try_recv() {
            self.drain();
            // Without its metadata in the file, the old overlay would read
            // back wrong through the new one: stay on it rather.
            let moved = match self.disk.flush() {
                Ok(()) => {
                    self.disk = disk;
                    Ok(())
                }
                Err(e) => {
                    tracing::error!("virtio-blk: flushing the old files before a move: {e}");
                    Err(e.to_string())
                }
            };
            let _ = self.replacing.done.try_send(moved);
        }
    }

    /// Waits for every request the kernel still holds: their buffers are guest
    /// memory, which must not go away under them.
    fn drain(&mut self) {
        while self.slots.iter().any(Option::is_some) {
            let Some(ring) = &self.ring else { break };
            if ring.submit_and_wait(1).is_err() {
                break;
            }
            self.reap();
        }
        self.signal();
    }

    fn process_queue(&mut self, qi: usize) {
        loop {
            if self.ring.is_some() && self.free.is_empty() {
                return; // back-pressure: resumed when completions free a slot
            }
            let chain = match super::pop_chain(&mut self.queues[qi].queue, &self.memory) {
                Ok(Some(chain)) => chain,
                // Ask for a kick on the next request; if one slipped in meanwhile,
                // serve it now rather than wait for a kick that will not come.
                Ok(None) => match self.queues[qi].queue.enable_notification(&self.memory) {
                    Ok(true) => continue,
                    Ok(false) => return,
                    Err(e) => {
                        crate::rate_limited_warn!("virtio-blk: queue {qi}: {e:?}");
                        return;
                    }
                },
                // A broken avail ring: nothing to serve until the driver mends it.
                Err(e) => {
                    crate::rate_limited_warn!("virtio-blk: queue {qi}: {e:?}");
                    return;
                }
            };
            match request::parse(chain, &self.memory) {
                Ok(req) => {
                    if let Err(wait) = self.admit(&req) {
                        // Over the limit: leave the request on the ring for later.
                        self.queues[qi].queue.go_to_previous_position();
                        self.throttle(wait);
                        return;
                    }
                    self.start(qi, req)
                }
                Err(Rejected {
                    head,
                    status,
                    error,
                }) => {
                    crate::rate_limited_warn!("virtio-blk: bad request from the guest: {error}");
                    match status {
                        Some(s) => self.complete(qi, head, s, VIRTIO_BLK_S_IOERR, 1),
                        None => self.add_used(qi, head, 0),
                    }
                }
            }
        }
    }

    /// Charges the request to the rate limiter.
    fn admit(&self, req: &Request) -> Result<(), Duration> {
        let (bytes, ops) = match req.kind {
            RequestType::In | RequestType::Out => (req.data_len(), 1),
            RequestType::Discard | RequestType::WriteZeroes => (0, 1),
            _ => return Ok(()),
        };
        lock(&self.limiter).consume(bytes, ops, Instant::now())
    }

    fn throttle(&mut self, wait: Duration) {
        self.throttled = true;
        if let Err(e) = self.timer.reset(wait.max(Duration::from_micros(100)), None) {
            tracing::error!("virtio-blk rate-limit timer: {e}");
            self.throttled = false;
        }
    }

    fn start(&mut self, qi: usize, req: Request) {
        if self.waits_for_copy_up(&req) {
            self.deferred.push_back((qi, req));
            return;
        }
        let fail = |w: &mut Self, s| w.complete(qi, req.head, req.status, s, 1);
        match req.kind {
            RequestType::In | RequestType::Out => {
                let write = req.kind == RequestType::Out;
                if write && self.disk.read_only {
                    return fail(self, VIRTIO_BLK_S_IOERR);
                }
                let len = req.data_len();
                let offset = req.sector.checked_mul(SECTOR_SIZE);
                let in_range = offset
                    .and_then(|o| o.checked_add(len))
                    .is_some_and(|end| end <= self.disk.capacity());
                if !len.is_multiple_of(SECTOR_SIZE) || !in_range {
                    return fail(self, VIRTIO_BLK_S_IOERR);
                }
                let Some(iovecs) = self.iovecs(&req.data) else {
                    return fail(self, VIRTIO_BLK_S_IOERR);
                };
                let offset = offset.unwrap_or(0);
                let (target, at) = match self.disk.place(offset, len, write) {
                    Ok(placed) => placed,
                    Err(e) => {
                        crate::rate_limited_warn!("virtio-blk: mapping a request: {e}");
                        return fail(self, VIRTIO_BLK_S_IOERR);
                    }
                };
                if write && target == Target::Overlay {
                    match self.copy_up_parts(offset, len) {
                        Ok(Some((start, parts))) => {
                            return self.start_copy_up(qi, req, offset, start, parts)
                        }
                        Ok(None) => {}
                        Err(e) => {
                            crate::rate_limited_warn!("virtio-blk: mapping a request: {e}");
                            return fail(self, VIRTIO_BLK_S_IOERR);
                        }
                    }
                }
                if !write && target == Target::Overlay {
                    match self.disk.read_pieces(offset, len) {
                        Ok(Some(parts)) => return self.start_parts(qi, &req, &iovecs, parts),
                        Ok(None) => {}
                        Err(e) => {
                            crate::rate_limited_warn!("virtio-blk: mapping a request: {e}");
                            return fail(self, VIRTIO_BLK_S_IOERR);
                        }
                    }
                }
                let pending = Pending {
                    queue: qi,
                    head: req.head,
                    status: req.status,
                    used_len: if write { 1 } else { len as u32 + 1 },
                    expected: Some(len),
                    write,
                    offset: at,
                    target,
                    iovecs,
                    part_of: None,
                };
                self.submit_or_run(pending);
            }
            RequestType::Flush => {
                let pending = Pending {
                    queue: qi,
                    head: req.head,
                    status: req.status,
                    used_len: 1,
                    expected: None,
                    write: true,
                    offset: 0,
                    target: if self.disk.is_overlay() {
                        Target::Overlay
                    } else {
                        Target::Own
                    },
                    iovecs: Vec::new(),
                    part_of: None,
                };
                self.submit_or_run(pending);
            }
            RequestType::GetId => {
                let Some(&(addr, len)) = req.data.first() else {
                    return fail(self, VIRTIO_BLK_S_IOERR);
                };
                let n = SERIAL_LEN.min(len as usize);
                match self.memory.write_slice(&self.serial[..n], addr) {
                    Ok(()) => {
                        self.complete(qi, req.head, req.status, VIRTIO_BLK_S_OK, n as u32 + 1)
                    }
                    Err(_) => fail(self, VIRTIO_BLK_S_IOERR),
                }
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                let status = self.discard_or_zero(&req);
                fail(self, status);
            }
            RequestType::Unsupported(_) => fail(self, VIRTIO_BLK_S_UNSUPP),
        }
    }

    /// A read whose bytes lie in several files (an overlay's clusters, its
    /// layers', its base's) is read from each at once, a request to the
    /// kernel per part, as a raw disk's reads are, rather than part after
    /// part through the format driver with every other request waiting.
    fn start_parts(
        &mut self,
        qi: usize,
        req: &Request,
        iovecs: &[libc::iovec],
        parts: Vec<disk::ReadPart>,
    ) {
        if parts.is_empty() {
            // Nothing to read (a read of no bytes).
            return self.complete(qi, req.head, req.status, VIRTIO_BLK_S_OK, 1);
        }
        let id = self.next_part_of;
        self.next_part_of += 1;
        self.parted.insert(
            id,
            Parts {
                queue: qi,
                head: req.head,
                status: req.status,
                used_len: req.data_len() as u32 + 1,
                reads: Countdown::of(parts.len()),
            },
        );
        for part in parts {
            match part.at {
                None => {
                    let ok = zero_fill(&self.memory, &req.data, part.skip, part.len);
                    self.part_done(id, ok);
                }
                Some(at) => self.submit_or_run(Pending::part_read(
                    req,
                    qi,
                    at,
                    disk::sub_iovecs(iovecs, part.skip, part.len),
                    PartOf::Read(id),
                )),
            }
        }
    }

    /// One part of a read done; the read completes with its last part.
    fn part_done(&mut self, id: u64, ok: bool) {
        let Some(parts) = self.parted.get_mut(&id) else {
            return;
        };
        if !parts.reads.done(ok) {
            return;
        }
        if let Some(p) = self.parted.remove(&id) {
            let status = if p.reads.ok {
                VIRTIO_BLK_S_OK
            } else {
                VIRTIO_BLK_S_IOERR
            };
            self.complete(p.queue, p.head, p.status, status, p.used_len);
        }
    }

    /// Whether `req` must wait for a copy-up: a write to a cluster one is
    /// filling (its data would be lost under the copy-up's), or a discard
    /// or write-zeroes while any runs.
    fn waits_for_copy_up(&self, req: &Request) -> bool {
        let Some(cluster) = self.disk.cluster_size().filter(|_| !self.busy.is_empty()) else {
            return false;
        };
        match req.kind {
            RequestType::Out => {
                let (offset, len) = (req.sector.saturating_mul(SECTOR_SIZE), req.data_len());
                let last = offset.saturating_add(len.max(1) - 1) / cluster;
                self.busy.range(offset / cluster..=last).next().is_some()
            }
            RequestType::Discard | RequestType::WriteZeroes => true,
            _ => false,
        }
    }

    /// For a first write into part of clusters the overlay does not hold
    /// (none of them), not too many: the span's start and where what lies
    /// under it is. None for any other write (whole clusters are written
    /// in place without a copy-up; the format driver serves the rest).
    fn copy_up_parts(
        &self,
        offset: u64,
        len: u64,
    ) -> std::io::Result<Option<(u64, Vec<disk::ReadPart>)>> {
        let Some(cluster) = self.disk.cluster_size() else {
            return Ok(None);
        };
        let end = offset + len;
        if len == 0 || (offset.is_multiple_of(cluster) && end.is_multiple_of(cluster)) {
            return Ok(None);
        }
        let start = offset / cluster * cluster;
        let span_end = end.next_multiple_of(cluster).min(self.disk.capacity());
        if span_end - start > MAX_COPY_UP {
            return Ok(None);
        }
        let Some(parts) = self.disk.read_pieces(start, span_end - start)? else {
            return Ok(None);
        };
        if parts.iter().any(|p| matches!(p.at, Some((Target::Own, _)))) {
            return Ok(None);
        }
        Ok(Some((start, parts)))
    }

    /// Starts a first write's copy-up (see [`CopyUp`]): its clusters busy,
    /// what lies under them read into a buffer of the worker's.
    fn start_copy_up(
        &mut self,
        qi: usize,
        mut req: Request,
        offset: u64,
        start: u64,
        parts: Vec<disk::ReadPart>,
    ) {
        let id = self.next_part_of;
        self.next_part_of += 1;
        let len: u64 = parts.iter().map(|p| p.len).sum();
        // Zeros where nothing lies under it.
        let mut buf = vec![0u8; len as usize + DIRECT_ALIGN];
        let align = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let into = buf.as_mut_ptr().wrapping_add(align);
        self.busy.extend(self.clusters_of(start, len));
        let reads: Vec<_> = parts
            .iter()
            .filter_map(|p| p.at.map(|at| (p.skip, p.len, at)))
            .collect();
        self.copy_ups.insert(
            id,
            CopyUp {
                queue: qi,
                head: req.head,
                status: req.status,
                data: std::mem::take(&mut req.data),
                offset,
                start,
                len,
                buf,
                align,
                reads: Countdown::of(reads.len()),
            },
        );
        if reads.is_empty() {
            return self.copy_up_done(id);
        }
        for (skip, n, (target, at)) in reads {
            // The buffer's heap storage stays where it is, in `copy_ups`,
            // until the last read of it completes.
            let iovec = libc::iovec {
                iov_base: into.wrapping_add(skip as usize).cast(),
                iov_len: n as usize,
            };
            self.submit_or_run(Pending::part_read(
                &req,
                qi,
                (target, at),
                vec![iovec],
                PartOf::CopyUp(id),
            ));
        }
    }

    /// The indexes of the clusters `[start, start + len)` of the disk
    /// touches; none on a disk without clusters.
    fn clusters_of(&self, start: u64, len: u64) -> std::ops::Range<u64> {
        match self.disk.cluster_size() {
            Some(cluster) => start / cluster..(start + len).div_ceil(cluster),
            None => 0..0,
        }
    }

    /// One read under a copy-up done; with the last, the write goes on.
    fn copy_up_part_done(&mut self, id: u64, ok: bool) {
        let Some(c) = self.copy_ups.get_mut(&id) else {
            return;
        };
        if c.reads.done(ok) {
            self.copy_up_done(id);
        }
    }

    /// What lies under the clusters is read: the guest's data laid over
    /// it, the clusters written whole, the write completed, and what
    /// waited for the clusters started.
    fn copy_up_done(&mut self, id: u64) {
        let Some(mut c) = self.copy_ups.remove(&id) else {
            return;
        };
        let span = &mut c.buf[c.align..c.align + c.len as usize];
        let mut ok = c.reads.ok;
        let mut at = (c.offset - c.start) as usize;
        for &(addr, n) in &c.data {
            let n = n as usize;
            // The write lies within its span.
            if ok && self.memory.read_slice(&mut span[at..at + n], addr).is_err() {
                ok = false;
            }
            at += n;
        }
        if ok {
            if let Err(e) = self.disk.write_whole_clusters(c.start, span) {
                crate::rate_limited_warn!("virtio-blk: a first write: {e}");
                ok = false;
            }
        }
        for i in self.clusters_of(c.start, c.len) {
            self.busy.remove(&i);
        }
        let status = if ok {
            VIRTIO_BLK_S_OK
        } else {
            VIRTIO_BLK_S_IOERR
        };
        self.complete(c.queue, c.head, c.status, status, 1);
    }

    /// Starts again the requests that waited for copy-ups, once theirs
    /// are done; until none can go on. Only ever from the worker's loop,
    /// never while completions are being reaped: a restarted discard
    /// drains the worker, which must not wait for a completion that a
    /// reap in progress has already taken off the ring.
    fn resume_deferred(&mut self) {
        while !self.deferred.is_empty() {
            let waiting = std::mem::take(&mut self.deferred);
            let n = waiting.len();
            for (qi, req) in waiting {
                self.start(qi, req);
            }
            // All waiting still: their copy-ups' reads are in flight.
            if self.deferred.len() >= n {
                return;
            }
        }
    }

    /// A request (or a part of one) is done.
    fn finish(&mut self, p: &Pending, ok: bool) {
        match p.part_of {
            Some(PartOf::Read(id)) => self.part_done(id, ok),
            Some(PartOf::CopyUp(id)) => self.copy_up_part_done(id, ok),
            None => {
                let status = if ok {
                    VIRTIO_BLK_S_OK
                } else {
                    VIRTIO_BLK_S_IOERR
                };
                self.complete(p.queue, p.head, p.status, status, p.used_len);
            }
        }
    }

    fn discard_or_zero(&mut self, req: &Request) -> u8 {
        // A malformed request is an error whether or not the disk could
        // serve a good one (read-only disks and overlays cannot).
        let Some(&(addr, len)) = req.data.first() else {
            return VIRTIO_BLK_S_IOERR;
        };
        // One 16-byte segment: sector, number of sectors, flags.
        if len < 16 {
            return VIRTIO_BLK_S_IOERR;
        }
        let (Ok(sector), Ok(count)) = (
            self.memory.read_obj::<u64>(addr),
            self.memory
                .read_obj::<u32>(GuestAddress(addr.0.wrapping_add(8))),
        ) else {
            return VIRTIO_BLK_S_IOERR;
        };
        let (offset, bytes) = (
            sector.saturating_mul(SECTOR_SIZE),
            u64::from(count) * SECTOR_SIZE,
        );
        if offset
            .checked_add(bytes)
            .is_none_or(|end| end > self.disk.capacity())
        {
            return VIRTIO_BLK_S_IOERR;
        }
        if !self.disk.takes_discard() {
            return VIRTIO_BLK_S_UNSUPP;
        }
        let done = if req.kind == RequestType::WriteZeroes {
            self.disk.write_zeroes(offset, bytes)
        } else {
            // An overlay frees the range's clusters for later writes: the
            // requests the kernel holds, placed before, finish first.
            if self.disk.is_overlay() {
                self.drain();
            }
            // SAFETY: nothing runs on the disk: drained just now, and this
            // worker (the disk's only one) starts nothing until it returns;
            // every later request is placed anew.
            unsafe { self.disk.discard(offset, bytes) }
        };
        match done {
            Ok(()) => VIRTIO_BLK_S_OK,
            Err(e)
                if e.raw_os_error() == Some(libc::EOPNOTSUPP)
                    || e.kind() == std::io::ErrorKind::Unsupported =>
            {
                VIRTIO_BLK_S_UNSUPP
            }
            Err(e) => {
                crate::rate_limited_warn!("virtio-blk: discard or write-zeroes: {e}");
                VIRTIO_BLK_S_IOERR
            }
        }
    }

    /// Host addresses of the request's buffers (each within one memory region).
    fn iovecs(&self, data: &[(GuestAddress, u32)]) -> Option<Vec<libc::iovec>> {
        data.iter()
            .filter(|(_, len)| *len > 0)
            .map(|&(addr, len)| {
                let slice = self.memory.get_slice(addr, len as usize).ok()?;
                Some(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: len as usize,
                })
            })
            .collect()
    }

    fn direct_alignment_ok(&self, p: &Pending) -> bool {
        p.offset.is_multiple_of(SECTOR_SIZE) && disk::direct_aligned(&p.iovecs)
    }

    fn submit_or_run(&mut self, p: Pending) {
        let fd = if self.disk.direct && !self.direct_alignment_ok(&p) {
            None // O_DIRECT would refuse it: go through the page cache, synchronously
        } else {
            self.disk.fd_for(p.target, false)
        };
        let (Some(ring), Some(fd), Some(slot)) =
            (self.ring.as_mut(), fd, self.free.last().copied())
        else {
            return self.run_sync(p);
        };
        let entry = match p.expected {
            None => opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Some(_) if p.write => {
                opcode::Writev::new(types::Fd(fd), p.iovecs.as_ptr(), p.iovecs.len() as u32)
                    .offset(p.offset)
                    .build()
            }
            Some(_) => opcode::Readv::new(types::Fd(fd), p.iovecs.as_ptr(), p.iovecs.len() as u32)
                .offset(p.offset)
                .build(),
        }
        .user_data(slot as u64);
        // SAFETY: the iovecs and the buffers they point at stay valid until the
        // completion is reaped: the Pending (owning the iovec array, whose heap
        // storage does not move) is stored in its slot below, and the worker never
        // exits with requests in flight.
        let pushed = unsafe { ring.submission().push(&entry) };
        if pushed.is_err() {
            return self.run_sync(p);
        }
        self.free.pop();
        self.slots[slot] = Some(p);
    }

    fn run_sync(&mut self, p: Pending) {
        let result = match (p.expected, self.disk.fd_for(p.target, true)) {
            (None, _) => self.disk.flush(),
            (Some(_), None) => self.disk.overlay_io(p.write, &p.iovecs, p.offset),
            (Some(len), Some(fd)) => {
                preadv_pwritev(fd, p.write, &p.iovecs, p.offset).and_then(|n| {
                    if n as u64 == len {
                        Ok(())
                    } else {
                        Err(std::io::Error::other(format!("{n} of {len} bytes")))
                    }
                })
            }
        };
        let ok = match result {
            Ok(()) => true,
            Err(e) => {
                crate::rate_limited_warn!("virtio-blk: I/O failed: {e}");
                false
            }
        };
        self.finish(&p, ok);
    }

    fn reap(&mut self) {
        let mut done = Vec::new();
        if let Some(ring) = self.ring.as_mut() {
            for cqe in ring.completion() {
                done.push((cqe.user_data() as usize, cqe.result()));
            }
        }
        for (slot, result) in done {
            let Some(p) = self.slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.free.push(slot);
            let ok = match p.expected {
                None => result >= 0,
                Some(len) => result >= 0 && result as u64 == len,
            };
            if !ok && result == -libc::EINVAL && self.disk.direct && p.expected.is_some() {
                // O_DIRECT refused this buffer layout; the page cache will not.
                self.run_sync(p);
                continue;
            }
            self.finish(&p, ok);
        }
    }

    fn complete(&mut self, qi: usize, head: u16, status: GuestAddress, value: u8, used_len: u32) {
        let used_len = if self.memory.write_obj(value, status).is_ok() {
            used_len
        } else {
            0
        };
        self.add_used(qi, head, used_len);
    }

    fn add_used(&mut self, qi: usize, head: u16, len: u32) {
        if let Err(e) = self.queues[qi].queue.add_used(&self.memory, head, len) {
            crate::rate_limited_warn!("virtio-blk: completing a request: {e:?}");
        }
        self.interrupt_due[qi] = true;
    }

    fn signal(&mut self) {
        for (qi, due) in self.interrupt_due.iter_mut().enumerate() {
            if std::mem::take(due) {
                let q = &mut self.queues[qi];
                if q.queue.needs_notification(&self.memory).unwrap_or(true) {
                    q.interrupt.trigger();
                }
            }
        }
    }
}

/// Writes zeros over bytes `[skip, skip + len)` of a request's buffers;
/// false if they are not all guest memory.
fn zero_fill(memory: &GuestMemoryMmap, data: &[(GuestAddress, u32)], skip: u64, len: u64) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    let (mut skip, mut left) = (skip, len);
    for &(addr, n) in data {
        let n = u64::from(n);
        if skip >= n {
            skip -= n;
            continue;
        }
        let mut at = skip;
        let end = n.min(skip + left);
        skip = 0;
        while at < end {
            let chunk = (end - at).min(ZEROS.len() as u64);
            let Some(to) = addr.0.checked_add(at) else {
                return false;
            };
            // chunk <= 4096.
            if memory
                .write_slice(&ZEROS[..chunk as usize], GuestAddress(to))
                .is_err()
            {
                return false;
            }
            left -= chunk;
            at += chunk;
        }
        if left == 0 {
            break;
        }
    }
    left == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::sync::Mutex;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Address;

    use crate::rate_limiter::{RateLimit, RateLimiter};
    use crate::virtio::QueueInterrupt;

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const T_IN: u32 = 0;
    const T_OUT: u32 = 1;
    const T_FLUSH: u32 = 4;
    const T_GET_ID: u32 = 8;
    const T_BOGUS: u32 = 99;
    const T_DISCARD: u32 = 11;
    const T_WRITE_ZEROES: u32 = 13;
    const DISK_BYTES: u64 = 1 << 20;

    /// One request: header, then data (host-to-device for writes), then status.
    struct Req {
        kind: u32,
        sector: u64,
        data_len: u32,
    }

    /// A worker on a mocked queue and a 1 MiB temp file, with io_uring or the
    /// synchronous engine. Request i's data lives at 0x10_0000 + i * 0x1_0000;
    /// `first_data` is put in the first one's buffer. Returns each request's
    /// (status, used length) and the guest memory.
    fn serve(
        file: &tempfile::NamedTempFile,
        read_only: bool,
        uring: bool,
        reqs: &[Req],
        first_data: &[u8],
    ) -> (Vec<(u8, u32)>, GuestMemoryMmap) {
        let disk = Disk::open(file.path(), None, &[], read_only, false).unwrap();
        serve_disk(disk, uring, reqs, first_data)
    }

    fn serve_disk(
        disk: Disk,
        uring: bool,
        reqs: &[Req],
        first_data: &[u8],
    ) -> (Vec<(u8, u32)>, GuestMemoryMmap) {
        serve_disk_each(disk, uring, reqs, &[first_data])
    }

    /// [`serve_disk`] with `data[i]` in request i's buffer.
    fn serve_disk_each(
        disk: Disk,
        uring: bool,
        reqs: &[Req],
        data: &[&[u8]],
    ) -> (Vec<(u8, u32)>, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x80_0000)]).unwrap();
        for (i, d) in data.iter().enumerate() {
            mem.write_slice(d, GuestAddress(0x10_0000 + i as u64 * 0x1_0000))
                .unwrap();
        }
        let mock = MockSplitQueue::new(&mem, 64);
        let mut descs = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let base = 0x10_0000 + i as u64 * 0x1_0000;
            let hdr = base + 0x8000;
            mem.write_obj(r.kind, GuestAddress(hdr)).unwrap();
            mem.write_obj(r.sector, GuestAddress(hdr + 8)).unwrap();
            mem.write_obj(0xffu8, GuestAddress(hdr + 0x100)).unwrap();
            let first = descs.len() as u16;
            // Written by the driver: a write's data, a discard's segment.
            let data_flags = if matches!(r.kind, T_OUT | T_DISCARD | T_WRITE_ZEROES) {
                NEXT
            } else {
                NEXT | WRITE
            };
            descs.push(SplitDescriptor::new(hdr, 16, NEXT, first + 1));
            if r.data_len > 0 {
                descs.push(SplitDescriptor::new(
                    base,
                    r.data_len,
                    data_flags,
                    first + 2,
                ));
            }
            descs.push(SplitDescriptor::new(hdr + 0x100, 1, WRITE, 0));
        }
        let raw: Vec<RawDescriptor> = descs.into_iter().map(RawDescriptor::from).collect();
        mock.add_desc_chains(&raw, 0).unwrap();
        let queue = ActiveQueue {
            index: 0,
            queue: mock.create_queue().unwrap(),
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            interrupt: QueueInterrupt::disconnected(),
        };
        let mut serial = [0u8; SERIAL_LEN];
        serial[..4].copy_from_slice(b"vd-1");
        let activation = Activation {
            memory: mem.clone(),
            acked_features: 0,
            queues: vec![queue],
        };
        serve_queue(disk, serial, activation, uring);
        let used = mock.used_addr();
        let count: u16 = mem.read_obj(used.unchecked_add(2)).unwrap();
        assert_eq!(usize::from(count), reqs.len(), "every request completed");
        let mut results = vec![(0xff, 0); reqs.len()];
        let mut heads = Vec::new();
        let mut h = 0u16;
        for r in reqs {
            heads.push(h);
            h += if r.data_len > 0 { 3 } else { 2 };
        }
        for i in 0..u64::from(count) {
            let head: u32 = mem.read_obj(used.unchecked_add(4 + 8 * i)).unwrap();
            let len: u32 = mem.read_obj(used.unchecked_add(8 + 8 * i)).unwrap();
            let r = heads.iter().position(|&x| u32::from(x) == head).unwrap();
            let hdr = 0x10_0000 + r as u64 * 0x1_0000 + 0x8000;
            results[r] = (mem.read_obj(GuestAddress(hdr + 0x100)).unwrap(), len);
        }
        (results, mem)
    }

    /// An activation with the one queue `mock` holds.
    fn one_queue(mem: &GuestMemoryMmap, mock: &MockSplitQueue<'_, GuestMemoryMmap>) -> Activation {
        Activation {
            memory: mem.clone(),
            acked_features: 0,
            queues: vec![ActiveQueue {
                index: 0,
                queue: mock.create_queue().unwrap(),
                notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                interrupt: QueueInterrupt::disconnected(),
            }],
        }
    }

    /// A worker (with io_uring or the synchronous engine) serving what the
    /// queue holds until every request is done.
    fn serve_queue(
        disk: Disk,
        serial: [u8; SERIAL_LEN],
        activation: Activation,
        uring: bool,
    ) -> BlockWorker {
        let limiter = Arc::new(Mutex::new(RateLimiter::new(RateLimit::default())));
        let mut w = BlockWorker::new(
            Arc::new(disk),
            serial,
            limiter,
            activation,
            replace_channel().unwrap().1,
        )
        .unwrap();
        if !uring {
            w.ring = None;
        }
        w.process_queue(0);
        // As the worker's loop does: requests that waited for copy-ups
        // go on once those are done.
        loop {
            w.resume_deferred();
            if let Some(ring) = &w.ring {
                ring.submit().unwrap();
            }
            if w.deferred.is_empty() && w.slots.iter().all(Option::is_none) {
                break;
            }
            w.drain();
        }
        w
    }

    fn disk_file() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![0u8; DISK_BYTES as usize]).unwrap();
        f
    }

    fn file_bytes(f: &tempfile::NamedTempFile, at: u64, len: usize) -> Vec<u8> {
        let mut file = f.reopen().unwrap();
        file.seek(SeekFrom::Start(at)).unwrap();
        let mut buf = vec![0u8; len];
        file.read_exact(&mut buf).unwrap();
        buf
    }

    /// A qcow2 overlay over a patterned base: reads of the base, first and
    /// later writes, reads across clusters mapped differently, a flush.
    fn overlay_round_trip(uring: bool) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let pattern: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 249) as u8).collect();
        std::fs::write(&base, &pattern).unwrap();
        let overlay = dir.path().join("root.qcow2");
        qcow2::create_overlay(&overlay, "base.raw", 4 << 20).unwrap();
        let open = || Disk::open(&overlay, Some(&base), &[], false, false).unwrap();
        assert_eq!(open().capacity(), 4 << 20);
        let ones = vec![1u8; 4096];
        let req = |kind, sector| Req {
            kind,
            sector,
            data_len: 4096,
        };
        // A first write to cluster 1 (copied up from the base), then a read
        // of the base's cluster 0.
        let (results, mem) = serve_disk(open(), uring, &[req(T_OUT, 136), req(T_IN, 8)], &ones);
        assert_eq!(results, [(VIRTIO_BLK_S_OK, 1), (VIRTIO_BLK_S_OK, 4097)]);
        let mut buf = vec![0u8; 4096];
        mem.read_slice(&mut buf, GuestAddress(0x11_0000)).unwrap();
        assert_eq!(buf, pattern[4096..8192]);
        // Cluster 1 again (in place now), a read of what was written, one
        // across clusters 0 and 1 (base and overlay), past the base, a flush.
        let twos = vec![2u8; 4096];
        let reqs = [
            req(T_OUT, 152),
            req(T_IN, 136),
            req(T_IN, 124),
            req(T_IN, (2 << 20) / 512),
            Req {
                kind: T_FLUSH,
                sector: 0,
                data_len: 0,
            },
        ];
        let (results, mem) = serve_disk(open(), uring, &reqs, &twos);
        assert_eq!(
            results.iter().map(|r| r.0).collect::<Vec<_>>(),
            [VIRTIO_BLK_S_OK; 5]
        );
        let read = |i: u64| {
            let mut buf = vec![0u8; 4096];
            mem.read_slice(&mut buf, GuestAddress(0x10_0000 + i * 0x1_0000))
                .unwrap();
            buf
        };
        assert!(read(1) == ones, "sector 136 reads what was written");
        let across = read(2);
        assert_eq!(across[..2048], pattern[124 * 512..64 << 10]);
        // (cluster 1 was copied up from the base by the first write)
        assert_eq!(across[2048..], pattern[64 << 10..(64 << 10) + 2048]);
        assert!(read(3).iter().all(|b| *b == 0));
        drop(mem);
        // What the guest wrote is in the overlay, the base untouched.
        let reopened =
            qcow2::Overlay::open(&std::fs::File::open(&overlay).unwrap(), &base, false).unwrap();
        let mut buf = vec![0u8; 3 * 4096];
        reopened
            .read_vectored(&mut [std::io::IoSliceMut::new(&mut buf)], 68 << 10)
            .unwrap();
        assert_eq!(buf[..4096], ones[..]);
        assert_eq!(buf[4096..8192], pattern[(72 << 10)..(76 << 10)]);
        assert_eq!(buf[8192..], twos[..]);
        assert_eq!(std::fs::read(&base).unwrap(), pattern);
    }

    /// A 2 MiB volume (`vol`) over one snapshot layer (`snap`) over a 1 MiB
    /// base patterned `i % 251`, the layer holding 7s at `[at, at + len)`:
    /// the disk, and the base's bytes.
    fn volume_over_a_snapshot(
        dir: &std::path::Path,
        at: u64,
        len: usize,
        direct: bool,
    ) -> (Disk, Vec<u8>) {
        let path = |n: &str| dir.join(n);
        let pattern: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(path("base"), &pattern).unwrap();
        qcow2::create_overlay(&path("snap"), "base", 2 << 20).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path("snap"))
            .unwrap();
        let snap = qcow2::Overlay::open(&file, &path("base"), true).unwrap();
        snap.write_vectored(&[std::io::IoSlice::new(&vec![7u8; len])], at)
            .unwrap();
        snap.flush().unwrap();
        drop(snap);
        qcow2::create_layer(&path("vol"), "snap", "qcow2", 2 << 20).unwrap();
        let disk = Disk::open(
            &path("vol"),
            Some(&path("base")),
            &[path("snap")],
            false,
            direct,
        )
        .unwrap();
        (disk, pattern)
    }

    /// The volume [`volume_over_a_snapshot`] made in `dir`, opened again
    /// (through the page cache).
    fn reopen_volume(dir: &std::path::Path, read_only: bool) -> Disk {
        let path = |n: &str| dir.join(n);
        Disk::open(
            &path("vol"),
            Some(&path("base")),
            &[path("snap")],
            read_only,
            false,
        )
        .unwrap()
    }

    /// Reads under an overlay two files deep go to whichever file holds
    /// their bytes (a layer's cluster, the base) and read what imago reads.
    fn layered_read_round_trip(uring: bool) {
        let dir = tempfile::tempdir().unwrap();
        let (disk, pattern) = volume_over_a_snapshot(dir.path(), 64 << 10, 8192, false);
        assert_eq!(
            disk.place(64 << 10, 4096, false).unwrap().0,
            Target::Layer(0)
        );
        let req = |sector| Req {
            kind: T_IN,
            sector,
            data_len: 4096,
        };
        // The layer's cluster, the base, and a read across both.
        let (results, mem) = serve_disk(disk, uring, &[req(128), req(8), req(124)], &[]);
        assert_eq!(results, [(VIRTIO_BLK_S_OK, 4097); 3]);
        let read = |i: u64| {
            let mut buf = vec![0u8; 4096];
            mem.read_slice(&mut buf, GuestAddress(0x10_0000 + i * 0x1_0000))
                .unwrap();
            buf
        };
        assert!(read(0).iter().all(|b| *b == 7));
        assert_eq!(read(1), pattern[4096..8192]);
        let across = read(2);
        assert_eq!(across[..2048], pattern[124 * 512..64 << 10]);
        assert!(across[2048..].iter().all(|b| *b == 7));
    }

    /// First writes to a volume over a snapshot layer, O_DIRECT: whole
    /// clusters' data never enters the page cache, the partly written
    /// clusters at a write's edges are copied up from below, and the disk
    /// reads what was written wherever each write began and ended.
    #[test]
    fn first_writes_of_whole_clusters_bypass_the_page_cache() {
        const K: u64 = 1 << 10;
        let dir = tempfile::tempdir().unwrap();
        let (disk, pattern) = volume_over_a_snapshot(dir.path(), 192 * K, 64 << 10, true);
        let path = |n: &str| dir.path().join(n);
        assert!(disk.direct, "the test's directory takes O_DIRECT");
        let mut model = pattern.clone();
        model.resize(2 << 20, 0);
        model[192 << 10..256 << 10].fill(7);
        // Guest memory, page-aligned as a guest's is; each write's data
        // is a pattern of its own, in two buffers.
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let writes = [
            // Clusters 1 and 2 whole: the edges over the base and the layer.
            (32 * K, 192 * K),
            (64 * K, 64 * K),
            (300 * K, 4 * K),
            (500 * K, 260 * K),
            (1024 * K - 4 * K, 136 * K + 512),
        ];
        for (i, &(at, len)) in writes.iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|b| (b % 241) as u8 ^ i as u8).collect();
            mem.write_slice(&data, GuestAddress(0)).unwrap();
            let half = (len / 2).next_multiple_of(512);
            let slice = |from: u64, n: u64| {
                let s = mem.get_slice(GuestAddress(from), n as usize).unwrap();
                libc::iovec {
                    iov_base: s.ptr_guard_mut().as_ptr().cast(),
                    iov_len: n as usize,
                }
            };
            let iovecs = [slice(0, half), slice(half, len - half)];
            disk.overlay_io(true, &iovecs, at).unwrap();
            model[at as usize..(at + len) as usize].copy_from_slice(&data);
        }
        let (target, host) = disk.place(64 * K, 64 * K, false).unwrap();
        assert_eq!(target, Target::Own, "the cluster is the volume's now");
        let file = std::fs::File::open(path("vol")).unwrap();
        let cached = rustix::io::preadv2(
            &file,
            &mut [std::io::IoSliceMut::new(&mut [0u8; 4096])],
            host,
            rustix::io::ReadWriteFlags::NOWAIT,
        );
        assert_eq!(
            cached.err(),
            Some(rustix::io::Errno::AGAIN),
            "a whole cluster's first write is not in the page cache"
        );
        let mut got = vec![0u8; 2 << 20];
        disk.read_at(&mut got, 0).unwrap();
        for (c, (got, want)) in got.chunks(4096).zip(model.chunks(4096)).enumerate() {
            assert!(got == want, "4 KiB block {c} differs");
        }
    }

    /// One read of `sizes.iter().sum()` bytes at `sector`, its data in
    /// buffers of `sizes` bytes spread over guest memory, served by a
    /// worker; its status, used length and the bytes read.
    fn serve_read(disk: Disk, uring: bool, sector: u64, sizes: &[u32]) -> (u8, u32, Vec<u8>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let (hdr, status) = (0x40_0000, 0x40_1000);
        mem.write_obj(T_IN, GuestAddress(hdr)).unwrap();
        mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        mem.write_slice(&vec![0xeeu8; 0x30_0000], GuestAddress(0x10_0000))
            .unwrap();
        let mut descs = vec![SplitDescriptor::new(hdr, 16, NEXT, 1)];
        // Each buffer 4 KiB past the last one's end, a gap that must stay.
        let mut buffers = Vec::new();
        let mut at = 0x10_0000u64;
        for (i, &n) in sizes.iter().enumerate() {
            descs.push(SplitDescriptor::new(at, n, NEXT | WRITE, i as u16 + 2));
            buffers.push((at, n));
            at += u64::from(n) + 4096;
        }
        descs.push(SplitDescriptor::new(status, 1, WRITE, 0));
        let mock = MockSplitQueue::new(&mem, 64);
        let raw: Vec<RawDescriptor> = descs.into_iter().map(RawDescriptor::from).collect();
        mock.add_desc_chains(&raw, 0).unwrap();
        let activation = one_queue(&mem, &mock);
        let w = serve_queue(disk, [0; SERIAL_LEN], activation, uring);
        assert!(w.parted.is_empty(), "no read left in parts");
        let used = mock.used_addr();
        let count: u16 = mem.read_obj(used.unchecked_add(2)).unwrap();
        assert_eq!(count, 1, "the read completed");
        let used_len: u32 = mem.read_obj(used.unchecked_add(8)).unwrap();
        let mut data = Vec::new();
        for (i, &(at, n)) in buffers.iter().enumerate() {
            let mut buf = vec![0u8; n as usize + 4096];
            mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
            assert!(
                buf[n as usize..].iter().all(|b| *b == 0xee),
                "nothing written past buffer {i}"
            );
            data.extend_from_slice(&buf[..n as usize]);
        }
        (mem.read_obj(GuestAddress(status)).unwrap(), used_len, data)
    }

    /// A read across a volume's own cluster, its zeros, a snapshot layer's
    /// cluster, the base and past the base's end is read in parts, each
    /// from the file that holds it (zeros written), all at once; it reads
    /// what the format driver reads, in buffers of any sizes (and so does
    /// `Disk::read_at`).
    fn read_in_parts(uring: bool, direct: bool) {
        const K: u64 = 1 << 10;
        let dir = tempfile::tempdir().unwrap();
        let (disk, pattern) = volume_over_a_snapshot(dir.path(), 64 * K, 8192, direct);
        let own: Vec<u8> = (0..64 * K).map(|i| (i % 13) as u8 + 100).collect();
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        mem.write_slice(&own, GuestAddress(0)).unwrap();
        let s = mem.get_slice(GuestAddress(0), own.len()).unwrap();
        let iovec = libc::iovec {
            iov_base: s.ptr_guard_mut().as_ptr().cast(),
            iov_len: own.len(),
        };
        disk.overlay_io(true, &[iovec], 192 * K).unwrap();
        disk.write_zeroes(256 * K, 64 * K).unwrap();
        // Cluster 5 the volume's own too, but not where cluster 3 ends
        // in its file: a part of its own.
        disk.overlay_io(true, &[iovec], 320 * K).unwrap();
        let (at, len) = (32 * K, 1024 * K + 64 * K);
        let parts = disk.read_pieces(at, len).unwrap().expect("read in parts");
        let wheres: Vec<Option<Target>> = parts.iter().map(|p| p.at.map(|a| a.0)).collect();
        use Target::*;
        assert_eq!(
            wheres,
            [
                Some(Base),
                Some(Layer(0)),
                Some(Base),
                Some(Own),
                None,
                Some(Own),
                Some(Base),
                None
            ]
        );
        // What the format driver reads, through a chain of its own.
        disk.flush().unwrap();
        let open = |n: &str| std::fs::File::open(dir.path().join(n)).unwrap();
        let driver =
            qcow2::Overlay::open_chain(&open("vol"), vec![open("snap")], open("base"), false)
                .unwrap();
        let mut want = vec![0u8; len as usize];
        driver
            .read_vectored(&mut [std::io::IoSliceMut::new(&mut want)], at)
            .unwrap();
        // Also as storaged's NBD server reads it.
        let mut got = vec![0xeeu8; len as usize];
        disk.read_at(&mut got, at).unwrap();
        assert!(got == want, "read_at reads what the format driver reads");
        assert_eq!(want[..32 << 10], pattern[32 << 10..64 << 10]);
        assert!(want[32 << 10..40 << 10].iter().all(|b| *b == 7));
        assert!(want[160 << 10..224 << 10] == own[..]);
        assert!(want[224 << 10..288 << 10].iter().all(|b| *b == 0));
        assert!(want[1024 << 10..].iter().all(|b| *b == 0));
        let sizes = [300 << 10, 4608, (len - (300 << 10) - 4608) as u32];
        let (status, used_len, got) = serve_read(disk, uring, at / 512, &sizes);
        assert_eq!((status, used_len), (VIRTIO_BLK_S_OK, len as u32 + 1));
        for (c, (got, want)) in got.chunks(4096).zip(want.chunks(4096)).enumerate() {
            assert!(got == want, "4 KiB block {c} of the read differs");
        }
    }

    /// First writes of parts of clusters over a snapshot layer, many in
    /// flight together, several into one cluster (which wait for the one
    /// copying it up), beside reads and rewrites: each copy-up reads what
    /// lies under its clusters and writes them whole, and no write's data
    /// is lost under another's copy-up.
    fn first_writes_copy_up(uring: bool, direct: bool) {
        const K: u64 = 1 << 10;
        let dir = tempfile::tempdir().unwrap();
        let (disk, pattern) = volume_over_a_snapshot(dir.path(), 64 * K, 8192, direct);
        let mut model = pattern.clone();
        model.resize(2 << 20, 0);
        model[64 << 10..72 << 10].fill(7);
        // (sector, sectors): writes of 4 KiB blocks into clusters 0 (the
        // base under it), 1 (the layer's), 2 and 3 (a write across both),
        // 16 (past the base's end); reads between them.
        let writes = [
            (8u64, 8u32),
            (128 + 16, 8),
            (8 + 32, 8),
            (128 + 72, 16),
            (256 + 120, 16),
            (0, 1),
            (128, 8),
            (2048 + 8, 8),
            (2048 + 64, 24),
        ];
        let mut reqs = Vec::new();
        let mut data: Vec<Vec<u8>> = Vec::new();
        for (i, &(sector, sectors)) in writes.iter().enumerate() {
            let bytes: Vec<u8> = (0..sectors * 512)
                .map(|b| (b % 199) as u8 ^ (i as u8 + 1))
                .collect();
            let at = sector as usize * 512;
            model[at..at + bytes.len()].copy_from_slice(&bytes);
            reqs.push(Req {
                kind: T_OUT,
                sector,
                data_len: sectors * 512,
            });
            data.push(bytes);
            if i % 3 == 1 {
                // A read of a cluster no write touches.
                reqs.push(Req {
                    kind: T_IN,
                    sector: 128 * 10 + i as u64 * 8,
                    data_len: 4096,
                });
                data.push(Vec::new());
            }
        }
        let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let (results, mem) = serve_disk_each(disk, uring, &reqs, &slices);
        for (i, (r, req)) in results.iter().zip(&reqs).enumerate() {
            assert_eq!(r.0, VIRTIO_BLK_S_OK, "request {i}");
            if req.kind == T_IN {
                let mut got = vec![0u8; 4096];
                mem.read_slice(&mut got, GuestAddress(0x10_0000 + i as u64 * 0x1_0000))
                    .unwrap();
                let at = req.sector as usize * 512;
                assert!(got == model[at..at + 4096], "read {i}");
            }
        }
        let disk = reopen_volume(dir.path(), true);
        let mut got = vec![0u8; 2 << 20];
        disk.read_at(&mut got, 0).unwrap();
        for (c, (got, want)) in got.chunks(4096).zip(model.chunks(4096)).enumerate() {
            assert!(got == want, "4 KiB block {c} differs");
        }
        for cluster in [0u64, 1, 2, 3, 16] {
            assert_eq!(
                disk.place(cluster * 64 * K, 64 * K, false).unwrap().0,
                Target::Own,
                "cluster {cluster} is the volume's own"
            );
        }
    }

    #[test]
    fn first_writes_copy_up_through_io_uring() {
        first_writes_copy_up(true, false);
        first_writes_copy_up(true, true);
    }

    #[test]
    fn first_writes_copy_up_synchronously() {
        first_writes_copy_up(false, false);
        first_writes_copy_up(false, true);
    }

    /// Found in a Debian guest that hung in resize2fs: a discard waiting for
    /// a copy-up was started again as the copy-up's read completed, in the
    /// middle of a reap; the discard drains the worker, which then waited
    /// for a read whose completion that reap had already taken. A discard
    /// behind a copy-up, beside another read in flight, completes.
    #[test]
    fn a_discard_behind_a_copy_up_completes() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, _) = volume_over_a_snapshot(dir.path(), 64 << 10, 8192, false);
        drop(disk);
        // Read once, so that the worker's reads of the base complete at
        // once when submitted, and so together in one reap.
        std::fs::read(dir.path().join("base")).unwrap();
        let done = std::sync::mpsc::channel();
        let path = dir.path().to_owned();
        std::thread::spawn(move || {
            let discard = |sector: u64, sectors: u32| {
                let mut d = sector.to_le_bytes().to_vec();
                d.extend_from_slice(&sectors.to_le_bytes());
                d.extend_from_slice(&0u32.to_le_bytes());
                d
            };
            let reqs = [
                // A copy-up of cluster 2 (the base under it).
                Req {
                    kind: T_OUT,
                    sector: 256 + 8,
                    data_len: 4096,
                },
                // A read across clusters 3 and 4 of the base, in parts.
                Req {
                    kind: T_IN,
                    sector: 384 + 120,
                    data_len: 8192,
                },
                // Waits for the copy-up.
                Req {
                    kind: T_DISCARD,
                    sector: 1024,
                    data_len: 16,
                },
            ];
            let data = [vec![9u8; 4096], Vec::new(), discard(1024, 128)];
            let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let (results, _) = serve_disk_each(reopen_volume(&path, false), true, &reqs, &slices);
            let _ = done.0.send(results);
        });
        let results = done
            .1
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the worker did not hang");
        assert_eq!(
            results,
            [
                (VIRTIO_BLK_S_OK, 1),
                (VIRTIO_BLK_S_OK, 8193),
                (VIRTIO_BLK_S_OK, 1)
            ]
        );
    }

    /// Found by the fuzzer: a read of no bytes where the overlay's clusters
    /// are mapped differently made a read in no parts, which never
    /// completed. Reads and writes of no bytes complete, anywhere.
    #[test]
    fn requests_of_no_bytes_complete_on_an_overlay() {
        let dir = tempfile::tempdir().unwrap();
        drop(volume_over_a_snapshot(dir.path(), 64 << 10, 8192, false));
        let mut reqs = Vec::new();
        for sector in [0, 120, 128, 2032, 2048, 4095] {
            for kind in [T_IN, T_OUT] {
                reqs.push(Req {
                    kind,
                    sector,
                    data_len: 0,
                });
            }
        }
        for uring in [true, false] {
            let disk = reopen_volume(dir.path(), false);
            let (results, _) = serve_disk(disk, uring, &reqs, &[]);
            assert_eq!(results, vec![(VIRTIO_BLK_S_OK, 1); reqs.len()]);
        }
    }

    #[test]
    fn reads_in_parts_through_io_uring() {
        read_in_parts(true, false);
        read_in_parts(true, true);
    }

    #[test]
    fn reads_in_parts_synchronously() {
        read_in_parts(false, false);
        read_in_parts(false, true);
    }

    #[test]
    fn zeros_fill_a_range_of_a_request_buffers() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4_0000)]).unwrap();
        mem.write_slice(&[0xffu8; 0x4_0000], GuestAddress(0))
            .unwrap();
        let data = [
            (GuestAddress(0x1000), 5000),
            (GuestAddress(0x1_0000), 10_000),
            (GuestAddress(0x3_0000), 100),
        ];
        assert!(zero_fill(&mem, &data, 4000, 6100));
        let at = |a: u64, n: usize| {
            let mut b = vec![0u8; n];
            mem.read_slice(&mut b, GuestAddress(a)).unwrap();
            b
        };
        assert!(at(0x1000, 4000).iter().all(|b| *b == 0xff));
        assert!(at(0x1000 + 4000, 1000).iter().all(|b| *b == 0));
        assert!(at(0x1_0000, 5100).iter().all(|b| *b == 0));
        assert!(at(0x1_0000 + 5100, 4900).iter().all(|b| *b == 0xff));
        assert!(at(0x3_0000, 100).iter().all(|b| *b == 0xff));
        // A range past the buffers, or buffers outside guest memory.
        assert!(!zero_fill(&mem, &data, 15_000, 200));
        assert!(!zero_fill(
            &mem,
            &[(GuestAddress(0x3_ff00), 0x200)],
            0,
            0x200
        ));
    }

    #[test]
    fn layered_reads_round_trip_through_io_uring() {
        layered_read_round_trip(true);
    }

    #[test]
    fn layered_reads_round_trip_synchronously() {
        layered_read_round_trip(false);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Any sequence of reads, writes, discards and write-zeroes through
        /// the worker reads what a plain in-memory disk holding the base
        /// would (a discarded range as zeros): whichever path each request
        /// takes (the overlay's file, O_DIRECT or not, the base, or imago).
        /// Its writes stay under a cluster, so they never take the whole
        /// clusters' O_DIRECT path (the test of that is
        /// `first_writes_of_whole_clusters_bypass_the_page_cache`).
        #[test]
        fn an_overlay_reads_like_a_plain_disk(
            uring: bool,
            direct: bool,
            ops in proptest::collection::vec((0u8..4, 0u64..2400, 1u32..=300, 0u8..255), 1..14),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().join("base.raw");
            let base_bytes: Vec<u8> = (0..(1u32 << 20) + 3 * 4096).map(|i| (i % 247) as u8).collect();
            std::fs::write(&base, &base_bytes).unwrap();
            let overlay = dir.path().join("root.qcow2");
            qcow2::create_overlay(&overlay, "base.raw", 4 << 20).unwrap();
            let mut model = base_bytes.clone();
            model.resize(4 << 20, 0);
            for (op, sector, sectors, fill) in ops {
                // Reads and writes of at most 48 sectors; discards longer.
                let sectors = if op < 2 { sectors % 48 + 1 } else { sectors };
                let len = sectors as usize * 512;
                let at = sector as usize * 512;
                let disk = Disk::open(&overlay, Some(&base), &[], false, direct).unwrap();
                let kind = [T_IN, T_OUT, T_DISCARD, T_WRITE_ZEROES][usize::from(op)];
                let write = kind == T_OUT;
                let (data, data_len) = if op < 2 {
                    (vec![fill; len], len as u32)
                } else {
                    let mut segment = sector.to_le_bytes().to_vec();
                    segment.extend_from_slice(&sectors.to_le_bytes());
                    segment.extend_from_slice(&0u32.to_le_bytes());
                    (segment, 16)
                };
                let (results, mem) = serve_disk(disk, uring, &[Req { kind, sector, data_len }], &data);
                proptest::prop_assert_eq!(results[0], (VIRTIO_BLK_S_OK, if kind == T_IN { len as u32 + 1 } else { 1 }));
                if write {
                    model[at..at + len].copy_from_slice(&data);
                } else if kind != T_IN {
                    model[at..at + len].fill(0);
                } else {
                    let mut got = vec![0u8; len];
                    mem.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
                    proptest::prop_assert!(got == model[at..at + len], "read of {} sectors at {}", sectors, sector);
                }
            }
        }
    }

    #[test]
    fn overlay_requests_round_trip_through_io_uring() {
        overlay_round_trip(true);
    }

    #[test]
    fn overlay_requests_round_trip_synchronously() {
        overlay_round_trip(false);
    }

    fn requests_round_trip(uring: bool) {
        let f = disk_file();
        let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        // Write the pattern at sector 8, flush, ask the serial, and three bad ones.
        let reqs = [
            Req {
                kind: T_OUT,
                sector: 8,
                data_len: 4096,
            },
            Req {
                kind: T_FLUSH,
                sector: 0,
                data_len: 0,
            },
            Req {
                kind: T_GET_ID,
                sector: 0,
                data_len: 20,
            },
            // Past the end, not a whole sector, an unknown type.
            Req {
                kind: T_IN,
                sector: DISK_BYTES / 512,
                data_len: 512,
            },
            Req {
                kind: T_IN,
                sector: 0,
                data_len: 100,
            },
            Req {
                kind: T_BOGUS,
                sector: 0,
                data_len: 512,
            },
        ];
        let (results, _) = serve(&f, false, uring, &reqs, &pattern);
        assert_eq!(results[0], (VIRTIO_BLK_S_OK, 1));
        assert_eq!(results[1], (VIRTIO_BLK_S_OK, 1));
        assert_eq!(results[2], (VIRTIO_BLK_S_OK, 21));
        assert_eq!(results[3].0, VIRTIO_BLK_S_IOERR);
        assert_eq!(results[4].0, VIRTIO_BLK_S_IOERR);
        assert_eq!(results[5].0, VIRTIO_BLK_S_UNSUPP);
        assert_eq!(file_bytes(&f, 8 * 512, 4096), pattern);

        // Read it back, and check a read-only disk refuses to write.
        let (results, mem) = serve(
            &f,
            true,
            uring,
            &[
                Req {
                    kind: T_IN,
                    sector: 8,
                    data_len: 4096,
                },
                Req {
                    kind: T_OUT,
                    sector: 0,
                    data_len: 512,
                },
            ],
            &[1u8; 512],
        );
        assert_eq!(results[0], (VIRTIO_BLK_S_OK, 4097));
        assert_eq!(results[1].0, VIRTIO_BLK_S_IOERR);
        let mut got = vec![0u8; 4096];
        mem.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(got, pattern);
        assert_eq!(
            file_bytes(&f, 0, 512),
            vec![0u8; 512],
            "read-only disk untouched"
        );
    }

    #[test]
    fn requests_round_trip_through_io_uring() {
        if IoUring::new(4).is_err() {
            eprintln!("io_uring unavailable here; the synchronous test covers the worker");
            return;
        }
        requests_round_trip(true);
    }

    #[test]
    fn requests_round_trip_through_the_synchronous_engine() {
        requests_round_trip(false);
    }

    /// A live snapshot as storaged and hostd make it: the raw file becomes
    /// the snapshot's layer (a hard link) and the disk moves onto a fresh
    /// overlay over it while requests flow. What came before the move is in
    /// the layer; what came after is in the overlay only; reads see both.
    fn a_disk_moves_to_an_overlay_over_its_old_file(uring: bool) {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("vol.raw");
        std::fs::write(&raw, vec![0u8; DISK_BYTES as usize]).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x80_0000)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 64);
        // Three requests: write ones at sector 8; then, after the move,
        // write twos at sector 16 and read sector 8 back.
        let mut descs = Vec::new();
        for (i, (kind, sector, fill)) in [(T_OUT, 8u64, 1u8), (T_OUT, 16, 2), (T_IN, 8, 0)]
            .into_iter()
            .enumerate()
        {
            let base = 0x10_0000 + i as u64 * 0x1_0000;
            let hdr = base + 0x8000;
            mem.write_slice(&[fill; 4096], GuestAddress(base)).unwrap();
            mem.write_obj(kind, GuestAddress(hdr)).unwrap();
            mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
            let first = descs.len() as u16;
            let flags = if kind == T_OUT { NEXT } else { NEXT | WRITE };
            descs.push(SplitDescriptor::new(hdr, 16, NEXT, first + 1));
            descs.push(SplitDescriptor::new(base, 4096, flags, first + 2));
            descs.push(SplitDescriptor::new(hdr + 0x100, 1, WRITE, 0));
        }
        let raw_descs: Vec<RawDescriptor> = descs.into_iter().map(RawDescriptor::from).collect();
        mock.add_desc_chains(&raw_descs, 0).unwrap();
        mock.avail().idx().store(1);
        let activation = one_queue(&mem, &mock);
        let disk = Disk::open(&raw, None, &[], false, false).unwrap();
        let (link, inbox) = replace_channel().unwrap();
        let limiter = Arc::new(Mutex::new(RateLimiter::new(RateLimit::default())));
        let mut w =
            BlockWorker::new(Arc::new(disk), [0; SERIAL_LEN], limiter, activation, inbox).unwrap();
        if !uring {
            w.ring = None;
        }
        w.process_queue(0);
        if let Some(ring) = &w.ring {
            ring.submit().unwrap(); // in flight when the move comes
        }
        // storaged's freeze: the file becomes the layer, an overlay over it.
        let layer = dir.path().join("snap.raw");
        std::fs::hard_link(&raw, &layer).unwrap();
        let overlay = dir.path().join("vol.qcow2");
        qcow2::create_overlay(&overlay, "snap.raw", DISK_BYTES).unwrap();
        let moved = Disk::open(&overlay, Some(&layer), &[], false, false).unwrap();
        link.disks.send(Arc::new(moved)).unwrap();
        w.take_new_disks();
        assert_eq!(link.done.try_recv().unwrap(), Ok(()), "the worker moved");
        mock.avail().idx().store(3);
        w.process_queue(0);
        if let Some(ring) = &w.ring {
            ring.submit().unwrap();
        }
        w.drain();
        let used: u16 = mem.read_obj(mock.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used, 3, "every request completed");
        for i in 0..3u64 {
            let status: u8 = mem
                .read_obj(GuestAddress(0x10_0000 + i * 0x1_0000 + 0x8100))
                .unwrap();
            assert_eq!(status, VIRTIO_BLK_S_OK, "request {i}");
        }
        let mut read = vec![0u8; 4096];
        mem.read_slice(&mut read, GuestAddress(0x12_0000)).unwrap();
        assert!(
            read.iter().all(|b| *b == 1),
            "the overlay reads the layer through"
        );
        let frozen = std::fs::read(&layer).unwrap();
        assert!(frozen[8 * 512..8 * 512 + 4096].iter().all(|b| *b == 1));
        assert!(
            frozen[16 * 512..16 * 512 + 4096].iter().all(|b| *b == 0),
            "nothing written after the move reaches the snapshot"
        );
        drop(w);
        let reopened =
            qcow2::Overlay::open(&std::fs::File::open(&overlay).unwrap(), &layer, false).unwrap();
        let mut buf = vec![0u8; 4096];
        reopened
            .read_vectored(&mut [std::io::IoSliceMut::new(&mut buf)], 16 * 512)
            .unwrap();
        assert!(
            buf.iter().all(|b| *b == 2),
            "the write after the move is in the overlay"
        );
    }

    #[test]
    fn a_disk_moves_to_an_overlay_through_io_uring() {
        if IoUring::new(4).is_err() {
            eprintln!("io_uring unavailable here; the synchronous test covers the move");
            return;
        }
        a_disk_moves_to_an_overlay_over_its_old_file(true);
    }

    #[test]
    fn a_disk_moves_to_an_overlay_synchronously() {
        a_disk_moves_to_an_overlay_over_its_old_file(false);
    }

    #[test]
    fn a_move_keeps_the_read_only_flag_and_never_shrinks() {
        let (f, small) = (disk_file(), tempfile::NamedTempFile::new().unwrap());
        small.as_file().set_len(4096).unwrap();
        let limiter = Arc::new(Mutex::new(RateLimiter::new(RateLimit::default())));
        let open = |f: &tempfile::NamedTempFile, ro| {
            Arc::new(Disk::open(f.path(), None, &[], ro, false).unwrap())
        };
        let mut block = Block::new(open(&f, false), "vd", 1, limiter, "t".into());
        assert!(matches!(
            block.replace_disk(open(&f, true)),
            Err(ReplaceDiskError::ReadOnly(true))
        ));
        assert!(matches!(
            block.replace_disk(open(&small, false)),
            Err(ReplaceDiskError::Smaller { .. })
        ));
        // Not yet driven by the guest: the next activation takes the disk.
        assert!(!block.replace_disk(open(&f, false)).unwrap(), "no bigger");
    }

    #[test]
    fn a_broken_avail_index_does_not_spin_the_worker() {
        // Found by fuzz::virtio_blk: with the avail index more than a queue ahead,
        // pop found nothing while enable_notification reported work, and
        // process_queue looped forever.
        let f = disk_file();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mem: GuestMemoryMmap =
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let mock = MockSplitQueue::new(&mem, 16);
            mock.avail().idx().store(17);
            let activation = one_queue(&mem, &mock);
            let disk = Arc::new(Disk::open(f.path(), None, &[], false, false).unwrap());
            let limiter = Arc::new(Mutex::new(RateLimiter::new(RateLimit::default())));
            let inbox = replace_channel().unwrap().1;
            let mut w =
                BlockWorker::new(disk, [0; SERIAL_LEN], limiter, activation, inbox).unwrap();
            w.process_queue(0);
            let used: u16 = mem.read_obj(mock.used_addr().unchecked_add(2)).unwrap();
            let _ = tx.send(used);
        });
        let used = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("process_queue returns");
        assert_eq!(used, 0, "nothing popped from a broken ring");
    }
}
