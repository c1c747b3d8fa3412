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
//! a host event of a reset device (a tap fd still polled), only the first. Every chain the
//! device returns on the control queue has a used length of 0 (unanswered) or 1 (its
//! status byte); the harness reads each answered chain back itself and checks the status:
//! VIRTIO_NET_OK exactly for a 4-byte VQ_PAIRS_SET within the device's pairs when
//! multiqueue was accepted, VIRTIO_NET_ERR for anything else (chains through indirect
//! tables, or touching what the device wrote in the same batch, are not judged).
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
use virtio_bindings::virtio_net;
use virtio_queue::desc::split::Descriptor;
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

// The control queue's values from the spec's headers (virtio-bindings), not from the
// device's code.
const VIRTIO_NET_CTRL_MQ: u8 = virtio_net::VIRTIO_NET_CTRL_MQ as u8;
const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: u8 = virtio_net::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;
const VIRTIO_NET_OK: u8 = virtio_net::VIRTIO_NET_OK as u8;
const VIRTIO_NET_ERR: u8 = virtio_net::VIRTIO_NET_ERR as u8;
/// Device-readable bytes of a command the device looks at.
const COMMAND_BYTES: usize = 64;

/// A control chain read back by the harness, as a driver wrote it.
struct CtrlChain {
    /// Its device-readable bytes (the first [`COMMAND_BYTES`]) and their total length.
    command: Vec<u8>,
    readable: usize,
    /// Where its status byte is (its first non-empty device-writable buffer).
    status: u64,
    /// Guest memory the device read for it: descriptors and readable buffers.
    read: Vec<(u64, u64)>,
}

/// Reads the chain at `head` of a queue's descriptor table; `None` for one the harness
/// does not judge: through an indirect table, or one the device cannot answer (no status
/// byte, a readable buffer after it, no end within the queue's size).
fn read_ctrl_chain(mem: &GuestMemoryMmap, table: u64, size: u16, head: u16) -> Option<CtrlChain> {
    let (mut command, mut readable, mut read) = (Vec::new(), 0usize, Vec::new());
    let mut status = None;
    let mut index = head;
    for _ in 0..size {
        if index >= size {
            return None;
        }
        let at = table + 16 * u64::from(index);
        read.push((at, 16));
        let desc: Descriptor = mem.read_obj(GuestAddress(at)).ok()?;
        let len = desc.len() as usize;
        if desc.refers_to_indirect_table() {
            return None;
        }
        if desc.is_write_only() {
            if len > 0 && status.is_none() {
                status = Some(desc.addr().0);
            }
        } else {
            if status.is_some() {
                return None;
            }
            let take = len.min(COMMAND_BYTES.saturating_sub(command.len()));
            let mut bytes = vec![0u8; take];
            mem.read_slice(&mut bytes, desc.addr()).ok()?;
            command.extend_from_slice(&bytes);
            read.push((desc.addr().0, take as u64));
            readable = readable.saturating_add(len);
        }
        if !desc.has_next() {
            return Some(CtrlChain {
                command,
                readable,
                status: status?,
                read,
            });
        }
        index = desc.next();
    }
    None
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
    /// The control queue's used index the device has reached, as far as checked.
    ctrl_used: u16,
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
        // The driver's rings start afresh: its used ring too.
        if let Some(ctrl) = self.ctrl_queue() {
            self.ctrl_used = self.queues[ctrl].next_used;
            let (_, _, used) = rings(ctrl);
            self.mem
                .write_obj(self.ctrl_used, GuestAddress(used + 2))
                .expect("used idx");
        }
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

    /// The chains the device returned on the control queue since the last look: each
    /// unanswered (length 0) or answered (length 1), and when `judge` (the event served
    /// the control queue alone, so the device wrote nothing else) with the status its
    /// command calls for.
    fn check_ctrl(&mut self, judge: bool) {
        let Some(ctrl) = self.ctrl_queue().filter(|_| self.active) else {
            return;
        };
        let (table, _, used) = rings(ctrl);
        let size = self.queues[ctrl].size;
        let now: u16 = self.mem.read_obj(GuestAddress(used + 2)).expect("used idx");
        let count = now.wrapping_sub(self.ctrl_used);
        // Only the last `size` entries are still in the ring (a batch may return more).
        let first = self.ctrl_used.wrapping_add(count.saturating_sub(size));
        let mut judge = judge && count <= size;
        let mut answered = Vec::new();
        for k in 0..count.min(size) {
            let slot = u64::from(first.wrapping_add(k) % size);
            let id: u32 = self
                .mem
                .read_obj(GuestAddress(used + 4 + 8 * slot))
                .expect("id");
            let len: u32 = self
                .mem
                .read_obj(GuestAddress(used + 8 + 8 * slot))
                .expect("len");
            assert!(len <= 1, "a control chain's used length {len}");
            assert!(id < u32::from(size), "used id {id} on a queue of {size}");
            if len == 1 {
                match read_ctrl_chain(&self.mem, table, size, id as u16) {
                    Some(chain) => answered.push(chain),
                    // Its status byte is somewhere the harness does not know.
                    None => judge = false,
                }
            }
        }
        self.ctrl_used = now;
        if !judge {
            return;
        }
        // What the device wrote in this batch: status bytes and the used ring.
        let mut written: Vec<(u64, u64)> = answered.iter().map(|c| (c.status, 1)).collect();
        written.push((used, 4 + 8 * u64::from(size)));
        let overlaps = |(a, n): (u64, u64)| {
            written
                .iter()
                .any(|&(b, m)| a < b.saturating_add(m) && b < a.saturating_add(n))
        };
        let pairs = self.net.queue_pairs();
        let mq = self.acked & self.net.features() & VIRTIO_NET_F_MQ != 0;
        for (i, chain) in answered.iter().enumerate() {
            let shared = answered[i + 1..].iter().any(|c| c.status == chain.status);
            if shared || chain.read.iter().any(|&r| overlaps(r)) {
                continue;
            }
            let c = &chain.command;
            let valid = chain.readable == 4
                && c[0] == VIRTIO_NET_CTRL_MQ
                && c[1] == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET
                && mq
                && (1..=pairs).contains(&usize::from(u16::from_le_bytes([c[2], c[3]])));
            let want = if valid { VIRTIO_NET_OK } else { VIRTIO_NET_ERR };
            let got: u8 = self
                .mem
                .read_obj(GuestAddress(chain.status))
                .expect("status byte");
            assert_eq!(
                got, want,
                "status of command {c:?} ({} bytes)",
                chain.readable
            );
        }
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
        ctrl_used: 0,
    };
    rig.activate(first_features);
    let nqueues = sizes.len();
    for &op in ops {
        let a = usize::from(op >> 3);
        // Whether the device saw a notification or host event (and so caught up with an
        // activation).
        let mut event = false;
        // Whether that event served the control queue and nothing else.
        let mut ctrl_alone = false;
        match op & 7 {
            0 if rig.active => {
                let queue = a % (nqueues + 2);
                virtq::process(&mut rig.net, queue);
                event = true;
                ctrl_alone = rig.ctrl_queue() == Some(queue);
            }
            1 => {
                rig.net.process_host_fd(a as u32 % 8);
                event = true;
            }
            2 if rig.active => {
                if let Some(ctrl) = rig.ctrl_queue() {
                    virtq::process(&mut rig.net, ctrl);
                    event = true;
                    ctrl_alone = true;
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
            rig.check_ctrl(ctrl_alone);
        }
    }
    if rig.active {
        for queue in 0..nqueues {
            virtq::process(&mut rig.net, queue);
        }
        rig.check();
        rig.check_ctrl(false);
    }
});
