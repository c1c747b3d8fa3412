//! `zvm-vsock-tool`: a tiny AF_VSOCK test program for zvm guests.
//!
//! - `zvm-vsock-tool echo-server PORT`: accepts one connection on vsock port PORT and
//!   echoes everything it receives until end of input.
//! - `zvm-vsock-tool send CID PORT TEXT`: connects to CID:PORT, sends TEXT, shuts down its
//!   sending side, prints everything it reads back until end of input.
//! - `zvm-vsock-tool tcp-send IP:PORT TEXT`: the same over TCP.
//! - `zvm-vsock-tool serve PORT`: runs each connection's request with `/bin/sh -c` and
//!   answers with its output, one thread per connection, until killed (see serve.rs).
//! - `zvm-vsock-tool blk-bench DEV SIZE_MIB` and `tcp-bench send|recv IP:PORT SIZE_MIB`:
//!   the throughput benchmarks of `zvm-bench` (see bench.rs).

mod bench;
mod serve;

use std::io::{self, Write};
use std::process::ExitCode;

/// An owned socket descriptor, closed on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor this program owns.
        unsafe { libc::close(self.0) };
    }
}

fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(ret)
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: an all-zero sockaddr_vm is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

fn vsock_socket() -> io::Result<Fd> {
    // SAFETY: plain socket(2).
    check(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }, "socket").map(Fd)
}

fn read_some(fd: &Fd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::read(fd.0, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn write_all(fd: &Fd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: writing from our own buffer.
        let n = unsafe { libc::write(fd.0, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

fn echo_server(port: u32) -> io::Result<()> {
    let listener = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
    check(unsafe { libc::bind(listener.0, (&addr as *const libc::sockaddr_vm).cast(), len) }, "bind")?;
    // SAFETY: plain listen(2).
    check(unsafe { libc::listen(listener.0, 1) }, "listen")?;
    println!("listening on vsock port {port}");
    io::stdout().flush()?;
    // SAFETY: accept(2) without the peer address.
    let conn = Fd(check(unsafe { libc::accept(listener.0, std::ptr::null_mut(), std::ptr::null_mut()) }, "accept")?);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        let n = read_some(&conn, &mut buf)?;
        if n == 0 {
            break;
        }
        write_all(&conn, &buf[..n])?;
        total += n;
    }
    println!("echoed {total} bytes");
    Ok(())
}

fn send(cid: u32, port: u32, text: &str) -> io::Result<()> {
    let sock = vsock_socket()?;
    let addr = vsock_addr(cid, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
    check(unsafe { libc::connect(sock.0, (&addr as *const libc::sockaddr_vm).cast(), len) }, "connect")?;
    write_all(&sock, text.as_bytes())?;
    // SAFETY: plain shutdown(2) of our socket's sending side.
    check(unsafe { libc::shutdown(sock.0, libc::SHUT_WR) }, "shutdown")?;
    let mut reply = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = read_some(&sock, &mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    let mut out = io::stdout().lock();
    out.write_all(&reply)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Sends `text` over TCP to `addr`, half-closes, prints the reply (the network test).
fn tcp_send(addr: &str, text: &str) -> io::Result<()> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    stream.write_all(text.as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    println!("{reply}");
    Ok(())
}

fn number(text: &str, what: &str) -> Result<u32, String> {
    text.parse().map_err(|_| format!("invalid {what} '{text}'"))
}

fn run(args: &[String]) -> Result<(), String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["echo-server", port] => echo_server(number(port, "port")?).map_err(|e| e.to_string()),
        ["send", cid, port, text] => send(number(cid, "CID")?, number(port, "port")?, text).map_err(|e| e.to_string()),
        ["tcp-send", addr, text] => tcp_send(addr, text).map_err(|e| e.to_string()),
        ["serve", port] => serve::serve(number(port, "port")?).map_err(|e| e.to_string()),
        ["blk-bench", dev, size] => bench::blk_bench(dev, number(size, "size")? as usize).map_err(|e| e.to_string()),
        ["tcp-bench", dir, addr, size] => {
            bench::tcp_bench(dir, addr, number(size, "size")? as usize).map_err(|e| e.to_string())
        }
        _ => Err("usage: zvm-vsock-tool echo-server PORT | send CID PORT TEXT | tcp-send IP:PORT TEXT | serve PORT \
                  | blk-bench DEV SIZE_MIB | tcp-bench send|recv IP:PORT SIZE_MIB"
            .into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zvm-vsock-tool: {e}");
            ExitCode::FAILURE
        }
    }
}
