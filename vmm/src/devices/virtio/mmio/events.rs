//! A virtio-mmio device as a subscriber of the VMM thread's event manager: it registers
//! its own fds (its queues' notification eventfds, unless a vhost-user backend polls
//! them, and the device's host fd) and handles them when they fire.

use super::MmioTransport;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

/// The event data of the device's host fd ([`crate::devices::virtio::VirtioDevice::host_event_fd`]);
/// queue notifications carry their queue index.
const HOST_EVENT: u32 = u32::MAX;

/// One virtio-mmio device's events, served on the VMM thread.
pub struct TransportEvents(Arc<Mutex<MmioTransport>>);

impl std::fmt::Debug for TransportEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TransportEvents({:?})", self.watched())
    }
}

impl TransportEvents {
    /// The events of `transport`, the device the MMIO bus also holds.
    pub fn new(transport: Arc<Mutex<MmioTransport>>) -> Self {
        TransportEvents(transport)
    }

    fn transport(&self) -> MutexGuard<'_, MmioTransport> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fds the device has polled, with their event data.
    pub fn watched(&self) -> Vec<(RawFd, u32)> {
        let transport = self.transport();
        let mut fds = Vec::new();
        if transport.vmm_polls_queues() {
            for (index, evt) in transport.queue_evts().iter().enumerate() {
                fds.push((evt.as_raw_fd(), index as u32));
            }
        }
        if let Some(fd) = transport.host_event_fd() {
            fds.push((fd, HOST_EVENT));
        }
        fds
    }
}

impl MutEventSubscriber for TransportEvents {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, data) in self.watched() {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                tracing::error!("virtio: cannot poll a device fd: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let mut transport = self.transport();
        // Reset the counter first: a notification arriving while the device works fires
        // the fd again. On the host fd this clears a timerfd or an eventfd and fails
        // harmlessly on a device's own epoll set.
        let mut counter = [0u8; 8];
        // SAFETY: reads at most 8 bytes into our buffer from an fd the device keeps open.
        let _ = unsafe { libc::read(events.fd(), counter.as_mut_ptr().cast(), counter.len()) };
        match events.data() {
            HOST_EVENT => transport.process_host_event(),
            index => transport.process_queue(index as usize),
        }
    }
}
