//! virtio-blk: a disk image (or block device) on the host as `/dev/vdX` in the guest.
//!
//! One request queue. The VMM thread takes requests off it, checks them
//! ([`request`]) and hands their I/O to the drive's engine ([`engine`]): served at once
//! on the VMM thread (Sync), or off it (Async: io_uring, or a worker thread), in which
//! case completions come back through an eventfd the VMM loop polls and the VMM thread
//! answers them. Data moves straight between guest memory and the disk file either way.
//! Read-only disks advertise VIRTIO_BLK_F_RO and the host refuses writes whatever the
//! guest negotiated. A snapshot first waits for the requests in flight
//! ([`VirtioDevice::quiesce`]), so none is lost.

pub mod backend;
pub mod engine;
mod inflight;
pub mod request;
mod uring;
pub mod worker;

use super::{
    notify, read_config_bytes, ActiveQueues, Interrupt, VirtioDevice, VirtioError, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;
use crate::metrics::BlockMetrics;
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};
#[cfg(test)]
pub(crate) use backend::MemBackend;
pub use backend::{BackendError, BlockBackend, FileBackend, GuestIoVec};
pub use engine::BlockIoEngine;
use engine::{Completion, Engine, EngineError, Job};
use inflight::{InFlight, InFlightTable};
use request::{DiskInfo, Parsed, MAX_DATA_BYTES, MAX_DESCRIPTORS, SECTOR_SIZE};
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_queue::{Queue, QueueOwnedT, QueueT};

/// VIRTIO_BLK_F_SIZE_MAX: config `size_max` bounds each data segment.
pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
/// VIRTIO_BLK_F_SEG_MAX: config `seg_max` bounds the data segments per request.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// VIRTIO_BLK_F_RO: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// VIRTIO_BLK_F_BLK_SIZE: config `blk_size` is the logical block size.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// VIRTIO_BLK_F_FLUSH: the device handles VIRTIO_BLK_T_FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest data segment the driver may use (`size_max`): one page.
pub const SIZE_MAX: u32 = 4096;
/// Data segments per request (`seg_max`): a request with its header and status
/// descriptors fits the queue, and `SEG_MAX * SIZE_MAX` fits [`MAX_DATA_BYTES`].
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Logical block size reported to the guest.
pub const BLK_SIZE: u32 = SECTOR_SIZE as u32;

const _: () = assert!(SEG_MAX as u64 * SIZE_MAX as u64 <= MAX_DATA_BYTES);
const _: () = assert!(SEG_MAX as usize + 2 <= MAX_DESCRIPTORS);

/// Length of the configuration space zvm fills: capacity, size_max, seg_max, geometry, blk_size.
const CONFIG_BYTES: usize = 24;

