//! A minimal HTTP/1.1 client over a Unix socket, for driving `zvm --api-sock` (the
//! process itself is [`crate::LiveZvm`]).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Waits until `path` accepts connections (or panics after `limit`).
pub fn wait_for_socket(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never accepted a connection",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends one request on a fresh connection; returns (status, body).
pub fn request(path: &Path, method: &str, uri: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = UnixStream::connect(path).expect("connect to the API socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {uri} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
