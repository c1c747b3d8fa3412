//! Receive: frames from the tap go straight into the guest's RX buffers with one `readv`
//! (each queue pair's from its own tap queue).
//!
//! The device pops and checks RX chains (device-writable, terminated, at least a vnet
//! header long, every buffer inside guest memory) into a pool, reads the next frame over
//! the pool's buffers, and hands the guest the chains the frame filled. Without
//! VIRTIO_NET_F_MRG_RXBUF a frame goes into one chain (`num_buffers` 1); with it, into as
//! many as it needs, the count in the first one's header. The used-ring entries of a
//! frame are written first and published with one store of the used index, so the driver
//! never sees part of a frame. Chains a frame did not need go back to the queue at the end
//! of the batch, so the queue's position (what a snapshot saves) never counts a buffer the
//! guest did not get back.
//!
//! The pool may hold less than the largest frame ([`MAX_BUFFER_LEN`]): then the read also
//! gets a host buffer after the guest's, and a frame that runs into it is held in that
//! buffer (the part in guest memory copied beside it) until the driver posts enough
//! buffers, and copied into them then. A frame the rate limiter holds back waits the same
//! way. While a frame is held or the pool is empty the tap is not read, so no frame is
//! lost or delivered twice. A bad chain is returned with length 0 when it reaches the
//! front of the ring; a frame that needs the buffers behind it is dropped.

use super::iov::FrameBufs;
use super::{
    Net, NetBackend, NetError, MAX_BUFFER_LEN, MAX_FRAMES_PER_EVENT, RX_QUEUE,
    VIRTIO_NET_F_MRG_RXBUF, VNET_HDR_LEN,
};
use crate::devices::virtio::notify::{self, Requeue};
use crate::memory::GuestMemoryMmap;
use crate::metrics::NetMetrics;
use crate::rate_limiter::RateLimiter;
use std::collections::VecDeque;
use std::io;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

/// Offset of `num_buffers` in the vnet header.
const NUM_BUFFERS: usize = 10;

/// A checked RX chain in the pool.
#[derive(Debug, Clone, Copy)]
struct RxChain {
    head: u16,
    /// How many of the pool's segments are this chain's.
    segs: usize,
    /// Bytes it takes (at most [`MAX_BUFFER_LEN`]; its segments add up to this).
    room: usize,
}

/// The device's receive state.
#[derive(Debug)]
pub(super) struct RxState {
    /// A frame read from the tap and not delivered yet: `held` bytes (0: none).
    buf: Vec<u8>,
    held: usize,
    /// Whether the held frame already passed the rate limiter.
    charged: bool,
    /// Chains popped and checked but not used yet, in ring order, and their buffers.
    /// Empty between batches: unused chains go back to the queue.
    chains: VecDeque<RxChain>,
    segs: VecDeque<(GuestAddress, usize)>,
    room: usize,
}

/// How filling the pool ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// The pool holds what was asked.
    Enough,
    /// The driver has no more buffers available.
    Empty,
    /// A bad chain waits behind the pool's chains (it is returned once it is first).
    Blocked,
}

/// What the batch does after a step.
enum Step {
    Next,
    Stop { watch: bool },
}

/// What one RX batch works with.
struct Batch<'a> {
    id: &'a str,
    mem: &'a GuestMemoryMmap,
    queue: &'a mut Queue,
    /// The queue's index in the device.
    index: usize,
    backend: &'a mut dyn NetBackend,
    limiter: Option<&'a mut RateLimiter>,
    metrics: &'a NetMetrics,
    requeue: &'a Requeue,
    mrg: bool,
}

impl RxState {
    pub(super) fn new() -> Self {
        RxState {
            buf: vec![0; MAX_BUFFER_LEN],
            held: 0,
            charged: false,
            chains: VecDeque::new(),
            segs: VecDeque::new(),
            room: 0,
        }
    }

