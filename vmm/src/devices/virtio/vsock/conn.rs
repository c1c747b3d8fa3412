//! One vsock stream connection between a guest port and a host Unix socket: its state,
//! the credit bookkeeping of both directions, and the bounded buffer of guest data the
//! host socket has not taken yet. Host socket I/O is non-blocking (`MSG_DONTWAIT`) and
//! never raises SIGPIPE (`MSG_NOSIGNAL`).

use std::collections::VecDeque;
use std::io;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// The most a connection buffers of guest data for its host socket (its `buf_alloc`);
/// the muxer gives less when its budget runs low.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: the REQUEST went to the guest, its RESPONSE has not come back.
    LocalInit,
    /// Data flows both ways (each direction may have been shut down).
    Established,
    /// The guest shut down both directions: buffered data is being flushed to the host
    /// socket, after which the connection is reset and removed.
    Draining,
}

/// What a read from the host socket gave.
#[derive(Debug, PartialEq, Eq)]
pub enum HostRead {
    /// Bytes for the guest.
    Data(Vec<u8>),
    /// Nothing available now.
    WouldBlock,
    /// The host closed its sending side.
    Eof,
}

/// What the muxer keeps on a connection besides its protocol state.
#[derive(Debug, Default)]
pub struct Bookkeeping {
    /// Unique among the muxer's connections over its life (see `deadlines`).
    pub serial: u64,
    /// The connection is in the muxer's queue of connections with data for the guest.
    pub queued: bool,
    /// The moment the connection is reset unless it has moved on.
    pub expires: Option<std::time::Instant>,
    /// The deadline set has an entry for this connection.
    pub scheduled: bool,
}

/// A connection's state and buffers.
#[derive(Debug)]
pub struct Connection {
    /// The host end.
    pub stream: UnixStream,
    /// Life-cycle state.
    pub state: ConnState,
    /// The host socket may have data to read (edge-triggered: set by epoll, cleared when
    /// a read would block).
    pub readable: bool,
    /// SHUTDOWN flags the guest sent.
    pub peer_shutdown: u32,
    /// The host socket reached end of input.
    pub host_eof: bool,
    /// A CREDIT_UPDATE for this connection is queued.
    pub credit_update_queued: bool,
    /// The host end hung up (closed both directions).
    pub host_hung_up: bool,
    /// The muxer's bookkeeping: unique serial, ready-queue membership, deadline.
    pub book: Bookkeeping,
    buf_alloc: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// The `OK <port>\n` line of a host-initiated connection, written before any data.
    reply: Vec<u8>,
    to_host: VecDeque<u8>,
    host_write_shut: bool,
}

impl Connection {
    /// A connection over `stream` (already non-blocking) in `state`, buffering at most
    /// `buf_alloc` bytes of guest data.
    pub fn new(stream: UnixStream, state: ConnState, buf_alloc: u32) -> Self {
        Connection {
            stream,
            state,
            readable: true,
            peer_shutdown: 0,
            host_eof: false,
            credit_update_queued: false,
            host_hung_up: false,
            book: Bookkeeping::default(),
            buf_alloc,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            reply: Vec::new(),
            to_host: VecDeque::new(),
            host_write_shut: false,
        }
    }

    /// Records the credit the guest advertised in a packet header.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes the guest can take now: its buffer minus what is in flight.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Our `(buf_alloc, fwd_cnt)` for a header going to the guest; notes that the guest
    /// now knows this `fwd_cnt`.
    pub fn advertise(&mut self) -> (u32, u32) {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        (self.buf_alloc, self.fwd_cnt.0)
    }

    /// The guest data this connection may buffer: its share of the muxer's budget.
    pub fn buf_alloc(&self) -> u32 {
        self.buf_alloc
    }

