//! The host end of the agent connection: reaching the agent through the VM's vsock socket,
//! the handshake, and one reader thread that hands responses to the requests waiting for
//! them and events to the stream they belong to.

use agent_protocol::{
    handshake, read_frame, write_frame, AgentMessage, Event, ProtocolError, Request, RequestBody,
    ResponseBody, Rootfs, INIT_STREAM,
};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Errors talking to the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent did not accept a connection before the deadline (or the VM ended first).
    #[error("the guest agent did not answer on vsock port {port} within {waited:?} ({reason}){}", console_suffix(.console_tail))]
    Unreachable {
        /// The vsock port.
        port: u32,
        /// How long we tried.
        waited: Duration,
        /// Why we stopped.
        reason: String,
        /// The end of the guest console (when the caller has it at hand).
        console_tail: Option<String>,
    },
    /// The agent answered a request with an error.
    #[error("the guest agent refused {request}: {message}")]
    Refused {
        /// The request ("Create", "Start", ...).
        request: &'static str,
        /// The agent's message.
        message: String,
    },
    /// The agent answered with a response of the wrong kind.
    #[error("the guest agent answered {request} with {answer:?}")]
    Unexpected {
        /// The request.
        request: &'static str,
        /// What came back.
        answer: ResponseBody,
    },
    /// The agent did not answer in time.
    #[error("the guest agent did not answer {request} within {after:?}")]
    Timeout {
        /// The request.
        request: &'static str,
        /// The time limit.
        after: Duration,
    },
    /// The connection is gone.
    #[error("the guest agent connection was lost: {0}")]
    Lost(String),
    /// Framing, JSON or version mismatch.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The host could not gather what a request carries (its RNG or its clock failed).
    #[error("cannot prepare {request} for the guest agent: {message}")]
    Prepare {
        /// The request.
        request: &'static str,
        /// What failed.
        message: String,
    },
}

/// Name of a request, for messages.
pub(crate) fn request_name(body: &RequestBody) -> &'static str {
    match body {
        RequestBody::Create { .. } => "Create",
        RequestBody::Start => "Start",
        RequestBody::Exec { .. } => "Exec",
        RequestBody::Signal { .. } => "Signal",
        RequestBody::Stdin { .. } => "Stdin",
        RequestBody::CloseStdin { .. } => "CloseStdin",
        RequestBody::ResizeTerminal { .. } => "ResizeTerminal",
        RequestBody::State => "State",
        RequestBody::Ps => "Ps",
        RequestBody::Shutdown => "Shutdown",
        RequestBody::Sync => "Sync",
        RequestBody::Refresh { .. } => "Refresh",
        RequestBody::Network { .. } => "Network",
    }
}

/// Opens one host-initiated vsock connection to `port` through the VM's Unix socket
/// (`CONNECT <port>\n`, answered `OK <host port>\n`). Fails when nobody listens yet.
pub(crate) fn vsock_connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> std::io::Result<UnixStream> {
    let mut stream = super::unix::connect(uds)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::with_capacity(32);
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection reset (nobody listens on the port yet)",
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line);
    if !line.starts_with("OK ") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected vsock answer {line:?}"),
        ));
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

/// `; last console lines:` and the lines, or nothing.
fn console_suffix(tail: &Option<String>) -> String {
    tail.as_ref()
        .map(|t| format!("; last console lines:\n{t}"))
        .unwrap_or_default()
}

