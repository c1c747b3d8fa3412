//! The virtio-mmio register file as a guest driver programs it: a fuzzed sequence of
//! reads and writes (any offset in the slot, any width, any value) against a transport
//! with a real device behind it (rng, block over an in-memory disk, net, or multiqueue net
//! with two queue pairs over tap queues and a control queue), with queue
//! notifications, snapshots of the transport restored into a fresh one, and guest memory
//! holding fuzzed rings and buffers, so that once the driver starts the device its chains
//! are parsed.
//!
//! Input: the device (1 byte: rng, block, net, multiqueue net), one queue description per
//! device queue
//! ([`virtq::write_queue`], written at that queue's ring addresses), the number of
//! operations (1 byte) and the operations, then the data area. An operation is a kind
//! byte (bits 0-2 the operation, bits 3-4 the access width 4, 1, 2 or 8 bytes) and its
//! arguments:
//!
//! - 0 write: register byte, u32 value (repeated to fill the width);
//! - 1 read: register byte;
//! - 2 notify: the queue index is kind bits 5-7; the device processes it and its host fd;
//! - 3 start: the driver's whole start sequence with the offered features and the
//!   described queues (kind bit 5: leave out DRIVER_OK);
//! - 4 snapshot: saves the transport and restores it into a new one with a new device;
//! - others: nothing.
//!
//! A register byte below 0x80 picks an offset from [`REGISTERS`]; from 0x80 it is a byte
//! of the configuration space at 0x100.
#![no_main]

#[path = "common/backends.rs"]
mod backends;
#[path = "common/virtq.rs"]
mod virtq;

use backends::{Frames, MemDisk, TapQueue};
use virtio_queue::QueueT;
use virtq::Input;
use vmm::bus::BusDevice;
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::mmio::{MmioTransport, CONFIG_OFFSET, MMIO_MAGIC, MMIO_VERSION};
use vmm::devices::virtio::net::{Net, NetBackend};
use vmm::devices::virtio::rng::Rng;
use vmm::devices::virtio::{status, VirtioDevice};
use vmm::memory::GuestMemoryMmap;

/// The registers (virtio 1.2, 4.2.2) and a few offsets that are none, unaligned or at the
/// end of the slot.
const REGISTERS: [u64; 28] = [
    0x00, 0x04, 0x08, 0x0c, 0x10, 0x14, 0x20, 0x24, 0x30, 0x34, 0x38, 0x44, 0x50, 0x60, 0x64, 0x70,
    0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4, 0xfc, 0x02, 0x3c, 0x4c, 0xff, 0xffc,
];

fn device(kind: u8) -> Box<dyn VirtioDevice> {
    match kind % 4 {
        0 => Box::new(Rng::new()),
        1 => Box::new(Block::new(Box::new(MemDisk::new(16, false)), false, "fuzz")),
        // Five queues (two pairs, then the control queue): as many as the layout holds
        // below the data area.
        3 => {
            let pairs: Vec<Box<dyn NetBackend>> = (0..2)
                .map(|_| {
                    let (queue, _) = TapQueue::new(Frames::new(2, || 60), false);
                    Box::new(queue) as Box<dyn NetBackend>
                })
                .collect();
            Box::new(
                Net::with_pairs("fuzz0", pairs, Some([2, 0, 0, 0, 0, 1]), None, None)
                    .expect("multiqueue net device"),
            )
        }
        _ => Box::new(
            Net::new(
                "fuzz0",
                Box::new(Frames::new(2, || 60)),
                Some([2, 0, 0, 0, 0, 1]),
                None,
                None,
            )
            .expect("net device"),
        ),
    }
}

fn offset(reg: u8) -> u64 {
    match reg {
        0..=0x7f => REGISTERS[usize::from(reg) % REGISTERS.len()],
        _ => CONFIG_OFFSET + u64::from(reg - 0x80),
    }
}

fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// What a Linux driver does to start a device: negotiate the offered features, set up
/// every queue the input described at its ring addresses, then DRIVER_OK.
fn start(t: &mut MmioTransport, sizes: &[u16], driver_ok: bool) {
    write32(t, 0x70, 0);
    write32(t, 0x70, status::ACKNOWLEDGE);
    write32(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    for word in 0..2 {
        write32(t, 0x14, word);
        let offered = read32(t, 0x10);
        write32(t, 0x24, word);
        write32(t, 0x20, offered);
    }
    let negotiated = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    write32(t, 0x70, negotiated);
    for (index, &size) in sizes.iter().enumerate() {
        let (desc, avail, used) = virtq::ring_addresses(index);
        write32(t, 0x30, index as u32);
        write32(t, 0x38, u32::from(size));
        for (reg, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
            write32(t, reg, addr as u32);
            write32(t, reg + 4, (addr >> 32) as u32);
        }
        write32(t, 0x44, 1);
    }
    if driver_ok {
        write32(t, 0x70, negotiated | status::DRIVER_OK);
    }
}

fn run(mem: &GuestMemoryMmap, kind: u8, sizes: &[u16], ops: &mut Input) {
    let mut t = MmioTransport::new(mem.clone(), device(kind)).expect("transport");
    for _ in 0..ops.u8() {
        let op = ops.u8();
        let width = [4, 1, 2, 8][usize::from(op >> 3) & 3];
        match op & 7 {
            0 => {
                let offset = offset(ops.u8());
                let value = ops.u32().to_le_bytes();
                let data: Vec<u8> = value.iter().copied().cycle().take(width).collect();
                t.write(offset, &data);
            }
            1 => {
                let offset = offset(ops.u8());
                let mut data = vec![0u8; width];
                t.read(offset, &mut data);
                match (offset, width) {
                    (0x00, 4) => assert_eq!(data, MMIO_MAGIC.to_le_bytes()),
                    (0x04, 4) => assert_eq!(data, MMIO_VERSION.to_le_bytes()),
                    _ => {}
                }
            }
            2 => {
                t.process_queue(usize::from(op >> 5));
                t.process_host_event();
            }
            3 => start(&mut t, sizes, op & 0x20 == 0),
            4 => {
                let state = t.save_state();
                let mut fresh = MmioTransport::new(mem.clone(), device(kind)).expect("transport");
                if fresh.restore_state(&state).is_ok() {
                    t = fresh;
                }
            }
            _ => {}
        }
    }
    // What the VMM loop does, for a few turns: serve the queues whose eventfds fired
    // (notifications, activation, the transport's own re-notifications).
    for _ in 0..4 {
        let fired: Vec<usize> = (0..t.queue_evts().len())
            .filter(|&index| t.queue_evts()[index].read().is_ok())
            .collect();
        for index in fired {
            t.process_queue(index);
        }
        t.process_host_event();
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let kind = input.u8();
    let mem = virtq::memory();
    let max_sizes = device(kind).queue_max_sizes().to_vec();
    let sizes: Vec<u16> = max_sizes
        .iter()
        .enumerate()
        .map(|(index, &max)| virtq::write_queue(&mem, index, max, &mut input).size())
        .collect();
    // The operations run after the data area is filled, so split them off first: their
    // length is not known until they are read, so read them once to measure.
    let mut measure = Input(input.0);
    for _ in 0..measure.u8() {
        let op = measure.u8();
        measure.take(match op & 7 {
            0 => 5,
            1 => 1,
            _ => 0,
        });
    }
    let ops_len = input.0.len() - measure.0.len();
    let mut ops = Input(input.take(ops_len));
    virtq::fill_data(&mem, input.rest());
    run(&mem, kind, &sizes, &mut ops);
});
