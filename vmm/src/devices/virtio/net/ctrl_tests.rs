//! Multiqueue on mock queues: the control queue's commands (good and hostile), frames on
//! the second pair reaching the second tap queue and back, the limiter shared by the pairs,
//! negotiation without multiqueue, and the snapshot state.

use super::ctrl::{
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_OK,
};
use super::tests::{frame, MockBackend};
use super::*;
use crate::devices::virtio::test_utils::*;
use crate::rate_limiter::TokenBucketConfig;
use std::sync::{Arc, Mutex};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

/// A tap queue stand-in: frames through a [`MockBackend`], a pollable fd, and a record of
/// attach (true) and detach (false) requests.
struct TapQueue {
    frames: MockBackend,
    evt: vmm_sys_util::eventfd::EventFd,
    attach: Arc<Mutex<Vec<bool>>>,
}

impl NetBackend for TapQueue {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.frames.read_frame(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.frames.write_frame(frame)
    }
    fn poll_fd(&self) -> Option<RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(&self.evt))
    }
    fn set_queue_enabled(&mut self, enabled: bool) -> io::Result<()> {
        self.attach.lock().expect("attach").push(enabled);
        Ok(())
    }
}

/// Where a command's header, data and status go.
const CMD: u64 = DATA;
const CMD_DATA: u64 = DATA + 0x100;
const STATUS: u64 = DATA + 0x200;

struct MqRig<'a> {
    /// rx0, tx0, rx1, tx1, ctrl.
    queues: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    frames: [MockBackend; 2],
    attach: [Arc<Mutex<Vec<bool>>>; 2],
    fds: [RawFd; 2],
    net: Net,
}

/// A two-pair device whose driver accepted `features` (besides VERSION_1), activated.
fn mq_rig(mem: &GuestMemoryMmap, features: u64, tx_limit: Option<RateLimiterConfig>) -> MqRig<'_> {
    let queues: Vec<_> = (0..5u64)
        .map(|i| MockSplitQueue::create(mem, GuestAddress(i * 0x2000), MOCK_QUEUE_SIZE))
        .collect();
    let frames = [MockBackend::default(), MockBackend::default()];
    let attach = [Arc::default(), Arc::default()];
    let mut fds = [0; 2];
    let backends: Vec<Box<dyn NetBackend>> = (0..2)
        .map(|k| {
            let evt = vmm_sys_util::eventfd::EventFd::new(0).expect("eventfd");
            fds[k] = std::os::fd::AsRawFd::as_raw_fd(&evt);
            Box::new(TapQueue {
                frames: frames[k].clone(),
                evt,
                attach: Arc::clone(&attach[k]),
            }) as Box<dyn NetBackend>
        })
        .collect();
    let mut net =
        Net::with_pairs("eth0", backends, None, None, tx_limit.as_ref()).expect("two pairs");
    net.ack_features(VIRTIO_F_VERSION_1 | features);
    let ready = queues.iter().map(ready_queue).collect();
    net.activate(mem.clone(), ready, Interrupt::new().expect("irq"))
        .expect("activate");
    MqRig {
        queues,
        frames,
        attach,
        fds,
        net,
    }
}

const MQ: u64 = VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ;

impl MqRig<'_> {
    /// Sends one command (header `class`, `cmd`, then `data`) on queue `index`; returns its
    /// used length and status byte.
    fn command(
        &mut self,
        mem: &GuestMemoryMmap,
        index: usize,
        class: u8,
        cmd: u8,
        data: &[u8],
    ) -> (u32, u8) {
        mem.write_slice(&[class, cmd], GuestAddress(CMD))
            .expect("hdr");
        mem.write_slice(data, GuestAddress(CMD_DATA)).expect("data");
        mem.write_obj(0xffu8, GuestAddress(STATUS)).expect("status");
        self.raw(
            mem,
            index,
            &[
                (CMD, 2, 0),
                (CMD_DATA, data.len() as u32, 0),
                (STATUS, 1, F_WRITE),
            ],
        )
    }

    /// Sends a chain of `(address, length, flags)` buffers on queue `index`; returns its
    /// used length and status byte.
    fn raw(&mut self, mem: &GuestMemoryMmap, index: usize, bufs: &[(u64, u32, u16)]) -> (u32, u8) {
        let last = bufs.len() - 1;
        let descs: Vec<_> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| match i {
                i if i == last => linked(addr, len, flags, 0),
                i => linked(addr, len, flags | F_NEXT, i as u16 + 1),
            })
            .collect();
        let q = &self.queues[index];
        let n = used_idx(mem, q);
        q.add_desc_chains(&descs, 0).expect("chain");
        self.net.process_queue(index);
        assert_eq!(used_idx(mem, q), n + 1, "the chain is returned");
        (used_entry(mem, q, u64::from(n)).1, byte_at(mem, STATUS))
    }

    fn polled_taps(&self) -> Vec<RawFd> {
        let mut fds = Vec::new();
        self.net.host_fds(&mut fds);
        fds.into_iter()
            .filter(|(fd, _)| self.fds.contains(fd))
            .map(|(fd, _)| fd)
            .collect()
    }
}

