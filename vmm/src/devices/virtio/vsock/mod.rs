//! virtio-vsock: guest `AF_VSOCK` stream sockets connected to host Unix sockets, in
//! Firecracker's model (see [`muxer`] for the host side's protocol).
//!
//! Three queues: RX (packets for the guest), TX (packets from the guest) and an event
//! queue, used once after a snapshot is restored to tell the guest its transport was
//! reset (host connections do not survive a snapshot). The
//! configuration space is the guest's CID (`u64`). The device is a thin shell: the packet
//! codec lives in [`packet`], the protocol state machine in [`muxer`] and [`conn`].
//!
//! Two things wake the device, both on the VMM thread: queue notifications and host socket
//! readiness, reported by the muxer's epoll fd ([`VirtioDevice::host_event_fd`]), which
//! the VMM loop polls besides the queue eventfds.

pub mod conn;
mod deadlines;
#[cfg(test)]
mod limits_tests;
pub mod muxer;
pub mod packet;
mod pending;
mod sockets;
#[cfg(test)]
mod tests;
pub mod uds;

use super::{
    notify, read_config_bytes, ActiveQueues, Interrupt, VirtioDevice, VirtioError,
    VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;
use crate::metrics::VsockMetrics;
use muxer::{MuxerError, VsockMuxer};
use packet::{op, read_packet, rx_payload_room, write_packet, Packet, HDR_SIZE};
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

/// Device type of a socket device.
pub const TYPE_VSOCK: u32 = 19;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the RX queue.
pub const RX_QUEUE: usize = 0;
/// Index of the TX queue.
pub const TX_QUEUE: usize = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 2;
/// The event id of a transport reset (virtio 1.2, 5.10.6.5).
pub const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
/// The lowest CID a guest may have (0-2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;

/// Errors creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// A reserved CID.
    #[error("invalid vsock guest CID {0}: it must be at least {MIN_GUEST_CID}")]
    BadCid(u64),
    /// The host side could not be set up.
    #[error(transparent)]
    Muxer(#[from] MuxerError),
}

/// Removes the vsock listener socket at `path` once the VM has ended (only if it is a
/// socket). Call it from an unfiltered thread: the VMM thread's seccomp filter has no
/// unlink, which is why the device does not do it when dropped.
pub fn remove_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::debug!("vsock: cannot remove {}: {e}", path.display());
        }
    }
}

/// The muxer and, once the driver started the device, its queues.
#[derive(Debug)]
struct Inner {
    muxer: VsockMuxer,
    active: Option<ActiveQueues>,
    metrics: Arc<VsockMetrics>,
    /// Set when a transport reset was sent (after a restore) and the guest has not yet
    /// handled it: packets for the guest wait, or the guest would reset a new host
    /// connection together with the old ones.
    reset_sent: Option<ResetSent>,
}

/// A transport reset the guest has not handled yet.
#[derive(Debug, Clone, Copy)]
struct ResetSent {
    at: Instant,
    /// The event queue's available index then: the guest makes its buffer available
    /// again once it has handled the event.
    avail_idx: u16,
}

/// How long packets for the guest wait for it to handle a transport reset, at most.
const RESET_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Counts connections set up and reset by a packet in either direction.
fn count_connection(metrics: &VsockMetrics, pkt: &Packet) {
    match pkt.hdr.op {
        op::RESPONSE => metrics.conns_added.inc(),
        op::RST => metrics.conns_reset.inc(),
        _ => {}
    }
}

impl Inner {
    /// Moves the guest's TX packets into the muxer, then answers on RX.
    fn process_tx(&mut self) {
        let Some(active) = &mut self.active else {
            return;
        };
        let muxer = &mut self.muxer;
        let metrics = &self.metrics;
        active.drain(TX_QUEUE, |mem, chain| {
            match read_packet(mem, chain) {
                Ok(pkt) => {
                    metrics.tx_packets.inc();
                    metrics.tx_bytes.add(pkt.payload.len() as u64);
                    count_connection(metrics, &pkt);
                    muxer.send_pkt(pkt);
                }
                Err(e) => tracing::debug!("vsock: dropping a malformed TX packet: {e}"),
            }
            0
        });
        self.process_rx();
    }

    /// The event queue's available index, as the guest last wrote it.
    fn event_avail_idx(&self) -> Option<u16> {
        let active = self.active.as_ref()?;
        let queue = active.queues.get(EVENT_QUEUE)?;
        queue
            .avail_idx(&active.mem, Ordering::Acquire)
            .ok()
            .map(|i| i.0)
    }