    /// Whether a frame waits in the device.
    pub(super) fn holds_frame(&self) -> bool {
        self.held > 0
    }

    /// Forgets the held frame and the pool (device reset).
    pub(super) fn clear(&mut self) {
        self.held = 0;
        self.charged = false;
        self.chains.clear();
        self.segs.clear();
        self.room = 0;
    }

    /// Checks a chain and appends its buffers to the pool's segments; returns its room.
    fn parse_chain<I: IntoIterator<Item = Descriptor>>(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: I,
    ) -> Result<usize, NetError> {
        let mut room = 0usize;
        let mut more = false;
        for desc in chain {
            more = desc.has_next();
            if !desc.is_write_only() {
                return Err(NetError::WrongDirection("RX"));
            }
            let len = desc.len() as usize;
            if len == 0 {
                continue;
            }
            if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
                return Err(NetError::Memory(GuestMemoryError::InvalidGuestAddress(
                    desc.addr(),
                )));
            }
            if room < MAX_BUFFER_LEN {
                self.segs
                    .push_back((desc.addr(), len.min(MAX_BUFFER_LEN - room)));
            }
            room = room.saturating_add(len);
        }
        if more {
            return Err(NetError::Unterminated);
        }
        if room < VNET_HDR_LEN {
            return Err(NetError::NoRoom {
                room,
                need: VNET_HDR_LEN,
            });
        }
        Ok(room.min(MAX_BUFFER_LEN))
    }

    /// Pops chains into the pool until it holds `want` bytes, or (`one`) one chain.
    /// A bad chain at the front of the ring is returned at once with length 0.
    fn fill(&mut self, b: &mut Batch<'_>, want: usize, one: bool) -> Fill {
        loop {
            if (one && !self.chains.is_empty()) || (!one && self.room >= want) {
                return Fill::Enough;
            }
            let Some(chain) = b.queue.pop_descriptor_chain(b.mem) else {
                return Fill::Empty;
            };
            let head = chain.head_index();
            let first = self.segs.len();
            match self.parse_chain(b.mem, chain) {
                Ok(room) => {
                    let segs = self.segs.len() - first;
                    self.chains.push_back(RxChain { head, segs, room });
                    self.room += room;
                }
                Err(e) => {
                    self.segs.truncate(first);
                    if !self.chains.is_empty() {
                        b.queue.go_to_previous_position();
                        return Fill::Blocked;
                    }
                    tracing::warn!("virtio-net {}: RX chain {head}: {e}; returned unused", b.id);
                    let next = Wrapping(b.queue.next_used());
                    if write_used(b.queue, b.mem, next, head, 0) {
                        publish_used(b.queue, b.mem, next + Wrapping(1));
                    }
                }
            }
        }
    }

    /// Puts the pool's unused chains back on the queue (they are the last ones popped).
    fn give_back(&mut self, queue: &mut Queue) {
        for _ in 0..self.chains.len() {
            queue.go_to_previous_position();
        }
        self.chains.clear();
        self.segs.clear();
        self.room = 0;
    }

    /// The iovecs of the pool's buffers (what one vectored call can take, up to
    /// [`MAX_BUFFER_LEN`]) then, if they fall short of it, the host buffer's rest.
    fn read_bufs<'a>(&'a mut self, mem: &'a GuestMemoryMmap) -> FrameBufs<'a> {
        let mut bufs = FrameBufs::new();
        for &(addr, len) in &self.segs {
            let len = len.min(MAX_BUFFER_LEN - bufs.guest_len());
            if len == 0 || bufs.push_guest(mem, addr, len).is_err() {
                break;
            }
        }
        let guest = bufs.guest_len();
        if let Some(rest) = self.buf.get_mut(guest..) {
            bufs.push_host(rest);
        }
        bufs
    }

    /// Holds the `n`-byte frame just read: its first `guest` bytes went into the pool's
    /// buffers (copied into the host buffer now), the rest is in the host buffer already.
    fn hold(&mut self, mem: &GuestMemoryMmap, n: usize, guest: usize, charged: bool) -> bool {
        let mut done = 0;
        let want = guest.min(n);
        for &(addr, len) in &self.segs {
            if done == want {
                break;
            }
            let k = len.min(want - done);
            if mem.read_slice(&mut self.buf[done..done + k], addr).is_err() {
                return false;
            }
            done += k;
        }
        self.held = n;
        self.charged = charged;
        true
    }

    /// Copies the held frame into the pool's buffers.
    fn scatter(&self, mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
        let mut done = 0;
        for &(addr, len) in &self.segs {
            if done == self.held {
                break;
            }
            let k = len.min(self.held - done);
            mem.write_slice(&self.buf[done..done + k], addr)?;
            done += k;
        }
        Ok(())
    }

    /// Hands the guest the first chains of the pool, which hold an `n`-byte frame: sets
    /// `num_buffers`, writes their used entries and publishes them together. Returns how
    /// many chains the frame took.
    fn deliver(&mut self, b: &mut Batch<'_>, n: usize) -> usize {
        let mut count = 0;
        let mut left = n;
        for chain in &self.chains {
            if left == 0 && count > 0 {
                break;
            }
            left -= chain.room.min(left);
            count += 1;
        }
        let nbuf = u16::try_from(count).unwrap_or(u16::MAX);
        let first = self.chains.front().map_or(0, |c| c.segs);
        if let Err(e) = write_at(
            b.mem,
            self.segs.iter().take(first),
            NUM_BUFFERS,
            &nbuf.to_le_bytes(),
        ) {
            tracing::warn!("virtio-net {}: cannot set num_buffers: {e}", b.id);
        }
        let start = Wrapping(b.queue.next_used());
        let mut next = start;
        let mut left = n;
        for _ in 0..count {
            let Some(chain) = self.chains.pop_front() else {
                break;
            };
            self.segs.drain(..chain.segs);
            self.room -= chain.room;
            let len = chain.room.min(left);
            left -= len;
            if write_used(b.queue, b.mem, next, chain.head, len as u32) {
                next += Wrapping(1);
            }
        }
        if next != start {
            publish_used(b.queue, b.mem, next);
        }
        count
    }

    /// Returns the first chain of the pool with length 0 (its frame was dropped).
    fn return_first(&mut self, b: &mut Batch<'_>) {
        if let Some(chain) = self.chains.pop_front() {
            self.segs.drain(..chain.segs);
            self.room -= chain.room;
            let next = Wrapping(b.queue.next_used());
            if write_used(b.queue, b.mem, next, chain.head, 0) {
                publish_used(b.queue, b.mem, next + Wrapping(1));
            }
        }
    }

    /// Reads and delivers the next frame from the backend.
    fn receive(&mut self, b: &mut Batch<'_>) -> Step {
        if b.limiter.as_ref().is_some_and(|l| l.is_blocked()) {
            return Step::Stop { watch: false };
        }
        let mrg = b.mrg;
        self.fill(b, MAX_BUFFER_LEN, !mrg);
        if self.chains.is_empty() {
            return b.out_of_buffers();
        }
        let (n, guest) = {
            let mut bufs = self.read_bufs(b.mem);
            match b.backend.read_frame_into(&mut bufs) {
                Ok(n) => {
                    bufs.mark_written(n);
                    (n, bufs.guest_len())
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Step::Stop { watch: true }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Step::Next,
                Err(e) => {
                    tracing::warn!("virtio-net {}: tap read failed: {e}", b.id);
                    return Step::Stop { watch: true };
                }
            }
        };
        if n < VNET_HDR_LEN {
            tracing::debug!("virtio-net {}: dropping a {n}-byte read from the tap", b.id);
            return Step::Next;
        }
        if let Some(limiter) = b.limiter.as_mut() {
            if !limiter.consume_request(n as u64) {
                b.metrics.rx_rate_limiter_throttled.inc();
                if !self.hold(b.mem, n, guest, false) {
                    b.metrics.dropped.inc();
                }
                return Step::Stop { watch: false };
            }
        }
        if n > guest {
            if mrg {
                // Too few buffers for this frame: it waits for more.
                if !self.hold(b.mem, n, guest, true) {
                    b.metrics.dropped.inc();
                }
                return Step::Next;
            }
            tracing::warn!(
                "virtio-net {}: {}; frame dropped",
                b.id,
                NetError::NoRoom {
                    room: guest,
                    need: n
                }
            );
            b.metrics.dropped.inc();
            self.return_first(b);
            return Step::Next;
        }
        self.deliver(b, n);
        b.metrics.rx_packets.inc();
        b.metrics.rx_bytes.add(n as u64);
        Step::Next
    }

    /// Delivers the held frame, copying it into the buffers the driver has posted since.
    fn deliver_held(&mut self, b: &mut Batch<'_>) -> Step {
        if !self.charged {
            if let Some(limiter) = b.limiter.as_mut() {
                if !limiter.consume_request(self.held as u64) {
                    b.metrics.rx_rate_limiter_throttled.inc();
                    return Step::Stop { watch: false };
                }
            }
            self.charged = true;
        }
        let fill = self.fill(b, self.held, !b.mrg);
        if self.chains.is_empty() || (fill == Fill::Empty && self.room < self.held) {
            return b.out_of_buffers();
        }
        let n = std::mem::take(&mut self.held);
        let fits = if b.mrg {
            self.room >= n
        } else {
            self.chains.front().is_some_and(|c| c.room >= n)
        };
        if !fits {
            tracing::warn!(
                "virtio-net {}: {}; held frame dropped",
                b.id,
                NetError::NoRoom {
                    room: self.room,
                    need: n
                }
            );
            b.metrics.dropped.inc();
            if !b.mrg {
                self.return_first(b);
            }
            return Step::Next;
        }
        self.held = n;
        let copied = self.scatter(b.mem);
        self.held = 0;
        if let Err(e) = copied {
            tracing::warn!("virtio-net {}: held frame: {e}; dropped", b.id);
            b.metrics.dropped.inc();
            self.return_first(b);
            return Step::Next;
        }
        self.deliver(b, n);
        b.metrics.rx_packets.inc();
        b.metrics.rx_bytes.add(n as u64);
        Step::Next
    }
}

