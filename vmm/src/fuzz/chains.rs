//! Descriptor chains as fuzz input, shared by the virtio targets.
//!
//! Guest memory is two regions with a hole between them. The first 8 KiB hold up
//! to two queues' rings (never pointed at by generated buffers, so the rings stay
//! the device's and the driver's); the rest is cut into slots of 68 KiB, one per
//! buffer, so buffers only overlap when a case asks for it. A [`ChainSpec`] lays
//! out into a descriptor table (or an indirect table in a slot); its descriptors
//! may point anywhere: fresh slots, into the hole, past the end, wild addresses.

use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

pub const QUEUE_SIZE: u16 = 32;
/// Region A: [0, HOLE); region B: [HIGH, END).
pub const HOLE: u64 = 0x40_0000;
pub const HIGH: u64 = 0x40_1000;
pub const END: u64 = HIGH + 0x8_0000;
/// Queue rings live below this (one queue at 0, another at 0x1000).
pub const RINGS_END: u64 = 0x2000;
/// A slot takes the largest virtio-net packet (65,562 bytes) with room to spare.
pub const SLOT_SIZE: u64 = 0x1_1000;
pub const SLOTS: u64 = (HOLE - RINGS_END) / SLOT_SIZE;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), HOLE as usize),
        (GuestAddress(HIGH), (END - HIGH) as usize),
    ])
    .unwrap()
}

/// Where a descriptor points.
#[derive(Clone, Copy, Debug)]
pub enum Addr {
    /// The next unused slot, plus an offset.
    Fresh(u16),
    /// Slot `n` (mod the slot count): may overlap other buffers.
    Slot(u8, u16),
    /// `n` bytes before the hole: a longer buffer runs into it.
    BeforeHole(u16),
    InHole(u16),
    /// In the second region.
    High(u32),
    /// `n` bytes before the end of guest memory.
    BeforeEnd(u16),
    /// Anywhere, including where u64 arithmetic overflows.
    Wild(u64),
}

impl Addr {
    fn resolve(self, alloc: &mut Alloc) -> u64 {
        match self {
            Addr::Fresh(off) => alloc.fresh() + u64::from(off),
            Addr::Slot(n, off) => slot(u64::from(n) % SLOTS) + u64::from(off),
            Addr::BeforeHole(n) => HOLE - u64::from(n.max(1)),
            Addr::InHole(n) => HOLE + u64::from(n) % (HIGH - HOLE),
            Addr::High(n) => HIGH + u64::from(n) % (END - HIGH),
            Addr::BeforeEnd(n) => END - u64::from(n.max(1)),
            Addr::Wild(a) if a < RINGS_END => a + RINGS_END,
            Addr::Wild(a) => a,
        }
    }
}

fn slot(n: u64) -> u64 {
    RINGS_END + n * SLOT_SIZE
}

/// Hands out slots in order (wrapping around when a case uses them all).
#[derive(Default)]
pub struct Alloc(u64);

impl Alloc {
    pub fn fresh(&mut self) -> u64 {
        let a = slot(self.0 % SLOTS);
        self.0 += 1;
        a
    }
}

pub fn addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        12 => (0u16..64).prop_map(Addr::Fresh),
        2 => (any::<u8>(), 0u16..0x1000).prop_map(|(s, o)| Addr::Slot(s, o)),
        1 => (0u16..0x2000).prop_map(Addr::BeforeHole),
        1 => any::<u16>().prop_map(Addr::InHole),
        1 => any::<u32>().prop_map(Addr::High),
        1 => (0u16..0x2000).prop_map(Addr::BeforeEnd),
        1 => prop_oneof![
            Just(u64::MAX),
            (0u64..0x1000).prop_map(|n| u64::MAX - n),
            Just(1u64 << 63),
            any::<u64>(),
        ]
        .prop_map(Addr::Wild),
    ]
}

/// Lengths a guest might give, from zero to the u32 limit.
pub fn len() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1u32),
        2u32..=64,
        Just(512u32),
        Just(4096u32),
        0u32..0x2_0000,
        (0u32..0x100).prop_map(|n| u32::MAX - n),
        any::<u32>(),
    ]
}

#[derive(Clone, Copy, Debug)]
pub enum Next {
    /// Chained to the descriptor laid out after it.
    Follow,
    /// The end of the chain.
    Stop,
    /// Chained to this index: backwards makes a loop, past the table is invalid.
    To(u16),
}

