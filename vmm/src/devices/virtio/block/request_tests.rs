//! Request parsing and checking, served synchronously on mock chains.

use super::*;
use crate::devices::virtio::block::backend::{BlockBackend, MemBackend};
use crate::devices::virtio::block::engine::serve;
use crate::devices::virtio::test_utils::*;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueOwnedT;

const HDR: u64 = DATA;
const BUF: u64 = DATA + 0x1000;
const STATUS: u64 = DATA + 0x10_0000 + 0x1000;

/// A disk served synchronously, as the Sync engine does.
struct Disk {
    info: DiskInfo,
    backend: Box<dyn BlockBackend>,
}

impl Disk {
    fn new(backend: Box<dyn BlockBackend>, read_only: bool, id: &str) -> Self {
        Disk {
            info: DiskInfo::new(backend.len(), read_only, id),
            backend,
        }
    }

    fn handle<I: IntoIterator<Item = Descriptor>>(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: I,
    ) -> u32 {
        match self.info.parse(mem, chain) {
            Parsed::NoStatus => 0,
            Parsed::Answered(len) => len,
            Parsed::Io(req) => {
                let result = serve(self.backend.as_mut(), req.pending.op, req.offset, &req.bufs);
                self.info.complete(mem, &req.pending, result)
            }
        }
    }
}

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
    let m = f.disk.info.metrics.totals();
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
