//! Host ptys for `process.terminal`: the master goes to the caller's console socket (as runc
//! does, SCM_RIGHTS with the pty name as payload); the slave, in raw mode, is relayed to the
//! agent's pty in the guest.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// A pty pair.
#[derive(Debug)]
pub(crate) struct Pty {
    /// The master, for the console socket.
    pub master: OwnedFd,
    /// The slave, relayed to the guest.
    pub slave: File,
}

/// Opens a pty pair with the slave in raw mode (the guest's pty does the line discipline).
pub(crate) fn open_pty() -> io::Result<Pty> {
    let (mut master, mut slave): (RawFd, RawFd) = (-1, -1);
    // SAFETY: openpty writes two descriptors; name, termios and winsize may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), File::from_raw_fd(slave)) };
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        super::unix::set_cloexec(fd, true)?;
    }
    make_raw(slave.as_raw_fd())?;
    Ok(Pty { master, slave })
}

fn make_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is a terminal we own; t is valid.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: t was filled by tcgetattr.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: as above.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The terminal size of `fd` as (rows, cols), if it is a terminal with a size.
pub(crate) fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: ioctl with a valid winsize pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Makes `fd` the controlling terminal of the calling session leader, so that a resize of
/// the master side sends it SIGWINCH.
pub(crate) fn set_controlling_terminal(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal).
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `fd` over the Unix socket at `socket` with `name` as the message (runc's
/// console-socket convention).
pub(crate) fn send_fd(socket: &Path, fd: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let stream = super::unix::connect(socket)?;
    let mut payload = name.as_bytes().to_vec();
    if payload.is_empty() {
        payload.push(0);
    }
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; zeroed then filled below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg has a control buffer of CMSG_SPACE(one fd) bytes, so the first header and
    // its data fit; the fd is copied unaligned.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
    }
    // SAFETY: msg and everything it points to live across the call.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn master_sent_over_a_console_socket_talks_to_the_raw_slave() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let pty = open_pty().unwrap();
        send_fd(&sock, std::os::fd::AsFd::as_fd(&pty.master), "/dev/ptmx").unwrap();
        let (conn, _) = listener.accept().unwrap();
        let (master, name) = crate::console::recv_fd(&conn).unwrap();
        assert_eq!(name, "/dev/ptmx");
        let mut master = File::from(master);
        let mut slave = pty.slave;
        master.write_all(b"ab\r\n").unwrap();
        let mut buf = [0u8; 4];
        slave.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ab\r\n", "raw: no CR translation");
        slave.write_all(b"x\n").unwrap();
        let mut out = [0u8; 2];
        master.read_exact(&mut out).unwrap();
        assert_eq!(&out, b"x\n", "raw: no NL -> CRNL, no echo");
        // SAFETY: TIOCSWINSZ on our own master with a valid winsize.
        let ws = libc::winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        assert_eq!(
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
            0
        );
        assert_eq!(window_size(slave.as_raw_fd()), Some((40, 120)));
        assert!(send_fd(
            &dir.path().join("missing.sock"),
            std::os::fd::AsFd::as_fd(&master),
            "x"
        )
        .is_err());
    }
}
