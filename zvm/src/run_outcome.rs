//! How a `zvm run` VM ended, as zvm reports it: its messages and its exit code.

use crate::container_log::ContainerLog;
use agent_protocol::ExitStatus;
use std::process::ExitCode;
use vmm::VmOutcome;

pub(crate) use crate::vm_end::{outcome_lines, report_outcome};

/// A container flist's end: zvm's exit code is the process's exit status; how the VM
/// ended goes to the log. When the process did not run to its end, the reason and the end
/// of the log go to standard error (exit code 1; 130 when zvm was stopped by a signal).
pub(crate) fn container_outcome(
    result: Result<ExitStatus, String>,
    lines: &[String],
    outcome: &VmOutcome,
    log: ContainerLog,
    verbose: bool,
) -> ExitCode {
    let signalled = crate::stop_signals::signalled();
    // When the container thread stopped the VM (on failure), no signal did.
    let stopped_by_us = matches!(outcome, VmOutcome::Stopped) && !signalled;
    for (i, line) in lines.iter().enumerate() {
        if stopped_by_us && i + 1 == lines.len() {
            log.note("VM stopped");
        } else {
            log.note(line);
        }
    }
    match result {
        Ok(status) => {
            log.note(&format!(
                "the container's process {}",
                describe_status(&status)
            ));
            log.finish(verbose);
            ExitCode::from(u8::try_from(status.shell_code()).unwrap_or(255))
        }
        Err(_) if matches!(outcome, VmOutcome::Stopped) && signalled => {
            eprintln!("zvm: stopped by signal");
            log.finish(true);
            ExitCode::from(130)
        }
        Err(e) => {
            eprint!(
                "{}",
                log.failure_report(&format!("the container did not run to its end: {e}"))
            );
            log.finish(true);
            ExitCode::from(1)
        }
    }
}

/// "exited with status N" or "was killed by signal N".
fn describe_status(status: &ExitStatus) -> String {
    match (status.code, status.signal) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "ended (how is not known)".into(),
    }
}
