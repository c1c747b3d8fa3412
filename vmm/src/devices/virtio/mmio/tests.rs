//! virtio-mmio transport tests: registers, negotiation, queue setup, activation, reset, state.

use super::*;
use crate::devices::virtio::test_utils::memory;
use crate::devices::virtio::{ActiveQueues, INT_USED_RING, TYPE_BLOCK};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Log {
    activated: Vec<Vec<(u16, bool, u64)>>,
    processed: Vec<usize>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
    acked: u64,
    event_idx: Vec<bool>,
}

struct Dummy {
    log: Arc<Mutex<Log>>,
    interrupt: Option<Interrupt>,
}

const FEATURES: u64 = VIRTIO_F_VERSION_1 | 0b101;

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn config_len(&self) -> usize {
        8
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.log
            .lock()
            .expect("log")
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), VirtioError> {
        let qs = queues
            .iter()
            .map(|q| (q.size(), q.ready(), q.desc_table()))
            .collect();
        let mut log = self.log.lock().expect("log");
        log.activated.push(qs);
        log.event_idx = queues.iter().map(|q| q.event_idx_enabled()).collect();
        drop(log);
        self.interrupt = Some(interrupt);
        Ok(())
    }
    fn ack_features(&mut self, features: u64) {
        self.log.lock().expect("log").acked = features;
    }
    fn process_queue(&mut self, index: usize) {
        self.log.lock().expect("log").processed.push(index);
        if let Some(irq) = &self.interrupt {
            irq.signal_used_queue();
        }
    }
    fn reset(&mut self) {
        self.log.lock().expect("log").resets += 1;
        self.interrupt = None;
    }
    fn active_queues(&self) -> Option<&ActiveQueues> {
        None
    }
}

fn transport() -> (MmioTransport, Arc<Mutex<Log>>) {
    let log = Arc::new(Mutex::new(Log::default()));
    let dev = Dummy {
        log: log.clone(),
        interrupt: None,
    };
    (
        MmioTransport::new(memory(), Box::new(dev)).expect("transport"),
        log,
    )
}

fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Negotiates `features` and returns the status the device kept.
fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    wr(t, STATUS, status::ACKNOWLEDGE);
    wr(t, STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, DRIVER_FEATURES_SEL, 0);
    wr(t, DRIVER_FEATURES, features as u32);
    wr(t, DRIVER_FEATURES_SEL, 1);
    wr(t, DRIVER_FEATURES, (features >> 32) as u32);
    wr(
        t,
        STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    rd(t, STATUS)
}

