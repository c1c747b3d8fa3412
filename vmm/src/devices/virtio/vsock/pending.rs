//! Host clients that connected to the vsock listener and have not finished their
//! `CONNECT <port>\n` line yet: at most [`MAX_PENDING_CLIENTS`] at once; once they are all
//! taken, clients that took longer than the deadline make room for a newcomer.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Most host clients that connected but have not sent their CONNECT line yet.
pub const MAX_PENDING_CLIENTS: usize = 64;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;

/// What reading a pending client gave.
#[derive(Debug)]
pub enum LineRead {
    /// The line is not complete yet (or the fd is not a pending client's).
    Waiting,
    /// The client left, or sent something that is not a CONNECT line; it is closed.
    Dropped,
    /// A complete `CONNECT <port>` line: the client's stream, for the connection.
    Connect(u32, UnixStream),
}

/// A host client that has not sent its CONNECT line yet.
#[derive(Debug)]
struct PendingClient {
    stream: UnixStream,
    line: Vec<u8>,
    since: Instant,
}

/// The pending host clients, by fd.
#[derive(Debug)]
pub struct PendingClients {
    clients: HashMap<RawFd, PendingClient>,
    deadline: Duration,
}

/// Parses `CONNECT <port>` (without the newline).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    text.strip_prefix("CONNECT ")?.trim().parse().ok()
}

impl PendingClients {
    /// No clients; those that take longer than `deadline` may be dropped for newcomers.
    pub fn new(deadline: Duration) -> Self {
        PendingClients {
            clients: HashMap::new(),
            deadline,
        }
    }

    /// Changes the deadline (tests).
    #[cfg(test)]
    pub fn set_deadline(&mut self, deadline: Duration) {
        self.deadline = deadline;
    }

    /// Whether `fd` is a pending client's.
    pub fn contains(&self, fd: RawFd) -> bool {
        self.clients.contains_key(&fd)
    }

    /// Drops every client.
    pub fn clear(&mut self) {
        self.clients.clear();
    }

    /// Whether a new client can be taken, after dropping those past the deadline if every
    /// slot is taken.
    pub fn make_room(&mut self) -> bool {
        if self.clients.len() >= MAX_PENDING_CLIENTS {
            let deadline = self.deadline;
            let before = self.clients.len();
            self.clients.retain(|_, c| c.since.elapsed() < deadline);
            let dropped = before - self.clients.len();
            if dropped > 0 {
                tracing::debug!(
                    "vsock: dropped {dropped} host clients that sent no CONNECT in {deadline:?}"
                );
            }
        }
        self.clients.len() < MAX_PENDING_CLIENTS
    }

    /// Adds a client (the caller watches its fd and made room first).
    pub fn add(&mut self, stream: UnixStream) {
        self.clients.insert(
            stream.as_raw_fd(),
            PendingClient {
                stream,
                line: Vec::new(),
                since: Instant::now(),
            },
        );
    }

    /// Reads a client's CONNECT line one byte at a time, so that no data after it is
    /// consumed.
    pub fn read_line(&mut self, fd: RawFd) -> LineRead {
        let Some(client) = self.clients.get_mut(&fd) else {
            return LineRead::Waiting;
        };
        let port = loop {
            let mut byte = 0u8;
            // SAFETY: reading one byte into a local.
            let n = unsafe { libc::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_DONTWAIT) };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                return LineRead::Waiting;
            }
            if n <= 0 {
                tracing::debug!("vsock: host client left before CONNECT");
                self.clients.remove(&fd);
                return LineRead::Dropped;
            }
            if byte == b'\n' {
                break parse_connect(&client.line);
            }
            client.line.push(byte);
            if client.line.len() > MAX_CONNECT_LINE {
                break None;
            }
        };
        let Some(client) = self.clients.remove(&fd) else {
            return LineRead::Dropped;
        };
        match port {
            Some(port) => LineRead::Connect(port, client.stream),
            None => {
                tracing::debug!(
                    "vsock: bad CONNECT line {:?} from a host client",
                    String::from_utf8_lossy(&client.line)
                );
                LineRead::Dropped
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"connect 52"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT \xff"), None);
    }

    #[test]
    fn a_line_split_over_reads_completes_and_an_endless_one_is_dropped() {
        let mut pending = PendingClients::new(Duration::from_secs(10));
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        let fd = ours.as_raw_fd();
        pending.add(ours);
        theirs.write_all(b"CONN").expect("write");
        assert!(matches!(pending.read_line(fd), LineRead::Waiting));
        theirs.write_all(b"ECT 7\nrest").expect("write");
        assert!(matches!(pending.read_line(fd), LineRead::Connect(7, _)));
        assert!(!pending.contains(fd));

        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        let fd = ours.as_raw_fd();
        pending.add(ours);
        theirs.write_all(&[b'A'; 100]).expect("write");
        assert!(matches!(pending.read_line(fd), LineRead::Dropped));
        assert!(!pending.contains(fd));
    }
}
