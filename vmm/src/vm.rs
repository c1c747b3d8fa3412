//! A running micro-VM: its vCPU threads and the VMM event loop thread that watches them.
//!
//! The loop (thread `zvm_vmm`, see `vm::event_loop`) serves vCPU reports, the i8042 reset
//! line, stop, pause and shutdown requests, a stdio console's standard input and every
//! virtio device's fds (queue notifications, whose I/O therefore runs on this thread). It
//! decides the VM's [`VmOutcome`], stops the remaining vCPUs (stop flag + one kick each)
//! and joins them.

use crate::devices::boot_timer::{BootTime, BootTimeRecord};
use crate::devices::i8042::{I8042Device, I8042Error};
use crate::metrics::VmMetrics;
use crate::snapshot::create::{SnapshotHandle, SnapshotParts};
use crate::vcpu::{VcpuControl, VcpuError};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

mod event_loop;
mod shutdown;
pub(crate) use event_loop::VmmLoop;
pub use shutdown::ShutdownHandle;
pub(crate) use shutdown::ShutdownState;

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest powered off.
    Poweroff,
    /// The guest rebooted (i8042 reset or KVM reset event); zvm ends the VM.
    Reboot,
    /// Every vCPU halted (only without an in-kernel irqchip: tiny test guests).
    Halted,
    /// Stopped on request (a signal to zvm, or [`StopHandle::request_stop`]).
    Stopped,
    /// A vCPU failed: triple fault, KVM internal error, ...
    Failed(VcpuError),
    /// The VMM itself failed (event loop, seccomp).
    VmmFailed(String),
}

impl VmOutcome {
    /// Whether the guest ended the VM itself, cleanly.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            VmOutcome::Poweroff | VmOutcome::Reboot | VmOutcome::Halted
        )
    }
}

/// A pause that could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot pause the VM: {0}")]
pub struct PauseError(pub String);

/// Pauses and resumes a running VM's vCPUs from any thread.
#[derive(Debug)]
pub struct PauseHandle {
    control: Arc<VcpuControl>,
    pause_evt: EventFd,
    vcpu_count: usize,
}

impl PauseHandle {
    /// Pauses every vCPU; returns once all are parked and the VMM loop serves no device
    /// (so guest memory and device state stand still). Errors if the VM is ending or the
    /// vCPUs did not park within a few seconds (the VM keeps running then).
    pub fn pause(&self) -> Result<(), PauseError> {
        self.control.request_pause();
        self.pause_evt
            .write(1)
            .map_err(|e| PauseError(format!("cannot reach the VMM thread: {e}")))?;
        let timeout = Duration::from_secs(5);
        if self.control.wait_parked(self.vcpu_count, timeout) && self.control.wait_vmm_idle(timeout)
        {
            return Ok(());
        }
        self.resume();
        Err(PauseError("the vCPUs did not pause in time".into()))
    }

    /// Lets paused vCPUs run again and the VMM loop serve devices.
    pub fn resume(&self) {
        self.control.resume();
        if let Err(e) = self.pause_evt.write(1) {
            tracing::warn!("cannot wake the VMM thread after a resume: {e}");
        }
    }

    /// Whether the vCPUs are paused (or being paused).
    pub fn is_paused(&self) -> bool {
        self.control.pause_requested()
    }
}

/// Asks a running VM to stop; cheap to clone, usable from a signal-safe context via its fd.
#[derive(Debug)]
pub struct StopHandle(EventFd);

impl StopHandle {
    /// Requests the stop. The VM ends with [`VmOutcome::Stopped`].
    pub fn request_stop(&self) -> std::io::Result<()> {
        self.0.write(1)
    }

    /// The raw eventfd, for signal handlers that may only call write(2).
    pub fn raw_fd(&self) -> i32 {
        self.0.as_raw_fd()
    }
}

/// Presses keys on a running VM's keyboard (the i8042) from any thread.
#[derive(Debug, Clone)]
pub struct KeyboardHandle(Arc<Mutex<I8042Device>>);

impl KeyboardHandle {
    /// Presses and releases Ctrl-Alt-Del. A Linux guest with the i8042 keyboard driver
    /// then reboots, or signals its init (SIGINT) if init took over Ctrl-Alt-Del.
    pub fn send_ctrl_alt_del(&self) -> Result<(), I8042Error> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queue_ctrl_alt_del()
    }
}

/// Presses a running VM's ACPI power button from any thread.
#[derive(Debug)]
pub struct PowerButtonHandle(EventFd);

