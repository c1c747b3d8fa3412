//! Transmit: each TX chain (vnet header + frame, device-readable) goes to the tap with one
//! `writev` over the chain's own buffers. The chain is checked whole first (direction,
//! termination, size, every buffer inside guest memory), so a bad chain sends nothing.

use super::iov::FrameBufs;
use super::{Net, NetError, MAX_BUFFER_LEN, MAX_FRAMES_PER_EVENT, TX_QUEUE, VNET_HDR_LEN};
use crate::devices::virtio::notify;
use crate::memory::GuestMemoryMmap;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryError};

/// One buffer of a chain: guest address and length.
pub(super) type Segment = (GuestAddress, usize);

/// Checks a TX chain and lists its buffers in `segs`; returns the frame's length (vnet
/// header included).
pub(super) fn parse_tx_chain<I: IntoIterator<Item = Descriptor>>(
    mem: &GuestMemoryMmap,
    chain: I,
    segs: &mut Vec<Segment>,
) -> Result<usize, NetError> {
    segs.clear();
    let mut len = 0usize;
    let mut more = false;
    for desc in chain {
        more = desc.has_next();
        if desc.is_write_only() {
            return Err(NetError::WrongDirection("TX"));
        }
        let n = desc.len() as usize;
        len = len
            .checked_add(n)
            .filter(|&l| l <= MAX_BUFFER_LEN)
            .ok_or(NetError::TooLarge)?;
        if n == 0 {
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, desc.addr(), n) {
            return Err(NetError::Memory(GuestMemoryError::InvalidGuestAddress(
                desc.addr(),
            )));
        }
        segs.push((desc.addr(), n));
    }
    if more {
        // The iterator stopped before the chain ended.
        return Err(NetError::Unterminated);
    }
    if len < VNET_HDR_LEN {
        return Err(NetError::ShortFrame(len));
    }
    Ok(len)
}

/// The iovecs of a checked TX chain.
fn tx_bufs<'a>(mem: &'a GuestMemoryMmap, segs: &[Segment]) -> Result<FrameBufs<'a>, NetError> {
    let mut bufs = FrameBufs::new();
    for &(addr, len) in segs {
        bufs.push_guest(mem, addr, len)?;
    }
    Ok(bufs)
}

impl Net {
    /// Sends the frames the driver queued for transmission on pair `pair`, to its tap queue.
    pub(super) fn process_tx(&mut self, pair: usize) {
        let index = 2 * pair + TX_QUEUE;
        let (Some(active), Some(p)) = (&mut self.active, self.pairs.get_mut(pair)) else {
            return;
        };
        let Some(queue) = active.queues.get_mut(index) else {
            return;
        };
        if !queue.ready() {
            return;
        }
        let mem = &active.mem;
        let mut used = 0;
        let mut throttled = false;
        for _ in 0..MAX_FRAMES_PER_EVENT {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let sent = parse_tx_chain(mem, chain, &mut p.tx_segs).and_then(|len| {
                let bufs = tx_bufs(mem, &p.tx_segs)?;
                if let Some(limiter) = &mut self.tx_limiter {
                    if !limiter.consume_request(len as u64) {
                        return Ok(None);
                    }
                }
                Ok(Some((len, p.backend.write_frame_from(&bufs))))
            });
            match sent {
                Ok(None) => {
                    queue.go_to_previous_position();
                    self.metrics.tx_rate_limiter_throttled.inc();
                    throttled = true;
                    break;
                }
                Ok(Some((len, Ok(())))) => {
                    self.metrics.tx_packets.inc();
                    self.metrics.tx_bytes.add(len as u64);
                }
                Ok(Some((len, Err(e)))) => {
                    tracing::debug!(
                        "virtio-net {}: tap write of {len} bytes failed: {e}; frame dropped",
                        self.id
                    );
                    self.metrics.dropped.inc();
                }
                Err(e) => {
                    tracing::warn!("virtio-net {}: TX chain {head}: {e}; dropped", self.id);
                    self.metrics.dropped.inc();
                }
            }
            match queue.add_used(mem, head, 0) {
                Ok(()) => used += 1,
                Err(e) => tracing::warn!(
                    "virtio-net {}: cannot return TX descriptor {head}: {e}",
                    self.id
                ),
            }
        }
        if used > 0 && queue.needs_notification(mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        // A throttled queue waits for the limiter's timer instead.
        if !throttled && notify::rearm(queue, mem) {
            active.requeue.mark(index);
        }
    }
}
