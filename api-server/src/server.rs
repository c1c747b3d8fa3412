//! The API server: a Unix socket served by one thread (`zvm_api`) running a
//! non-blocking epoll loop over many connections.
//!
//! The socket, the epoll instance and the stop eventfd are set up by [`ApiServer::start`]
//! on the caller's thread; the serving thread then installs its seccomp filter
//! ([`vmm::seccomp::ThreadKind::Api`]) and only accepts, reads, writes and closes.
//! Each connection has its own input and output buffers; requests are answered in order,
//! pipelined ones included. [`ApiServer::stop`] signals the eventfd, joins the thread,
//! removes the socket file and gives the controller back.

use crate::controller::VmmController;
use crate::http::{self, Parsed, Request, Response, StatusCode};
use crate::routes;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use vmm::seccomp::{SeccompError, ThreadKind};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

/// Default cap on open connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// The serving thread's name.
pub const THREAD_NAME: &str = "zvm_api";
/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Unsent response bytes above which a connection is not read until its client catches up.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// Buffers grown past this are shrunk back once empty.
const SHRINK_ABOVE: usize = 128 * 1024;
/// Most connections accepted per wake-up.
const ACCEPT_BATCH: usize = 64;
const LISTENER_TOKEN: u64 = u64::MAX;
const STOP_TOKEN: u64 = u64::MAX - 1;

/// Errors starting, running or stopping the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process is accepting connections on the socket path.
    #[error("API socket {0} is in use by a running process")]
    InUse(PathBuf),
    /// The socket path names something other than a socket.
    #[error("API socket path {0} exists and is not a socket; not removing it")]
    NotASocket(PathBuf),
    /// Checking, removing or binding the socket path failed.
    #[error("cannot listen on API socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Creating the epoll instance or the stop eventfd failed.
    #[error("cannot set up the API event loop: {0}")]
    Setup(io::Error),
    /// The thread could not be started.
    #[error("cannot start the {THREAD_NAME} thread: {0}")]
    Spawn(io::Error),
    /// The thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// Waiting for events failed; the loop ended.
    #[error("the API event loop failed: {0}")]
    Epoll(io::Error),
    /// Signalling the thread to stop failed; it was left running.
    #[error("cannot signal the {THREAD_NAME} thread to stop: {0}")]
    Stop(io::Error),
    /// The thread panicked (the controller is lost).
    #[error("the {THREAD_NAME} thread panicked")]
    Panicked,
}

/// How to run the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServerConfig {
    /// The Unix socket path to listen on. A stale socket file there is removed first.
    pub socket_path: PathBuf,
    /// Install the thread's seccomp filter (turn off only to debug a blocked call).
    pub seccomp: bool,
    /// Connections beyond this many are answered 503 and closed.
    pub max_connections: usize,
}

impl ApiServerConfig {
    /// Listen on `socket_path`, with seccomp and [`DEFAULT_MAX_CONNECTIONS`].
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        ApiServerConfig {
            socket_path: socket_path.into(),
            seccomp: true,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// A running API server. Dropping it stops it too (and drops the controller).
pub struct ApiServer<C> {
    socket_path: PathBuf,
    /// Device and inode of the socket we bound, so we only ever remove our own.
    socket_id: Option<(u64, u64)>,
    stop: EventFd,
    thread: Option<JoinHandle<Result<C, ServerError>>>,
}

impl<C: VmmController + Send + 'static> ApiServer<C> {
    /// Binds the socket and starts serving on the `zvm_api` thread. Returns once the
    /// thread has installed its seccomp filter and serves.
    pub fn start(config: ApiServerConfig, controller: C) -> Result<Self, ServerError> {
        let listener = bind(&config.socket_path)?;
        let socket_id = fs::symlink_metadata(&config.socket_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let spawned = match spawn(listener, &config, controller) {
            Ok(spawned) => spawned,
            Err(e) => {
                // Nothing serves the socket we just bound.
                let _ = fs::remove_file(&config.socket_path);
                return Err(e);
            }
        };
        let mut server = ApiServer {
            socket_path: config.socket_path,
            socket_id,
            stop: spawned.stop,
            thread: Some(spawned.thread),
        };
        if spawned.ready.recv().is_err() {
            // The thread ended before serving: its result says why.
            return match server.finish() {
                Some(Err(e)) => Err(e),
                _ => Err(ServerError::Panicked),
            };
        }
        tracing::info!(socket = %server.socket_path.display(), "API server listening");
        Ok(server)
    }

    /// Stops serving: wakes the thread, waits for it, removes the socket file, and
    /// returns the controller (or the error that ended the loop early).
    pub fn stop(mut self) -> Result<C, ServerError> {
        self.finish().unwrap_or(Err(ServerError::Panicked))
    }
}

impl<C> ApiServer<C> {
    /// The socket path served.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Whether the serving thread still runs (false once its loop failed).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    fn finish(&mut self) -> Option<Result<C, ServerError>> {
        let thread = self.thread.take()?;
        let result = if thread.is_finished() {
            thread.join().unwrap_or(Err(ServerError::Panicked))
        } else if let Err(e) = self.stop.write(1) {
            Err(ServerError::Stop(e))
        } else {
            thread.join().unwrap_or(Err(ServerError::Panicked))
        };
        self.remove_socket();
        Some(result)
    }

    fn remove_socket(&self) {
        let ours = fs::symlink_metadata(&self.socket_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.socket_id {
            if let Err(e) = fs::remove_file(&self.socket_path) {
                tracing::warn!(socket = %self.socket_path.display(), "cannot remove the API socket: {e}");
            }
        }
    }
}

impl<C> Drop for ApiServer<C> {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.finish() {
            tracing::warn!("API server: {e}");
        }
    }
}

/// A started serving thread.
struct Spawned<C> {
    thread: JoinHandle<Result<C, ServerError>>,
    /// Receives once the thread has installed its filter and serves; disconnects if it fails.
    ready: mpsc::Receiver<()>,
    /// The owner's end of the stop eventfd.
    stop: EventFd,
}

/// Sets up the event loop around `listener` and starts the serving thread.
fn spawn<C: VmmController + Send + 'static>(
    listener: UnixListener,
    config: &ApiServerConfig,
    controller: C,
) -> Result<Spawned<C>, ServerError> {
    let epoll = Epoll::new().map_err(ServerError::Setup)?;
    let stop = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(ServerError::Setup)?;
    let stop_for_owner = stop.try_clone().map_err(ServerError::Setup)?;
    let listen_event = EpollEvent::new(EventSet::IN, LISTENER_TOKEN);
    epoll
        .ctl(ControlOperation::Add, listener.as_raw_fd(), listen_event)
        .map_err(ServerError::Setup)?;
    let stop_event = EpollEvent::new(EventSet::IN, STOP_TOKEN);
    epoll
        .ctl(ControlOperation::Add, stop.as_raw_fd(), stop_event)
        .map_err(ServerError::Setup)?;
    let mut event_loop = EventLoop {
        epoll,
        listener,
        _stop: stop,
        conns: HashMap::with_capacity(config.max_connections),
        max_connections: config.max_connections,
        controller,
    };
    let (ready_tx, ready_rx) = mpsc::sync_channel::<()>(1);
    let seccomp = config.seccomp;
    let thread = thread::Builder::new()
        .name(THREAD_NAME.to_string())
        .spawn(move || {
            vmm::seccomp::install(ThreadKind::Api, seccomp)?;
            // The receiver only goes away if start() is gone too.
            let _ = ready_tx.send(());
            event_loop.run()?;
            Ok(event_loop.controller)
        })
        .map_err(ServerError::Spawn)?;
    Ok(Spawned {
        thread,
        ready: ready_rx,
        stop: stop_for_owner,
    })
}

