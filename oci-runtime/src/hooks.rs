//! OCI lifecycle hooks, run on the host.
//!
//! Each hook is a program started with the hook's `path`, `args` (`args[0]` is its argv\[0\])
//! and exactly the hook's `env`; the container's state JSON is written to its stdin, and it
//! must exit 0 within its `timeout` (seconds; none means no limit). Its stdout and stderr go to
//! a temporary file whose tail is quoted when it fails. Hooks of one kind run in the order
//! the config lists them and the first failure stops the rest.
//!
//! All hooks run in the runtime's (host's) namespaces. The spec places `createContainer` and
//! `startContainer` in the container's namespaces, but here those live inside the guest VM, so
//! this runtime runs them on the host too, at the same points of the lifecycle.

use oci_spec::runtime::{Hook, Hooks};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The lifecycle points at which hooks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// Deprecated; run during `create`, before `createRuntime`.
    Prestart,
    /// During `create`, after the container's environment exists.
    CreateRuntime,
    /// During `create`, after `createRuntime`.
    CreateContainer,
    /// During `start`, before the user's program runs.
    StartContainer,
    /// After `start` has started the user's program; failures only warn.
    Poststart,
    /// During `delete`, after the container is destroyed; failures only warn.
    Poststop,
}

impl HookKind {
    /// Every kind, in lifecycle order.
    pub const ALL: [HookKind; 6] = [
        HookKind::Prestart,
        HookKind::CreateRuntime,
        HookKind::CreateContainer,
        HookKind::StartContainer,
        HookKind::Poststart,
        HookKind::Poststop,
    ];

    /// The kind's name in config.json.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    /// The hooks of this kind in `hooks`, in order.
    #[allow(deprecated)] // prestart is deprecated by the spec but still run
    pub fn of(self, hooks: &Hooks) -> &[Hook] {
        let list = match self {
            HookKind::Prestart => hooks.prestart(),
            HookKind::CreateRuntime => hooks.create_runtime(),
            HookKind::CreateContainer => hooks.create_container(),
            HookKind::StartContainer => hooks.start_container(),
            HookKind::Poststart => hooks.poststart(),
            HookKind::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or(&[])
    }
}

/// A hook that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook program could not be started.
    #[error("{kind} hook {path}: cannot run it: {source}")]
    Spawn {
        /// Hook kind name.
        kind: &'static str,
        /// Hook path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The hook exited with a failure status.
    #[error("{kind} hook {path} failed ({status}){output}")]
    Failed {
        /// Hook kind name.
        kind: &'static str,
        /// Hook path.
        path: PathBuf,
        /// Exit status, as text.
        status: String,
        /// The tail of its output, starting with ": " when there was any.
        output: String,
    },
    /// The hook ran longer than its timeout and was killed.
    #[error("{kind} hook {path} timed out after {seconds} s and was killed{output}")]
    TimedOut {
        /// Hook kind name.
        kind: &'static str,
        /// Hook path.
        path: PathBuf,
        /// The timeout.
        seconds: i64,
        /// The tail of its output, starting with ": " when there was any.
        output: String,
    },
    /// Waiting for the hook failed, or its output could not be captured.
    #[error("{kind} hook {path}: {source}")]
    Io {
        /// Hook kind name.
        kind: &'static str,
        /// Hook path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Runs the hooks of `kind` in `hooks` in order, each with `state_json` on stdin; stops at
/// the first failure.
pub fn run_hooks(hooks: Option<&Hooks>, kind: HookKind, state_json: &str) -> Result<(), HookError> {
    let Some(hooks) = hooks else { return Ok(()) };
    for hook in kind.of(hooks) {
        tracing::debug!(hook = %hook.path().display(), kind = kind.name(), "running hook");
        run_hook(hook, kind, state_json)?;
    }
    Ok(())
}

/// Runs the hooks of `kind`, logging failures as warnings instead of stopping (for
/// `poststart` and `poststop`, whose failures the spec says must not fail the operation).
pub fn run_hooks_warn(hooks: Option<&Hooks>, kind: HookKind, state_json: &str) {
    let Some(hooks) = hooks else { return };
    for hook in kind.of(hooks) {
        if let Err(e) = run_hook(hook, kind, state_json) {
            tracing::warn!("{e}");
        }
    }
}

/// Runs one hook.
pub fn run_hook(hook: &Hook, kind: HookKind, state_json: &str) -> Result<(), HookError> {
    let kind_name = kind.name();
    let path = hook.path().clone();
    let io_err = |source| HookError::Io {
        kind: kind_name,
        path: path.clone(),
        source,
    };
    let mut output = tempfile::tempfile().map_err(io_err)?;
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args().as_deref() {
        if let Some((arg0, rest)) = args.split_first() {
            cmd.arg0(arg0).args(rest);
        }
    }
    cmd.env_clear();
    for entry in hook.env().as_deref().unwrap_or(&[]) {
        match entry.split_once('=') {
            Some((k, v)) if !k.is_empty() => cmd.env(k, v),
            _ => continue,
        };
    }
    cmd.stdin(Stdio::piped())
        .stdout(output.try_clone().map_err(io_err)?)
        .stderr(output.try_clone().map_err(io_err)?)
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        kind: kind_name,
        path: path.clone(),
        source,
    })?;
    let pid = child.id() as i32;
    let stdin = child.stdin.take();
    let data = state_json.as_bytes().to_vec();
    // A hook may exit without reading its stdin; writing then fails with EPIPE, which is fine.
    let writer = std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&data);
        }
    });
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let timeout = hook.timeout().filter(|&t| t > 0);
    let status = match timeout {
        Some(secs) => match rx.recv_timeout(Duration::from_secs(secs as u64)) {
            Ok(status) => Some(status),
            Err(_) => {
                // SAFETY: kill(2) on the hook's own process group, which it leads (process_group(0)).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = rx.recv();
                None
            }
        },
        None => rx.recv().ok(),
    };
    let _ = waiter.join();
    let _ = writer.join();
    let mut tail = || output_tail(&mut output);
    match status {
        None => Err(HookError::TimedOut {
            kind: kind_name,
            path,
            seconds: timeout.unwrap_or(0),
            output: tail(),
        }),
        Some(Err(e)) => Err(io_err(e)),
        Some(Ok(s)) if s.success() => Ok(()),
        Some(Ok(s)) => Err(HookError::Failed {
            kind: kind_name,
            path,
            status: describe(s),
            output: tail(),
        }),
    }
}

