//! The virtio-mmio transport's snapshot state: its registers, the queues as the device
//! works with them, and whether the driver had started the device.

use super::{MmioTransport, VirtioError};
use crate::devices::virtio::status;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

/// One queue: where the driver put its rings and how far the device got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available (driver) ring address.
    pub avail_ring: u64,
    /// Used (device) ring address.
    pub used_ring: u64,
    /// Next available-ring entry the device will take.
    pub next_avail: u16,
    /// Next used-ring entry the device will fill.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx: bool,
}

impl From<&QueueState> for QueueSnapshot {
    fn from(q: &QueueState) -> Self {
        QueueSnapshot {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
        }
    }
}

impl From<&QueueSnapshot> for QueueState {
    fn from(q: &QueueSnapshot) -> Self {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// A virtio-mmio device's transport state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    /// The device type behind the transport (checked at restore).
    pub device_type: u32,
    /// Device status.
    pub status: u32,
    /// QueueSel, DeviceFeaturesSel, DriverFeaturesSel.
    pub selectors: [u32; 3],
    /// Features the driver accepted.
    pub driver_features: u64,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Whether the device was started (DRIVER_OK accepted).
    pub activated: bool,
    /// The queues, in the device's order.
    pub queues: Vec<QueueSnapshot>,
}

impl MmioTransport {
    /// The transport's state for a snapshot; an active device's queue positions come from
    /// the device itself.
    pub fn save_state(&self) -> MmioTransportState {
        let active = self
            .device
            .active_queues()
            .filter(|_| self.activated)
            .map(|a| a.queue_states());
        let queues = match active {
            Some(states) => states.iter().map(QueueSnapshot::from).collect(),
            None => self
                .queues
                .iter()
                .map(|q| QueueSnapshot::from(&q.state()))
                .collect(),
        };
        MmioTransportState {
            device_type: self.device.device_type(),
            status: self.status,
            selectors: [
                self.queue_sel,
                self.device_features_sel,
                self.driver_features_sel,
            ],
            driver_features: self.driver_features,
            interrupt_status: self.interrupt.status(),
            activated: self.activated,
            queues,
        }
    }

    /// Puts a new, never-started transport in `state` and, if the device was started,
    /// starts it again with the saved queues: requests the driver made available and the
    /// device had not taken are served once the VM runs (every queue is kicked), none twice.
    pub fn restore_state(&mut self, state: &MmioTransportState) -> Result<(), VirtioError> {
        let bad = |reason: String| VirtioError::BadState(reason);
        if state.device_type != self.device.device_type() {
            return Err(bad(format!(
                "device type {} where the snapshot has {}",
                self.device.device_type(),
                state.device_type
            )));
        }
        if state.queues.len() != self.queues.len() {
            return Err(bad(format!(
                "{} queues where the device has {}",
                state.queues.len(),
                self.queues.len()
            )));
        }
        if state.activated
            && (state.status & status::DRIVER_OK == 0 || state.status & status::FEATURES_OK == 0)
        {
            return Err(bad(format!("started with status {:#x}", state.status)));
        }
        let offered = self.device.features();
        if state.driver_features & !offered != 0 {
            return Err(bad(format!(
                "driver features {:#x} beyond the offered {offered:#x}",
                state.driver_features
            )));
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (index, (saved, current)) in state.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != current.max_size() {
                return Err(bad(format!(
                    "queue {index} has {} entries at most, not {}",
                    current.max_size(),
                    saved.max_size
                )));
            }
            let queue = Queue::try_from(QueueState::from(saved))
                .map_err(|e| bad(format!("queue {index}: {e}")))?;
            queues.push(queue);
        }
        self.queues = queues;
        [
            self.queue_sel,
            self.device_features_sel,
            self.driver_features_sel,
        ] = state.selectors;
        self.driver_features = state.driver_features;
        self.status = state.status;
        self.interrupt.restore_status(state.interrupt_status);
        if state.activated {
            self.activate()?;
            self.device.after_restore();
        }
        Ok(())
    }
}
