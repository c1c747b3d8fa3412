//! The muxer's host side: the listener's new clients, their CONNECT lines, readiness and
//! hang-ups of connected host sockets, and the deadline timer, all reported by the
//! muxer's epoll set.

use super::{ConnKey, ConnState, Connection, LineRead, VsockMuxer, MAX_CONNECTIONS};
use crate::devices::virtio::vsock::packet::{op, shutdown};
use crate::devices::virtio::vsock::sockets::accept_nb;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;
use vmm_sys_util::epoll::{EpollEvent, EventSet};

impl VsockMuxer {
    /// Serves ready host sockets and passed deadlines: accepts clients, reads CONNECT
    /// lines, notes readable connections, flushes writable ones, handles hang-ups and
    /// resets connections the guest let time out. Never blocks.
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
            if fd == self.listener.as_raw_fd() {
                self.accept_clients();
            } else if fd == self.deadlines.timer_fd() {
                self.deadlines.clear_timer();
            } else if self.pending.contains(fd) {
                if let LineRead::Connect(port, stream) = self.pending.read_line(fd) {
                    self.host_connect(port, stream);
                }
            } else if let Some(&key) = self.fds.get(&fd) {
                self.host_socket_event(key, event.event_set());
            }
        }
        let now = Instant::now();
        self.expire_deadlines(now);
        self.deadlines.rearm(now);
    }

    fn accept_clients(&mut self) {
        loop {
            match accept_nb(&self.listener) {
                Ok(stream) => {
                    if !self.pending.make_room() {
                        // Refused (closed) rather than left in the backlog, which would
                        // keep the listener readable and the VMM loop spinning.
                        tracing::debug!(
                            "vsock: too many clients have not sent CONNECT yet; refusing another"
                        );
                        continue;
                    }
                    if let Err(e) = self.watch(stream.as_raw_fd()) {
                        tracing::warn!("vsock: cannot watch a host client: {e}");
                        continue;
                    }
                    self.pending.add(stream);
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

    /// A host client asked for guest port `port`: send the guest a REQUEST, which it
    /// must answer within the response deadline. (Dropping `stream` closes the client.)
    fn host_connect(&mut self, port: u32, stream: UnixStream) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::debug!("vsock: too many connections, refusing a host client");
            return;
        }
        let Some(buf_alloc) = self.reserve_buffer() else {
            return;
        };
        let key = self.allocate_key(port);
        self.insert(
            key,
            Connection::new(stream, ConnState::LocalInit, buf_alloc),
        );
        self.set_deadline(key, Instant::now() + self.limits.response);
        self.queue_control(key, op::REQUEST, 0);
        tracing::debug!(
            "vsock: host client connecting to guest port {port} from host port {}",
            key.local_port
        );
    }

    fn host_socket_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            conn.readable = true;
        }
        if set.contains(EventSet::HANG_UP) && !conn.host_hung_up {
            self.host_hung_up(key);
        }
        if set.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            self.flush(key);
        }
        self.mark_ready(key);
    }

    /// The host end closed both directions. A client that left before the guest answered
    /// is dropped; otherwise the guest gets what the host left, then a SHUTDOWN of both
    /// directions, and must close the connection (or keep taking data) within the shutdown
    /// deadline.
    fn host_hung_up(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.host_hung_up = true;
        match conn.state {
            ConnState::LocalInit => {
                tracing::debug!("vsock: {key:?}: the host client left before the guest answered");
                self.reset(key);
                return;
            }
            // The flush that follows finishes it, or fails and resets it.
            ConnState::Draining => return,
            ConnState::Established => {}
        }
        if conn.host_eof {
            // It had closed its sending side before; now its receiving side is gone too.
            self.queue_control(key, op::SHUTDOWN, shutdown::BOTH);
        } else if conn.peer_shutdown & shutdown::RCV != 0 {
            // The guest takes no more data: nothing is left to deliver.
            self.host_input_ended(key);
        }
        self.set_deadline(key, Instant::now() + self.limits.shutdown);
    }

    /// The host end sent all it will: finish a connection the guest shut down too, or
    /// tell the guest with a SHUTDOWN (of both directions if the host end is gone).
    pub(super) fn host_input_ended(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.host_eof = true;
        if conn.peer_shutdown & shutdown::SEND != 0 {
            conn.state = ConnState::Draining;
            self.flush(key);
        } else {
            let flags = if conn.host_hung_up {
                shutdown::BOTH
            } else {
                shutdown::SEND
            };
            self.queue_control(key, op::SHUTDOWN, flags);
        }
    }
}
