//! `--console-socket`: a pty whose master is sent, as runc does, over a Unix socket with
//! `SCM_RIGHTS` (the payload is the pty's name).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Opens a pty; returns (master, slave).
pub fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty(3) with valid out pointers and no name, termios or winsize.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty returned two open descriptors that nothing else owns.
    let fds = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [fds.0.as_raw_fd(), fds.1.as_raw_fd()] {
        // SAFETY: fcntl(2) on a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(fds)
}

/// The name of the pty whose master is `fd` (`/dev/pts/N`), or "" if unknown.
fn pty_name(fd: RawFd) -> String {
    let mut buf = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r(3) into a buffer of the given size.
    if unsafe { libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len()) } != 0 {
        return String::new();
    }
    // SAFETY: ptsname_r wrote a NUL-terminated string into buf.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Connects to the Unix socket at `socket` and sends `fd` with `SCM_RIGHTS`, the pty's name
/// as the payload (the sandbox's sender, [`crate::sandbox::pty::send_fd`], does the work).
pub fn send_fd(socket: &Path, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let name = pty_name(fd.as_raw_fd());
    let name = if name.is_empty() {
        "pty".to_string()
    } else {
        name
    };
    crate::sandbox::pty::send_fd(socket, fd, &name)
}

/// Receives one descriptor sent with [`send_fd`] (the console-socket peer's side; used by
/// tests and tools).
pub fn recv_fd(stream: &UnixStream) -> std::io::Result<(OwnedFd, String)> {
    let mut payload = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; the pointers set below outlive the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: recvmsg(2) into the buffers above.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel filled msg; CMSG_FIRSTHDR/CMSG_DATA stay inside the control buffer.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no descriptor in the message",
            ));
        }
        let mut fd: RawFd = -1;
        std::ptr::copy_nonoverlapping(
            libc::CMSG_DATA(cmsg),
            &mut fd as *mut RawFd as *mut u8,
            std::mem::size_of::<RawFd>(),
        );
        Ok((
            OwnedFd::from_raw_fd(fd),
            String::from_utf8_lossy(&payload[..n as usize]).into_owned(),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_pty_master_crosses_the_console_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (master, slave) = open_pty().unwrap();
        let receiver = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            recv_fd(&stream).unwrap()
        });
        send_fd(&path, std::os::fd::AsFd::as_fd(&master)).unwrap();
        let (received, name) = receiver.join().unwrap();
        assert!(name.starts_with("/dev/pts/"), "{name}");
        // What is written on the slave comes out of the received master.
        let mut slave = std::fs::File::from(slave);
        slave.write_all(b"hello\n").unwrap();
        let mut m = std::fs::File::from(received);
        let mut buf = [0u8; 64];
        let n = m.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("hello"));
        assert!(send_fd(
            &dir.path().join("nobody.sock"),
            std::os::fd::AsFd::as_fd(&master)
        )
        .is_err());
    }
}
