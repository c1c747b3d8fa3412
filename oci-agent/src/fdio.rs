//! Small wrappers over descriptor system calls: pipes, ptys, reads and writes.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use crate::sys::check;

/// A close-on-exec pipe: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }.into())?;
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Puts a descriptor in non-blocking mode.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) }.into()).map(drop)
}

/// One read(2), retried on EINTR.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reading into a live buffer of the given length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One write(2), retried on EINTR.
pub fn write(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: writing from a live buffer of the given length.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes everything (blocking descriptors).
pub fn write_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = write(fd, data)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

/// A new pty: `(master, slave, slave path)`, both close-on-exec, the slave without becoming
/// our controlling terminal.
pub fn openpty() -> io::Result<(OwnedFd, OwnedFd, PathBuf)> {
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r/open on descriptors and buffers we own.
    unsafe {
        let m = check(libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC).into())?
            as RawFd;
        let master = OwnedFd::from_raw_fd(m);
        check(libc::grantpt(m).into())?;
        check(libc::unlockpt(m).into())?;
        let mut name = [0 as libc::c_char; 64];
        let rc = libc::ptsname_r(m, name.as_mut_ptr(), name.len());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let path = CStr::from_ptr(name.as_ptr());
        let s = check(
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
            .into(),
        )? as RawFd;
        let path = PathBuf::from(path.to_string_lossy().into_owned());
        Ok((master, OwnedFd::from_raw_fd(s), path))
    }
}

/// Sets a pty's window size.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }.into()).map(drop)
}
