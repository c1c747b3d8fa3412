//! The jailed half's state as data, for a jailed half that `exec`s another program
//! before its lock-down (zvm hands its VMs to the lean `zvm-vmm`): the jail's
//! configuration, its id and root, and the numbers of its two pipe descriptors, which
//! [`Jailed::into_handover`] leaves open across `exec` and [`Jailed::from_handover`]
//! takes back after checking that they are pipes.

use crate::{JailConfig, JailError, Jailed};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

/// A [`Jailed`] that crosses an `exec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailedHandover {
    /// The jail.
    pub config: JailConfig,
    /// Its uid and gid.
    pub id: u32,
    /// Its root's mount point.
    pub root: PathBuf,
    /// The supervisor's go pipe (read end), while not yet read.
    pub go_fd: Option<i32>,
    /// The supervisor's liveness pipe (read end).
    pub supervisor_fd: i32,
}

/// Clears close-on-exec on `fd`.
fn inherit(fd: &OwnedFd) -> Result<(), JailError> {
    // SAFETY: F_SETFD on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
        return Err(JailError::last_os("keep the jail's pipes across exec"));
    }
    Ok(())
}

/// Takes `fd` over after checking that it is an open pipe.
///
/// # Safety
/// No other owner of `fd` may exist in this process.
unsafe fn take_pipe(fd: i32) -> Result<OwnedFd, JailError> {
    // SAFETY: fstat into a zeroed struct; a closed or bad fd is an error, not UB.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if fd < 3 || unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(JailError::Unavailable(format!(
            "the jail's descriptor {fd} is not open"
        )));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(JailError::Unavailable(format!(
            "the jail's descriptor {fd} is not a pipe"
        )));
    }
    // SAFETY: open (checked) and, per the caller, owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD on the descriptor just taken.
    unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(owned)
}

impl Jailed {
    /// This jailed half as data, its pipes left open across `exec` (the descriptors are
    /// returned: keep them until the `exec`).
    pub fn into_handover(self) -> Result<(JailedHandover, Vec<OwnedFd>), JailError> {
        let mut fds = Vec::new();
        if let Some(go) = &self.go {
            inherit(go)?;
        }
        inherit(&self.supervisor)?;
        let handover = JailedHandover {
            config: self.config,
            id: self.id,
            root: self.root,
            go_fd: self.go.as_ref().map(AsRawFd::as_raw_fd),
            supervisor_fd: self.supervisor.as_raw_fd(),
        };
        fds.extend(self.go);
        fds.push(self.supervisor);
        Ok((handover, fds))
    }

    /// The jailed half again, in the program `exec`ed with `handover`'s descriptors.
    ///
    /// # Safety
    /// The descriptors `handover` names must be the ones [`Jailed::into_handover`] left
    /// open, owned by nothing else in this process.
    pub unsafe fn from_handover(handover: JailedHandover) -> Result<Jailed, JailError> {
        let go = match handover.go_fd {
            // SAFETY: per this function's contract.
            Some(fd) => Some(unsafe { take_pipe(fd) }?),
            None => None,
        };
        // SAFETY: per this function's contract.
        let supervisor = unsafe { take_pipe(handover.supervisor_fd) }?;
        Ok(Jailed {
            config: handover.config,
            id: handover.id,
            root: handover.root,
            go,
            supervisor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_open_pipes_are_taken_back() {
        // SAFETY: the test owns every descriptor it names.
        unsafe {
            assert!(take_pipe(987_654).is_err());
            assert!(take_pipe(1).is_err(), "stdio is never the jail's");
            let file = std::fs::File::open("/").expect("root");
            let err = take_pipe(file.as_raw_fd()).expect_err("a directory");
            assert!(err.to_string().contains("not a pipe"), "{err}");
            let mut fds = [0; 2];
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let read = take_pipe(fds[0]).expect("a pipe");
            let flags = libc::fcntl(read.as_raw_fd(), libc::F_GETFD);
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
            drop(OwnedFd::from_raw_fd(fds[1]));
        }
    }
}
