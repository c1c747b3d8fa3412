//! Stop and pause requests shared by the VMM and its vCPU threads.

use crate::arch::state::VcpuState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Stop and pause requests shared by the VMM and its vCPU threads.
///
/// A request only takes effect when a vCPU is outside KVM_RUN, so the VMM kicks the vCPU
/// threads after making one (`vcpu::kick`): one kick is enough, none is lost.
#[derive(Debug, Default)]
pub struct VcpuControl {
    stop: AtomicBool,
    pause: Mutex<PauseState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct PauseState {
    requested: bool,
    parked: usize,
    /// Bumped by [`VcpuControl::save_parked`]: each parked vCPU saves its state once per value.
    save_generation: u64,
    /// What the parked vCPUs saved for the current generation.
    saved: Vec<(u8, Result<VcpuState, String>)>,
    /// The VMM loop serves no device while paused (it waits for the resume).
    vmm_idle: bool,
    /// vCPU threads whose run loop has ended (they never park again).
    exited: usize,
}

impl VcpuControl {
    fn state(&self) -> MutexGuard<'_, PauseState> {
        self.pause.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on `changed` while `waiting(state)`; None once `timeout` has passed or
    /// `give_up(state)` holds while still waiting, else the lock again.
    fn wait_while<'a>(
        &'a self,
        mut state: MutexGuard<'a, PauseState>,
        timeout: Duration,
        waiting: impl Fn(&PauseState) -> bool,
        give_up: impl Fn(&PauseState) -> bool,
    ) -> Option<MutexGuard<'a, PauseState>> {
        let deadline = Instant::now() + timeout;
        while waiting(&state) {
            let now = Instant::now();
            if now >= deadline || give_up(&state) {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Some(state)
    }

    /// Asks every vCPU to stop (also releases paused ones).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _state = self.state();
        self.changed.notify_all();
    }

    /// Whether a stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Asks every vCPU to park at its next exit.
    pub fn request_pause(&self) {
        self.state().requested = true;
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        self.state().requested = false;
        self.changed.notify_all();
    }

    /// The VMM loop says whether it is idle for a pause.
    pub(crate) fn set_vmm_idle(&self, idle: bool) {
        self.state().vmm_idle = idle;
        self.changed.notify_all();
    }

    /// Waits until the VMM loop is idle for a pause; false after `timeout`.
    pub fn wait_vmm_idle(&self, timeout: Duration) -> bool {
        self.wait_while(
            self.state(),
            timeout,
            |s| !s.vmm_idle,
            |s| self.stop_requested() || !s.requested,
        )
        .is_some()
    }

    /// Whether the VM is paused: the pause was asked for and the VMM loop went idle.
    pub fn is_paused(&self) -> bool {
        let state = self.state();
        state.requested && state.vmm_idle
    }

    /// Whether a pause is requested.
    pub fn pause_requested(&self) -> bool {
        self.state().requested
    }

    /// How many vCPUs are parked now.
    pub fn parked(&self) -> usize {
        self.state().parked
    }

    /// The calling vCPU thread's run loop has ended: it will not park any more.
    pub(crate) fn mark_exited(&self) {
        self.state().exited += 1;
        self.changed.notify_all();
    }

    /// Waits until `count` vCPU threads have ended their run loops; false after `timeout`
    /// (a vCPU blocked outside KVM_RUN, in a device that does not return).
    pub(crate) fn wait_exited(&self, count: usize, timeout: Duration) -> bool {
        self.wait_while(self.state(), timeout, |s| s.exited < count, |_| false)
            .is_some()
    }

    /// Parks the calling vCPU thread while a pause is requested (and no stop). While
    /// parked it answers [`Self::save_parked`] requests with `save`.
    pub(crate) fn park_if_paused(
        &self,
        index: u8,
        save: &mut dyn FnMut() -> Result<VcpuState, String>,
    ) {
        let mut state = self.state();
        if !state.requested {
            return;
        }
        state.parked += 1;
        let mut saved_generation = state.save_generation;
        self.changed.notify_all();
        while state.requested && !self.stop_requested() {
            if state.save_generation != saved_generation {
                saved_generation = state.save_generation;
                let result = save();
                state.saved.push((index, result));
                self.changed.notify_all();
                continue;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
        self.changed.notify_all();
    }

    /// Has each of the `count` parked vCPUs save its state; returns them by index. Fails
    /// unless all of them are parked, or if they do not answer within `timeout`.
    pub fn save_parked(&self, count: usize, timeout: Duration) -> Result<Vec<VcpuState>, String> {
        let mut state = self.state();
        if !state.requested || state.parked < count {
            return Err("the vCPUs are not paused".into());
        }
        state.save_generation += 1;
        state.saved.clear();
        self.changed.notify_all();
        let mut state = self
            .wait_while(
                state,
                timeout,
                |s| s.saved.len() < count,
                |_| self.stop_requested(),
            )
            .ok_or("the vCPUs did not save their state in time")?;
        let mut saved = std::mem::take(&mut state.saved);
        saved.sort_by_key(|(index, _)| *index);
        saved
            .into_iter()
            .map(|(index, r)| r.map_err(|e| format!("vCPU {index}: {e}")))
            .collect()
    }

    /// Waits until each of the `count` vCPUs is parked or has ended; false after `timeout`
    /// (a vCPU blocked outside KVM_RUN, in a device that does not return) or on a stop.
    pub fn wait_parked(&self, count: usize, timeout: Duration) -> bool {
        self.wait_while(
            self.state(),
            timeout,
            |s| s.parked + s.exited < count,
            |_| self.stop_requested(),
        )
        .is_some()
    }
}
