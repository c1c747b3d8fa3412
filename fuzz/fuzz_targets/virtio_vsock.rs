//! virtio-vsock packets in guest chains: TX chains read as packets (`read_packet`), and RX
//! chains measured (`rx_payload_room`) and written with a packet (`write_packet`), each
//! chain popped from fuzzed guest memory and returned on the used ring as the device does.
//!
//! Input: the queue ([`virtq::write_queue`]), a mode word (u32: bit `i` says whether
//! chain `i` is RX), the 44-byte header of the RX packet and its payload length (u32),
//! then the data area.
#![no_main]

#[path = "common/virtq.rs"]
mod virtq;

use virtio_queue::{QueueOwnedT, QueueT};
use virtq::Input;
use vmm::devices::virtio::vsock::packet::{
    read_packet, rx_payload_room, write_packet, Packet, PacketError, VsockHeader, HDR_SIZE,
    MAX_PKT_PAYLOAD,
};
use vmm::devices::virtio::vsock::QUEUE_SIZE;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mem = virtq::memory();
    let mut queue = virtq::write_queue(&mem, 0, QUEUE_SIZE, &mut input);
    let modes = input.u32();
    let mut raw = [0u8; HDR_SIZE];
    let got = input.take(HDR_SIZE);
    raw[..got.len()].copy_from_slice(got);
    let rx_len = input.u32() as usize;
    virtq::fill_data(&mem, input.rest());
    let hdr = VsockHeader::decode(&raw);
    assert_eq!(VsockHeader::decode(&hdr.encode()), hdr);

    let Ok(iter) = queue.iter(&mem) else {
        return;
    };
    let chains: Vec<_> = iter.collect();
    let mut used = Vec::new();
    for (i, chain) in chains.into_iter().enumerate() {
        let head = chain.head_index();
        let len = if modes >> (i % 32) & 1 == 0 {
            match read_packet(&mem, chain) {
                Ok(pkt) => {
                    assert_eq!(pkt.payload.len(), pkt.hdr.len as usize);
                    assert!(pkt.payload.len() <= MAX_PKT_PAYLOAD);
                    0
                }
                Err(_) => 0,
            }
        } else {
            let room = rx_payload_room(chain.clone());
            assert!(room <= MAX_PKT_PAYLOAD);
            let payload = vec![0xa5; rx_len % (MAX_PKT_PAYLOAD + 1)];
            // A room of 0 may mean no room for the header either: nothing to check then.
            let fits = (room > 0 || !payload.is_empty()).then_some(payload.len() <= room);
            let mut hdr = hdr;
            hdr.len = payload.len() as u32;
            match write_packet(&mem, chain, &Packet { hdr, payload }) {
                Ok(n) => {
                    assert_ne!(
                        fits,
                        Some(false),
                        "wrote a packet rx_payload_room said does not fit"
                    );
                    assert_eq!(n as usize, HDR_SIZE + hdr.len as usize);
                    n
                }
                Err(PacketError::NoRoom { .. }) => {
                    assert_ne!(
                        fits,
                        Some(true),
                        "refused a packet rx_payload_room said fits"
                    );
                    0
                }
                Err(_) => 0,
            }
        };
        used.push((head, len));
    }
    for (head, len) in used {
        let _ = queue.add_used(&mem, head, len);
    }
});