/// Retries [`vsock_connect`] until it succeeds, `deadline` passes or `gone()` says the VM
/// ended (with why); then does the protocol handshake. A failure quotes the end of
/// `console_log` when given (callers that show the console themselves pass None).
pub(crate) fn wait_for_agent(
    uds: &Path,
    port: u32,
    deadline: Instant,
    console_log: Option<&Path>,
    gone: &dyn Fn() -> Option<String>,
) -> Result<UnixStream, AgentError> {
    let start = Instant::now();
    let unreachable = |reason: String| AgentError::Unreachable {
        port,
        waited: start.elapsed(),
        reason,
        console_tail: console_log.map(|log| console_tail(log, 20)),
    };
    let mut last = String::from("never tried");
    loop {
        if let Some(why) = gone() {
            return Err(unreachable(format!("the VM ended: {why}")));
        }
        if Instant::now() >= deadline {
            return Err(unreachable(format!("last attempt: {last}")));
        }
        match vsock_connect(uds, port, Duration::from_secs(10)) {
            Ok(mut stream) => {
                stream
                    .set_read_timeout(Some(Duration::from_secs(120)))
                    .map_err(|e| AgentError::Lost(e.to_string()))?;
                let hello = handshake(&mut stream, "zvm-sandbox")?;
                tracing::debug!(
                    "agent connected: {} (protocol {})",
                    hello.name,
                    hello.version
                );
                stream
                    .set_read_timeout(None)
                    .map_err(|e| AgentError::Lost(e.to_string()))?;
                return Ok(stream);
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The last `lines` lines of the guest console (or a note that it is empty or unreadable).
pub(crate) fn console_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) if !bytes.is_empty() => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Ok(_) => format!("({} is empty)", path.display()),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// What the reader thread tells the owner of the init stream.
#[derive(Debug)]
pub(crate) enum Notice {
    /// An event of the init stream.
    Init(Event),
    /// The connection ended (with why).
    Lost(String),
}

type Pending = HashMap<u64, SyncSender<Result<ResponseBody, String>>>;

/// A request on its way to the agent ([`AgentConn::send`]); [`AgentConn::answer`] waits
/// for its response.
#[derive(Debug)]
pub(crate) struct SentRequest {
    id: u64,
    name: &'static str,
    rx: Receiver<Result<ResponseBody, String>>,
}

/// A live agent connection shared by the sandbox's threads.
#[derive(Debug)]
pub(crate) struct AgentConn {
    writer: Mutex<UnixStream>,
    next_id: AtomicU64,
    /// Requests waiting for their response; None once the connection is gone.
    pending: Arc<Mutex<Option<Pending>>>,
    /// Receivers of the events of exec streams.
    streams: Arc<Mutex<HashMap<String, Sender<Event>>>>,
    lost: Arc<Mutex<Option<String>>>,
}

impl AgentConn {
    /// Takes over a connection that has done its handshake: starts the reader thread, which
    /// hands init-stream events and the end of the connection to `init`. The reader parses
    /// what the guest sends: with `seccomp` it runs under the relay filter.
    pub(crate) fn start(
        stream: UnixStream,
        seccomp: bool,
        init: impl Fn(Notice) + Send + 'static,
    ) -> std::io::Result<Arc<AgentConn>> {
        let reader = stream.try_clone()?;
        let conn = Arc::new(AgentConn {
            writer: Mutex::new(stream),
            next_id: AtomicU64::new(1),
            pending: Arc::new(Mutex::new(Some(HashMap::new()))),
            streams: Arc::new(Mutex::new(HashMap::new())),
            lost: Arc::new(Mutex::new(None)),
        });
        let (pending, streams, lost) = (
            conn.pending.clone(),
            conn.streams.clone(),
            conn.lost.clone(),
        );
        std::thread::Builder::new()
            .name("zvm_agent_rx".into())
            .spawn(move || {
                let why = match super::seccomp::relay_filter().install(seccomp) {
                    Ok(()) => read_loop(reader, &pending, &streams, &init),
                    Err(e) => format!("the agent reader cannot run: {e}"),
                };
                tracing::debug!("agent connection ended: {why}");
                *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
                pending.lock().unwrap_or_else(|p| p.into_inner()).take();
                streams.lock().unwrap_or_else(|p| p.into_inner()).clear();
                init(Notice::Lost(why));
            })?;
        Ok(conn)
    }

    /// Sends `body` and waits up to `timeout` for its response.
    pub(crate) fn request(
        &self,
        body: RequestBody,
        timeout: Duration,
    ) -> Result<ResponseBody, AgentError> {
        let sent = self.send(body)?;
        self.answer(sent, timeout)
    }

    /// Sends `body` without waiting for its response: [`Self::answer`] waits for it. The
    /// agent handles requests in the order they were sent, so several can be on the way
    /// at once (see [`Self::refresh_and_create`]).
    pub(crate) fn send(&self, body: RequestBody) -> Result<SentRequest, AgentError> {
        let name = request_name(&body);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        match self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            Some(pending) => pending.insert(id, tx),
            None => return Err(AgentError::Lost(self.lost_reason())),
        };
        let sent = write_frame(
            &mut *self.writer.lock().unwrap_or_else(|p| p.into_inner()),
            &Request { id, body },
        );
        if let Err(e) = sent {
            self.forget(id);
            return Err(e.into());
        }
        Ok(SentRequest { id, name, rx })
    }

    /// Waits up to `timeout` for the response to a request [`Self::send`] sent.
    pub(crate) fn answer(
        &self,
        sent: SentRequest,
        timeout: Duration,
    ) -> Result<ResponseBody, AgentError> {
        let SentRequest { id, name, rx } = sent;
        match rx.recv_timeout(timeout) {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(message)) => Err(AgentError::Refused {
                request: name,
                message,
            }),
            Err(RecvTimeoutError::Timeout) => {
                self.forget(id);
                Err(AgentError::Timeout {
                    request: name,
                    after: timeout,
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(AgentError::Lost(self.lost_reason())),
        }
    }

    /// Like [`Self::request`], for requests answered `Done`.
    pub(crate) fn request_done(
        &self,
        body: RequestBody,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        let name = request_name(&body);
        match self.request(body, timeout)? {
            ResponseBody::Done => Ok(()),
            answer => Err(AgentError::Unexpected {
                request: name,
                answer,
            }),
        }
    }

    /// Sends `Refresh` to a VM restored from a snapshot: 64 bytes from the host's RNG for the
    /// guest kernel's pool, the host's wall clock, and `hostname` when given.
    pub(crate) fn refresh(
        &self,
        hostname: Option<&str>,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        self.request_done(refresh_request(hostname)?, timeout)
    }

    /// Routes the events of `stream` to the returned receiver (until [`Self::unsubscribe`]
    /// or the end of the connection, which disconnects it).
    pub(crate) fn subscribe(&self, stream: &str) -> Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        if self
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            self.streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(stream.to_string(), tx);
        }
        rx
    }

    /// Stops routing the events of `stream`.
    pub(crate) fn unsubscribe(&self, stream: &str) {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(stream);
    }

    fn forget(&self, id: u64) {
        if let Some(pending) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            pending.remove(&id);
        }
    }

    fn lost_reason(&self) -> String {
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "closed".into())
    }
}

