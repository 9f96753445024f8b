//! Parsing a virtio-blk request out of a descriptor chain the guest controls.
//!
//! A request is a 16-byte device-readable header (type, reserved, sector), data
//! buffers (device-writable for reads, readable otherwise), and a final 1-byte
//! device-writable status. Anything else is the guest's mistake: it gets an I/O
//! error status when there is somewhere to write one, and is dropped otherwise.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

pub const SECTOR_SIZE: u64 = 512;
const HEADER_SIZE: u32 = 16;
/// Largest data transfer one request may ask for.
pub const MAX_REQUEST_BYTES: u64 = 64 << 20;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
const VIRTIO_BLK_T_DISCARD: u32 = 11;
const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

impl RequestType {
    fn from_raw(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            VIRTIO_BLK_T_DISCARD => RequestType::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
            other => RequestType::Unsupported(other),
        }
    }

    /// Whether the data buffers are written by the device.
    fn device_writes_data(self) -> bool {
        matches!(self, RequestType::In | RequestType::GetId)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub head: u16,
    pub kind: RequestType,
    pub sector: u64,
    /// Data buffers in guest memory, in order.
    pub data: Vec<(GuestAddress, u32)>,
    pub status: GuestAddress,
}

impl Request {
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|(_, l)| u64::from(*l)).sum()
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("empty descriptor chain")]
    Empty,
    #[error("the last descriptor is not a device-writable status byte")]
    NoStatus,
    #[error("the header descriptor is missing, too short or device-writable")]
    BadHeader,
    #[error("a data descriptor points the wrong way for the request type")]
    DataDirection,
    #[error("the request reads or writes outside guest memory")]
    OutOfMemory,
    #[error("the request moves more than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
}

/// A request that cannot be served, with where its status goes (if anywhere).
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    pub head: u16,
    pub status: Option<GuestAddress>,
    pub error: RequestError,
}