impl PowerButtonHandle {
    /// Presses the power button: the Generic Event Device's interrupt, whose handler
    /// notifies the guest's power button device. A Linux guest with ACPI then signals its
    /// init (or, with the input-layer button driver, reports KEY_POWER); init decides
    /// whether to power off.
    pub fn press(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// What a running VM shares with its embedder besides the VMM loop.
pub(crate) struct VmHandles {
    pub boot_time: BootTimeRecord,
    pub metrics: Arc<VmMetrics>,
    pub i8042: Option<Arc<Mutex<I8042Device>>>,
    pub power_button: Option<EventFd>,
    pub snapshot: Arc<SnapshotParts>,
}

/// A micro-VM whose vCPUs are running.
#[derive(Debug)]
pub struct RunningVm {
    vmm_thread: JoinHandle<VmOutcome>,
    stop_evt: EventFd,
    pause_evt: EventFd,
    control: Arc<VcpuControl>,
    vcpu_count: usize,
    boot_time: BootTimeRecord,
    metrics: Arc<VmMetrics>,
    i8042: Option<Arc<Mutex<I8042Device>>>,
    power_button: Option<EventFd>,
    shutdown: ShutdownHandle,
    snapshot: Arc<SnapshotParts>,
    started: Instant,
}

impl RunningVm {
    pub(crate) fn start(vmm: VmmLoop, handles: VmHandles) -> std::io::Result<RunningVm> {
        let stop_evt = vmm.stop_evt.try_clone()?;
        let pause_evt = vmm.pause_evt.try_clone()?;
        let control = vmm.control.clone();
        let shutdown = vmm.shutdown.handle()?;
        let vcpu_count = vmm.vcpu_threads.len();
        let vmm_thread = std::thread::Builder::new()
            .name("zvm_vmm".into())
            .spawn(move || vmm.run())?;
        let VmHandles {
            boot_time,
            metrics,
            i8042,
            power_button,
            snapshot,
        } = handles;
        Ok(RunningVm {
            vmm_thread,
            stop_evt,
            pause_evt,
            control,
            vcpu_count,
            started: Instant::now(),
            boot_time,
            metrics,
            i8042,
            power_button,
            shutdown,
            snapshot,
        })
    }

    /// What the VM was built from (for a restored VM: the snapshot's resources with the
    /// restore's overrides); None for VMs assembled step by step with the builder.
    pub fn resources(&self) -> Option<&crate::VmResources> {
        self.snapshot.resources.as_ref()
    }

    /// A handle that snapshots this VM (while it is paused) from another thread.
    pub fn snapshot_handle(&self) -> std::io::Result<SnapshotHandle> {
        Ok(SnapshotHandle::new(self.snapshot.clone()))
    }

    /// The VM's keyboard, if it has an i8042.
    pub fn keyboard(&self) -> Option<KeyboardHandle> {
        self.i8042.clone().map(KeyboardHandle)
    }

    /// The VM's ACPI power button (VMs with an in-kernel irqchip).
    pub fn power_button(&self) -> std::io::Result<Option<PowerButtonHandle>> {
        self.power_button
            .as_ref()
            .map(|evt| evt.try_clone().map(PowerButtonHandle))
            .transpose()
    }

    /// A handle that asks the guest to power off (the ACPI power button) and stops the VM
    /// after a grace period.
    pub fn shutdown_handle(&self) -> std::io::Result<ShutdownHandle> {
        self.shutdown.try_clone()
    }

    /// The VM's counters: vCPU exits, devices, boot time.
    pub fn metrics(&self) -> Arc<VmMetrics> {
        self.metrics.clone()
    }

    /// A handle that pauses and resumes this VM's vCPUs from another thread.
    pub fn pause_handle(&self) -> std::io::Result<PauseHandle> {
        Ok(PauseHandle {
            control: self.control.clone(),
            pause_evt: self.pause_evt.try_clone()?,
            vcpu_count: self.vcpu_count,
        })
    }

    /// Pauses every vCPU; see [`PauseHandle::pause`].
    pub fn pause(&self) -> Result<(), PauseError> {
        self.pause_handle()
            .map_err(|e| PauseError(e.to_string()))?
            .pause()
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        if let Ok(handle) = self.pause_handle() {
            handle.resume();
        }
    }

    /// Whether the vCPUs are paused (or being paused).
    pub fn is_paused(&self) -> bool {
        self.control.pause_requested()
    }

    /// A handle that stops this VM from another thread.
    pub fn stop_handle(&self) -> std::io::Result<StopHandle> {
        Ok(StopHandle(self.stop_evt.try_clone()?))
    }

    /// The boot time the guest reported through the boot-timer device, if it did.
    pub fn boot_time(&self) -> Option<BootTime> {
        *self.boot_time.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the VM to end.
    pub fn wait(self) -> VmOutcome {
        let outcome = self
            .vmm_thread
            .join()
            .unwrap_or_else(|_| VmOutcome::VmmFailed("the VMM thread panicked".into()));
        tracing::debug!("VM ran for {:?}", self.started.elapsed());
        outcome
    }

    /// Waits for the VM to end and also returns the reported boot time.
    pub fn wait_with_boot_time(self) -> (VmOutcome, Option<BootTime>) {
        let record = self.boot_time.clone();
        let outcome = self.wait();
        let boot_time = *record.lock().unwrap_or_else(|p| p.into_inner());
        (outcome, boot_time)
    }
}
