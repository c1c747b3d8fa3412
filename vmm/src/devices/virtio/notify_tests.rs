//! Notification suppression and indirect chains on mock queues: what the device publishes
//! in `avail_event`, when it interrupts, and that buffers added during a batch are not
//! left waiting for a notification that will not come.

use super::block::Block;
use super::test_utils::*;
use super::{ActiveQueues, Interrupt, VirtioDevice};
use crate::devices::virtio::block::MemBackend;
use crate::memory::GuestMemoryMmap;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Where these tests put the used ring: the mock's own overlaps the end of its available
/// ring (its `used_event` field) once two entries are used.
const USED_RING: u64 = 0x8000;

/// The used ring's `avail_event` field (after the ring entries).
fn avail_event(mem: &GuestMemoryMmap) -> u16 {
    let at = USED_RING + 4 + 8 * u64::from(MOCK_QUEUE_SIZE);
    mem.read_obj(GuestAddress(at)).expect("avail_event")
}

/// Sets the avail ring's `used_event` field (after the ring entries).
fn set_used_event(mem: &GuestMemoryMmap, mock: &MockSplitQueue<'_, GuestMemoryMmap>, v: u16) {
    let at = mock.avail_addr().0 + 4 + 2 * u64::from(MOCK_QUEUE_SIZE);
    mem.write_obj(v, GuestAddress(at)).expect("used_event");
}

/// A ready queue over `mock`'s descriptors and available ring, with its used ring at
/// [`USED_RING`] and event indices on.
fn event_idx_queue(mock: &MockSplitQueue<'_, GuestMemoryMmap>) -> Queue {
    let mut q = ready_queue(mock);
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_event_idx(true);
    q
}

#[test]
fn a_batch_publishes_how_far_the_device_got_and_requeues_late_buffers() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    mock.add_desc_chains(&[desc(DATA, 8, 0), desc(DATA + 8, 8, 0)], 0)
        .expect("chains");
    let irq = Interrupt::new().expect("irq");
    let mut active = ActiveQueues::new(mem.clone(), vec![event_idx_queue(&mock)], irq.clone(), 1)
        .expect("active");
    // The driver wants an interrupt only once the third buffer is used.
    set_used_event(&mem, &mock, 2);
    let mut seen = 0;
    active.drain(0, |_, _| {
        seen += 1;
        if seen == 1 {
            // The driver adds a buffer while the device works: it does not notify.
            mock.add_desc_chains(&[desc(DATA + 16, 8, 0)], 2)
                .expect("late chain");
        }
        0
    });
    assert_eq!(seen, 2, "one batch: what was available when it started");
    assert_eq!(avail_event(&mem), 2, "notify me after buffer 2");
    assert_eq!(
        active.requeue.take(),
        1,
        "the late buffer is not left waiting"
    );
    assert_eq!(irq.status(), 0, "the driver asked for no interrupt yet");

    active.drain(0, |_, _| 0);
    assert_eq!(avail_event(&mem), 3);
    assert_eq!(active.requeue.take(), 0, "nothing more");
    assert_ne!(
        irq.status(),
        0,
        "buffer 3 used: the interrupt the driver asked for"
    );
}

/// VRING_DESC_F_INDIRECT.
const F_INDIRECT: u16 = 4;

#[test]
fn a_block_request_in_an_indirect_table_is_served() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
    let backend = MemBackend::with_len(16 * 512);
    let mut blk = Block::new(Box::new(backend.clone()), false, "d");
    // Header (IN, sector 2), a 512-byte data buffer and the status byte, all in a table.
    let mut header = [0u8; 16];
    header[8..16].copy_from_slice(&2u64.to_le_bytes());
    mem.write_slice(&header, GuestAddress(DATA))
        .expect("header");
    let table = DATA + 0x4000;
    for (i, d) in [
        linked(DATA, 16, F_NEXT, 1),
        linked(DATA + 0x1000, 512, F_NEXT | F_WRITE, 2),
        linked(DATA + 0x2000, 1, F_WRITE, 0),
    ]
    .iter()
    .enumerate()
    {
        mem.write_obj(*d, GuestAddress(table + 16 * i as u64))
            .expect("table entry");
    }
    mock.add_desc_chains(&[desc(table, 48, F_INDIRECT)], 0)
        .expect("chain");
    blk.activate(
        mem.clone(),
        vec![event_idx_queue(&mock)],
        Interrupt::new().expect("irq"),
    )
    .expect("activate");
    blk.process_queue(0);
    let used: [u32; 2] = mem
        .read_obj(GuestAddress(USED_RING + 4))
        .expect("used entry");
    assert_eq!(used, [0, 513]);
    assert_eq!(byte_at(&mem, DATA + 0x2000), 0, "VIRTIO_BLK_S_OK");
    let mut read = vec![0u8; 512];
    mem.read_slice(&mut read, GuestAddress(DATA + 0x1000))
        .expect("read");
    assert_eq!(read, backend.bytes(2 * 512..3 * 512));
    assert_eq!(avail_event(&mem), 1);
}