    /// Fills RX buffers while the muxer has packets for the guest.
    fn process_rx(&mut self) {
        if let Some(sent) = self.reset_sent {
            if self.event_avail_idx() != Some(sent.avail_idx) {
                // Handled, though the guest did not say so (with event indices it only
                // notifies when asked to).
                self.reset_sent = None;
                tracing::debug!("vsock: the guest handled the transport reset");
            } else if sent.at.elapsed() < RESET_ACK_TIMEOUT {
                return;
            } else {
                tracing::warn!(
                    "vsock: the guest did not handle the transport reset; delivering packets anyway"
                );
                self.reset_sent = None;
            }
        }
        let Some(ActiveQueues {
            mem,
            queues,
            interrupt,
            requeue,
        }) = &mut self.active
        else {
            return;
        };
        let Some(queue) = queues.get_mut(RX_QUEUE) else {
            return;
        };
        if !queue.ready() {
            return;
        }
        let mut used = 0usize;
        while self.muxer.has_rx() {
            let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
                // Out of buffers: ask for a notification when the driver adds some (or
                // go on at once if it just did).
                if notify::rearm(queue, mem) {
                    requeue.mark(RX_QUEUE);
                }
                break;
            };
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            let writable: usize = descs
                .iter()
                .filter(|d| d.is_write_only())
                .map(|d| d.len() as usize)
                .sum();
            let len = if writable < HDR_SIZE {
                tracing::debug!(
                    "vsock: RX buffer of {writable} bytes cannot hold a header; returned empty"
                );
                0
            } else {
                let Some(pkt) = self.muxer.recv_pkt(rx_payload_room(descs.iter().copied())) else {
                    queue.go_to_previous_position();
                    break;
                };
                match write_packet(mem, descs.iter().copied(), &pkt) {
                    Ok(len) => {
                        self.metrics.rx_packets.inc();
                        self.metrics.rx_bytes.add(pkt.payload.len() as u64);
                        count_connection(&self.metrics, &pkt);
                        len
                    }
                    Err(e) => {
                        tracing::debug!("vsock: cannot deliver a packet: {e}");
                        0
                    }
                }
            };
            match queue.add_used(&*mem, head, len) {
                Ok(()) => used += 1,
                Err(e) => tracing::warn!("vsock: cannot return RX descriptor {head}: {e}"),
            }
        }
        if used > 0 && queue.needs_notification(&*mem).unwrap_or(true) {
            interrupt.signal_used_queue();
        }
    }
}

/// A virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    guest_cid: u64,
    inner: Inner,
}

impl Vsock {
    /// A device for a guest with CID `guest_cid`, listening on `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if !(MIN_GUEST_CID..=u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::BadCid(guest_cid));
        }
        let muxer = VsockMuxer::new(guest_cid, uds_path)?;
        Ok(Vsock {
            guest_cid,
            inner: Inner {
                muxer,
                active: None,
                metrics: Arc::default(),
                reset_sent: None,
            },
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.inner.metrics.clone()
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn config_len(&self) -> usize {
        std::mem::size_of::<u64>()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn host_event_fd(&self) -> Option<RawFd> {
        Some(self.inner.muxer.epoll_fd())
    }

    fn process_host_event(&mut self) {
        self.inner.muxer.process_host_events();
        self.inner.process_rx();
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), VirtioError> {
        let inner = &mut self.inner;
        inner.active = Some(ActiveQueues::new(mem, queues, interrupt, 3)?);
        tracing::debug!("virtio-vsock activated: guest CID {}", self.guest_cid);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        let inner = &mut self.inner;
        // The first notifications come right after activation, on the VMM thread.
        inner.muxer.arm();
        match index {
            RX_QUEUE => inner.process_rx(),
            TX_QUEUE => inner.process_tx(),
            // The guest gives an event buffer back once it has handled an event: after a
            // transport reset, packets for it may flow again. (A notification alone says
            // nothing: the transport kicks every queue once when it is restored.)
            EVENT_QUEUE => {
                if inner
                    .reset_sent
                    .is_some_and(|sent| inner.event_avail_idx() != Some(sent.avail_idx))
                {
                    inner.reset_sent = None;
                    tracing::debug!("vsock: the guest handled the transport reset");
                    inner.process_rx();
                }
            }
            other => tracing::debug!("vsock: notification for queue {other}, which does not exist"),
        }
    }

    fn active_queues(&self) -> Option<&ActiveQueues> {
        self.inner.active.as_ref()
    }

    /// Host connections do not survive a snapshot: tell the guest its transport was
    /// reset (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET), so it drops every connection and reads
    /// its CID again; the host side listens afresh.
    fn after_restore(&mut self) {
        let Some(ActiveQueues {
            mem,
            queues,
            interrupt,
            ..
        }) = &mut self.inner.active
        else {
            return;
        };
        let Some(queue) = queues.get_mut(EVENT_QUEUE) else {
            return;
        };
        let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
            tracing::warn!("vsock: no event buffer to report the transport reset in");
            return;
        };
        let head = chain.head_index();
        let len = match chain.filter(|d| d.is_write_only()).find(|d| d.len() >= 4) {
            Some(desc) => match mem.write_obj(VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, desc.addr()) {
                Ok(()) => 4,
                Err(e) => {
                    tracing::warn!("vsock: cannot write the transport reset event: {e}");
                    0
                }
            },
            None => 0,
        };
        match queue.add_used(&*mem, head, len) {
            Ok(()) => {
                let avail_idx = queue.avail_idx(&*mem, Ordering::Acquire).map_or(0, |i| i.0);
                // Before the interrupt: the guest may give the buffer back at once.
                notify::ask_notification_past(queue, mem, avail_idx);
                interrupt.signal_used_queue();
                self.inner.reset_sent = Some(ResetSent {
                    at: Instant::now(),
                    avail_idx,
                });
                self.inner.muxer.move_ports_past_snapshot();
            }
            Err(e) => tracing::warn!("vsock: cannot return the event buffer: {e}"),
        }
    }

    fn reset(&mut self) {
        let inner = &mut self.inner;
        inner.reset_sent = None;
        inner.active = None;
        inner.muxer.clear();
    }
}
