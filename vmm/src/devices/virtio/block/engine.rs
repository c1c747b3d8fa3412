//! How a virtio-blk device carries out its I/O: the I/O engines.
//!
//! - **Sync**: on the VMM thread, as the request is taken (preadv/pwritev/fsync straight
//!   between guest memory and the file). A slow disk stalls every other device.
//! - **Async**: off the VMM thread. io_uring where the host has it (probed when the device
//!   is created: the ring, the READV/WRITEV/FSYNC opcodes, an eventfd for completions);
//!   otherwise (io_uring disabled or missing, or a backend without a file descriptor) one
//!   worker thread, `zvm_blk_io`, under its own seccomp filter. Either way the VMM thread
//!   submits, and learns of completions through an eventfd its loop polls; it then writes
//!   the status bytes, fills the used ring and interrupts the guest itself.
//!
//! FLUSH keeps its meaning on both: the worker serves requests in order, and io_uring's
//! FSYNC goes in with IOSQE_IO_DRAIN, so it starts only after every request submitted
//! before it (in particular every write the guest saw acknowledged) has completed.

use super::backend::{BlockBackend, GuestIoVec};
use super::request::{IoOp, IoRequest};
use super::uring::Uring;
use super::worker::Worker;
use crate::memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

/// Which I/O engine a drive uses (the API's `io_engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockIoEngine {
    /// Requests are served on the VMM thread as they are taken.
    #[default]
    Sync,
    /// Requests are served off the VMM thread: io_uring, or a worker thread where the
    /// host has no io_uring.
    Async,
}

impl BlockIoEngine {
    /// Whether this is the default ([`BlockIoEngine::Sync`]), which configurations leave out.
    pub fn is_sync(&self) -> bool {
        *self == BlockIoEngine::Sync
    }
}

impl std::str::FromStr for BlockIoEngine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sync" | "Sync" => Ok(BlockIoEngine::Sync),
            "async" | "Async" => Ok(BlockIoEngine::Async),
            other => Err(format!(
                "unknown I/O engine '{other}' (expected sync or async)"
            )),
        }
    }
}

/// Errors setting up an I/O engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The completion eventfd could not be made.
    #[error("cannot create the block I/O completion eventfd: {0}")]
    EventFd(io::Error),
    /// The worker thread could not be started.
    #[error("cannot start the block I/O thread: {0}")]
    Spawn(io::Error),
    /// io_uring cannot serve this disk here.
    #[error("io_uring is not available: {0}")]
    Uring(String),
}

/// One piece of I/O handed to an asynchronous engine.
#[derive(Debug)]
pub struct Job {
    /// Identifies the request in the device's table.
    pub token: u64,
    /// What to do.
    pub op: IoOp,
    /// Byte offset on the disk.
    pub offset: u64,
    /// The data, in guest memory.
    pub bufs: Vec<GuestIoVec>,
    /// Keeps the guest memory `bufs` points into mapped until the job is done.
    pub mem: Arc<GuestMemoryMmap>,
}

impl Job {
    /// The job for `req`.
    pub fn new(token: u64, req: IoRequest, mem: Arc<GuestMemoryMmap>) -> Self {
        Job {
            token,
            op: req.pending.op,
            offset: req.offset,
            bufs: req.bufs,
            mem,
        }
    }
}

/// A finished job.
#[derive(Debug)]
pub struct Completion {
    /// The job's token.
    pub token: u64,
    /// How it ended.
    pub result: io::Result<()>,
}

/// Carries out `op` on `backend` now, on the calling thread.
pub fn serve(
    backend: &mut dyn BlockBackend,
    op: IoOp,
    offset: u64,
    bufs: &[GuestIoVec],
) -> io::Result<()> {
    match op {
        IoOp::Read => backend.read_vectored_at(offset, bufs),
        IoOp::Write => backend.write_vectored_at(offset, bufs),
        IoOp::Flush => backend.flush(),
    }
}

/// A device's engine.
pub enum Engine {
    /// On the VMM thread.
    Sync(Box<dyn BlockBackend>),
    /// On the `zvm_blk_io` thread.
    Worker(Worker),
    /// On io_uring (the backend keeps the file open).
    Uring(Box<Uring>, Box<dyn BlockBackend>),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Engine {
    /// The engine for `kind` over `backend`: io_uring for Async when the host has it and
    /// the backend has a file descriptor, else the worker thread (whose filter `seccomp`
    /// turns on). The reason io_uring was passed over is logged.
    pub fn new(
        kind: BlockIoEngine,
        backend: Box<dyn BlockBackend>,
        seccomp: bool,
        drive: &str,
    ) -> Result<Engine, EngineError> {
        if kind == BlockIoEngine::Sync {
            return Ok(Engine::Sync(backend));
        }
        let uring = match backend.raw_fd() {
            Some(fd) => Uring::new(fd),
            None => Err(EngineError::Uring(
                "the disk's backend has no file descriptor".into(),
            )),
        };
        match uring {
            Ok(ring) => {
                let ring = Box::new(ring);
                tracing::info!("drive {drive}: io_engine Async on io_uring");
                Ok(Engine::Uring(ring, backend))
            }
            Err(e) => {
                tracing::info!("drive {drive}: io_engine Async on a worker thread ({e})");
                Ok(Engine::Worker(Worker::spawn(backend, seccomp)?))
            }
        }
    }

    /// What serves the I/O: `sync`, `io_uring` or `worker thread`.
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Sync(_) => "sync",
            Engine::Worker(_) => "worker thread",
            Engine::Uring(..) => "io_uring",
        }
    }

    /// The eventfd that becomes readable when jobs complete (asynchronous engines).
    pub fn event_fd(&self) -> Option<RawFd> {
        match self {
            Engine::Sync(_) => None,
            Engine::Worker(w) => Some(w.event_fd()),
            Engine::Uring(u, _) => Some(u.event_fd()),
        }
    }

    /// Hands `job` over; on failure the job is given back with the error (it was not
    /// started). Not for the Sync engine.
    pub fn submit(&mut self, job: Job) -> Result<(), (Job, io::Error)> {
        match self {
            Engine::Sync(_) => Err((job, io::Error::other("the sync engine takes no jobs"))),
            Engine::Worker(w) => w.submit(job),
            Engine::Uring(u, _) => u.submit(job),
        }
    }

    /// Starts what was submitted since the last call (one io_uring_enter per batch).
    pub fn kick(&mut self) {
        if let Engine::Uring(u, _) = self {
            u.kick();
        }
    }

    /// Clears the completion eventfd and moves finished jobs to `out`, without waiting.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        match self {
            Engine::Sync(_) => {}
            Engine::Worker(w) => w.reap(out),
            Engine::Uring(u, _) => u.reap(out),
        }
    }

    /// Waits up to `timeout` for at least one job to finish, then reaps as [`Self::reap`].
    pub fn wait(&mut self, out: &mut Vec<Completion>, timeout: Duration) {
        match self {
            Engine::Sync(_) => {}
            Engine::Worker(w) => w.wait(out, timeout),
            Engine::Uring(u, _) => u.wait(out, timeout),
        }
    }
}
