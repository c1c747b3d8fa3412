//! A net device whose driver accepted mergeable buffers, saved and restored behind its
//! transport: the restored device takes the features back and spreads frames over buffers.

use super::tests::{frame, guest, MockBackend};
use super::*;
use crate::bus::BusDevice;
use crate::devices::virtio::mmio::{MmioTransport, MmioTransportState};
use crate::devices::virtio::notify::RING_FEATURES;
use crate::devices::virtio::status;
use crate::devices::virtio::test_utils::*;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

// virtio-mmio registers (virtio 1.2, section 4.2.2).
const DRIVER_FEATURES: u64 = 0x20;
const DRIVER_FEATURES_SEL: u64 = 0x24;
const QUEUE_SEL: u64 = 0x30;
const QUEUE_NUM: u64 = 0x38;
const QUEUE_READY: u64 = 0x44;
const STATUS: u64 = 0x70;
const QUEUE_DESC_LOW: u64 = 0x80;
const QUEUE_DRIVER_LOW: u64 = 0x90;
const QUEUE_DEVICE_LOW: u64 = 0xa0;

fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Starts `net` behind a transport as Linux would, accepting `features`.
fn started(
    mem: &GuestMemoryMmap,
    net: Net,
    features: u64,
    mocks: [&MockSplitQueue<'_, GuestMemoryMmap>; 2],
) -> MmioTransport {
    let mut t = MmioTransport::new(mem.clone(), Box::new(net)).expect("transport");
    wr(&mut t, STATUS, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2u32 {
        wr(&mut t, DRIVER_FEATURES_SEL, sel);
        wr(&mut t, DRIVER_FEATURES, (features >> (32 * sel)) as u32);
    }
    let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr(&mut t, STATUS, ok);
    for (index, mock) in mocks.iter().enumerate() {
        wr(&mut t, QUEUE_SEL, index as u32);
        wr(&mut t, QUEUE_NUM, u32::from(MOCK_QUEUE_SIZE));
        for (low, addr) in [
            (QUEUE_DESC_LOW, mock.desc_table_addr()),
            (QUEUE_DRIVER_LOW, mock.avail_addr()),
            (QUEUE_DEVICE_LOW, mock.used_addr()),
        ] {
            wr(&mut t, low, addr.0 as u32);
            wr(&mut t, low + 4, (addr.0 >> 32) as u32);
        }
        wr(&mut t, QUEUE_READY, 1);
    }
    wr(&mut t, STATUS, ok | status::DRIVER_OK);
    assert!(t.is_activated());
    t
}

fn net(backend: &MockBackend) -> Net {
    Net::new("eth0", Box::new(backend.clone()), None, None, None).expect("net")
}

#[test]
fn a_device_saved_with_mergeable_buffers_restores_with_them() {
    let mem = memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0), MOCK_QUEUE_SIZE);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x8000), MOCK_QUEUE_SIZE);
    let backend = MockBackend::default();
    let features = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | RING_FEATURES;
    let mut t = started(&mem, net(&backend), features, [&rxq, &txq]);
    let buffer = |i: u64| DATA + 0x1_0000 * i;
    rxq.add_desc_chains(&[linked(buffer(0), 1024, F_WRITE, 0)], 0)
        .expect("chain");
    backend.rx.lock().expect("rx").push_back(frame(600, 1));
    t.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&mem, &rxq), 1);

    let state = t.save_state();
    assert_ne!(state.driver_features & VIRTIO_NET_F_MRG_RXBUF, 0);
    let bytes = bincode::serialize(&state).expect("encode");
    let back: MmioTransportState = bincode::deserialize(&bytes).expect("decode");
    let mut restored = MmioTransport::new(mem.clone(), Box::new(net(&backend))).expect("new");
    restored.restore_state(&back).expect("restore");
    assert_eq!(restored.save_state(), state, "restored as saved");

    // Only mergeable buffers take a 3000-byte frame in 1024-byte buffers.
    let descs: Vec<_> = (1..4u16)
        .map(|i| linked(buffer(u64::from(i)), 1024, F_WRITE, 0))
        .collect();
    rxq.add_desc_chains(&descs, 1).expect("chains");
    let big = frame(3000, 2);
    backend.rx.lock().expect("rx").push_back(big.clone());
    restored.process_queue(RX_QUEUE);
    assert_eq!(used_idx(&mem, &rxq), 4, "one frame over three buffers");
    let mut got: Vec<u8> = (1..3).flat_map(|i| guest(&mem, buffer(i), 1024)).collect();
    got.extend(guest(&mem, buffer(3), 952));
    let mut expected = big;
    expected[10..12].copy_from_slice(&3u16.to_le_bytes());
    assert_eq!(got, expected);
}
