//! The sandbox side of the control socket: one thread per client, each request turned into
//! agent requests (the protocol is described in the `control` module).

use super::agent::AgentConn;
use super::checkpoint::VmControl;
use super::control::{ControlReply, ControlRequest, SandboxStatus};
use agent_protocol::{
    read_frame, write_frame, Event, ProtocolError, RequestBody, ResponseBody, INIT_STREAM,
};
use oci_spec::runtime::Process;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Time limit of an ordinary agent request (guest syscalls are slow here: be generous).
pub(crate) const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

/// State shared by the sandbox's threads.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The agent connection.
    pub agent: Arc<AgentConn>,
    /// The container's state as the sandbox knows it.
    pub phase: Mutex<SandboxStatus>,
    next_exec: AtomicU64,
    /// The VM (None in tests without one).
    pub vm: Option<VmControl>,
    /// The sandbox stopped the VM itself, for a SIGKILL or after a checkpoint: its end is
    /// the container's process being killed.
    pub vm_killed: AtomicBool,
    /// The container's id.
    pub id: String,
    /// What exec stream ids start with: the sandbox's pid, so that the streams of a
    /// container restored from a checkpoint (whose agent remembers the ids it saw) differ.
    exec_prefix: String,
}

impl Shared {
    /// State for a container just created in the guest, without a VM (tests).
    #[cfg(test)]
    pub(crate) fn new(agent: Arc<AgentConn>) -> Arc<Shared> {
        Shared::make(
            agent,
            None,
            SandboxStatus::Created,
            String::new(),
            "exec".into(),
        )
    }

    /// State for a container in `phase` whose VM `vm` controls.
    pub(crate) fn with_vm(
        agent: Arc<AgentConn>,
        vm: Option<VmControl>,
        phase: SandboxStatus,
        id: String,
    ) -> Arc<Shared> {
        // Unique per sandbox: a jailed sandbox is PID 1 of its namespace, and a container
        // restored from a checkpoint keeps the ids its agent has seen.
        let nonce = super::agent::os_random(8)
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>())
            .unwrap_or_else(|_| format!("{}", std::process::id()));
        let exec_prefix = format!("exec-{nonce}");
        Shared::make(agent, vm, phase, id, exec_prefix)
    }

    fn make(
        agent: Arc<AgentConn>,
        vm: Option<VmControl>,
        phase: SandboxStatus,
        id: String,
        exec_prefix: String,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            agent,
            phase: Mutex::new(phase),
            next_exec: AtomicU64::new(1),
            vm,
            vm_killed: AtomicBool::new(false),
            id,
            exec_prefix,
        })
    }

    /// The current state (paused when the VM is).
    pub(crate) fn phase(&self) -> SandboxStatus {
        let phase = *self.phase.lock().unwrap_or_else(|p| p.into_inner());
        let paused = self.vm.as_ref().is_some_and(VmControl::is_paused);
        match phase {
            SandboxStatus::Created | SandboxStatus::Running if paused => SandboxStatus::Paused,
            other => other,
        }
    }

    /// Stops the VM on purpose: its end counts as the container's process being killed.
    fn kill_vm(&self, vm: &VmControl) {
        self.vm_killed.store(true, Ordering::Release);
        vm.stop();
    }

    /// The state without the VM's pause.
    fn lifecycle_phase(&self) -> SandboxStatus {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the state.
    pub(crate) fn set_phase(&self, status: SandboxStatus) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }
}

/// Serves `listener` on a background thread.
pub(crate) fn serve(listener: UnixListener, shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("zvm_control".into())
        .spawn(move || {
            for client in listener.incoming() {
                match client {
                    Ok(stream) => {
                        let shared = shared.clone();
                        let spawned = std::thread::Builder::new()
                            .name("zvm_client".into())
                            .spawn(move || handle_client(stream, &shared));
                        if let Err(e) = spawned {
                            tracing::warn!("cannot serve a control client: {e}");
                        }
                    }
                    Err(e) => tracing::debug!("control socket accept: {e}"),
                }
            }
        })?;
    Ok(())
}

fn error(message: impl Into<String>) -> ControlReply {
    ControlReply::Error {
        message: message.into(),
    }
}

fn describe(status: SandboxStatus) -> &'static str {
    match status {
        SandboxStatus::Created => "created",
        SandboxStatus::Running => "running",
        SandboxStatus::Paused => "paused",
        SandboxStatus::Stopped { .. } => "stopped",
    }
}

