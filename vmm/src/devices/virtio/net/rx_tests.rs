//! Receive tests: mergeable buffers (`num_buffers`, frames held until enough buffers are
//! posted), reads straight into guest memory, hostile chains, the rate limiter and the
//! interrupts the driver asked for.

use super::tap::Tap;
use super::tests::{frame, guest, rig_with, MockBackend, Rig};
use super::*;
use crate::devices::virtio::test_utils::*;
use crate::rate_limiter::{TokenBucketConfig, TokenType};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueT;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

fn mrg_rig(mem: &GuestMemoryMmap, rx_limit: Option<RateLimiterConfig>) -> Rig<'_> {
    let backend = MockBackend::default();
    rig_with(
        mem,
        Box::new(backend.clone()),
        VIRTIO_NET_F_MRG_RXBUF,
        rx_limit,
        None,
        backend,
    )
}

/// Where RX buffer `i` lives.
fn buf_addr(i: u16) -> u64 {
    DATA + 0x1_0000 * u64::from(i)
}

/// Makes `count` one-buffer chains of `len` bytes available, descriptors `first`.. on.
fn post(mock: &MockSplitQueue<'_, GuestMemoryMmap>, first: u16, count: u16, len: u32) {
    let descs: Vec<_> = (first..first + count)
        .map(|i| linked(buf_addr(i), len, F_WRITE, 0))
        .collect();
    mock.add_desc_chains(&descs, first).expect("chains");
}

fn next_avail(net: &Net) -> u16 {
    net.active_queues().expect("active").queues[RX_QUEUE].next_avail()
}

fn num_buffers(mem: &GuestMemoryMmap, addr: u64) -> u16 {
    u16::from_le(mem.read_obj(GuestAddress(addr + 10)).expect("num_buffers"))
}

/// `f` as the guest should see it: `num_buffers` set.
fn with_num_buffers(f: &[u8], n: u16) -> Vec<u8> {
    let mut f = f.to_vec();
    f[10..12].copy_from_slice(&n.to_le_bytes());
    f
}

/// The bytes of used buffers `bufs` (index, length), in order.
fn gathered(mem: &GuestMemoryMmap, bufs: &[(u16, usize)]) -> Vec<u8> {
    bufs.iter()
        .flat_map(|&(i, len)| guest(mem, buf_addr(i), len))
        .collect()
}

#[test]
fn mergeable_buffers_are_offered() {
    let mem = memory();
    let r = mrg_rig(&mem, None);
    assert_ne!(r.net.features() & VIRTIO_NET_F_MRG_RXBUF, 0);
}

#[test]
fn a_frame_spans_buffers_with_num_buffers_set() {
    let mem = memory();
    let mut r = mrg_rig(&mem, None);
    post(&r.rxq, 0, 5, 1024);
    let mut big = frame(3000, 9);
    big[10..12].copy_from_slice(&[0xee, 0xee]); // what was in the tap's header
    let small = frame(100, 10);
    r.backend
        .rx
        .lock()
        .expect("rx")
        .extend([big.clone(), small.clone()]);
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&mem, &r.rxq), 4);
    let used: Vec<_> = (0..4).map(|n| used_entry(&mem, &r.rxq, n)).collect();
    assert_eq!(used, [(0, 1024), (1, 1024), (2, 952), (3, 100)]);
    assert_eq!(num_buffers(&mem, buf_addr(0)), 3);
    assert_eq!(
        gathered(&mem, &[(0, 1024), (1, 1024), (2, 952)]),
        with_num_buffers(&big, 3)
    );
    assert_eq!(gathered(&mem, &[(3, 100)]), with_num_buffers(&small, 1));
    assert_eq!(next_avail(&r.net), 4, "the unused buffer stays available");
    assert_eq!(
        r.irq.eventfd().read().expect("interrupt"),
        1,
        "one interrupt"
    );
    assert_eq!(r.net.metrics().rx_packets.get(), 2);
    assert_eq!(r.net.metrics().rx_bytes.get(), 3100);
}

