//! Small Unix helpers: sockets at any path length, pipes, blocked signals read from a signalfd.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use vmm::devices::virtio::vsock::uds::UdsPath;

/// Connects to the Unix socket at `path` (any length: a long one is reached through its
/// directory, as vmm's vsock device binds it).
pub(crate) fn connect(path: &Path) -> io::Result<UnixStream> {
    UnixStream::connect(UdsPath::new(path)?.address(""))
}

/// Binds a listener at `path` (any length), replacing a stale socket there.
pub(crate) fn bind(path: &Path) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(UdsPath::new(path)?.address(""))
}

/// A pipe whose ends are close-on-exec: (read, write).
pub(crate) fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two-element array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Sets or clears close-on-exec on `fd`.
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number; errors are checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Signals the sandbox forwards to the container (SIGWINCH resizes its terminal instead):
/// those a jail's supervisor passes on to the sandbox.
pub(crate) const FORWARDED_SIGNALS: &[i32] = &jail::FORWARDED_SIGNALS;

/// Blocks `signals` in the calling thread (and the threads it starts later) and returns a
/// signalfd that reads them.
pub(crate) fn signalfd(signals: &[i32]) -> io::Result<OwnedFd> {
    // SAFETY: a zeroed sigset_t is a valid argument for sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t; the calls only write to it.
    unsafe {
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
    }
    // SAFETY: set is initialised; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: creating a new signalfd for an initialised mask.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads the next signal number from a signalfd (blocking).
pub(crate) fn read_signal(fd: &OwnedFd) -> io::Result<i32> {
    // SAFETY: signalfd_siginfo is plain data; zeroed is valid.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    loop {
        // SAFETY: reading at most `size` bytes into `info`.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n == size as isize {
            return Ok(info.ssi_signo as i32);
        }
        let err = io::Error::last_os_error();
        if n < 0 && err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return Err(if n < 0 {
            err
        } else {
            io::Error::new(io::ErrorKind::UnexpectedEof, "short signalfd read")
        });
    }
}

/// Name of a signal for messages ("SIGTERM"), or its number.
pub(crate) fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGWINCH => "SIGWINCH",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn long_socket_paths_go_through_proc_fd() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("sandbox.sock");
        assert!(path.as_os_str().len() > vmm::devices::virtio::vsock::uds::SUN_PATH_MAX);
        let listener = bind(&path).unwrap();
        assert!(path.exists(), "bound at the real path");
        let mut client = connect(&path).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }

    #[test]
    fn pipe_ends_are_cloexec_until_cleared() {
        let (r, mut w) = pipe().unwrap();
        // SAFETY: F_GETFD on our own descriptor.
        let flags = unsafe { libc::fcntl(r.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        set_cloexec(r.as_raw_fd(), false).unwrap();
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::fcntl(r.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC,
            0
        );
        w.write_all(b"x").unwrap();
        drop(w);
        let mut s = String::new();
        (&r).read_to_string(&mut s).unwrap();
        assert_eq!(s, "x");
    }
}