/// Binds `path`, first removing a stale socket there (one nobody accepts on).
fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let socket_err = |source| ServerError::Socket {
        path: path.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServerError::NotASocket(path.to_path_buf()))
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => return Err(ServerError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "removing a stale API socket");
                fs::remove_file(path).map_err(socket_err)?;
            }
            Err(e) => return Err(socket_err(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(socket_err)?;
    listener.set_nonblocking(true).map_err(socket_err)?;
    Ok(listener)
}

/// The serving thread's state.
struct EventLoop<C> {
    epoll: Epoll,
    listener: UnixListener,
    /// Kept open (and registered) until the loop ends.
    _stop: EventFd,
    conns: HashMap<RawFd, Connection>,
    max_connections: usize,
    controller: C,
}

impl<C: VmmController> EventLoop<C> {
    fn run(&mut self) -> Result<(), ServerError> {
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServerError::Epoll(e)),
            };
            for event in &events[..n] {
                match event.data() {
                    STOP_TOKEN => {
                        tracing::info!(open = self.conns.len(), "API server stopping");
                        return Ok(());
                    }
                    LISTENER_TOKEN => self.accept(),
                    token => {
                        self.serve(token as RawFd, EventSet::from_bits_truncate(event.events()))
                    }
                }
            }
        }
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            // SAFETY: accept4 on our listening socket with no address buffers.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return,
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => continue,
                    _ => {
                        tracing::warn!("cannot accept an API connection: {e}");
                        return;
                    }
                }
            }
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if self.conns.len() >= self.max_connections {
                tracing::warn!(
                    max = self.max_connections,
                    "too many API connections; refusing one"
                );
                let mut out = Vec::new();
                let mut refusal = Response::fault(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many open API connections",
                );
                refusal.close = true;
                refusal.write_to(&mut out);
                // Best effort: the connection is closed whatever happens.
                let _ = send(fd.as_raw_fd(), &out);
                continue;
            }
            let raw = fd.as_raw_fd();
            if let Err(e) = self.epoll.ctl(
                ControlOperation::Add,
                raw,
                EpollEvent::new(EventSet::IN, raw as u64),
            ) {
                tracing::warn!("cannot watch an API connection: {e}");
                continue;
            }
            tracing::debug!(fd = raw, "API connection accepted");
            self.conns.insert(raw, Connection::new(fd));
        }
    }

    fn serve(&mut self, fd: RawFd, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        let controller = &mut self.controller;
        let keep = conn.on_event(events, &mut |request: &Request| {
            routes::handle(controller, request)
        });
        if keep {
            let wanted = conn.interest();
            if wanted == conn.registered {
                return;
            }
            match self.epoll.ctl(
                ControlOperation::Modify,
                fd,
                EpollEvent::new(wanted, fd as u64),
            ) {
                Ok(()) => {
                    conn.registered = wanted;
                    return;
                }
                Err(e) => tracing::warn!("cannot update an API connection's events: {e}"),
            }
        }
        // Closing the descriptor also takes it out of the epoll set.
        self.conns.remove(&fd);
        tracing::debug!(fd, "API connection closed");
    }
}

/// One client connection.
struct Connection {
    fd: OwnedFd,
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
    registered: EventSet,
}

impl Connection {
    fn new(fd: OwnedFd) -> Self {
        Connection {
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

    /// The events worth waiting for now.
    fn interest(&self) -> EventSet {
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
    fn on_event(
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
fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
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

#[cfg(test)]
mod tests;
