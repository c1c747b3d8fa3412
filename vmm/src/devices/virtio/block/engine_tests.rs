//! The asynchronous engines on mock queues: io_uring and the worker thread read and write
//! guest memory directly, keep FLUSH after the writes before it, answer hostile chains
//! without I/O, leave the loop free while a disk is slow, and finish what is in flight
//! before a snapshot.

use super::backend::{MemBackend, NoBackend};
use super::request::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use super::worker::Worker;
use super::*;
use crate::devices::virtio::test_utils::*;
use std::io::Write;
use std::time::{Duration, Instant};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

/// The used ring, away from the mock's (which overlaps its avail ring's `used_event`).
const USED_RING: u64 = 0x8000;
const SECTORS: u64 = 64;

fn hdr_at(i: u64) -> u64 {
    DATA + i * 0x100
}
fn data_at(i: u64) -> u64 {
    DATA + 0x1_0000 + i * 0x1000
}
fn status_at(i: u64) -> u64 {
    DATA + 0x8_0000 + i
}

/// One request: type, sector, data bytes.
type Req = (u32, u64, u32);

/// Makes `reqs` available on `mock`, one chain each (header, data, status).
fn post(mem: &GuestMemoryMmap, mock: &MockSplitQueue<'_, GuestMemoryMmap>, reqs: &[Req]) {
    let mut descs = Vec::new();
    for (i, &(kind, sector, len)) in reqs.iter().enumerate() {
        let i = i as u64;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(hdr_at(i))).expect("hdr");
        mem.write_obj(0xffu8, GuestAddress(status_at(i)))
            .expect("poison");
        let base = descs.len() as u16;
        descs.push(linked(hdr_at(i), 16, F_NEXT, base + 1));
        if len > 0 {
            let flags = if kind == VIRTIO_BLK_T_IN { F_WRITE } else { 0 };
            descs.push(linked(data_at(i), len, F_NEXT | flags, base + 2));
        }
        descs.push(linked(status_at(i), 1, F_WRITE, 0));
    }
    mock.add_desc_chains(&descs, 0).expect("chains");
}

fn used_idx(mem: &GuestMemoryMmap) -> u16 {
    mem.read_obj(GuestAddress(USED_RING + 2)).expect("used idx")
}

fn used(mem: &GuestMemoryMmap, n: u64) -> (u32, u32) {
    let at = USED_RING + 4 + 8 * n;
    let id = mem.read_obj(GuestAddress(at)).expect("id");
    let len = mem.read_obj(GuestAddress(at + 4)).expect("len");
    (id, len)
}

fn activate(blk: &mut Block, mem: &GuestMemoryMmap, mock: &MockSplitQueue<'_, GuestMemoryMmap>) {
    let mut q = ready_queue(mock);
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    blk.activate(mem.clone(), vec![q], Interrupt::new().expect("irq"))
        .expect("activate");
}

/// Serves the device's host fds as the VMM loop would until `n` requests are used.
fn run_until(blk: &mut Block, mem: &GuestMemoryMmap, n: u16) {
    let mut fds = Vec::new();
    blk.host_fds(&mut fds);
    assert!(!fds.is_empty(), "the completion fd is polled");
    let deadline = Instant::now() + Duration::from_secs(10);
    while used_idx(mem) < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} answered",
            used_idx(mem)
        );
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&(fd, _)| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: polling valid pollfds.
        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 100) };
        for (pfd, &(_, token)) in pfds.iter().zip(&fds) {
            if pfd.revents & libc::POLLIN != 0 {
                blk.process_host_fd(token);
            }
        }
    }
}

/// A disk image of SECTORS sectors whose bytes tell where they are.
fn image() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("tmp");
    let data: Vec<u8> = (0..SECTORS as usize * 512)
        .map(|i| (i / 512) as u8 ^ (i as u8))
        .collect();
    f.write_all(&data).expect("fill");
    f
}

