//! Save and restore of each virtio device behind its transport, on mock queues, with
//! requests in flight: what the device had served before the snapshot is not served
//! again, what it had not is served once after the restore.

use super::*;
use crate::devices::virtio::block::request::VIRTIO_BLK_T_IN;
use crate::devices::virtio::block::{Block, MemBackend};
use crate::devices::virtio::net::{Net, NetBackend};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::test_utils::*;
use crate::devices::virtio::vsock::{Vsock, EVENT_QUEUE, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET};
use crate::devices::virtio::INT_CONFIG;
use crate::memory::GuestMemoryMmap;
use std::io;
use std::sync::{Arc, Mutex};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const ALL: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// The virtio-blk capacity as the guest reads it: two 32-bit config reads.
fn capacity(t: &mut MmioTransport) -> u64 {
    let low = rd(t, CONFIG_OFFSET);
    let high = rd(t, CONFIG_OFFSET + 4);
    u64::from(low) | (u64::from(high) << 32)
}

/// A virtio-blk device on the image at `path`.
fn disk(path: &std::path::Path) -> Box<dyn VirtioDevice> {
    Box::new(Block::open(path, false, "data").expect("disk"))
}

/// Drives `device` to DRIVER_OK as a guest would, with its queues on `mocks`, accepting
/// every feature offered (Linux takes the ring's event indices and indirect tables too).
fn started(
    mem: &GuestMemoryMmap,
    device: Box<dyn VirtioDevice>,
    mocks: &[&MockSplitQueue<'_, GuestMemoryMmap>],
) -> MmioTransport {
    let features = device.features() | crate::devices::virtio::notify::RING_FEATURES;
    let mut t = MmioTransport::new(mem.clone(), device).expect("transport");
    wr(&mut t, STATUS, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2u32 {
        wr(&mut t, DRIVER_FEATURES_SEL, sel);
        wr(&mut t, DRIVER_FEATURES, (features >> (32 * sel)) as u32);
    }
    wr(
        &mut t,
        STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
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
    wr(&mut t, STATUS, ALL);
    assert!(t.is_activated());
    for evt in t.queue_evts() {
        let _ = evt.read();
    }
    t
}

/// Saves `t`'s state through the state file's codec and restores it into a transport
/// for `device` (a fresh device on the same backend).
fn saved_and_restored(
    mem: &GuestMemoryMmap,
    t: &MmioTransport,
    device: Box<dyn VirtioDevice>,
    resumes_as_saved: bool,
) -> MmioTransport {
    let state = t.save_state();
    let bytes = bincode::serialize(&state).expect("encode");
    let back: MmioTransportState = bincode::deserialize(&bytes).expect("decode");
    assert_eq!(back, state);
    let mut restored = MmioTransport::new(mem.clone(), device).expect("transport");
    restored.restore_state(&back).expect("restore");
    assert!(restored.is_activated());
    if resumes_as_saved {
        assert_eq!(
            restored.save_state(),
            state,
            "the restored transport saves the same state"
        );
    }
    for (index, evt) in restored.queue_evts().iter().enumerate() {
        assert_eq!(
            evt.read().expect("kicked"),
            1,
            "queue {index} is looked at once after the restore"
        );
    }
    restored
}

/// Makes `chains` available, their descriptors from index `first` on, linked in order.
fn add_chains(
    mock: &MockSplitQueue<'_, GuestMemoryMmap>,
    chains: &[Vec<(u64, u32, u16)>],
    first: u16,
) {
    let mut index = first;
    for chain in chains {
        let descs: Vec<RawDescriptor> = chain
            .iter()
            .enumerate()
            .map(|(n, &(addr, len, flags))| {
                let more = n + 1 < chain.len();
                let flags = if more { flags | F_NEXT } else { flags };
                linked(
                    addr,
                    len,
                    flags,
                    if more { index + n as u16 + 1 } else { 0 },
                )
            })
            .collect();
        mock.add_desc_chains(&descs, index).expect("chain");
        index += chain.len() as u16;
    }
}

/// A virtio-blk request header.
fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

#[test]
fn block_flushes_in_flight_are_served_once() {
    let mem = memory();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), MOCK_QUEUE_SIZE);
    let backend = MemBackend::with_len(1 << 16);
    let mut t = started(
        &mem,
        Box::new(Block::new(Box::new(backend.clone()), false, "d")),
        &[&mock],
    );
    // Three flush requests: header (type 4) and a status byte each.
    let chains: Vec<_> = (0..3u64)
        .map(|i| {
            let hdr = DATA + i * 0x100;
            mem.write_obj(4u32, GuestAddress(hdr)).expect("header");
            vec![(hdr, 16, 0), (hdr + 0x80, 1, F_WRITE)]
        })
        .collect();
    add_chains(&mock, &chains[..1], 0);
    t.process_queue(0);
    assert_eq!(used_idx(&mem, &mock), 1);
    add_chains(&mock, &chains[1..], 2);
    let flushes = || backend.flushes.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(flushes(), 1);
    let mut restored = saved_and_restored(
        &mem,
        &t,
        Box::new(Block::new(Box::new(backend.clone()), false, "d")),
        true,
    );
    restored.process_queue(0);
    assert_eq!(
        used_idx(&mem, &mock),
        3,
        "the two requests in flight were served after the restore"
    );
    assert_eq!(
        flushes(),
        3,
        "and the one served before was not served again"
    );
    for n in 0..3 {
        assert_eq!(byte_at(&mem, DATA + n * 0x100 + 0x80), 0, "status OK");
    }
}

#[test]
fn rng_requests_in_flight_are_filled_once() {
    let mem = memory();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), MOCK_QUEUE_SIZE);
    let mut t = started(&mem, Box::new(Rng::new()), &[&mock]);
    let chains: Vec<_> = (0..3u64)
        .map(|i| vec![(DATA + i * 0x1000, 64, F_WRITE)])
        .collect();
    add_chains(&mock, &chains, 0);
    let mut restored = saved_and_restored(&mem, &t, Box::new(Rng::new()), true);
    restored.process_queue(0);
    assert_eq!(used_idx(&mem, &mock), 3);
    for n in 0..3 {
        assert_eq!(used_entry(&mem, &mock, n).1, 64);
    }
    t.process_queue(0);
    restored.process_queue(0);
    assert_eq!(used_idx(&mem, &mock), 3, "nothing is served twice");
}

