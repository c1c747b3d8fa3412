//! Notification suppression, both ways (VIRTIO_RING_F_EVENT_IDX): the driver tells the
//! device how far it may use buffers before interrupting (the used ring's `used_event`,
//! which `Queue::needs_notification` reads), and the device tells the driver after which
//! available buffer it wants the next notification (`avail_event`, published by
//! [`rearm`]). Between the two, a busy queue costs neither exits nor interrupts per
//! buffer.
//!
//! A device works in batches: it takes what is available, then re-arms the queue. If the
//! driver added buffers after the batch was taken, it did not notify (it was told not to
//! yet), so the device must not wait for a notification: it marks the queue in
//! [`Requeue`] and the transport notifies the queue itself, so the next batch runs on the
//! next turn of the VMM loop, after the other devices had theirs.

use crate::memory::GuestMemoryMmap;
use std::sync::atomic::{AtomicU64, Ordering};
use virtio_queue::{Queue, QueueT};

/// Feature bit VIRTIO_RING_F_INDIRECT_DESC: a chain may continue in an indirect table.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// Feature bit VIRTIO_RING_F_EVENT_IDX: `used_event` and `avail_event` suppress
/// notifications.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// The ring features the transport offers for every device (the queues implement them).
pub const RING_FEATURES: u64 = VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;

/// The queues of a device that have buffers waiting after a batch, by index.
#[derive(Debug, Default)]
pub struct Requeue(AtomicU64);

impl Requeue {
    /// Notes that queue `index` needs another batch.
    pub fn mark(&self, index: usize) {
        if index < 64 {
            self.0.fetch_or(1 << index, Ordering::Relaxed);
        }
    }

    /// The queues marked since the last call, as a bit mask.
    pub fn take(&self) -> u64 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

/// Ends a batch on `queue`: asks the driver for a notification on its next buffer (with
/// EVENT_IDX: publishes how far the device got) and says whether buffers were added
/// meanwhile, which the device must then take without waiting for one.
pub fn rearm(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    match queue.enable_notification(mem) {
        Ok(more) => more,
        Err(e) => {
            tracing::warn!("virtio: cannot re-enable queue notifications: {e}");
            false
        }
    }
}

/// Asks the guest to notify the queue once it makes a buffer available past `avail_idx`.
/// With event indices the guest notifies only when the available index passes the
/// `avail_event` the device wrote, which normally trails at what the device has consumed:
/// a queue that still holds the guest's other buffers (vsock's event queue) would never
/// notify when the guest gives one back. Without event indices, notifications are simply
/// switched on.
pub fn ask_notification_past(queue: &mut Queue, mem: &GuestMemoryMmap, avail_idx: u16) {
    if !queue.event_idx_enabled() {
        rearm(queue, mem);
        return;
    }
    use vm_memory::Bytes;
    // avail_event follows the used ring's header (4 bytes) and entries (8 bytes each).
    let at = queue.used_ring() + 4 + 8 * u64::from(queue.size());
    if let Err(e) = mem.store(
        avail_idx.to_le(),
        vm_memory::GuestAddress(at),
        Ordering::SeqCst,
    ) {
        tracing::warn!("virtio: cannot ask for a notification past {avail_idx}: {e}");
    }
}
