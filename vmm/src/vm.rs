//! A running micro-VM: its vCPU threads and the VMM event loop thread that watches them.
//!
//! The loop (thread `zvm_vmm`) waits on an epoll set: vCPU reports, the i8042 reset line,
//! an external stop request, for a stdio console standard input, and the eventfds of
//! device [`EventHandler`]s (virtio queue notifications, whose I/O therefore runs on this
//! thread). It decides the VM's [`VmOutcome`], stops the remaining vCPUs (stop flag + one
//! kick each) and joins them.

use crate::devices::boot_timer::{BootTime, BootTimeRecord};
use crate::devices::i8042::{I8042Device, I8042Error};
use crate::devices::serial::SerialDevice;
use crate::metrics::VmMetrics;
use crate::seccomp::{self, ThreadKind};
use crate::snapshot::create::{SnapshotHandle, SnapshotParts};
use crate::vcpu::{kick, VcpuControl, VcpuError, VcpuEvent, VcpuOutcome};
use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

mod shutdown;
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

/// Device work the VMM loop does when an eventfd fires (e.g. a virtio queue notification).
pub struct EventHandler {
    /// Polled by the loop, and read (reset) before `on_event` runs.
    pub evt: EventFd,
    /// The work; runs on the VMM thread, under its seccomp filter.
    pub on_event: Box<dyn FnMut() + Send>,
}

impl std::fmt::Debug for EventHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventHandler(fd {})", self.evt.as_raw_fd())
    }
}

/// What the VMM loop needs to run.
pub(crate) struct VmmLoop {
    pub vcpu_threads: Vec<JoinHandle<()>>,
    pub vcpu_events: Receiver<VcpuEvent>,
    pub vcpu_wake: EventFd,
    pub reset_evt: EventFd,
    /// Signalled when the guest powers off through ACPI.
    pub poweroff_evt: EventFd,
    /// Graceful shutdown requests and their deadline.
    pub shutdown: ShutdownState,
    pub stop_evt: EventFd,
    pub control: Arc<VcpuControl>,
    /// Written by [`RunningVm::pause`]: the loop kicks the vCPUs (once) so they park.
    pub pause_evt: EventFd,
    pub console_input: Option<Arc<Mutex<SerialDevice>>>,
    pub seccomp: bool,
    /// Device event handlers.
    pub handlers: Vec<EventHandler>,
    /// Kept open until every vCPU thread has been joined.
    pub vm: Arc<kvm_ioctls::VmFd>,
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

const TOKEN_VCPU: u64 = 1;
const TOKEN_RESET: u64 = 2;
const TOKEN_STOP: u64 = 3;
const TOKEN_STDIN: u64 = 4;
const TOKEN_PAUSE: u64 = 5;
const TOKEN_POWEROFF: u64 = 6;
const TOKEN_SHUTDOWN: u64 = 7;
/// Tokens from here on are device event handlers, by index.
const TOKEN_HANDLER_BASE: u64 = 16;

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

impl VmmLoop {
    fn run(mut self) -> VmOutcome {
        if let Err(e) = seccomp::install(ThreadKind::Vmm, self.seccomp) {
            let outcome = VmOutcome::VmmFailed(e.to_string());
            self.stop_vcpus();
            return outcome;
        }
        let outcome = self
            .wait_for_outcome()
            .unwrap_or_else(|e| VmOutcome::VmmFailed(format!("event loop: {e}")));
        self.stop_vcpus();
        drop(self.vm);
        outcome
    }

