//! virtio-fs (virtio 1.2, section 5.11) as a vhost-user frontend: the guest's FUSE
//! requests are served by a separate backend process (virtiofsd) that maps guest memory
//! and works the queues itself. zvm only tells it where things are.
//!
//! [`Fs::connect`] (at build time, before any seccomp filter) connects to the backend's
//! socket, claims it (SET_OWNER) and reads its features and protocol features. The
//! transport hands the guest's queue notifications straight to the backend: the queue
//! eventfds ([`VirtioDevice::backend_queue_evts`]) are KVM ioeventfds the backend polls.
//! When the driver starts the device (on a vCPU thread, where only KVM calls are allowed)
//! the device only records the queues and wakes the VMM loop through its event fd; the
//! loop's thread then sends SET_FEATURES, SET_MEM_TABLE (guest memory as memfd regions)
//! and SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE for each queue ([`setup`]). The backend's
//! used-buffer notifications arrive on one call eventfd, which the loop relays as the
//! device's interrupt (virtio-mmio needs InterruptStatus set, so no direct irqfd).
//!
//! A backend that closes its socket, sends a message nobody asked for or answers with
//! garbage makes the device broken: one error in the log, DEVICE_NEEDS_RESET in the
//! status register and a configuration-change interrupt; the VM keeps running.
//!
//! Snapshots ([`state`]): the device's [`FsState`] (tag, driver features, queues and,
//! once the guest used the share, the backend's own state read by vhost-user
//! device-state transfer, [`transfer`]) is saved beside its transport's, and a restore
//! loads the backend's state into a new backend and replays the vhost-user set-up with
//! the saved queues and vring bases, in the restored VM's (memfd) memory. A backend
//! without device-state transfer can be snapshotted only while the guest never sent the
//! share a request (a template whose guest probed the device but never mounted it).

mod carry;
mod setup;
mod state;
#[cfg(test)]
mod tests;
mod transfer;

pub use state::{FsQueueState, FsState, FS_STATE_VERSION};
pub use transfer::{MAX_BACKEND_STATE, TRANSFER_TIMEOUT};

