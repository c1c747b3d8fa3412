//! The virtio-mmio transport (virtio 1.2, section 4.2; MMIO version 2, modern only).
//!
//! [`MmioTransport`] is the register file a guest driver programs: identification,
//! feature negotiation, queue setup, status, interrupts and the device configuration at
//! 0x100. It sits on the MMIO bus and is reached from vCPU threads. When the driver sets
//! DRIVER_OK it activates the device with copies of the queues it set up.
//!
//! Queue notifications: each queue has an eventfd that the builder registers with KVM as
//! an ioeventfd on QueueNotify (matching the queue index), so notifications normally never
//! leave the kernel; a write that does reach [`BusDevice::write`] signals the same eventfd.
//! Whoever polls the eventfds (the VMM loop) calls [`MmioTransport::process_queue`].

use super::notify::{RING_FEATURES, VIRTIO_RING_F_EVENT_IDX};
use super::{status, Interrupt, VirtioDevice, VirtioError, INT_CONFIG, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;
use crate::memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.x) register layout.
pub const MMIO_VERSION: u32 = 2;
/// Vendor id zvm reports.
pub const VENDOR_ID: u32 = 0;
/// Bytes of MMIO space each device gets.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register, where ioeventfds are registered.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Offset of the device configuration space.
pub const CONFIG_OFFSET: u64 = 0x100;

// Register offsets.
const MAGIC: u64 = 0x00;
const VERSION: u64 = 0x04;
const DEVICE_ID: u64 = 0x08;
const VENDOR: u64 = 0x0c;
const DEVICE_FEATURES: u64 = 0x10;
const DEVICE_FEATURES_SEL: u64 = 0x14;
const DRIVER_FEATURES: u64 = 0x20;
const DRIVER_FEATURES_SEL: u64 = 0x24;
const QUEUE_SEL: u64 = 0x30;
const QUEUE_NUM_MAX: u64 = 0x34;
const QUEUE_NUM: u64 = 0x38;
const QUEUE_READY: u64 = 0x44;
const INTERRUPT_STATUS: u64 = 0x60;
const INTERRUPT_ACK: u64 = 0x64;
const STATUS: u64 = 0x70;
const QUEUE_DESC_LOW: u64 = 0x80;
const QUEUE_DESC_HIGH: u64 = 0x84;
const QUEUE_DRIVER_LOW: u64 = 0x90;
const QUEUE_DRIVER_HIGH: u64 = 0x94;
const QUEUE_DEVICE_LOW: u64 = 0xa0;
const QUEUE_DEVICE_HIGH: u64 = 0xa4;
const CONFIG_GENERATION: u64 = 0xfc;

/// A virtio device behind its MMIO register file.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    /// The device's backend polls the queue eventfds, not the VMM loop.
    backend_polls_queues: bool,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MmioTransport(type {}, status {:#x})",
            self.device.device_type(),
            self.status
        )
    }
}

