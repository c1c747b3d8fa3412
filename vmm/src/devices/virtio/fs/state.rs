//! A virtio-fs device's snapshot state, and what decides whether it may be taken.
//!
//! The FUSE session (the guest's INIT, the inodes it looked up, its open files) lives in
//! the backend. While the guest has never sent the share a request (no buffer was ever
//! made available on any queue, hiprio included, the backend never used one nor
//! notified, and no ring the backend ran was stopped at a non-zero position: a container
//! template, whose guest probed the device but never mounted it) there is nothing to
//! carry, and the restored device only replays the vhost-user set-up on a new backend
//! with the saved queues. Once the guest used the share, the backend's state is carried
//! too, by vhost-user device-state transfer ([`super::transfer`]): the rings are stopped
//! where the backend got to, the state read into [`FsState::backend_state`], and the
//! rings started again once the snapshot is written ([`Fs::resume_after_snapshot`]). A
//! backend without the DEVICE_STATE protocol feature keeps the old rule: a used share
//! refuses the snapshot.
//!
//! [`FsState`] is saved beside the device, in its transport's state (see
//! [`crate::devices::virtio::mmio::VirtioDeviceState`]).

use super::setup::host_address;
use super::transfer::MAX_BACKEND_STATE;
use super::{Fs, QUEUE_SIZE};
use crate::memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// The [`FsState`] layout this zvm writes and reads (2: with the backend's state).
pub const FS_STATE_VERSION: u32 = 2;

/// One queue as the driver handed it over: where its rings are and the positions the
/// backend starts from (its vring base).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsQueueState {
    /// QueueReady.
    pub ready: bool,
    /// Size the driver chose.
    pub size: u16,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available (driver) ring address.
    pub avail_ring: u64,
    /// Used (device) ring address.
    pub used_ring: u64,
    /// The vring base: the next available entry the backend takes.
    pub next_avail: u16,
    /// The next used entry the backend fills.
    pub next_used: u16,
}

impl From<&Queue> for FsQueueState {
    fn from(q: &Queue) -> Self {
        FsQueueState {
            ready: q.ready(),
            size: q.size(),
            desc_table: q.desc_table(),
            avail_ring: q.avail_ring(),
            used_ring: q.used_ring(),
            next_avail: q.next_avail(),
            next_used: q.next_used(),
        }
    }
}

/// A virtio-fs device's snapshot state (versioned, [`FS_STATE_VERSION`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsState {
    /// [`FS_STATE_VERSION`].
    pub version: u32,
    /// The tag the guest mounts the share by.
    pub tag: String,
    /// Request queues besides the high-priority one.
    pub request_queues: u32,
    /// The device features the driver accepted.
    pub driver_features: u64,
    /// The queues the driver started the device with (hiprio first), at the positions
    /// the backend got to; empty if the driver had not started it.
    pub queues: Vec<FsQueueState>,
    /// The backend's own state (vhost-user device-state transfer), if the guest had used
    /// the share; at most [`MAX_BACKEND_STATE`] bytes.
    pub backend_state: Option<Vec<u8>>,
}