#[derive(Clone, Default)]
struct Frames(Arc<Mutex<Vec<Vec<u8>>>>);

impl NetBackend for Frames {
    fn read_frame(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.lock().expect("frames").push(frame.to_vec());
        Ok(())
    }
    fn set_offload(&mut self, _acked: u64) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn net_frames_in_flight_are_sent_once() {
    let mem = memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0), MOCK_QUEUE_SIZE);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x8000), MOCK_QUEUE_SIZE);
    let frames = Frames::default();
    let net = |f: &Frames| {
        Box::new(Net::new("eth0", Box::new(f.clone()), None, None, None).expect("net"))
    };
    let mut t = started(&mem, net(&frames), &[&rxq, &txq]);
    let chains: Vec<_> = (0..3u64)
        .map(|i| {
            let buf = DATA + i * 0x1000;
            mem.write_slice(&[0u8; 12], GuestAddress(buf))
                .expect("header");
            mem.write_slice(&[i as u8 + 1; 60], GuestAddress(buf + 12))
                .expect("frame");
            vec![(buf, 72, 0)]
        })
        .collect();
    add_chains(&txq, &chains[..1], 0);
    t.process_queue(1);
    assert_eq!(frames.0.lock().expect("frames").len(), 1);
    add_chains(&txq, &chains[1..], 1);
    let mut restored = saved_and_restored(&mem, &t, net(&frames), true);
    restored.process_queue(1);
    let sent = frames.0.lock().expect("frames").clone();
    assert_eq!(used_idx(&mem, &txq), 3);
    let payloads: Vec<u8> = sent.iter().map(|f| f[f.len() - 1]).collect();
    assert_eq!(payloads, [1, 2, 3], "each frame went out once, in order");
}