#[derive(Clone, Copy, Debug)]
pub struct DescSpec {
    pub addr: Addr,
    pub len: u32,
    pub write: bool,
    /// More flag bits (INDIRECT, garbage).
    pub flags: u16,
    pub next: Next,
    /// What the target put there (a header, a segment...); kept through mutations.
    pub tag: u8,
}

impl DescSpec {
    /// A plain buffer in a fresh slot.
    pub fn fresh(len: u32, write: bool, last: bool) -> Self {
        DescSpec {
            addr: Addr::Fresh(0),
            len,
            write,
            flags: 0,
            next: if last { Next::Stop } else { Next::Follow },
            tag: 0,
        }
    }

    pub fn tagged(mut self, tag: u8) -> Self {
        self.tag = tag;
        self
    }
}

/// A change to one descriptor of an otherwise well-formed chain.
#[derive(Clone, Copy, Debug)]
pub enum Mutation {
    FlipWrite,
    Addr(Addr),
    Len(u32),
    Next(Next),
    Flags(u16),
    /// Drop the descriptor.
    Remove,
    /// Repeat it.
    Duplicate,
}

pub fn mutation() -> impl Strategy<Value = (usize, Mutation)> {
    let next = prop_oneof![
        Just(Next::Stop),
        Just(Next::Follow),
        (0u16..QUEUE_SIZE).prop_map(Next::To),
        any::<u16>().prop_map(Next::To),
    ];
    let flags = prop_oneof![Just(F_INDIRECT), any::<u16>()];
    (
        0usize..8,
        prop_oneof![
            3 => Just(Mutation::FlipWrite),
            3 => addr().prop_map(Mutation::Addr),
            3 => len().prop_map(Mutation::Len),
            2 => next.prop_map(Mutation::Next),
            1 => flags.prop_map(Mutation::Flags),
            1 => Just(Mutation::Remove),
            1 => Just(Mutation::Duplicate),
        ],
    )
}

/// An indirect table holding the chain instead of the descriptor table.
#[derive(Clone, Copy, Debug)]
pub struct Indirect {
    /// Where the table is; a fresh slot when None.
    pub addr: Option<Addr>,
    /// Added to the table's true length in bytes (misaligned, short, long).
    pub len_delta: i32,
    /// More flag bits on the descriptor pointing at the table.
    pub flags: u16,
}

pub fn indirect() -> impl Strategy<Value = Option<Indirect>> {
    let delta = prop_oneof![4 => Just(0i32), 1 => -64i32..64, 1 => any::<i32>()];
    let table = (
        prop_oneof![4 => Just(None), 1 => addr().prop_map(Some)],
        delta,
        prop_oneof![4 => Just(0u16), 1 => any::<u16>()],
    )
        .prop_map(|(addr, len_delta, flags)| {
            Some(Indirect {
                addr,
                len_delta,
                flags,
            })
        });
    prop_oneof![5 => Just(None), 1 => table]
}

#[derive(Clone, Debug)]
pub struct ChainSpec {
    pub descs: Vec<DescSpec>,
    pub indirect: Option<Indirect>,
}

impl ChainSpec {
    /// A well-formed chain with `mutations` applied in order.
    pub fn mutated(
        mut descs: Vec<DescSpec>,
        mutations: &[(usize, Mutation)],
        indirect: Option<Indirect>,
    ) -> Self {
        for &(i, m) in mutations {
            if descs.is_empty() {
                break;
            }
            let i = i % descs.len();
            let d = &mut descs[i];
            match m {
                Mutation::FlipWrite => d.write = !d.write,
                Mutation::Addr(a) => d.addr = a,
                Mutation::Len(l) => d.len = l,
                Mutation::Next(n) => d.next = n,
                Mutation::Flags(f) => d.flags |= f,
                Mutation::Remove => {
                    descs.remove(i);
                }
                Mutation::Duplicate => {
                    let copy = *d;
                    descs.insert(i, copy);
                }
            }
        }
        ChainSpec { descs, indirect }
    }
}

/// How the avail ring is filled beyond the chains' heads.
#[derive(Clone, Debug)]
pub struct AvailSpec {
    /// More heads: repeats and indices past the table.
    pub extra_heads: Vec<u16>,
    /// An avail index other than the number of heads (possibly more than a
    /// queue ahead).
    pub idx: Option<u16>,
    /// The driver asked for EVENT_IDX.
    pub event_idx: bool,
}