    fn wait_for_outcome(&mut self) -> std::io::Result<VmOutcome> {
        let epoll = Epoll::new()?;
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(self.vcpu_wake.as_raw_fd(), TOKEN_VCPU)?;
        add(self.reset_evt.as_raw_fd(), TOKEN_RESET)?;
        add(self.poweroff_evt.as_raw_fd(), TOKEN_POWEROFF)?;
        add(self.shutdown.evt.as_raw_fd(), TOKEN_SHUTDOWN)?;
        add(self.stop_evt.as_raw_fd(), TOKEN_STOP)?;
        add(self.pause_evt.as_raw_fd(), TOKEN_PAUSE)?;
        let mut stdin_open =
            self.console_input.is_some() && add(libc::STDIN_FILENO, TOKEN_STDIN).is_ok();
        for (index, handler) in self.handlers.iter().enumerate() {
            add(handler.evt.as_raw_fd(), TOKEN_HANDLER_BASE + index as u64)?;
        }
        let mut running = self.vcpu_threads.len();
        let mut events = vec![EpollEvent::default(); 16];
        if self.control.pause_requested() {
            // Restored paused: nothing runs until the first resume.
            if let Some(outcome) = self.wait_while_paused(&mut running)? {
                return Ok(outcome);
            }
        }
        loop {
            let n = match epoll.wait(self.shutdown.wait_ms(), &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 && self.shutdown.expired() {
                tracing::info!("the guest did not power off in time: stopping the VM");
                return Ok(VmOutcome::Stopped);
            }
            for event in &events[..n] {
                match event.data() {
                    TOKEN_VCPU => {
                        let _ = self.vcpu_wake.read();
                        while let Ok(VcpuEvent { index, outcome }) = self.vcpu_events.try_recv() {
                            running = running.saturating_sub(1);
                            match outcome {
                                VcpuOutcome::Poweroff => return Ok(VmOutcome::Poweroff),
                                VcpuOutcome::Reboot => return Ok(VmOutcome::Reboot),
                                VcpuOutcome::Failed(e) => return Ok(VmOutcome::Failed(e)),
                                VcpuOutcome::Halted | VcpuOutcome::Stopped => {
                                    tracing::debug!("vCPU {index} halted, {running} still running");
                                    if running == 0 {
                                        return Ok(VmOutcome::Halted);
                                    }
                                }
                            }
                        }
                    }
                    TOKEN_RESET => return Ok(VmOutcome::Reboot),
                    TOKEN_POWEROFF => return Ok(VmOutcome::Poweroff),
                    TOKEN_SHUTDOWN if !self.shutdown.on_request() => return Ok(VmOutcome::Stopped),
                    TOKEN_STOP => return Ok(VmOutcome::Stopped),
                    TOKEN_PAUSE => {
                        let _ = self.pause_evt.read();
                        if self.control.pause_requested() {
                            self.kick_vcpus();
                            if let Some(outcome) = self.wait_while_paused(&mut running)? {
                                return Ok(outcome);
                            }
                        }
                    }
                    TOKEN_STDIN if stdin_open && !self.forward_stdin() => {
                        stdin_open = false;
                        let _ = epoll.ctl(
                            ControlOperation::Delete,
                            libc::STDIN_FILENO,
                            EpollEvent::default(),
                        );
                    }
                    token if token >= TOKEN_HANDLER_BASE => {
                        let index =
                            usize::try_from(token - TOKEN_HANDLER_BASE).unwrap_or(usize::MAX);
                        if let Some(handler) = self.handlers.get_mut(index) {
                            // Reset the counter first: a notification arriving while the
                            // handler runs fires the eventfd again.
                            let _ = handler.evt.read();
                            (handler.on_event)();
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// While a pause lasts, serves no device (their eventfds wait in the main epoll set):
    /// only a resume, a stop or a vCPU ending is handled. Returns the VM's outcome if it
    /// ended meanwhile.
    fn wait_while_paused(&mut self, running: &mut usize) -> std::io::Result<Option<VmOutcome>> {
        let epoll = Epoll::new()?;
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(self.vcpu_wake.as_raw_fd(), TOKEN_VCPU)?;
        add(self.stop_evt.as_raw_fd(), TOKEN_STOP)?;
        add(self.pause_evt.as_raw_fd(), TOKEN_PAUSE)?;
        self.control.set_vmm_idle(true);
        let mut events = vec![EpollEvent::default(); 4];
        let outcome = loop {
            if !self.control.pause_requested() {
                break None;
            }
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.control.set_vmm_idle(false);
                    return Err(e);
                }
            };
            let mut ended = None;
            for event in &events[..n] {
                match event.data() {
                    TOKEN_STOP => ended = Some(VmOutcome::Stopped),
                    TOKEN_PAUSE => {
                        // A resume and the next pause can come as one event: vCPUs that
                        // ran between them need the new pause's kick.
                        let _ = self.pause_evt.read();
                        if self.control.pause_requested() {
                            self.kick_vcpus();
                        }
                    }
                    TOKEN_VCPU => {
                        // A vCPU can only end while paused if it was stopped or failed.
                        let _ = self.vcpu_wake.read();
                        while let Ok(VcpuEvent { outcome, .. }) = self.vcpu_events.try_recv() {
                            *running = running.saturating_sub(1);
                            if let VcpuOutcome::Failed(e) = outcome {
                                ended = Some(VmOutcome::Failed(e));
                            }
                        }
                    }
                    _ => {}
                }
            }
            if ended.is_some() {
                break ended;
            }
        };
        self.control.set_vmm_idle(false);
        Ok(outcome)
    }

    /// Moves available stdin bytes into the UART; false on end of input.
    fn forward_stdin(&self) -> bool {
        let mut buf = [0u8; 64];
        // SAFETY: reading into our own buffer from fd 0.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return false;
        }
        if let Some(serial) = &self.console_input {
            let mut serial = serial.lock().unwrap_or_else(|p| p.into_inner());
            serial.enqueue_input(&buf[..n as usize]);
        }
        true
    }

    /// Kicks every running vCPU out of KVM_RUN once (see [`crate::vcpu::kick`]: a kick is
    /// never lost, so they all see the request just made).
    fn kick_vcpus(&self) {
        for thread in &self.vcpu_threads {
            kick::kick(thread);
        }
    }

    /// Stops every vCPU thread: sets the flag, kicks each once and joins them. A vCPU
    /// blocked outside KVM_RUN (in a device call that does not return) is left behind
    /// after a deadline rather than hanging the VMM.
    fn stop_vcpus(&mut self) {
        self.control.request_stop();
        self.kick_vcpus();
        if !self
            .control
            .wait_exited(self.vcpu_threads.len(), Duration::from_secs(5))
        {
            tracing::warn!("a vCPU thread did not stop in time; leaving it");
        }
        for thread in self.vcpu_threads.drain(..) {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}
