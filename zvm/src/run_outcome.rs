//! How a `zvm run` VM ended, as zvm reports it: its messages and its exit code.

use crate::container_log::ContainerLog;
use agent_protocol::ExitStatus;
use std::process::ExitCode;
use vmm::VmOutcome;

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

/// Prints how the VM ended (and the guest's boot time) and maps it to zvm's exit code:
/// 0 when the guest ended the VM, 130 when stopped by a signal, 1 on failure.
pub(crate) fn report_outcome(
    outcome: &VmOutcome,
    boot_time: Option<vmm::devices::boot_timer::BootTime>,
) -> ExitCode {
    let (lines, code) = outcome_lines(outcome, boot_time);
    lines.iter().for_each(|l| eprintln!("zvm: {l}"));
    code
}

/// How the VM ended (the last line; after the guest's boot time, when known) and zvm's
/// exit code for it (see [`report_outcome`]).
pub(crate) fn outcome_lines(
    outcome: &VmOutcome,
    boot_time: Option<vmm::devices::boot_timer::BootTime>,
) -> (Vec<String>, ExitCode) {
    let mut lines = Vec::new();
    if let Some(t) = boot_time {
        lines.push(format!(
            "guest reached userspace {:.1} ms after process start ({:.1} ms after VM build start)",
            t.since_process_start.as_secs_f64() * 1e3,
            t.since_build_start.as_secs_f64() * 1e3
        ));
    }
    let (line, code) = match outcome {
        VmOutcome::Poweroff => ("guest powered off".to_string(), ExitCode::SUCCESS),
        VmOutcome::Reboot => ("guest rebooted; VM ended".into(), ExitCode::SUCCESS),
        VmOutcome::Halted => ("all vCPUs halted; VM ended".into(), ExitCode::SUCCESS),
        VmOutcome::Stopped => ("stopped by signal".into(), ExitCode::from(130)),
        VmOutcome::Failed(e) => (format!("VM failed: {e}"), ExitCode::from(1)),
        VmOutcome::VmmFailed(e) => (format!("VMM failed: {e}"), ExitCode::from(1)),
    };
    lines.push(line);
    (lines, code)
}
