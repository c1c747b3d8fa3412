//! Graceful shutdown: the guest is asked to power off through the ACPI power button, and
//! the VM is stopped if it has not ended by a deadline. The request is an eventfd write
//! (so a signal handler can make it); the VMM loop presses the button and keeps the
//! deadline.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// Asks a running VM's guest to power off, with a deadline; usable from any thread, and
/// from a signal handler through [`Self::raw_fd`].
#[derive(Debug)]
pub struct ShutdownHandle {
    evt: EventFd,
    grace_ms: Arc<AtomicU64>,
}

impl ShutdownHandle {
    /// Presses the power button; the VM is stopped ([`super::VmOutcome::Stopped`]) if the
    /// guest has not ended it within `grace`. A VM without a power button (no in-kernel
    /// irqchip) is stopped at once. A second request can only bring the deadline closer.
    pub fn request(&self, grace: Duration) -> std::io::Result<()> {
        self.set_grace(grace);
        self.evt.write(1)
    }

    /// Sets the grace period of requests made by writing to [`Self::raw_fd`].
    pub fn set_grace(&self, grace: Duration) {
        let ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.grace_ms.store(ms, Ordering::Relaxed);
    }

    /// Another handle to the same VM.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(ShutdownHandle {
            evt: self.evt.try_clone()?,
            grace_ms: self.grace_ms.clone(),
        })
    }

    /// The raw eventfd: writing 8 bytes to it requests a shutdown with the grace set by
    /// [`Self::set_grace`] (for signal handlers, which may only call write(2)).
    pub fn raw_fd(&self) -> i32 {
        self.evt.as_raw_fd()
    }
}

/// The VMM loop's side of graceful shutdown.
pub(crate) struct ShutdownState {
    pub evt: EventFd,
    grace_ms: Arc<AtomicU64>,
    button: Option<EventFd>,
    deadline: Option<Instant>,
}

impl ShutdownState {
    /// The loop's state for a VM whose power button is `button`.
    pub fn new(button: Option<EventFd>) -> std::io::Result<Self> {
        Ok(ShutdownState {
            evt: EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?,
            grace_ms: Arc::new(AtomicU64::new(10_000)),
            button,
            deadline: None,
        })
    }

    /// A handle that requests shutdowns of this loop.
    pub fn handle(&self) -> std::io::Result<ShutdownHandle> {
        Ok(ShutdownHandle {
            evt: self.evt.try_clone()?,
            grace_ms: self.grace_ms.clone(),
        })
    }

    /// Handles a request: presses the button and sets the deadline. False when the VM
    /// should stop at once (no button, or pressing it failed).
    pub fn on_request(&mut self) -> bool {
        let _ = self.evt.read();
        let Some(button) = &self.button else {
            tracing::info!("shutdown requested; the VM has no power button: stopping it");
            return false;
        };
        if let Err(e) = button.write(1) {
            tracing::warn!("cannot press the power button ({e}): stopping the VM");
            return false;
        }
        let grace = Duration::from_millis(self.grace_ms.load(Ordering::Relaxed));
        let deadline = Instant::now().checked_add(grace);
        tracing::info!("power button pressed; the guest has {grace:?} to power off");
        self.deadline = match (self.deadline, deadline) {
            (Some(old), Some(new)) => Some(old.min(new)),
            (old, new) => new.or(old),
        };
        true
    }

    /// How long the loop may wait for events (epoll's timeout: -1 is no deadline).
    pub fn wait_ms(&self) -> i32 {
        match self.deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up, so the loop does not wake just before the deadline.
                i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            }
        }
    }

    /// Whether the deadline has passed (the VM is then stopped).
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_presses_the_button_and_sets_a_deadline() {
        let button = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).expect("eventfd");
        let mut state =
            ShutdownState::new(Some(button.try_clone().expect("clone"))).expect("state");
        assert_eq!(state.wait_ms(), -1);
        assert!(!state.expired());
        let handle = state.handle().expect("handle");
        handle.request(Duration::from_secs(30)).expect("request");
        assert!(state.on_request());
        assert_eq!(button.read().expect("pressed"), 1);
        assert!((29_000..=30_000).contains(&state.wait_ms()));
        // A later request with a shorter grace brings the deadline closer, never further.
        handle.request(Duration::ZERO).expect("request");
        assert!(state.on_request());
        assert!(state.expired());
        handle.request(Duration::from_secs(60)).expect("request");
        assert!(state.on_request());
        assert!(state.expired());
        assert_eq!(state.wait_ms(), 0);
    }

    #[test]
    fn without_a_button_the_vm_stops_at_once() {
        let mut state = ShutdownState::new(None).expect("state");
        state
            .handle()
            .expect("handle")
            .request(Duration::from_secs(5))
            .expect("request");
        assert!(!state.on_request());
    }
}
