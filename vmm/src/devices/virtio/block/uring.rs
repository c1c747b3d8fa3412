//! The io_uring engine: READV/WRITEV straight between guest memory and the disk file,
//! FSYNC behind IOSQE_IO_DRAIN, completions signalled on an eventfd registered with the
//! ring.
//!
//! The ring is set up (io_uring_setup, the opcode probe, the eventfd registration) where
//! the device is created, before any seccomp filter; the VMM thread then only submits and
//! waits (io_uring_enter) and reads completions from the shared ring. Each in-flight job
//! keeps its iovecs (the kernel reads them at submission, and again if it retries) and its
//! pin on guest memory in a table until its completion is read; a short transfer is
//! resubmitted for the rest.

use super::backend::GuestIoVec;
use super::engine::{Completion, EngineError, Job};
use super::request::IoOp;
use io_uring::{opcode, squeue, types, IoUring, Probe};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Ring entries: the device never has more requests in flight than its queue size.
const ENTRIES: u32 = super::QUEUE_SIZE as u32;

/// A job the kernel has.
struct InFlight {
    job: Job,
    /// The iovecs still to transfer (advanced after a short transfer).
    vecs: Vec<GuestIoVec>,
    /// Where the rest goes on the disk.
    offset: u64,
}

/// An io_uring over one disk file.
pub struct Uring {
    ring: IoUring,
    fd: RawFd,
    evt: EventFd,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// Entries pushed since the last io_uring_enter.
    unsubmitted: usize,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Uring(fd {}, {} in flight)", self.fd, self.in_flight())
    }
}

