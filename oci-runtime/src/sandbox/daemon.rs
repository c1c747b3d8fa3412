//! The sandbox process: boots the container's VM, creates the container through the agent,
//! then relays stdio and signals until the container's process exits.

use super::agent::{create_request, wait_for_agent, AgentConn, Notice};
use super::checkpoint::VmControl;
use super::control::{ExitRecord, SandboxStatus};
use super::jailing::{self, Entered};
use super::launch::Ready;
use super::server::{self, Shared, AGENT_TIMEOUT};
use super::share::sandbox::ContainerShare;
use super::share::RootfsMode;
use super::stdio::{pump, OutputSink};
use super::vm_guard::{end_exited_vm, watch_vm};
use super::vmconfig::{vm_size, VmFiles, ROOTFS_DEVICE};
use super::vmstart::{restore_checkpoint, start_vm, vm_hostname};
use super::{disk, pty, unix, SandboxConfig, SandboxError};
use super::{
    AGENT_IMAGE, CONFIG_FILE, CONSOLE_LOG, CONTROL_SOCKET, EXIT_FILE, LOG_FILE, ROOTFS_IMAGE,
    VSOCK_SOCKET,
};
use agent_protocol::{Bytes, Event, ExitStatus, RequestBody, AGENT_VSOCK_PORT, INIT_STREAM};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the agent has to start listening (boots take 50-60 s here, several minutes
/// when the machine is busy).
pub(crate) const AGENT_DEADLINE: Duration = Duration::from_secs(360);
/// How long the agent has to create the container.
pub(crate) const CREATE_TIMEOUT: Duration = Duration::from_secs(300);

/// What the sandbox's main loop waits for.
#[derive(Debug)]
pub(crate) enum MainEvent {
    /// From the agent connection.
    Agent(Notice),
    /// A signal the sandbox received.
    Signal(i32),
    /// The VM ended (how).
    VmEnded(String),
    /// The guest powered the VM off (ACPI): it ended as a machine that was shut down.
    VmPoweredOff,
}

/// Body of the hidden `__sandbox <container_dir>` subcommand: boots the VM with vmm as a
/// library, talks to the agent, serves `<container_dir>/sandbox.sock`, and exits with the
/// container's exit status (0-255) when the container's process ends; forwards the signals
/// it receives (SIGTERM, SIGINT, SIGHUP, SIGUSR1/2, ...) to the container's process. Call it
/// before the process starts other threads (it blocks those signals for its own threads).
pub fn sandbox_main(container_dir: &Path) -> ExitCode {
    let mut ready = Ready::from_env();
    crate::logging::init_process_file(&container_dir.join(LOG_FILE));
    let notes = Notes::open(&container_dir.join(LOG_FILE));
    match run(container_dir, &mut ready, &notes) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            notes.note(&format!("failed: {e}"));
            if ready.is_pending() {
                ready.fail(&with_console_tail(
                    &e.to_string(),
                    &container_dir.join(CONSOLE_LOG),
                ));
            } else {
                eprintln!("zvm sandbox: {e}");
            }
            ExitCode::from(1)
        }
    }
}

/// `message`, and the last lines of the guest console when the VM wrote any (a container
/// that failed to boot or start says why in the guest's messages and the agent's log).
pub(crate) fn with_console_tail(message: &str, console: &Path) -> String {
    let wrote = std::fs::metadata(console).is_ok_and(|m| m.len() > 0);
    if wrote {
        // No path: a failed create removes the container's directory.
        format!(
            "{message}\nlast lines of the guest console:\n{}",
            super::agent::console_tail(console, 20)
        )
    } else {
        message.to_string()
    }
}

/// The sandbox's notes in `sandbox.log` (also logged with tracing at debug level: the
/// sandbox's stderr is the container's).
pub(crate) struct Notes {
    file: Mutex<Option<File>>,
    start: Instant,
}

impl Notes {
    fn open(path: &Path) -> Notes {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok();
        Notes {
            file: Mutex::new(file),
            start: Instant::now(),
        }
    }

    pub(crate) fn note(&self, msg: &str) {
        tracing::debug!("{msg}");
        if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = writeln!(f, "[{:8.3}] {msg}", self.start.elapsed().as_secs_f64());
        }
    }
}

/// The root file system on the VM's second disk (an ext4 copy of the bundle's).
pub(crate) fn block_rootfs() -> agent_protocol::Rootfs {
    agent_protocol::Rootfs::BlockDevice {
        device: ROOTFS_DEVICE.into(),
        fstype: "ext4".into(),
    }
}

