//! virtio-blk requests: parsing a descriptor chain into the I/O it asks for.
//!
//! A request is a 16-byte header (type, reserved, sector), data, and a one-byte status the
//! device writes last (virtio 1.2, section 5.2.6). With VIRTIO_F_VERSION_1 the driver may
//! split or merge those parts across descriptors freely, so the chain is treated as two
//! byte streams: the device-readable descriptors (header, then OUT data) followed by the
//! device-writable ones (IN data, then the status byte at the very end).
//!
//! Everything here comes from the guest: nothing is trusted and nothing panics. A chain
//! whose status byte cannot be located is returned with length 0; any other problem is
//! answered with VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP. A request that passes every
//! check becomes an [`IoRequest`]: its data as [`GuestIoVec`]s into guest memory (each
//! checked to lie in a guest memory region), its byte offset on the disk (checked to lie
//! within it), and where its status byte goes. An engine ([`super::engine`]) carries it
//! out, here or on another thread, and [`DiskInfo::complete`] answers it.

use super::backend::GuestIoVec;
use crate::memory::GuestMemoryMmap;
use crate::metrics::BlockMetrics;
use std::sync::Arc;
use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

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
/// below it, and it bounds what one request can keep a disk busy with.
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

    /// `[skip, skip + count)` of the stream as vectors into guest memory, split where a
    /// guest memory region ends; fails if any byte lies outside guest memory. With
    /// `device_writes`, the pages are marked dirty (the disk will write them).
    fn iovecs(
        &self,
        mem: &GuestMemoryMmap,
        skip: u64,
        count: u64,
        device_writes: bool,
    ) -> Result<Vec<GuestIoVec>, GuestMemoryError> {
        let mut vecs = Vec::with_capacity(self.0.len());
        self.for_each(skip, count, |addr, range| {
            for slice in GuestMemoryBackend::get_slices(mem, addr, range.len()) {
                let slice = slice?;
                if slice.is_empty() {
                    continue;
                }
                if device_writes {
                    slice.bitmap().mark_dirty(0, slice.len());
                }
                // SAFETY: the slice is mapped guest memory, which the device keeps mapped
                // (it holds the GuestMemoryMmap) while the request is in flight.
                vecs.push(unsafe { GuestIoVec::new(slice.ptr_guard_mut().as_ptr(), slice.len()) });
            }
            Ok(())
        })?;
        Ok(vecs)
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

/// What the disk does for a request that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Read sectors into guest memory.
    Read,
    /// Write guest memory to sectors.
    Write,
    /// Make every write completed before it durable.
    Flush,
}

/// What answering a request needs once its I/O is done.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    /// The I/O.
    pub op: IoOp,
    /// Data bytes it moves.
    pub bytes: u64,
    /// Guest address of the status byte.
    pub status: GuestAddress,
}

/// A checked request: I/O for an engine to carry out.
#[derive(Debug)]
pub struct IoRequest {
    /// How to answer it.
    pub pending: Pending,
    /// Byte offset on the disk (the data lies within the disk).
    pub offset: u64,
    /// The data, in guest memory.
    pub bufs: Vec<GuestIoVec>,
}

/// What parsing a chain gave.
#[derive(Debug)]
pub enum Parsed {
    /// The chain has no status byte (or it lies outside guest memory): it goes back to
    /// the guest with length 0.
    NoStatus,
    /// Answered already (refused, or GET_ID): the used length.
    Answered(u32),
    /// I/O to carry out.
    Io(IoRequest),
}

/// A disk as the request parser sees it: its size, whether it is read-only, its id, its
/// counters.
#[derive(Clone)]
pub struct DiskInfo {
    /// Size in bytes (fixed for the device's lifetime).
    pub len: u64,
    /// Refuse OUT requests (the host enforces this whatever the guest negotiated).
    pub read_only: bool,
    /// The GET_ID answer, NUL-padded.
    pub id: [u8; ID_BYTES],
    /// Requests and bytes served.
    pub metrics: Arc<BlockMetrics>,
}

impl std::fmt::Debug for DiskInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Disk({} sectors, read_only={})",
            self.capacity(),
            self.read_only
        )
    }
}

enum Checked {
    Io(IoOp, u64, Vec<GuestIoVec>, u64),
    Id(u64),
}

