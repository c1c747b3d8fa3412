//! The VMM thread's event loop, on rust-vmm's `event-manager`.
//!
//! Every source of work is a subscriber that registers (and removes) its own fds:
//! - [`ControlEvents`]: the VMM's own eventfds (vCPU reports, i8042 reset, ACPI power-off,
//!   graceful shutdown, stop, pause/resume); it decides the VM's [`VmOutcome`];
//! - [`ConsoleInput`]: standard input of a stdio console, removed at its end;
//! - one [`TransportEvents`] per virtio device: its queue notifications and host fd.
//!
//! While the VM is paused the loop runs a second manager holding only the control fds a
//! paused VM answers (vCPU reports, stop, resume), so no device is served until the
//! resume: guest memory and device state stand still for a snapshot.

use super::{ShutdownState, VmOutcome};
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::mmio::{MmioTransport, TransportEvents};
use crate::seccomp::{self, ThreadKind};
use crate::vcpu::{kick, VcpuControl, VcpuEvent, VcpuOutcome};
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

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
    /// Written by [`super::RunningVm::pause`]: the loop kicks the vCPUs (once) so they park.
    pub pause_evt: EventFd,
    pub console_input: Option<Arc<Mutex<SerialDevice>>>,
    pub seccomp: bool,
    /// The virtio devices, each served as its own subscriber.
    pub devices: Vec<Arc<Mutex<MmioTransport>>>,
    /// Kept open until every vCPU thread has been joined.
    pub vm: Arc<kvm_ioctls::VmFd>,
}

/// A subscriber of the loop's event managers.
type Subscriber = Box<dyn MutEventSubscriber>;

/// What the control subscribers share; lives on the VMM thread only.
struct LoopState {
    vcpu_threads: Vec<JoinHandle<()>>,
    vcpu_events: Receiver<VcpuEvent>,
    vcpu_wake: EventFd,
    reset_evt: EventFd,
    poweroff_evt: EventFd,
    shutdown: ShutdownState,
    stop_evt: EventFd,
    pause_evt: EventFd,
    control: Arc<VcpuControl>,
    /// vCPUs that have not reported their end.
    running: usize,
    /// The loop serves only the paused manager.
    paused: bool,
    /// The VM's end, once decided.
    outcome: Option<VmOutcome>,
}

impl VmmLoop {
    pub(super) fn run(self) -> VmOutcome {
        let VmmLoop {
            vcpu_threads,
            vcpu_events,
            vcpu_wake,
            reset_evt,
            poweroff_evt,
            shutdown,
            stop_evt,
            control,
            pause_evt,
            console_input,
            seccomp,
            devices,
            vm,
        } = self;
        let state = Rc::new(RefCell::new(LoopState {
            running: vcpu_threads.len(),
            vcpu_threads,
            vcpu_events,
            vcpu_wake,
            reset_evt,
            poweroff_evt,
            shutdown,
            stop_evt,
            pause_evt,
            control,
            paused: false,
            outcome: None,
        }));
        let outcome = match seccomp::install(ThreadKind::Vmm, seccomp) {
            Err(e) => VmOutcome::VmmFailed(e.to_string()),
            Ok(()) => wait_for_outcome(&state, devices, console_input)
                .unwrap_or_else(|e| VmOutcome::VmmFailed(format!("event loop: {e}"))),
        };
        state.borrow_mut().stop_vcpus();
        drop(vm);
        outcome
    }
}

/// Runs the managers until the VM's outcome is decided.
fn wait_for_outcome(
    state: &Rc<RefCell<LoopState>>,
    devices: Vec<Arc<Mutex<MmioTransport>>>,
    console_input: Option<Arc<Mutex<SerialDevice>>>,
) -> Result<VmOutcome, event_manager::Error> {
    let mut running: EventManager<Subscriber> = EventManager::new_with_capacity(32)?;
    let mut paused: EventManager<Subscriber> = EventManager::new_with_capacity(4)?;
    running.add_subscriber(Box::new(ControlEvents::new(state.clone(), false)));
    paused.add_subscriber(Box::new(ControlEvents::new(state.clone(), true)));
    if let Some(serial) = console_input {
        running.add_subscriber(Box::new(ConsoleInput(serial)));
    }
    for device in devices {
        running.add_subscriber(Box::new(TransportEvents::new(device)));
    }
    let control = state.borrow().control.clone();
    // Restored paused: nothing runs until the first resume.
    state.borrow_mut().paused = control.pause_requested();
    let mut idle = false;
    let result = loop {
        let (is_paused, wait_ms) = {
            let mut s = state.borrow_mut();
            if let Some(outcome) = s.outcome.take() {
                break Ok(outcome);
            }
            if s.shutdown.expired() {
                tracing::info!("the guest did not power off in time: stopping the VM");
                break Ok(VmOutcome::Stopped);
            }
            (s.paused, s.shutdown.wait_ms())
        };
        // Idle is reported only between batches: events read with the pause request
        // are served before it.
        if is_paused != idle {
            idle = is_paused;
            control.set_vmm_idle(idle);
        }
        let served = if is_paused {
            paused.run()
        } else {
            running.run_with_timeout(wait_ms)
        };
        if let Err(e) = served {
            break Err(e);
        }
    };
    if idle {
        control.set_vmm_idle(false);
    }
    result
}

