//! What runs a container: the [`ContainerBackend`] trait between the lifecycle (state
//! machine, hooks, state directory) and the thing that holds the container's processes.
//!
//! - [`vm::VmBackend`]: the real one; every container is a micro-VM (the sandbox module).
//! - `host_process::HostProcessBackend`: **a test double only**, compiled in only with the
//!   non-default cargo feature `test-backend` (this crate's tests turn it on; release and
//!   installed binaries are built without it). It runs the container's process directly on
//!   the host, without any isolation (no namespaces, no rootfs change, no limits), so that
//!   the state machine, hooks and command line are tested in milliseconds without booting a
//!   VM. A build with the feature chooses it with the environment variable
//!   `ZVM_RUNC_BACKEND=host-process`; a build without it refuses that name (and records that
//!   name it) with [`BackendError::TestDoubleNotBuilt`]. Never use it for untrusted code.

#[cfg(feature = "test-backend")]
pub mod host_process;
pub mod vm;

use oci_spec::runtime::{Process, Spec};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Environment variable that selects the backend for new containers (`vm`, the default, or
/// the test-only `host-process` in builds with the `test-backend` feature).
pub const BACKEND_ENV: &str = "ZVM_RUNC_BACKEND";

/// The name of the host-process test double, in `ZVM_RUNC_BACKEND` and in records.
pub const HOST_PROCESS: &str = "host-process";

/// The backend names this build knows, for error messages.
#[cfg(feature = "test-backend")]
const KNOWN_BACKENDS: &str = "vm, host-process; host-process is for tests only";
#[cfg(not(feature = "test-backend"))]
const KNOWN_BACKENDS: &str = "vm";

/// Errors of a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// `ZVM_RUNC_BACKEND` (or a record) names no backend.
    #[error("unknown backend {0:?} (known: {known})", known = KNOWN_BACKENDS)]
    Unknown(String),
    /// `ZVM_RUNC_BACKEND` (or a record) names the host-process test double, which this
    /// build does not have.
    #[error(
        "unknown backend \"host-process\": that is a test double that runs containers on \
         the host without isolation, and it is not built into this binary (only test builds \
         with the cargo feature oci-runtime/test-backend have it)"
    )]
    TestDoubleNotBuilt,
    /// The operation is not available with this backend.
    #[error("{0}")]
    Unsupported(String),
    /// The container's program could not be found or started.
    #[error("cannot run {program}: {reason}")]
    Exec {
        /// The program.
        program: String,
        /// What went wrong.
        reason: String,
    },
    /// A system call or file operation failed.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The sandbox (VM) failed.
    #[error("sandbox: {0}")]
    Sandbox(String),
}

impl BackendError {
    /// Shorthand for an [`BackendError::Io`] builder.
    pub fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
        let action = action.into();
        move |source| BackendError::Io { action, source }
    }
}

/// Which backend runs a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// A micro-VM per container.
    Vm,
    /// Test double: the process runs on the host without isolation (`test-backend` builds
    /// only).
    #[cfg(feature = "test-backend")]
    HostProcess,
}

impl BackendKind {
    /// The name stored in the container's record.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Vm => "vm",
            #[cfg(feature = "test-backend")]
            BackendKind::HostProcess => HOST_PROCESS,
        }
    }

    /// Parses a backend name; `host-process` is refused unless this build has the test
    /// double.
    pub fn parse(name: &str) -> Result<BackendKind, BackendError> {
        match name {
            "vm" => Ok(BackendKind::Vm),
            #[cfg(feature = "test-backend")]
            HOST_PROCESS => Ok(BackendKind::HostProcess),
            #[cfg(not(feature = "test-backend"))]
            HOST_PROCESS => Err(BackendError::TestDoubleNotBuilt),
            other => Err(BackendError::Unknown(other.to_string())),
        }
    }

    /// The backend for new containers: `ZVM_RUNC_BACKEND`, else the VM.
    pub fn from_env() -> Result<BackendKind, BackendError> {
        match std::env::var(BACKEND_ENV) {
            Ok(v) if !v.is_empty() => BackendKind::parse(&v),
            _ => Ok(BackendKind::Vm),
        }
    }

    /// An instance of this backend.
    pub fn instantiate(self, launcher: &[OsString]) -> Arc<dyn ContainerBackend> {
        match self {
            BackendKind::Vm => Arc::new(vm::VmBackend::new(launcher.to_vec())),
            #[cfg(feature = "test-backend")]
            BackendKind::HostProcess => Arc::new(host_process::HostProcessBackend),
        }
    }
}

