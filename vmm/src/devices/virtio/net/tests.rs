//! virtio-net tests on mock queues with an in-memory backend.

use super::*;
use crate::devices::virtio::test_utils::*;
use crate::rate_limiter::TokenBucketConfig;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

/// Frames to hand the device (RX) and frames it wrote (TX).
#[derive(Debug, Clone, Default)]
pub(super) struct MockBackend {
    pub(super) rx: Arc<Mutex<VecDeque<Vec<u8>>>>,
    pub(super) tx: Arc<Mutex<Vec<Vec<u8>>>>,
    offload: Arc<Mutex<Option<u64>>>,
}

impl NetBackend for MockBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self
            .rx
            .lock()
            .expect("rx")
            .pop_front()
            .ok_or(io::ErrorKind::WouldBlock)?;
        buf[..frame.len()].copy_from_slice(&frame);
        Ok(frame.len())
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.tx.lock().expect("tx").push(frame.to_vec());
        Ok(())
    }

    fn set_offload(&mut self, acked: u64) -> io::Result<()> {
        *self.offload.lock().expect("offload") = Some(acked);
        Ok(())
    }
}

const RX_BASE: u64 = 0;
const TX_BASE: u64 = 0x8000;

pub(super) struct Rig<'a> {
    pub(super) rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    pub(super) txq: MockSplitQueue<'a, GuestMemoryMmap>,
    pub(super) backend: MockBackend,
    pub(super) net: Net,
    pub(super) irq: Interrupt,
}

fn rig<'a>(mem: &'a GuestMemoryMmap, tx_limit: Option<RateLimiterConfig>) -> Rig<'a> {
    let backend = MockBackend::default();
    rig_with(mem, Box::new(backend.clone()), 0, None, tx_limit, backend)
}

/// A device over `net_backend` (`backend` is what the tests look at), with the features
/// `extra` accepted besides VERSION_1 and GUEST_CSUM, activated on mock queues.
pub(super) fn rig_with<'a>(
    mem: &'a GuestMemoryMmap,
    net_backend: Box<dyn NetBackend>,
    extra: u64,
    rx_limit: Option<RateLimiterConfig>,
    tx_limit: Option<RateLimiterConfig>,
    backend: MockBackend,
) -> Rig<'a> {
    let rxq = MockSplitQueue::create(mem, GuestAddress(RX_BASE), MOCK_QUEUE_SIZE);
    let txq = MockSplitQueue::create(mem, GuestAddress(TX_BASE), MOCK_QUEUE_SIZE);
    let mut net = Net::new(
        "eth0",
        net_backend,
        Some([2, 0, 0, 0, 0, 1]),
        rx_limit.as_ref(),
        tx_limit.as_ref(),
    )
    .expect("net");
    let irq = Interrupt::new().expect("irq");
    net.ack_features(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_GUEST_CSUM | extra | (1 << 40));
    net.activate(
        mem.clone(),
        vec![ready_queue(&rxq), ready_queue(&txq)],
        irq.clone(),
    )
    .expect("activate");
    Rig {
        rxq,
        txq,
        backend,
        net,
        irq,
    }
}

pub(super) fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
    f[..VNET_HDR_LEN].fill(0);
    f
}

pub(super) fn guest(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).expect("read");
    buf
}

#[test]
fn features_config_and_offloads() {
    let mem = memory();
    let r = rig(&mem, None);
    assert_eq!(r.net.device_type(), TYPE_NET);
    assert_eq!(r.net.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_STATUS,
    ] {
        assert_ne!(r.net.features() & bit, 0, "{bit:#x}");
    }
    let mut cfg = [0u8; 8];
    r.net.read_config(0, &mut cfg);
    assert_eq!(cfg, [2, 0, 0, 0, 0, 1, 1, 0], "MAC then link up");
    assert_eq!(
        *r.backend.offload.lock().expect("offload"),
        None,
        "activation (a vCPU thread) makes no host calls"
    );
    let mut r = r;
    r.net.process_queue(RX_QUEUE);
    assert_eq!(
        *r.backend.offload.lock().expect("offload"),
        Some(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_GUEST_CSUM),
        "only offered bits"
    );
    let plain = Net::new("x", Box::new(MockBackend::default()), None, None, None).expect("net");
    assert_eq!(
        plain.features() & VIRTIO_NET_F_MAC,
        0,
        "no MAC: the guest picks one"
    );
}