impl DiskInfo {
    /// A disk of `len` bytes; `id` is the drive id, cut to 20 bytes.
    pub fn new(len: u64, read_only: bool, id: &str) -> Self {
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        DiskInfo {
            len,
            read_only,
            id: id_bytes,
            metrics: Arc::default(),
        }
    }

    /// The disk size in sectors (a partial last sector is not addressable).
    pub fn capacity(&self) -> u64 {
        self.len / SECTOR_SIZE
    }

    /// Parses and checks the request in `chain`: answers it at once if it is refused or
    /// needs no I/O, else returns the I/O. Never panics, whatever the chain holds.
    pub fn parse<I: IntoIterator<Item = Descriptor>>(
        &self,
        mem: &GuestMemoryMmap,
        chain: I,
    ) -> Parsed {
        let parts = match split_chain(chain) {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!("virtio-blk: dropping a malformed request: {e}");
                self.metrics.failures.inc();
                return Parsed::NoStatus;
            }
        };
        match self.check(mem, &parts) {
            Ok(Checked::Io(op, offset, bufs, bytes)) => Parsed::Io(IoRequest {
                pending: Pending {
                    op,
                    bytes,
                    status: parts.status,
                },
                offset,
                bufs,
            }),
            Ok(Checked::Id(n)) => match write_status(mem, parts.status, VIRTIO_BLK_S_OK, n) {
                0 => Parsed::NoStatus,
                len => Parsed::Answered(len),
            },
            Err(e) => {
                self.metrics.failures.inc();
                tracing::debug!("virtio-blk: refusing a request: {e}");
                match write_status(mem, parts.status, e.status(), 0) {
                    0 => Parsed::NoStatus,
                    len => Parsed::Answered(len),
                }
            }
        }
    }

    /// Answers a request whose I/O ended with `result`: counts it, writes its status byte
    /// and returns the used length (0 if the status byte could not be written).
    pub fn complete(&self, mem: &GuestMemoryMmap, p: &Pending, result: std::io::Result<()>) -> u32 {
        match result {
            Ok(()) => {
                let m = &self.metrics;
                let written = match p.op {
                    IoOp::Read => {
                        m.read_count.inc();
                        m.read_bytes.add(p.bytes);
                        p.bytes
                    }
                    IoOp::Write => {
                        m.write_count.inc();
                        m.write_bytes.add(p.bytes);
                        0
                    }
                    IoOp::Flush => {
                        m.flush_count.inc();
                        0
                    }
                };
                write_status(mem, p.status, VIRTIO_BLK_S_OK, written)
            }
            Err(e) => {
                self.metrics.failures.inc();
                tracing::error!("virtio-blk: backend: {e}");
                write_status(mem, p.status, VIRTIO_BLK_S_IOERR, 0)
            }
        }
    }

    /// Checks the request; returns its I/O, or the GET_ID bytes written.
    fn check(&self, mem: &GuestMemoryMmap, parts: &Parts) -> Result<Checked, RequestError> {
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
                let bufs = parts.writable.iovecs(mem, 0, in_bytes, true)?;
                Ok(Checked::Io(IoOp::Read, offset, bufs, in_bytes))
            }
            VIRTIO_BLK_T_OUT => {
                wrong(in_bytes)?;
                if self.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let offset = self.check_range(sector, out_bytes)?;
                let bufs = parts.readable.iovecs(mem, HEADER_BYTES, out_bytes, false)?;
                Ok(Checked::Io(IoOp::Write, offset, bufs, out_bytes))
            }
            VIRTIO_BLK_T_FLUSH => Ok(Checked::Io(IoOp::Flush, 0, Vec::new(), 0)),
            VIRTIO_BLK_T_GET_ID => {
                wrong(out_bytes)?;
                let n = in_bytes.min(ID_BYTES as u64);
                if n == 0 {
                    return Err(RequestError::NoIdBuffer);
                }
                parts.writable.write(mem, 0, &self.id[..n as usize])?;
                Ok(Checked::Id(n))
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

/// Writes the status byte; returns the used length (`written` data bytes and the status
/// byte), or 0 if the status byte lies outside guest memory.
fn write_status(mem: &GuestMemoryMmap, at: GuestAddress, status: u8, written: u64) -> u32 {
    match mem.write_obj(status, at) {
        // `written` is at most MAX_DATA_BYTES.
        Ok(()) => u32::try_from(written + 1).unwrap_or(u32::MAX),
        Err(e) => {
            tracing::warn!("virtio-blk: cannot write the status byte: {e}");
            0
        }
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