/// What a backend is told about the container it works on.
#[derive(Debug, Clone, Copy)]
pub struct ContainerRef<'a> {
    /// Container id.
    pub id: &'a str,
    /// `<root>/<id>`: the backend may keep its files here.
    pub dir: &'a Path,
    /// Absolute bundle path.
    pub bundle: &'a Path,
    /// Absolute rootfs path.
    pub rootfs: &'a Path,
    /// The config the container was created with.
    pub spec: &'a Spec,
    /// The process that represents the container (after create).
    pub pid: Option<i32>,
    /// Its start time (`/proc/<pid>/stat`), to tell it from a later process with its pid.
    pub pid_start_time: Option<u64>,
}

/// Options of `create` that reach the backend.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Where to send the pty master when `process.terminal` is true.
    pub console_socket: Option<PathBuf>,
}

/// What a backend reports about a created container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendStatus {
    /// Created, user program not started.
    Created,
    /// The user program runs.
    Running,
    /// Created or running, and frozen (`pause`).
    Paused,
    /// The user program ended (exit status, as a shell reports it, when known).
    Stopped(Option<i32>),
}

/// A process to run in an existing container.
#[derive(Debug, Clone)]
pub struct ExecRequest<'a> {
    /// The process (args, env, cwd, user, terminal).
    pub process: &'a Process,
    /// Where to send the pty master when `process.terminal` is true.
    pub console_socket: Option<&'a Path>,
    /// Return at once instead of waiting for the process.
    pub detach: bool,
    /// Write the process's (host) pid here once it runs.
    pub pid_file: Option<&'a Path>,
}

/// How an exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    /// The process ran and exited with this status (128 + signal when killed).
    Exited(i32),
    /// The process runs on, detached; its pid.
    Detached(i32),
}

/// Runs containers for the lifecycle. Implementations hold no state between calls: what they
/// need is in the container directory and the [`ContainerRef`].
pub trait ContainerBackend: Send + Sync {
    /// The name stored in records (`vm`, `host-process`).
    fn name(&self) -> &'static str;
    /// Sets the container up to "created": its process exists and waits for `start`. Returns
    /// the pid of the host process that represents the container.
    fn create(&self, c: &ContainerRef<'_>, opts: &CreateOptions) -> Result<i32, BackendError>;
    /// Runs the user's program in a created container.
    fn start(&self, c: &ContainerRef<'_>) -> Result<(), BackendError>;
    /// Sends `signal` to the container's init process, or to all its processes.
    fn kill(&self, c: &ContainerRef<'_>, signal: i32, all: bool) -> Result<(), BackendError>;
    /// Asks the backend what state the container is in; the lifecycle has already checked
    /// that the container's process is alive.
    fn status(&self, c: &ContainerRef<'_>) -> Result<BackendStatus, BackendError>;
    /// Runs another process in the container.
    fn exec(
        &self,
        c: &ContainerRef<'_>,
        req: &ExecRequest<'_>,
    ) -> Result<ExecOutcome, BackendError>;
    /// Pids of the container's processes (guest pids for VMs).
    fn ps(&self, c: &ContainerRef<'_>) -> Result<Vec<i32>, BackendError>;
    /// Waits until the container's process ends; its exit status (128 + signal when killed)
    /// when known.
    fn wait(&self, c: &ContainerRef<'_>) -> Result<Option<i32>, BackendError>;
    /// Releases what the backend holds for a stopped container (the lifecycle then removes
    /// the container directory).
    fn delete(&self, c: &ContainerRef<'_>) -> Result<(), BackendError>;
    /// Freezes every process of the container.
    fn pause(&self, _c: &ContainerRef<'_>) -> Result<(), BackendError> {
        Err(self.unsupported("pause"))
    }
    /// Thaws a paused container.
    fn resume(&self, _c: &ContainerRef<'_>) -> Result<(), BackendError> {
        Err(self.unsupported("resume"))
    }
    /// Saves the running container into `image` (then stops it unless `leave_running`).
    fn checkpoint(
        &self,
        _c: &ContainerRef<'_>,
        _image: &Path,
        _leave_running: bool,
    ) -> Result<(), BackendError> {
        Err(self.unsupported("checkpoint"))
    }
    /// Like [`Self::create`], but brings the container back from the checkpoint in `image`
    /// (running again if it was running); returns the pid that represents it.
    fn restore(
        &self,
        _c: &ContainerRef<'_>,
        _opts: &CreateOptions,
        _image: &Path,
    ) -> Result<i32, BackendError> {
        Err(self.unsupported("restore"))
    }
    /// The error of an operation this backend does not offer.
    fn unsupported(&self, op: &str) -> BackendError {
        BackendError::Unsupported(format!(
            "{op} is not supported by the {} backend",
            self.name()
        ))
    }
}

/// The shell's view of a wait status: the exit code, or 128 + the signal number.
pub fn shell_status(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

/// Waits for `pid` to end. If it is our child it is reaped and its status returned;
/// otherwise `/proc` is watched until it is gone (status unknown). Signals that arrive while
/// waiting go to `on_signal` (the lifecycle forwards them to the container).
pub fn wait_pid(pid: i32, start_time: Option<u64>, on_signal: &mut dyn FnMut(i32)) -> Option<i32> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) with a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Some(shell_status(status));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {
                if let Some(sig) = crate::forward::take_pending() {
                    on_signal(sig);
                }
            }
            _ => break,
        }
    }
    // Not our child: watch it through a pidfd (or /proc), looking for signals every 20 ms.
    let exit = ExitWatch::new(pid);
    while crate::host::process_alive(pid, start_time) {
        if let Some(sig) = crate::forward::take_pending() {
            on_signal(sig);
        }
        exit.sleep(std::time::Duration::from_millis(20));
    }
    None
}

/// Waits up to `limit` for `pid` to end (reaping it if it is our child); whether it ended.
/// Wakes as the process ends (a pidfd), not at the next poll of `/proc`.
pub fn wait_gone(pid: i32, start_time: Option<u64>, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let exit = ExitWatch::new(pid);
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) with WNOHANG and a valid out pointer.
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if !crate::host::process_alive(pid, start_time) {
            return true;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return false;
        }
        exit.sleep((deadline - now).min(std::time::Duration::from_millis(500)));
    }
}

/// Waits for a process's end without polling: a pidfd (Linux 5.3 and later) becomes
/// readable when the process exits. Without one (older kernels), a 10 ms sleep.
struct ExitWatch(Option<std::os::fd::OwnedFd>);

impl ExitWatch {
    fn new(pid: i32) -> ExitWatch {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open(2) takes a pid and flags; the result is a new descriptor.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        ExitWatch(
            i32::try_from(fd)
                .ok()
                .filter(|fd| *fd >= 0)
                // SAFETY: a fresh descriptor nobody else owns.
                .map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }),
        )
    }