#[test]
fn vsock_reports_a_transport_reset_after_restore() {
    let mem = memory();
    let dir = tempfile::tempdir().expect("dir");
    let queues: Vec<_> = (0..3u64)
        .map(|i| MockSplitQueue::create(&mem, GuestAddress(i * 0x8000), MOCK_QUEUE_SIZE))
        .collect();
    let refs: Vec<_> = queues.iter().collect();
    let vsock = |name: &str| Box::new(Vsock::new(3, &dir.path().join(name)).expect("vsock"));
    let t = started(&mem, vsock("a.sock"), &refs);
    mem.write_obj(0xffff_ffffu32, GuestAddress(DATA))
        .expect("poison");
    add_chains(&queues[EVENT_QUEUE], &[vec![(DATA, 8, F_WRITE)]], 0);
    let restored = saved_and_restored(&mem, &t, vsock("b.sock"), false);
    assert_eq!(
        used_idx(&mem, &queues[EVENT_QUEUE]),
        1,
        "the event buffer was used"
    );
    assert_eq!(used_entry(&mem, &queues[EVENT_QUEUE], 0).1, 4);
    let event: u32 = mem.read_obj(GuestAddress(DATA)).expect("event");
    assert_eq!(event, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
    assert_ne!(
        restored.interrupt.status() & crate::devices::virtio::INT_USED_RING,
        0,
        "the guest is interrupted"
    );
    assert!(
        dir.path().join("b.sock").exists(),
        "the restored device listens on its own socket"
    );

    // A host connection made before the guest handled the reset waits for it: delivered
    // earlier, the guest would reset it with the connections from before the snapshot.
    let mut restored = restored;
    add_chains(&queues[0], &[vec![(DATA + 0x1000, 4096, F_WRITE)]], 0);
    restored.process_queue(0);
    let mut host =
        std::os::unix::net::UnixStream::connect(dir.path().join("b.sock")).expect("connect");
    std::io::Write::write_all(&mut host, b"CONNECT 5000\n").expect("connect line");
    for _ in 0..30 {
        restored.process_host_event();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        used_idx(&mem, &queues[0]),
        0,
        "nothing reaches the guest before it handled the reset"
    );
    restored.process_queue(EVENT_QUEUE);
    assert_eq!(
        used_idx(&mem, &queues[0]),
        0,
        "a notification alone is no sign that it did"
    );
    // The guest makes its event buffer available again once it has handled the event.
    add_chains(&queues[EVENT_QUEUE], &[vec![(DATA, 8, F_WRITE)]], 1);
    restored.process_queue(EVENT_QUEUE);
    assert_eq!(
        used_idx(&mem, &queues[0]),
        1,
        "the connection request follows once it has"
    );
}

#[test]
fn a_restore_onto_a_bigger_disk_announces_the_new_capacity() {
    let mem = memory();
    let dir = tempfile::tempdir().expect("dir");
    let (placeholder, image) = (dir.path().join("empty"), dir.path().join("image"));
    std::fs::write(&placeholder, b"").expect("placeholder");
    std::fs::write(&image, vec![0x5a; 64 * 512]).expect("image");
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), MOCK_QUEUE_SIZE);
    let mut t = started(&mem, disk(&placeholder), &[&mock]);
    assert_eq!(
        capacity(&mut t),
        0,
        "the template's guest sees an empty disk"
    );
    let generation = rd(&mut t, CONFIG_GENERATION);
    let state = t.save_state();
    assert_eq!(state.config.len(), 24);
    assert_eq!(state.interrupt_status & INT_CONFIG, 0);

    // The clone's drive override: a 64-sector image.
    let mut restored = saved_and_restored(&mem, &t, disk(&image), false);
    assert_ne!(
        rd(&mut restored, INTERRUPT_STATUS) & INT_CONFIG,
        0,
        "the configuration change is signalled"
    );
    assert_eq!(
        restored
            .interrupt_evt()
            .read()
            .expect("the line was raised"),
        1
    );
    assert_ne!(
        rd(&mut restored, CONFIG_GENERATION),
        generation,
        "ConfigGeneration changed"
    );
    assert_eq!(capacity(&mut restored), 64, "the new disk's capacity");
    let resaved = restored.save_state();
    assert_eq!(resaved.config_generation, generation.wrapping_add(1));
    assert_eq!(&resaved.config[..8], &64u64.to_le_bytes());
    // The guest driver acks and reads the last sector of the new disk.
    wr(&mut restored, INTERRUPT_ACK, INT_CONFIG);
    mem.write_slice(&header(VIRTIO_BLK_T_IN, 63), GuestAddress(DATA))
        .expect("header");
    mem.write_obj(0xffu8, GuestAddress(DATA + 0x1800))
        .expect("status");
    add_chains(
        &mock,
        &[vec![
            (DATA, 16, 0),
            (DATA + 0x1000, 512, F_WRITE),
            (DATA + 0x1800, 1, F_WRITE),
        ]],
        0,
    );
    restored.process_queue(0);
    assert_eq!(used_idx(&mem, &mock), 1);
    assert_eq!(byte_at(&mem, DATA + 0x1800), 0, "status OK");
    assert_eq!(byte_at(&mem, DATA + 0x11ff), 0x5a, "the image's data");

    // A restore onto a disk of the same size announces nothing.
    let mut same = saved_and_restored(&mem, &restored, disk(&image), true);
    assert_eq!(rd(&mut same, INTERRUPT_STATUS) & INT_CONFIG, 0);
    assert_eq!(rd(&mut same, CONFIG_GENERATION), generation.wrapping_add(1));
    assert!(same.interrupt_evt().read().is_err(), "no interrupt raised");
}