impl LoopState {
    /// Decides the VM's end (the first decision wins).
    fn end(&mut self, outcome: VmOutcome) {
        self.outcome.get_or_insert(outcome);
    }

    /// Takes the vCPUs' reports; `paused`: only a failure ends the VM then.
    fn on_vcpu_report(&mut self, paused: bool) {
        let _ = self.vcpu_wake.read();
        while let Ok(VcpuEvent { index, outcome }) = self.vcpu_events.try_recv() {
            self.running = self.running.saturating_sub(1);
            match outcome {
                VcpuOutcome::Failed(e) => self.end(VmOutcome::Failed(e)),
                _ if paused => {}
                VcpuOutcome::Poweroff => self.end(VmOutcome::Poweroff),
                VcpuOutcome::Reboot => self.end(VmOutcome::Reboot),
                VcpuOutcome::Halted | VcpuOutcome::Stopped => {
                    tracing::debug!("vCPU {index} halted, {} still running", self.running);
                    if self.running == 0 {
                        self.end(VmOutcome::Halted);
                    }
                }
            }
        }
    }

    /// A pause or a resume was asked for. A pause kicks the vCPUs (also when already
    /// paused: a resume and the next pause can come as one event, and vCPUs that ran
    /// between them need the new pause's kick).
    fn on_pause_event(&mut self) {
        let _ = self.pause_evt.read();
        self.paused = self.control.pause_requested();
        if self.paused {
            self.kick_vcpus();
        }
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

const TOKEN_VCPU: u32 = 1;
const TOKEN_RESET: u32 = 2;
const TOKEN_STOP: u32 = 3;
const TOKEN_PAUSE: u32 = 4;
const TOKEN_POWEROFF: u32 = 5;
const TOKEN_SHUTDOWN: u32 = 6;

/// The VMM's own eventfds; `paused`: the set a paused VM answers.
struct ControlEvents {
    state: Rc<RefCell<LoopState>>,
    paused: bool,
}

impl ControlEvents {
    fn new(state: Rc<RefCell<LoopState>>, paused: bool) -> Self {
        ControlEvents { state, paused }
    }
}

impl MutEventSubscriber for ControlEvents {
    fn init(&mut self, ops: &mut EventOps) {
        let mut state = self.state.borrow_mut();
        let s = &*state;
        let mut fds = vec![
            (&s.vcpu_wake, TOKEN_VCPU),
            (&s.stop_evt, TOKEN_STOP),
            (&s.pause_evt, TOKEN_PAUSE),
        ];
        if !self.paused {
            fds.extend([
                (&s.reset_evt, TOKEN_RESET),
                (&s.poweroff_evt, TOKEN_POWEROFF),
                (&s.shutdown.evt, TOKEN_SHUTDOWN),
            ]);
        }
        let failed = fds
            .into_iter()
            .map(|(fd, token)| ops.add(Events::with_data(fd, token, EventSet::IN)))
            .find_map(Result::err);
        if let Some(e) = failed {
            state.end(VmOutcome::VmmFailed(format!("event loop: {e}")));
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let mut state = self.state.borrow_mut();
        match events.data() {
            TOKEN_VCPU => state.on_vcpu_report(self.paused),
            TOKEN_STOP => state.end(VmOutcome::Stopped),
            TOKEN_PAUSE => state.on_pause_event(),
            TOKEN_RESET => state.end(VmOutcome::Reboot),
            TOKEN_POWEROFF => state.end(VmOutcome::Poweroff),
            TOKEN_SHUTDOWN if !state.shutdown.on_request() => state.end(VmOutcome::Stopped),
            _ => {}
        }
    }
}

/// Standard input of a stdio console, moved into the UART; removed at its end.
struct ConsoleInput(Arc<Mutex<SerialDevice>>);

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(libc::STDIN_FILENO, EventSet::IN)) {
            tracing::debug!("standard input cannot be polled ({e}); the console takes no input");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: reading into our own buffer from fd 0.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => {
                let mut serial = self.0.lock().unwrap_or_else(|p| p.into_inner());
                serial.enqueue_input(&buf[..n]);
            }
            _ => {
                // End of input (or an error): stop polling it.
                let _ = ops.remove(events);
            }
        }
    }
}
