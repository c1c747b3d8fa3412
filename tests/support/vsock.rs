//! Host-initiated connections to a guest's vsock ports through zvm's Unix socket.

use std::path::Path;
use std::time::{Duration, Instant};

/// Opens a host-initiated vsock connection to guest `port` through zvm's Unix socket
/// `uds` (Firecracker's `CONNECT <port>\n` handshake, answered `OK <host port>\n`).
pub fn vsock_connect(uds: &Path, port: u32) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::io::Write;
    let mut conn = std::os::unix::net::UnixStream::connect(uds)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Byte by byte, so nothing after the handshake line is consumed here.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        if std::io::Read::read(&mut conn, &mut byte)? == 0 {
            break;
        }
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line);
    if !line.starts_with("OK ") {
        return Err(std::io::Error::other(format!(
            "handshake answered {line:?}"
        )));
    }
    Ok(conn)
}

/// Sends `request` to guest vsock `port` through `uds`, half-closes and returns the whole
/// answer. Retries the connection (every 20 ms) until it is accepted or `limit` passes.
pub fn vsock_request(
    uds: &Path,
    port: u32,
    request: &str,
    limit: Duration,
) -> Result<String, String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + limit;
    let mut last = String::from("never tried");
    while Instant::now() < deadline {
        match vsock_connect(uds, port) {
            Ok(mut conn) => {
                conn.set_read_timeout(Some(limit))
                    .map_err(|e| e.to_string())?;
                conn.write_all(request.as_bytes())
                    .map_err(|e| format!("send: {e}"))?;
                conn.shutdown(std::net::Shutdown::Write)
                    .map_err(|e| format!("half-close: {e}"))?;
                let mut answer = String::new();
                conn.read_to_string(&mut answer)
                    .map_err(|e| format!("read the answer: {e}"))?;
                return Ok(answer);
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "no vsock connection to port {port} through {} within {limit:?}: {last}",
        uds.display()
    ))
}