impl MmioTransport {
    /// Wraps `device`, whose buffers live in `mem`: creates its queues, their notification
    /// eventfds and its interrupt.
    pub fn new(mem: GuestMemoryMmap, device: Box<dyn VirtioDevice>) -> Result<Self, VirtioError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        let backend_evts = device.backend_queue_evts();
        for (index, &size) in device.queue_max_sizes().iter().enumerate() {
            queues.push(Queue::new(size).map_err(|_| VirtioError::QueueSize(size))?);
            let evt = match backend_evts.map(|evts| evts.get(index)) {
                Some(Some(evt)) => evt.try_clone(),
                Some(None) => {
                    return Err(VirtioError::BadQueue {
                        index,
                        reason: "the device has no notification eventfd for it".into(),
                    })
                }
                None => EventFd::new(EFD_NONBLOCK),
            };
            queue_evts.push(evt.map_err(|source| VirtioError::EventFd {
                what: "queue notification",
                source,
            })?);
        }
        let backend_polls_queues = backend_evts.is_some();
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Interrupt::new()?,
            queues,
            queue_evts,
            backend_polls_queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            activated: false,
        })
    }

    /// One notification eventfd per queue, in queue order: register each as an ioeventfd
    /// on QueueNotify with its index as the data match, and poll them.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Whether the VMM loop polls [`Self::queue_evts`] (not when the device's backend
    /// does: [`VirtioDevice::backend_queue_evts`]).
    pub fn vmm_polls_queues(&self) -> bool {
        !self.backend_polls_queues
    }

    /// The device's interrupt (InterruptStatus and its irqfd), shared.
    pub fn interrupt(&self) -> Interrupt {
        self.interrupt.clone()
    }

    /// The interrupt eventfd: register it with KVM as the device's irqfd.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.interrupt.eventfd()
    }

    /// Whether the driver has started the device.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Lets the device process queue `index` (its eventfd fired); ignored until activation.
    pub fn process_queue(&mut self, index: usize) {
        if self.activated {
            self.device.process_queue(index);
            self.notify_requeued();
        }
    }

    /// Notifies the queues the device left buffers on (see [`super::notify`]): the VMM
    /// loop serves them on its next turn.
    fn notify_requeued(&self) {
        let Some(active) = self.device.active_queues() else {
            return;
        };
        let mut mask = active.requeue.take();
        while mask != 0 {
            let index = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if let Some(evt) = self.queue_evts.get(index) {
                if let Err(e) = evt.write(1) {
                    tracing::warn!("virtio-mmio: cannot notify queue {index} again: {e}");
                }
            }
        }
    }

    /// Finishes the device's requests in flight before a snapshot
    /// ([`VirtioDevice::quiesce`]).
    pub fn quiesce(&mut self) -> Result<(), String> {
        self.device.quiesce()
    }

    /// Lets the device go on after a snapshot ([`VirtioDevice::resume_after_snapshot`]).
    pub fn resume_after_snapshot(&mut self) {
        self.device.resume_after_snapshot()
    }

    /// Lets the device handle each of its host fds ([`VirtioDevice::host_fds`]) as if it
    /// had become readable, active or not (a device that was reset may have to stop
    /// polling something). The VMM loop serves them one by one as they fire
    /// ([`TransportEvents`]); tests and fuzz targets use this.
    pub fn process_host_event(&mut self) {
        let mut fds = Vec::new();
        self.device.host_fds(&mut fds);
        for (_, token) in fds {
            self.device.process_host_fd(token);
        }
        self.notify_requeued();
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change after FEATURES_OK and before DRIVER_OK (or FAILED).
    fn queue_setup_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0
            && self.status & (status::DRIVER_OK | status::FAILED) == 0
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            MAGIC => MMIO_MAGIC,
            VERSION => MMIO_VERSION,
            DEVICE_ID => self.device.device_type(),
            VENDOR => VENDOR_ID,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS if self.device.needs_reset() => self.status | status::DEVICE_NEEDS_RESET,
            STATUS => self.status,
            // Changes whenever the device changes its configuration (virtio 1.2, 4.2.2).
            CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                tracing::debug!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            DRIVER_FEATURES => {
                if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
                    tracing::debug!("virtio-mmio: driver features written outside negotiation");
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    sel => tracing::debug!("virtio-mmio: driver features word {sel} ignored"),
                }
            }
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NOTIFY => self.notify(value),
            INTERRUPT_ACK => self.interrupt.ack(value),
            STATUS => self.set_status(value),
            QUEUE_NUM | QUEUE_READY | QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW
            | QUEUE_DRIVER_HIGH | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                self.write_queue_register(offset, value)
            }
            _ => tracing::debug!("virtio-mmio: write of read-only or unknown register {offset:#x}"),
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if !self.queue_setup_allowed() {
            tracing::debug!("virtio-mmio: queue register {offset:#x} written outside queue setup");
            return;
        }
        let Some(q) = self.selected_queue() else {
            tracing::debug!(
                "virtio-mmio: queue register {offset:#x} written for a queue that does not exist"
            );
            return;
        };
        match offset {
            // virtio-queue ignores (and logs) sizes that are zero, too big or not a power of two.
            QUEUE_NUM => q.set_size(value as u16),
            QUEUE_READY => q.set_ready(value == 1),
            QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
            QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
            QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(value), None),
            QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(value)),
            QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(value), None),
            QUEUE_DEVICE_HIGH => q.set_used_ring_address(None, Some(value)),
            _ => {}
        }
        if offset == QUEUE_NUM && u32::from(q.size()) != value {
            tracing::debug!("virtio-mmio: queue size {value} refused");
        }
    }

    fn notify(&self, value: u32) {
        match self.queue_evts.get(value as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    tracing::warn!("virtio-mmio: cannot signal queue {value}: {e}");
                }
            }
            None => {
                tracing::debug!("virtio-mmio: notification for queue {value}, which does not exist")
            }
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            tracing::debug!(
                "virtio-mmio: status {old:#x} -> {value:#x} clears bits without a reset; ignored"
            );
            return;
        }
        let mut new = value;
        let added = new & !old;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            tracing::warn!(
                "virtio-mmio: driver features {:#x} refused (offered {:#x})",
                self.driver_features,
                self.offered_features()
            );
            new &= !status::FEATURES_OK;
        }
        if added & status::DRIVER_OK != 0 && !self.activated {
            if new & status::FEATURES_OK == 0 {
                tracing::warn!("virtio-mmio: DRIVER_OK without FEATURES_OK");
                new |= status::DEVICE_NEEDS_RESET;
            } else if let Err(e) = self.activate() {
                tracing::warn!(
                    "virtio-mmio: cannot activate device type {}: {e}",
                    self.device.device_type()
                );
                new |= status::DEVICE_NEEDS_RESET;
                self.status = new;
                self.interrupt.signal(INT_CONFIG);
                return;
            }
        }
        self.status = new;
    }

    /// The device's features and the ring features every queue implements.
    fn offered_features(&self) -> u64 {
        self.device.features() | RING_FEATURES
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.offered_features();
        self.driver_features & !offered == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) -> Result<(), VirtioError> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(VirtioError::BadQueue {
                    index,
                    reason: "its rings are not in guest memory".into(),
                });
            }
            let mut queue = Queue::try_from(q.state()).map_err(|e| VirtioError::BadQueue {
                index,
                reason: e.to_string(),
            })?;
            queue.set_event_idx(self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0);
            queues.push(queue);
        }
        // The device sees only its own features; the ring's are the queues' business.
        self.device
            .ack_features(self.driver_features & !RING_FEATURES);
        self.device
            .activate(self.mem.clone(), queues, self.interrupt.clone())?;
        self.activated = true;
        // Buffers made available before DRIVER_OK: look at every queue once.
        for evt in &self.queue_evts {
            if let Err(e) = evt.write(1) {
                tracing::warn!("virtio-mmio: cannot signal a queue after activation: {e}");
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.clear();
    }
}

const QUEUE_NOTIFY: u64 = QUEUE_NOTIFY_OFFSET;

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            tracing::debug!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        if offset & 3 != 0 {
            tracing::debug!("virtio-mmio: unaligned write at {offset:#x} ignored");
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

mod events;
#[cfg(test)]
mod events_tests;
#[cfg(test)]
mod snapshot_tests;
mod state;
#[cfg(test)]
mod tests;

pub use events::TransportEvents;
pub use state::{MmioTransportState, QueueSnapshot, VirtioDeviceState};
