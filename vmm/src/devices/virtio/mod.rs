//! Virtio devices (virtio 1.x, modern only) on the virtio-mmio transport.
//!
//! A device implements [`VirtioDevice`]: its type, features, configuration space and what
//! it does with the buffers on its queues. [`mmio::MmioTransport`] wraps a device in the
//! MMIO register file the guest driver programs; on DRIVER_OK it hands the device copies
//! of the queues the driver set up, the guest memory and an [`Interrupt`].
//!
//! Queue notifications reach the device as eventfds (KVM ioeventfds on the QueueNotify
//! register) that the VMM event loop polls; it then calls
//! [`mmio::MmioTransport::process_queue`] on its own thread, so device I/O never runs on
//! a vCPU thread. The request parsing itself is pure and runs on mock queues in tests.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod notify;
#[cfg(test)]
mod notify_tests;
pub mod rng;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

use crate::memory::GuestMemoryMmap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Feature bit VIRTIO_F_VERSION_1: the device follows virtio 1.x (no legacy interface).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device type of a network card.
pub const TYPE_NET: u32 = 1;
/// Device type of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// Device type of an entropy source.
pub const TYPE_RNG: u32 = 4;

/// Device status bits the driver writes (virtio 1.2, section 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: the device may use its queues.
    pub const DRIVER_OK: u32 = 4;
    /// The driver accepted the negotiated features.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Interrupt status bit: the device put buffers on a used ring.
pub const INT_USED_RING: u32 = 1;
/// Interrupt status bit: the configuration (or the device status) changed.
pub const INT_CONFIG: u32 = 2;

/// Errors setting up or activating a virtio device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// A device asked for a queue size virtio-queue refuses (zero, too large, not a power of two).
    #[error("invalid virtio queue size {0}")]
    QueueSize(u16),
    /// An eventfd could not be created.
    #[error("cannot create the {what} eventfd: {source}")]
    EventFd {
        /// Which eventfd.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The driver set up a queue the device cannot use.
    #[error("virtio queue {index} is not usable: {reason}")]
    BadQueue {
        /// Queue index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A snapshot's device state does not fit the device.
    #[error("virtio device state from the snapshot does not fit: {0}")]
    BadState(String),
    /// Activation was given the wrong number of queues.
    #[error("the device has {expected} queues but was activated with {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues it was given.
        got: usize,
    },
}