/// Answers one client's requests until it hangs up (an exec takes over the connection).
pub(crate) fn handle_client(mut stream: UnixStream, shared: &Shared) {
    loop {
        let req: ControlRequest = match read_frame(&mut stream) {
            Ok(r) => r,
            Err(ProtocolError::Closed) => return,
            Err(e) => {
                let _ = write_frame(&mut stream, &error(format!("bad control request: {e}")));
                return;
            }
        };
        let kill_after = ends_the_vm(&req);
        let reply = match req {
            ControlRequest::Exec { process } => {
                run_exec(stream, shared, *process);
                return;
            }
            other => answer(shared, other),
        };
        let written = write_frame(&mut stream, &reply);
        // The VM is stopped only once the client has its answer: the sandbox process ends
        // with the VM (at once, with a split irqchip), and would otherwise leave the
        // client with a closed connection instead of the answer.
        if let (true, ControlReply::Ok, Some(vm)) = (kill_after, &reply, &shared.vm) {
            shared.kill_vm(vm);
        }
        if written.is_err() {
            return;
        }
    }
}

/// Whether `req`, answered `Ok`, ends the container's VM: SIGKILL, and a checkpoint that
/// does not leave the container running.
fn ends_the_vm(req: &ControlRequest) -> bool {
    matches!(
        req,
        ControlRequest::Kill {
            signal: libc::SIGKILL,
            ..
        } | ControlRequest::Checkpoint {
            leave_running: false,
            ..
        }
    )
}

fn answer(shared: &Shared, req: ControlRequest) -> ControlReply {
    let agent = &shared.agent;
    match req {
        ControlRequest::Status => ControlReply::Status {
            status: shared.phase(),
        },
        ControlRequest::Start => {
            let phase = shared.phase();
            if phase != SandboxStatus::Created {
                return error(format!(
                    "cannot start a container that is {}",
                    describe(phase)
                ));
            }
            match agent.request_done(RequestBody::Start, AGENT_TIMEOUT) {
                Ok(()) => {
                    let mut p = shared.phase.lock().unwrap_or_else(|p| p.into_inner());
                    if *p == SandboxStatus::Created {
                        *p = SandboxStatus::Running;
                    }
                    ControlReply::Ok
                }
                Err(e) => error(e.to_string()),
            }
        }
        ControlRequest::Kill { signal, all } => {
            if let SandboxStatus::Stopped { .. } = shared.phase() {
                return error("cannot signal a container that is stopped");
            }
            // SIGKILL to the container's process ends the container: stop the VM at once
            // rather than wait seconds for the guest to report the death (podman gives a
            // killed container 5 s to go).
            // (`handle_client` stops it once this answer is out.)
            if let (libc::SIGKILL, Some(_)) = (signal, &shared.vm) {
                return ControlReply::Ok;
            }
            // The agent answers only while the VM runs: a signal to a paused container
            // resumes it (as a frozen process gets SIGKILL at once).
            if let Some(vm) = shared.vm.as_ref().filter(|vm| vm.is_paused()) {
                vm.resume();
            }
            match agent.request_done(
                RequestBody::Signal {
                    stream: INIT_STREAM.into(),
                    signal,
                    all,
                },
                AGENT_TIMEOUT,
            ) {
                Ok(()) => ControlReply::Ok,
                Err(e) => error(e.to_string()),
            }
        }
        ControlRequest::Ps => match agent.request(RequestBody::Ps, AGENT_TIMEOUT) {
            Ok(ResponseBody::Pids { pids }) => ControlReply::Pids { pids },
            Ok(other) => error(format!("unexpected agent answer {other:?}")),
            Err(e) => error(e.to_string()),
        },
        ControlRequest::Stdin { .. }
        | ControlRequest::CloseStdin
        | ControlRequest::Resize { .. } => error("no exec'd process on this connection"),
        ControlRequest::Exec { .. } => error("exec is handled by its own connection"),
        ControlRequest::Pause | ControlRequest::Resume | ControlRequest::Checkpoint { .. } => {
            answer_vm(shared, req)
        }
    }
}