pub fn avail() -> impl Strategy<Value = AvailSpec> {
    let heads = prop_oneof![
        4 => Just(Vec::new()),
        1 => prop::collection::vec(prop_oneof![0u16..QUEUE_SIZE, any::<u16>()], 1..4),
    ];
    let idx = prop_oneof![
        12 => Just(None),
        1 => (0u16..=QUEUE_SIZE).prop_map(Some),
        1 => any::<u16>().prop_map(Some),
    ];
    (heads, idx, any::<bool>()).prop_map(|(extra_heads, idx, event_idx)| AvailSpec {
        extra_heads,
        idx,
        event_idx,
    })
}

/// A queue's rings in guest memory, written by hand as a driver would.
pub struct Rings {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Rings {
    /// Rings of QUEUE_SIZE entries at `base` (below RINGS_END).
    pub fn at(base: u64) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(QUEUE_SIZE);
        let used = (avail + 6 + 2 * u64::from(QUEUE_SIZE) + 3) & !3;
        assert!(used + 6 + 8 * u64::from(QUEUE_SIZE) <= base + 0x1000);
        Rings { desc, avail, used }
    }

    pub fn queue(&self, mem: &GuestMemoryMmap, event_idx: bool) -> Queue {
        use virtio_queue::QueueT;
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        assert!(q.is_valid(mem));
        q
    }

    /// The used ring, which the device may write (with avail_event after it).
    pub fn used_range(&self) -> (u64, u64) {
        (self.used, 6 + 8 * u64::from(QUEUE_SIZE))
    }

    pub fn write_desc(&self, mem: &GuestMemoryMmap, table: u64, i: u16, d: (u64, u32, u16, u16)) {
        let (addr, len, flags, next) = d;
        let at = GuestAddress(table + 16 * u64::from(i));
        mem.write_obj(Descriptor::new(addr, len, flags, next), at)
            .unwrap();
    }

    pub fn avail_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.avail + 2)).unwrap()
    }

    pub fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// Puts `head` in the next avail slot and publishes it.
    pub fn push(&self, mem: &GuestMemoryMmap, head: u16) {
        let idx = self.avail_idx(mem);
        let slot = u64::from(idx % QUEUE_SIZE);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.set_avail_idx(mem, idx.wrapping_add(1));
    }

    /// Sets the used index, as a driver recovering a device it reset does.
    pub fn set_used_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.used + 2)).unwrap();
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// (head, len) of used entry `i` (counting from the start, wrapping).
    pub fn used_entry(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % QUEUE_SIZE);
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    /// Lays `chains` out from descriptor 0 (as many as fit) and makes them
    /// available as `avail` says.
    pub fn lay_out(
        &self,
        mem: &GuestMemoryMmap,
        alloc: &mut Alloc,
        chains: &[ChainSpec],
        avail: &AvailSpec,
    ) -> Laid {
        let mut cursor = 0u16;
        let mut laid = Laid::default();
        let mut heads = Vec::new();
        for c in chains {
            let ring_descs = if c.indirect.is_some() {
                1
            } else {
                c.descs.len() as u16
            };
            if c.descs.is_empty() || cursor + ring_descs > QUEUE_SIZE {
                continue;
            }
            let resolved: Vec<(u64, u32, bool)> = c
                .descs
                .iter()
                .map(|d| (d.addr.resolve(alloc), d.len, d.write))
                .collect();
            let (table, first) = match c.indirect {
                Some(ind) => {
                    let at = ind.addr.unwrap_or(Addr::Fresh(0)).resolve(alloc);
                    let len = (16 * c.descs.len() as i64 + i64::from(ind.len_delta)) as u32;
                    laid.tables.push((at, 16 * c.descs.len() as u64));
                    self.write_desc(mem, self.desc, cursor, (at, len, F_INDIRECT | ind.flags, 0));
                    (at, 0)
                }
                None => (self.desc, cursor),
            };
            for (i, (d, &(addr, len, write))) in c.descs.iter().zip(&resolved).enumerate() {
                let mut flags = d.flags;
                if write {
                    flags |= F_WRITE;
                }
                let next = match d.next {
                    Next::Follow => {
                        flags |= F_NEXT;
                        first + i as u16 + 1
                    }
                    Next::Stop => {
                        flags &= !F_NEXT;
                        0
                    }
                    Next::To(n) => {
                        flags |= F_NEXT;
                        n
                    }
                };
                let idx = first + i as u16;
                // An indirect table may lie outside guest memory: nothing to write.
                if mem.check_range(GuestAddress(table), 16 * (usize::from(idx) + 1)) {
                    self.write_desc(mem, table, idx, (addr, len, flags, next));
                }
            }
            heads.push(cursor);
            cursor += ring_descs;
            laid.chains.push((c.clone(), resolved));
        }
        heads.extend(&avail.extra_heads);
        for &h in heads.iter().take(usize::from(QUEUE_SIZE)) {
            self.push(mem, h);
        }
        if let Some(idx) = avail.idx {
            self.set_avail_idx(mem, idx);
        }
        laid.tables.extend(self.indirect_refs(mem));
        laid
    }

    /// Every (address, length) that a descriptor in the table names as an
    /// indirect table. Mutated flags put INDIRECT mid-chain too, and the device
    /// then reads a table wherever that descriptor points, possibly another
    /// chain's writable buffer (found by `cargo xtask fuzz`).
    fn indirect_refs(&self, mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
        (0..QUEUE_SIZE)
            .filter_map(|i| {
                let at = GuestAddress(self.desc + 16 * u64::from(i));
                let d: Descriptor = mem.read_obj(at).ok()?;
                (d.flags() & F_INDIRECT != 0).then(|| (d.addr().0, u64::from(d.len())))
            })
            .collect()
    }
}

