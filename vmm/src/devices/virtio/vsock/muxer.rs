//! The vsock muxer: Firecracker's host model, mapping guest vsock streams to host Unix
//! sockets.
//!
//! - Host-initiated: a host client connects to the listener at `uds_path` and writes
//!   `CONNECT <port>\n`; the muxer sends the guest a REQUEST from a host port at or above
//!   [`EPHEMERAL_PORT_BASE`] and, once the guest answers RESPONSE, writes `OK <host port>\n`
//!   to the client. Then bytes flow both ways.
//! - Guest-initiated: a guest REQUEST to host port P connects to `<uds_path>_P`; success
//!   is answered with RESPONSE, failure with RST.
//!
//! `uds_path` may be longer than a Unix socket address holds (see [`super::uds`]).
//!
//! What a guest or a host client can hold is bounded: at most [`MAX_CONNECTIONS`]
//! connections, whose buffers of guest data share one budget ([`Limits::buffer_budget`];
//! each connection reserves its `buf_alloc` from it when it is made and advertises no
//! more); at most [`MAX_PENDING_CLIENTS`] host clients that have not sent
//! their CONNECT line; a guest that does not answer a connection request within
//! [`Limits::response`], or does not close a connection within [`Limits::shutdown`] of the
//! host end going away (while it takes none of the remaining data), has the connection
//! reset. Connections with data for the guest wait in a FIFO queue, served in turn, so each
//! packet costs the same however many connections are open.
//!
//! The muxer is a state machine fed with guest packets ([`VsockMuxer::send_pkt`]) and
//! host socket readiness ([`VsockMuxer::process_host_events`]), producing packets for the
//! guest ([`VsockMuxer::recv_pkt`]). Every host socket is non-blocking and watched by the
//! muxer's own epoll set, whose single fd ([`VsockMuxer::epoll_fd`]) the VMM loop polls.

use super::conn::{ConnState, Connection, HostRead, CONN_BUF_SIZE};
use super::deadlines::{ConnId, Deadlines};
use super::packet::{op, shutdown, Packet, VsockHeader, HOST_CID, MAX_PKT_PAYLOAD, TYPE_STREAM};
use super::pending::{LineRead, PendingClients};
use super::sockets::connect_nb;
use super::uds::UdsPath;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Instant;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

mod host_events;
mod limits;

pub use super::pending::MAX_PENDING_CLIENTS;
pub use limits::{Limits, MIN_CONN_BUF};

/// First host port of host-initiated connections.
pub const EPHEMERAL_PORT_BASE: u32 = 1 << 30;
/// Most connections at once; further requests are reset.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most control packets (RESPONSE, RST, ...) waiting for RX buffers; more are dropped.
pub const MAX_CONTROL_PACKETS: usize = 4096;
/// Errors setting up the muxer.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// `uds_path` exists and is not a socket: refuse to delete it.
    #[error("vsock uds_path '{0}' exists and is not a socket")]
    NotASocket(PathBuf),
    /// The listener, epoll set or timer could not be created.
    #[error("cannot {what} for vsock at '{path}': {source}")]
    Io {
        /// What failed.
        what: &'static str,
        /// The uds path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

/// A connection's ports: ours (the host's) and the guest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnKey {
    /// The host-side port.
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
}

impl ConnKey {
    fn of_guest_packet(hdr: &VsockHeader) -> Self {
        ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        }
    }
}

/// A control packet waiting for an RX buffer.
#[derive(Debug, Clone, Copy)]
struct Control {
    key: ConnKey,
    op: u16,
    flags: u32,
}

/// Maps guest vsock connections to host Unix sockets.
#[derive(Debug)]
pub struct VsockMuxer {
    guest_cid: u64,
    uds: UdsPath,
    listener: UnixListener,
    epoll: Epoll,
    limits: Limits,
    conns: HashMap<ConnKey, Connection>,
    fds: HashMap<RawFd, ConnKey>,
    pending: PendingClients,
    control: VecDeque<Control>,
    /// Connections that may have data for the guest, in the order they are served.
    ready: VecDeque<ConnKey>,
    deadlines: Deadlines,
    /// The sum of the connections' `buf_alloc`.
    buffer_reserved: usize,
    next_serial: u64,
    next_port: u32,
    /// The listener is in the epoll set.
    armed: bool,
}

