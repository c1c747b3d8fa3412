//! A minimal HTTP/1.1 client over a Unix socket, for driving `zvm --api-sock`, and the
//! API-mode zvm process it talks to.

use crate::{scratch_dir, zvm_binary};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// A `zvm --api-sock` process, killed on drop.
pub struct ZvmProcess {
    /// The process (its stdout and stderr piped).
    pub child: Child,
    /// Its API socket.
    pub sock: PathBuf,
}

impl ZvmProcess {
    /// Starts `zvm --api-sock SCRATCH/NAME.sock --id NAME` and waits for its socket.
    pub fn start(name: &str) -> ZvmProcess {
        let sock = scratch_dir().join(format!("{name}.sock"));
        let child = Command::new(zvm_binary())
            .args(["--api-sock", sock.to_str().expect("utf8"), "--id", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn zvm");
        wait_for_socket(&sock, Duration::from_secs(10));
        ZvmProcess { child, sock }
    }

    /// The executable of the process serving the API: zvm hands API mode to the lean
    /// zvm-vmm beside it (same pid).
    pub fn exe(&self) -> String {
        std::fs::read_link(format!("/proc/{}/exe", self.child.id()))
            .expect("the API process's exe")
            .display()
            .to_string()
    }

    /// One request; the body parsed as JSON (a string when it is not, null when empty).
    pub fn call(&self, method: &str, uri: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let (status, body) = request(&self.sock, method, uri, body);
        let json = if body.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body))
        };
        (status, json)
    }
}

impl Drop for ZvmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
