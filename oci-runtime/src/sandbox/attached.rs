//! One container process in a VM someone else built and owns, driven through its agent with
//! the process's stdio on the caller's own stdio: what `zvm run --flist` does for container
//! flists (and so the node daemon, whose workload VMs are `zvm run --flist` processes).
//!
//! The caller boots the project's kernel with the agent's disk as the root device and the
//! container's root file system on another disk ([`agent_drives`] describes both), with a
//! vsock device; [`run_attached`] then waits for the agent, creates and starts the process,
//! relays standard input to it (closing it at end of input) and its output to standard
//! output and error, and once it exits ends the VM as zvm-runc's sandbox does: the agent
//! syncs (what the container wrote reaches the host's disks and shares), then the VM is
//! stopped at once, without the guest's own power-off (seconds of emulated kernel work
//! on slow hosts). An agent older than `Sync` is asked to power the VM off instead.

use super::agent::{create_request, wait_for_agent, AgentConn, AgentError, Notice};
use super::daemon::{AGENT_DEADLINE, CREATE_TIMEOUT};
use super::vm_guard::SYNC_TIMEOUT;
use super::SandboxError;
use agent_protocol::{Bytes, Event, ExitStatus, RequestBody, AGENT_VSOCK_PORT, INIT_STREAM};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm::resources::DriveConfig;

/// Drive id of the agent's boot disk in [`agent_drives`].
pub const AGENT_DRIVE: &str = super::vmconfig::AGENT_DRIVE_ID;
/// Drive id of the container's root file system in [`agent_drives`].
pub const ROOTFS_DRIVE: &str = super::vmconfig::ROOTFS_DRIVE_ID;

/// The two disks a container VM starts with, in guest order: the agent's disk (`/dev/vda`,
/// root device, read-only) and the container's root file system ([`super::ROOTFS_DEVICE`]).
/// Disks attached after them are `/dev/vdc`, `/dev/vdd`, ...
pub fn agent_drives(
    agent_image: &Path,
    rootfs_image: &Path,
    rootfs_readonly: bool,
) -> [DriveConfig; 2] {
    [
        DriveConfig {
            drive_id: AGENT_DRIVE.into(),
            path_on_host: agent_image.to_path_buf(),
            is_root_device: true,
            is_read_only: true,
            rate_limiter: None,
            io_engine: Default::default(),
        },
        DriveConfig {
            drive_id: ROOTFS_DRIVE.into(),
            path_on_host: rootfs_image.to_path_buf(),
            is_root_device: false,
            is_read_only: rootfs_readonly,
            rate_limiter: None,
            io_engine: Default::default(),
        },
    ]
}

/// The guest device name of the `index`-th virtio disk (0 -> `/dev/vda`); `None` past `vdz`.
pub fn guest_disk_device(index: usize) -> Option<String> {
    u8::try_from(index)
        .ok()
        .filter(|i| *i < 26)
        .map(|i| format!("/dev/vd{}", char::from(b'a' + i)))
}

/// What [`run_attached`] runs and where it finds the agent.
#[derive(Debug, Clone)]
pub struct AttachedRun<'a> {
    /// The VM's vsock Unix socket (host side).
    pub vsock_uds: &'a Path,
    /// The guest console log, quoted when the agent never answers (None: the console is
    /// elsewhere, e.g. on the terminal).
    pub console_log: Option<&'a Path>,
    /// The container; `process.terminal` asks for a pty.
    pub spec: oci_spec::runtime::Spec,
    /// Where the agent finds the container's root file system: a guest block device
    /// (ext4), or a directory of the share when the root comes over virtio-fs.
    pub rootfs: agent_protocol::Rootfs,
    /// The tag of the VM's virtio-fs share (see [`super::share`]), which the agent mounts
    /// before anything else, when the container has one.
    pub share_tag: Option<String>,
    /// Run the threads that handle what the guest sends under the relay seccomp filter
    /// (see [`run_attached`]).
    pub seccomp: bool,
}

enum Main {
    Agent(Notice),
    StdinDone,
}

