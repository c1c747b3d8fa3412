//! virtio-net chains from a guest: TX chains written as frames, and RX chains that frames
//! from the host are read into (one chain each, or several with mergeable buffers), both
//! popped from fuzzed guest memory by an activated net device over a backend that hands
//! it frames and takes what it sends.
//!
//! Input: a flags byte (bit 0 a MAC address, bit 1 mergeable RX buffers accepted), the
//! number of host frames waiting (1 byte, at most 7) and each one's length (u32, cut to
//! the device's buffer), the RX queue and the TX queue ([`virtq::write_queue`]), the
//! order of the events (1 byte: 4 times 2 bits, an RX or TX notification, the tap
//! readable, or nothing), then the data area.
#![no_main]

#[path = "common/backends.rs"]
mod backends;
#[path = "common/virtq.rs"]
mod virtq;

use backends::Frames;
use virtq::Input;
use vmm::devices::virtio::net::{Net, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_MRG_RXBUF};
use vmm::devices::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.u8();
    let count = input.u8() % 8;
    let frames = Frames::new(count, || input.u32());
    let mem = virtq::memory();
    let rxq = virtq::write_queue(&mem, RX_QUEUE, QUEUE_SIZE, &mut input);
    let txq = virtq::write_queue(&mem, TX_QUEUE, QUEUE_SIZE, &mut input);
    let order = input.u8();
    virtq::fill_data(&mem, input.rest());
    let mac = (flags & 1 != 0).then_some([2, 0, 0, 0, 0, 1]);
    let mut net = Net::new("fuzz0", Box::new(frames), mac, None, None).expect("net device");
    let mrg = if flags & 2 != 0 {
        VIRTIO_NET_F_MRG_RXBUF
    } else {
        0
    };
    net.ack_features(VIRTIO_F_VERSION_1 | mrg);
    let irq = Interrupt::new().expect("interrupt");
    net.activate(mem.clone(), vec![rxq, txq], irq)
        .expect("activate");
    for step in 0..4 {
        match (order >> (2 * step)) & 3 {
            0 => virtq::process(&mut net, RX_QUEUE),
            1 => virtq::process(&mut net, TX_QUEUE),
            // The tap (host fd token 0) became readable.
            2 => net.process_host_fd(0),
            _ => {}
        }
    }
    virtq::process(&mut net, TX_QUEUE);
    virtq::process(&mut net, RX_QUEUE);
});
