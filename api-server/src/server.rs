//! The API server: a Unix socket served by one thread (`zvm_api`) running a
//! non-blocking epoll loop over many connections.
//!
//! The socket, the epoll instance and the stop eventfd are set up by [`ApiServer::start`]
//! on the caller's thread; the serving thread then installs its seccomp filter
//! ([`crate::seccomp::api_thread_filter`]) and only accepts, reads, writes and closes.
//! Each connection has its own input and output buffers; requests are answered in order,
//! pipelined ones included. [`ApiServer::stop`] signals the eventfd, joins the thread,
//! removes the socket file and gives the controller back.

use crate::controller::VmmController;
use crate::http::{Request, Response, StatusCode};
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
use std::time::{Duration, Instant};
use vmm::seccomp::SeccompError;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

/// Default cap on open connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a whole request (headers and body) once it has
/// sent its first byte: a slow or stalled client is answered 408 and closed.
pub const DEFAULT_REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long a connection may stay open with no request in progress before it is closed.
pub const DEFAULT_IDLE_DEADLINE: Duration = Duration::from_secs(60);
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
    /// A request not complete this long after its first byte is answered 408 and closed.
    pub request_deadline: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_deadline: Duration,
}

impl ApiServerConfig {
    /// Listen on `socket_path`, with seccomp and [`DEFAULT_MAX_CONNECTIONS`].
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        ApiServerConfig {
            socket_path: socket_path.into(),
            seccomp: true,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            request_deadline: DEFAULT_REQUEST_DEADLINE,
            idle_deadline: DEFAULT_IDLE_DEADLINE,
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
        deadlines: Deadlines {
            request: config.request_deadline,
            idle: config.idle_deadline,
        },
        controller,
    };
    let (ready_tx, ready_rx) = mpsc::sync_channel::<()>(1);
    let seccomp = config.seccomp;
    let thread = thread::Builder::new()
        .name(THREAD_NAME.to_string())
        .spawn(move || {
            crate::seccomp::api_thread_filter().install(seccomp)?;
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
    deadlines: Deadlines,
    controller: C,
}

impl<C: VmmController> EventLoop<C> {
    fn run(&mut self) -> Result<(), ServerError> {
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let timeout = self.next_deadline().map_or(-1, |at| {
                let ms = at.saturating_duration_since(Instant::now()).as_millis();
                // Round up so the wait does not wake just before the deadline.
                i32::try_from(ms + 1).unwrap_or(i32::MAX)
            });
            let n = match self.epoll.wait(timeout, &mut events) {
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
            self.expire(Instant::now());
        }
    }

    /// The earliest deadline of any connection.
    fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().map(|c| c.deadline).min()
    }

    /// Closes the connections whose deadline passed; a client in the middle of a
    /// request is told so (408) first.
    fn expire(&mut self, now: Instant) {
        let late: Vec<RawFd> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            let Some(conn) = self.conns.remove(&fd) else {
                continue;
            };
            if conn.in_request() {
                tracing::debug!(fd, "API client too slow to send its request; closing");
                let mut out = Vec::new();
                let mut late = Response::fault(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request was not complete in time",
                );
                late.close = true;
                late.write_to(&mut out);
                // Best effort: the connection is closed whatever happens.
                let _ = send(conn.fd.as_raw_fd(), &out);
            } else {
                tracing::debug!(fd, "idle API connection closed");
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
            self.conns.insert(raw, Connection::new(fd, self.deadlines));
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
        conn.renew_deadline();
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

mod connection;
#[cfg(test)]
mod tests;

use connection::{send, Connection, Deadlines};