impl FsState {
    /// Checks a state from a snapshot against the device `fs` and guest memory `mem`: the
    /// version, tag and queue count must be the device's, every ready queue's size a
    /// power of two the device allows and its rings inside one guest memory region.
    pub fn check(&self, fs: &Fs, mem: &GuestMemoryMmap) -> Result<(), String> {
        if self.version != FS_STATE_VERSION {
            return Err(format!(
                "virtio-fs state version {}, but this zvm reads version {FS_STATE_VERSION}",
                self.version
            ));
        }
        let tag = fs.tag();
        if self.tag != tag {
            return Err(format!(
                "the snapshot's share has tag '{}', this device '{tag}'",
                self.tag
            ));
        }
        let nqueues = fs.queue_sizes.len();
        if usize::try_from(self.request_queues).ok() != Some(nqueues - 1) {
            return Err(format!(
                "{} request queues where the device has {}",
                self.request_queues,
                nqueues - 1
            ));
        }
        if let Some(backend) = &self.backend_state {
            if backend.is_empty() || backend.len() > MAX_BACKEND_STATE {
                return Err(format!(
                    "{} bytes of backend state; 1 to {MAX_BACKEND_STATE} are allowed",
                    backend.len()
                ));
            }
            if !fs.device_state {
                return Err(format!(
                    "the snapshot carries the backend's state of share '{tag}' (the guest \
                     had used it), but this backend does not offer vhost-user device-state \
                     transfer (VHOST_USER_PROTOCOL_F_DEVICE_STATE): use virtiofsd 1.10 or later"
                ));
            }
        }
        if !self.queues.is_empty() && self.queues.len() != nqueues {
            return Err(format!(
                "{} queues where the device has {nqueues}",
                self.queues.len()
            ));
        }
        for (index, q) in self.queues.iter().enumerate() {
            if !q.ready {
                continue;
            }
            if q.size == 0 || q.size > QUEUE_SIZE || !q.size.is_power_of_two() {
                return Err(format!(
                    "queue {index} has size {}; 1 to {QUEUE_SIZE}, a power of two, is allowed",
                    q.size
                ));
            }
            let n = u64::from(q.size);
            for (addr, len) in [
                (q.desc_table, 16 * n),
                (q.avail_ring, 6 + 2 * n),
                (q.used_ring, 6 + 8 * n),
            ] {
                host_address(mem, addr, len, index).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Why the guest counts as having used the share, if it did: a buffer made available
/// (avail index) or used (used index) on a queue, read from guest memory now.
pub(super) fn rings_in_use(
    mem: &GuestMemoryMmap,
    queues: &[Queue],
) -> Result<Option<String>, String> {
    for (index, q) in queues.iter().enumerate().filter(|(_, q)| q.ready()) {
        for (what, ring) in [("made available", q.avail_ring()), ("used", q.used_ring())] {
            let idx_addr = ring
                .checked_add(2)
                .ok_or_else(|| format!("queue {index}: ring address overflows"))?;
            let idx: u16 = mem
                .read_obj(GuestAddress(idx_addr))
                .map_err(|e| format!("queue {index}: cannot read its ring index: {e}"))?;
            if idx != 0 {
                let queue = if index == 0 {
                    "hiprio queue".to_string()
                } else {
                    format!("request queue {}", index - 1)
                };
                return Ok(Some(format!("{idx} requests {what} on its {queue}")));
            }
        }
    }
    Ok(None)
}

/// The queues the transport re-activates a restored device with, checked against the
/// ones the device saved (a snapshot whose two copies disagree is corrupt) and given the
/// saved ring positions, which the backend starts from (SET_VRING_BASE).
pub(super) fn with_saved_positions(
    mut queues: Vec<Queue>,
    saved: &FsState,
) -> Result<Vec<Queue>, String> {
    if queues.len() != saved.queues.len() {
        return Err(format!(
            "{} queues saved, {} set up by the driver",
            saved.queues.len(),
            queues.len()
        ));
    }
    for (index, (queue, s)) in queues.iter_mut().zip(&saved.queues).enumerate() {
        let transport = FsQueueState {
            next_avail: s.next_avail,
            next_used: s.next_used,
            ..FsQueueState::from(&*queue)
        };
        if transport != *s {
            return Err(format!(
                "queue {index}: the device saved {s:?}, the transport {transport:?}"
            ));
        }
        queue.set_next_avail(s.next_avail);
        queue.set_next_used(s.next_used);
    }
    Ok(queues)
}

impl Fs {
    /// Whether a snapshot may be taken: the guest never sent the share a request. The
    /// error says how it did.
    pub fn check_unused(&self) -> Result<(), String> {
        if let Some(why) = &self.used {
            return Err(why.clone());
        }
        match self.active.as_ref().or(self.pending.as_ref()) {
            Some(act) => match rings_in_use(&act.mem, &act.queues)? {
                Some(why) => Err(why),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// The device's snapshot state (after [`Fs::prepare_snapshot`], with the rings'
    /// positions and the state the backend gave).
    pub fn save_state(&self) -> FsState {
        let queues = self
            .active
            .as_ref()
            .or(self.pending.as_ref())
            .map(|act| act.queues.iter().map(FsQueueState::from).collect())
            .unwrap_or_default();
        FsState {
            version: FS_STATE_VERSION,
            tag: self.tag(),
            request_queues: (self.queue_sizes.len() - 1) as u32,
            driver_features: self.acked_features,
            queues,
            backend_state: self.carried.as_ref().map(|c| c.state.clone()),
        }
    }
}