/// A virtio device model: what the transport needs to know, and what it does with buffers.
pub trait VirtioDevice: Send {
    /// The virtio device type ([`TYPE_BLOCK`], [`TYPE_RNG`], ...).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue (powers of two); the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits the device offers (including [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// The length of the device configuration space the guest can read (0 for none):
    /// a snapshot saves that many bytes of it, so a restore onto a device whose
    /// configuration differs (a drive override of another size) can tell the guest.
    fn config_len(&self) -> usize;
    /// Reads `data.len()` bytes of the device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space; devices without writable fields ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            "virtio device type {}: ignoring a {}-byte config write at {offset:#x}",
            self.device_type(),
            data.len()
        );
    }
    /// The features the driver accepted (a subset of [`Self::features`]); called before
    /// [`Self::activate`]. Devices whose behaviour does not depend on them ignore it.
    fn ack_features(&mut self, _features: u64) {}
    /// A host fd (timer, eventfd, the device's own epoll set) the VMM loop polls besides
    /// the queue notifications; when it is readable the loop calls
    /// [`Self::process_host_event`]. Fixed for the device's lifetime. (A device that
    /// polls several fds, or changes which, registers them with [`Self::host_fds`].)
    fn host_event_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Handles [`Self::host_event_fd`] becoming readable; also called while the device is
    /// not active. Runs on the VMM thread, while `activate` and `reset` run on a vCPU
    /// thread (whose seccomp filter allows only KVM ioctls): host-side setup belongs here.
    fn process_host_event(&mut self) {}
    /// The host fds the device wants the VMM loop to poll now, each with a token of its
    /// own (below 2^31), appended to `fds`. The loop registers and removes them as this
    /// set changes: it asks again after every event it hands the device. By default,
    /// [`Self::host_event_fd`] with token 0.
    fn host_fds(&self, fds: &mut Vec<(std::os::fd::RawFd, u32)>) {
        fds.extend(self.host_event_fd().map(|fd| (fd, 0)));
    }
    /// Handles the host fd registered with `token` becoming readable; the device reads
    /// the fd itself. By default: reads 8 bytes from [`Self::host_event_fd`] (clearing a
    /// timerfd or an eventfd; harmless on an epoll fd), then [`Self::process_host_event`].
    fn process_host_fd(&mut self, _token: u32) {
        if let Some(fd) = self.host_event_fd() {
            let mut counter = [0u8; 8];
            // SAFETY: reads at most 8 bytes into our buffer from the device's own fd.
            let _ = unsafe { libc::read(fd, counter.as_mut_ptr().cast(), counter.len()) };
        }
        self.process_host_event();
    }
    /// Starts the device with the queues the driver set up, as the transport validated them.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), VirtioError>;
    /// Handles a notification on queue `index`: processes the buffers available there.
    fn process_queue(&mut self, index: usize);
    /// Returns the device to its state before activation (the driver wrote 0 to Status).
    fn reset(&mut self);
    /// The queues the device works with once active: their positions are what a
    /// snapshot saves (the transport's copies stay where the driver set them up).
    fn active_queues(&self) -> Option<&ActiveQueues>;
    /// Queue notification eventfds the device's backend polls itself (a vhost-user
    /// device), one per queue: the transport makes them its queues' eventfds (KVM
    /// ioeventfds) and the VMM loop leaves them alone. Fixed for the device's lifetime.
    fn backend_queue_evts(&self) -> Option<&[EventFd]> {
        None
    }
    /// The device cannot go on until the driver resets it (its backend went away): the
    /// transport adds DEVICE_NEEDS_RESET to the status the driver reads.
    fn needs_reset(&self) -> bool {
        false
    }
    /// Finishes every request the device has in flight (puts it on the used ring and
    /// interrupts), waiting for it if need be, so that a snapshot taken now loses none.
    /// Called on a paused VM before its state is saved, off the VMM and vCPU threads. The
    /// error says what is still in flight.
    fn quiesce(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Called after every snapshot attempt that quiesced the device, taken or not (the VM
    /// still paused, off the VMM and vCPU threads): a device whose backend stopped for the
    /// snapshot (virtio-fs) starts it again, so the VM can resume.
    fn resume_after_snapshot(&mut self) {}
    /// The device's own snapshot state, saved beside its transport's (most devices keep
    /// everything in their queues and have none).
    fn save_device_state(&self) -> Option<mmio::VirtioDeviceState> {
        None
    }
    /// Takes the device's own state from a snapshot, before the transport re-activates
    /// the device; `mem` is the restored guest memory. The error says what does not fit;
    /// a device without a state of its own refuses one.
    fn restore_device_state(
        &mut self,
        _state: &mmio::VirtioDeviceState,
        _mem: &GuestMemoryMmap,
    ) -> Result<(), String> {
        Err(format!(
            "device type {} keeps no state of its own, but the snapshot has one for it",
            self.device_type()
        ))
    }
    /// Called once the device was re-activated from a snapshot, before the vCPUs run:
    /// a device whose host side could not be carried over tells the guest here.
    fn after_restore(&mut self) {}
}

/// A device's interrupt: the MMIO InterruptStatus bits, the irqfd that raises the line,
/// and the ConfigGeneration counter a configuration change bumps before it interrupts.
/// Cheap to clone; the transport and the activated device share one.
#[derive(Debug, Clone)]
pub struct Interrupt(Arc<InterruptState>);

#[derive(Debug)]
struct InterruptState {
    status: AtomicU32,
    config_generation: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    /// A new interrupt with a fresh (non-blocking) eventfd and no status bits set.
    pub fn new() -> Result<Self, VirtioError> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(|source| VirtioError::EventFd {
            what: "interrupt",
            source,
        })?;
        Ok(Interrupt(Arc::new(InterruptState {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            evt,
        })))
    }

    /// The eventfd to register with KVM as the device's irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.0.evt
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.0.status.load(Ordering::Acquire)
    }

    /// Sets `bits` in InterruptStatus and raises the interrupt line.
    pub fn signal(&self, bits: u32) {
        self.0.status.fetch_or(bits, Ordering::AcqRel);
        if let Err(e) = self.0.evt.write(1) {
            tracing::warn!("cannot raise a virtio interrupt: {e}");
        }
    }

    /// Tells the driver buffers were used.
    pub fn signal_used_queue(&self) {
        self.signal(INT_USED_RING);
    }

    /// Tells the driver the device changed its configuration space: ConfigGeneration
    /// changes first (so a driver reading a field across the change sees it), then
    /// [`INT_CONFIG`] is set and the line raised.
    pub fn signal_config_change(&self) {
        self.0.config_generation.fetch_add(1, Ordering::AcqRel);
        self.signal(INT_CONFIG);
    }

    /// The ConfigGeneration register: changes whenever the configuration space does.
    pub fn config_generation(&self) -> u32 {
        self.0.config_generation.load(Ordering::Acquire)
    }

    /// Sets ConfigGeneration to what a snapshot saved (nothing is signalled).
    pub fn restore_config_generation(&self, generation: u32) {
        self.0
            .config_generation
            .store(generation, Ordering::Release);
    }

    /// Clears `bits` (the driver wrote InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.0.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Sets the status bits a snapshot saved, without raising the line (the irqchip's
    /// own state says whether it is raised).
    pub fn restore_status(&self, bits: u32) {
        self.0.status.store(bits, Ordering::Release);
    }

    /// Clears every status bit (device reset).
    pub fn clear(&self) {
        self.0.status.store(0, Ordering::Release);
    }
}