/// A descriptor's buffer as laid out: (address, length, device-writable).
pub type Buf = (u64, u32, bool);

/// What [`Rings::lay_out`] put in guest memory.
#[derive(Default)]
pub struct Laid {
    /// Each laid chain with its resolved buffers (address, length, writable).
    pub chains: Vec<(ChainSpec, Vec<Buf>)>,
    /// Indirect tables, laid out or merely named by a descriptor: (address, bytes).
    pub tables: Vec<(u64, u64)>,
}

/// One chain as the device will see it: its head and descriptors
/// (address, length, device-writable).
pub struct Walked {
    pub head: u16,
    pub descs: Vec<(u64, u32, bool)>,
}

impl Walked {
    pub fn writable(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.descs.iter().filter(|d| d.2).map(|d| (d.0, d.1))
    }

    pub fn writable_bytes(&self) -> u64 {
        self.writable().map(|(_, l)| u64::from(l)).sum()
    }
}

/// The chains a device popping `queue` now would see, walked by virtio-queue
/// itself (the device's own parser); None when the avail index is invalid (more
/// than a queue ahead), so that nothing may be popped.
pub fn walk(mem: &GuestMemoryMmap, mut queue: Queue) -> Option<Vec<Walked>> {
    let iter = queue.iter(mem).ok()?;
    Some(
        iter.map(|chain| Walked {
            head: chain.head_index(),
            descs: chain
                .map(|d| (d.addr().0, d.len(), d.is_write_only()))
                .collect(),
        })
        .collect(),
    )
}

/// Whether a device-writable buffer of `chains` reaches into the rings (the
/// descriptor tables, avail and used rings below [`RINGS_END`]): the guest
/// let the device overwrite its own rings, so what they say afterwards is not
/// the test's to predict (a status byte lands in a used entry's head; found by
/// `cargo xtask fuzz`). Such cases check that nothing hangs, the device
/// resets, and a fresh device serves good requests.
pub fn clobbers_rings(chains: &[Walked]) -> bool {
    chains
        .iter()
        .flat_map(|c| c.writable())
        .any(|(a, l)| overlaps((a, u64::from(l)), (0, RINGS_END)))
}

/// Every device-writable range of `chains` (clamped at the top of the address
/// space), for [`super::Snapshot::only_changed_in`].
pub fn writable_ranges(chains: &[Walked]) -> Vec<(u64, u64)> {
    chains
        .iter()
        .flat_map(|c| c.writable())
        .map(|(a, l)| (a, u64::from(l).min(u64::MAX - a)))
        .collect()
}

/// Whether two ranges share a byte.
pub fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.1 > 0 && b.1 > 0 && a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// Whether no device-writable buffer overlaps another buffer or an indirect
/// table, and no indirect table lies in the rings (whose used ring the device
/// writes): then the device reads what the test laid out, and each writable
/// byte belongs to one buffer, so exact results can be checked.
pub fn disjoint(chains: &[Walked], tables: &[(u64, u64)]) -> bool {
    if tables.iter().any(|&t| overlaps(t, (0, RINGS_END))) {
        return false;
    }
    let all: Vec<(u64, u64, bool)> = chains
        .iter()
        .flat_map(|c| c.descs.iter())
        .map(|&(a, l, w)| (a, u64::from(l).min(u64::MAX - a), w))
        .collect();
    all.iter().enumerate().all(|(i, &(a, l, w))| {
        !w || (tables.iter().all(|&t| !overlaps((a, l), t))
            && all
                .iter()
                .enumerate()
                .all(|(j, &(b, m, _))| i == j || !overlaps((a, l), (b, m))))
    })
}