fn rootfs_dir(cfg: &SandboxConfig) -> Result<PathBuf, SandboxError> {
    let root = cfg
        .spec
        .root()
        .as_ref()
        .ok_or_else(|| SandboxError::Sandbox("config.json has no root".into()))?;
    Ok(if root.path().is_absolute() {
        root.path().clone()
    } else {
        cfg.bundle.join(root.path())
    })
}

fn run(dir: &Path, ready: &mut Ready, notes: &Notes) -> Result<u8, SandboxError> {
    let text = std::fs::read(dir.join(CONFIG_FILE)).map_err(SandboxError::io(format!(
        "read {}",
        dir.join(CONFIG_FILE).display()
    )))?;
    let cfg: SandboxConfig = serde_json::from_slice(&text)
        .map_err(|e| SandboxError::Sandbox(format!("bad {CONFIG_FILE}: {e}")))?;
    cfg.artifacts.check()?;
    let size = vm_size(&cfg.spec)?;
    let readonly = cfg
        .spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let rootfs_mode = RootfsMode::from_env(&cfg.spec)?;
    let terminal = crate::bundle::wants_terminal(&cfg.spec);
    let (image, agent_image, console) = (
        dir.join(ROOTFS_IMAGE),
        dir.join(AGENT_IMAGE),
        dir.join(CONSOLE_LOG),
    );
    // vmm's vsock device takes a socket path of any length.
    let vsock = dir.join(VSOCK_SOCKET);
    // Its virtiofsd runs beside the jail (dropped last: after the VM stops). A restored
    // container gets one too, on the share laid out as at create: the checkpoint's
    // virtiofsd state names the files its guest held by their paths in it.
    let rootfs = rootfs_dir(&cfg)?;
    let started = ContainerShare::start(&cfg, &rootfs, rootfs_mode, notes)?;
    if cfg.restore_from.is_none() {
        if started.rootfs_shared() {
            // The VM keeps its second disk, empty: the agent does not use it.
            File::create(&image)
                .map_err(SandboxError::io(format!("create {}", image.display())))?;
        } else {
            disk::make_rootfs_image(&rootfs, &image)?;
        }
        notes.note(&format!(
            "container {}: {} vCPUs, {} MiB, rootfs {} ({}, {})",
            cfg.id,
            size.vcpus,
            size.memory_mib,
            rootfs.display(),
            if readonly { "read-only" } else { "read-write" },
            if started.rootfs_shared() {
                "over virtio-fs"
            } else {
                "ext4 copy"
            }
        ));
    }
    let share = Some(started);
    let shared = share.as_ref().is_some_and(ContainerShare::needed);
    // Only a share's writes outlive the VM: its exit waits for the guest's sync then.
    let sync_at_exit = shared;
    // The jail splits the process: the supervisor waits here for the jailed half, which
    // goes on (and is locked down by vmm once its VM's resources are open).
    if let Entered::Supervisor(status) = jailing::enter(&cfg, size, &image, &vsock, shared, notes)?
    {
        let _ = std::fs::remove_file(dir.join(CONTROL_SOCKET));
        let _ = std::fs::remove_file(&vsock);
        return Ok((status & 0xff) as u8);
    }
    // Before any thread starts, so that every thread has them blocked.
    let signals =
        unix::signalfd(unix::FORWARDED_SIGNALS).map_err(SandboxError::io("block signals"))?;
    // Before the VM: a jail has neither /dev/ptmx nor the console socket.
    let tty = open_terminal(&cfg, terminal)?;
    let restored = match &cfg.restore_from {
        Some(from) => {
            let socket = share
                .iter()
                .flat_map(ContainerShare::fs_configs)
                .find_map(|fs| fs.socket_path);
            let (vm, manifest) =
                restore_checkpoint(from, dir, &image, &console, &vsock, socket.as_deref())?;
            notes.note(&format!(
                "container {} restored from the checkpoint in {} (of {})",
                cfg.id,
                from.display(),
                manifest.id
            ));
            Some((vm, manifest))
        }
        None => None,
    };
    let (vm, restored) = match restored {
        Some((vm, manifest)) => (vm, Some(manifest)),
        None => {
            let files = VmFiles {
                kernel: &cfg.artifacts.kernel,
                agent_image: &agent_image,
                rootfs_image: &image,
                console_log: &console,
                vsock: &vsock,
            };
            let fs = share
                .as_ref()
                .map(ContainerShare::fs_configs)
                .unwrap_or_default();
            (start_vm(&cfg, size, files, fs, notes)?, None)
        }
    };
    let control = VmControl::of(&vm)?;
    let (tx, rx) = mpsc::channel::<MainEvent>();
    let guard = watch_vm(vm, tx.clone())?;
    notes.note("VM started; waiting for the agent");

    let stream = wait_for_agent(
        &vsock,
        AGENT_VSOCK_PORT,
        Instant::now() + AGENT_DEADLINE,
        // sandbox_main quotes the console on any failure.
        None,
        &|| guard.ended(),
    )?;
    let agent_tx = tx.clone();
    let agent = AgentConn::start(stream, true, move |n| {
        let _ = agent_tx.send(MainEvent::Agent(n));
    })
    .map_err(SandboxError::io("start the agent reader"))?;
    notes.note("agent connected");
    let hostname = vm_hostname(&cfg);
    let phase = match &restored {
        None => {
            let (spec, rootfs, tag) = match &share {
                Some(share) => (share.spec().clone(), share.rootfs(), share.tag()),
                None => (cfg.spec.clone(), block_rootfs(), None),
            };
            // Refresh and Create go out together: the agent finds Create waiting.
            let create = create_request(spec, rootfs, tag, terminal);
            let pid = agent.refresh_and_create(Some(&hostname), &[], create, CREATE_TIMEOUT)?;
            notes.note(&format!("container created (guest pid {pid})"));
            SandboxStatus::Created
        }
        Some(manifest) => {
            agent.refresh(Some(&hostname), CREATE_TIMEOUT)?;
            if manifest.started {
                SandboxStatus::Running
            } else {
                SandboxStatus::Created
            }
        }
    };

    let shared = Shared::with_vm(agent.clone(), Some(control), phase, cfg.id.clone());
    let listener = unix::bind(&dir.join(CONTROL_SOCKET))
        .map_err(SandboxError::io("bind the control socket"))?;
    server::serve(listener, shared.clone())
        .map_err(SandboxError::io("start the control server"))?;
    let (sink, tty) = connect_stdio(tty, &agent)?;
    let signal_tx = tx.clone();
    std::thread::Builder::new()
        .name("zvm_signals".into())
        .spawn(move || {
            while let Ok(sig) = unix::read_signal(&signals) {
                if signal_tx.send(MainEvent::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .map_err(SandboxError::io("start the signal thread"))?;
    drop(tx);
    ready.ok();

    let outcome = supervise(&rx, &shared, sink, tty.as_ref());
    let status = match &outcome {
        Ok(status) => *status,
        Err(why) => {
            notes.note(why);
            eprintln!("zvm sandbox: {why}");
            ExitStatus {
                code: None,
                signal: None,
            }
        }
    };
    let exit = status.shell_code();
    record_exit(dir, ExitRecord { exit, status })?;
    shared.set_phase(SandboxStatus::Stopped { exit });
    notes.note(&format!("container exited: {exit}"));
    if outcome.is_ok() && !shared.vm_killed.load(Ordering::Acquire) {
        notes.note(&end_exited_vm(&agent, &guard, sync_at_exit));
    }
    drop(guard);
    let _ = std::fs::remove_file(dir.join(CONTROL_SOCKET));
    let _ = std::fs::remove_file(dir.join(VSOCK_SOCKET));
    notes.note(&format!("exiting with {exit}"));
    Ok((exit & 0xff) as u8)
}

/// The container's terminal when `terminal` and a console socket are given: a new pty
/// whose master goes to the console socket; returns its slave.
fn open_terminal(cfg: &SandboxConfig, terminal: bool) -> Result<Option<File>, SandboxError> {
    let (Some(socket), true) = (&cfg.console_socket, terminal) else {
        return Ok(None);
    };
    let pty = pty::open_pty().map_err(SandboxError::io("open a pty"))?;
    pty::send_fd(socket, pty.master.as_fd(), "/dev/ptmx").map_err(SandboxError::io(format!(
        "send the pty to the console socket {}",
        socket.display()
    )))?;
    if let Err(e) = pty::set_controlling_terminal(pty.slave.as_raw_fd()) {
        tracing::debug!("no controlling terminal (no resize events): {e}");
    }
    Ok(Some(pty.slave))
}

/// Wires the container's stdio: the pty of [`open_terminal`] when there is one, else the
/// stdin/stdout/stderr this process inherited. Starts the input relay.
fn connect_stdio(
    tty: Option<File>,
    agent: &Arc<AgentConn>,
) -> Result<(OutputSink, Option<File>), SandboxError> {
    let (mut input, sink, tty): (Box<dyn std::io::Read + Send>, OutputSink, Option<File>) =
        match tty {
            Some(slave) => {
                let clone = |f: &File| f.try_clone().map_err(SandboxError::io("clone the pty"));
                let sink = OutputSink {
                    stdout: Box::new(clone(&slave)?),
                    stderr: Box::new(clone(&slave)?),
                };
                (Box::new(clone(&slave)?), sink, Some(slave))
            }
            None => {
                // SAFETY: dup of fd 0, owned by the new File; an invalid fd 0 gives an error.
                let stdin = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
                let input: Box<dyn std::io::Read + Send> = if stdin < 0 {
                    Box::new(std::io::empty())
                } else {
                    // SAFETY: a new descriptor owned by nobody else.
                    Box::new(File::from(unsafe { OwnedFd::from_raw_fd(stdin) }))
                };
                (
                    input,
                    OutputSink {
                        stdout: Box::new(std::io::stdout()),
                        stderr: Box::new(std::io::stderr()),
                    },
                    None,
                )
            }
        };
    if let Some(t) = &tty {
        resize(agent, t);
    }
    let agent = agent.clone();
    std::thread::Builder::new()
        .name("zvm_stdin".into())
        .spawn(move || {
            pump(&mut input, |chunk| {
                let body = match chunk {
                    Some(data) => RequestBody::Stdin {
                        stream: INIT_STREAM.into(),
                        data: Bytes::from(data),
                    },
                    None => RequestBody::CloseStdin {
                        stream: INIT_STREAM.into(),
                    },
                };
                agent
                    .request_done(body, AGENT_TIMEOUT)
                    .map_err(|e| tracing::debug!("container stdin: {e}"))
                    .is_ok()
            })
        })
        .map_err(SandboxError::io("start the stdin relay"))?;
    Ok((sink, tty))
}

fn resize(agent: &Arc<AgentConn>, tty: &File) {
    if let Some((rows, cols)) = pty::window_size(tty.as_raw_fd()) {
        let agent = agent.clone();
        std::thread::spawn(move || {
            agent.request_done(
                RequestBody::ResizeTerminal {
                    stream: INIT_STREAM.into(),
                    rows,
                    cols,
                },
                AGENT_TIMEOUT,
            )
        });
    }
}

/// The main loop: relays the container's output, forwards signals, and returns how the
/// container's process ended (or why the sandbox lost it).
pub(crate) fn supervise(
    rx: &Receiver<MainEvent>,
    shared: &Shared,
    mut sink: OutputSink,
    tty: Option<&File>,
) -> Result<ExitStatus, String> {
    loop {
        let Ok(event) = rx.recv() else {
            return Err("every event source of the sandbox ended".into());
        };
        match event {
            MainEvent::Agent(Notice::Init(Event::Output { fd, data, .. })) => sink.write(fd, &data),
            MainEvent::Agent(Notice::Init(Event::Exited { status, .. })) => return Ok(status),
            MainEvent::Agent(Notice::Lost(why)) => {
                return Err(format!("lost the guest agent: {why}"))
            }
            MainEvent::VmEnded(_) if shared.vm_killed.load(Ordering::Acquire) => {
                // SIGKILL, or runc's checkpoint, which kills the container once it is saved.
                return Ok(ExitStatus::signaled(libc::SIGKILL));
            }
            MainEvent::VmEnded(how) => {
                return Err(format!(
                    "the VM ended before the container's process: {how}"
                ))
            }
            MainEvent::VmPoweredOff => {
                tracing::info!("the guest powered the VM off: the container ended with it");
                return Ok(ExitStatus {
                    code: Some(0),
                    signal: None,
                });
            }
            MainEvent::Signal(libc::SIGWINCH) => {
                if let Some(t) = tty {
                    resize(&shared.agent, t);
                }
            }
            MainEvent::Signal(sig) => {
                tracing::debug!("forwarding {} to the container", unix::signal_name(sig));
                let agent = shared.agent.clone();
                std::thread::spawn(move || {
                    let body = RequestBody::Signal {
                        stream: INIT_STREAM.into(),
                        signal: sig,
                        all: false,
                    };
                    if let Err(e) = agent.request_done(body, AGENT_TIMEOUT) {
                        tracing::warn!("cannot forward {}: {e}", unix::signal_name(sig));
                    }
                });
            }
        }
    }
}

/// Writes `exit.json` atomically.
fn record_exit(dir: &Path, record: ExitRecord) -> Result<(), SandboxError> {
    let tmp = dir.join(format!("{EXIT_FILE}.tmp"));
    let json = serde_json::to_vec(&record).map_err(|e| SandboxError::Sandbox(e.to_string()))?;
    std::fs::write(&tmp, json).map_err(SandboxError::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join(EXIT_FILE)).map_err(SandboxError::io("record the exit status"))
}
