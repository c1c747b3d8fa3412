//! virtio-blk requests: parsing a descriptor chain and serving it from a [`BlockBackend`].
//!
//! A request is a 16-byte header (type, reserved, sector), data, and a one-byte status the
//! device writes last (virtio 1.2, section 5.2.6). With VIRTIO_F_VERSION_1 the driver may
//! split or merge those parts across descriptors freely, so the chain is treated as two
//! byte streams: the device-readable descriptors (header, then OUT data) followed by the
//! device-writable ones (IN data, then the status byte at the very end).
//!
//! Everything here comes from the guest: nothing is trusted and nothing panics. A chain
//! whose status byte cannot be located is returned with length 0; any other problem is
//! answered with VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP.

use super::BlockBackend;
use crate::memory::GuestMemoryMmap;
use crate::metrics::BlockMetrics;
use std::sync::Arc;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

/// Read sectors into device-writable buffers.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write device-readable buffers to sectors.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Make earlier writes durable.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Return the device's 20-byte id string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// The request succeeded.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// The request failed.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// The request type is not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Bytes per sector, whatever the device's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the id GET_ID returns.
pub const ID_BYTES: usize = 20;
/// Most data bytes one request may move; the device's seg_max and size_max keep Linux
/// below it, and it bounds the bounce buffer a guest can make the VMM allocate.
pub const MAX_DATA_BYTES: u64 = 1 << 20;
/// Most descriptors one chain may have (the queue size bounds a direct chain; an indirect
/// table could be longer).
pub const MAX_DESCRIPTORS: usize = 256;

const HEADER_BYTES: u64 = 16;

/// Why a request could not be served. Logged; the guest sees a status byte.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain does not end in a device-writable byte, so no status can be returned.
    #[error("the chain has no device-writable status byte")]
    NoStatus,
    /// The chain was cut short: a descriptor loop, or a next index or table out of range.
    #[error("the descriptor chain does not end (loop or invalid next descriptor)")]
    Unterminated,
    /// More descriptors than a request may have.
    #[error("the chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// A device-readable descriptor after a device-writable one.
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    /// Fewer than 16 device-readable bytes.
    #[error("the request header is {0} bytes; it needs 16")]
    ShortHeader(u64),
    /// Data in the direction the request type does not use.
    #[error("request type {kind} has {bytes} bytes of data in the wrong direction")]
    WrongDirection {
        /// Request type.
        kind: u32,
        /// Misplaced bytes.
        bytes: u64,
    },
    /// More data than [`MAX_DATA_BYTES`].
    #[error("{0} bytes of data exceed the {MAX_DATA_BYTES}-byte limit per request")]
    TooLarge(u64),
    /// Data that is not a whole number of sectors.
    #[error("{0} bytes of data are not a multiple of {SECTOR_SIZE}")]
    Unaligned(u64),
    /// Sectors beyond the end of the disk (or an offset that overflows).
    #[error("sector {sector} + {bytes} bytes lies beyond the disk's {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Data length.
        bytes: u64,
        /// Disk size in sectors.
        capacity: u64,
    },
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// GET_ID without room for the id.
    #[error("GET_ID without a data buffer")]
    NoIdBuffer,
    /// A type the device does not implement.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// A buffer outside guest memory.
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
    /// The backing file failed.
    #[error("backend: {0}")]
    Backend(#[from] std::io::Error),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// Guest buffers seen as one byte stream.
#[derive(Debug, Default)]
struct Segments(Vec<(GuestAddress, u64)>);

impl Segments {
    fn len(&self) -> u64 {
        self.0.iter().map(|(_, len)| len).sum()
    }

    /// Calls `f(address, range in the stream)` for each piece of `[skip, skip + count)`.
    fn for_each<F>(&self, skip: u64, count: u64, mut f: F) -> Result<(), GuestMemoryError>
    where
        F: FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), GuestMemoryError>,
    {
        let (mut pos, mut done) = (0u64, 0u64);
        for &(addr, len) in &self.0 {
            if done == count {
                break;
            }
            let start = skip.max(pos);
            let end = pos.saturating_add(len).min(skip.saturating_add(count));
            if start < end {
                let at = addr
                    .0
                    .checked_add(start - pos)
                    .ok_or(GuestMemoryError::InvalidGuestAddress(addr))?;
                let n = end - start;
                f(GuestAddress(at), done as usize..(done + n) as usize)?;
                done += n;
            }
            pos = pos.saturating_add(len);
        }
        Ok(())
    }

    fn read(
        &self,
        mem: &GuestMemoryMmap,
        skip: u64,
        out: &mut [u8],
    ) -> Result<(), GuestMemoryError> {
        self.for_each(skip, out.len() as u64, |addr, range| {
            mem.read_slice(&mut out[range], addr)
        })
    }

    fn write(&self, mem: &GuestMemoryMmap, skip: u64, data: &[u8]) -> Result<(), GuestMemoryError> {
        self.for_each(skip, data.len() as u64, |addr, range| {
            mem.write_slice(&data[range], addr)
        })
    }
}