#[test]
fn tx_gathers_the_chain_and_writes_one_frame() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let f = frame(74, 1);
    mem.write_slice(&f[..12], GuestAddress(DATA)).expect("hdr");
    mem.write_slice(&f[12..], GuestAddress(DATA + 0x1000))
        .expect("frame");
    r.txq
        .add_desc_chains(
            &[linked(DATA, 12, F_NEXT, 1), linked(DATA + 0x1000, 62, 0, 0)],
            0,
        )
        .expect("chain");
    r.net.process_queue(TX_QUEUE);
    assert_eq!(*r.backend.tx.lock().expect("tx"), vec![f]);
    assert_eq!(used_idx(&mem, &r.txq), 1);
    assert_eq!(used_entry(&mem, &r.txq, 0), (0, 0));
    assert_eq!(r.irq.eventfd().read().expect("interrupt"), 1);
    let m = r.net.metrics().totals();
    assert_eq!(
        (m["tx_packets"].as_u64(), m["tx_bytes"].as_u64()),
        (Some(1), Some(74))
    );
}

#[test]
fn malformed_tx_chains_are_returned_and_dropped() {
    let mem = memory();
    let mut r = rig(&mem, None);
    r.txq
        .add_desc_chains(
            &[
                linked(DATA, 60, F_WRITE, 0),    // device-writable
                linked(DATA, 8, 0, 0),           // shorter than the header
                linked(DATA, 40_000, F_NEXT, 3), // 80000 bytes: too large
                linked(DATA, 40_000, 0, 0),
                linked(MEM_SIZE - 8, 64, 0, 0), // outside guest memory
                linked(DATA, 12, F_NEXT, 5),    // a loop
            ],
            0,
        )
        .expect("chains");
    r.net.process_queue(TX_QUEUE);
    assert!(r.backend.tx.lock().expect("tx").is_empty(), "nothing sent");
    assert_eq!(used_idx(&mem, &r.txq), 5);
    for n in 0..5 {
        assert_eq!(used_entry(&mem, &r.txq, n).1, 0);
    }
    assert_eq!(r.net.metrics().dropped.get(), 5);
    assert_eq!(r.net.metrics().tx_packets.get(), 0);
}

#[test]
fn rx_writes_the_frame_with_its_header_into_one_chain() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let f = frame(1514, 2);
    r.backend.rx.lock().expect("rx").push_back(f.clone());
    r.rxq
        .add_desc_chains(
            &[
                linked(DATA, 1000, F_WRITE | F_NEXT, 1),
                linked(DATA + 0x1000, 1000, F_WRITE, 0),
            ],
            0,
        )
        .expect("chain");
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_entry(&mem, &r.rxq, 0), (0, 1514));
    let mut expected = f.clone();
    expected[10..12].copy_from_slice(&1u16.to_le_bytes());
    let mut got = guest(&mem, DATA, 1000);
    got.extend(guest(&mem, DATA + 0x1000, 514));
    assert_eq!(got, expected, "num_buffers is 1");
    assert!(!r.net.rx_deferred());
    assert_eq!(r.irq.eventfd().read().expect("interrupt"), 1);
    let m = r.net.metrics().totals();
    assert_eq!(
        (m["rx_packets"].as_u64(), m["rx_bytes"].as_u64()),
        (Some(1), Some(1514))
    );
}

#[test]
fn rx_without_buffers_leaves_frames_in_the_tap_until_the_driver_adds_some() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let f = frame(100, 3);
    r.backend
        .rx
        .lock()
        .expect("rx")
        .extend([f.clone(), frame(60, 4)]);
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&mem, &r.rxq), 0);
    assert_eq!(
        r.backend.rx.lock().expect("rx").len(),
        2,
        "nothing is read without a buffer to read into"
    );
    assert!(!r.net.rx_deferred());
    r.rxq
        .add_desc_chains(&[linked(DATA, 2048, F_WRITE, 0)], 0)
        .expect("chain");
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_entry(&mem, &r.rxq, 0), (0, 100));
    assert_eq!(guest(&mem, DATA + 12, 88), f[12..]);
    assert_eq!(
        r.backend.rx.lock().expect("rx").len(),
        1,
        "the second frame waits in the tap"
    );
    assert!(!r.net.rx_deferred());
}