impl Uring {
    /// A ring for the file `fd` (which must outlive the ring), if this host can give one
    /// that does what the device needs.
    pub fn new(fd: RawFd) -> Result<Uring, EngineError> {
        let fail = |what: &str, e: io::Error| EngineError::Uring(format!("{what}: {e}"));
        let ring = IoUring::new(ENTRIES).map_err(|e| fail("io_uring_setup", e))?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| fail("probing the opcodes", e))?;
        for (code, name) in [
            (opcode::Readv::CODE, "READV"),
            (opcode::Writev::CODE, "WRITEV"),
            (opcode::Fsync::CODE, "FSYNC"),
        ] {
            if !probe.is_supported(code) {
                return Err(EngineError::Uring(format!(
                    "the kernel's io_uring has no {name}"
                )));
            }
        }
        let evt = EventFd::new(EFD_NONBLOCK).map_err(EngineError::EventFd)?;
        ring.submitter()
            .register_eventfd(evt.as_raw_fd())
            .map_err(|e| fail("registering the eventfd", e))?;
        Ok(Uring {
            ring,
            fd,
            evt,
            slots: Vec::new(),
            free: Vec::new(),
            unsubmitted: 0,
        })
    }

    /// The completion eventfd.
    pub fn event_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Queues `job` on the ring (submitted by the next [`Self::kick`]).
    pub fn submit(&mut self, job: Job) -> Result<(), (Job, io::Error)> {
        if self.in_flight() >= ENTRIES as usize {
            return Err((job, io::Error::from_raw_os_error(libc::EBUSY)));
        }
        let vecs = job.bufs.clone();
        let offset = job.offset;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[slot] = Some(InFlight { job, vecs, offset });
        if let Err(e) = self.push(slot) {
            self.free.push(slot);
            let job = self.slots[slot].take().map(|f| f.job);
            return match job {
                Some(job) => Err((job, e)),
                None => Ok(()),
            };
        }
        Ok(())
    }

    /// Pushes the submission for slot `slot` (whose entry is set).
    fn push(&mut self, slot: usize) -> io::Result<()> {
        let Some(Some(f)) = self.slots.get(slot) else {
            return Err(io::Error::other("no such in-flight job"));
        };
        let fd = types::Fd(self.fd);
        let count = u32::try_from(f.vecs.len()).unwrap_or(u32::MAX);
        let entry = match f.job.op {
            IoOp::Read => opcode::Readv::new(fd, GuestIoVec::as_iovecs(&f.vecs).as_ptr(), count)
                .offset(f.offset)
                .build(),
            IoOp::Write => opcode::Writev::new(fd, GuestIoVec::as_iovecs(&f.vecs).as_ptr(), count)
                .offset(f.offset)
                .build(),
            // Starts only once everything submitted before it has completed.
            IoOp::Flush => opcode::Fsync::new(fd)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
        }
        .user_data(slot as u64);
        // SAFETY: the iovecs and the guest memory they point into live in the slot (the
        // job pins the memory) until the completion for this entry is read.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            // The submission queue is full: hand the kernel what it has, then retry.
            self.kick();
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
        }
        self.unsubmitted += 1;
        Ok(())
    }

    /// Submits what was pushed (one io_uring_enter).
    pub fn kick(&mut self) {
        if self.unsubmitted == 0 {
            return;
        }
        match self.ring.submit() {
            Ok(_) => self.unsubmitted = 0,
            Err(e) => tracing::warn!("virtio-blk: io_uring submit failed: {e}"),
        }
    }

    /// Clears the eventfd and moves finished jobs to `out`; resubmits short transfers.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        let _ = self.evt.read();
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (data, res) in done {
            let Ok(slot) = usize::try_from(data) else {
                continue;
            };
            let retry = match self.slots.get_mut(slot) {
                Some(Some(f)) => Self::after(f, res),
                _ => {
                    tracing::warn!("virtio-blk: io_uring completion for unknown job {data}");
                    continue;
                }
            };
            match retry {
                Some(result) => {
                    if let Some(f) = self.slots[slot].take() {
                        self.free.push(slot);
                        out.push(Completion {
                            token: f.job.token,
                            result,
                        });
                    }
                }
                None => {
                    if let Err(e) = self.push(slot) {
                        if let Some(f) = self.slots[slot].take() {
                            self.free.push(slot);
                            out.push(Completion {
                                token: f.job.token,
                                result: Err(e),
                            });
                        }
                    }
                }
            }
        }
        self.kick();
    }

    /// What a completion with result `res` means for `f`: its end (Some), or more to do
    /// (None: `f` now describes the rest).
    fn after(f: &mut InFlight, res: i32) -> Option<io::Result<()>> {
        if res < 0 {
            return match -res {
                libc::EAGAIN | libc::EINTR => None,
                errno => Some(Err(io::Error::from_raw_os_error(errno))),
            };
        }
        if f.job.op == IoOp::Flush {
            return Some(Ok(()));
        }
        let mut done = res as usize;
        if done == 0 {
            let left: usize = f.vecs.iter().map(GuestIoVec::len).sum();
            return Some(if left == 0 {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the disk image ended before the request did",
                ))
            });
        }
        f.offset += done as u64;
        let mut first = 0;
        while first < f.vecs.len() && done > 0 {
            let v = &mut f.vecs[first];
            if done >= v.len() {
                done -= v.len();
                first += 1;
            } else {
                v.advance(done);
                done = 0;
            }
        }
        f.vecs.drain(..first);
        if f.vecs.iter().all(GuestIoVec::is_empty) {
            Some(Ok(()))
        } else {
            None
        }
    }

    /// Waits up to `timeout` for a completion, then reaps.
    pub fn wait(&mut self, out: &mut Vec<Completion>, timeout: Duration) {
        if self.in_flight() > 0 {
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => self.unsubmitted = 0,
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => tracing::warn!("virtio-blk: io_uring wait failed: {e}"),
            }
        }
        self.reap(out);
    }
}

impl Drop for Uring {
    /// Waits (a while) for the kernel to finish with guest memory; if it does not, the ring
    /// and the memory pins are leaked rather than freed under the kernel's feet.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        while self.in_flight() > 0 && Instant::now() < deadline {
            self.wait(&mut out, Duration::from_millis(100));
            out.clear();
        }
        if self.in_flight() > 0 {
            tracing::error!(
                "virtio-blk: {} io_uring requests still in flight; leaking the ring",
                self.in_flight()
            );
            std::mem::forget(std::mem::take(&mut self.slots));
            // SAFETY: keeps the ring alive by leaking a duplicate of its descriptor, so
            // dropping ours does not end it while the kernel still writes guest memory.
            unsafe { libc::fcntl(self.ring.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        }
    }
}