    /// Sleeps up to `limit`, less when the process ends first.
    fn sleep(&self, limit: std::time::Duration) {
        use std::os::fd::AsRawFd;
        let Some(fd) = &self.0 else {
            std::thread::sleep(limit.min(std::time::Duration::from_millis(10)));
            return;
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: poll(2) on one valid pollfd. An early return (a signal) just loops.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip_and_unknown_names_are_refused() {
        assert_eq!(BackendKind::parse("vm").unwrap(), BackendKind::Vm);
        #[cfg(feature = "test-backend")]
        assert_eq!(
            BackendKind::parse(HOST_PROCESS).unwrap(),
            BackendKind::HostProcess
        );
        #[cfg(not(feature = "test-backend"))]
        assert!(matches!(
            BackendKind::parse(HOST_PROCESS),
            Err(BackendError::TestDoubleNotBuilt)
        ));
        let err = BackendKind::parse("docker").unwrap_err();
        assert!(
            err.to_string().contains("unknown backend \"docker\""),
            "{err}"
        );
    }

    #[test]
    fn the_refusal_of_the_missing_test_double_says_what_and_why() {
        let msg = BackendError::TestDoubleNotBuilt.to_string();
        for part in [
            "unknown backend \"host-process\"",
            "without isolation",
            "not built into this binary",
            "oci-runtime/test-backend",
        ] {
            assert!(msg.contains(part), "{part:?} missing from {msg}");
        }
    }

    #[test]
    fn shell_status_of_exit_codes_and_signals() {
        assert_eq!(shell_status(0), 0);
        assert_eq!(shell_status(3 << 8), 3);
        assert_eq!(shell_status(libc::SIGKILL), 137);
    }

    #[test]
    fn wait_pid_reaps_a_child_and_returns_its_status() {
        let pid = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap()
            .id();
        assert_eq!(wait_pid(pid as i32, None, &mut |_| {}), Some(7));
        let pid = std::process::Command::new("/bin/sleep")
            .arg("0.05")
            .spawn()
            .unwrap()
            .id();
        assert!(wait_gone(
            pid as i32,
            None,
            std::time::Duration::from_secs(30)
        ));
    }

    #[test]
    fn wait_gone_wakes_as_a_process_it_cannot_reap_ends() {
        // The sleeper is a grandchild through a shell that does not wait for it: not ours
        // to reap, as a sandbox is not the child of `delete`.
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 0.3 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let start = std::time::Instant::now();
        assert!(!wait_gone(pid, None, std::time::Duration::from_millis(50)));
        assert!(wait_gone(pid, None, std::time::Duration::from_secs(30)));
        let took = start.elapsed();
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
        // Gone already: at once.
        let start = std::time::Instant::now();
        assert!(wait_gone(pid, None, std::time::Duration::from_secs(30)));
        assert!(start.elapsed() < std::time::Duration::from_millis(100));
    }
}