#[test]
fn a_device_not_started_gets_a_new_generation_but_no_interrupt() {
    let mem = memory();
    let small = MemBackend::with_len(0);
    let t = MmioTransport::new(
        mem.clone(),
        Box::new(Block::new(Box::new(small), false, "d")),
    )
    .expect("transport");
    let state = t.save_state();
    let big = MemBackend::with_len(4096);
    let mut restored =
        MmioTransport::new(mem.clone(), Box::new(Block::new(Box::new(big), false, "d")))
            .expect("transport");
    restored.restore_state(&state).expect("restore");
    assert!(!restored.is_activated());
    assert_eq!(rd(&mut restored, INTERRUPT_STATUS), 0);
    assert!(
        restored.interrupt_evt().read().is_err(),
        "no interrupt raised"
    );
    assert_eq!(
        rd(&mut restored, CONFIG_GENERATION),
        state.config_generation.wrapping_add(1)
    );
    assert_eq!(capacity(&mut restored), 8);
}

#[test]
fn foreign_or_inconsistent_states_are_refused() {
    let mem = memory();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), MOCK_QUEUE_SIZE);
    let t = started(&mem, Box::new(Rng::new()), &[&mock]);
    let state = t.save_state();
    let fresh = || MmioTransport::new(mem.clone(), Box::new(Rng::new())).expect("transport");
    let cases = [
        MmioTransportState {
            device_type: 2,
            ..state.clone()
        },
        MmioTransportState {
            queues: vec![],
            ..state.clone()
        },
        MmioTransportState {
            driver_features: u64::MAX,
            ..state.clone()
        },
        MmioTransportState {
            status: status::ACKNOWLEDGE,
            ..state.clone()
        },
        MmioTransportState {
            queues: vec![QueueSnapshot {
                size: 3,
                ..state.queues[0]
            }],
            ..state.clone()
        },
        MmioTransportState {
            queues: vec![QueueSnapshot {
                max_size: 1024,
                ..state.queues[0]
            }],
            ..state.clone()
        },
        MmioTransportState {
            queues: vec![QueueSnapshot {
                desc_table: MEM_SIZE * 4,
                ..state.queues[0]
            }],
            ..state.clone()
        },
        MmioTransportState {
            config: vec![0; 0x1000],
            ..state.clone()
        },
    ];
    for (n, bad) in cases.iter().enumerate() {
        let err = fresh().restore_state(bad).expect_err("refused");
        assert!(!err.to_string().is_empty(), "case {n}");
    }
}