/// The device over `path` on the named engine: io_uring (or what Async falls back to),
/// or the worker thread under its seccomp filter.
fn device(engine: &str, path: &std::path::Path) -> Block {
    let mut blk = Block::open(path, false, "d").expect("open");
    match engine {
        "io_uring" => {
            blk = blk.with_engine(BlockIoEngine::Async, false).expect("async");
            if blk.engine_name() != "io_uring" {
                eprintln!(
                    "no io_uring here: testing the fallback ({})",
                    blk.engine_name()
                );
            }
        }
        _ => {
            let Engine::Sync(backend) =
                std::mem::replace(&mut blk.engine, Engine::Sync(Box::new(NoBackend)))
            else {
                panic!("a new device is sync");
            };
            blk.engine = Engine::Worker(Worker::spawn(backend, true).expect("worker"));
        }
    }
    blk
}

fn file_bytes(path: &std::path::Path, range: std::ops::Range<usize>) -> Vec<u8> {
    std::fs::read(path).expect("read image")[range].to_vec()
}

fn guest(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).expect("guest");
    buf
}

#[test]
fn both_engines_move_data_straight_between_guest_memory_and_the_file() {
    for engine in ["io_uring", "worker"] {
        let img = image();
        let mut blk = device(engine, img.path());
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
        mem.write_slice(&[0x5a; 4096], GuestAddress(data_at(1)))
            .expect("data");
        post(
            &mem,
            &mock,
            &[
                (VIRTIO_BLK_T_IN, 2, 1024),
                (VIRTIO_BLK_T_OUT, 8, 4096),
                (VIRTIO_BLK_T_IN, SECTORS - 1, 512),
            ],
        );
        activate(&mut blk, &mem, &mock);
        blk.process_queue(0);
        run_until(&mut blk, &mem, 3);
        assert_eq!(blk.in_flight(), 0, "{engine}");
        let mut answers: Vec<_> = (0..3).map(|n| used(&mem, n)).collect();
        answers.sort_unstable();
        assert_eq!(answers, [(0, 1025), (3, 1), (6, 513)], "{engine}");
        for i in 0..3 {
            assert_eq!(byte_at(&mem, status_at(i)), VIRTIO_BLK_S_OK, "{engine} {i}");
        }
        assert_eq!(
            guest(&mem, data_at(0), 1024),
            file_bytes(img.path(), 1024..2048),
            "{engine}"
        );
        assert!(file_bytes(img.path(), 8 * 512..16 * 512) == vec![0x5a; 4096]);
        assert_eq!(
            guest(&mem, data_at(2), 512),
            file_bytes(
                img.path(),
                (SECTORS as usize - 1) * 512..SECTORS as usize * 512
            )
        );
        let m = blk.metrics().totals();
        assert_eq!(m["read_bytes"], 1536, "{engine}");
        assert_eq!(m["write_bytes"], 4096, "{engine}");
    }
}

#[test]
fn a_flush_is_answered_after_the_writes_before_it() {
    for engine in ["io_uring", "worker"] {
        let img = image();
        let mut blk = device(engine, img.path());
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
        post(
            &mem,
            &mock,
            &[
                (VIRTIO_BLK_T_OUT, 0, 4096),
                (VIRTIO_BLK_T_OUT, 16, 4096),
                (VIRTIO_BLK_T_FLUSH, 0, 0),
            ],
        );
        activate(&mut blk, &mem, &mock);
        blk.process_queue(0);
        run_until(&mut blk, &mem, 3);
        assert_eq!(used(&mem, 2), (6, 1), "{engine}: the flush comes last");
        assert_eq!(byte_at(&mem, status_at(2)), VIRTIO_BLK_S_OK);
        assert_eq!(blk.metrics().totals()["flush_count"], 1);
    }
    // What the disk saw when it flushed: both writes.
    let (backend, gate) = MemBackend::with_len(SECTORS as usize * 512).gated();
    let mut blk = Block::new(Box::new(backend.clone()), false, "d")
        .with_engine(BlockIoEngine::Async, false)
        .expect("async");
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    post(
        &mem,
        &mock,
        &[
            (VIRTIO_BLK_T_OUT, 0, 512),
            (VIRTIO_BLK_T_FLUSH, 0, 0),
            (VIRTIO_BLK_T_OUT, 1, 512),
        ],
    );
    activate(&mut blk, &mem, &mock);
    blk.process_queue(0);
    for _ in 0..3 {
        gate.send(()).expect("release");
    }
    run_until(&mut blk, &mem, 3);
    assert_eq!(
        *backend.writes_at_flush.lock().expect("flushes"),
        [1],
        "the flush followed the write before it"
    );
}