impl Batch<'_> {
    /// The driver has no buffer left for the next frame: ask it for a notification when it
    /// adds some (or go on at once if it just did), and stop reading the tap meanwhile.
    fn out_of_buffers(&mut self) -> Step {
        tracing::trace!("virtio-net {}: out of RX buffers", self.id);
        if notify::rearm(self.queue, self.mem) {
            self.requeue.mark(self.index);
        }
        Step::Stop { watch: false }
    }
}

/// Writes `bytes` at `offset` into the buffers `segs`, in order.
fn write_at<'s>(
    mem: &GuestMemoryMmap,
    segs: impl Iterator<Item = &'s (GuestAddress, usize)>,
    mut offset: usize,
    bytes: &[u8],
) -> Result<(), GuestMemoryError> {
    let mut done = 0;
    for &(addr, len) in segs {
        if done == bytes.len() {
            break;
        }
        if offset >= len {
            offset -= len;
            continue;
        }
        let k = (len - offset).min(bytes.len() - done);
        let at = addr
            .checked_add(offset as u64)
            .ok_or(GuestMemoryError::InvalidGuestAddress(addr))?;
        mem.write_slice(&bytes[done..done + k], at)?;
        done += k;
        offset = 0;
    }
    Ok(())
}

/// Writes used-ring entry `at` (not yet visible to the driver); false if it cannot.
fn write_used(
    queue: &Queue,
    mem: &GuestMemoryMmap,
    at: Wrapping<u16>,
    head: u16,
    len: u32,
) -> bool {
    let size = queue.size();
    if head >= size {
        tracing::warn!("virtio-net: RX descriptor {head} is outside the queue");
        return false;
    }
    let offset = 4 + 8 * u64::from(at.0 % size);
    let mut elem = [0u8; 8];
    elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
    elem[4..].copy_from_slice(&len.to_le_bytes());
    let written = queue
        .used_ring()
        .checked_add(offset)
        .ok_or(GuestMemoryError::InvalidGuestAddress(GuestAddress(
            queue.used_ring(),
        )))
        .and_then(|addr| mem.write_slice(&elem, GuestAddress(addr)));
    if let Err(e) = written {
        tracing::warn!("virtio-net: cannot write the RX used ring: {e}");
        return false;
    }
    true
}