/// Errors setting up a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened or sized.
    #[error(transparent)]
    Open(#[from] BackendError),
    /// The rate limiter could not be made.
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
    /// The I/O engine could not be set up.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Token of the engine's completion eventfd among the device's host fds.
const HOST_COMPLETIONS: u32 = 0;
/// Token of the rate limiter's timer.
const HOST_TIMER: u32 = 1;

/// How long a snapshot waits for a disk's requests in flight.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(30);

/// A virtio-blk device.
#[derive(Debug)]
pub struct Block {
    disk: DiskInfo,
    engine: Engine,
    features: u64,
    active: Option<ActiveQueues>,
    rate_limiter: Option<RateLimiter>,
    /// Guest memory, pinned for the jobs in flight (set at activation).
    mem: Option<Arc<GuestMemoryMmap>>,
    in_flight: InFlightTable,
    /// Bumped on each reset: completions of older requests are dropped.
    epoch: u64,
    /// The queue was left with requests because the in-flight table was full: take them
    /// when a completion frees a slot.
    starved: bool,
    /// Completions reaped, reused.
    done: Vec<Completion>,
}

impl Block {
    /// A device serving `backend` on the VMM thread (the Sync engine; see
    /// [`Self::with_engine`]); `id` (the drive id) is what GET_ID returns, cut to 20 bytes.
    pub fn new(backend: Box<dyn BlockBackend>, read_only: bool, id: &str) -> Self {
        let disk = DiskInfo::new(backend.len(), read_only, id);
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_SIZE_MAX
            | VIRTIO_BLK_F_BLK_SIZE;
        if read_only {
            features |= VIRTIO_BLK_F_RO;
        }
        Block {
            disk,
            engine: Engine::Sync(backend),
            features,
            active: None,
            rate_limiter: None,
            mem: None,
            in_flight: InFlightTable::new(usize::from(QUEUE_SIZE)),
            epoch: 0,
            starved: false,
            done: Vec::new(),
        }
    }

    /// A device serving the image at `path`.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let backend = FileBackend::open(path, read_only)?;
        Ok(Block::new(Box::new(backend), read_only, id))
    }

    /// Serves the I/O with `kind`'s engine: for Async, io_uring where the host has it, or
    /// a `zvm_blk_io` thread (seccomp-filtered when `seccomp`). Sets up everything here,
    /// on the creating thread: nothing is left for the vCPU thread that activates it.
    pub fn with_engine(mut self, kind: BlockIoEngine, seccomp: bool) -> Result<Self, BlockError> {
        if kind == BlockIoEngine::Sync {
            return Ok(self);
        }
        let Engine::Sync(backend) =
            std::mem::replace(&mut self.engine, Engine::Sync(Box::new(backend::NoBackend)))
        else {
            return Err(BlockError::Engine(EngineError::Uring(
                "the engine was already chosen".into(),
            )));
        };
        let id = String::from_utf8_lossy(&self.disk.id)
            .trim_end_matches('\0')
            .to_string();
        self.engine = Engine::new(kind, backend, seccomp, &id)?;
        Ok(self)
    }

    /// Limits the device's bandwidth and request rate: requests wait on the queue while
    /// the limiter is short of tokens, and are served when its timer fires.
    pub fn with_rate_limiter(mut self, config: &RateLimiterConfig) -> Result<Self, BlockError> {
        self.rate_limiter = Some(RateLimiter::new(config)?);
        Ok(self)
    }

    /// What serves the device's I/O: `sync`, `io_uring` or `worker thread`.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.disk.metrics.clone()
    }

    /// The disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    /// Requests handed to the engine and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The configuration space, built on each read: the capacity is always the backing
    /// file's (the one attached now, whatever a snapshot saw), never a stored copy.
    fn config(&self) -> [u8; CONFIG_BYTES] {
        let mut config = [0u8; CONFIG_BYTES];
        config[0..8].copy_from_slice(&self.capacity().to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&BLK_SIZE.to_le_bytes());
        config
    }

    /// Whether the device refuses writes.
    pub fn read_only(&self) -> bool {
        self.disk.read_only
    }

    /// Takes requests off the queue while the rate limiter lets them through and the
    /// in-flight table has room: answers refused ones and (Sync) serves the rest at once,
    /// or (Async) submits them.
    fn process(&mut self) {
        let Some(active) = &mut self.active else {
            return;
        };
        let Some(queue) = active.queues.first_mut() else {
            return;
        };
        if !queue.ready() {
            return;
        }
        let mut used = 0;
        let mut waiting = false;
        for _ in 0..usize::from(QUEUE_SIZE) * 2 {
            if self.in_flight.is_full() {
                self.starved = true;
                waiting = true;
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(&active.mem) else {
                break;
            };
            if let Some(limiter) = &mut self.rate_limiter {
                // The data bytes: everything but the 16-byte header and the status byte.
                let bytes = chain
                    .clone()
                    .map(|d| u64::from(d.len()))
                    .sum::<u64>()
                    .saturating_sub(17);
                if !limiter.consume_request(bytes) {
                    queue.go_to_previous_position();
                    self.disk.metrics.rate_limiter_throttled.inc();
                    waiting = true;
                    break;
                }
            }
            let head = chain.head_index();
            let len = match self.disk.parse(&active.mem, chain) {
                Parsed::NoStatus => 0,
                Parsed::Answered(len) => len,
                Parsed::Io(req) => match &mut self.engine {
                    Engine::Sync(backend) => {
                        let result =
                            engine::serve(backend.as_mut(), req.pending.op, req.offset, &req.bufs);
                        self.disk.complete(&active.mem, &req.pending, result)
                    }
                    engine => {
                        let f = InFlight {
                            head,
                            pending: req.pending,
                            epoch: self.epoch,
                        };
                        // Not full: checked above.
                        let Some(token) = self.in_flight.insert(f) else {
                            continue;
                        };
                        let mem = match &self.mem {
                            Some(mem) => mem.clone(),
                            None => Arc::new(active.mem.clone()),
                        };
                        match engine.submit(Job::new(token, req, mem)) {
                            Ok(()) => continue,
                            Err((_, e)) => {
                                self.in_flight.remove(token);
                                self.disk.complete(&active.mem, &f.pending, Err(e))
                            }
                        }
                    }
                },
            };
            match queue.add_used(&active.mem, head, len) {
                Ok(()) => used += 1,
                Err(e) => tracing::warn!("virtio-blk: cannot return descriptor {head}: {e}"),
            }
        }
        self.engine.kick();
        if used > 0 && queue.needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        // A throttled queue waits for the limiter's timer, a starved one for a completion.
        if !waiting && notify::rearm(queue, &active.mem) {
            active.requeue.mark(0);
        }
    }

    /// Answers the requests whose I/O finished (waiting up to `wait` for one when given):
    /// status byte, used ring, one interrupt. Completions of requests from before a reset
    /// are dropped.
    fn complete(&mut self, wait: Option<Duration>) {
        let mut done = std::mem::take(&mut self.done);
        match wait {
            Some(timeout) => self.engine.wait(&mut done, timeout),
            None => self.engine.reap(&mut done),
        }
        let mut used = 0;
        for c in done.drain(..) {
            let Some(f) = self.in_flight.remove(c.token) else {
                tracing::warn!("virtio-blk: completion for unknown request {}", c.token);
                continue;
            };
            let Some(active) = self.active.as_mut().filter(|_| f.epoch == self.epoch) else {
                tracing::debug!("virtio-blk: dropping a completion from before a reset");
                continue;
            };
            let len = self.disk.complete(&active.mem, &f.pending, c.result);
            let Some(queue) = active.queues.first_mut() else {
                continue;
            };
            match queue.add_used(&active.mem, f.head, len) {
                Ok(()) => used += 1,
                Err(e) => tracing::warn!("virtio-blk: cannot return descriptor {}: {e}", f.head),
            }
        }
        self.done = done;
        if let Some(active) = &mut self.active {
            if let Some(queue) = active.queues.first_mut() {
                if used > 0 && queue.needs_notification(&active.mem).unwrap_or(true) {
                    active.interrupt.signal_used_queue();
                }
            }
        }
        if self.starved && !self.in_flight.is_full() {
            self.starved = false;
            self.process();
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config_len(&self) -> usize {
        CONFIG_BYTES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), VirtioError> {
        let active = ActiveQueues::new(mem, queues, interrupt, 1)?;
        if self.engine.event_fd().is_some() {
            self.mem = Some(Arc::new(active.mem.clone()));
        }
        self.active = Some(active);
        tracing::debug!(
            "virtio-blk activated: {} sectors, read_only={}, engine {}",
            self.capacity(),
            self.disk.read_only,
            self.engine.name()
        );
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        if index == 0 {
            self.process();
        } else {
            tracing::warn!("virtio-blk: notification for queue {index}, which does not exist");
        }
    }

    fn host_fds(&self, fds: &mut Vec<(RawFd, u32)>) {
        fds.extend(self.engine.event_fd().map(|fd| (fd, HOST_COMPLETIONS)));
        let timer = self.rate_limiter.as_ref().map(RateLimiter::timer_fd);
        fds.extend(timer.map(|fd| (fd, HOST_TIMER)));
    }

    fn process_host_fd(&mut self, token: u32) {
        match token {
            HOST_COMPLETIONS => {
                if let Some(fd) = self.engine.event_fd() {
                    let mut counter = [0u8; 8];
                    // SAFETY: reads 8 bytes into our buffer from the engine's eventfd.
                    let _ = unsafe { libc::read(fd, counter.as_mut_ptr().cast(), 8) };
                }
                self.complete(None);
            }
            _ => {
                if self
                    .rate_limiter
                    .as_mut()
                    .is_some_and(RateLimiter::on_timer)
                {
                    self.process();
                }
            }
        }
    }

    fn process_host_event(&mut self) {
        if self.engine.event_fd().is_some() {
            self.complete(None);
        }
        if self
            .rate_limiter
            .as_mut()
            .is_some_and(RateLimiter::on_timer)
        {
            self.process();
        }
    }

    fn quiesce(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        while !self.in_flight.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "{} disk requests still in flight after {QUIESCE_TIMEOUT:?}",
                    self.in_flight.len()
                ));
            }
            self.complete(Some((deadline - now).min(Duration::from_millis(100))));
        }
        Ok(())
    }

    fn active_queues(&self) -> Option<&ActiveQueues> {
        self.active.as_ref()
    }

    fn reset(&mut self) {
        // Runs on a vCPU thread: no system calls beyond the common ones. Requests in
        // flight finish on their own; their completions are dropped.
        self.active = None;
        self.epoch = self.epoch.wrapping_add(1);
        self.starved = false;
    }
}

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod tests;