#[test]
fn hostile_chains_are_answered_at_once_without_io() {
    for engine in ["io_uring", "worker"] {
        let img = image();
        let before = std::fs::read(img.path()).expect("image");
        let mut blk = device(engine, img.path());
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
        let mut descs = Vec::new();
        for (i, sector) in [SECTORS, u64::MAX, 0, 0].into_iter().enumerate() {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            mem.write_slice(&h, GuestAddress(hdr_at(i as u64)))
                .expect("hdr");
        }
        mem.write_obj(0xffu8, GuestAddress(status_at(9)))
            .expect("poison");
        // Past the disk's end; a sector that overflows; data off the end of guest memory;
        // no status byte.
        descs.extend([
            linked(hdr_at(0), 16, F_NEXT, 1),
            linked(data_at(0), 512, F_NEXT, 2),
            linked(status_at(0), 1, F_WRITE, 0),
            linked(hdr_at(1), 16, F_NEXT, 4),
            linked(data_at(1), 512, F_NEXT, 5),
            linked(status_at(1), 1, F_WRITE, 0),
            linked(hdr_at(2), 16, F_NEXT, 7),
            linked(MEM_SIZE - 256, 512, F_NEXT, 8),
            linked(status_at(2), 1, F_WRITE, 0),
            linked(hdr_at(3), 16, F_NEXT, 10),
            linked(data_at(3), 512, 0, 0),
        ]);
        mock.add_desc_chains(&descs, 0).expect("chains");
        activate(&mut blk, &mem, &mock);
        blk.process_queue(0);
        assert_eq!(blk.in_flight(), 0, "{engine}: nothing reached the engine");
        assert_eq!(used_idx(&mem), 4, "{engine}: every chain is returned");
        for i in 0..3 {
            assert_eq!(
                byte_at(&mem, status_at(i)),
                VIRTIO_BLK_S_IOERR,
                "{engine} {i}"
            );
            assert_eq!(used(&mem, i).1, 1);
        }
        assert_eq!(used(&mem, 3), (9, 0), "no status byte: length 0");
        assert_eq!(std::fs::read(img.path()).expect("image"), before);
    }
}

#[test]
fn a_slow_disk_leaves_the_loop_free() {
    let (backend, gate) = MemBackend::with_len(SECTORS as usize * 512).gated();
    let mut blk = Block::new(Box::new(backend), false, "d")
        .with_engine(BlockIoEngine::Async, false)
        .expect("async");
    assert_eq!(blk.engine_name(), "worker thread", "no fd: no io_uring");
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    post(
        &mem,
        &mock,
        &[(VIRTIO_BLK_T_IN, 1, 512), (VIRTIO_BLK_T_FLUSH, 0, 0)],
    );
    activate(&mut blk, &mem, &mock);
    let start = Instant::now();
    blk.process_queue(0);
    blk.process_host_event();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the disk holds the requests, not the loop"
    );
    assert_eq!((blk.in_flight(), used_idx(&mem)), (2, 0));
    gate.send(()).expect("release");
    gate.send(()).expect("release");
    run_until(&mut blk, &mem, 2);
    assert_eq!(used(&mem, 0), (0, 513));
    assert_eq!(used(&mem, 1), (3, 1));
}

#[test]
fn a_snapshot_finishes_the_requests_in_flight_first() {
    let (backend, gate) = MemBackend::with_len(SECTORS as usize * 512).gated();
    let mut blk = Block::new(Box::new(backend.clone()), false, "d")
        .with_engine(BlockIoEngine::Async, false)
        .expect("async");
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    post(
        &mem,
        &mock,
        &[(VIRTIO_BLK_T_IN, 3, 512), (VIRTIO_BLK_T_OUT, 4, 512)],
    );
    let mut q = ready_queue(&mock);
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    let irq = Interrupt::new().expect("irq");
    blk.activate(mem.clone(), vec![q], irq.clone())
        .expect("activate");
    blk.process_queue(0);
    assert_eq!(blk.in_flight(), 2);
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        gate.send(()).expect("release");
        gate.send(()).expect("release");
    });
    blk.quiesce().expect("drained");
    release.join().expect("releaser");
    assert_eq!(blk.in_flight(), 0);
    assert_eq!(used_idx(&mem), 2, "both answered before the state is saved");
    let saved = blk.active_queues().expect("active").queue_states();
    assert_eq!(saved[0].next_used, 2, "the saved queue has them");
    assert!(irq.eventfd().read().expect("interrupt raised") >= 1);
    assert_eq!(
        guest(&mem, data_at(0), 512),
        backend.bytes(3 * 512..4 * 512)
    );

    // io_uring: the same, on a file.
    let img = image();
    let mut blk = device("io_uring", img.path());
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    post(&mem, &mock, &[(VIRTIO_BLK_T_IN, 3, 4096)]);
    activate(&mut blk, &mem, &mock);
    blk.process_queue(0);
    blk.quiesce().expect("drained");
    assert_eq!((blk.in_flight(), used_idx(&mem)), (0, 1));
    assert_eq!(
        guest(&mem, data_at(0), 4096),
        file_bytes(img.path(), 3 * 512..3 * 512 + 4096)
    );
}

