//! `zvm-vsock-tool serve PORT`: a command server for the snapshot tests and benchmark.
//!
//! It listens on vsock port PORT and serves every connection on its own thread: it reads
//! the request until the peer half-closes, runs it with `/bin/sh -c`, writes the command's
//! standard output and error back and closes (the request `ping` is answered `pong` at
//! once, without a shell). Each step is logged on standard output (the
//! guest console), so a restored VM's console shows its connections, and a connection
//! that a snapshot restore reset (the host end of every vsock connection is gone after a
//! restore) is logged as `serve: connection N failed: ...` while the server goes on.

use super::{check, read_some, vsock_addr, vsock_socket, write_all, Fd};
use std::io::{self, Write};
use std::process::Command;

fn log(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "serve: {line}");
    let _ = out.flush();
}

/// Reads until end of input.
fn read_request(conn: &Fd) -> io::Result<Vec<u8>> {
    let mut request = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = read_some(conn, &mut buf)?;
        if n == 0 {
            return Ok(request);
        }
        request.extend_from_slice(&buf[..n]);
    }
}

fn handle(n: u64, conn: Fd) {
    log(&format!("connection {n} accepted"));
    let request = match read_request(&conn) {
        Ok(r) => r,
        Err(e) => return log(&format!("connection {n} failed: {e}")),
    };
    let command = String::from_utf8_lossy(&request).trim().to_string();
    if command == "ping" {
        // Answered here, without a shell: what the guest takes to answer at all.
        let outcome = write_all(&conn, b"pong\n")
            .map_or_else(|e| format!("failed: {e}"), |()| "answered pong".into());
        return log(&format!("connection {n} {outcome}"));
    }
    log(&format!("connection {n} runs: {command}"));
    let (reply, status) = match Command::new("/bin/sh")
        .arg("-c")
        .arg(&command)
        .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
        .output()
    {
        Ok(out) => {
            let mut reply = out.stdout;
            reply.extend_from_slice(&out.stderr);
            (
                reply,
                out.status
                    .code()
                    .map_or_else(|| "killed".to_string(), |c| c.to_string()),
            )
        }
        Err(e) => (
            format!("cannot run /bin/sh: {e}\n").into_bytes(),
            "none".to_string(),
        ),
    };
    match write_all(&conn, &reply) {
        Ok(()) => log(&format!(
            "connection {n} answered: {} bytes, exit {status}",
            reply.len()
        )),
        Err(e) => log(&format!("connection {n} failed: {e}")),
    }
}

/// Serves connections on vsock `port` until killed.
pub fn serve(port: u32) -> io::Result<()> {
    let listener = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
    check(
        unsafe { libc::bind(listener.0, (&addr as *const libc::sockaddr_vm).cast(), len) },
        "bind",
    )?;
    // SAFETY: plain listen(2).
    check(unsafe { libc::listen(listener.0, 16) }, "listen")?;
    log(&format!("listening on vsock port {port}"));
    let mut count = 0u64;
    loop {
        // SAFETY: accept4(2) without the peer address.
        let fd = unsafe {
            libc::accept4(
                listener.0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                log(&format!("accept failed: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            continue;
        }
        count += 1;
        let conn = Fd(fd);
        let n = count;
        if let Err(e) = std::thread::Builder::new().spawn(move || handle(n, conn)) {
            log(&format!("connection {n} dropped: no thread: {e}"));
        }
    }
}