/// What an activated device works with: guest memory, its queues and its interrupt.
#[derive(Debug)]
pub struct ActiveQueues {
    /// Guest memory the buffers live in.
    pub mem: GuestMemoryMmap,
    /// The queues, in the device's order.
    pub queues: Vec<Queue>,
    /// Raised after buffers are used.
    pub interrupt: Interrupt,
    /// Queues with buffers left after a batch, for the transport to notify.
    pub requeue: notify::Requeue,
}

impl ActiveQueues {
    /// Checks that `queues` matches the device's queue count and wraps the activation.
    pub fn new(
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
        expected: usize,
    ) -> Result<Self, VirtioError> {
        if queues.len() != expected {
            return Err(VirtioError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        Ok(ActiveQueues {
            mem,
            queues,
            interrupt,
            requeue: notify::Requeue::default(),
        })
    }

    /// The queues' positions and addresses, for a snapshot.
    pub fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.queues.iter().map(|q| q.state()).collect()
    }

    /// Takes the chains available on queue `index` (one batch, read once, so a guest cannot
    /// keep the caller busy forever), hands each to `handle` with the guest memory, which
    /// returns the number of bytes it wrote into the chain, puts them on the used ring and
    /// interrupts the guest once (if it asked to be). Then re-arms the queue: buffers the
    /// driver added meanwhile make it marked in [`Self::requeue`] (see [`notify`]).
    pub fn drain<F>(&mut self, index: usize, mut handle: F)
    where
        F: FnMut(&GuestMemoryMmap, DescriptorChain<&GuestMemoryMmap>) -> u32,
    {
        let Some(queue) = self.queues.get_mut(index) else {
            tracing::warn!("virtio: notification for queue {index}, which does not exist");
            return;
        };
        if !queue.ready() {
            return;
        }
        let chains: Vec<_> = match queue.iter(&self.mem) {
            Ok(iter) => iter.collect(),
            Err(e) => {
                tracing::warn!("virtio queue {index}: cannot read the available ring: {e}");
                return;
            }
        };
        let mut used = 0usize;
        for chain in chains {
            let head = chain.head_index();
            let len = handle(&self.mem, chain);
            match queue.add_used(&self.mem, head, len) {
                Ok(()) => used += 1,
                Err(e) => {
                    tracing::warn!("virtio queue {index}: cannot return descriptor {head}: {e}")
                }
            }
        }
        if used > 0 && queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
        if notify::rearm(queue, &self.mem) {
            self.requeue.mark(index);
        }
    }
}

/// Copies the part of `config` at `offset` into `data`; bytes beyond the end read as zero.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded_and_zero_filled() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn interrupt_status_is_set_signalled_and_acked() {
        let irq = Interrupt::new().expect("interrupt");
        irq.signal_used_queue();
        irq.signal(INT_CONFIG);
        assert_eq!(irq.status(), INT_USED_RING | INT_CONFIG);
        assert_eq!(irq.eventfd().read().expect("eventfd written"), 2);
        irq.ack(INT_USED_RING);
        assert_eq!(irq.status(), INT_CONFIG);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn a_config_change_bumps_the_generation_then_interrupts() {
        let irq = Interrupt::new().expect("interrupt");
        assert_eq!(irq.config_generation(), 0);
        irq.signal_config_change();
        assert_eq!(irq.config_generation(), 1);
        assert_eq!(irq.status(), INT_CONFIG);
        assert_eq!(irq.eventfd().read().expect("eventfd written"), 1);
        irq.restore_config_generation(u32::MAX);
        irq.signal_config_change();
        assert_eq!(irq.config_generation(), 0, "the counter wraps");
        irq.clear();
        assert_eq!(irq.config_generation(), 0, "a reset keeps the generation");
    }
}