#[test]
fn completions_from_before_a_reset_touch_no_queue() {
    let (backend, gate) = MemBackend::with_len(SECTORS as usize * 512).gated();
    let mut blk = Block::new(Box::new(backend), false, "d")
        .with_engine(BlockIoEngine::Async, false)
        .expect("async");
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    post(&mem, &mock, &[(VIRTIO_BLK_T_IN, 1, 512)]);
    activate(&mut blk, &mem, &mock);
    blk.process_queue(0);
    assert_eq!(blk.in_flight(), 1);
    blk.reset();
    gate.send(()).expect("release");
    let deadline = Instant::now() + Duration::from_secs(10);
    while blk.in_flight() > 0 {
        assert!(Instant::now() < deadline, "the completion arrives");
        std::thread::sleep(Duration::from_millis(5));
        blk.process_host_event();
    }
    assert_eq!(used_idx(&mem), 0, "dropped, not put on a queue");
    assert_eq!(byte_at(&mem, status_at(0)), 0xff);
}

#[test]
fn a_rate_limited_async_disk_polls_its_timer_and_completions_together() {
    use crate::rate_limiter::TokenBucketConfig;
    let img = image();
    let limit = RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: 20,
        }),
    };
    let mut blk = device("io_uring", img.path())
        .with_rate_limiter(&limit)
        .expect("limiter");
    let mut fds = Vec::new();
    blk.host_fds(&mut fds);
    let tokens: Vec<u32> = fds.iter().map(|&(_, token)| token).collect();
    assert_eq!(
        tokens,
        [HOST_COMPLETIONS, HOST_TIMER],
        "both polled, told apart"
    );
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    post(
        &mem,
        &mock,
        &[(VIRTIO_BLK_T_IN, 1, 512), (VIRTIO_BLK_T_IN, 2, 512)],
    );
    activate(&mut blk, &mem, &mock);
    blk.process_queue(0);
    assert_eq!(blk.metrics().rate_limiter_throttled.get(), 1);
    run_until(&mut blk, &mem, 2);
    assert_eq!(
        guest(&mem, data_at(1), 512),
        file_bytes(img.path(), 1024..1536)
    );
}

#[test]
fn a_full_in_flight_table_leaves_requests_queued_until_a_completion() {
    let (backend, gate) = MemBackend::with_len(SECTORS as usize * 512).gated();
    let mut blk = Block::new(Box::new(backend), false, "d")
        .with_engine(BlockIoEngine::Async, false)
        .expect("async");
    blk.in_flight = InFlightTable::new(1);
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    post(
        &mem,
        &mock,
        &[
            (VIRTIO_BLK_T_IN, 1, 512),
            (VIRTIO_BLK_T_IN, 2, 512),
            (VIRTIO_BLK_T_IN, 3, 512),
        ],
    );
    activate(&mut blk, &mem, &mock);
    blk.process_queue(0);
    assert_eq!((blk.in_flight(), used_idx(&mem)), (1, 0), "one at a time");
    for _ in 0..3 {
        gate.send(()).expect("release");
    }
    run_until(&mut blk, &mem, 3);
    let heads: Vec<u32> = (0..3).map(|n| used(&mem, n).0).collect();
    assert_eq!(heads, [0, 3, 6], "taken in order as slots freed");
}
