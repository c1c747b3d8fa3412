//! What the virtio targets share: guest memory and split queues laid out from fuzz input,
//! so that descriptor chains reach the devices through virtio-queue's own iterator, as a
//! guest's would (indirect tables, loops and bad indices included).
//!
//! Inputs are sliced by hand ([`Input`]), so seeds are easy to write: a queue is
//! described by a few bytes per descriptor ([`write_queue`]), and the rest of the input
//! fills the data area the descriptors point into.
//!
//! Guest memory layout ([`MEM_SIZE`] bytes at 0): queue `q`'s descriptor table at
//! `q * 0x3000`, its available ring 0x1000 above it, its used ring 0x2000 above it; the
//! data area at [`DATA`].

#![allow(dead_code)]

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::virtio::VirtioDevice;
use vmm::memory::GuestMemoryMmap;

/// Size of the guest memory.
pub const MEM_SIZE: u64 = 0x2_0000;
/// Where the data area starts.
pub const DATA: u64 = 0x1_0000;
/// Length of the data area.
pub const DATA_LEN: u64 = MEM_SIZE - DATA;
/// Bytes between the rings of consecutive queues.
pub const QUEUE_STRIDE: u64 = 0x3000;

/// Fuzz input read front to back; reads past the end give zeros.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.take(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    /// A byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.0.len())
    }
}

/// Fresh, zeroed guest memory.
pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory")
}

/// Copies `data` into the data area (as much as fits).
pub fn fill_data(mem: &GuestMemoryMmap, data: &[u8]) {
    let n = data.len().min(DATA_LEN as usize);
    mem.write_slice(&data[..n], GuestAddress(DATA))
        .expect("data area");
}

/// Addresses of queue `index`'s descriptor table, available ring and used ring.
pub fn ring_addresses(index: usize) -> (u64, u64, u64) {
    let base = index as u64 * QUEUE_STRIDE;
    (base, base + 0x1000, base + 0x2000)
}

/// The queue sizes a queue description picks from (bit 7 is the event index flag).
fn size_from(byte: u8, max: u16) -> u16 {
    (1u16 << ((byte & 0x7f) % 9)).min(max)
}

/// A descriptor's address: mostly in the data area, sometimes at the end of memory or
/// anywhere at all.
fn addr_from(mode: u8, input: &mut Input) -> u64 {
    match mode & 3 {
        0 | 1 => DATA + u64::from(input.u16()) % DATA_LEN,
        2 => MEM_SIZE - u64::from(input.u8()),
        _ => input.u64(),
    }
}

/// Reads a queue description from `input` and writes it into queue `index`'s rings:
///
/// - size: 1 byte, the queue has `1 << ((b & 0x7f) % 9)` entries (at most `max_size`);
///   bit 7 turns on VIRTIO_RING_F_EVENT_IDX, and a u16 `used_event` follows;
/// - descriptor count: 1 byte (at most the size); per descriptor a tag byte (bits 0-1 the
///   address form: 0/1 an u16 offset into the data area, 2 an u8 distance below the end
///   of memory, 3 a raw u64; bits 2-4 the flags NEXT, WRITE, INDIRECT; bit 5 a u32
///   length, else a u16), the address, the length, and a next index byte;
/// - available count: 1 byte (the avail ring's idx, may exceed the size), then one head
///   index byte per entry that fits the ring.
///
/// Returns the queue, set up and ready, as a driver would leave it.
pub fn write_queue(mem: &GuestMemoryMmap, index: usize, max_size: u16, input: &mut Input) -> Queue {
    write_queue_at(mem, ring_addresses(index), max_size, max_size, input)
}

/// [`write_queue`] with the rings at `rings` (descriptor table, available and used ring)
/// and at most `cap` entries (for layouts that pack more queues below [`DATA`]).
pub fn write_queue_at(
    mem: &GuestMemoryMmap,
    rings: (u64, u64, u64),
    max_size: u16,
    cap: u16,
    input: &mut Input,
) -> Queue {
    let size_byte = input.u8();
    let size = size_from(size_byte, max_size.min(cap));
    let event_idx = size_byte & 0x80 != 0;
    let (desc_table, avail, used) = rings;
    if event_idx {
        let used_event = input.u16();
        mem.write_obj(used_event, GuestAddress(avail + 4 + 2 * u64::from(size)))
            .expect("used_event");
    }
    let ndesc = u16::from(input.u8()).min(size);
    for i in 0..ndesc {
        let tag = input.u8();
        let addr = addr_from(tag, input);
        let len = if tag & 0x20 != 0 {
            input.u32()
        } else {
            u32::from(input.u16())
        };
        let flags = u16::from((tag >> 2) & 7);
        let next = u16::from(input.u8());
        let raw = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        mem.write_obj(raw, GuestAddress(desc_table + u64::from(i) * 16))
            .expect("descriptor table");
    }
    let navail = u16::from(input.u8());
    mem.write_obj(0u16, GuestAddress(avail))
        .expect("avail flags");
    mem.write_obj(navail, GuestAddress(avail + 2))
        .expect("avail idx");
    for i in 0..navail.min(size) {
        let head = u16::from(input.u8());
        mem.write_obj(head, GuestAddress(avail + 4 + u64::from(i) * 2))
            .expect("avail ring");
    }
    let mut queue = Queue::new(max_size).expect("queue size");
    queue.set_size(size);
    queue.set_desc_table_address(Some(desc_table as u32), Some(0));
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    queue.set_used_ring_address(Some(used as u32), Some(0));
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    queue
}

/// Lets `device` process queue `index` as the VMM loop does: again, up to a few turns,
/// while it marks queues with buffers left after a batch (see `virtio::notify`).
pub fn process(device: &mut dyn VirtioDevice, index: usize) {
    device.process_queue(index);
    for _ in 0..4 {
        let Some(mask) = device.active_queues().map(|a| a.requeue.take()) else {
            return;
        };
        if mask == 0 {
            return;
        }
        for queue in 0..64 {
            if mask & (1 << queue) != 0 {
                device.process_queue(queue);
            }
        }
    }
}

/// The used ring's idx of queue `index`.
pub fn used_idx(mem: &GuestMemoryMmap, index: usize) -> u16 {
    let (_, _, used) = ring_addresses(index);
    mem.read_obj(GuestAddress(used + 2)).expect("used idx")
}