/// Pause, resume and checkpoint: requests for the VM rather than the agent.
fn answer_vm(shared: &Shared, req: ControlRequest) -> ControlReply {
    let Some(vm) = &shared.vm else {
        return error("this sandbox has no VM to control");
    };
    let phase = shared.lifecycle_phase();
    if !matches!(phase, SandboxStatus::Created | SandboxStatus::Running) {
        return error(format!("the container is {}", describe(phase)));
    }
    let done = match req {
        ControlRequest::Pause => vm.pause(),
        ControlRequest::Resume if !vm.is_paused() => {
            return error("the container is not paused");
        }
        ControlRequest::Resume => {
            vm.resume();
            Ok(())
        }
        ControlRequest::Checkpoint {
            image_path,
            leave_running,
        } => {
            let was_paused = vm.is_paused();
            let started = phase == SandboxStatus::Running;
            let made = vm.checkpoint(&image_path, &shared.id, started);
            // Made and not to be left running: `handle_client` stops the VM once the
            // answer is out.
            if (made.is_err() || leave_running) && !was_paused {
                vm.resume();
            }
            made
        }
        _ => return error("not a VM request"),
    };
    match done {
        Ok(()) => ControlReply::Ok,
        Err(e) => error(e.to_string()),
    }
}

/// Runs an exec'd process and relays its stdio over `stream` until it exits.
fn run_exec(mut stream: UnixStream, shared: &Shared, process: Process) {
    let phase = shared.phase();
    if phase != SandboxStatus::Running {
        let _ = write_frame(
            &mut stream,
            &error(format!(
                "cannot exec in a container that is {}",
                describe(phase)
            )),
        );
        return;
    }
    let exec_id = format!(
        "{}-{}",
        shared.exec_prefix,
        shared.next_exec.fetch_add(1, Ordering::Relaxed)
    );
    let agent = shared.agent.clone();
    let events = agent.subscribe(&exec_id);
    let started = agent.request(
        RequestBody::Exec {
            exec_id: exec_id.clone(),
            process: Box::new(process),
        },
        AGENT_TIMEOUT,
    );
    let reply = match started {
        Ok(ResponseBody::Started { pid }) => ControlReply::ExecStarted { pid },
        Ok(other) => error(format!("unexpected agent answer {other:?}")),
        Err(e) => error(e.to_string()),
    };
    let ok = matches!(reply, ControlReply::ExecStarted { .. });
    if write_frame(&mut stream, &reply).is_err() || !ok {
        agent.unsubscribe(&exec_id);
        return;
    }
    if let Ok(mut from_client) = stream.try_clone() {
        let (agent, id) = (agent.clone(), exec_id.clone());
        let spawned = std::thread::Builder::new()
            .name("zvm_exec_in".into())
            .spawn(move || relay_client_input(&mut from_client, &agent, &id));
        if let Err(e) = spawned {
            tracing::warn!("cannot relay exec stdin: {e}");
        }
    }
    let mut client_gone = false;
    let end = loop {
        let Ok(event) = events.recv() else {
            break error("the guest agent connection was lost");
        };
        match event {
            Event::Output { fd, data, .. } => {
                if !client_gone
                    && write_frame(&mut stream, &ControlReply::Output { fd, data }).is_err()
                {
                    tracing::debug!("exec client {exec_id} left; its output is dropped");
                    client_gone = true;
                }
            }
            Event::Exited { status, .. } => {
                break ControlReply::Exited {
                    code: status.shell_code(),
                }
            }
        }
    };
    agent.unsubscribe(&exec_id);
    if !client_gone {
        let _ = write_frame(&mut stream, &end);
    }
    // Ends the input relay's read and tells the client we are done.
    let _ = stream.shutdown(Shutdown::Both);
}

fn relay_client_input(stream: &mut UnixStream, agent: &AgentConn, exec_id: &str) {
    let mut closed = false;
    loop {
        let body = match read_frame::<_, ControlRequest>(stream) {
            Ok(ControlRequest::Stdin { data }) => RequestBody::Stdin {
                stream: exec_id.into(),
                data,
            },
            Ok(ControlRequest::CloseStdin) => {
                closed = true;
                RequestBody::CloseStdin {
                    stream: exec_id.into(),
                }
            }
            Ok(ControlRequest::Resize { rows, cols }) => RequestBody::ResizeTerminal {
                stream: exec_id.into(),
                rows,
                cols,
            },
            // On an exec's connection, a kill is for the exec'd process.
            Ok(ControlRequest::Kill { signal, all }) => RequestBody::Signal {
                stream: exec_id.into(),
                signal,
                all,
            },
            Ok(other) => {
                tracing::debug!("ignoring {other:?} during exec {exec_id}");
                continue;
            }
            Err(_) => break,
        };
        if let Err(e) = agent.request_done(body, AGENT_TIMEOUT) {
            tracing::debug!("exec {exec_id} input: {e}");
            break;
        }
    }
    if !closed {
        let _ = agent.request_done(
            RequestBody::CloseStdin {
                stream: exec_id.into(),
            },
            AGENT_TIMEOUT,
        );
    }
}
