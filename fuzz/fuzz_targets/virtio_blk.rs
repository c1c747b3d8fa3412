//! virtio-blk requests from a guest: descriptor chains in fuzzed guest memory, popped by
//! an activated block device over an in-memory disk and parsed and served as requests
//! (header, data in either direction, status byte; flush and GET_ID).
//!
//! Input: a flags byte (bit 0 read-only, bit 1 a failing disk, bit 2 the Async engine: a
//! worker thread serves the disk and the requests in flight are drained at the end, as
//! before a snapshot), the disk size in sectors
//! (1 byte), the queue ([`virtq::write_queue`]), then the data area.
#![no_main]

#[path = "common/backends.rs"]
mod backends;
#[path = "common/virtq.rs"]
mod virtq;

use backends::MemDisk;
use virtq::Input;
use vmm::devices::virtio::block::{Block, BlockIoEngine, QUEUE_SIZE};
use vmm::devices::virtio::{Interrupt, VirtioDevice};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.u8();
    let sectors = usize::from(input.u8());
    let disk = MemDisk::new(sectors, flags & 2 != 0);
    let mem = virtq::memory();
    let queue = virtq::write_queue(&mem, 0, QUEUE_SIZE, &mut input);
    virtq::fill_data(&mem, input.rest());
    let mut blk = Block::new(Box::new(disk), flags & 1 != 0, "fuzz");
    if flags & 4 != 0 {
        blk = blk
            .with_engine(BlockIoEngine::Async, false)
            .expect("worker thread");
    }
    let irq = Interrupt::new().expect("interrupt");
    blk.activate(mem.clone(), vec![queue], irq)
        .expect("activate");
    // A second notification finds what the first pass wrote into the rings, if a request
    // pointed its buffers there.
    virtq::process(&mut blk, 0);
    virtq::process(&mut blk, 0);
    blk.quiesce().expect("every request answered");
});