/// Makes the used entries up to `next` visible to the driver, with one store.
fn publish_used(queue: &mut Queue, mem: &GuestMemoryMmap, next: Wrapping<u16>) {
    let stored = queue
        .used_ring()
        .checked_add(2)
        .map(GuestAddress)
        .ok_or(GuestMemoryError::InvalidGuestAddress(GuestAddress(
            queue.used_ring(),
        )))
        .and_then(|addr| mem.store(next.0.to_le(), addr, Ordering::Release));
    match stored {
        Ok(()) => queue.set_next_used(next.0),
        Err(e) => tracing::warn!("virtio-net: cannot publish the RX used ring: {e}"),
    }
}

/// Whether the driver asked for an interrupt for the entries used since `old` (its
/// `used_event`, with VIRTIO_RING_F_EVENT_IDX; always without).
fn needs_interrupt(queue: &Queue, mem: &GuestMemoryMmap, old: u16) -> bool {
    if !queue.event_idx_enabled() {
        return true;
    }
    // The used entries must be visible before `used_event` is read.
    fence(Ordering::SeqCst);
    let at = queue
        .avail_ring()
        .checked_add(4 + 2 * u64::from(queue.size()));
    let Some(Ok(event)) = at.map(|a| mem.load::<u16>(GuestAddress(a), Ordering::Relaxed)) else {
        return true;
    };
    let new = Wrapping(queue.next_used());
    new - Wrapping(u16::from_le(event)) - Wrapping(1) < new - Wrapping(old)
}

