//! The worker-thread engine: one thread, `zvm_blk_io`, takes jobs in order from a channel,
//! carries them out on the backend (preadv/pwritev/fsync between guest memory and the
//! file) and hands completions back over another, writing an eventfd the VMM loop polls.
//! In order means a FLUSH completes after every write submitted before it.
//!
//! The thread installs its own seccomp filter ([`crate::seccomp::ThreadKind::BlockIo`])
//! before it serves anything. It ends when the device (the job sender) is dropped.

use super::backend::BlockBackend;
use super::engine::{serve, Completion, EngineError, Job};
use crate::seccomp::{self, ThreadKind};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Name of the worker thread.
pub const THREAD_NAME: &str = "zvm_blk_io";

/// The VMM thread's side of a worker.
pub struct Worker {
    jobs: Sender<Job>,
    done: Receiver<Completion>,
    evt: Arc<EventFd>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Worker(eventfd {})", self.evt.as_raw_fd())
    }
}

impl Worker {
    /// Starts the thread serving `backend`, filtered when `seccomp`.
    pub fn spawn(backend: Box<dyn BlockBackend>, seccomp: bool) -> Result<Worker, EngineError> {
        let evt = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(EngineError::EventFd)?);
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let thread_evt = evt.clone();
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || run(backend, seccomp, job_rx, done_tx, thread_evt))
            .map_err(EngineError::Spawn)?;
        Ok(Worker { jobs, done, evt })
    }

    /// The completion eventfd.
    pub fn event_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }

    /// Queues `job`; fails (giving it back) if the thread has ended.
    pub fn submit(&mut self, job: Job) -> Result<(), (Job, io::Error)> {
        self.jobs.send(job).map_err(|e| {
            (
                e.0,
                io::Error::new(io::ErrorKind::BrokenPipe, "the block I/O thread has ended"),
            )
        })
    }

    /// Moves finished jobs to `out`.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        let _ = self.evt.read();
        out.extend(self.done.try_iter());
    }

    /// Waits up to `timeout` for a job to finish, then reaps.
    pub fn wait(&mut self, out: &mut Vec<Completion>, timeout: Duration) {
        match self.done.recv_timeout(timeout) {
            Ok(c) => out.push(c),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        self.reap(out);
    }
}

fn run(
    mut backend: Box<dyn BlockBackend>,
    seccomp: bool,
    jobs: Receiver<Job>,
    done: Sender<Completion>,
    evt: Arc<EventFd>,
) {
    if let Err(e) = seccomp::install(ThreadKind::BlockIo, seccomp) {
        tracing::error!("{e}; the disk's requests fail");
        for job in jobs {
            let result = Err(io::Error::other(e.to_string()));
            if done
                .send(Completion {
                    token: job.token,
                    result,
                })
                .is_err()
            {
                return;
            }
            let _ = evt.write(1);
        }
        return;
    }
    for job in jobs {
        let result = serve(backend.as_mut(), job.op, job.offset, &job.bufs);
        // The guest memory stays mapped until the job is answered.
        let token = job.token;
        drop(job);
        if done.send(Completion { token, result }).is_err() {
            return;
        }
        if let Err(e) = evt.write(1) {
            tracing::warn!("virtio-blk: cannot signal a completion: {e}");
        }
    }
}
