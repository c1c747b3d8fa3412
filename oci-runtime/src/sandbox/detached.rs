//! `exec --detach` for containers in VMs.
//!
//! The exec'd process runs in the guest, so a small host process, the *exec relay*, stands
//! for it, as the sandbox process stands for the container: it relays the process's stdio
//! to the stdio it inherited (or a pty sent to the console socket), forwards the signals it
//! gets (those the sandbox forwards, but SIGWINCH) to the process, and exits with the
//! process's exit status. [`exec_detached`] starts it in its own session through the
//! hidden `__exec` subcommand and returns once the process runs in the guest, with the
//! relay's pid: what runc's `exec --detach --pid-file` writes, and what a shim that is a
//! child subreaper (containerd's, conmon) waits for.

use super::control::{ExecIo, SandboxClient};
use super::launch::{await_report, spawn_reporting, Ready};
use super::{unix, SandboxError, LOG_FILE};
use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The hidden subcommand that runs [`exec_relay_main`], in place of `__sandbox` in the
/// sandbox launcher.
pub const EXEC_RELAY_SUBCOMMAND: &str = "__exec";
/// The sandbox launcher's last word, replaced by [`EXEC_RELAY_SUBCOMMAND`].
const SANDBOX_SUBCOMMAND: &str = "__sandbox";
/// Longest wait for the relay to report the process started (the guest may be slow).
const START_DEADLINE: Duration = Duration::from_secs(300);

/// What [`exec_detached`] hands the relay, in a file of the container directory.
#[derive(Debug, Serialize, Deserialize)]
struct RelayRequest {
    process: Process,
    console_socket: Option<PathBuf>,
}

/// The relay's command line: `launcher` with its `__sandbox` replaced by `__exec`.
fn relay_command(
    launcher: &[OsString],
    container_dir: &Path,
    request: &Path,
) -> Result<Vec<OsString>, SandboxError> {
    match launcher.split_last() {
        Some((last, rest)) if last == SANDBOX_SUBCOMMAND && !rest.is_empty() => Ok(rest
            .iter()
            .cloned()
            .chain([
                EXEC_RELAY_SUBCOMMAND.into(),
                container_dir.into(),
                request.into(),
            ])
            .collect()),
        _ => Err(SandboxError::Sandbox(format!(
            "the sandbox launcher {launcher:?} does not end in {SANDBOX_SUBCOMMAND}: cannot start an exec relay"
        ))),
    }
}

/// Starts `process` in the container of `container_dir` behind an exec relay started
/// through `launcher` (the sandbox launcher); returns the relay's pid once the process runs.
/// The relay inherits the caller's stdio and is the caller's child: a long-lived caller
/// reaps it.
pub fn exec_detached(
    container_dir: &Path,
    launcher: &[OsString],
    process: &Process,
    console_socket: Option<&Path>,
) -> Result<u32, SandboxError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let request = container_dir.join(format!(
        "exec-{}-{}.json",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let command = relay_command(launcher, container_dir, &request)?;
    let Some((program, args)) = command.split_first() else {
        return Err(SandboxError::Sandbox("empty exec relay command".into()));
    };
    let body = RelayRequest {
        process: process.clone(),
        console_socket: console_socket.map(Path::to_path_buf),
    };
    let json = serde_json::to_vec(&body)
        .map_err(|e| SandboxError::Sandbox(format!("cannot encode the exec request: {e}")))?;
    std::fs::write(&request, json)
        .map_err(SandboxError::io(format!("write {}", request.display())))?;
    let started = spawn_reporting(program, args).and_then(|(mut child, mut report)| {
        await_report(
            &mut child,
            &mut report,
            START_DEADLINE,
            "the process started",
            &container_dir.join(LOG_FILE),
        )?;
        Ok(child.id())
    });
    // The relay removes it once read; not when it never got that far.
    let _ = std::fs::remove_file(&request);
    started
}

/// Body of the hidden `__exec <container_dir> <request>` subcommand (see the module doc).
pub fn exec_relay_main(container_dir: &Path, request: &Path) -> ExitCode {
    let mut ready = Ready::from_env();
    crate::logging::init_process_file(&container_dir.join(super::LOG_FILE));
    // Before any thread starts, so that every thread has them blocked.
    // The sandbox's set, but for SIGWINCH: the caller resizes a pty itself.
    let relayed: Vec<i32> = unix::FORWARDED_SIGNALS
        .iter()
        .copied()
        .filter(|s| *s != libc::SIGWINCH)
        .collect();
    let signals = unix::signalfd(&relayed);
    match relay(container_dir, request, &mut ready, signals) {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255)),
        Err(e) => {
            if ready.is_pending() {
                ready.fail(&e.to_string());
            } else {
                eprintln!("zvm exec relay: {e}");
            }
            ExitCode::from(255)
        }
    }
}