#[test]
fn bad_rx_chains_are_returned_empty_and_frames_go_to_good_ones() {
    let mem = memory();
    let mut r = rig(&mem, None);
    let good = frame(100, 6);
    r.backend.rx.lock().expect("rx").extend([
        frame(100, 5),
        good.clone(),
        frame(100, 7),
        vec![0u8; 4],
    ]);
    r.rxq
        .add_desc_chains(
            &[
                linked(DATA, 2048, 0, 0),               // device-readable
                linked(DATA + 0x1000, 50, F_WRITE, 0),  // too small for the frame
                linked(MEM_SIZE - 8, 2048, F_WRITE, 0), // outside guest memory
                linked(DATA + 0x2000, 2048, F_WRITE, 0),
            ],
            0,
        )
        .expect("chains");
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&mem, &r.rxq), 4);
    let lens: Vec<u32> = (0..4).map(|n| used_entry(&mem, &r.rxq, n).1).collect();
    assert_eq!(lens, [0, 0, 0, 100], "only the good chain holds a frame");
    assert_eq!(
        guest(&mem, DATA + 0x2000 + 12, 88),
        good[12..],
        "the frame after the one too big for its chain"
    );
    assert!(!r.net.rx_deferred());
    assert_eq!(
        (
            r.net.metrics().dropped.get(),
            r.net.metrics().rx_packets.get()
        ),
        (1, 1),
        "one frame did not fit its chain"
    );
    assert_eq!(r.backend.rx.lock().expect("rx").len(), 2, "the rest wait");
}

#[test]
fn tx_rate_limiter_throttles_and_resumes() {
    let mem = memory();
    let ops = TokenBucketConfig {
        size: 1,
        one_time_burst: None,
        refill_time: 10_000,
    };
    let mut r = rig(
        &mem,
        Some(RateLimiterConfig {
            bandwidth: None,
            ops: Some(ops),
        }),
    );
    r.txq
        .add_desc_chains(&[linked(DATA, 60, 0, 0), linked(DATA + 0x100, 60, 0, 0)], 0)
        .expect("chains");
    r.net.process_queue(TX_QUEUE);
    assert_eq!(r.backend.tx.lock().expect("tx").len(), 1, "one op per 10 s");
    assert_eq!(
        used_idx(&mem, &r.txq),
        1,
        "the second chain stays on the queue"
    );
    r.net.process_queue(TX_QUEUE);
    assert_eq!(r.backend.tx.lock().expect("tx").len(), 1, "still throttled");
    assert_eq!(r.net.metrics().tx_rate_limiter_throttled.get(), 2);
    if let Some(l) = r.net.tx_limiter.as_mut() {
        l.unblock();
        l.replenish(1, crate::rate_limiter::TokenType::Ops);
    }
    r.net.process_queue(TX_QUEUE);
    assert_eq!(r.backend.tx.lock().expect("tx").len(), 2);
    assert_eq!(used_idx(&mem, &r.txq), 2);
}

#[test]
fn macs_parse() {
    assert_eq!(
        parse_mac("02:aB:00:10:ff:01").expect("mac"),
        [2, 0xab, 0, 0x10, 0xff, 1]
    );
    for bad in [
        "",
        "02:00:00:00:00",
        "02:00:00:00:00:00:00",
        "2:00:00:00:00:00",
        "02:00:00:00:00:zz",
        "02-00-00-00-00-00",
    ] {
        assert!(parse_mac(bad).is_err(), "{bad:?}");
    }
}

/// A mock backend with an fd to poll, as a tap has.
struct Pollable(MockBackend, vmm_sys_util::eventfd::EventFd);

impl NetBackend for Pollable {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_frame(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.write_frame(frame)
    }
    fn poll_fd(&self) -> Option<RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(&self.1))
    }
}

#[test]
fn the_tap_is_polled_from_the_first_event_after_activation_until_a_reset() {
    let mem = memory();
    let backend = MockBackend::default();
    let evt = vmm_sys_util::eventfd::EventFd::new(0).expect("eventfd");
    let tap = std::os::fd::AsRawFd::as_raw_fd(&evt);
    let limit = RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: 10_000,
        }),
    };
    let pollable = Pollable(backend.clone(), evt);
    let mut r = rig_with(&mem, Box::new(pollable), 0, Some(limit), None, backend);
    let host_fds = |net: &Net| {
        let mut fds = Vec::new();
        net.host_fds(&mut fds);
        fds
    };
    let timer = host_fds(&r.net)[0];
    assert_eq!(
        timer.1, TOKEN_RX_TIMER,
        "the limiter's timer is always polled"
    );
    assert_eq!(
        host_fds(&r.net).len(),
        1,
        "activated on a vCPU: not yet the tap"
    );
    // With a buffer to receive into, the first event has the tap polled.
    r.rxq
        .add_desc_chains(&[desc(DATA, 2048, F_WRITE)], 0)
        .expect("chain");
    r.net.process_queue(RX_QUEUE);
    assert_eq!(host_fds(&r.net), [(tap, TOKEN_TAP), timer]);
    r.net.reset();
    r.net.process_host_fd(TOKEN_RX_TIMER);
    assert_eq!(
        host_fds(&r.net),
        [timer],
        "a reset device stops reading the tap"
    );
}
