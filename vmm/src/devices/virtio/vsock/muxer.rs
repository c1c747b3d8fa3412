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
//! The muxer is a state machine fed with guest packets ([`VsockMuxer::send_pkt`]) and
//! host socket readiness ([`VsockMuxer::process_host_events`]), producing packets for the
//! guest ([`VsockMuxer::recv_pkt`]). Every host socket is non-blocking and watched by the
//! muxer's own epoll set, whose single fd ([`VsockMuxer::epoll_fd`]) the VMM loop polls.

use super::conn::{ConnState, Connection, HostRead};
use super::packet::{op, shutdown, Packet, VsockHeader, HOST_CID, MAX_PKT_PAYLOAD, TYPE_STREAM};
use super::uds::UdsPath;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::ops::Bound;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// First host port of host-initiated connections.
pub const EPHEMERAL_PORT_BASE: u32 = 1 << 30;
/// Most connections at once; further requests are reset.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host clients that connected but have not sent their CONNECT line yet.
pub const MAX_PENDING_CLIENTS: usize = 64;
/// Most control packets (RESPONSE, RST, ...) waiting for RX buffers; more are dropped.
pub const MAX_CONTROL_PACKETS: usize = 4096;
/// How long a host client may take to send its CONNECT line; once the pending slots are
/// full, clients that took longer are dropped to make room.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;

/// Errors setting up the muxer.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// `uds_path` exists and is not a socket: refuse to delete it.
    #[error("vsock uds_path '{0}' exists and is not a socket")]
    NotASocket(PathBuf),
    /// The listener or epoll set could not be created.
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

/// A host client that has not sent its CONNECT line yet.
#[derive(Debug)]
struct PendingClient {
    stream: UnixStream,
    line: Vec<u8>,
    since: Instant,
}

/// Maps guest vsock connections to host Unix sockets.
#[derive(Debug)]
pub struct VsockMuxer {
    guest_cid: u64,
    uds: UdsPath,
    listener: UnixListener,
    epoll: Epoll,
    conns: BTreeMap<ConnKey, Connection>,
    fds: HashMap<RawFd, ConnKey>,
    pending: HashMap<RawFd, PendingClient>,
    /// See [`CONNECT_DEADLINE`].
    connect_deadline: Duration,
    control: VecDeque<Control>,
    next_port: u32,
    /// Round-robin position for host data.
    cursor: Option<ConnKey>,
    /// The listener is in the epoll set.
    armed: bool,
}

/// Non-blocking accept4 (no fcntl or ioctl afterwards: the VMM seccomp filter has neither).
fn accept_nb(listener: &UnixListener) -> io::Result<UnixStream> {
    // SAFETY: accept4 with null address pointers; the returned fd is new and ours.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    Ok(unsafe { UnixStream::from_raw_fd(fd) })
}

