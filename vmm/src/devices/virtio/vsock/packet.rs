//! The virtio-vsock packet codec: the 44-byte `virtio_vsock_hdr` and moving whole packets
//! between descriptor chains and host buffers (virtio 1.2, section 5.10.6).
//!
//! A packet on the TX queue is the header followed by `len` payload bytes, spread over the
//! chain's device-readable descriptors in any layout; one on the RX queue goes into the
//! device-writable descriptors the same way. Everything read here comes from the guest and
//! is checked: short headers, payloads beyond the chain or beyond [`MAX_PKT_PAYLOAD`].

use crate::memory::GuestMemoryMmap;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

/// Bytes of a `virtio_vsock_hdr`.
pub const HDR_SIZE: usize = 44;
/// The largest payload zvm accepts or sends in one packet (Linux sends at most 64 KiB).
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// Most descriptors zvm walks in one chain.
const MAX_DESCRIPTORS: usize = 256;

/// The CID of the host.
pub const HOST_CID: u64 = 2;
/// `type`: a stream socket, the only type zvm supports.
pub const TYPE_STREAM: u16 = 1;

/// The packet operations (`op`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection refused or reset.
    pub const RST: u16 = 3;
    /// The sender will not receive and/or send any more (see [`super::shutdown`]).
    pub const SHUTDOWN: u16 = 4;
    /// Payload data.
    pub const RW: u16 = 5;
    /// Here is my credit (`buf_alloc`, `fwd_cnt`).
    pub const CREDIT_UPDATE: u16 = 6;
    /// Please send me your credit.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// Flags of an `op::SHUTDOWN` packet.
pub mod shutdown {
    /// The sender will receive no more data.
    pub const RCV: u32 = 1;
    /// The sender will send no more data.
    pub const SEND: u32 = 2;
    /// Both.
    pub const BOTH: u32 = RCV | SEND;
}

/// Errors reading or writing a packet. Logged; the packet is dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// Fewer device-readable bytes than a header.
    #[error("the chain holds {0} header bytes; a header needs {HDR_SIZE}")]
    ShortHeader(usize),
    /// A payload length over [`MAX_PKT_PAYLOAD`].
    #[error("payload length {0} exceeds the {MAX_PKT_PAYLOAD}-byte limit")]
    TooLong(u32),
    /// The header announces more payload than the chain holds.
    #[error("the header announces {announced} payload bytes but the chain holds {available}")]
    Truncated {
        /// `len` from the header.
        announced: u32,
        /// Readable bytes after the header.
        available: usize,
    },
    /// The device-writable buffers cannot hold the packet.
    #[error("the RX buffers hold {available} bytes; the packet needs {needed}")]
    NoRoom {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A descriptor points outside guest memory.
    #[error("a buffer lies outside guest memory")]
    Memory,
}

/// A `virtio_vsock_hdr`, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload bytes after the header.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation ([`op`]).
    pub op: u16,
    /// Operation flags ([`shutdown`] for SHUTDOWN).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