/// A chain split into its parts; `status` is the guest address of the status byte.
#[derive(Debug)]
struct Parts {
    readable: Segments,
    writable: Segments,
    status: GuestAddress,
    /// A device-readable descriptor followed a device-writable one.
    misordered: bool,
}

fn split_chain<I: IntoIterator<Item = Descriptor>>(chain: I) -> Result<Parts, RequestError> {
    let mut descs = Vec::new();
    for desc in chain {
        if descs.len() == MAX_DESCRIPTORS {
            return Err(RequestError::TooManyDescriptors);
        }
        descs.push(desc);
    }
    let last = descs.last().ok_or(RequestError::NoStatus)?;
    if last.has_next() {
        // The iterator stopped before the chain ended.
        return Err(RequestError::Unterminated);
    }
    if !last.is_write_only() || last.len() == 0 {
        return Err(RequestError::NoStatus);
    }
    let status = last
        .addr()
        .0
        .checked_add(u64::from(last.len()) - 1)
        .ok_or(RequestError::NoStatus)?;
    let mut parts = Parts {
        readable: Segments::default(),
        writable: Segments::default(),
        status: GuestAddress(status),
        misordered: false,
    };
    let body = &descs[..descs.len() - 1];
    for desc in body {
        let seg = (desc.addr(), u64::from(desc.len()));
        if desc.is_write_only() {
            parts.writable.0.push(seg);
        } else if parts.writable.0.is_empty() {
            parts.readable.0.push(seg);
        } else {
            parts.misordered = true;
        }
    }
    // The last descriptor contributes its bytes before the status byte.
    if last.len() > 1 {
        parts
            .writable
            .0
            .push((last.addr(), u64::from(last.len()) - 1));
    }
    Ok(parts)
}

/// A disk as the request path sees it: its backend, whether it is read-only, its id.
pub struct Disk {
    /// Where sectors live.
    pub backend: Box<dyn BlockBackend>,
    /// Refuse OUT requests (the host enforces this whatever the guest negotiated).
    pub read_only: bool,
    /// The GET_ID answer, NUL-padded.
    pub id: [u8; ID_BYTES],
    /// Bounce buffer of [`MAX_DATA_BYTES`], allocated once, where the disk is created,
    /// so that serving requests allocates nothing.
    buf: Vec<u8>,
    /// Requests and bytes served.
    pub metrics: Arc<BlockMetrics>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Disk({} sectors, read_only={})",
            self.capacity(),
            self.read_only
        )
    }
}

impl Disk {
    /// A disk over `backend`; `id` is the drive id, cut to 20 bytes.
    pub fn new(backend: Box<dyn BlockBackend>, read_only: bool, id: &str) -> Self {
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Disk {
            backend,
            read_only,
            id: id_bytes,
            buf: vec![0u8; MAX_DATA_BYTES as usize],
            metrics: Arc::default(),
        }
    }

    /// The disk size in sectors (a partial last sector is not addressable).
    pub fn capacity(&self) -> u64 {
        self.backend.len() / SECTOR_SIZE
    }