fn relay(
    container_dir: &Path,
    request: &Path,
    ready: &mut Ready,
    signals: std::io::Result<std::os::fd::OwnedFd>,
) -> Result<i32, SandboxError> {
    let text = std::fs::read(request).map_err(SandboxError::io(format!(
        "read the exec request {}",
        request.display()
    )))?;
    let _ = std::fs::remove_file(request);
    let body: RelayRequest = serde_json::from_slice(&text)
        .map_err(|e| SandboxError::Sandbox(format!("bad exec request: {e}")))?;
    let signals = signals.map_err(SandboxError::io("block signals"))?;
    let mut client = SandboxClient::connect(container_dir)?;
    let io = ExecIo::for_process(&body.process, body.console_socket.as_deref())?;
    client.exec_begin(&body.process)?;
    ready.ok();
    let received = std::iter::from_fn(move || unix::read_signal(&signals).ok());
    client.exec_relay_with_signals(io, Some(Box::new(received)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_runs_through_the_sandbox_launcher() {
        let words = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let cmd = relay_command(
            &words(&["/usr/bin/zvm", "oci", "__sandbox"]),
            Path::new("/run/c"),
            Path::new("/run/c/exec-1-0.json"),
        )
        .unwrap();
        assert_eq!(
            cmd,
            words(&[
                "/usr/bin/zvm",
                "oci",
                "__exec",
                "/run/c",
                "/run/c/exec-1-0.json"
            ])
        );
        for bad in [&["/usr/bin/zvm-runc"][..], &["__sandbox"], &[]] {
            let err = relay_command(&words(bad), Path::new("/c"), Path::new("/c/r"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("cannot start an exec relay"), "{err}");
        }
    }

    #[test]
    fn a_relay_that_cannot_reach_the_sandbox_reports_it_and_leaves_no_request() {
        let dir = tempfile::tempdir().unwrap();
        // A launcher whose relay is this test binary's own shell stand-in: `sh -c` with the
        // relay's words; it fails the way a relay does when the request is unreadable.
        let script = dir.path().join("relay.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\n# $1=__exec $2=dir $3=request\ntest -f \"$3\" && echo '{\"ok\":false,\"error\":\"no sandbox here\"}' >&3\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let launcher = vec![script.clone().into_os_string(), "__sandbox".into()];
        let process = crate::image::spec::default_spec()
            .process()
            .clone()
            .unwrap();
        let err = exec_detached(dir.path(), &launcher, &process, None)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "no sandbox here");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![OsString::from("relay.sh")], "request removed");

        // A relay that dies without a word.
        std::fs::write(&script, "#!/bin/sh\nexit 3\n").unwrap();
        let err = exec_detached(dir.path(), &launcher, &process, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ended (exit status: 3) before the process started"),
            "{err}"
        );
    }

    #[test]
    fn the_relay_fails_clearly_without_a_request_or_a_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let mut ready = Ready::from_env();
        let err = relay(
            dir.path(),
            &dir.path().join("missing.json"),
            &mut ready,
            Err(std::io::Error::other("unused")),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("read the exec request"), "{err}");
        let request = dir.path().join("r.json");
        std::fs::write(&request, b"{not json").unwrap();
        let err = relay(
            dir.path(),
            &request,
            &mut ready,
            Err(std::io::Error::other("x")),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("bad exec request"), "{err}");
        assert!(!request.exists(), "the request is removed once read");
    }
}
