//! What the muxer lets a guest and host clients hold: deadlines, and the budget of guest
//! data that connections buffer for their host sockets.

use super::{ConnId, ConnKey, ConnState, VsockMuxer, CONN_BUF_SIZE};
use std::time::{Duration, Instant};

/// The smallest buffer a connection is made with; when the budget has less left, new
/// connections are refused.
pub const MIN_CONN_BUF: u32 = 4096;

/// How long host clients and the guest may take, and how much guest data the muxer
/// buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a host client may take to send its CONNECT line; once the pending slots
    /// are full, clients that took longer are dropped to make room.
    pub connect: Duration,
    /// How long the guest may take to answer a host client's connection request; then the
    /// connection is reset and the client closed.
    pub response: Duration,
    /// Once the host end of a connection hung up, how long the guest may go without taking
    /// data or closing the connection; then it is reset.
    pub shutdown: Duration,
    /// Bytes of guest data all connections together may buffer for their host sockets.
    pub buffer_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect: Duration::from_secs(10),
            response: Duration::from_secs(5),
            shutdown: Duration::from_secs(8),
            buffer_budget: 64 << 20,
        }
    }
}

impl VsockMuxer {
    /// Takes a new connection's buffer from the budget: the full size while there is
    /// enough, what is left (in whole pages) after that, nothing below [`MIN_CONN_BUF`].
    pub(super) fn reserve_buffer(&mut self) -> Option<u32> {
        let left = self
            .limits
            .buffer_budget
            .saturating_sub(self.buffer_reserved);
        let size = left.min(CONN_BUF_SIZE as usize) as u32 & !(MIN_CONN_BUF - 1);
        if size < MIN_CONN_BUF {
            tracing::debug!(
                "vsock: the buffer budget of {} bytes is taken",
                self.limits.buffer_budget
            );
            return None;
        }
        self.buffer_reserved += size as usize;
        Some(size)
    }

    /// Resets the connection at `at` unless it has moved on by then.
    pub(super) fn set_deadline(&mut self, key: ConnKey, at: Instant) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.book.expires = Some(at);
        if !conn.book.scheduled {
            conn.book.scheduled = true;
            let id = ConnId {
                key,
                serial: conn.book.serial,
            };
            self.deadlines.schedule(at, id);
        }
    }

    /// Resets the connections whose deadline passed.
    pub(super) fn expire_deadlines(&mut self, now: Instant) {
        while let Some((_, id)) = self.deadlines.pop_due(now) {
            let Some(conn) = self.conns.get_mut(&id.key) else {
                continue;
            };
            if conn.book.serial != id.serial {
                continue;
            }
            conn.book.scheduled = false;
            match conn.book.expires {
                None => {}
                Some(at) if at > now => {
                    conn.book.scheduled = true;
                    self.deadlines.schedule(at, id);
                }
                Some(_) => {
                    tracing::debug!(
                        "vsock: {:?}: the guest did not {} in time: reset",
                        id.key,
                        if conn.state == ConnState::LocalInit {
                            "answer the connection request"
                        } else {
                            "close the connection"
                        }
                    );
                    self.reset(id.key);
                }
            }
        }
    }
}