#[test]
fn one_pair_is_todays_device_and_more_offer_mq_with_a_control_queue() {
    let one = Net::new("e", Box::new(MockBackend::default()), None, None, None).expect("net");
    assert_eq!(one.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(one.features() & (VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ), 0);
    let mut pairs = [0u8; 2];
    one.read_config(8, &mut pairs);
    assert_eq!(u16::from_le_bytes(pairs), 1);
    assert!(
        one.save_device_state().is_none(),
        "nothing new in its snapshot"
    );

    let mem = memory();
    let r = mq_rig(&mem, MQ, None);
    assert_eq!(
        r.net.queue_max_sizes().len(),
        5,
        "two pairs and the control queue"
    );
    assert_eq!(r.net.features() & MQ, MQ);
    r.net.read_config(8, &mut pairs);
    assert_eq!(u16::from_le_bytes(pairs), 2, "max_virtqueue_pairs");
    assert_eq!(r.net.active_pairs(), 1, "one pair until the driver says");

    for n in [0, MAX_QUEUE_PAIRS as usize + 1] {
        let backends = (0..n)
            .map(|_| Box::new(MockBackend::default()) as Box<dyn NetBackend>)
            .collect();
        assert!(matches!(
            Net::with_pairs("e", backends, None, None, None),
            Err(NetError::BadQueuePairs(m)) if m == n
        ));
    }
}

#[test]
fn vq_pairs_set_switches_pairs_and_attaches_tap_queues() {
    let mem = memory();
    let mut r = mq_rig(&mem, MQ, None);
    // The first event sets up the backends: the second tap queue is detached.
    r.net.process_queue(TX_QUEUE);
    assert_eq!(*r.attach[1].lock().expect("attach"), [false]);
    assert_eq!(r.polled_taps(), [r.fds[0]]);
    let set = |r: &mut MqRig<'_>, n: u16| {
        r.command(
            &mem,
            4,
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &n.to_le_bytes(),
        )
    };
    assert_eq!(set(&mut r, 2), (1, VIRTIO_NET_OK));
    assert_eq!(r.net.active_pairs(), 2);
    assert_eq!(*r.attach[1].lock().expect("attach"), [false, true]);
    assert!(
        r.attach[0].lock().expect("attach").is_empty(),
        "pair 0 stays"
    );
    assert_eq!(r.polled_taps(), r.fds);
    for bad in [0, 3, u16::MAX] {
        assert_eq!(set(&mut r, bad), (1, VIRTIO_NET_ERR), "{bad} pairs");
        assert_eq!(r.net.active_pairs(), 2, "unchanged by a refused command");
    }
    assert_eq!(set(&mut r, 1), (1, VIRTIO_NET_OK));
    assert_eq!(r.polled_taps(), [r.fds[0]]);
    assert_eq!(*r.attach[1].lock().expect("attach"), [false, true, false]);
}