impl VsockHeader {
    /// Decodes the little-endian wire form.
    pub fn decode(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VsockHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the little-endian wire form.
    pub fn encode(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A whole packet: header and payload (`payload.len() == hdr.len`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packet {
    /// The header.
    pub hdr: VsockHeader,
    /// The payload.
    pub payload: Vec<u8>,
}

/// The (address, length) pairs of a chain's device-readable and device-writable buffers.
/// Guest buffers as (address, length) pairs.
type Bufs = Vec<(u64, u32)>;

fn split<I: IntoIterator<Item = Descriptor>>(chain: I) -> (Bufs, Bufs) {
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    for desc in chain.into_iter().take(MAX_DESCRIPTORS) {
        let part = (desc.addr().0, desc.len());
        if desc.is_write_only() {
            writable.push(part);
        } else {
            readable.push(part);
        }
    }
    (readable, writable)
}

/// Calls `f(guest address, offset in the stream, length)` for the `count` bytes from byte
/// `skip` of the stream that `bufs` form.
fn for_range<F>(bufs: &[(u64, u32)], skip: usize, count: usize, mut f: F) -> Result<(), PacketError>
where
    F: FnMut(GuestAddress, usize, usize) -> Result<(), GuestMemoryError>,
{
    let (mut pos, mut done) = (0usize, 0usize);
    for &(addr, len) in bufs {
        let len = len as usize;
        let start = (skip + done).max(pos);
        if done < count && start < pos + len {
            let n = (pos + len - start).min(count - done);
            let at = addr
                .checked_add((start - pos) as u64)
                .ok_or(PacketError::Memory)?;
            f(GuestAddress(at), done, n).map_err(|_| PacketError::Memory)?;
            done += n;
        }
        pos += len;
    }
    Ok(())
}

fn total(bufs: &[(u64, u32)]) -> usize {
    bufs.iter().map(|&(_, len)| len as usize).sum()
}

/// Reads the packet in the device-readable buffers of a TX chain.
pub fn read_packet<I: IntoIterator<Item = Descriptor>>(
    mem: &GuestMemoryMmap,
    chain: I,
) -> Result<Packet, PacketError> {
    let (readable, _) = split(chain);
    let available = total(&readable);
    if available < HDR_SIZE {
        return Err(PacketError::ShortHeader(available));
    }
    let mut raw = [0u8; HDR_SIZE];
    for_range(&readable, 0, HDR_SIZE, |addr, at, n| {
        mem.read_slice(&mut raw[at..at + n], addr)
    })?;
    let hdr = VsockHeader::decode(&raw);
    if hdr.len as usize > MAX_PKT_PAYLOAD {
        return Err(PacketError::TooLong(hdr.len));
    }
    if hdr.len as usize > available - HDR_SIZE {
        return Err(PacketError::Truncated {
            announced: hdr.len,
            available: available - HDR_SIZE,
        });
    }
    let mut payload = vec![0u8; hdr.len as usize];
    for_range(&readable, HDR_SIZE, payload.len(), |addr, at, n| {
        mem.read_slice(&mut payload[at..at + n], addr)
    })?;
    Ok(Packet { hdr, payload })
}

/// Bytes of payload an RX chain can take after the header (0 if it cannot hold a header),
/// at most [`MAX_PKT_PAYLOAD`].
pub fn rx_payload_room<I: IntoIterator<Item = Descriptor>>(chain: I) -> usize {
    let (_, writable) = split(chain);
    total(&writable)
        .saturating_sub(HDR_SIZE)
        .min(MAX_PKT_PAYLOAD)
}

/// Writes `pkt` into the device-writable buffers of an RX chain; returns the bytes written.
pub fn write_packet<I: IntoIterator<Item = Descriptor>>(
    mem: &GuestMemoryMmap,
    chain: I,
    pkt: &Packet,
) -> Result<u32, PacketError> {
    let (_, writable) = split(chain);
    let needed = HDR_SIZE + pkt.payload.len();
    let available = total(&writable);
    if available < needed {
        return Err(PacketError::NoRoom { needed, available });
    }
    let raw = pkt.hdr.encode();
    for_range(&writable, 0, HDR_SIZE, |addr, at, n| {
        mem.write_slice(&raw[at..at + n], addr)
    })?;
    for_range(&writable, HDR_SIZE, pkt.payload.len(), |addr, at, n| {
        mem.write_slice(&pkt.payload[at..at + n], addr)
    })?;
    Ok(needed as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::*;
    use virtio_queue::mock::MockSplitQueue;

    fn sample() -> VsockHeader {
        VsockHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1234,
            dst_port: 5678,
            len: 5,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 77,
        }
    }

    #[test]
    fn header_round_trips_in_little_endian() {
        let h = sample();
        let raw = h.encode();
        assert_eq!(&raw[0..8], &3u64.to_le_bytes());
        assert_eq!(&raw[30..32], &op::RW.to_le_bytes());
        assert_eq!(VsockHeader::decode(&raw), h);
    }

    #[test]
    fn packets_split_across_descriptors_are_read_and_written() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
        let mut raw = sample().encode().to_vec();
        raw.extend_from_slice(b"hello");
        mem.write_slice(&raw[..10], GuestAddress(DATA)).expect("w");
        mem.write_slice(&raw[10..], GuestAddress(DATA + 0x1000))
            .expect("w");
        let chain = build_chain(
            &mock,
            &[
                desc(DATA, 10, 0),
                desc(DATA + 0x1000, 39, 0),
                desc(DATA + 0x2000, 64, F_WRITE),
            ],
        );
        let pkt = read_packet(&mem, chain).expect("packet");
        assert_eq!(pkt.hdr, sample());
        assert_eq!(pkt.payload, b"hello");

        let chain = build_chain(
            &mock,
            &[
                desc(DATA + 0x3000, 20, F_WRITE),
                desc(DATA + 0x4000, 100, F_WRITE),
            ],
        );
        assert_eq!(rx_payload_room(chain), 76);
        let chain = build_chain(
            &mock,
            &[
                desc(DATA + 0x3000, 20, F_WRITE),
                desc(DATA + 0x4000, 100, F_WRITE),
            ],
        );
        assert_eq!(write_packet(&mem, chain, &pkt), Ok(49));
        let chain = build_chain(
            &mock,
            &[desc(DATA + 0x3000, 20, 0), desc(DATA + 0x4000, 29, 0)],
        );
        let mut copy = vec![0u8; 49];
        mem.read_slice(&mut copy[..20], GuestAddress(DATA + 0x3000))
            .expect("r");
        mem.read_slice(&mut copy[20..], GuestAddress(DATA + 0x4000))
            .expect("r");
        assert_eq!(copy, raw);
        assert_eq!(read_packet(&mem, chain).expect("re-read"), pkt);
    }

    #[test]
    fn malformed_packets_are_refused() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
        let chain = build_chain(&mock, &[desc(DATA, 40, 0)]);
        assert_eq!(read_packet(&mem, chain), Err(PacketError::ShortHeader(40)));
        let mut h = sample();
        h.len = 100;
        mem.write_slice(&h.encode(), GuestAddress(DATA)).expect("w");
        let chain = build_chain(
            &mock,
            &[desc(DATA, 44 + 50, 0), desc(DATA + 0x1000, 100, F_WRITE)],
        );
        assert_eq!(
            read_packet(&mem, chain),
            Err(PacketError::Truncated {
                announced: 100,
                available: 50
            })
        );
        h.len = u32::MAX;
        mem.write_slice(&h.encode(), GuestAddress(DATA)).expect("w");
        let chain = build_chain(&mock, &[desc(DATA, 0x10_0000, 0)]);
        assert_eq!(
            read_packet(&mem, chain),
            Err(PacketError::TooLong(u32::MAX))
        );
        let chain = build_chain(&mock, &[desc(MEM_SIZE - 8, 64, 0)]);
        assert_eq!(read_packet(&mem, chain), Err(PacketError::Memory));
        let chain = build_chain(&mock, &[desc(u64::MAX - 8, 64, 0)]);
        assert_eq!(read_packet(&mem, chain), Err(PacketError::Memory));
        let chain = build_chain(&mock, &[desc(DATA, 30, F_WRITE)]);
        assert!(matches!(
            write_packet(&mem, chain, &Packet::default()),
            Err(PacketError::NoRoom { .. })
        ));
        let chain = build_chain(&mock, &[desc(DATA, 30, F_WRITE)]);
        assert_eq!(rx_payload_room(chain), 0);
    }
}