fn setup_queue(t: &mut MmioTransport, index: u32, size: u32, base: u64) {
    wr(t, QUEUE_SEL, index);
    wr(t, QUEUE_NUM, size);
    wr(t, QUEUE_DESC_LOW, base as u32);
    wr(t, QUEUE_DESC_HIGH, (base >> 32) as u32);
    wr(t, QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
    wr(t, QUEUE_DRIVER_HIGH, 0);
    wr(t, QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
    wr(t, QUEUE_DEVICE_HIGH, 0);
    wr(t, QUEUE_READY, 1);
}

const ALL: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identification_registers() {
    let (mut t, _) = transport();
    assert_eq!(rd(&mut t, MAGIC), 0x7472_6976);
    assert_eq!(rd(&mut t, VERSION), 2);
    assert_eq!(rd(&mut t, DEVICE_ID), TYPE_BLOCK);
    assert_eq!(rd(&mut t, VENDOR), VENDOR_ID);
    assert_eq!(rd(&mut t, CONFIG_GENERATION), 0);
    let mut byte = [0xffu8; 1];
    t.read(MAGIC, &mut byte);
    assert_eq!(byte, [0], "registers only answer 32-bit reads");
    t.read(CONFIG_OFFSET + 3, &mut byte);
    assert_eq!(byte, [3], "config space takes any width, offset from 0x100");
    t.write(CONFIG_OFFSET + 1, &[9, 9]);
}

#[test]
fn feature_negotiation() {
    let (mut t, log) = transport();
    wr(&mut t, DEVICE_FEATURES_SEL, 0);
    assert_eq!(
        rd(&mut t, DEVICE_FEATURES),
        0b101 | RING_FEATURES as u32,
        "the device's features and the ring's (indirect tables, event indices)"
    );
    wr(&mut t, DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&mut t, DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
    wr(&mut t, DEVICE_FEATURES_SEL, 2);
    assert_eq!(rd(&mut t, DEVICE_FEATURES), 0);
    assert_eq!(
        negotiate(&mut t, FEATURES | 0b10) & status::FEATURES_OK,
        0,
        "a feature not offered"
    );
    wr(&mut t, STATUS, 0);
    assert_eq!(
        negotiate(&mut t, 0b1) & status::FEATURES_OK,
        0,
        "legacy driver without VERSION_1"
    );
    wr(&mut t, STATUS, 0);
    assert_ne!(
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 1) & status::FEATURES_OK,
        0
    );
    wr(&mut t, DRIVER_FEATURES, 0);
    assert_eq!(
        t.driver_features,
        VIRTIO_F_VERSION_1 | 1,
        "features are frozen after FEATURES_OK"
    );
    t.write(CONFIG_OFFSET + 1, &[9, 9]);
    assert_eq!(
        log.lock().expect("log").config_writes,
        vec![(1, vec![9, 9])]
    );
}

#[test]
fn queue_setup_and_activation() {
    let (mut t, log) = transport();
    wr(&mut t, QUEUE_SEL, 0);
    wr(&mut t, QUEUE_NUM, 8);
    assert_eq!(
        t.queues[0].size(),
        16,
        "queue registers are locked before FEATURES_OK"
    );
    negotiate(&mut t, FEATURES);
    wr(&mut t, QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 8);
    wr(&mut t, QUEUE_SEL, 2);
    assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 0, "no third queue");
    wr(&mut t, QUEUE_READY, 1);
    setup_queue(&mut t, 0, 4, 0x1_0000);
    assert_eq!(rd(&mut t, QUEUE_READY), 1);
    wr(&mut t, QUEUE_SEL, 1);
    wr(&mut t, QUEUE_NUM, 6);
    assert_eq!(t.queues[1].size(), 8, "not a power of two: refused");
    t.process_queue(0);
    assert!(
        log.lock().expect("log").processed.is_empty(),
        "not active yet"
    );
    wr(&mut t, STATUS, ALL);
    assert_eq!(rd(&mut t, STATUS), ALL);
    assert!(t.is_activated());
    assert_eq!(
        log.lock().expect("log").activated,
        vec![vec![(4, true, 0x1_0000), (8, false, 0)]]
    );
    for evt in t.queue_evts() {
        assert_eq!(evt.read().expect("queues are kicked on activation"), 1);
    }
    setup_queue(&mut t, 0, 2, 0x2_0000);
    assert_eq!(t.queues[0].size(), 4, "locked after DRIVER_OK");
    t.process_queue(1);
    assert_eq!(log.lock().expect("log").processed, vec![1]);
}

#[test]
fn queue_outside_memory_is_not_activated() {
    let (mut t, log) = transport();
    negotiate(&mut t, FEATURES);
    setup_queue(&mut t, 0, 16, 0x7fff_0000);
    wr(&mut t, STATUS, ALL);
    assert!(!t.is_activated());
    assert_ne!(rd(&mut t, STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(rd(&mut t, INTERRUPT_STATUS), INT_CONFIG);
    assert!(log.lock().expect("log").activated.is_empty());
    let (mut t, _) = transport();
    wr(
        &mut t,
        STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert!(!t.is_activated(), "DRIVER_OK without FEATURES_OK");
}

#[test]
fn writing_zero_to_status_resets() {
    let (mut t, log) = transport();
    negotiate(&mut t, FEATURES);
    setup_queue(&mut t, 0, 4, 0x1_0000);
    wr(&mut t, STATUS, ALL);
    t.process_queue(0);
    assert_eq!(rd(&mut t, INTERRUPT_STATUS), INT_USED_RING);
    wr(&mut t, STATUS, status::ACKNOWLEDGE);
    assert_eq!(rd(&mut t, STATUS), ALL, "clearing bits needs a reset");
    wr(&mut t, STATUS, 0);
    assert_eq!(rd(&mut t, STATUS), 0);
    assert_eq!(rd(&mut t, INTERRUPT_STATUS), 0);
    assert!(!t.is_activated());
    assert_eq!(log.lock().expect("log").resets, 1);
    wr(&mut t, QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, QUEUE_READY), 0);
    assert_eq!(t.queues[0].size(), 16);
    assert_eq!(t.driver_features, 0);
    t.process_queue(0);
    assert_eq!(
        log.lock().expect("log").processed,
        vec![0],
        "inactive again"
    );
    negotiate(&mut t, FEATURES);
    setup_queue(&mut t, 0, 4, 0x1_0000);
    wr(&mut t, STATUS, ALL);
    assert_eq!(
        log.lock().expect("log").activated.len(),
        2,
        "can be activated again"
    );
}

#[test]
fn notify_signals_the_queue_eventfd() {
    let (mut t, _) = transport();
    wr(&mut t, QUEUE_NOTIFY_OFFSET, 1);
    assert_eq!(t.queue_evts()[1].read().expect("queue 1 signalled"), 1);
    assert!(t.queue_evts()[0].read().is_err(), "queue 0 untouched");
    wr(&mut t, QUEUE_NOTIFY_OFFSET, 7);
    wr(&mut t, QUEUE_NOTIFY_OFFSET, u32::MAX);
    assert!(
        t.queue_evts().iter().all(|e| e.read().is_err()),
        "unknown queues ignored"
    );
}

#[test]
fn interrupt_status_and_ack() {
    let (mut t, _) = transport();
    negotiate(&mut t, FEATURES);
    setup_queue(&mut t, 0, 4, 0x1_0000);
    wr(&mut t, STATUS, ALL);
    t.process_queue(0);
    assert_eq!(t.interrupt_evt().read().expect("irqfd written"), 1);
    assert_eq!(rd(&mut t, INTERRUPT_STATUS), INT_USED_RING);
    wr(&mut t, INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(rd(&mut t, INTERRUPT_STATUS), 0);
}

#[test]
fn event_idx_reaches_the_queues_and_ring_features_stay_with_the_transport() {
    use crate::devices::virtio::notify::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
    for (asked, want) in [(0, false), (VIRTIO_RING_F_EVENT_IDX, true)] {
        let (mut t, log) = transport();
        negotiate(&mut t, FEATURES | VIRTIO_RING_F_INDIRECT_DESC | asked);
        setup_queue(&mut t, 0, 4, 0x1_0000);
        wr(&mut t, STATUS, ALL);
        assert!(t.is_activated());
        let log = log.lock().expect("log");
        assert_eq!(log.event_idx, vec![want, want]);
        assert_eq!(log.acked, FEATURES, "the device sees only its own features");
    }
}
