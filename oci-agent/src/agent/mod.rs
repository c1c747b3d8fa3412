//! The agent's event loop: one poll(2) over the listener or the host connection, a signalfd
//! (SIGCHLD, SIGTERM, SIGINT, and SIGRTMIN+4: the kernel's ACPI power button) and the
//! container's stdio; reads and writes in 64 KiB chunks.

mod backlog;
mod cgroup;
mod container;
mod held_ns;
pub mod refresh;
pub mod rootfs;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use agent_protocol::{
    encode_frame, AgentMessage, FrameDecoder, Hello, ProtocolError, Request, RequestBody,
    ResponseBody,
};

use backlog::Backlog;
use container::{exit_status, Container};
pub use rootfs::ROOTFS_MOUNT;

use crate::fdio;
use crate::sys::{check, LinuxSys};
use crate::transport::Transport;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Root of the cgroup v2 hierarchy (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// Leave the loop when the host connection ends (host tests); inside the VM the agent waits
    /// for the next connection.
    pub exit_on_disconnect: bool,
    /// Name sent in our Hello.
    pub name: String,
    /// `KEY=value` entries added to every container process whose environment lacks the key.
    /// zvm's PVM template hands init `GLIBC_TUNABLES` (keeping glibc off AVX, whose state that
    /// guest kernel cannot save); container processes need it as much as the agent does.
    pub default_env: Vec<String>,
    /// The agent is PID 1 of a VM: [`RequestBody::Refresh`] changes the kernel's entropy pool,
    /// clock and host name. A host-process agent (tests) checks a Refresh and answers it, but
    /// changes nothing system-wide.
    pub in_vm: bool,
    /// A network namespace made ahead of the first container ([`crate::spare_netns`]),
    /// joined by it instead of making one; used once.
    pub spare_netns: Option<std::sync::Arc<OwnedFd>>,
}

/// Errors that end the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A system call of the loop failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The host asked for Shutdown.
    Shutdown,
    /// SIGTERM or SIGINT (in the VM: the VMM's Ctrl-Alt-Del), or SIGRTMIN+4 (the VM's
    /// ACPI power button).
    Signal(i32),
    /// The host connection closed (with `exit_on_disconnect`).
    Disconnected,
}

struct Conn {
    fd: OwnedFd,
    decoder: FrameDecoder,
    greeted: bool,
}

/// The agent: a transport, at most one connection and at most one container.
pub struct Agent<T: Transport> {
    cfg: AgentConfig,
    transport: T,
    conn: Option<Conn>,
    container: Option<Container>,
    sigfd: OwnedFd,
    outbox: Vec<AgentMessage>,
    /// Events kept while no host is connected, for the next one.
    backlog: Backlog,
}

/// The signal the kernel's tiny ACPI power button driver sends init (systemd's power-off).
fn power_button_signal() -> i32 {
    libc::SIGRTMIN() + 4
}

/// Blocks SIGCHLD, SIGTERM, SIGINT, the power button's signal and returns a signalfd for
/// them.
fn signal_fd() -> io::Result<OwnedFd> {
    // SAFETY: building a signal set and creating a signalfd for it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            power_button_signal(),
        ] {
            libc::sigaddset(&mut set, s);
        }
        check(libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()).into())?;
        let fd = check(libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK).into())?;
        Ok(OwnedFd::from_raw_fd(fd as RawFd))
    }
}

enum Slot {
    Listener,
    Conn,
    Signals,
    Output(usize, usize),
    Stdin(usize),
}

impl<T: Transport> Agent<T> {
    /// An agent serving `transport`. Blocks the signals it handles.
    pub fn new(cfg: AgentConfig, transport: T) -> Result<Self, AgentError> {
        let sigfd = signal_fd().map_err(|source| AgentError::Io {
            what: "signalfd",
            source,
        })?;
        Ok(Self {
            cfg,
            transport,
            conn: None,
            container: None,
            sigfd,
            outbox: Vec::new(),
            backlog: Backlog::default(),
        })
    }