/// "exit status 3" or "killed by signal 9".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by {}", crate::signal::signal_name(sig)),
        _ => status.to_string(),
    }
}

/// The last KiB of the hook's output, prefixed with ": ", or "" when it wrote nothing.
fn output_tail(file: &mut std::fs::File) -> String {
    const MAX: u64 = 1024;
    let len = file.seek(SeekFrom::End(0)).unwrap_or(0);
    if len == 0 || file.seek(SeekFrom::Start(len.saturating_sub(MAX))).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use oci_spec::runtime::HookBuilder;
    use std::path::Path;

    /// Writes an executable shell script.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn hook(path: PathBuf, args: &[&str], env: &[&str], timeout: Option<i64>) -> Hook {
        let mut b = HookBuilder::default().path(path);
        if !args.is_empty() {
            b = b.args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        if !env.is_empty() {
            b = b.env(env.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().unwrap()
    }

    #[test]
    fn hooks_get_state_on_stdin_args_and_only_their_env_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let body = format!(
            "printf '%s|%s|%s|' \"$1\" \"${{FOO:-}}\" \"${{CARGO_MANIFEST_DIR:-none}}\" >> {log}; cat >> {log}; echo >> {log}",
            log = log.display()
        );
        let s = script(dir.path(), "h.sh", &body);
        let first = hook(s.clone(), &["first", "a"], &["FOO=bar"], None);
        let second = hook(s, &["second", "b"], &[], Some(5));
        let hooks = oci_spec::runtime::HooksBuilder::default()
            .create_runtime(vec![first, second])
            .poststop(vec![hook(PathBuf::from("/bin/false"), &[], &[], None)])
            .build()
            .unwrap();
        run_hooks(Some(&hooks), HookKind::CreateRuntime, r#"{"id":"c1"}"#).unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        // argv[1] and the hook's own env arrive; the runtime's environment does not.
        assert_eq!(
            text,
            "a|bar|none|{\"id\":\"c1\"}\nb||none|{\"id\":\"c1\"}\n"
        );
        // Kinds without hooks, and no hooks at all, do nothing.
        run_hooks(Some(&hooks), HookKind::Poststart, "{}").unwrap();
        run_hooks(None, HookKind::Poststart, "{}").unwrap();
        // Poststop failures only warn.
        run_hooks_warn(Some(&hooks), HookKind::Poststop, "{}");
    }

    #[test]
    fn a_failing_hook_stops_the_rest_and_reports_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let bad = script(
            dir.path(),
            "bad.sh",
            "echo 'no network for you' >&2; exit 3",
        );
        let after = script(
            dir.path(),
            "after.sh",
            &format!("touch {}", marker.display()),
        );
        let hooks = oci_spec::runtime::HooksBuilder::default()
            .start_container(vec![hook(bad, &[], &[], None), hook(after, &[], &[], None)])
            .build()
            .unwrap();
        let err = run_hooks(Some(&hooks), HookKind::StartContainer, "{}").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, HookError::Failed { .. }), "{msg}");
        assert!(
            msg.contains("startContainer hook") && msg.contains("exit status 3"),
            "{msg}"
        );
        assert!(msg.contains("no network for you"), "{msg}");
        assert!(!marker.exists(), "the hook after a failure must not run");
    }

    #[test]
    fn a_hook_that_does_not_read_stdin_still_succeeds() {
        let h = hook(PathBuf::from("/bin/true"), &[], &[], None);
        let big = format!("{{\"annotations\":\"{}\"}}", "x".repeat(1 << 20));
        run_hook(&h, HookKind::Poststart, &big).unwrap();
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(
            dir.path(),
            "slow.sh",
            "echo started; sleep 30 & sleep 30; echo never",
        );
        let h = hook(s, &[], &[], Some(1));
        let err = run_hook(&h, HookKind::CreateRuntime, "{}").unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, HookError::TimedOut { seconds: 1, .. }),
            "{msg}"
        );
        assert!(msg.contains("started") && !msg.contains("never"), "{msg}");
    }

    #[test]
    fn a_missing_hook_program_is_a_spawn_error() {
        let h = hook(PathBuf::from("/nonexistent/hook"), &[], &[], None);
        let err = run_hook(&h, HookKind::Prestart, "{}").unwrap_err();
        assert!(matches!(err, HookError::Spawn { .. }), "{err}");
        assert!(
            err.to_string().contains("prestart hook /nonexistent/hook"),
            "{err}"
        );
        let err = run_hook(
            &hook(PathBuf::from("/bin/false"), &[], &[], None),
            HookKind::Prestart,
            "{}",
        )
        .unwrap_err();
        assert!(err.to_string().contains("exit status 1"), "{err}");
    }
}
