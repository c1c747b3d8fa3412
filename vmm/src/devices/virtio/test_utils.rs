//! Test helpers: guest memory, descriptors and chains on mock split queues.

use crate::memory::GuestMemoryMmap;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// VRING_DESC_F_NEXT.
pub const F_NEXT: u16 = 1;
/// VRING_DESC_F_WRITE: device-writable.
pub const F_WRITE: u16 = 2;
/// Size of the test guest memory.
pub const MEM_SIZE: u64 = 8 << 20;
/// Where test data buffers start, well above the mock queues at 0.
pub const DATA: u64 = 0x10_0000;
/// Queue size of the mock queues.
pub const MOCK_QUEUE_SIZE: u16 = 16;

/// Test guest memory: one region of [`MEM_SIZE`] bytes at 0.
pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory")
}

/// A descriptor; `build_chain` sets the NEXT flags and indices.
pub fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// A descriptor with an explicit `next` index (for hand-made loops).
pub fn linked(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// The chain made of `descs`, linked in order, as a device would pop it.
pub fn build_chain<'a>(
    queue: &'a MockSplitQueue<'a, GuestMemoryMmap>,
    descs: &[RawDescriptor],
) -> DescriptorChain<&'a GuestMemoryMmap> {
    queue.build_desc_chain(descs).expect("chain")
}

/// A device-side queue over `mock` with `descs` (raw, links as given) made available as
/// one chain starting at descriptor 0.
pub fn queue_with_raw_chain(
    mock: &MockSplitQueue<'_, GuestMemoryMmap>,
    descs: &[RawDescriptor],
) -> Queue {
    mock.add_desc_chains(descs, 0).expect("descriptors");
    mock.create_queue::<Queue>().expect("queue")
}

/// Reads one byte of guest memory.
pub fn byte_at(mem: &GuestMemoryMmap, addr: u64) -> u8 {
    mem.read_obj::<u8>(GuestAddress(addr)).expect("read")
}

/// The used ring's first element (descriptor id, length) and its index.
pub fn used_entry(
    mem: &GuestMemoryMmap,
    mock: &MockSplitQueue<'_, GuestMemoryMmap>,
    n: u64,
) -> (u32, u32) {
    let base = mock.used_addr().0 + 4 + 8 * n;
    let id: u32 = mem.read_obj(GuestAddress(base)).expect("used id");
    let len: u32 = mem.read_obj(GuestAddress(base + 4)).expect("used len");
    (id, len)
}

/// The used ring's idx field.
pub fn used_idx(mem: &GuestMemoryMmap, mock: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
    mem.read_obj(GuestAddress(mock.used_addr().0 + 2))
        .expect("used idx")
}

/// A ready queue over `mock`, for activating devices.
pub fn ready_queue(mock: &MockSplitQueue<'_, GuestMemoryMmap>) -> Queue {
    let q: Queue = mock.create_queue().expect("queue");
    assert!(q.ready());
    q
}
