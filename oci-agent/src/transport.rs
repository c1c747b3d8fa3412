//! Where the host's connection comes from: a vsock listener inside the VM, a Unix socket when
//! the agent runs as a host process (tests).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::sys::check;

/// A listening endpoint the agent accepts host connections from, one at a time.
pub trait Transport {
    /// The listening descriptor, polled for incoming connections.
    fn listen_fd(&self) -> RawFd;
    /// Accepts one connection (a blocking, close-on-exec stream socket).
    fn accept(&mut self) -> io::Result<OwnedFd>;
    /// A description for logs.
    fn describe(&self) -> String;
}

fn accept_on(fd: RawFd) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: accept4 without the peer address on a listening socket.
        let rc = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if rc >= 0 {
            // SAFETY: a fresh descriptor we now own.
            return Ok(unsafe { OwnedFd::from_raw_fd(rc) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn socket(domain: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd =
        check(unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }.into())?;
    // SAFETY: a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Listens on a vsock port (inside the VM: any CID, the host connects through zvm's device).
#[derive(Debug)]
pub struct VsockTransport {
    fd: OwnedFd,
    port: u32,
}

impl VsockTransport {
    /// Binds and listens on `port`.
    pub fn bind(port: u32) -> io::Result<Self> {
        let fd = socket(libc::AF_VSOCK)?;
        // SAFETY: an all-zero sockaddr_vm is valid; then filled in.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        addr.svm_port = port;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
        check(
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_vm).cast(),
                    len,
                )
            }
            .into(),
        )?;
        // SAFETY: plain listen(2).
        check(unsafe { libc::listen(fd.as_raw_fd(), 4) }.into())?;
        Ok(Self { fd, port })
    }
}

impl Transport for VsockTransport {
    fn listen_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
    fn accept(&mut self) -> io::Result<OwnedFd> {
        accept_on(self.fd.as_raw_fd())
    }
    fn describe(&self) -> String {
        format!("vsock port {}", self.port)
    }
}

/// Listens on a Unix stream socket (host tests).
#[derive(Debug)]
pub struct UnixTransport {
    fd: OwnedFd,
    path: std::path::PathBuf,
}

impl UnixTransport {
    /// Binds and listens on `path` (an existing socket file there is replaced).
    pub fn bind(path: &Path) -> io::Result<Self> {
        let bytes = path.as_os_str().as_bytes();
        // SAFETY: an all-zero sockaddr_un is valid; then filled in.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        if bytes.len() >= addr.sun_path.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket path too long: {}", path.display()),
            ));
        }
        let _ = std::fs::remove_file(path);
        let fd = socket(libc::AF_UNIX)?;
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        check(
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_un).cast(),
                    len,
                )
            }
            .into(),
        )?;
        // SAFETY: plain listen(2).
        check(unsafe { libc::listen(fd.as_raw_fd(), 4) }.into())?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }
}

impl Transport for UnixTransport {
    fn listen_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
    fn accept(&mut self) -> io::Result<OwnedFd> {
        accept_on(self.fd.as_raw_fd())
    }
    fn describe(&self) -> String {
        format!("unix socket {}", self.path.display())
    }
}