/// Non-blocking connect to the Unix socket at `path` (fails rather than waits when the
/// listener's backlog is full).
fn connect_nb(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2); the fd is ours.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns; dropping `stream` closes it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    if unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// Parses `CONNECT <port>` (without the newline).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    text.strip_prefix("CONNECT ")?.trim().parse().ok()
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
        tracing::debug!(
            "vsock: guest CID {guest_cid}, listening on {}",
            uds_path.display()
        );
        Ok(VsockMuxer {
            guest_cid,
            uds,
            listener,
            epoll,
            conns: BTreeMap::new(),
            fds: HashMap::new(),
            pending: HashMap::new(),
            connect_deadline: CONNECT_DEADLINE,
            control: VecDeque::new(),
            next_port: EPHEMERAL_PORT_BASE,
            cursor: None,
            armed: false,
        })
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

    /// The epoll fd that becomes readable when a host socket needs attention.
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

    /// Drops every connection and queued packet (the driver reset the device).
    pub fn clear(&mut self) {
        self.conns.clear();
        self.fds.clear();
        self.control.clear();
        self.pending.clear();
        self.cursor = None;
    }

    fn queue_control(&mut self, key: ConnKey, op: u16, flags: u32) {
        if self.control.len() >= MAX_CONTROL_PACKETS {
            tracing::debug!("vsock: control queue full, dropping op {op} for {key:?}");
            return;
        }
        self.control.push_back(Control { key, op, flags });
    }

    fn reset(&mut self, key: ConnKey) {
        self.remove(key);
        self.queue_control(key, op::RST, 0);
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            self.fds.remove(&conn.stream.as_raw_fd());
            tracing::debug!("vsock: connection {key:?} closed");
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
            }
        }
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
        let fd = stream.as_raw_fd();
        if let Err(e) = self.watch(fd) {
            tracing::warn!("vsock: cannot watch a host socket: {e}");
            self.queue_control(key, op::RST, 0);
            return;
        }
        let mut conn = Connection::new(stream, ConnState::Established);
        conn.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        self.conns.insert(key, conn);
        self.fds.insert(fd, key);
        self.queue_control(key, op::RESPONSE, 0);
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

    /// Serves ready host sockets: accepts clients, reads CONNECT lines, notes readable
    /// connections and flushes writable ones. Never blocks.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("vsock: epoll_wait failed: {e}");
                return;
            }
        };
        for event in &events[..n] {
            let fd = event.data() as RawFd;
            let set = event.event_set();
            if fd == self.listener.as_raw_fd() {
                self.accept_clients();
            } else if self.pending.contains_key(&fd) {
                self.read_connect_line(fd);
            } else if let Some(&key) = self.fds.get(&fd) {
                if set.intersects(
                    EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR,
                ) {
                    if let Some(conn) = self.conns.get_mut(&key) {
                        conn.readable = true;
                    }
                }
                if set.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
                    self.flush(key);
                }
            }
        }
    }

    fn accept_clients(&mut self) {
        loop {
            match accept_nb(&self.listener) {
                Ok(stream) => {
                    if self.pending.len() >= MAX_PENDING_CLIENTS {
                        self.drop_stale_clients();
                    }
                    if self.pending.len() >= MAX_PENDING_CLIENTS {
                        // Refused (closed) rather than left in the backlog, which would
                        // keep the listener readable and the VMM loop spinning.
                        tracing::debug!("vsock: {MAX_PENDING_CLIENTS} clients have not sent CONNECT yet; refusing another");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if let Err(e) = self.watch(fd) {
                        tracing::warn!("vsock: cannot watch a host client: {e}");
                        continue;
                    }
                    self.pending.insert(
                        fd,
                        PendingClient {
                            stream,
                            line: Vec::new(),
                            since: Instant::now(),
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::warn!("vsock: accept failed: {e}");
                    }
                    return;
                }
            }
        }
    }

    /// Drops the host clients that did not send their CONNECT line within
    /// [`Self::connect_deadline`] (closing them).
    fn drop_stale_clients(&mut self) {
        let deadline = self.connect_deadline;
        let before = self.pending.len();
        self.pending.retain(|_, c| c.since.elapsed() < deadline);
        let dropped = before - self.pending.len();
        if dropped > 0 {
            tracing::debug!(
                "vsock: dropped {dropped} host clients that sent no CONNECT in {deadline:?}"
            );
        }
    }

    /// Sets how long host clients may take to send their CONNECT line (tests).
    #[cfg(test)]
    pub(crate) fn set_connect_deadline(&mut self, deadline: Duration) {
        self.connect_deadline = deadline;
    }

    /// Reads a pending client's CONNECT line one byte at a time, so that no data after it
    /// is consumed; on a complete line, asks the guest for the connection.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(client) = self.pending.get_mut(&fd) else {
            return;
        };
        let port = loop {
            let mut byte = 0u8;
            // SAFETY: reading one byte into a local.
            let n = unsafe { libc::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_DONTWAIT) };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                return;
            }
            if n <= 0 {
                tracing::debug!("vsock: host client left before CONNECT");
                self.pending.remove(&fd);
                return;
            }
            if byte == b'\n' {
                break parse_connect(&client.line);
            }
            client.line.push(byte);
            if client.line.len() > MAX_CONNECT_LINE {
                break None;
            }
        };
        let Some(client) = self.pending.remove(&fd) else {
            return;
        };
        let Some(port) = port else {
            tracing::debug!(
                "vsock: bad CONNECT line {:?} from a host client",
                String::from_utf8_lossy(&client.line)
            );
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::debug!("vsock: too many connections, refusing a host client");
            return;
        }
        let key = self.allocate_key(port);
        self.conns
            .insert(key, Connection::new(client.stream, ConnState::LocalInit));
        self.fds.insert(fd, key);
        self.queue_control(key, op::REQUEST, 0);
        tracing::debug!(
            "vsock: host client connecting to guest port {port} from host port {}",
            key.local_port
        );
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

    /// Whether a packet is ready for the guest.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || self.conns.values().any(Connection::wants_to_send)
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
    /// packets first, then host data from the connections in turn.
    pub fn recv_pkt(&mut self, max_payload: usize) -> Option<Packet> {
        loop {
            if let Some(c) = self.control.pop_front() {
                return Some(Packet {
                    hdr: self.header(c.key, c.op, c.flags, 0),
                    payload: Vec::new(),
                });
            }
            if max_payload == 0 {
                return None;
            }
            let start = self.cursor.map_or(Bound::Unbounded, Bound::Excluded);
            let key = self
                .conns
                .range((start, Bound::Unbounded))
                .chain(self.conns.range(..))
                .find(|(_, c)| c.wants_to_send())
                .map(|(k, _)| *k)?;
            self.cursor = Some(key);
            let conn = self.conns.get_mut(&key)?;
            match conn.read_from_host(max_payload.min(MAX_PKT_PAYLOAD)) {
                Ok(HostRead::Data(payload)) => {
                    let hdr = self.header(key, op::RW, 0, payload.len() as u32);
                    return Some(Packet { hdr, payload });
                }
                Ok(HostRead::WouldBlock) => conn.readable = false,
                Ok(HostRead::Eof) => {
                    conn.host_eof = true;
                    if conn.peer_shutdown & shutdown::SEND != 0 {
                        conn.state = ConnState::Draining;
                        self.flush(key);
                    } else {
                        self.queue_control(key, op::SHUTDOWN, shutdown::SEND);
                    }
                }
                Err(e) => {
                    tracing::debug!("vsock: {key:?}: host socket read failed ({e}): reset");
                    self.reset(key);
                }
            }
        }
    }
}