/// Parses the request in `chain`, whose buffers live in `mem`.
pub fn parse<M>(chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> Result<Request, Rejected>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let head = chain.head_index();
    let descs: Vec<_> = chain.collect();
    let reject = |status, error| Rejected {
        head,
        status,
        error,
    };
    let (status_desc, rest) = descs
        .split_last()
        .ok_or(reject(None, RequestError::Empty))?;
    if !status_desc.is_write_only() || status_desc.len() < 1 {
        return Err(reject(None, RequestError::NoStatus));
    }
    // Status byte: the last byte of the last descriptor.
    let status = GuestAddress(
        status_desc
            .addr()
            .0
            .checked_add(u64::from(status_desc.len()) - 1)
            .ok_or(reject(None, RequestError::OutOfMemory))?,
    );
    if !mem.address_in_range(status) {
        return Err(reject(None, RequestError::OutOfMemory));
    }
    let reject = |error| reject(Some(status), error);

    let (header, data_descs) = rest.split_first().ok_or(reject(RequestError::BadHeader))?;
    if header.is_write_only() || header.len() < HEADER_SIZE {
        return Err(reject(RequestError::BadHeader));
    }
    let raw_type: u32 = mem
        .read_obj(header.addr())
        .map_err(|_| reject(RequestError::OutOfMemory))?;
    let sector: u64 = mem
        .read_obj(GuestAddress(header.addr().0.wrapping_add(8)))
        .map_err(|_| reject(RequestError::OutOfMemory))?;
    let kind = RequestType::from_raw(u32::from_le(raw_type));

    let mut data = Vec::with_capacity(data_descs.len());
    let mut total = 0u64;
    for d in data_descs {
        // An unknown type gets UNSUPP whichever way its data points.
        let known = !matches!(kind, RequestType::Unsupported(_));
        if known && d.is_write_only() != kind.device_writes_data() {
            return Err(reject(RequestError::DataDirection));
        }
        total += u64::from(d.len());
        if total > MAX_REQUEST_BYTES {
            return Err(reject(RequestError::TooLarge));
        }
        // Every byte, not just the ends: a buffer may straddle a hole in
        // guest memory (found by `cargo xtask fuzz`).
        if !vm_memory::GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return Err(reject(RequestError::OutOfMemory));
        }
        data.push((d.addr(), d.len()));
    }
    Ok(Request {
        head,
        kind,
        sector: u64::from_le(sector),
        data,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueOwnedT;

    const WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// Builds one chain and parses it.
    fn parse_chain(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<Request, Rejected> {
        let mq = MockSplitQueue::new(mem, 16);
        mq.build_desc_chain(descs).unwrap();
        let mut q: virtio_queue::Queue = mq.create_queue().unwrap();
        let chain = q.iter(mem).unwrap().next().unwrap();
        parse(chain, mem)
    }

    fn header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        mem.write_obj(kind, GuestAddress(at)).unwrap();
        mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    #[test]
    fn parses_a_read() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 7);
        let r = parse_chain(
            &m,
            &[
                d(0x1000, 16, NEXT, 1),
                d(0x2000, 4096, WRITE | NEXT, 2),
                d(0x3000, 1, WRITE, 0),
            ],
        )
        .unwrap();
        assert_eq!(r.kind, RequestType::In);
        assert_eq!(r.sector, 7);
        assert_eq!(r.data, vec![(GuestAddress(0x2000), 4096)]);
        assert_eq!(r.status, GuestAddress(0x3000));
        assert_eq!(r.data_len(), 4096);
    }

    #[test]
    fn a_buffer_across_a_hole_in_guest_memory_is_rejected() {
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x20_0000), 0x10_0000),
        ])
        .unwrap();
        for kind in [VIRTIO_BLK_T_IN, 99] {
            header(&m, 0x1000, kind, 0);
            // Both ends are guest memory; the middle is the hole.
            let r = parse_chain(
                &m,
                &[
                    d(0x1000, 16, NEXT, 1),
                    d(0x0f_f000, 0x10_2000, WRITE | NEXT, 2),
                    d(0x3000, 1, WRITE, 0),
                ],
            );
            assert!(
                matches!(
                    &r,
                    Err(Rejected {
                        error: RequestError::OutOfMemory,
                        ..
                    })
                ),
                "kind {kind}: {r:?}"
            );
        }
    }

    #[test]
    fn malformed_chains_are_rejected_precisely() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0);
        let status = Some(GuestAddress(0x3000));
        let cases: Vec<(Vec<RawDescriptor>, Option<GuestAddress>, RequestError)> = vec![
            // Status not writable.
            (
                vec![d(0x1000, 16, NEXT, 1), d(0x3000, 1, 0, 0)],
                None,
                RequestError::NoStatus,
            ),
            // Header only (it is the last, read-only descriptor).
            (vec![d(0x1000, 16, 0, 0)], None, RequestError::NoStatus),
            // No header before the status.
            (
                vec![d(0x3000, 1, WRITE, 0)],
                status,
                RequestError::BadHeader,
            ),
            // Header too short.
            (
                vec![d(0x1000, 8, NEXT, 1), d(0x3000, 1, WRITE, 0)],
                status,
                RequestError::BadHeader,
            ),
            // A write whose data is device-writable.
            (
                vec![
                    d(0x1000, 16, NEXT, 1),
                    d(0x2000, 512, WRITE | NEXT, 2),
                    d(0x3000, 1, WRITE, 0),
                ],
                status,
                RequestError::DataDirection,
            ),
            // Data outside guest memory.
            (
                vec![
                    d(0x1000, 16, NEXT, 1),
                    d(0xff000, 0x2000, NEXT, 2),
                    d(0x3000, 1, WRITE, 0),
                ],
                status,
                RequestError::OutOfMemory,
            ),
            // Status outside guest memory: nowhere to report.
            (
                vec![d(0x1000, 16, NEXT, 1), d(0x20_0000, 1, WRITE, 0)],
                None,
                RequestError::OutOfMemory,
            ),
        ];
        for (descs, want_status, want) in cases {
            let err = parse_chain(&m, &descs).unwrap_err();
            assert_eq!((err.status, &err.error), (want_status, &want), "{descs:?}");
        }
    }

    #[test]
    fn huge_requests_are_refused() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x500_0000)]).unwrap();
        header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0);
        let r = parse_chain(
            &m,
            &[
                d(0x1000, 16, NEXT, 1),
                d(0x10_0000, 0x300_0000, NEXT, 2),
                d(0x10_0000, 0x300_0000, NEXT, 3),
                d(0x3000, 1, WRITE, 0),
            ],
        );
        assert_eq!(r.unwrap_err().error, RequestError::TooLarge);
    }

    #[test]
    fn unknown_types_parse_as_unsupported() {
        let m = mem();
        header(&m, 0x1000, 99, 0);
        let r = parse_chain(&m, &[d(0x1000, 16, NEXT, 1), d(0x3000, 1, WRITE, 0)]).unwrap();
        assert_eq!(r.kind, RequestType::Unsupported(99));
    }
}
