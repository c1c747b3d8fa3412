//! vhost-user device-state transfer (VHOST_USER_PROTOCOL_F_DEVICE_STATE, the vhost-user
//! spec's "Migrating back-end state"): the backend's own state (virtiofsd's FUSE session:
//! the inodes the guest looked up, its open files) read out of a stopped backend into a
//! snapshot, and written into a new backend at restore.
//!
//! Save: the rings are stopped (GET_VRING_BASE) first; SET_DEVICE_STATE_FD (save,
//! stopped) hands the backend a pipe's write end, zvm reads the state to end of file,
//! then CHECK_DEVICE_STATE says whether the backend managed. Load: SET_DEVICE_STATE_FD
//! (load, stopped) hands over the read end, zvm writes the state and closes its end,
//! CHECK_DEVICE_STATE says whether the backend took it; the rings start after that.
//!
//! A backend is not trusted: at most [`MAX_BACKEND_STATE`] bytes are read, every pipe
//! transfer ends within [`TRANSFER_TIMEOUT`], and each vhost-user answer within the
//! socket's timeout ([`super::BACKEND_TIMEOUT`]).

use super::FsError;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{VhostTransferStateDirection, VhostTransferStatePhase};
use vhost::vhost_user::{Frontend, VhostUserFrontend};

/// The most bytes of backend state a snapshot takes per share (virtiofsd's state grows
/// with the files the guest holds: roughly a path and a file handle each).
pub const MAX_BACKEND_STATE: usize = 16 << 20;
/// How long the backend gets to write (or read) its state through the pipe.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);

fn proto(what: &'static str) -> impl Fn(vhost::Error) -> FsError {
    move |source| FsError::Protocol { what, source }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> FsError {
    move |source| FsError::Io { what, source }
}

/// A pipe whose `ours` end is non-blocking and close-on-exec; the other end (what the
/// backend gets) stays blocking, as a backend writing with `write_all` expects.
fn pipe(ours_is_read: bool) -> Result<(File, OwnedFd), FsError> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io("create the state pipe")(std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and belong to nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (ours, theirs) = if ours_is_read {
        (read, write)
    } else {
        (write, read)
    };
    Ok((nonblocking(File::from(ours))?, theirs))
}

/// Waits until `fd` is ready for `events` or the transfer's `timeout`, which ends at
/// `deadline`, runs out.
fn wait_ready(
    fd: &File,
    events: libc::c_short,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), FsError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(FsError::StateTransfer(format!(
                "the backend did not finish its state transfer within {:.1} s",
                timeout.as_secs_f64()
            )));
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one pollfd, which outlives the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return Ok(());
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(io("poll the state pipe")(e));
            }
        }
    }
}

/// Reads a stopped backend's state (SET_DEVICE_STATE_FD save, the pipe to end of file,
/// CHECK_DEVICE_STATE).
pub(super) fn save(frontend: &Frontend, timeout: Duration) -> Result<Vec<u8>, FsError> {
    let (ours, theirs) = pipe(true)?;
    let replaced = frontend
        .set_device_state_fd(
            VhostTransferStateDirection::SAVE,
            VhostTransferStatePhase::STOPPED,
            theirs,
        )
        .map_err(proto("SET_DEVICE_STATE_FD (save)"))?;
    // A backend may answer with a pipe of its own to read from instead.
    let mut pipe = match replaced {
        Some(file) => nonblocking(file)?,
        None => ours,
    };
    let deadline = Instant::now() + timeout;
    let mut state = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if state.len() + n > MAX_BACKEND_STATE {
                    return Err(FsError::StateTransfer(format!(
                        "the backend's state is larger than the {} MiB a snapshot takes \
                         (the guest holds too many files on the share)",
                        MAX_BACKEND_STATE >> 20
                    )));
                }
                state.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait_ready(&pipe, libc::POLLIN, deadline, timeout)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("read the backend's state")(e)),
        }
    }
    drop(pipe);
    frontend
        .check_device_state()
        .map_err(proto("CHECK_DEVICE_STATE (save)"))?;
    if state.is_empty() {
        return Err(FsError::StateTransfer(
            "the backend sent an empty state".into(),
        ));
    }
    Ok(state)
}

/// Writes `state` into a backend whose rings have not started (SET_DEVICE_STATE_FD load,
/// the state through the pipe, CHECK_DEVICE_STATE).
pub(super) fn load(frontend: &Frontend, state: &[u8], timeout: Duration) -> Result<(), FsError> {
    let (ours, theirs) = pipe(false)?;
    let replaced = frontend
        .set_device_state_fd(
            VhostTransferStateDirection::LOAD,
            VhostTransferStatePhase::STOPPED,
            theirs,
        )
        .map_err(proto("SET_DEVICE_STATE_FD (load)"))?;
    let mut pipe = match replaced {
        Some(file) => nonblocking(file)?,
        None => ours,
    };
    let deadline = Instant::now() + timeout;
    let mut rest = state;
    while !rest.is_empty() {
        match pipe.write(rest) {
            Ok(0) => {
                return Err(FsError::StateTransfer(
                    "the backend stopped reading its state".into(),
                ))
            }
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait_ready(&pipe, libc::POLLOUT, deadline, timeout)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("write the backend's state")(e)),
        }
    }
    pipe.flush().map_err(io("write the backend's state"))?;
    // The end of file tells the backend the state is complete.
    drop(pipe);
    frontend
        .check_device_state()
        .map_err(proto("CHECK_DEVICE_STATE (load)"))
}

fn nonblocking(file: File) -> Result<File, FsError> {
    // SAFETY: fcntl on a descriptor we own.
    let ok = unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if ok {
        Ok(file)
    } else {
        Err(io("make the backend's state pipe non-blocking")(
            std::io::Error::last_os_error(),
        ))
    }
}