/// Runs `run.spec`'s process through the agent (see the module docs) and returns how it
/// ended. `gone` says why the VM ended, once it has (the wait for the agent stops then);
/// `stop_vm` stops the VM at once (called once the process exited and the guest synced).
///
/// With `run.seccomp`, once connected the calling thread and the threads this starts (the
/// agent reader, the stdin relay) run under [`super::seccomp::relay_filter`]: call it
/// from a thread of its own. Only the connection's handshake is read before that.
pub fn run_attached(
    run: AttachedRun<'_>,
    gone: &dyn Fn() -> Option<String>,
    stop_vm: &dyn Fn(),
) -> Result<ExitStatus, SandboxError> {
    run_attached_with_network(run, &[], gone, stop_vm)
}

/// [`run_attached`] in a VM restored from a template with network interfaces: after the
/// refresh, the agent gives each interface of `network` its MAC, address and gateway
/// (empty: nothing is sent, as [`run_attached`]).
pub fn run_attached_with_network(
    run: AttachedRun<'_>,
    network: &[agent_protocol::network::NetInterface],
    gone: &dyn Fn() -> Option<String>,
    stop_vm: &dyn Fn(),
) -> Result<ExitStatus, SandboxError> {
    let stream = wait_for_agent(
        run.vsock_uds,
        AGENT_VSOCK_PORT,
        Instant::now() + AGENT_DEADLINE,
        run.console_log,
        gone,
    )?;
    let (tx, rx) = mpsc::channel::<Main>();
    let agent_tx = tx.clone();
    let agent = AgentConn::start(stream, run.seccomp, move |n| {
        let _ = agent_tx.send(Main::Agent(n));
    })
    .map_err(SandboxError::io("start the agent reader"))?;
    let release_stdin = relay_stdin(agent.clone(), tx, run.seccomp)
        .map_err(SandboxError::io("start the stdin relay"))?;
    super::seccomp::relay_filter()
        .install(run.seccomp)
        .map_err(|e| SandboxError::Sandbox(e.to_string()))?;
    let terminal = crate::bundle::wants_terminal(&run.spec);
    // A VM restored from a template starts with the template's entropy, clock and name;
    // the refresh, the interfaces and the create go out together.
    let hostname = run.spec.hostname().clone().filter(|h| !h.is_empty());
    let create = create_request(run.spec, run.rootfs, run.share_tag, terminal);
    agent.refresh_and_create(hostname.as_deref(), network, create, CREATE_TIMEOUT)?;
    if let Err(e) = agent.request_done(RequestBody::Start, CREATE_TIMEOUT) {
        let _ = agent.request_done(RequestBody::Shutdown, Duration::from_secs(10));
        return Err(e.into());
    }
    let _ = release_stdin.send(());
    let status = relay_output(&rx);
    if status.is_ok() {
        end_vm(&agent, stop_vm);
    } else if let Err(e) = agent.request_done(RequestBody::Shutdown, Duration::from_secs(30)) {
        tracing::warn!("asking the agent to power off: {e}");
    }
    status
}

/// Ends the VM of a process that exited: `Sync`, then `stop_vm` at once; an agent that
/// cannot sync (older than the request: "bad request") is asked to power the VM off,
/// which the caller waits for as before.
fn end_vm(agent: &AgentConn, stop_vm: &dyn Fn()) {
    let start = Instant::now();
    match agent.request_done(RequestBody::Sync, SYNC_TIMEOUT) {
        Ok(()) => {
            tracing::debug!("guest synced in {:?}; stopping the VM", start.elapsed());
            stop_vm();
        }
        Err(e) => {
            tracing::info!("no sync ({e}): asking the agent to power the VM off");
            if let Err(e) = agent.request_done(RequestBody::Shutdown, Duration::from_secs(30)) {
                tracing::warn!("asking the agent to power off: {e}");
            }
        }
    }
}