impl Net {
    /// Moves frames from pair `pair`'s backend into its RX buffers until one side runs out.
    pub(super) fn process_rx(&mut self, pair: usize) {
        let mrg = self.acked & VIRTIO_NET_F_MRG_RXBUF != 0;
        let index = 2 * pair + RX_QUEUE;
        let (Some(active), Some(p)) = (&mut self.active, self.pairs.get_mut(pair)) else {
            return;
        };
        let Some(queue) = active.queues.get_mut(index) else {
            return;
        };
        if !queue.ready() {
            return;
        }
        let start = queue.next_used();
        let rx = &mut p.rx;
        let mut b = Batch {
            id: &self.id,
            mem: &active.mem,
            queue,
            index,
            backend: p.backend.as_mut(),
            limiter: self.rx_limiter.as_mut(),
            metrics: &self.metrics,
            requeue: &active.requeue,
            mrg,
        };
        let mut watch = true;
        for _ in 0..MAX_FRAMES_PER_EVENT {
            let step = if rx.held > 0 {
                rx.deliver_held(&mut b)
            } else {
                rx.receive(&mut b)
            };
            if let Step::Stop { watch: w } = step {
                watch = w;
                break;
            }
        }
        rx.give_back(b.queue);
        if b.queue.next_used() != start && needs_interrupt(b.queue, b.mem, start) {
            active.interrupt.signal_used_queue();
        }
        // A held frame waits for buffers or the limiter; the tap is not read meanwhile.
        p.watching = watch && !p.rx.holds_frame();
    }
}