use super::{Interrupt, VirtioDevice, VirtioError, VIRTIO_F_VERSION_1};
use crate::devices::virtio::notify::{
    RING_FEATURES, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::memory::GuestMemoryMmap;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Device type of a file system device.
pub const TYPE_FS: u32 = 26;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// Bytes of the tag in the configuration space (not NUL-terminated when full).
pub const TAG_LEN: usize = 36;
/// The virtiofsd flags that shape the state a snapshot carries: find-paths, each inode
/// the guest holds sent as its path in the shared directory (found through
/// /proc/self/fd). file-handles would need CAP_DAC_READ_SEARCH in the restoring
/// virtiofsd and the very same file system. --migration-verify-handles (which works
/// unprivileged: name_to_handle_at) is left out on purpose: it would tie a restore to
/// the same file system too, so a checkpoint could not move to another host with the
/// same paths, and a host file replaced by rename (editors, package managers) would fail
/// the whole restore; without it such a path simply names the new file.
pub const VIRTIOFSD_MIGRATION_ARGS: [&str; 2] = ["--migration-mode", "find-paths"];
/// How long zvm waits for any answer of the backend before it gives up on it.
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The protocol features zvm uses when the backend has them: MQ (to check it serves as
/// many queues as the guest gets), REPLY_ACK (so a refused memory table is an error) and
/// DEVICE_STATE (to snapshot a share the guest used).
const WANTED_PROTOCOL: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::DEVICE_STATE);

const TOKEN_WAKE: u64 = 0;
const TOKEN_CALL: u64 = 1;
const TOKEN_SOCKET: u64 = 2;

/// Errors connecting to or driving a vhost-user-fs backend.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty or longer than the configuration space holds.
    #[error("virtio-fs tag '{0}' must be 1 to {TAG_LEN} bytes")]
    BadTag(String),
    /// No request queue, or more than zvm gives a device.
    #[error("virtio-fs: {0} request queues; 1 to 8 are allowed")]
    BadQueueCount(usize),
    /// The backend's socket could not be reached.
    #[error("cannot connect to the virtio-fs backend at {path}: {source}")]
    Connect {
        /// The socket.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A system call around the backend failed.
    #[error("virtio-fs: cannot {what}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The backend refused a request, answered garbage or went away.
    #[error("virtio-fs backend: {what} failed: {source}")]
    Protocol {
        /// The request.
        what: &'static str,
        /// Cause.
        source: vhost::Error,
    },
    /// Moving the backend's state for a snapshot failed (too large, too slow, empty).
    #[error("virtio-fs backend state transfer: {0}")]
    StateTransfer(String),
    /// The backend lacks a feature zvm needs.
    #[error("virtio-fs backend does not offer {0}")]
    MissingFeature(&'static str),
    /// The backend serves fewer queues than the device has.
    #[error("virtio-fs backend serves {backend} queues; the device needs {needed}")]
    TooFewQueues {
        /// What the backend said.
        backend: u64,
        /// Hiprio + request queues.
        needed: usize,
    },
    /// The driver set up a queue whose rings are not in guest memory.
    #[error("virtio-fs queue {0}: its rings are not in guest memory")]
    BadRing(usize),
    /// The share has no backend socket to connect to.
    #[error("no backend socket (zvm starts virtiofsd for a shared_dir before it builds the VM)")]
    NoBackend,
    /// Guest memory has a region the backend cannot map (not file backed).
    #[error("virtio-fs needs shareable (memfd) guest memory: {0}")]
    Memory(String),
}

/// What the driver handed over on DRIVER_OK, waiting for the VMM thread.
struct Activation {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
}

/// A virtio-fs device whose requests a vhost-user backend serves.
pub struct Fs {
    id: String,
    config: Vec<u8>,
    queue_sizes: Vec<u16>,
    frontend: Frontend,
    /// The same socket, polled for hang-ups and messages nobody asked for.
    sock: UnixStream,
    backend_features: u64,
    acked_features: u64,
    kicks: Vec<EventFd>,
    call: EventFd,
    wake: EventFd,
    epoll: Epoll,
    pending: Option<Activation>,
    /// What the backend runs (kept to tell, at a snapshot, whether the guest used it).
    active: Option<Activation>,
    /// Why the guest counts as having used the share (the backend notified, or stopped
    /// a ring at a non-zero position): a snapshot is refused from then on.
    used: Option<String>,
    /// The state a snapshot saved, until the transport re-activates the device with it.
    restored: Option<FsState>,
    /// The backend does vhost-user device-state transfer (DEVICE_STATE acked).
    device_state: bool,
    /// What a snapshot in progress took from the backend, until it is resumed.
    carried: Option<carry::Carried>,
    /// How long a state transfer may take ([`TRANSFER_TIMEOUT`]; shorter in tests).
    transfer_timeout: Duration,
    /// Rings the backend runs that must be stopped (after a reset) before anything else.
    stop_rings: bool,
    interrupt: Option<Interrupt>,
    running: bool,
    broken: Option<String>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fs({}, running {})", self.id, self.running)
    }
}

impl Fs {
    /// Connects to the backend listening on `socket` (waiting up to [`BACKEND_TIMEOUT`]
    /// for each of its answers) for a device whose guest mount tag is `tag`, with
    /// `request_queues` request queues besides the high-priority one.
    pub fn connect(
        id: &str,
        tag: &str,
        request_queues: usize,
        socket: &Path,
    ) -> Result<Self, FsError> {
        // A backend that just created its socket may not listen yet: a few tries.
        let mut tries = 50;
        let sock = loop {
            match UnixStream::connect(socket) {
                Ok(sock) => break sock,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tries > 0 => {
                    tries -= 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(FsError::Connect {
                        path: socket.display().to_string(),
                        source,
                    })
                }
            }
        };
        Self::from_stream(id, tag, request_queues, sock)
    }

    /// Like [`Self::connect`], on a connected socket (tests hand one end of a pair).
    pub fn from_stream(
        id: &str,
        tag: &str,
        request_queues: usize,
        sock: UnixStream,
    ) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::BadTag(tag.to_string()));
        }
        if !(1..=8).contains(&request_queues) {
            return Err(FsError::BadQueueCount(request_queues));
        }
        let io = |what| move |source| FsError::Io { what, source };
        sock.set_read_timeout(Some(BACKEND_TIMEOUT))
            .map_err(io("set the backend socket's timeout"))?;
        sock.set_write_timeout(Some(BACKEND_TIMEOUT))
            .map_err(io("set the backend socket's timeout"))?;
        let watch = sock.try_clone().map_err(io("clone the backend socket"))?;
        let nqueues = 1 + request_queues;
        let mut frontend = Frontend::from_stream(sock, nqueues as u64);
        let proto = |what| move |source| FsError::Protocol { what, source };
        frontend.set_owner().map_err(proto("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::MissingFeature("VIRTIO_F_VERSION_1"));
        }
        if backend_features & RING_FEATURES != RING_FEATURES {
            return Err(FsError::MissingFeature(
                "VIRTIO_RING_F_INDIRECT_DESC and VIRTIO_RING_F_EVENT_IDX",
            ));
        }
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if backend_features & protocol_bit == 0 {
            return Err(FsError::MissingFeature("VHOST_USER_F_PROTOCOL_FEATURES"));
        }
        let offered = frontend
            .get_protocol_features()
            .map_err(proto("GET_PROTOCOL_FEATURES"))?;
        let acked = offered & WANTED_PROTOCOL;
        frontend
            .set_protocol_features(acked)
            .map_err(proto("SET_PROTOCOL_FEATURES"))?;
        if acked.contains(VhostUserProtocolFeatures::MQ) {
            let backend = frontend.get_queue_num().map_err(proto("GET_QUEUE_NUM"))?;
            if backend < nqueues as u64 {
                return Err(FsError::TooFewQueues {
                    backend,
                    needed: nqueues,
                });
            }
        }
        if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
        }
        let evt = |what| EventFd::new(EFD_NONBLOCK).map_err(io(what));
        let kicks = (0..nqueues)
            .map(|_| evt("create a queue eventfd"))
            .collect::<Result<Vec<_>, _>>()?;
        let call = evt("create the call eventfd")?;
        let wake = evt("create the wake-up eventfd")?;
        let epoll = Epoll::new().map_err(io("create the device's epoll set"))?;
        for (fd, token) in [
            (wake.as_raw_fd(), TOKEN_WAKE),
            (call.as_raw_fd(), TOKEN_CALL),
            (watch.as_raw_fd(), TOKEN_SOCKET),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN | EventSet::HANG_UP, token),
                )
                .map_err(io("add to the device's epoll set"))?;
        }
        let mut config = vec![0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&(request_queues as u32).to_le_bytes());
        Ok(Fs {
            id: id.to_string(),
            config,
            queue_sizes: vec![QUEUE_SIZE; nqueues],
            frontend,
            sock: watch,
            backend_features,
            acked_features: 0,
            kicks,
            call,
            wake,
            epoll,
            pending: None,
            active: None,
            used: None,
            restored: None,
            device_state: acked.contains(VhostUserProtocolFeatures::DEVICE_STATE),
            carried: None,
            transfer_timeout: TRANSFER_TIMEOUT,
            stop_rings: false,
            interrupt: None,
            running: false,
            broken: None,
        })
    }

    /// The device's name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The tag the guest mounts the share by.
    pub fn tag(&self) -> String {
        let end = self.config[..TAG_LEN]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(TAG_LEN);
        String::from_utf8_lossy(&self.config[..end]).into_owned()
    }

    /// Why the device stopped working, if it did.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Whether the backend runs the guest's queues.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Gives up on the backend: logs why, stops watching its socket, tells the driver.
    fn fail(&mut self, reason: String) {
        if self.broken.is_some() {
            return;
        }
        tracing::error!(
            "virtio-fs {}: {reason}; the device is broken (the VM keeps running)",
            self.id
        );
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            self.sock.as_raw_fd(),
            EpollEvent::default(),
        );
        self.running = false;
        self.broken = Some(reason);
        if let Some(irq) = &self.interrupt {
            irq.signal_config_change();
        }
    }

    fn wake_loop(&self) {
        if let Err(e) = self.wake.write(1) {
            tracing::warn!("virtio-fs {}: cannot wake the VMM loop: {e}", self.id);
        }
    }

    /// The VMM thread's work after a reset or an activation.
    fn handle_wake(&mut self) {
        let _ = self.wake.read();
        if self.broken.is_some() {
            self.pending = None;
            return;
        }
        if self.stop_rings {
            self.stop_rings = false;
            match setup::stop_rings(&self.frontend, self.queue_sizes.len()) {
                Ok(bases) => {
                    if let Some((index, base)) = bases.iter().enumerate().find(|(_, &b)| b != 0) {
                        self.used.get_or_insert(format!(
                            "the backend had taken {base} requests from queue {index}"
                        ));
                    }
                }
                Err(e) => {
                    self.fail(e.to_string());
                    return;
                }
            }
        }
        if let Some(act) = self.pending.take() {
            // The transport keeps the ring features from the device; the queues say
            // whether the driver took event indices.
            let event_idx = act.queues.first().is_some_and(|q| q.event_idx_enabled());
            let features = self.acked_features
                | (self.backend_features & VIRTIO_RING_F_INDIRECT_DESC)
                | if event_idx {
                    VIRTIO_RING_F_EVENT_IDX
                } else {
                    0
                }
                | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
            match setup::start_rings(
                &self.frontend,
                features,
                &act.mem,
                &act.queues,
                &self.kicks,
                &self.call,
            ) {
                Ok(()) => {
                    tracing::debug!("virtio-fs {}: backend runs the queues", self.id);
                    self.running = true;
                    self.active = Some(act);
                }
                Err(e) => self.fail(e.to_string()),
            }
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn config_len(&self) -> usize {
        self.config.len()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn host_event_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn backend_queue_evts(&self) -> Option<&[EventFd]> {
        Some(&self.kicks)
    }

    fn needs_reset(&self) -> bool {
        self.broken.is_some()
    }

    fn process_host_event(&mut self) {
        let mut events = [EpollEvent::default(); 4];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("virtio-fs {}: cannot poll its events: {e}", self.id);
                return;
            }
        };
        for event in &events[..n] {
            match event.data() {
                TOKEN_WAKE => self.handle_wake(),
                TOKEN_CALL => {
                    let _ = self.call.read();
                    self.used
                        .get_or_insert_with(|| "the backend notified used buffers".into());
                    if let Some(irq) = self.interrupt.as_ref().filter(|_| self.running) {
                        irq.signal_used_queue();
                    }
                }
                _ => self.fail(
                    "the backend closed its socket or sent a message zvm did not ask for".into(),
                ),
            }
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), VirtioError> {
        if queues.len() != self.queue_sizes.len() {
            return Err(VirtioError::QueueCount {
                expected: self.queue_sizes.len(),
                got: queues.len(),
            });
        }
        if let Some(reason) = &self.broken {
            return Err(VirtioError::BadState(format!(
                "virtio-fs {}: {reason}",
                self.id
            )));
        }
        let queues = match self.restored.take() {
            Some(saved) => state::with_saved_positions(queues, &saved)
                .map_err(|e| VirtioError::BadState(format!("virtio-fs {}: {e}", self.id)))?,
            None => queues,
        };
        self.interrupt = Some(interrupt);
        self.pending = Some(Activation { mem, queues });
        // Runs on a vCPU thread: the socket work waits for the VMM loop.
        self.wake_loop();
        Ok(())
    }

    fn process_queue(&mut self, _index: usize) {
        // The backend polls the queue eventfds itself.
    }

    fn reset(&mut self) {
        self.pending = None;
        self.active = None;
        self.interrupt = None;
        if self.running {
            self.running = false;
            self.stop_rings = true;
            self.wake_loop();
        }
    }

    fn active_queues(&self) -> Option<&super::ActiveQueues> {
        None
    }

    fn quiesce(&mut self) -> Result<(), String> {
        self.prepare_snapshot()
    }

    fn resume_after_snapshot(&mut self) {
        self.resume_rings();
    }

    fn save_device_state(&self) -> Option<super::mmio::VirtioDeviceState> {
        Some(super::mmio::VirtioDeviceState::Fs(self.save_state()))
    }

    fn restore_device_state(
        &mut self,
        state: &super::mmio::VirtioDeviceState,
        mem: &GuestMemoryMmap,
    ) -> Result<(), String> {
        let super::mmio::VirtioDeviceState::Fs(state) = state else {
            return Err("a virtio-fs device, but the snapshot has another device's state".into());
        };
        state.check(self, mem)?;
        self.acked_features = state.driver_features;
        if let Some(backend) = &state.backend_state {
            self.load_backend_state(backend)?;
        }
        self.restored = (!state.queues.is_empty()).then(|| state.clone());
        Ok(())
    }
}