/// Copies the process's output to ours until it exits.
fn relay_output(rx: &mpsc::Receiver<Main>) -> Result<ExitStatus, SandboxError> {
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    loop {
        match rx.recv() {
            Ok(Main::Agent(Notice::Init(Event::Output { fd, data, .. }))) => {
                let sink: &mut dyn Write = if fd == 2 { &mut err } else { &mut out };
                // Our output going away must not stop the container.
                let _ = sink.write_all(&data.0).and_then(|()| sink.flush());
            }
            Ok(Main::Agent(Notice::Init(Event::Exited { status, .. }))) => return Ok(status),
            Ok(Main::Agent(Notice::Lost(why))) => {
                return Err(SandboxError::Agent(AgentError::Lost(why)));
            }
            Ok(Main::StdinDone) => {}
            Err(_) => return Err(SandboxError::Control("the agent reader ended".into())),
        }
    }
}

/// Sends our standard input to the process on a thread of its own, once the returned
/// sender says the process has started; closes the process's stdin at end of input.
fn relay_stdin(
    agent: Arc<AgentConn>,
    tx: mpsc::Sender<Main>,
    seccomp: bool,
) -> std::io::Result<mpsc::Sender<()>> {
    let (release, started) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("zvm_stdin".into())
        .spawn(move || {
            let filtered = super::seccomp::relay_filter().install(seccomp);
            if filtered.is_err() || started.recv().is_err() {
                return;
            }
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => 0,
                };
                let request = if n == 0 {
                    RequestBody::CloseStdin {
                        stream: INIT_STREAM.into(),
                    }
                } else {
                    RequestBody::Stdin {
                        stream: INIT_STREAM.into(),
                        data: Bytes(buf[..n].to_vec()),
                    }
                };
                if agent
                    .request_done(request, Duration::from_secs(30))
                    .is_err()
                    || n == 0
                {
                    break;
                }
            }
            let _ = tx.send(Main::StdinDone);
        })?;
    Ok(release)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agent_protocol::{handshake, read_frame, write_frame, AgentMessage, Request, ResponseBody};
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn disks_are_named_in_attach_order() {
        assert_eq!(guest_disk_device(0).as_deref(), Some("/dev/vda"));
        assert_eq!(guest_disk_device(2).as_deref(), Some("/dev/vdc"));
        assert_eq!(guest_disk_device(25).as_deref(), Some("/dev/vdz"));
        assert_eq!(guest_disk_device(26), None);
        let [agent, rootfs] = agent_drives(Path::new("/a.ext4"), Path::new("/r.ext4"), false);
        assert!(agent.is_root_device && agent.is_read_only);
        assert!(!rootfs.is_root_device && !rootfs.is_read_only);
        assert_eq!(
            guest_disk_device(1).as_deref(),
            Some(super::super::ROOTFS_DEVICE)
        );
    }

    /// How the fake agent answers Create.
    #[derive(Clone, Copy)]
    enum Script {
        /// Created; Start is answered, then output and exit 3.
        RunsAndExits,
        /// Create is refused.
        RefusesCreate,
        /// The connection drops after Start.
        DiesAfterStart,
        /// As RunsAndExits, but older than `Sync`: refuses it as a bad request.
        CannotSync,
    }

    /// A fake VMM vsock socket with a fake agent behind it; returns the names of the
    /// requests it received.
    fn fake_agent(uds: &Path, script: Script) -> std::thread::JoinHandle<Vec<&'static str>> {
        let listener = UnixListener::bind(uds).unwrap();
        std::thread::spawn(move || {
            let (mut s, _): (UnixStream, _) = listener.accept().unwrap();
            let mut line = [0u8; 13];
            s.read_exact(&mut line).unwrap();
            assert_eq!(&line, b"CONNECT 1024\n");
            s.write_all(b"OK 1024\n").unwrap();
            handshake(&mut s, "fake-agent").unwrap();
            let mut seen = Vec::new();
            loop {
                let Ok(req) = read_frame::<_, Request>(&mut s) else {
                    return seen;
                };
                let name = super::super::agent::request_name(&req.body);
                seen.push(name);
                let result = match (name, script) {
                    ("Create", Script::RefusesCreate) => Err("no such file: /bin/app".to_string()),
                    ("Sync", Script::CannotSync) => {
                        Err("bad request: unknown variant `Sync`".to_string())
                    }
                    ("Create", _) => Ok(ResponseBody::Created { pid: 9 }),
                    _ => Ok(ResponseBody::Done),
                };
                write_frame(&mut s, &AgentMessage::Response { id: req.id, result }).unwrap();
                match (name, script) {
                    ("Start", Script::DiesAfterStart) => return seen,
                    ("Start", _) => {
                        let event = |e| {
                            write_frame(&mut s.try_clone().unwrap(), &AgentMessage::Event(e))
                                .unwrap()
                        };
                        event(Event::Output {
                            stream: INIT_STREAM.into(),
                            fd: 1,
                            data: Bytes(b"attached-test-output\n".to_vec()),
                        });
                        event(Event::Exited {
                            stream: INIT_STREAM.into(),
                            status: ExitStatus::exited(3),
                        });
                    }
                    ("Shutdown", _) | ("Sync", Script::RunsAndExits) => return seen,
                    _ => {}
                }
            }
        })
    }

    /// Runs against the fake agent at `uds`; also says whether the VM was stopped.
    fn run(uds: &Path) -> (Result<ExitStatus, SandboxError>, bool) {
        let run = AttachedRun {
            vsock_uds: uds,
            console_log: None,
            spec: oci_spec::runtime::Spec::default(),
            rootfs: agent_protocol::Rootfs::BlockDevice {
                device: "/dev/vdb".into(),
                fstype: "ext4".into(),
            },
            share_tag: None,
            seccomp: true,
        };
        let stopped = std::sync::atomic::AtomicBool::new(false);
        let stop = || stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        // The filters land on this thread: keep them off the test harness's threads.
        let result = std::thread::scope(|s| {
            s.spawn(|| run_attached(run, &|| None, &stop))
                .join()
                .unwrap()
        });
        (result, stopped.into_inner())
    }

    #[test]
    fn the_process_runs_to_its_exit_status_and_the_vm_is_stopped_once_synced() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let agent = fake_agent(&uds, Script::RunsAndExits);
        let (result, stopped) = run(&uds);
        assert_eq!(result.unwrap(), ExitStatus::exited(3));
        assert!(stopped, "the VM is stopped once the guest synced");
        // The stdin relay's CloseStdin may come anywhere after Start.
        let mut seen = agent.join().unwrap();
        seen.retain(|r| *r != "CloseStdin");
        assert_eq!(seen, ["Refresh", "Create", "Start", "Sync"]);
    }

    #[test]
    fn an_agent_without_sync_powers_the_vm_off_itself() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let agent = fake_agent(&uds, Script::CannotSync);
        let (result, stopped) = run(&uds);
        assert_eq!(result.unwrap(), ExitStatus::exited(3));
        assert!(!stopped, "left to power off by itself");
        let mut seen = agent.join().unwrap();
        seen.retain(|r| *r != "CloseStdin");
        assert_eq!(seen, ["Refresh", "Create", "Start", "Sync", "Shutdown"]);
    }

    #[test]
    fn a_refused_create_is_an_error_and_still_powers_off() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let agent = fake_agent(&uds, Script::RefusesCreate);
        let (result, stopped) = run(&uds);
        let err = result.unwrap_err().to_string();
        assert_eq!(
            err,
            "the guest agent refused Create: no such file: /bin/app"
        );
        assert!(!stopped);
        assert_eq!(agent.join().unwrap(), ["Refresh", "Create", "Shutdown"]);
    }

    #[test]
    fn a_lost_agent_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let agent = fake_agent(&uds, Script::DiesAfterStart);
        let err = run(&uds).0.unwrap_err().to_string();
        assert!(err.contains("connection was lost"), "{err}");
        assert_eq!(agent.join().unwrap(), ["Refresh", "Create", "Start"]);
    }
}
