//! A multiqueue virtio-net device (2 to 4 queue pairs, each over its own tap queue, and a
//! control queue) driven by a hostile guest: fuzzed feature negotiation (the driver may
//! or may not accept VIRTIO_NET_F_MQ and VIRTIO_NET_F_CTRL_VQ, which moves the control
//! queue), descriptor chains on the control queue and on every pair's queues, interleaved
//! with queue-pair changes (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET commands the guest rewrites in
//! memory between notifications), host frames, resets, re-activations with other
//! features, and snapshot state saved and restored (or fuzzed).
//!
//! After every notification or host event of an active device whose tap accepts
//! attach/detach requests, the tap queues attached must be exactly the pairs in use; after
//! a host event of a reset device (a tap fd still polled), only the first.
//!
//! Input: a setup byte (bits 0-1 the pairs, 2 + value % 3; bit 2 a MAC address; bit 3 the
//! tap refuses to attach or detach queues), the features byte the driver accepts first
//! ([`features`]), per pair the number of host frames waiting (1 byte, at most 7) and
//! their lengths (u32 each), one queue description per device queue ([`rings`]: 2 per
//! pair, then the control queue's; [`virtq::write_queue_at`], at most 64 entries), the
//! number of operations (1 byte) and the operations, then the data area. An operation is
//! a byte: bits 0-2 the kind, bits 3-7 its argument `a`:
//!
//! - 0 notification of queue `a` (any index, some past the last queue);
//! - 1 host event with token `a % 8` (0 the first tap queue, 3.. the other pairs'), also
//!   after a reset;
//! - 2 notification of the control queue where the device says it is;
//! - 3 the guest makes `n` (1 byte) more entries available on queue `a` (entries it wrote
//!   before are handed out again);
//! - 4 the guest writes a u32 (after a u16 offset into the data area), e.g. a command's
//!   pair count or class;
//! - 5 reset;
//! - 6 restart: reset, a snapshot state from the input when `a` is odd (queue pairs and
//!   pairs in use, 1 byte each), a features byte, activation with the described queues;
//! - 7 snapshot: the device's state saved, the device reset, the state restored (it must
//!   be accepted, with the same pairs in use) and the device activated again.
#![no_main]

#[path = "common/backends.rs"]
mod backends;
#[path = "common/virtq.rs"]
mod virtq;

use backends::{Frames, TapQueue};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use virtio_queue::{Queue, QueueState};
use virtq::Input;
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::virtio::mmio::VirtioDeviceState;
use vmm::devices::virtio::net::{
    Net, NetBackend, NetState, QUEUE_SIZE, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS,
};
use vmm::devices::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use vmm::memory::GuestMemoryMmap;

/// Most entries a described queue has (so that 9 queues fit below the data area).
const QUEUE_CAP: u16 = 64;

/// Rings of queue `index` in this target's packed layout: 4 KiB per queue, the descriptor
/// table first, the available ring at 0x400, the used ring at 0x600.
fn rings(index: usize) -> (u64, u64, u64) {
    let base = index as u64 * 0x1000;
    (base, base + 0x400, base + 0x600)
}

/// The features a byte accepts: bit 0 CTRL_VQ, bit 1 MQ, bit 2 MRG_RXBUF, bit 3 MAC, bit 4
/// STATUS, bit 5 CSUM, bit 6 GUEST_TSO4, bit 7 leaves out VERSION_1.
fn features(byte: u8) -> u64 {
    let bits = [
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_MQ,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
    ];
    let mut acked = if byte & 0x80 == 0 {
        VIRTIO_F_VERSION_1
    } else {
        0
    };
    for (i, bit) in bits.iter().enumerate() {
        if byte & (1 << i) != 0 {
            acked |= bit;
        }
    }
    acked
}

struct Rig {
    net: Net,
    mem: GuestMemoryMmap,
    /// The described queues as the driver set them up (each activation starts afresh).
    queues: Vec<QueueState>,
    attached: Vec<Arc<AtomicBool>>,
    refuse: bool,
    acked: u64,
    active: bool,
}

impl Rig {
    fn activate(&mut self, acked: u64) {
        self.net.ack_features(acked);
        self.acked = acked;
        let irq = Interrupt::new().expect("interrupt");
        let queues = self
            .queues
            .iter()
            .map(|&state| Queue::try_from(state).expect("queue"))
            .collect();
        self.net
            .activate(self.mem.clone(), queues, irq)
            .expect("activate");
        self.active = true;
    }

    fn reset(&mut self) {
        self.net.reset();
        self.active = false;
    }

    /// Where the driver put the control queue (as virtio 1.2, 5.1.2 says), if it has one.
    fn ctrl_queue(&self) -> Option<usize> {
        let acked = self.acked & self.net.features();
        (acked & VIRTIO_NET_F_CTRL_VQ != 0).then(|| {
            if acked & VIRTIO_NET_F_MQ != 0 {
                2 * self.net.queue_pairs()
            } else {
                2
            }
        })
    }

