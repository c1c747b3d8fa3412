//! virtio-blk device tests: config space, activation, rate limiting, file backends.

use super::backend::MemBackend;
use super::request::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use super::*;
use crate::devices::virtio::test_utils::*;
use std::io::Write;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

#[test]
fn features_and_config_describe_the_disk() {
    let rw = Block::new(Box::new(MemBackend::with_len(8 * 512 + 100)), false, "root");
    assert_eq!(rw.device_type(), TYPE_BLOCK);
    assert_eq!(rw.capacity(), 8, "a partial last sector is not addressable");
    let f = rw.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    assert_eq!(f & VIRTIO_BLK_F_RO, 0);
    let mut cap = [0u8; 8];
    rw.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    let mut word = [0u8; 4];
    rw.read_config(12, &mut word);
    assert_eq!(u32::from_le_bytes(word), SEG_MAX);
    rw.read_config(20, &mut word);
    assert_eq!(u32::from_le_bytes(word), 512);
    rw.read_config(0x400, &mut word);
    assert_eq!(word, [0; 4]);
    let ro = Block::new(Box::new(MemBackend::with_len(512)), true, "ro");
    assert_ne!(ro.features() & VIRTIO_BLK_F_RO, 0);
    assert!(ro.read_only());
}

#[test]
fn activated_device_serves_its_queue_and_interrupts() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    let backend = MemBackend::with_len(64 * 512);
    let mut blk = Block::new(Box::new(backend.clone()), false, "d");
    mem.write_slice(&header(VIRTIO_BLK_T_IN, 3), GuestAddress(DATA))
        .expect("hdr");
    mem.write_slice(&header(VIRTIO_BLK_T_OUT, 5), GuestAddress(DATA + 0x100))
        .expect("hdr");
    mem.write_slice(&[0xab; 512], GuestAddress(DATA + 0x2000))
        .expect("data");
    mock.add_desc_chains(
        &[
            linked(DATA, 16, F_NEXT, 1),
            linked(DATA + 0x1000, 512, F_NEXT | F_WRITE, 2),
            linked(DATA + 0x1800, 1, F_WRITE, 0),
            linked(DATA + 0x100, 16, F_NEXT, 4),
            linked(DATA + 0x2000, 512, F_NEXT, 5),
            linked(DATA + 0x2800, 1, F_WRITE, 0),
        ],
        0,
    )
    .expect("chains");
    let irq = Interrupt::new().expect("irq");
    blk.process_queue(0); // not active yet: nothing happens
    assert_eq!(used_idx(&mem, &mock), 0);
    blk.activate(mem.clone(), vec![ready_queue(&mock)], irq.clone())
        .expect("activate");
    blk.process_queue(0);
    assert_eq!(used_idx(&mem, &mock), 2);
    assert_eq!(used_entry(&mem, &mock, 0), (0, 513));
    assert_eq!(used_entry(&mem, &mock, 1), (3, 1));
    assert_eq!(byte_at(&mem, DATA + 0x1800), VIRTIO_BLK_S_OK);
    assert_eq!(byte_at(&mem, DATA + 0x2800), VIRTIO_BLK_S_OK);
    let mut read = vec![0u8; 512];
    mem.read_slice(&mut read, GuestAddress(DATA + 0x1000))
        .expect("read");
    assert_eq!(read, backend.bytes(3 * 512..4 * 512));
    assert_eq!(backend.bytes(5 * 512..6 * 512), vec![0xab; 512]);
    assert_eq!(irq.status(), crate::devices::virtio::INT_USED_RING);
    assert_eq!(irq.eventfd().read().expect("interrupt raised"), 1);
    let m = blk.metrics().totals();
    assert_eq!(
        (m["read_count"].as_u64(), m["write_count"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (m["read_bytes"].as_u64(), m["write_bytes"].as_u64()),
        (Some(512), Some(512))
    );
    blk.process_queue(7); // a queue that does not exist is ignored
    blk.reset();
    blk.process_queue(0);
    assert_eq!(used_idx(&mem, &mock), 2);
}

#[test]
fn rate_limited_requests_wait_for_the_timer() {
    use crate::rate_limiter::TokenBucketConfig;
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    let backend = MemBackend::with_len(64 * 512);
    let ops = TokenBucketConfig {
        size: 1,
        one_time_burst: None,
        refill_time: 20,
    };
    let limit = RateLimiterConfig {
        bandwidth: None,
        ops: Some(ops),
    };
    let mut blk = Block::new(Box::new(backend), false, "d")
        .with_rate_limiter(&limit)
        .expect("limiter");
    let mut fds = Vec::new();
    blk.host_fds(&mut fds);
    let fd = fds.first().expect("timer fd").0;
    for (i, at) in [DATA, DATA + 0x100].into_iter().enumerate() {
        mem.write_slice(&header(VIRTIO_BLK_T_IN, i as u64), GuestAddress(at))
            .expect("hdr");
    }
    mock.add_desc_chains(
        &[
            linked(DATA, 16, F_NEXT, 1),
            linked(DATA + 0x1000, 512, F_NEXT | F_WRITE, 2),
            linked(DATA + 0x1800, 1, F_WRITE, 0),
            linked(DATA + 0x100, 16, F_NEXT, 4),
            linked(DATA + 0x2000, 512, F_NEXT | F_WRITE, 5),
            linked(DATA + 0x2800, 1, F_WRITE, 0),
        ],
        0,
    )
    .expect("chains");
    blk.activate(
        mem.clone(),
        vec![ready_queue(&mock)],
        Interrupt::new().expect("irq"),
    )
    .expect("activate");
    blk.process_queue(0);
    assert_eq!(used_idx(&mem, &mock), 1, "one request per 20 ms");
    assert_eq!(blk.metrics().rate_limiter_throttled.get(), 1);
    let mut pfd = [libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: polling one valid pollfd.
    assert_eq!(
        unsafe { libc::poll(pfd.as_mut_ptr(), 1, 2000) },
        1,
        "the timer fires"
    );
    blk.process_host_event();
    assert_eq!(used_idx(&mem, &mock), 2, "served after the timer");
    assert_eq!(used_entry(&mem, &mock, 1), (3, 513));
}

#[test]
fn activation_needs_exactly_one_queue() {
    let mut blk = Block::new(Box::new(MemBackend::with_len(512)), false, "d");
    let err = blk
        .activate(memory(), Vec::new(), Interrupt::new().expect("irq"))
        .expect_err("no queue");
    assert!(
        matches!(
            err,
            VirtioError::QueueCount {
                expected: 1,
                got: 0
            }
        ),
        "{err}"
    );
}

#[test]
fn file_backend_reads_writes_and_flushes() {
    let mut f = tempfile::NamedTempFile::new().expect("tmp");
    f.write_all(&[7u8; 4096]).expect("write");
    let mut rw = FileBackend::open(f.path(), false).expect("open");
    assert_eq!(rw.len(), 4096);
    assert!(rw.raw_fd().is_some(), "io_uring can serve it");
    let mut data = [1u8, 2, 3];
    // SAFETY: the vectors point into local buffers that outlive the calls.
    let iov = |b: &mut [u8]| unsafe { GuestIoVec::new(b.as_mut_ptr(), b.len()) };
    rw.write_vectored_at(512, &[iov(&mut data)])
        .expect("pwritev");
    rw.flush().expect("fsync");
    let (mut a, mut b) = ([0u8; 1], [0u8; 3]);
    rw.read_vectored_at(511, &[iov(&mut a), iov(&mut b)])
        .expect("preadv");
    assert_eq!((a, b), ([7], [1, 2, 3]));
    let mut buf = [0u8; 4];
    assert!(
        rw.read_vectored_at(4094, &[iov(&mut buf)]).is_err(),
        "a short read is an error"
    );
    let mut ro = FileBackend::open(f.path(), true).expect("open ro");
    assert!(
        ro.write_vectored_at(0, &[iov(&mut buf)]).is_err(),
        "opened read-only"
    );
    let err = FileBackend::open(Path::new("/nonexistent/disk.img"), true).expect_err("missing");
    assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");
    let blk = Block::open(f.path(), true, "a-very-long-drive-identifier-string").expect("block");
    assert_eq!(blk.capacity(), 8);
    assert_eq!(&blk.disk.id, b"a-very-long-drive-id");
    assert_eq!(blk.engine_name(), "sync");
}

#[test]
fn an_empty_backing_file_is_a_disk_of_no_sectors() {
    let f = tempfile::NamedTempFile::new().expect("tmp");
    let mut blk = Block::open(f.path(), false, "placeholder").expect("an empty file opens");
    assert_eq!(blk.capacity(), 0);
    let mut cap = [0xffu8; 8];
    blk.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 0, "the guest sees 0 sectors");
    let mut word = [0u8; 4];
    blk.read_config(20, &mut word);
    assert_eq!(
        u32::from_le_bytes(word),
        BLK_SIZE,
        "the rest of the config is as usual"
    );

    let mem = memory();
    let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    for (n, kind) in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH]
        .into_iter()
        .enumerate()
    {
        mem.write_slice(&header(kind, 0), GuestAddress(DATA + n as u64 * 0x100))
            .expect("hdr");
    }
    for status in [0x1800, 0x2800, 0x3800] {
        mem.write_obj(0xffu8, GuestAddress(DATA + status))
            .expect("poison the status byte");
    }
    let data_flags = |kind| if kind == VIRTIO_BLK_T_IN { F_WRITE } else { 0 };
    mock.add_desc_chains(
        &[
            linked(DATA, 16, F_NEXT, 1),
            linked(DATA + 0x1000, 512, F_NEXT | data_flags(VIRTIO_BLK_T_IN), 2),
            linked(DATA + 0x1800, 1, F_WRITE, 0),
            linked(DATA + 0x100, 16, F_NEXT, 4),
            linked(DATA + 0x2000, 512, F_NEXT | data_flags(VIRTIO_BLK_T_OUT), 5),
            linked(DATA + 0x2800, 1, F_WRITE, 0),
            linked(DATA + 0x200, 16, F_NEXT, 7),
            linked(DATA + 0x3800, 1, F_WRITE, 0),
        ],
        0,
    )
    .expect("chains");
    blk.activate(
        mem.clone(),
        vec![ready_queue(&mock)],
        Interrupt::new().expect("irq"),
    )
    .expect("activate");
    blk.process_queue(0);
    assert_eq!(used_idx(&mem, &mock), 3, "every request is answered");
    assert_eq!(
        byte_at(&mem, DATA + 0x1800),
        VIRTIO_BLK_S_IOERR,
        "read refused"
    );
    assert_eq!(
        byte_at(&mem, DATA + 0x2800),
        VIRTIO_BLK_S_IOERR,
        "write refused"
    );
    assert_eq!(byte_at(&mem, DATA + 0x3800), VIRTIO_BLK_S_OK, "flush works");
    assert_eq!(
        std::fs::metadata(f.path()).expect("file").len(),
        0,
        "nothing was written"
    );
}