impl VsockMuxer {
    /// Binds the listener at `uds_path` (replacing a stale socket file there) for a guest
    /// with CID `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        let err = |what| {
            move |source| MuxerError::Io {
                what,
                path: uds_path.to_path_buf(),
                source,
            }
        };
        match std::fs::symlink_metadata(uds_path) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(uds_path).map_err(err("remove the stale socket"))?
            }
            Ok(_) => return Err(MuxerError::NotASocket(uds_path.to_path_buf())),
            Err(_) => {}
        }
        let uds = UdsPath::new(uds_path).map_err(err("place the socket"))?;
        let listener = UnixListener::bind(uds.address("")).map_err(err("bind the socket"))?;
        listener
            .set_nonblocking(true)
            .map_err(err("make the socket non-blocking"))?;
        let epoll = Epoll::new().map_err(err("create an epoll set"))?;
        let deadlines = Deadlines::new().map_err(err("create a timer"))?;
        let timer = deadlines.timer_fd();
        epoll
            .ctl(
                ControlOperation::Add,
                timer,
                EpollEvent::new(EventSet::IN, timer as u64),
            )
            .map_err(err("watch the timer"))?;
        tracing::debug!(
            "vsock: guest CID {guest_cid}, listening on {}",
            uds_path.display()
        );
        let limits = Limits::default();
        Ok(VsockMuxer {
            guest_cid,
            uds,
            listener,
            epoll,
            limits,
            conns: HashMap::new(),
            fds: HashMap::new(),
            pending: PendingClients::new(limits.connect),
            control: VecDeque::new(),
            ready: VecDeque::new(),
            deadlines,
            buffer_reserved: 0,
            next_serial: 0,
            next_port: EPHEMERAL_PORT_BASE,
            armed: false,
        })
    }

    /// Sets the deadlines and the buffer budget (tests).
    #[cfg(test)]
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        self.pending.set_deadline(limits.connect);
    }

    /// Bytes of the buffer budget the open connections hold (tests).
    #[cfg(test)]
    pub(crate) fn buffer_reserved(&self) -> usize {
        self.buffer_reserved
    }

    /// Starts watching the listener (once; later calls do nothing). Until then host
    /// clients wait in its backlog, so that the epoll fd does not stay readable while
    /// there is no driver to serve them. Call it on the thread that serves the events.
    pub fn arm(&mut self) {
        if self.armed {
            return;
        }
        let fd = self.listener.as_raw_fd();
        match self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, fd as u64),
        ) {
            Ok(()) => self.armed = true,
            Err(e) => tracing::warn!("vsock: cannot watch {}: {e}", self.uds.path().display()),
        }
    }

    /// The epoll fd that becomes readable when a host socket or a deadline needs
    /// attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The listener's path.
    pub fn uds_path(&self) -> &Path {
        self.uds.path()
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Drops every connection and queued packet (the driver reset the device). Runs on a
    /// vCPU thread: no system call but closing the sockets.
    pub fn clear(&mut self) {
        self.conns.clear();
        self.fds.clear();
        self.control.clear();
        self.pending.clear();
        self.ready.clear();
        self.deadlines.clear();
        self.buffer_reserved = 0;
    }

    fn queue_control(&mut self, key: ConnKey, op: u16, flags: u32) {
        if self.control.len() >= MAX_CONTROL_PACKETS {
            tracing::debug!("vsock: control queue full, dropping op {op} for {key:?}");
            return;
        }
        self.control.push_back(Control { key, op, flags });
    }

    fn insert(&mut self, key: ConnKey, mut conn: Connection) {
        self.next_serial += 1;
        conn.book.serial = self.next_serial;
        self.fds.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
    }

    fn reset(&mut self, key: ConnKey) {
        self.remove(key);
        self.queue_control(key, op::RST, 0);
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            self.fds.remove(&conn.stream.as_raw_fd());
            self.buffer_reserved = self
                .buffer_reserved
                .saturating_sub(conn.buf_alloc() as usize);
            if conn.book.queued {
                self.ready.retain(|k| *k != key);
            }
            tracing::debug!("vsock: connection {key:?} closed");
        }
    }

    /// Queues a connection for the guest if it has data to send and is not queued yet.
    fn mark_ready(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if !conn.book.queued && conn.wants_to_send() {
                conn.book.queued = true;
                self.ready.push_back(key);
            }
        }
    }

    fn watch(&mut self, fd: RawFd) -> io::Result<()> {
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, fd as u64),
        )
    }

    /// Handles a packet the guest put on the TX queue.
    pub fn send_pkt(&mut self, pkt: Packet) {
        let hdr = pkt.hdr;
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            tracing::debug!(
                "vsock: dropping a packet from CID {} to CID {}",
                hdr.src_cid,
                hdr.dst_cid
            );
            return;
        }
        let key = ConnKey::of_guest_packet(&hdr);
        if hdr.type_ != TYPE_STREAM || !(op::REQUEST..=op::CREDIT_REQUEST).contains(&hdr.op) {
            tracing::debug!(
                "vsock: packet with type {} op {} for {key:?}: reset",
                hdr.type_,
                hdr.op
            );
            if hdr.op != op::RST {
                self.reset(key);
            }
            return;
        }
        if hdr.op == op::REQUEST {
            self.guest_connect(key, &hdr);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if hdr.op != op::RST {
                tracing::debug!("vsock: op {} for unknown connection {key:?}: reset", hdr.op);
                self.queue_control(key, op::RST, 0);
            }
            return;
        };
        conn.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        match (hdr.op, conn.state) {
            (op::RST, _) => self.remove(key),
            (op::RESPONSE, ConnState::LocalInit) => {
                conn.state = ConnState::Established;
                conn.book.expires = None;
                conn.set_reply(format!("OK {}\n", key.local_port));
                self.flush(key);
            }
            (op::RW, ConnState::Established) if conn.peer_shutdown & shutdown::SEND == 0 => {
                if !conn.push_from_guest(&pkt.payload) {
                    tracing::debug!("vsock: {key:?}: the guest overran its credit: reset");
                    self.reset(key);
                    return;
                }
                self.flush(key);
            }
            (op::SHUTDOWN, ConnState::Established | ConnState::Draining) => {
                conn.peer_shutdown |= hdr.flags & shutdown::BOTH;
                if conn.peer_shutdown == shutdown::BOTH
                    || (conn.peer_shutdown & shutdown::SEND != 0 && conn.host_eof)
                {
                    conn.state = ConnState::Draining;
                }
                self.flush(key);
            }
            (op::CREDIT_UPDATE, _) => {}
            (op::CREDIT_REQUEST, _) => {
                if !conn.credit_update_queued {
                    conn.credit_update_queued = true;
                    self.queue_control(key, op::CREDIT_UPDATE, 0);
                }
            }
            (op, state) => {
                tracing::debug!("vsock: op {op} unexpected on {key:?} in state {state:?}: reset");
                self.reset(key);
                return;
            }
        }
        // The packet may have brought credit, or established the connection.
        self.mark_ready(key);
    }

    fn guest_connect(&mut self, key: ConnKey, hdr: &VsockHeader) {
        if self.conns.contains_key(&key) {
            tracing::debug!("vsock: REQUEST for the existing connection {key:?}: reset");
            self.reset(key);
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::debug!("vsock: too many connections, refusing {key:?}");
            self.queue_control(key, op::RST, 0);
            return;
        }
        let path = self.uds.address(&format!("_{}", key.local_port));
        let stream = match connect_nb(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(
                    "vsock: guest connection to port {} refused ({}_{}: {e})",
                    key.local_port,
                    self.uds.path().display(),
                    key.local_port
                );
                self.queue_control(key, op::RST, 0);
                return;
            }
        };
        let Some(buf_alloc) = self.reserve_buffer() else {
            self.queue_control(key, op::RST, 0);
            return;
        };
        if let Err(e) = self.watch(stream.as_raw_fd()) {
            tracing::warn!("vsock: cannot watch a host socket: {e}");
            self.buffer_reserved -= buf_alloc as usize;
            self.queue_control(key, op::RST, 0);
            return;
        }
        let mut conn = Connection::new(stream, ConnState::Established, buf_alloc);
        conn.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        self.insert(key, conn);
        self.queue_control(key, op::RESPONSE, 0);
        self.mark_ready(key);
        tracing::debug!(
            "vsock: guest port {} connected to host port {}",
            key.peer_port,
            key.local_port
        );
    }

    /// Writes what a connection buffered for its host socket; finishes a draining one.
    fn flush(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Err(e) = conn.flush_to_host() {
            tracing::debug!("vsock: {key:?}: host socket write failed ({e}): reset");
            self.reset(key);
            return;
        }
        if conn.state == ConnState::Draining && conn.flushed() {
            self.reset(key);
            return;
        }
        if conn.needs_credit_update() && !conn.credit_update_queued {
            conn.credit_update_queued = true;
            self.queue_control(key, op::CREDIT_UPDATE, 0);
        }
    }

    /// After a restore: host ports for new connections start at a random point of the
    /// ephemeral range, so they do not meet the guest's sockets of connections made before
    /// the snapshot (which the guest may hold until their owners close them), in this
    /// clone or any other of the same snapshot.
    pub fn move_ports_past_snapshot(&mut self) {
        let mut bytes = [0u8; 4];
        // SAFETY: getrandom fills the 4-byte buffer it is given.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        let offset = if n == 4 {
            u32::from_le_bytes(bytes) % (1 << 29)
        } else {
            0
        };
        self.next_port = EPHEMERAL_PORT_BASE + (1 << 20) + offset;
    }

    fn allocate_key(&mut self, peer_port: u32) -> ConnKey {
        loop {
            let key = ConnKey {
                local_port: self.next_port,
                peer_port,
            };
            self.next_port = self.next_port.checked_add(1).unwrap_or(EPHEMERAL_PORT_BASE);
            if !self.conns.contains_key(&key) {
                return key;
            }
        }
    }

    /// Whether a packet may be ready for the guest (a queued connection may turn out to
    /// have nothing after all; [`Self::recv_pkt`] then returns `None`).
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    fn header(&mut self, key: ConnKey, op: u16, flags: u32, len: u32) -> VsockHeader {
        let (buf_alloc, fwd_cnt) = match self.conns.get_mut(&key) {
            Some(conn) => {
                if op == op::CREDIT_UPDATE {
                    conn.credit_update_queued = false;
                }
                conn.advertise()
            }
            None => (0, 0),
        };
        VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// The next packet for the guest, with at most `max_payload` bytes of data: control
    /// packets first, then host data from the ready connections in turn.
    pub fn recv_pkt(&mut self, max_payload: usize) -> Option<Packet> {
        loop {
            if let Some(c) = self.control.pop_front() {
                if c.op != op::RST && !self.conns.contains_key(&c.key) {
                    continue; // The connection closed since: only its RST still matters.
                }
                return Some(Packet {
                    hdr: self.header(c.key, c.op, c.flags, 0),
                    payload: Vec::new(),
                });
            }
            if max_payload == 0 {
                return None;
            }
            let key = self.ready.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.book.queued = false;
            if !conn.wants_to_send() {
                continue;
            }
            match conn.read_from_host(max_payload.min(MAX_PKT_PAYLOAD)) {
                Ok(HostRead::Data(payload)) => {
                    if conn.host_hung_up {
                        // The guest is taking what the host left: give it more time.
                        conn.book.expires = Some(Instant::now() + self.limits.shutdown);
                    }
                    let hdr = self.header(key, op::RW, 0, payload.len() as u32);
                    self.mark_ready(key);
                    return Some(Packet { hdr, payload });
                }
                Ok(HostRead::WouldBlock) => conn.readable = false,
                Ok(HostRead::Eof) => self.host_input_ended(key),
                Err(e) => {
                    tracing::debug!("vsock: {key:?}: host socket read failed ({e}): reset");
                    self.reset(key);
                }
            }
        }
    }
}
