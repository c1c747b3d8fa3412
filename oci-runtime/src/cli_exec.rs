//! `exec`: the process to run in a container, from `--process FILE` or the container's own
//! process with the command line's arguments, environment, directory, user and terminal.

use super::{exit_code, runtime, CliError, ExecArgs, OciArgs};
use crate::backend::{ExecOutcome, ExecRequest};
use oci_spec::runtime::Process;
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

pub(super) fn exec(
    args: &OciArgs,
    a: ExecArgs,
    launcher: Vec<OsString>,
) -> Result<ExitCode, CliError> {
    let rt = runtime(args, launcher)?;
    let mut process = match &a.process {
        Some(path) => {
            let text = std::fs::read(path).map_err(|source| CliError::Io {
                action: "read",
                path: path.clone(),
                source,
            })?;
            serde_json::from_slice(&text).map_err(|source| CliError::ProcessFile {
                path: path.clone(),
                source,
            })?
        }
        None => {
            if a.command.is_empty() {
                return Err(CliError::Usage(
                    "exec needs a command (or --process FILE)".into(),
                ));
            }
            exec_process(
                &rt.process_of(&a.id)?,
                &a.command,
                &a.env,
                a.cwd.as_deref(),
                a.tty,
            )
        }
    };
    if let Some(user) = &a.user {
        let (uid, gid) = parse_user(user)?;
        let mut u = process.user().clone();
        u.set_uid(uid);
        u.set_gid(gid);
        process.set_user(u);
    }
    let terminal = process.terminal().unwrap_or(false);
    if terminal && a.detach && a.console_socket.is_none() {
        return Err(CliError::Usage(
            "exec --tty --detach needs --console-socket".into(),
        ));
    }
    let req = ExecRequest {
        process: &process,
        console_socket: a.console_socket.as_deref(),
        detach: a.detach,
        pid_file: a.pid_file.as_deref(),
    };
    match rt.exec(&a.id, &req)? {
        ExecOutcome::Exited(code) => Ok(exit_code(code)),
        ExecOutcome::Detached(_) => Ok(ExitCode::SUCCESS),
    }
}

/// The process `exec` runs when no `--process` file is given: the container's process with
/// `args`, `--env` entries added (replacing variables of the same name), `--cwd` and `--tty`.
pub fn exec_process(
    base: &Process,
    args: &[String],
    env: &[String],
    cwd: Option<&Path>,
    tty: bool,
) -> Process {
    let mut p = base.clone();
    p.set_args(Some(args.to_vec()));
    let mut merged: Vec<String> = base.env().clone().unwrap_or_default();
    for entry in env {
        let key = entry.split('=').next().unwrap_or_default();
        merged.retain(|e| e.split('=').next().unwrap_or_default() != key);
        merged.push(entry.clone());
    }
    p.set_env(Some(merged));
    if let Some(cwd) = cwd {
        p.set_cwd(cwd.to_path_buf());
    }
    p.set_terminal(Some(tty));
    p.set_console_size(None);
    p
}

/// Parses `UID[:GID]` (GID defaults to 0 as with runc).
pub(super) fn parse_user(text: &str) -> Result<(u32, u32), CliError> {
    let bad = || CliError::Usage(format!("--user {text:?}: give UID[:GID] as numbers"));
    let (uid, gid) = text.split_once(':').unwrap_or((text, "0"));
    Ok((
        uid.parse().map_err(|_| bad())?,
        gid.parse().map_err(|_| bad())?,
    ))
}