/// The `Create` request for `spec` with its root file system `rootfs` and the virtio-fs
/// share `share` (its tag); a pty when `terminal`.
pub(crate) fn create_request(
    spec: oci_spec::runtime::Spec,
    rootfs: Rootfs,
    share: Option<String>,
    terminal: bool,
) -> RequestBody {
    RequestBody::Create {
        spec: Box::new(spec),
        rootfs,
        terminal,
        share,
    }
}

/// The `Refresh` request: 64 fresh bytes of the host's RNG, its wall clock, `hostname`.
pub(crate) fn refresh_request(hostname: Option<&str>) -> Result<RequestBody, AgentError> {
    let prepare = |message: String| AgentError::Prepare {
        request: "Refresh",
        message,
    };
    let entropy = os_random(64).map_err(|e| prepare(format!("getrandom: {e}")))?;
    let realtime_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .ok_or_else(|| prepare("the host's clock is before 1970 or after 2554".into()))?;
    Ok(RequestBody::Refresh {
        entropy: entropy.into(),
        realtime_ns,
        hostname: hostname.map(str::to_owned),
    })
}

/// The `Network` request for `interfaces`, checked as the agent checks it.
pub(crate) fn network_request(
    interfaces: &[agent_protocol::network::NetInterface],
) -> Result<RequestBody, AgentError> {
    agent_protocol::network::check(interfaces).map_err(|message| AgentError::Prepare {
        request: "Network",
        message,
    })?;
    Ok(RequestBody::Network {
        interfaces: interfaces.to_vec(),
    })
}

/// `len` bytes from the OS RNG (getrandom(2), allowed under every thread's seccomp filter).
pub(crate) fn os_random(len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        // SAFETY: getrandom writes at most `len - got` bytes into the live buffer at `got`.
        let n = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), len - got, 0) };
        match usize::try_from(n) {
            Ok(n) => got += n,
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf)
}

fn read_loop(
    mut reader: UnixStream,
    pending: &Mutex<Option<Pending>>,
    streams: &Mutex<HashMap<String, Sender<Event>>>,
    init: &dyn Fn(Notice),
) -> String {
    loop {
        let msg: AgentMessage = match read_frame(&mut reader) {
            Ok(m) => m,
            Err(ProtocolError::Closed) => return "the agent closed the connection".into(),
            Err(e) => return e.to_string(),
        };
        match msg {
            AgentMessage::Response { id, result } => {
                let waiter = pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                    .and_then(|p| p.remove(&id));
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(result);
                    }
                    None => tracing::debug!("agent response to unknown or abandoned request {id}"),
                }
            }
            AgentMessage::Event(event) => {
                let stream = match &event {
                    Event::Output { stream, .. } | Event::Exited { stream, .. } => stream.clone(),
                };
                if stream == INIT_STREAM {
                    init(Notice::Init(event));
                    continue;
                }
                let exited = matches!(event, Event::Exited { .. });
                let mut streams = streams.lock().unwrap_or_else(|p| p.into_inner());
                match streams.get(&stream) {
                    Some(tx) => {
                        if tx.send(event).is_err() || exited {
                            streams.remove(&stream);
                        }
                    }
                    None => tracing::debug!("agent event for unknown stream {stream:?}"),
                }
            }
        }
    }
}

mod pipeline;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests;