    /// Whether the guest should be told about forwarded bytes: once a quarter of the
    /// buffer went to the host since it last heard.
    pub fn needs_credit_update(&self) -> bool {
        (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= (self.buf_alloc / 4).max(1)
    }

    /// Whether data can go to the guest now.
    pub fn wants_to_send(&self) -> bool {
        self.state == ConnState::Established
            && self.readable
            && !self.host_eof
            && self.peer_shutdown & super::packet::shutdown::RCV == 0
            && self.peer_credit() > 0
    }

    /// Queues the line a host client gets once the guest accepted its connection.
    pub fn set_reply(&mut self, line: String) {
        self.reply = line.into_bytes();
    }

    /// Buffers guest data for the host socket; false if that would overrun our buffer
    /// (the guest ignored our credit).
    pub fn push_from_guest(&mut self, data: &[u8]) -> bool {
        if self.to_host.len().saturating_add(data.len()) > self.buf_alloc as usize {
            return false;
        }
        self.to_host.extend(data);
        true
    }

    /// Whether everything for the host socket has been written.
    pub fn flushed(&self) -> bool {
        self.reply.is_empty() && self.to_host.is_empty()
    }

    /// Writes buffered bytes to the host socket until it would block; shuts down the host
    /// socket's writing side once the guest will send no more and the buffer is empty.
    pub fn flush_to_host(&mut self) -> io::Result<()> {
        while !self.reply.is_empty() {
            match send_nb(&self.stream, &self.reply)? {
                Some(n) => drop(self.reply.drain(..n)),
                None => return Ok(()),
            }
        }
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match send_nb(&self.stream, front)? {
                Some(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                None => return Ok(()),
            }
        }
        if self.peer_shutdown & super::packet::shutdown::SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// Reads up to `max` bytes (bounded by the guest's credit) from the host socket.
    pub fn read_from_host(&mut self, max: usize) -> io::Result<HostRead> {
        let n = max.min(self.peer_credit() as usize);
        if n == 0 {
            return Ok(HostRead::WouldBlock);
        }
        let mut buf = vec![0u8; n];
        // SAFETY: reading into our own buffer of `n` bytes.
        let got = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                n,
                libc::MSG_DONTWAIT,
            )
        };
        match got {
            0 => Ok(HostRead::Eof),
            n if n > 0 => {
                buf.truncate(n as usize);
                self.rx_cnt += Wrapping(n as u32);
                Ok(HostRead::Data(buf))
            }
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {
                        Ok(HostRead::WouldBlock)
                    }
                    _ => Err(e),
                }
            }
        }
    }
}

/// One non-blocking send: `Some(bytes sent)`, or `None` if the socket is full.
pub fn send_nb(stream: &UnixStream, data: &[u8]) -> io::Result<Option<usize>> {
    // SAFETY: sending from our own buffer.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        (Connection::new(a, ConnState::Established, CONN_BUF_SIZE), b)
    }

    #[test]
    fn credit_tracks_what_the_guest_consumed() {
        let (mut c, mut peer) = pair();
        assert_eq!(
            c.peer_credit(),
            0,
            "no credit before the guest advertises any"
        );
        assert_eq!(c.read_from_host(100).expect("read"), HostRead::WouldBlock);
        c.update_peer_credit(10, 0);
        peer.write_all(b"0123456789abcdef").expect("write");
        assert_eq!(
            c.read_from_host(100).expect("read"),
            HostRead::Data(b"0123456789".to_vec())
        );
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.wants_to_send());
        c.update_peer_credit(10, 4);
        assert_eq!(c.peer_credit(), 4);
        assert_eq!(
            c.read_from_host(100).expect("read"),
            HostRead::Data(b"abcd".to_vec())
        );
        c.update_peer_credit(10, 14);
        assert_eq!(
            c.read_from_host(100).expect("read"),
            HostRead::Data(b"ef".to_vec())
        );
        assert_eq!(c.read_from_host(100).expect("read"), HostRead::WouldBlock);
        drop(peer);
        assert_eq!(c.read_from_host(100).expect("read"), HostRead::Eof);
    }

    #[test]
    fn guest_data_is_bounded_flushed_and_counted() {
        let (mut c, mut peer) = pair();
        c.set_reply("OK 1073741824\n".into());
        assert!(c.push_from_guest(b"hello"));
        assert!(
            !c.push_from_guest(&vec![0u8; CONN_BUF_SIZE as usize]),
            "overrunning the credit is refused"
        );
        c.flush_to_host().expect("flush");
        assert!(c.flushed());
        let mut got = [0u8; 19];
        peer.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"OK 1073741824\nhello");
        assert_eq!(
            c.advertise(),
            (CONN_BUF_SIZE, 5),
            "the reply line is not guest data"
        );
        assert!(!c.needs_credit_update());
        assert!(c.push_from_guest(&vec![1u8; CONN_BUF_SIZE as usize / 4]));
        c.flush_to_host().expect("flush");
        assert!(c.needs_credit_update());
        c.advertise();
        assert!(!c.needs_credit_update());
        c.peer_shutdown = super::super::packet::shutdown::SEND;
        c.flush_to_host().expect("flush");
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest)
            .expect("EOF after the guest's SHUTDOWN(SEND)");
        assert_eq!(rest.len(), CONN_BUF_SIZE as usize / 4);
    }
}
