//! How a VM ended, as zvm and zvm-vmm report it: the lines for standard error and the
//! exit code.

use std::process::ExitCode;
use vmm::VmOutcome;

/// Prints how the VM ended (and the guest's boot time) and maps it to zvm's exit code:
/// 0 when the guest ended the VM, 130 when stopped by a signal, 1 on failure.
pub fn report_outcome(
    outcome: &VmOutcome,
    boot_time: Option<vmm::devices::boot_timer::BootTime>,
) -> ExitCode {
    let (lines, code) = outcome_lines(outcome, boot_time);
    lines.iter().for_each(|l| eprintln!("zvm: {l}"));
    code
}

/// How the VM ended (the last line; after the guest's boot time, when known) and zvm's
/// exit code for it (see [`report_outcome`]).
pub fn outcome_lines(
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