#[test]
fn a_frame_waits_until_enough_buffers_are_posted() {
    let mem = memory();
    let mut r = mrg_rig(&mem, None);
    post(&r.rxq, 0, 2, 1024);
    let (big, next) = (frame(3000, 11), frame(500, 12));
    r.backend
        .rx
        .lock()
        .expect("rx")
        .extend([big.clone(), next.clone()]);
    r.net.process_queue(RX_QUEUE);
    assert!(r.net.rx_deferred(), "the frame is held");
    assert_eq!(used_idx(&mem, &r.rxq), 0, "nothing partial is visible");
    assert_eq!(
        next_avail(&r.net),
        0,
        "the two buffers go back to the queue"
    );
    assert_eq!(r.irq.status(), 0);
    assert_eq!(
        r.backend.rx.lock().expect("rx").len(),
        1,
        "the tap is not read while a frame is held"
    );

    post(&r.rxq, 2, 2, 1024);
    r.net.process_queue(RX_QUEUE);
    assert!(!r.net.rx_deferred());
    let used: Vec<_> = (0..4).map(|n| used_entry(&mem, &r.rxq, n)).collect();
    assert_eq!(used, [(0, 1024), (1, 1024), (2, 952), (3, 500)]);
    assert_eq!(used_idx(&mem, &r.rxq), 4);
    assert_eq!(
        gathered(&mem, &[(0, 1024), (1, 1024), (2, 952)]),
        with_num_buffers(&big, 3),
        "the held frame, whole"
    );
    assert_eq!(gathered(&mem, &[(3, 500)]), with_num_buffers(&next, 1));
    assert_eq!(
        (
            r.net.metrics().rx_packets.get(),
            r.net.metrics().dropped.get()
        ),
        (2, 0),
        "each frame once, none lost"
    );
}

#[test]
fn hostile_chains_are_returned_empty_and_never_written() {
    let mem = memory();
    let mut r = mrg_rig(&mem, None);
    let f = frame(1500, 13);
    r.backend.rx.lock().expect("rx").push_back(f.clone());
    r.rxq
        .add_desc_chains(
            &[
                linked(buf_addr(0), 1024, 0, 0),        // device-readable
                linked(buf_addr(1), 8, F_WRITE, 0),     // shorter than a header
                linked(MEM_SIZE - 8, 1024, F_WRITE, 0), // outside guest memory
                linked(buf_addr(3), 2048, F_WRITE, 0),
                linked(buf_addr(4), 64, F_WRITE | F_NEXT, 4), // a loop
            ],
            0,
        )
        .expect("chains");
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&mem, &r.rxq), 5);
    let used: Vec<_> = (0..5).map(|n| used_entry(&mem, &r.rxq, n)).collect();
    assert_eq!(used, [(0, 0), (1, 0), (2, 0), (3, 1500), (4, 0)]);
    assert_eq!(gathered(&mem, &[(3, 1500)]), with_num_buffers(&f, 1));
    for i in [0, 1, 4] {
        assert_eq!(guest(&mem, buf_addr(i), 64), vec![0; 64], "buffer {i}");
    }
    assert_eq!(r.net.metrics().rx_packets.get(), 1);
}

#[test]
fn a_frame_that_needs_the_buffers_behind_a_bad_chain_is_dropped() {
    let mem = memory();
    let mut r = mrg_rig(&mem, None);
    let (small, mid) = (frame(500, 15), frame(2000, 16));
    r.backend
        .rx
        .lock()
        .expect("rx")
        .extend([frame(3000, 14), small.clone(), mid.clone()]);
    r.rxq
        .add_desc_chains(
            &[
                linked(buf_addr(0), 1024, F_WRITE, 0),
                linked(buf_addr(1), 1024, 0, 0), // device-readable
                linked(buf_addr(2), 4096, F_WRITE, 0),
            ],
            0,
        )
        .expect("chains");
    r.net.process_queue(RX_QUEUE);
    let used: Vec<_> = (0..3).map(|n| used_entry(&mem, &r.rxq, n)).collect();
    assert_eq!(used, [(0, 500), (1, 0), (2, 2000)]);
    assert_eq!(gathered(&mem, &[(0, 500)]), with_num_buffers(&small, 1));
    assert_eq!(gathered(&mem, &[(2, 2000)]), with_num_buffers(&mid, 1));
    assert_eq!(
        (
            r.net.metrics().dropped.get(),
            r.net.metrics().rx_packets.get()
        ),
        (1, 2)
    );
    assert!(!r.net.rx_deferred());
}

