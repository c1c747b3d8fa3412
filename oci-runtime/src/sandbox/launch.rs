//! Starting the sandbox process and waiting until it has created the container.
//!
//! [`create`] runs the launcher in a new session with a pipe on fd 3 (named by
//! [`READY_FD_ENV`]); the sandbox writes one JSON line there, `{"ok":true}` once the
//! container is created in the guest or `{"ok":false,"error":"..."}`, and closes it.

use super::{unix, SandboxConfig, SandboxError, CONFIG_FILE, CONTROL_SOCKET, EXIT_FILE, LOG_FILE};
use serde::{Deserialize, Serialize};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Environment variable telling the sandbox process which fd to report readiness on.
pub const READY_FD_ENV: &str = "ZVM_SANDBOX_READY_FD";
/// The fd the report pipe gets in the sandbox process.
const READY_FD: RawFd = 3;
/// Longest wait for the sandbox's report: its own deadlines for the agent (twice: a
/// template's boot, then the clone) and for Create, plus two minutes for making the images
/// and snapshot (the sandbox reports its own timeouts first).
const REPORT_DEADLINE: Duration = Duration::from_secs(
    2 * super::daemon::AGENT_DEADLINE.as_secs() + super::daemon::CREATE_TIMEOUT.as_secs() + 120,
);

/// The line the sandbox writes on the ready pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Report {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The sandbox's end of the ready pipe (absent when not started by [`create`]).
#[derive(Debug)]
pub(crate) struct Ready(Option<File>);

impl Ready {
    /// Takes the fd named by [`READY_FD_ENV`] (making it close-on-exec).
    pub(crate) fn from_env() -> Ready {
        let fd = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<RawFd>().ok())
            .filter(|fd| *fd > 2);
        let Some(fd) = fd else { return Ready(None) };
        if unix::set_cloexec(fd, true).is_err() {
            return Ready(None);
        }
        // SAFETY: the fd is open (fcntl succeeded) and was handed to this process for this use.
        Ready(Some(unsafe { File::from_raw_fd(fd) }))
    }

    /// Whether nothing has been reported yet.
    pub(crate) fn is_pending(&self) -> bool {
        self.0.is_some()
    }

    fn send(&mut self, report: &Report) {
        if let Some(mut f) = self.0.take() {
            let mut line = serde_json::to_vec(report).unwrap_or_default();
            line.push(b'\n');
            let _ = f.write_all(&line);
        }
    }

    /// Reports success.
    pub(crate) fn ok(&mut self) {
        self.send(&Report {
            ok: true,
            error: None,
        });
    }

    /// Reports a failure.
    pub(crate) fn fail(&mut self, error: &str) {
        self.send(&Report {
            ok: false,
            error: Some(error.to_string()),
        });
    }
}

/// Starts the sandbox process (detached, setsid; it inherits the caller's stdin, stdout and
/// stderr and relays the container's stdio to them unless terminal), waits until the
/// container is created in the guest and returns the sandbox process's pid (`state.pid`).
/// The process is a child of the caller, which may wait for it to get the container's exit
/// status.
pub fn create(cfg: &SandboxConfig) -> Result<u32, SandboxError> {
    cfg.artifacts.check()?;
    let Some((program, args)) = cfg.launcher.split_first() else {
        return Err(SandboxError::Sandbox(
            "the sandbox launcher is empty".into(),
        ));
    };
    let dir = &cfg.container_dir;
    let json = serde_json::to_vec_pretty(cfg)
        .map_err(|e| SandboxError::Sandbox(format!("cannot encode the sandbox config: {e}")))?;
    std::fs::write(dir.join(CONFIG_FILE), json).map_err(SandboxError::io(format!(
        "write {}",
        dir.join(CONFIG_FILE).display()
    )))?;
    for stale in [EXIT_FILE, CONTROL_SOCKET] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let mut args: Vec<OsString> = args.to_vec();
    args.push(dir.as_os_str().to_os_string());
    let (mut child, mut report) = spawn_reporting(program, &args)?;
    await_report(
        &mut child,
        &mut report,
        REPORT_DEADLINE,
        "the container was created",
        &dir.join(LOG_FILE),
    )?;
    Ok(child.id())
}

