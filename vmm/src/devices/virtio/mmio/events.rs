//! A virtio-mmio device as a subscriber of the VMM thread's event manager: it registers
//! its own fds (its queues' notification eventfds, unless a vhost-user backend polls
//! them, and the host fds the device asks for, see [`VirtioDevice::host_fds`]) and
//! handles them when they fire. After every event the device's host fds are compared
//! with what is registered, and the difference added or removed.
//!
//! [`VirtioDevice::host_fds`]: crate::devices::virtio::VirtioDevice::host_fds

use super::MmioTransport;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

/// Set in the event data of a device's host fd (its token below it); queue
/// notifications carry their queue index.
const HOST_FD: u32 = 1 << 31;

/// One virtio-mmio device's events, served on the VMM thread.
pub struct TransportEvents {
    transport: Arc<Mutex<MmioTransport>>,
    /// The device's host fds registered now, with their tokens.
    registered: Vec<(RawFd, u32)>,
    /// Scratch space for the device's current host fds.
    wanted: Vec<(RawFd, u32)>,
}

impl std::fmt::Debug for TransportEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TransportEvents({:?})", self.watched())
    }
}

fn host_events(fd: RawFd, token: u32) -> Events {
    Events::with_data_raw(fd, HOST_FD | token, EventSet::IN)
}

impl TransportEvents {
    /// The events of `transport`, the device the MMIO bus also holds.
    pub fn new(transport: Arc<Mutex<MmioTransport>>) -> Self {
        TransportEvents {
            transport,
            registered: Vec::new(),
            wanted: Vec::new(),
        }
    }

    fn transport(&self) -> MutexGuard<'_, MmioTransport> {
        self.transport.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fds the device wants polled now, with their event data.
    pub fn watched(&self) -> Vec<(RawFd, u32)> {
        let transport = self.transport();
        let mut fds = Vec::new();
        if transport.vmm_polls_queues() {
            for (index, evt) in transport.queue_evts().iter().enumerate() {
                fds.push((evt.as_raw_fd(), index as u32));
            }
        }
        let mut host = Vec::new();
        transport.device.host_fds(&mut host);
        fds.extend(host.into_iter().map(|(fd, token)| (fd, HOST_FD | token)));
        fds
    }

    /// Registers the device's host fds it asks for now and removes those it no longer does.
    fn sync_host_fds(&mut self, ops: &mut EventOps) {
        let mut wanted = std::mem::take(&mut self.wanted);
        wanted.clear();
        self.transport().device.host_fds(&mut wanted);
        if wanted != self.registered {
            for &(fd, token) in self.registered.iter().filter(|r| !wanted.contains(r)) {
                if let Err(e) = ops.remove(host_events(fd, token)) {
                    tracing::warn!("virtio: cannot stop polling a device fd: {e}");
                }
            }
            for &(fd, token) in wanted.iter().filter(|w| !self.registered.contains(w)) {
                if let Err(e) = ops.add(host_events(fd, token)) {
                    tracing::error!("virtio: cannot poll a device fd: {e}");
                }
            }
            std::mem::swap(&mut self.registered, &mut wanted);
        }
        self.wanted = wanted;
    }
}

impl MutEventSubscriber for TransportEvents {
    fn init(&mut self, ops: &mut EventOps) {
        let queues: Vec<RawFd> = {
            let transport = self.transport();
            if transport.vmm_polls_queues() {
                transport
                    .queue_evts()
                    .iter()
                    .map(|e| e.as_raw_fd())
                    .collect()
            } else {
                Vec::new()
            }
        };
        for (index, fd) in queues.into_iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data_raw(fd, index as u32, EventSet::IN)) {
                tracing::error!("virtio: cannot poll a queue notification: {e}");
            }
        }
        self.sync_host_fds(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        {
            let mut transport = self.transport();
            let data = events.data();
            if data & HOST_FD != 0 {
                transport.device.process_host_fd(data & !HOST_FD);
                transport.notify_requeued();
            } else {
                // Reset the counter first: a notification arriving while the device
                // works fires the eventfd again.
                if let Some(evt) = transport.queue_evts().get(data as usize) {
                    let _ = evt.read();
                }
                transport.process_queue(data as usize);
            }
        }
        self.sync_host_fds(ops);
    }
}