#[test]
fn other_commands_and_hostile_chains_get_an_error_or_nothing() {
    let mem = memory();
    let mut r = mq_rig(&mem, MQ, None);
    // Other classes (VIRTIO_NET_CTRL_RX promiscuous, MAC), other MQ commands (RSS),
    // wrong data lengths: VIRTIO_NET_ERR.
    for (class, cmd, data) in [
        (0u8, 0u8, &[1u8][..]),
        (1, 1, &[2, 0, 0, 0, 0, 1][..]),
        (VIRTIO_NET_CTRL_MQ, 1, &[0u8; 8][..]),
        (
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &[2u8][..],
        ),
        (
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &[2u8, 0, 0][..],
        ),
        (0xff, 0xff, &[0u8; 60][..]),
    ] {
        assert_eq!(
            r.command(&mem, 4, class, cmd, data),
            (1, VIRTIO_NET_ERR),
            "{class}/{cmd}"
        );
    }
    assert_eq!(
        r.raw(&mem, 4, &[(CMD, 1, 0), (STATUS, 1, F_WRITE)]),
        (1, VIRTIO_NET_ERR),
        "a 1-byte header"
    );
    // Chains the device cannot answer come back with length 0 and nothing written.
    mem.write_slice(
        &[VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 2, 0],
        GuestAddress(CMD),
    )
    .expect("cmd");
    for (what, chain) in [
        ("no status byte", vec![(CMD, 4, 0)]),
        (
            "readable after writable",
            vec![(STATUS, 1, F_WRITE), (CMD, 4, 0)],
        ),
        (
            "outside memory",
            vec![(CMD, 4, 0), (MEM_SIZE - 1, 8, F_WRITE)],
        ),
        (
            "huge outside memory",
            vec![(MEM_SIZE - 2, u32::MAX, 0), (STATUS, 1, F_WRITE)],
        ),
    ] {
        mem.write_obj(0xffu8, GuestAddress(STATUS)).expect("status");
        assert_eq!(r.raw(&mem, 4, &chain), (0, 0xff), "{what}");
    }
    // A descriptor loop.
    let q = &r.queues[4];
    q.add_desc_chains(&[linked(CMD, 4, F_NEXT, 0)], 0)
        .expect("loop");
    r.net.process_queue(4);
    assert_eq!(r.net.active_pairs(), 1, "no hostile chain changed anything");
}

