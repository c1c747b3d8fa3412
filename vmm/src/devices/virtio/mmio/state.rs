//! The virtio-mmio transport's snapshot state: its registers, the queues as the device
//! works with them, whether the driver had started the device, and the device
//! configuration space as the guest could read it.
//!
//! The device a restore attaches may not have the configuration the guest read before
//! the snapshot (a drive override backed by a file of another size: virtio-blk's
//! capacity). The restore compares the saved configuration with the new device's and,
//! if they differ, bumps ConfigGeneration and, once the device is started again, raises
//! the configuration-change interrupt, so the driver reads it again (Linux's virtio_blk
//! resizes the disk).

use super::{MmioTransport, VirtioError, CONFIG_OFFSET, MMIO_SLOT_SIZE};
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

/// A device's own snapshot state, saved beside its transport's
/// ([`crate::devices::virtio::VirtioDevice::save_device_state`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioDeviceState {
    /// A virtio-fs share: its tag, negotiated features and queues.
    Fs(crate::devices::virtio::fs::FsState),
    /// A multiqueue network device: its queue pairs and how many the driver uses.
    Net(crate::devices::virtio::net::NetState),
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
    /// ConfigGeneration.
    pub config_generation: u32,
    /// The device configuration space as the guest could read it
    /// ([`crate::devices::virtio::VirtioDevice::config_len`] bytes).
    pub config: Vec<u8>,
    /// The device's own state, if it keeps one (virtio-fs, multiqueue virtio-net).
    pub device: Option<VirtioDeviceState>,
}

/// The most configuration bytes a device can have: the rest of its MMIO slot.
const MAX_CONFIG_BYTES: usize = (MMIO_SLOT_SIZE - CONFIG_OFFSET) as usize;

impl MmioTransport {
    /// The device configuration space as the guest reads it now.
    pub fn device_config(&self) -> Vec<u8> {
        let mut config = vec![0u8; self.device.config_len().min(MAX_CONFIG_BYTES)];
        self.device.read_config(0, &mut config);
        config
    }

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
            config_generation: self.interrupt.config_generation(),
            config: self.device_config(),
            device: self.device.save_device_state(),
        }
    }

    /// Puts a new, never-started transport in `state` and, if the device was started,
    /// starts it again with the saved queues: requests the driver made available and the
    /// device had not taken are served once the VM runs (every queue is kicked), none twice.
    ///
    /// If the device's configuration space is not the one saved, ConfigGeneration
    /// changes and a started device raises the configuration-change interrupt (a driver
    /// that has not started it yet reads the configuration when it does).
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
        if state.config.len() > MAX_CONFIG_BYTES {
            return Err(bad(format!(
                "{} bytes of configuration space; a device has {MAX_CONFIG_BYTES} at most",
                state.config.len()
            )));
        }
        let offered = self.offered_features();
        if state.driver_features & !offered != 0 {
            return Err(bad(format!(
                "driver features {:#x} beyond the offered {offered:#x}",
                state.driver_features
            )));
        }
        if let Some(device_state) = &state.device {
            self.device
                .restore_device_state(device_state, &self.mem)
                .map_err(bad)?;
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
        self.interrupt
            .restore_config_generation(state.config_generation);
        let config_changed = self.device_config() != state.config;
        if state.activated {
            self.activate()?;
            self.device.after_restore();
        }
        if config_changed {
            tracing::info!(
                "virtio device type {}: configuration differs from the snapshot's; telling the guest",
                self.device.device_type()
            );
            if state.activated {
                self.interrupt.signal_config_change();
            } else {
                self.interrupt
                    .restore_config_generation(state.config_generation.wrapping_add(1));
            }
        }
        Ok(())
    }
}