    /// After an event: the pairs in use are sane, one without multiqueue, and (if the tap
    /// obeys) exactly the attached tap queues; a reset device keeps only the first.
    fn check(&self) {
        let (pairs, used) = (self.net.queue_pairs(), self.net.active_pairs());
        assert!(
            (1..=pairs).contains(&used),
            "{used} of {pairs} pairs in use"
        );
        if self.active && self.acked & VIRTIO_NET_F_MQ == 0 {
            // Without multiqueue the driver uses the first pair only (virtio 1.2, 5.1.6.5.5).
            assert_eq!(used, 1, "{used} pairs in use without VIRTIO_NET_F_MQ");
        }
        if !self.refuse {
            let serving = if self.active { used } else { 1 };
            for (k, attached) in self.attached.iter().enumerate() {
                assert_eq!(
                    attached.load(Ordering::Relaxed),
                    k < serving,
                    "tap queue {k} with {used} of {pairs} pairs in use, active {}",
                    self.active
                );
            }
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let setup = input.u8();
    let pairs = 2 + usize::from(setup & 3) % 3;
    let mac = (setup & 4 != 0).then_some([2, 0, 0, 0, 0, 1]);
    let refuse = setup & 8 != 0;
    let first_features = features(input.u8());
    let mut backends: Vec<Box<dyn NetBackend>> = Vec::new();
    let mut attached = Vec::new();
    for _ in 0..pairs {
        let count = input.u8() % 8;
        let (queue, on) = TapQueue::new(Frames::new(count, || input.u32()), refuse);
        backends.push(Box::new(queue));
        attached.push(on);
    }
    let net = Net::with_pairs("fuzz0", backends, mac, None, None).expect("net device");
    let mem = virtq::memory();
    let sizes = net.queue_max_sizes().to_vec();
    let queues = sizes
        .iter()
        .enumerate()
        .map(|(i, &max)| virtq::write_queue_at(&mem, rings(i), max, QUEUE_CAP, &mut input).state())
        .collect();
    debug_assert!(sizes[..2 * pairs].iter().all(|&s| s == QUEUE_SIZE));
    let nops = input.u8();
    let ops = input.take(usize::from(nops));
    // Operations read their own arguments from after the list; the data area follows.
    let mut args = Input(input.take(4 * usize::from(nops)));
    virtq::fill_data(&mem, input.rest());
    let mut rig = Rig {
        net,
        mem,
        queues,
        attached,
        refuse,
        acked: 0,
        active: false,
    };
    rig.activate(first_features);
    let nqueues = sizes.len();
    for &op in ops {
        let a = usize::from(op >> 3);
        // Whether the device saw a notification or host event (and so caught up with an
        // activation).
        let mut event = false;
        match op & 7 {
            0 if rig.active => {
                virtq::process(&mut rig.net, a % (nqueues + 2));
                event = true;
            }
            1 => {
                rig.net.process_host_fd(a as u32 % 8);
                event = true;
            }
            2 if rig.active => {
                if let Some(ctrl) = rig.ctrl_queue() {
                    virtq::process(&mut rig.net, ctrl);
                    event = true;
                }
            }
            3 => {
                let (_, avail, _) = rings(a % nqueues);
                let at = GuestAddress(avail + 2);
                let idx: u16 = rig.mem.read_obj(at).expect("avail idx");
                let more = u16::from(args.u8());
                rig.mem
                    .write_obj(idx.wrapping_add(more), at)
                    .expect("avail idx");
            }
            4 => {
                let offset = u64::from(args.u16()) % (virtq::DATA_LEN - 3);
                let value = args.u32();
                rig.mem
                    .write_obj(value, GuestAddress(virtq::DATA + offset))
                    .expect("data area");
            }
            5 => rig.reset(),
            6 => {
                rig.reset();
                if a & 1 != 0 {
                    let state = VirtioDeviceState::Net(NetState {
                        queue_pairs: u16::from(args.u8()),
                        active_pairs: u16::from(args.u8()),
                    });
                    let _ = rig.net.restore_device_state(&state, &rig.mem);
                }
                rig.activate(features(args.u8()));
            }
            7 => {
                let used = rig.net.active_pairs();
                let state = rig.net.save_device_state();
                rig.reset();
                if let Some(state) = state {
                    rig.net
                        .restore_device_state(&state, &rig.mem)
                        .expect("the device's own state");
                    assert_eq!(rig.net.active_pairs(), used, "pairs in use after restore");
                }
                rig.activate(rig.acked);
            }
            _ => {}
        }
        if event {
            rig.check();
        }
    }
    if rig.active {
        for queue in 0..nqueues {
            virtq::process(&mut rig.net, queue);
        }
        rig.check();
    }
});
