//! Devices that live on zvm's buses.

pub mod acpi_pm;
pub mod boot_timer;
pub mod i8042;
pub mod ioapic;
pub mod serial;
pub mod virtio;

use i8042::{I8042Device, I8042State};
use ioapic::{bus::IoapicDevice, IoapicState};
use serde::{Deserialize, Serialize};
use serial::{SerialDevice, SerialDeviceState};
use std::io;
use std::sync::{Arc, Mutex};
use virtio::mmio::{MmioTransport, MmioTransportState};
use vmm_sys_util::eventfd::EventFd;

/// The emulated devices' snapshot state (the boot timer has none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    /// COM1.
    pub serial: Option<SerialDeviceState>,
    /// The keyboard controller.
    pub i8042: Option<I8042State>,
    /// Every virtio-mmio device, in attach order.
    pub virtio: Vec<MmioTransportState>,
    /// zvm's IOAPIC (VMs with a split irqchip; KVM's irqchip state is in the VM's state
    /// otherwise). Last: a state file of format 4, which ends before it, reads as
    /// `None` once a zero byte is appended (`snapshot::file`).
    pub ioapic: Option<IoapicState>,
}

/// The devices of a VM whose state a snapshot saves.
#[derive(Debug, Clone, Default)]
pub struct DeviceRegistry {
    /// COM1.
    pub serial: Option<Arc<Mutex<SerialDevice>>>,
    /// The keyboard controller.
    pub i8042: Option<Arc<Mutex<I8042Device>>>,
    /// The virtio-mmio transports, in attach order.
    pub virtio: Vec<Arc<Mutex<MmioTransport>>>,
    /// zvm's IOAPIC (a split irqchip).
    pub ioapic: Option<Arc<Mutex<IoapicDevice>>>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DeviceRegistry {
    /// Every device's state; the VM must be paused and its VMM loop idle.
    pub fn save(&self) -> DevicesState {
        DevicesState {
            serial: self.serial.as_ref().map(|d| lock(d).save_state()),
            i8042: self.i8042.as_ref().map(|d| lock(d).save_state()),
            virtio: self.virtio.iter().map(|t| lock(t).save_state()).collect(),
            ioapic: self.ioapic.as_ref().map(|d| lock(d).save_state()),
        }
    }

    /// Finishes every virtio device's requests in flight (the VM must be paused): what a
    /// snapshot then saves lost none. The error names the device that could not.
    pub fn quiesce(&self) -> Result<(), (String, String)> {
        for (index, transport) in self.virtio.iter().enumerate() {
            lock(transport)
                .quiesce()
                .map_err(|e| (format!("virtio device {index}"), e))?;
        }
        Ok(())
    }

    /// Lets every virtio device go on after a snapshot attempt, taken or not (their
    /// backends stopped for it start again); the VM must be paused.
    pub fn resume_after_snapshot(&self) {
        for transport in &self.virtio {
            lock(transport).resume_after_snapshot();
        }
    }

    /// Puts freshly attached devices (the same ones, in the same order) in `state`;
    /// the error names the device that does not fit.
    pub fn restore(&self, state: &DevicesState) -> Result<(), (String, String)> {
        if let (Some(dev), Some(s)) = (&self.serial, &state.serial) {
            lock(dev)
                .restore_state(s)
                .map_err(|e| ("serial".to_string(), e))?;
        }
        if let (Some(dev), Some(s)) = (&self.i8042, &state.i8042) {
            lock(dev)
                .restore_state(s)
                .map_err(|e| ("i8042".to_string(), e))?;
        }
        match (&self.ioapic, &state.ioapic) {
            (Some(dev), Some(s)) => lock(dev)
                .restore_state(s)
                .map_err(|e| ("IOAPIC".to_string(), e.to_string()))?,
            (None, None) => {}
            (dev, _) => {
                let reason = if dev.is_some() {
                    "the VM has a split irqchip, the snapshot KVM's"
                } else {
                    "the snapshot has a split irqchip, the VM KVM's"
                };
                return Err(("IOAPIC".to_string(), reason.to_string()));
            }
        }
        if state.virtio.len() != self.virtio.len() {
            let reason = format!(
                "the snapshot has {} virtio devices, the VM {}",
                state.virtio.len(),
                self.virtio.len()
            );
            return Err(("virtio".to_string(), reason));
        }
        for (index, (transport, s)) in self.virtio.iter().zip(&state.virtio).enumerate() {
            lock(transport)
                .restore_state(s)
                .map_err(|e| (format!("virtio device {index}"), e.to_string()))?;
        }
        Ok(())
    }
}

/// An interrupt line backed by an eventfd registered with KVM as an irqfd.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }

    /// The eventfd, for registering with KVM.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}
