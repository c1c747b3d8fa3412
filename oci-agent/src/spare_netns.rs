//! A network namespace made ahead of the container: creating one is a large part of a
//! create's kernel work (every network subsystem sets itself up), and an agent made once and
//! restored for every container (a VM template) can make it before the VM is saved. The
//! container then joins the namespace instead of having `clone` make a new one: it is as
//! new, never used by anything. Its loopback is brought up as it is made (as runc and the
//! agent do in a new one), which is most of the remaining work of entering it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use crate::sys::{check, LinuxSys, Sys};

fn open_own_netns() -> io::Result<OwnedFd> {
    // SAFETY: open(2) of a NUL-terminated path; the descriptor is ours.
    let fd = check(
        unsafe {
            libc::open(
                c"/proc/self/ns/net".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        }
        .into(),
    )?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A fresh network namespace with its loopback up, held open; the calling process stays in
/// its own. Call it while the process is single-threaded.
pub fn make() -> io::Result<OwnedFd> {
    let start = Instant::now();
    let own = open_own_netns()?;
    // SAFETY: unshare(2) and setns(2) of the calling thread's network namespace.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) }.into())?;
    let spare = open_own_netns().and_then(|fd| LinuxSys.loopback_up().map(|()| fd));
    // SAFETY: as above; back to the original namespace whatever happened.
    let back = check(unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) }.into());
    let spare = spare?;
    back?;
    tracing::info!("spare network namespace made in {:?}", start.elapsed());
    Ok(spare)
}

/// The path a forked child joins `spare` through (`/proc/self/fd/N`: the child inherits
/// the descriptor).
pub fn join_path(spare: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", spare.as_raw_fd()))
}