    /// Serves the request in `chain`; returns the number of bytes written into the chain,
    /// for the used ring. Never panics, whatever the chain holds.
    pub fn handle<I: IntoIterator<Item = Descriptor>>(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: I,
    ) -> u32 {
        let parts = match split_chain(chain) {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!("virtio-blk: dropping a malformed request: {e}");
                self.metrics.failures.inc();
                return 0;
            }
        };
        let (status, written) = match self.serve(mem, &parts) {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(e) => {
                self.metrics.failures.inc();
                match &e {
                    RequestError::Backend(_) => tracing::error!("virtio-blk: {e}"),
                    _ => tracing::debug!("virtio-blk: refusing a request: {e}"),
                }
                (e.status(), 0)
            }
        };
        match mem.write_obj(status, parts.status) {
            // `written` is at most MAX_DATA_BYTES.
            Ok(()) => u32::try_from(written + 1).unwrap_or(u32::MAX),
            Err(e) => {
                tracing::warn!("virtio-blk: cannot write the status byte: {e}");
                0
            }
        }
    }

    /// Carries out the request; returns the data bytes written to the guest.
    fn serve(&mut self, mem: &GuestMemoryMmap, parts: &Parts) -> Result<u64, RequestError> {
        if parts.misordered {
            return Err(RequestError::ReadableAfterWritable);
        }
        let readable = parts.readable.len();
        if readable < HEADER_BYTES {
            return Err(RequestError::ShortHeader(readable));
        }
        let mut header = [0u8; HEADER_BYTES as usize];
        parts.readable.read(mem, 0, &mut header)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes([
            header[8], header[9], header[10], header[11], header[12], header[13], header[14],
            header[15],
        ]);
        let out_bytes = readable - HEADER_BYTES;
        let in_bytes = parts.writable.len();
        let wrong = |bytes: u64| {
            if bytes == 0 {
                Ok(())
            } else {
                Err(RequestError::WrongDirection { kind, bytes })
            }
        };
        match kind {
            VIRTIO_BLK_T_IN => {
                wrong(out_bytes)?;
                let offset = self.check_range(sector, in_bytes)?;
                let buf = &mut self.buf[..in_bytes as usize];
                self.backend.read_at(offset, buf)?;
                parts.writable.write(mem, 0, buf)?;
                self.metrics.read_count.inc();
                self.metrics.read_bytes.add(in_bytes);
                Ok(in_bytes)
            }
            VIRTIO_BLK_T_OUT => {
                wrong(in_bytes)?;
                if self.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let offset = self.check_range(sector, out_bytes)?;
                let buf = &mut self.buf[..out_bytes as usize];
                parts.readable.read(mem, HEADER_BYTES, buf)?;
                self.backend.write_at(offset, buf)?;
                self.metrics.write_count.inc();
                self.metrics.write_bytes.add(out_bytes);
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                self.backend.flush()?;
                self.metrics.flush_count.inc();
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                wrong(out_bytes)?;
                let n = in_bytes.min(ID_BYTES as u64);
                if n == 0 {
                    return Err(RequestError::NoIdBuffer);
                }
                parts.writable.write(mem, 0, &self.id[..n as usize])?;
                Ok(n)
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }

    /// The byte offset of `bytes` of data at `sector`, if they are a whole number of
    /// sectors within the size limit and the disk.
    fn check_range(&self, sector: u64, bytes: u64) -> Result<u64, RequestError> {
        if bytes > MAX_DATA_BYTES {
            return Err(RequestError::TooLarge(bytes));
        }
        if bytes & (SECTOR_SIZE - 1) != 0 {
            return Err(RequestError::Unaligned(bytes));
        }
        let capacity = self.capacity();
        match (
            sector.checked_add(bytes / SECTOR_SIZE),
            sector.checked_mul(SECTOR_SIZE),
        ) {
            (Some(end), Some(offset)) if end <= capacity => Ok(offset),
            _ => Err(RequestError::OutOfRange {
                sector,
                bytes,
                capacity,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::MemBackend;
    use crate::devices::virtio::test_utils::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueOwnedT;

    const HDR: u64 = DATA;
    const BUF: u64 = DATA + 0x1000;
    const STATUS: u64 = DATA + 0x10_0000 + 0x1000;

    struct Fixture {
        mem: GuestMemoryMmap,
        backend: MemBackend,
        disk: Disk,
    }

    impl Fixture {
        fn new(read_only: bool) -> Self {
            let backend = MemBackend::with_len(64 * 512);
            let disk = Disk::new(Box::new(backend.clone()), read_only, "drive-id");
            let mem = memory();
            mem.write_obj(0xffu8, GuestAddress(STATUS)).expect("status");
            Fixture { mem, backend, disk }
        }

        /// Writes a header at HDR and runs the chain `descs`.
        fn run(&mut self, kind: u32, sector: u64, descs: &[RawDescriptor]) -> u32 {
            let mut hdr = [0u8; 16];
            hdr[0..4].copy_from_slice(&kind.to_le_bytes());
            hdr[8..16].copy_from_slice(&sector.to_le_bytes());
            self.mem
                .write_slice(&hdr, GuestAddress(HDR))
                .expect("header");
            let mock = MockSplitQueue::new(&self.mem, MOCK_QUEUE_SIZE);
            let chain = build_chain(&mock, descs);
            self.disk.handle(&self.mem, chain)
        }

        fn status(&self) -> u8 {
            byte_at(&self.mem, STATUS)
        }

        fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0u8; len];
            self.mem
                .read_slice(&mut buf, GuestAddress(addr))
                .expect("read");
            buf
        }
    }

    fn hdr() -> RawDescriptor {
        desc(HDR, 16, 0)
    }

    fn status() -> RawDescriptor {
        desc(STATUS, 1, F_WRITE)
    }

    #[test]
    fn read_fills_the_buffers_and_reports_the_length() {
        let mut f = Fixture::new(false);
        let len = f.run(
            VIRTIO_BLK_T_IN,
            2,
            &[
                hdr(),
                desc(BUF, 512, F_WRITE),
                desc(BUF + 0x800, 1024, F_WRITE),
                status(),
            ],
        );
        assert_eq!((len, f.status()), (1537, VIRTIO_BLK_S_OK));
        assert_eq!(f.guest(BUF, 512), f.backend.bytes(1024..1536));
        assert_eq!(f.guest(BUF + 0x800, 1024), f.backend.bytes(1536..2560));
    }

    #[test]
    fn write_stores_the_data() {
        let mut f = Fixture::new(false);
        f.mem
            .write_slice(&[0x5a; 1024], GuestAddress(BUF))
            .expect("data");
        let len = f.run(VIRTIO_BLK_T_OUT, 63, &[hdr(), desc(BUF, 512, 0), status()]);
        assert_eq!((len, f.status()), (1, VIRTIO_BLK_S_OK));
        assert_eq!(f.backend.bytes(63 * 512..64 * 512), vec![0x5a; 512]);
    }

    #[test]
    fn any_layout_header_data_and_status_may_share_descriptors() {
        let mut f = Fixture::new(false);
        // Header split 10 + 6, status byte at the end of the data descriptor.
        let len = f.run(
            VIRTIO_BLK_T_IN,
            1,
            &[
                desc(HDR, 10, 0),
                desc(HDR + 10, 6, 0),
                desc(BUF, 513, F_WRITE),
            ],
        );
        assert_eq!(len, 513);
        assert_eq!(byte_at(&f.mem, BUF + 512), VIRTIO_BLK_S_OK);
        assert_eq!(f.guest(BUF, 512), f.backend.bytes(512..1024));
    }

    #[test]
    fn flush_reaches_the_backend() {
        let mut f = Fixture::new(true);
        assert_eq!(f.run(VIRTIO_BLK_T_FLUSH, 0, &[hdr(), status()]), 1);
        assert_eq!(f.status(), VIRTIO_BLK_S_OK);
        assert_eq!(
            f.backend.flushes.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }

    #[test]
    fn get_id_returns_twenty_bytes() {
        let mut f = Fixture::new(false);
        f.mem
            .write_slice(&[0xee; 32], GuestAddress(BUF))
            .expect("fill");
        assert_eq!(
            f.run(
                VIRTIO_BLK_T_GET_ID,
                0,
                &[hdr(), desc(BUF, 32, F_WRITE), status()]
            ),
            21
        );
        assert_eq!(f.status(), VIRTIO_BLK_S_OK);
        assert_eq!(
            &f.guest(BUF, 21)[..],
            b"drive-id\0\0\0\0\0\0\0\0\0\0\0\0\xee"
        );
        assert_eq!(f.run(VIRTIO_BLK_T_GET_ID, 0, &[hdr(), status()]), 1);
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR, "no room for the id");
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let mut f = Fixture::new(true);
        let before = f.backend.bytes(0..512);
        assert_eq!(
            f.run(VIRTIO_BLK_T_OUT, 0, &[hdr(), desc(BUF, 512, 0), status()]),
            1
        );
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR);
        assert_eq!(f.backend.bytes(0..512), before);
        assert_eq!(
            f.run(
                VIRTIO_BLK_T_IN,
                0,
                &[hdr(), desc(BUF, 512, F_WRITE), status()]
            ),
            513,
            "reads still work"
        );
    }

    #[test]
    fn out_of_range_and_overflowing_sectors_fail() {
        let mut f = Fixture::new(false);
        for sector in [64, 63 + 1, u64::MAX, u64::MAX / 512 + 1] {
            assert_eq!(
                f.run(
                    VIRTIO_BLK_T_IN,
                    sector,
                    &[hdr(), desc(BUF, 512, F_WRITE), status()]
                ),
                1,
                "{sector}"
            );
            assert_eq!(f.status(), VIRTIO_BLK_S_IOERR, "{sector}");
        }
        assert_eq!(
            f.run(
                VIRTIO_BLK_T_IN,
                63,
                &[hdr(), desc(BUF, 1024, F_WRITE), status()]
            ),
            1,
            "runs past the end"
        );
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR);
        assert_eq!(
            f.run(
                VIRTIO_BLK_T_IN,
                0,
                &[hdr(), desc(BUF, 100, F_WRITE), status()]
            ),
            1,
            "not whole sectors"
        );
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn unsupported_types_short_headers_and_backend_errors() {
        let mut f = Fixture::new(false);
        assert_eq!(
            f.run(11, 0, &[hdr(), status()]),
            1,
            "DISCARD is not offered"
        );
        assert_eq!(f.status(), VIRTIO_BLK_S_UNSUPP);
        assert_eq!(f.run(VIRTIO_BLK_T_IN, 0, &[desc(HDR, 8, 0), status()]), 1);
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR, "short header");
        f.disk.backend = Box::new(MemBackend {
            fail: true,
            ..MemBackend::with_len(4096)
        });
        assert_eq!(
            f.run(
                VIRTIO_BLK_T_IN,
                0,
                &[hdr(), desc(BUF, 512, F_WRITE), status()]
            ),
            1
        );
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR, "backend failure");
    }

    #[test]
    fn chain_without_status_is_returned_empty() {
        let mut f = Fixture::new(false);
        f.mem
            .write_slice(&[0x11; 512], GuestAddress(BUF))
            .expect("data");
        let before = f.backend.bytes(0..512);
        assert_eq!(f.run(VIRTIO_BLK_T_OUT, 0, &[hdr(), desc(BUF, 512, 0)]), 0);
        assert_eq!(f.backend.bytes(0..512), before, "nothing was written");
        assert_eq!(
            f.run(VIRTIO_BLK_T_IN, 0, &[hdr(), desc(BUF, 0, F_WRITE)]),
            0,
            "empty status descriptor"
        );
        assert_eq!(f.status(), 0xff);
    }

    #[test]
    fn wrong_direction_buffers_are_refused() {
        let mut f = Fixture::new(false);
        // IN with a device-readable data buffer.
        assert_eq!(
            f.run(VIRTIO_BLK_T_IN, 0, &[hdr(), desc(BUF, 512, 0), status()]),
            1
        );
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR);
        // OUT with a device-writable data buffer.
        assert_eq!(
            f.run(
                VIRTIO_BLK_T_OUT,
                0,
                &[hdr(), desc(BUF, 512, F_WRITE), status()]
            ),
            1
        );
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR);
        // Readable after writable.
        assert_eq!(
            f.run(
                VIRTIO_BLK_T_IN,
                0,
                &[hdr(), desc(BUF, 512, F_WRITE), desc(BUF, 16, 0), status()]
            ),
            1
        );
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn descriptor_loop_ends_without_hanging() {
        let f = Fixture::new(false);
        let mut disk = f.disk;
        let mock = MockSplitQueue::new(&f.mem, MOCK_QUEUE_SIZE);
        let mut queue = queue_with_raw_chain(
            &mock,
            &[
                linked(HDR, 16, F_NEXT, 1),
                linked(STATUS, 1, F_WRITE | F_NEXT, 0),
            ],
        );
        let chain = queue.iter(&f.mem).expect("iter").next().expect("chain");
        assert_eq!(
            chain.clone().count(),
            usize::from(MOCK_QUEUE_SIZE),
            "the iterator bounds the loop"
        );
        assert_eq!(disk.handle(&f.mem, chain), 0);
        assert_eq!(byte_at(&f.mem, STATUS), 0xff);
    }

    #[test]
    fn huge_and_out_of_memory_buffers_fail_cleanly() {
        let mut f = Fixture::new(false);
        assert_eq!(
            f.run(
                VIRTIO_BLK_T_IN,
                0,
                &[hdr(), desc(BUF, 0x8000_0000, F_WRITE), status()]
            ),
            1
        );
        assert_eq!(
            f.status(),
            VIRTIO_BLK_S_IOERR,
            "over the size limit, nothing allocated"
        );
        let big = (MAX_DATA_BYTES + 512) as u32;
        assert_eq!(
            f.run(VIRTIO_BLK_T_OUT, 0, &[hdr(), desc(BUF, big, 0), status()]),
            1
        );
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR);
        assert_eq!(
            f.run(
                VIRTIO_BLK_T_IN,
                0,
                &[hdr(), desc(MEM_SIZE - 256, 512, F_WRITE), status()]
            ),
            1
        );
        assert_eq!(
            f.status(),
            VIRTIO_BLK_S_IOERR,
            "data runs off the end of guest memory"
        );
        assert_eq!(
            f.run(
                VIRTIO_BLK_T_IN,
                0,
                &[hdr(), desc(u64::MAX - 100, 512, F_WRITE), status()]
            ),
            1
        );
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR, "address wraps");
        assert_eq!(
            f.run(
                VIRTIO_BLK_T_FLUSH,
                0,
                &[hdr(), desc(MEM_SIZE + 0x1000, 1, F_WRITE)]
            ),
            0,
            "status outside memory"
        );
        assert_eq!(
            f.run(VIRTIO_BLK_T_FLUSH, 0, &[desc(u64::MAX, 16, 0), status()]),
            1
        );
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR, "header outside memory");
    }

    #[test]
    fn counters_follow_served_requests() {
        let mut f = Fixture::new(false);
        f.run(
            VIRTIO_BLK_T_IN,
            2,
            &[hdr(), desc(BUF, 1024, F_WRITE), status()],
        );
        f.run(VIRTIO_BLK_T_OUT, 5, &[hdr(), desc(BUF, 512, 0), status()]);
        f.run(VIRTIO_BLK_T_FLUSH, 0, &[hdr(), status()]);
        f.run(
            VIRTIO_BLK_T_IN,
            64,
            &[hdr(), desc(BUF, 512, F_WRITE), status()],
        );
        f.run(VIRTIO_BLK_T_OUT, 0, &[hdr(), desc(BUF, 512, 0)]);
        let m = f.disk.metrics.totals();
        assert_eq!(
            (m["read_count"].as_u64(), m["read_bytes"].as_u64()),
            (Some(1), Some(1024))
        );
        assert_eq!(
            (m["write_count"].as_u64(), m["write_bytes"].as_u64()),
            (Some(1), Some(512))
        );
        assert_eq!(m["flush_count"], 1);
        assert_eq!(m["failures"], 2, "out of range, and no status byte");
    }
}