    /// Runs until Shutdown, a terminating signal, or (host mode) the end of the connection.
    /// The container is killed and cleaned up before this returns.
    pub fn run(&mut self) -> Result<Exit, AgentError> {
        tracing::info!("agent listening on {}", self.transport.describe());
        let exit = loop {
            if let Some(exit) = self.turn()? {
                break exit;
            }
        };
        let mut out = Vec::new();
        if let Some(c) = &mut self.container {
            c.kill_all(&mut out);
            c.cleanup();
            c.after_exit_reported();
        }
        self.container = None;
        self.outbox.extend(out);
        self.flush();
        Ok(exit)
    }

    /// One poll and everything it reported.
    fn turn(&mut self) -> Result<Option<Exit>, AgentError> {
        let mut fds = Vec::new();
        let mut slots = Vec::new();
        let mut add = |fd: RawFd, events: i16, slot: Slot| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            slots.push(slot);
        };
        match &self.conn {
            Some(c) => add(c.fd.as_raw_fd(), libc::POLLIN, Slot::Conn),
            None => add(self.transport.listen_fd(), libc::POLLIN, Slot::Listener),
        }
        add(self.sigfd.as_raw_fd(), libc::POLLIN, Slot::Signals);
        if let Some(c) = &self.container {
            for (pi, p) in c.procs.iter().enumerate() {
                for (oi, (_, fd)) in p.outputs.iter().enumerate() {
                    add(fd.as_raw_fd(), libc::POLLIN, Slot::Output(pi, oi));
                }
                if let (Some(fd), false) = (&p.stdin, p.stdin_buf.is_empty()) {
                    add(fd.as_raw_fd(), libc::POLLOUT, Slot::Stdin(pi));
                }
            }
        }
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(AgentError::Io {
                what: "poll",
                source: e,
            });
        }
        let mut exit = None;
        // Outputs first (highest index first, so removals keep lower indices valid), then exits,
        // so a process's last output precedes its Exited event.
        let ready: Vec<(usize, i16)> = fds
            .iter()
            .enumerate()
            .filter(|(_, f)| f.revents != 0)
            .map(|(i, f)| (i, f.revents))
            .collect();
        for &(i, _) in ready.iter().rev() {
            let Some(c) = &mut self.container else { break };
            match slots[i] {
                Slot::Output(pi, oi) => {
                    c.procs[pi].read_output(oi, &mut self.outbox);
                }
                Slot::Stdin(pi) => c.procs[pi].flush_stdin(),
                _ => {}
            }
        }
        for &(i, _) in &ready {
            match slots[i] {
                Slot::Signals => exit = self.on_signals(),
                Slot::Listener => self.accept(),
                _ => {}
            }
        }
        self.flush();
        for &(i, _) in &ready {
            if let Slot::Conn = slots[i] {
                if let Some(e) = self.on_conn_readable() {
                    exit = exit.or(Some(e));
                }
            }
        }
        self.flush();
        // An exit has gone out (or into the backlog): its log line and the namespaces'
        // teardown follow.
        if let Some(c) = &mut self.container {
            c.after_exit_reported();
        }
        Ok(exit)
    }

    fn accept(&mut self) {
        match self.transport.accept() {
            Ok(fd) => {
                tracing::info!("host connected");
                let hello = Hello::new(&self.cfg.name);
                self.conn = Some(Conn {
                    fd,
                    decoder: FrameDecoder::new(),
                    greeted: false,
                });
                match encode_frame(&hello) {
                    Ok(frame) => {
                        self.send_raw(&frame);
                    }
                    Err(e) => tracing::error!("encode hello: {e}"),
                }
            }
            Err(e) => tracing::warn!("accept: {e}"),
        }
    }

    /// Writes to the host; false (and the connection dropped) when that fails.
    fn send_raw(&mut self, frame: &[u8]) -> bool {
        if let Some(c) = &self.conn {
            if let Err(e) = fdio::write_all(c.fd.as_raw_fd(), frame) {
                tracing::warn!("host connection write failed: {e}");
                self.conn = None;
                return false;
            }
        }
        true
    }

    /// Sends everything queued (after what the backlog kept), in one write when possible.
    /// Without a greeted host, the events go to the backlog; so do those of a failed write.
    fn flush(&mut self) {
        if self.outbox.is_empty() && self.backlog.is_empty() {
            return;
        }
        let mut msgs = std::mem::take(&mut self.outbox);
        if self.conn.as_ref().is_none_or(|c| !c.greeted) {
            msgs.into_iter().for_each(|m| self.backlog.push(m));
            return;
        }
        if !self.backlog.is_empty() {
            let kept = self.backlog.take();
            tracing::info!(
                "delivering {} events kept while no host was connected",
                kept.len()
            );
            msgs.splice(0..0, kept);
        }
        let mut buf = Vec::new();
        for m in &msgs {
            match encode_frame(m) {
                Ok(f) => buf.extend_from_slice(&f),
                Err(e) => tracing::error!("cannot encode a message: {e}"),
            }
        }
        if !self.send_raw(&buf) {
            // Kept for the next host: it may see a few events twice (those the failed write
            // had passed on) rather than miss an exit.
            msgs.into_iter().for_each(|m| self.backlog.push(m));
        }
    }

    fn on_signals(&mut self) -> Option<Exit> {
        // SAFETY: signalfd_siginfo is plain data; the buffer holds up to 16 of them.
        let mut infos: [libc::signalfd_siginfo; 16] = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading into the array's bytes.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(infos.as_mut_ptr().cast::<u8>(), size * infos.len())
        };
        let n = fdio::read(self.sigfd.as_raw_fd(), buf).unwrap_or(0) / size;
        let mut exit = None;
        for info in &infos[..n] {
            let sig = info.ssi_signo as i32;
            if sig == power_button_signal() {
                tracing::info!("power button: shutting down");
                exit = Some(Exit::Signal(sig));
            } else if sig == libc::SIGTERM || sig == libc::SIGINT {
                tracing::info!("signal {sig}: shutting down");
                exit = Some(Exit::Signal(sig));
            }
        }
        self.reap();
        exit
    }

    /// Collects every ended child.
    fn reap(&mut self) {
        loop {
            let mut st = 0;
            // SAFETY: waitpid on any child without blocking.
            let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if let Some(c) = &mut self.container {
                c.reaped(pid, exit_status(st), &mut self.outbox);
            }
        }
    }

    fn on_conn_readable(&mut self) -> Option<Exit> {
        let Some(c) = &mut self.conn else { return None };
        let mut buf = vec![0u8; 64 * 1024];
        let n = match fdio::read(c.fd.as_raw_fd(), &mut buf) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("host connection read failed: {e}");
                0
            }
        };
        if n == 0 {
            if let Err(e) = c.decoder.finish() {
                tracing::warn!("host connection: {e}");
            }
            tracing::info!("host disconnected");
            self.conn = None;
            return self.cfg.exit_on_disconnect.then_some(Exit::Disconnected);
        }
        c.decoder.push(&buf[..n]);
        loop {
            let Some(c) = &mut self.conn else { return None };
            if !c.greeted {
                match c.decoder.next_frame::<Hello>() {
                    Ok(None) => return None,
                    Ok(Some(h)) => match h.check() {
                        Ok(()) => c.greeted = true,
                        Err(e) => return self.drop_conn(&e),
                    },
                    Err(e) => return self.drop_conn(&e),
                }
                continue;
            }
            let value = match c.decoder.next_frame::<serde_json::Value>() {
                Ok(None) => return None,
                Ok(Some(v)) => v,
                Err(e) => return self.drop_conn(&e),
            };
            let exit = self.on_frame(value);
            self.flush();
            if exit.is_some() {
                return exit;
            }
        }
    }

    fn drop_conn(&mut self, e: &ProtocolError) -> Option<Exit> {
        tracing::error!("host connection dropped: {e}");
        self.conn = None;
        self.cfg.exit_on_disconnect.then_some(Exit::Disconnected)
    }

    /// One request: answer it (a malformed one too, when it has an id).
    fn on_frame(&mut self, value: serde_json::Value) -> Option<Exit> {
        let id = value.get("id").and_then(|v| v.as_u64());
        let req: Request = match serde_json::from_value(value) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("bad request: {e}");
                if let Some(id) = id {
                    self.outbox.push(AgentMessage::Response {
                        id,
                        result: Err(format!("bad request: {e}")),
                    });
                }
                return None;
            }
        };
        let shutdown = matches!(req.body, RequestBody::Shutdown);
        let result = self.handle(req.body);
        if let Err(e) = &result {
            tracing::warn!("request {id:?} failed: {e}");
        }
        self.outbox
            .push(AgentMessage::Response { id: req.id, result });
        shutdown.then_some(Exit::Shutdown)
    }

    fn container(&mut self) -> Result<&mut Container, String> {
        self.container
            .as_mut()
            .ok_or_else(|| "no container has been created".to_string())
    }

    fn handle(&mut self, body: RequestBody) -> Result<ResponseBody, String> {
        match body {
            RequestBody::Create {
                spec,
                rootfs,
                terminal,
                share,
            } => {
                if self.container.is_some() {
                    return Err("a container already exists in this agent".into());
                }
                // The spare network namespace serves one create, whatever its outcome.
                let spare = self.cfg.spare_netns.take();
                let c = Container::create(
                    &spec,
                    &rootfs,
                    share.as_deref(),
                    terminal,
                    &self.cfg,
                    spare.as_deref(),
                )?;
                let pid = c.init_pid;
                tracing::info!("container created, init pid {pid}");
                self.container = Some(c);
                Ok(ResponseBody::Created { pid })
            }
            RequestBody::Start => self.container()?.start(),
            RequestBody::Exec { exec_id, process } => self.container()?.exec(&exec_id, &process),
            RequestBody::Signal {
                stream,
                signal,
                all,
            } => self.container()?.signal(&stream, signal, all),
            RequestBody::Stdin { stream, data } => self.container()?.stdin(&stream, &data, false),
            RequestBody::CloseStdin { stream } => self.container()?.stdin(&stream, &[], true),
            RequestBody::ResizeTerminal { stream, rows, cols } => {
                self.container()?.resize(&stream, rows, cols)
            }
            RequestBody::State => Ok(self.container()?.state()),
            RequestBody::Ps => Ok(ResponseBody::Pids {
                pids: self.container()?.pids(),
            }),
            RequestBody::Shutdown => Ok(ResponseBody::Done),
            RequestBody::Sync => {
                if self.cfg.in_vm {
                    let start = std::time::Instant::now();
                    // SAFETY: sync(2) has no preconditions.
                    unsafe { libc::sync() };
                    tracing::debug!("synced in {:?}", start.elapsed());
                } else {
                    tracing::debug!("sync: nothing to do (host process)");
                }
                Ok(ResponseBody::Done)
            }
            RequestBody::Refresh {
                entropy,
                realtime_ns,
                hostname,
            } => {
                let hostname = hostname.as_deref();
                if self.cfg.in_vm {
                    refresh::apply(&mut LinuxSys, &entropy, realtime_ns, hostname)?;
                    tracing::info!(
                        "refreshed: {} bytes of entropy, clock {realtime_ns} ns, host name {hostname:?}",
                        entropy.len()
                    );
                } else {
                    refresh::check(&entropy, realtime_ns, hostname)?;
                    tracing::info!("refresh checked, not applied (host process)");
                }
                Ok(ResponseBody::Done)
            }
            RequestBody::Network { interfaces } => {
                agent_protocol::network::check(&interfaces)?;
                if self.cfg.in_vm {
                    for iface in &interfaces {
                        crate::netcfg::configure(iface)?;
                    }
                    tracing::info!("configured {} network interfaces", interfaces.len());
                } else {
                    tracing::info!("network checked, not applied (host process)");
                }
                Ok(ResponseBody::Done)
            }
        }
    }
}