#[test]
fn a_frame_on_pair_1_goes_to_tap_queue_1_and_back() {
    let mem = memory();
    let mut r = mq_rig(&mem, MQ, None);
    assert_eq!(
        r.command(
            &mem,
            4,
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &2u16.to_le_bytes()
        ),
        (1, VIRTIO_NET_OK)
    );
    let f = frame(100, 3);
    mem.write_slice(&f, GuestAddress(DATA + 0x1000))
        .expect("frame");
    r.queues[3]
        .add_desc_chains(&[desc(DATA + 0x1000, 100, 0)], 0)
        .expect("tx chain");
    r.net.process_queue(3);
    assert_eq!(*r.frames[1].tx.lock().expect("tx"), vec![f]);
    assert!(r.frames[0].tx.lock().expect("tx").is_empty());

    let g = frame(200, 4);
    r.frames[1].rx.lock().expect("rx").push_back(g.clone());
    r.queues[2]
        .add_desc_chains(&[desc(DATA + 0x2000, 2048, F_WRITE)], 0)
        .expect("rx chain");
    r.net.process_host_fd(tap_token(1));
    assert_eq!(used_idx(&mem, &r.queues[2]), 1);
    assert_eq!(used_entry(&mem, &r.queues[2], 0), (0, 200));
    let mut got = vec![0u8; 200];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x2000))
        .expect("read");
    let mut expected = g;
    expected[10] = 1; // num_buffers
    assert_eq!(got, expected);
    assert_eq!(used_idx(&mem, &r.queues[0]), 0, "pair 0 untouched");
    let m = r.net.metrics().totals();
    assert_eq!(
        (m["tx_packets"].as_u64(), m["rx_packets"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn the_rate_limiter_covers_all_pairs_together() {
    let mem = memory();
    let ops = TokenBucketConfig {
        size: 2,
        one_time_burst: None,
        refill_time: 10_000,
    };
    let limit = RateLimiterConfig {
        bandwidth: None,
        ops: Some(ops),
    };
    let mut r = mq_rig(&mem, MQ, Some(limit));
    for (index, addr) in [(1usize, DATA), (3, DATA + 0x100)] {
        r.queues[index]
            .add_desc_chains(&[desc(addr, 60, 0), desc(addr + 0x80, 60, 0)], 0)
            .expect("chains");
        r.net.process_queue(index);
    }
    let sent = |k: usize| r.frames[k].tx.lock().expect("tx").len();
    assert_eq!((sent(0), sent(1)), (2, 0), "two ops for the interface");
    assert_eq!(
        used_idx(&mem, &r.queues[3]),
        0,
        "pair 1 waits for the limiter"
    );
}

#[test]
fn without_mq_the_device_keeps_one_pair() {
    let mem = memory();
    // Neither feature: queue 2 is pair 1's receive queue, which the driver does not use.
    let mut r = mq_rig(&mem, 0, None);
    r.frames[1].rx.lock().expect("rx").push_back(frame(100, 5));
    r.queues[2]
        .add_desc_chains(&[desc(DATA, 2048, F_WRITE)], 0)
        .expect("chain");
    r.net.process_queue(2);
    r.net.process_host_fd(tap_token(1));
    assert_eq!(
        used_idx(&mem, &r.queues[2]),
        0,
        "nothing received on pair 1"
    );
    assert_eq!(r.polled_taps(), [r.fds[0]]);
    assert_eq!(r.net.active_pairs(), 1);

    // The control queue without MQ is queue 2, and VQ_PAIRS_SET is refused there.
    let mut r = mq_rig(&mem, VIRTIO_NET_F_CTRL_VQ, None);
    assert_eq!(
        r.command(
            &mem,
            2,
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &2u16.to_le_bytes()
        ),
        (1, VIRTIO_NET_ERR)
    );
    assert_eq!(r.net.active_pairs(), 1);
}

#[test]
fn the_pairs_in_use_survive_a_snapshot_and_a_reset_forgets_them() {
    let mem = memory();
    let mut r = mq_rig(&mem, MQ, None);
    r.command(
        &mem,
        4,
        VIRTIO_NET_CTRL_MQ,
        VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
        &2u16.to_le_bytes(),
    );
    let state = r
        .net
        .save_device_state()
        .expect("a multiqueue device has a state");
    assert_eq!(
        state,
        VirtioDeviceState::Net(NetState {
            queue_pairs: 2,
            active_pairs: 2
        })
    );
    let bytes = bincode::serialize(&state).expect("encode");
    let back: VirtioDeviceState = bincode::deserialize(&bytes).expect("decode");
    let mut fresh = mq_rig(&mem, MQ, None);
    fresh
        .net
        .restore_device_state(&back, &mem)
        .expect("restore");
    assert_eq!(fresh.net.active_pairs(), 2);
    fresh.net.process_queue(TX_QUEUE);
    assert_eq!(fresh.polled_taps(), fresh.fds, "both tap queues polled");
    assert!(
        fresh.attach[1].lock().expect("attach").is_empty(),
        "never detached"
    );

    for bad in [
        NetState {
            queue_pairs: 3,
            active_pairs: 1,
        },
        NetState {
            queue_pairs: 2,
            active_pairs: 0,
        },
        NetState {
            queue_pairs: 2,
            active_pairs: 3,
        },
    ] {
        assert!(fresh
            .net
            .restore_device_state(&VirtioDeviceState::Net(bad), &mem)
            .is_err());
    }
    let mut one = Net::new("e", Box::new(MockBackend::default()), None, None, None).expect("net");
    assert!(
        one.restore_device_state(&back, &mem).is_err(),
        "one pair, not two"
    );

    r.net.process_queue(TX_QUEUE);
    assert_eq!(r.polled_taps(), r.fds);
    r.net.reset();
    assert_eq!(
        r.net.active_pairs(),
        1,
        "a reset driver starts with one pair"
    );
    // The next event on the VMM thread stops polling and detaches the second tap queue,
    // so the host steers no frame to a queue nobody may read again.
    r.net.process_host_fd(tap_token(1));
    assert!(r.polled_taps().is_empty());
    assert_eq!(r.attach[1].lock().expect("attach").last(), Some(&false));
    assert!(
        r.attach[0].lock().expect("attach").is_empty(),
        "queue 0 stays"
    );
}

#[test]
fn a_restored_pair_count_without_mq_falls_back_to_one_pair() {
    // Found by the virtio_net_mq fuzz target: a snapshot saying 2 pairs in use, restored
    // into a device whose driver accepted CTRL_VQ but not MQ, had pair 1 receive into
    // queue 2, the control queue.
    let mem = memory();
    let mut r = mq_rig(&mem, VIRTIO_NET_F_CTRL_VQ, None);
    r.net.reset();
    let state = VirtioDeviceState::Net(NetState {
        queue_pairs: 2,
        active_pairs: 2,
    });
    r.net.restore_device_state(&state, &mem).expect("restore");
    r.net
        .ack_features(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_CTRL_VQ);
    let ready = r.queues.iter().map(ready_queue).collect();
    r.net
        .activate(mem.clone(), ready, Interrupt::new().expect("irq"))
        .expect("activate");
    r.frames[1].rx.lock().expect("rx").push_back(frame(100, 5));
    r.net.process_host_fd(tap_token(1));
    assert_eq!(r.net.active_pairs(), 1);
    assert_eq!(r.polled_taps(), [r.fds[0]]);
    assert_eq!(
        r.attach[1].lock().expect("attach").last(),
        Some(&false),
        "tap queue 1 stays detached"
    );
    assert_eq!(
        r.command(
            &mem,
            2,
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &[2, 0]
        ),
        (1, VIRTIO_NET_ERR),
        "queue 2 is still the control queue"
    );
}