#[test]
fn frames_are_read_straight_into_guest_buffers() {
    let mem = memory();
    let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
    ours.set_nonblocking(true).expect("non-blocking");
    let tap = Tap::from_file(File::from(OwnedFd::from(ours)), "test0");
    let mut r = rig_with(
        &mem,
        Box::new(tap),
        VIRTIO_NET_F_MRG_RXBUF,
        None,
        None,
        MockBackend::default(),
    );
    // The first chain splits the header across two descriptors.
    r.rxq
        .add_desc_chains(
            &[
                linked(buf_addr(0), 8, F_WRITE | F_NEXT, 1),
                linked(buf_addr(0) + 0x100, 1016, F_WRITE, 0),
                linked(buf_addr(2), 1024, F_WRITE, 0),
            ],
            0,
        )
        .expect("chains");
    let (a, b) = (frame(1800, 17), frame(200, 18));
    theirs.send(&a).expect("send");
    theirs.send(&b).expect("send");
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&mem, &r.rxq), 2, "only the first frame had room");
    assert_eq!(used_entry(&mem, &r.rxq, 0), (0, 1024));
    assert_eq!(used_entry(&mem, &r.rxq, 1), (2, 776));
    let mut got = guest(&mem, buf_addr(0), 8);
    got.extend(guest(&mem, buf_addr(0) + 0x100, 1016));
    got.extend(guest(&mem, buf_addr(2), 776));
    assert_eq!(got, with_num_buffers(&a, 2));
    let region = mem.find_region(GuestAddress(buf_addr(2))).expect("region");
    assert!(
        region.bitmap().dirty_at(buf_addr(2) as usize),
        "pages the kernel wrote are dirty for diff snapshots"
    );
    assert!(!r.net.rx_deferred(), "the second frame waits in the socket");

    r.rxq
        .add_desc_chains(&[linked(buf_addr(3), 1024, F_WRITE, 0)], 3)
        .expect("chain");
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_entry(&mem, &r.rxq, 2), (3, 200));
    assert_eq!(gathered(&mem, &[(3, 200)]), with_num_buffers(&b, 1));
}

#[test]
fn the_rx_rate_limiter_holds_a_frame_it_read_and_delivers_it_later() {
    let mem = memory();
    let ops = TokenBucketConfig {
        size: 1,
        one_time_burst: None,
        refill_time: 10_000,
    };
    let mut r = mrg_rig(
        &mem,
        Some(RateLimiterConfig {
            bandwidth: None,
            ops: Some(ops),
        }),
    );
    post(&r.rxq, 0, 4, 1024);
    let second = frame(600, 20);
    r.backend
        .rx
        .lock()
        .expect("rx")
        .extend([frame(500, 19), second.clone()]);
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&mem, &r.rxq), 1, "one frame per 10 s");
    assert!(r.net.rx_deferred(), "the second frame was read and is held");
    assert_eq!(next_avail(&r.net), 1);
    assert_eq!(r.net.metrics().rx_rate_limiter_throttled.get(), 1);
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&mem, &r.rxq), 1, "still throttled");
    if let Some(l) = r.net.rx_limiter.as_mut() {
        l.unblock();
        l.replenish(1, TokenType::Ops);
    }
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&mem, &r.rxq), 2);
    assert_eq!(used_entry(&mem, &r.rxq, 1), (1, 600));
    assert_eq!(gathered(&mem, &[(1, 600)]), with_num_buffers(&second, 1));
    assert!(!r.net.rx_deferred());
}

/// Where the event-index test puts the RX used ring (the mock's overlaps `used_event`).
const USED_RING: u64 = 0x4000;

#[test]
fn the_interrupt_follows_used_event_across_a_multi_buffer_frame() {
    let mem = memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0), MOCK_QUEUE_SIZE);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x8000), MOCK_QUEUE_SIZE);
    let mut q = ready_queue(&rxq);
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_event_idx(true);
    let backend = MockBackend::default();
    let mut net = Net::new("eth0", Box::new(backend.clone()), None, None, None).expect("net");
    net.ack_features(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF);
    let irq = Interrupt::new().expect("irq");
    net.activate(mem.clone(), vec![q, ready_queue(&txq)], irq.clone())
        .expect("activate");
    // The driver wants an interrupt once used entry 2 is written.
    let used_event = rxq.avail_addr().0 + 4 + 2 * u64::from(MOCK_QUEUE_SIZE);
    mem.write_obj(2u16.to_le(), GuestAddress(used_event))
        .expect("used_event");
    post(&rxq, 0, 6, 1024);
    backend.rx.lock().expect("rx").push_back(frame(100, 21));
    net.process_queue(RX_QUEUE);
    let idx: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).expect("idx");
    assert_eq!(idx, 1);
    assert_eq!(irq.status(), 0, "entry 2 not used yet");
    backend.rx.lock().expect("rx").push_back(frame(3000, 22));
    net.process_queue(RX_QUEUE);
    let idx: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).expect("idx");
    assert_eq!(idx, 4, "three entries, published together");
    assert_ne!(irq.status(), 0, "entry 2 was among them");
}
