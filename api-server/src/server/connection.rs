//! One client connection of the API server: its buffers, its parsing of pipelined
//! requests, its writing of answers, and its deadline.

use super::{OUTPUT_HIGH_WATER, READ_CHUNK, SHRINK_ABOVE};
use crate::http::{self, Parsed, Request, Response};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::EventSet;

/// How long a connection may take, per state.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadlines {
    pub(super) request: Duration,
    pub(super) idle: Duration,
}

/// One client connection.
pub(super) struct Connection {
    pub(super) fd: OwnedFd,
    /// Bytes received and not yet consumed by a request.
    input: Vec<u8>,
    /// Response bytes; `output[written..]` are still to send.
    output: Vec<u8>,
    written: usize,
    /// Don't parse again before `input` holds this many bytes.
    need: usize,
    /// `100 Continue` already sent for the request being received.
    continue_sent: bool,
    /// No more requests: close once the output is sent.
    closing: bool,
    /// The events registered with epoll.
    pub(super) registered: EventSet,
    /// How long each state may last.
    deadlines: Deadlines,
    /// When the connection is closed unless it moves on; see [`Self::renew_deadline`].
    pub(super) deadline: Instant,
    /// Whether `deadline` counts a request in progress (else idleness).
    deadline_for_request: bool,
}

impl Connection {
    pub(super) fn new(fd: OwnedFd, deadlines: Deadlines) -> Self {
        Connection {
            deadlines,
            deadline: Instant::now() + deadlines.idle,
            deadline_for_request: false,
            fd,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            need: 0,
            continue_sent: false,
            closing: false,
            registered: EventSet::IN,
        }
    }

    fn pending(&self) -> usize {
        self.output.len() - self.written
    }

    /// Whether part of a request has arrived.
    pub(super) fn in_request(&self) -> bool {
        !self.input.is_empty()
    }

    /// After an event: a request that has started keeps the deadline set when its first
    /// byte came; a connection that became idle (or is still writing its answers, which
    /// the client may read slowly) gets the idle deadline from now.
    pub(super) fn renew_deadline(&mut self) {
        let now = Instant::now();
        if self.in_request() && self.pending() == 0 {
            if !self.deadline_for_request {
                self.deadline = now + self.deadlines.request;
                self.deadline_for_request = true;
            }
        } else {
            self.deadline = now + self.deadlines.idle;
            self.deadline_for_request = false;
        }
    }

    /// The events worth waiting for now.
    pub(super) fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if !self.closing && self.pending() <= OUTPUT_HIGH_WATER {
            set |= EventSet::IN;
        }
        if self.pending() > 0 {
            set |= EventSet::OUT;
        }
        set
    }

    /// Handles readiness; false when the connection is finished and should be closed.
    pub(super) fn on_event(
        &mut self,
        events: EventSet,
        handler: &mut dyn FnMut(&Request) -> Response,
    ) -> bool {
        if events.contains(EventSet::ERROR) {
            return false;
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP)
            && self.interest().contains(EventSet::IN)
        {
            match self.read_some() {
                Ok(0) => {
                    if !self.input.is_empty() {
                        tracing::debug!(
                            bytes = self.input.len(),
                            "API client left mid-request; dropping it"
                        );
                    }
                    self.input.clear();
                    self.closing = true;
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    tracing::debug!("API connection read failed: {e}");
                    return false;
                }
            }
        }
        loop {
            self.process(handler);
            if let Err(e) = self.flush() {
                tracing::debug!("API connection write failed: {e}");
                return false;
            }
            // Requests held back while the client was slow to read can go on now.
            let more = !self.closing
                && !self.input.is_empty()
                && self.input.len() >= self.need
                && self.pending() <= OUTPUT_HIGH_WATER;
            if !more {
                break;
            }
        }
        !(self.closing && self.pending() == 0)
    }

    fn read_some(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        // SAFETY: reading into a buffer we own, of the length given.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        self.input.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Answers the complete requests in `input`, in order.
    fn process(&mut self, handler: &mut dyn FnMut(&Request) -> Response) {
        while !self.closing
            && !self.input.is_empty()
            && self.input.len() >= self.need
            && self.pending() <= OUTPUT_HIGH_WATER
        {
            match http::parse_request(&self.input) {
                Ok(Parsed::Incomplete {
                    expects_continue,
                    total_len,
                }) => {
                    if expects_continue && !self.continue_sent {
                        self.output.extend_from_slice(http::CONTINUE);
                        self.continue_sent = true;
                    }
                    self.need = total_len.unwrap_or(self.input.len() + 1);
                    return;
                }
                Ok(Parsed::Complete { request, consumed }) => {
                    self.input.drain(..consumed);
                    if self.input.is_empty() && self.input.capacity() > SHRINK_ABOVE {
                        self.input.shrink_to(READ_CHUNK);
                    }
                    self.need = 0;
                    self.continue_sent = false;
                    let mut response = handler(&request);
                    response.close |= !request.keep_alive;
                    self.closing = response.close;
                    response.write_to(&mut self.output);
                }
                Err(e) => {
                    tracing::debug!("refusing an API request: {e}");
                    let mut response = Response::fault(e.status(), e.to_string());
                    response.close = true;
                    response.write_to(&mut self.output);
                    self.closing = true;
                    self.input = Vec::new();
                }
            }
        }
    }

    /// Sends as much pending output as the socket takes.
    fn flush(&mut self) -> io::Result<()> {
        while self.written < self.output.len() {
            match send(self.fd.as_raw_fd(), &self.output[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.output.clear();
        self.written = 0;
        if self.output.capacity() > SHRINK_ABOVE {
            self.output.shrink_to(READ_CHUNK);
        }
        Ok(())
    }
}

/// One non-blocking send, without SIGPIPE if the client is gone.
pub(super) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: sending from a buffer we own, of the length given.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
