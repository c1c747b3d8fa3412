//! Carrying a used share through a snapshot: the backend's rings stopped and its state
//! read before the VM's state is saved ([`Fs::prepare_snapshot`]), the rings started
//! again afterwards ([`Fs::resume_rings`]), and the state loaded into a new backend at
//! restore ([`Fs::load_backend_state`]). See [`super::transfer`] for the protocol.

use super::{setup, transfer, Fs};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

/// What a snapshot took from the backend.
#[derive(Debug)]
pub(super) struct Carried {
    /// The backend's state.
    pub state: Vec<u8>,
    /// Whether the rings were running and were stopped for the snapshot.
    pub stopped_rings: bool,
}

impl Fs {
    /// Gets the device ready for a snapshot (the VM paused, off the VMM and vCPU threads).
    /// A share the guest never used needs nothing. A used one needs a backend with
    /// device-state transfer: its rings are stopped where it got to and its state read;
    /// [`Self::resume_rings`] starts them again. The error says why no snapshot can be
    /// taken; the device then runs on as before.
    pub(super) fn prepare_snapshot(&mut self) -> Result<(), String> {
        self.carried = None;
        let why = match self.check_unused() {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        let share = format!("virtio-fs share '{}' (tag '{}')", self.id, self.tag());
        if !self.device_state {
            return Err(format!(
                "{share}: the guest has used it ({why}), so virtiofsd holds its FUSE \
                 session, and this virtiofsd does not offer vhost-user device-state \
                 transfer (VHOST_USER_PROTOCOL_F_DEVICE_STATE) to carry it: use virtiofsd \
                 1.10 or later, or snapshot the VM before the guest mounts the share"
            ));
        }
        if let Some(reason) = &self.broken {
            return Err(format!("{share}: its backend failed earlier: {reason}"));
        }
        let stopped_rings = self.running;
        if stopped_rings {
            if let Err(e) = self.stop_for_snapshot() {
                let reason = e.to_string();
                self.fail(reason.clone());
                return Err(format!(
                    "{share}: cannot stop its backend's rings: {reason}"
                ));
            }
        }
        match transfer::save(&self.frontend, self.transfer_timeout) {
            Ok(state) => {
                self.carried = Some(Carried {
                    state,
                    stopped_rings,
                });
                Ok(())
            }
            Err(e) => {
                // The VM stays as it was: the rings run again.
                self.carried = Some(Carried {
                    state: Vec::new(),
                    stopped_rings,
                });
                self.resume_rings();
                Err(format!("{share}: cannot save its backend's state: {e}"))
            }
        }
    }

    /// Stops the running rings and records where the backend got to in the active
    /// queues (the next available entry it takes; the used index as guest memory has it).
    /// virtiofsd as zvm starts it (no `--thread-pool-size`) works a queue under that
    /// queue's lock, which GET_VRING_BASE takes too: every request it had taken is on the
    /// used ring when the answer comes, so the memory saved next holds no half-served one.
    fn stop_for_snapshot(&mut self) -> Result<(), super::FsError> {
        let bases = setup::stop_rings(&self.frontend, self.queue_sizes.len())?;
        self.running = false;
        if let Some(act) = self.active.as_mut() {
            for (queue, base) in act.queues.iter_mut().zip(bases) {
                if !queue.ready() {
                    continue;
                }
                // Ring positions are 16 bits; the backend answers in 32.
                let base = base as u16;
                let used = queue
                    .used_ring()
                    .checked_add(2)
                    .and_then(|addr| act.mem.read_obj::<u16>(GuestAddress(addr)).ok())
                    .unwrap_or(base);
                queue.set_next_avail(base);
                queue.set_next_used(used);
            }
        }
        Ok(())
    }

    /// Starts the rings a snapshot stopped again (on the thread that took it, the VM
    /// still paused); a backend that refuses breaks the device, as at activation.
    pub(super) fn resume_rings(&mut self) {
        let Some(carried) = self.carried.take() else {
            return;
        };
        if !carried.stopped_rings || self.broken.is_some() {
            return;
        }
        let Some(act) = self.active.as_ref() else {
            return;
        };
        match setup::start_queues(
            &self.frontend,
            &act.mem,
            &act.queues,
            &self.kicks,
            &self.call,
        ) {
            Ok(()) => self.running = true,
            Err(e) => self.fail(format!("cannot start the rings after a snapshot: {e}")),
        }
    }

    /// Loads a snapshot's backend state into this (new) backend, before its rings start.
    pub(super) fn load_backend_state(&mut self, state: &[u8]) -> Result<(), String> {
        transfer::load(&self.frontend, state, self.transfer_timeout).map_err(|e| {
            format!(
                "virtio-fs share '{}' (tag '{}'): the new virtiofsd did not take the \
                 snapshot's state of the share ({e}): the state is corrupt, or the shared \
                 directory lacks files the guest held at their paths (it must be the \
                 snapshot's directory, or hold the same files at the same paths); \
                 virtiofsd's messages in the log say which",
                self.id,
                self.tag()
            )
        })?;
        self.used
            .get_or_insert_with(|| "restored with its backend's state".into());
        Ok(())
    }
}
