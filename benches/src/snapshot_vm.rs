//! What the snapshot benchmark drives: zvm processes (API or command line) whose console
//! is scanned for markers while they run, the guest's vsock command server, the memory
//! of a process from `/proc/PID/smaps_rollup`, and memory files compared page by page.

use crate::error::{io_err, BenchError, Result};
use crate::measure::LineScanner;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Console lines kept for error messages.
const TAIL_LINES: usize = 20;
const PAGE: usize = 4096;

/// A VMM process, killed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    sock: Option<PathBuf>,
    marks: Arc<Mutex<Vec<Option<Duration>>>>,
    tail: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

fn api_err(what: String) -> BenchError {
    BenchError::Spawn {
        program: "zvm --api-sock".into(),
        source: std::io::Error::other(what),
    }
}

impl Proc {
    /// Spawns `cmd` (stdin /dev/null, stdout and stderr read as they come); the console's
    /// `markers` are timed from `start`.
    pub fn spawn(
        cmd: &mut Command,
        sock: Option<PathBuf>,
        markers: &[&str],
        start: Instant,
    ) -> Result<Proc> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| BenchError::Spawn {
            program: program.clone(),
            source,
        })?;
        let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BenchError::Spawn {
                program,
                source: std::io::Error::other("no stdout/stderr pipe"),
            });
        };
        let marks = Arc::new(Mutex::new(vec![None; markers.len()]));
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (m, t) = (marks.clone(), tail.clone());
        let owned: Vec<String> = markers.iter().map(|s| (*s).to_string()).collect();
        std::thread::spawn(move || {
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            let mut scanner = LineScanner::new(&refs);
            let mut buf = [0u8; 8192];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let at = start.elapsed();
                let (lines, found) = scanner.feed(&buf[..n]);
                if let Ok(mut marks) = m.lock() {
                    for i in found {
                        marks[i] = Some(at);
                    }
                }
                if let Ok(mut tail) = t.lock() {
                    tail.extend(lines);
                    let excess = tail.len().saturating_sub(TAIL_LINES);
                    tail.drain(..excess);
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let e = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut text) = e.lock() {
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Ok(Proc {
            child,
            sock,
            marks,
            tail,
            stderr,
        })
    }

    /// Spawns `zvm --api-sock SOCK --id ID` and waits (up to 10 s) until `GET /` answers.
    pub fn api(zvm: &Path, sock: &Path, id: &str) -> Result<Proc> {
        let _ = std::fs::remove_file(sock);
        let mut cmd = Command::new(zvm);
        cmd.arg("--api-sock").arg(sock).args(["--id", id]);
        let mut p = Proc::spawn(&mut cmd, Some(sock.to_path_buf()), &[], Instant::now())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if api_server::client::request(sock, "GET", "/", None, Duration::from_secs(5)).is_ok() {
                return Ok(p);
            }
            if !p.running() || Instant::now() > deadline {
                return Err(api_err(format!(
                    "{} never answered; {}",
                    sock.display(),
                    p.tail()
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn request(&self, method: &str, path: &str, body: &serde_json::Value) -> Result<()> {
        let sock = self
            .sock
            .as_deref()
            .ok_or_else(|| api_err("this process serves no API".into()))?;
        let text = body.to_string();
        let response = api_server::client::request(
            sock,
            method,
            path,
            Some(text.as_bytes()),
            Duration::from_secs(120),
        )
        .map_err(|e| api_err(e.to_string()))?;
        if response.is_error() {
            return Err(api_err(format!(
                "{method} {path} answered {}: {}",
                response.status,
                response.text()
            )));
        }
        Ok(())
    }

    /// `PUT path body`, which must succeed.
    pub fn put(&self, path: &str, body: &serde_json::Value) -> Result<()> {
        self.request("PUT", path, body)
    }

    /// `PATCH path body`, which must succeed.
    pub fn patch(&self, path: &str, body: &serde_json::Value) -> Result<()> {
        self.request("PATCH", path, body)
    }

    /// When each marker was first seen (since the `start` given to [`Proc::spawn`]).
    pub fn marks(&self) -> Vec<Option<Duration>> {
        self.marks.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// zvm's messages so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The last console lines and the messages, for warnings.
    pub fn tail(&self) -> String {
        let tail = self.tail.lock().map(|t| t.join("\n")).unwrap_or_default();
        format!(
            "console tail:\n{tail}\nstderr:\n{}",
            self.stderr().trim_end()
        )
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How one request over vsock went.
enum Attempt {
    /// zvm did not answer `OK` (no socket yet, or the guest does not listen yet).
    NotAccepted,
    /// Accepted; the whole answer (empty when the guest reset the connection).
    Answered(String),
    /// Accepted, then the connection failed.
    Broken,
}

/// One request to the guest's command server through zvm's vsock socket `uds`:
/// `CONNECT 5000`, the request, half-close, the whole answer.
fn vsock_once(uds: &Path, request: &str, limit: Duration) -> Attempt {
    let handshake = || -> std::io::Result<Option<UnixStream>> {
        let mut conn = UnixStream::connect(uds)?;
        conn.set_read_timeout(Some(limit))?;
        conn.write_all(b"CONNECT 5000\n")?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.last() != Some(&b'\n') {
            if conn.read(&mut byte)? == 0 {
                break;
            }
            line.push(byte[0]);
        }
        Ok(line.starts_with(b"OK ").then_some(conn))
    };
    let Ok(Some(mut conn)) = handshake() else {
        return Attempt::NotAccepted;
    };
    let mut answer = String::new();
    let exchange = conn
        .write_all(request.as_bytes())
        .and_then(|()| conn.shutdown(std::net::Shutdown::Write))
        .and_then(|()| conn.read_to_string(&mut answer));
    match exchange {
        Ok(_) => Attempt::Answered(answer),
        Err(_) => Attempt::Broken,
    }
}

/// Sends `request` until the guest answers `expect` or `deadline` passes, trying again
/// every `poll`; the moment the answer arrived.
pub fn vsock_answer(
    uds: &Path,
    request: &str,
    expect: &str,
    deadline: Instant,
    poll: Duration,
) -> Option<Instant> {
    vsock_answer_counting(uds, request, expect, deadline, poll).0
}

/// Like [`vsock_answer`], and counts the connections that were accepted (`OK`) but then
/// ended without the expected answer (the guest reset them).
pub fn vsock_answer_counting(
    uds: &Path,
    request: &str,
    expect: &str,
    deadline: Instant,
    poll: Duration,
) -> (Option<Instant>, u32) {
    let mut broken = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (None, broken);
        }
        match vsock_once(uds, request, left.min(Duration::from_secs(60))) {
            Attempt::Answered(answer) if answer.trim() == expect => {
                return (Some(Instant::now()), broken)
            }
            Attempt::Answered(_) | Attempt::Broken => broken += 1,
            Attempt::NotAccepted => {}
        }
        std::thread::sleep(poll);
    }
}

/// `Pss:` and `Rss:` (KiB) of the text of `/proc/PID/smaps_rollup`.
pub fn parse_rollup(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some((field("Pss")?, field("Rss")?))
}

/// (Pss, Rss) of process `pid` in KiB: every mapping, guest memory included.
pub fn rollup_kib(pid: u32) -> Option<(u64, u64)> {
    parse_rollup(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
}

/// Calls `f` with each 1 MiB chunk of `a` and the same range of `b` (or zeros where `b`
/// has ended).
fn chunks(
    a: &Path,
    b: Option<&Path>,
    mut f: impl FnMut(u64, &[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let fa = std::fs::File::open(a).map_err(io_err("open", a))?;
    let fb = match b {
        Some(b) => Some(std::fs::File::open(b).map_err(io_err("open", b))?),
        None => None,
    };
    let len = fa.metadata().map_err(io_err("stat", a))?.len();
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    while at < len {
        let n = ((len - at) as usize).min(ba.len());
        fa.read_exact_at(&mut ba[..n], at)
            .map_err(io_err("read", a))?;
        bb[..n].fill(0);
        if let (Some(fb), Some(b)) = (&fb, b) {
            let got = fb.read_at(&mut bb[..n], at).map_err(io_err("read", b))?;
            bb[got..n].fill(0);
        }
        f(at, &ba[..n], &bb[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// Copies `from` to `to` leaving all-zero pages as holes (as zvm writes memory files).
pub fn sparse_copy(from: &Path, to: &Path) -> Result<()> {
    let len = std::fs::metadata(from).map_err(io_err("stat", from))?.len();
    let out = std::fs::File::create(to).map_err(io_err("create", to))?;
    out.set_len(len).map_err(io_err("size", to))?;
    chunks(from, None, |at, data, _| {
        for (i, page) in data.chunks(PAGE).enumerate() {
            if page.iter().any(|b| *b != 0) {
                out.write_all_at(page, at + (i * PAGE) as u64)
                    .map_err(io_err("write", to))?;
            }
        }
        Ok(())
    })
}

/// How many 4 KiB pages differ between two files of the same size.
pub fn pages_differing(a: &Path, b: &Path) -> Result<u64> {
    let mut count = 0u64;
    chunks(a, Some(b), |_, x, y| {
        count += x
            .chunks(PAGE)
            .zip(y.chunks(PAGE))
            .filter(|(p, q)| p != q)
            .count() as u64;
        Ok(())
    })?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_gives_pss_and_rss() {
        let text = "55d0c0a00000-7ffd1c5f2000 ---p 00000000 00:00 0  [rollup]\nRss:              123456 kB\nPss:               65432 kB\nPss_Anon:           1000 kB\n";
        assert_eq!(parse_rollup(text), Some((65432, 123456)));
        assert_eq!(parse_rollup("Rss: 1 kB\n"), None);
        assert!(rollup_kib(std::process::id()).is_some_and(|(pss, rss)| pss > 0 && rss >= pss));
    }

    #[test]
    fn sparse_copies_compare_equal_and_differences_are_counted() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io_err("create", "tempdir"))?;
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let mut data = vec![0u8; 3 << 20];
        data[5 * PAGE + 7] = 1;
        data[(2 << 20) + 1] = 9;
        std::fs::write(&a, &data).map_err(io_err("write", &a))?;
        sparse_copy(&a, &b)?;
        assert_eq!(std::fs::read(&b).map_err(io_err("read", &b))?, data);
        assert_eq!(pages_differing(&a, &b)?, 0);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&b)
            .map_err(io_err("open", &b))?;
        f.write_all_at(&[1, 2], 100 * PAGE as u64)
            .map_err(io_err("write", &b))?;
        f.write_all_at(&[0], 5 * PAGE as u64 + 7)
            .map_err(io_err("write", &b))?;
        assert_eq!(pages_differing(&a, &b)?, 2);
        Ok(())
    }
}
