//! A virtio device's fds through the event manager: queue notifications reach the
//! device, and the host fds it asks for are added and removed as it changes its mind.

use super::*;
use crate::devices::virtio::test_utils::memory;
use crate::devices::virtio::{ActiveQueues, Interrupt, VirtioDevice, VirtioError, TYPE_RNG};
use crate::memory::GuestMemoryMmap;
use event_manager::{EventManager, SubscriberOps};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Default)]
struct Seen {
    host: Vec<u32>,
}

/// Polls `evt` (token 7) only while `watch` holds.
struct Watcher {
    evt: EventFd,
    watch: Arc<Mutex<bool>>,
    seen: Arc<Mutex<Seen>>,
}

impl VirtioDevice for Watcher {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn features(&self) -> u64 {
        crate::devices::virtio::VIRTIO_F_VERSION_1
    }
    fn config_len(&self) -> usize {
        0
    }
    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        _queues: Vec<Queue>,
        _interrupt: Interrupt,
    ) -> Result<(), VirtioError> {
        Ok(())
    }
    fn process_queue(&mut self, _index: usize) {}
    fn reset(&mut self) {}
    fn active_queues(&self) -> Option<&ActiveQueues> {
        None
    }
    fn host_fds(&self, fds: &mut Vec<(RawFd, u32)>) {
        if *self.watch.lock().expect("watch") {
            fds.push((self.evt.as_raw_fd(), 7));
        }
    }
    fn process_host_fd(&mut self, token: u32) {
        let _ = self.evt.read();
        self.seen.lock().expect("seen").host.push(token);
    }
}

#[test]
fn host_fds_are_added_and_removed_as_the_device_asks() {
    let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let watch = Arc::new(Mutex::new(true));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let device = Watcher {
        evt: evt.try_clone().expect("clone"),
        watch: watch.clone(),
        seen: seen.clone(),
    };
    let transport = MmioTransport::new(memory(), Box::new(device)).expect("transport");
    let queue_evt = transport.queue_evts()[0].try_clone().expect("clone");
    let transport = Arc::new(Mutex::new(transport));
    let events = TransportEvents::new(transport);
    assert_eq!(events.watched().len(), 2, "{events:?}");
    let mut manager: EventManager<TransportEvents> = EventManager::new().expect("manager");
    manager.add_subscriber(events);

    // The host fd fires: the device is told with its own token.
    evt.write(1).expect("write");
    assert_eq!(manager.run_with_timeout(0).expect("run"), 1);
    assert_eq!(seen.lock().expect("seen").host, [7]);

    // The device stops asking for it: the next event removes it, and a write no longer
    // reaches the device.
    *watch.lock().expect("watch") = false;
    queue_evt.write(1).expect("notify");
    assert_eq!(manager.run_with_timeout(0).expect("run"), 1);
    // (The transport is not activated, so the device does not see the notification.)
    assert_eq!(queue_evt.read().ok(), None, "the notification was consumed");
    evt.write(1).expect("write");
    assert_eq!(manager.run_with_timeout(0).expect("run"), 0);
    assert_eq!(seen.lock().expect("seen").host, [7]);

    // Asked for again, it is polled again (the pending write is seen).
    *watch.lock().expect("watch") = true;
    queue_evt.write(1).expect("notify");
    manager.run_with_timeout(0).expect("run");
    assert_eq!(manager.run_with_timeout(0).expect("run"), 1);
    assert_eq!(seen.lock().expect("seen").host, [7, 7]);
}