/// Runs `program args...` in a new session with the write end of a report pipe as fd
/// [`READY_FD`] (named by [`READY_FD_ENV`]); returns the child and the pipe's read end.
pub(super) fn spawn_reporting(
    program: &OsStr,
    args: &[OsString],
) -> Result<(Child, File), SandboxError> {
    let (report, write_end) = unix::pipe().map_err(SandboxError::io("create the ready pipe"))?;
    let write_fd = write_end.as_raw_fd();
    let mut command = Command::new(program);
    command.args(args).env(READY_FD_ENV, READY_FD.to_string());
    // SAFETY: the closure only makes async-signal-safe calls (setsid, dup2, fcntl).
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = if write_fd == READY_FD {
                libc::fcntl(READY_FD, libc::F_SETFD, 0)
            } else {
                libc::dup2(write_fd, READY_FD)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(SandboxError::io(format!(
        "start the sandbox process {}",
        program.to_string_lossy()
    )))?;
    drop(write_end);
    Ok((child, report))
}

/// Waits up to `deadline` for the report of a child started by [`spawn_reporting`]: Ok on
/// success; its error, or how it ended before `what` (pointing at `log`), otherwise.
pub(super) fn await_report(
    child: &mut Child,
    report: &mut File,
    deadline: Duration,
    what: &str,
    log: &Path,
) -> Result<(), SandboxError> {
    match read_report(report, Instant::now() + deadline) {
        Ok(Some(Report { ok: true, .. })) => Ok(()),
        Ok(Some(Report { error, .. })) => {
            reap(child);
            Err(SandboxError::Sandbox(error.unwrap_or_else(|| {
                "the sandbox failed without saying why".into()
            })))
        }
        Ok(None) => {
            let status = reap(child);
            Err(SandboxError::Sandbox(format!(
                "the sandbox process ended ({status}) before {what}; see {}",
                log.display()
            )))
        }
        Err(e) => {
            let _ = child.kill();
            reap(child);
            Err(SandboxError::Sandbox(format!(
                "no word from the sandbox process: {e}; see {}",
                log.display()
            )))
        }
    }
}

/// Waits (briefly) for a failed sandbox process and describes how it ended.
fn reap(child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                return child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
            }
            Err(e) => return e.to_string(),
        }
    }
}

/// Reads the report line; None when the pipe closed without one.
fn read_report(pipe: &mut File, deadline: Instant) -> std::io::Result<Option<Report>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let report = serde_json::from_slice(&buf[..end]).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad report: {e}"))
            })?;
            return Ok(Some(report));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "nothing before the deadline",
            ));
        }
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(60_000) as libc::c_int;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            continue;
        }
        let n = pipe.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "report too long",
            ));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sandbox::GuestArtifacts;

    fn config(dir: &std::path::Path, launcher: &[&str]) -> SandboxConfig {
        let art = dir.join("artifact");
        std::fs::write(&art, b"x").unwrap();
        SandboxConfig {
            id: "c1".into(),
            bundle: dir.to_path_buf(),
            spec: oci_spec::runtime::Spec::default(),
            container_dir: dir.to_path_buf(),
            console_socket: None,
            artifacts: GuestArtifacts {
                kernel: art.clone(),
                agent: art,
            },
            launcher: launcher.iter().map(Into::into).collect(),
            restore_from: None,
            jail: false,
        }
    }

    /// A launcher script that plays the sandbox's part of the ready pipe.
    fn sh(dir: &std::path::Path, body: &str) -> SandboxConfig {
        config(dir, &["sh", "-c", body, "sandbox"])
    }

    #[test]
    fn success_returns_the_pid_of_a_process_in_its_own_session() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = sh(
            dir.path(),
            r#"test "$ZVM_SANDBOX_READY_FD" = 3 && test -f "$1/sandbox.json" && ps -o sid= -p $$ > "$1/sid"; echo '{"ok":true}' >&3; exec 3>&-; sleep 0.2"#,
        );
        let pid = create(&cfg).unwrap();
        let sid = loop {
            let text = std::fs::read_to_string(dir.path().join("sid")).unwrap_or_default();
            if !text.trim().is_empty() {
                break text;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            sid.trim(),
            pid.to_string(),
            "setsid: the sandbox leads its session"
        );
        let saved: SandboxConfig =
            serde_json::from_slice(&std::fs::read(dir.path().join(CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(saved.id, "c1");
        // SAFETY: waiting for our own child.
        let mut status = 0;
        assert_eq!(
            unsafe { libc::waitpid(pid as i32, &mut status, 0) },
            pid as i32
        );
    }

    #[test]
    fn a_reported_failure_becomes_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = sh(
            dir.path(),
            r#"echo '{"ok":false,"error":"the guest agent refused Create: bad spec"}' >&3; exit 1"#,
        );
        let err = create(&cfg).unwrap_err().to_string();
        assert_eq!(err, "the guest agent refused Create: bad spec");
    }

    #[test]
    fn a_sandbox_dying_silently_is_an_error_pointing_at_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let err = create(&sh(dir.path(), "exit 7")).unwrap_err().to_string();
        assert!(
            err.contains("ended (exit status: 7) before the container was created")
                && err.ends_with("sandbox.log"),
            "{err}"
        );
        let err = create(&config(dir.path(), &["/nonexistent/zvm"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot start the sandbox process /nonexistent/zvm"),
            "{err}"
        );
        let err = create(&config(dir.path(), &[])).unwrap_err().to_string();
        assert_eq!(err, "the sandbox launcher is empty");
        let mut cfg = config(dir.path(), &["true"]);
        cfg.artifacts.kernel = dir.path().join("no-kernel");
        let err = create(&cfg).unwrap_err().to_string();
        assert!(err.contains("ZVM_KERNEL"), "{err}");
    }

    #[test]
    fn ready_from_env_ignores_std_fds_and_garbage() {
        assert!(!Ready(None).is_pending());
        let (mut r, w) = unix::pipe().unwrap();
        let mut ready = Ready(Some(w));
        ready.fail("boom");
        assert!(!ready.is_pending());
        let mut text = String::new();
        r.read_to_string(&mut text).unwrap();
        assert_eq!(text, "{\"ok\":false,\"error\":\"boom\"}\n");
    }
}
