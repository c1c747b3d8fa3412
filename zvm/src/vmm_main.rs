//! `zvm-vmm`: the lean VMM executable zvm hands its VMs to (zvm's `vmm_exec` module): plain
//! `zvm run` boots and restores, and API mode (`zvm --api-sock`, `--config-file`). It
//! reads the job from the hand-over fd ([`handover`]), then builds and runs the VM as
//! `zvm run` does (console, signals, metrics, seccomp, exit code and messages) or serves
//! the API as zvm does ([`vm_runner::api`]). It links the VMM and vm-runner, nothing else
//! of zvm's, so the VM's process keeps little but the VMM resident.

use std::process::ExitCode;
use std::time::{Duration, Instant};
use vm_runner::handover::{Handover, Job, RestoreJob};
use vm_runner::{lean_log, run_metrics, stop_signals, terminal, vm_end};
use vmm::builder::BuildOptions;
use vmm::devices::serial::ConsoleSink;
use vmm::resources::ConsoleConfig;

fn main() -> ExitCode {
    let mut handover = match Handover::from_args(std::env::args_os().skip(1)) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("zvm-vmm: {e}");
            return ExitCode::from(2);
        }
    };
    let log = lean_log::init(&handover.log_level);
    let process_start = Instant::now()
        .checked_sub(Duration::from_nanos(handover.started_ns_ago))
        .unwrap_or_else(Instant::now);
    // A jailed half: vmm locks it down once the VM's devices are open, as in zvm; API
    // mode's jail at once, before anything is served (as zvm does).
    if let Some(jail) = handover.jail.take() {
        // SAFETY: zvm left exactly these descriptors open for this process, and nothing
        // here has taken them (from_handover checks that they are open pipes).
        match unsafe { jail::Jailed::from_handover(jail) } {
            Ok(mut jailed) if matches!(handover.job, Job::Api(_)) => {
                if let Err(e) = jailed.lock_down() {
                    eprintln!("zvm: {e}");
                    return ExitCode::from(2);
                }
            }
            Ok(mut jailed) => {
                vmm::builder::set_lock_down(move || jailed.lock_down().map_err(|e| e.to_string()))
            }
            Err(e) => {
                eprintln!("zvm-vmm: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let opts = BuildOptions {
        process_start,
        ..BuildOptions::default()
    };
    if !matches!(handover.job, Job::Api(_)) {
        stop_signals::catch_early();
    }
    let started = match &handover.job {
        Job::Boot(resources) => vmm::build_microvm(resources, opts)
            .map(|vm| (vm, resources.console == ConsoleConfig::Stdio))
            .map_err(|e| (format!("zvm: {e}"), 2)),
        Job::Restore(restore) => restore_vm(restore, opts),
        Job::Api(api) => return vm_runner::api::serve(api.mode_args(Box::new(log)), process_start),
    };
    match started {
        Ok((vm, interactive)) => run(&handover, vm, interactive),
        Err((message, code)) => {
            eprintln!("{message}");
            ExitCode::from(code)
        }
    }
}

/// Restores the VM as `zvm run --restore` does (zvm's restore module), with the same
/// messages and exit codes; returns it and whether its console is on this terminal.
fn restore_vm(
    restore: &RestoreJob,
    opts: BuildOptions,
) -> Result<(vmm::RunningVm, bool), (String, u8)> {
    let (sink, input) = match restore.console.parse::<ConsoleConfig>() {
        Ok(ConsoleConfig::Stdio) => (ConsoleSink::Stdout, true),
        Ok(ConsoleConfig::File(path)) => match std::fs::File::create(&path) {
            Ok(file) => (ConsoleSink::File(file), false),
            Err(e) => {
                let what = format!("cannot create the console file {}: {e}", path.display());
                return Err((format!("zvm: {what}"), 2));
            }
        },
        Ok(ConsoleConfig::Off) => (ConsoleSink::Off, false),
        Err(e) => return Err((format!("zvm: {e}"), 2)),
    };
    let params = restore.params();
    if restore.verbose {
        let flavour = vmm::host::KvmFlavour::detect();
        eprintln!("zvm: host KVM flavour: {}", flavour.describe());
        eprintln!(
            "zvm: restoring {} (memory {})",
            params.snapshot_path.display(),
            params.mem_file_path.display()
        );
    }
    // zvm hands over only snapshots without virtio-fs shares.
    let mut no_backends = |resources: &mut vmm::VmResources| {
        if resources.fs.is_empty() {
            Ok(())
        } else {
            Err("virtio-fs shares need zvm (ZVM_VMM=none)".to_string())
        }
    };
    let vm = vmm::snapshot::restore_microvm_with(&params, opts, sink, input, &mut no_backends)
        .map_err(|e| {
            let code = if e.is_bad_input() { 2 } else { 1 };
            (format!("zvm: cannot load the snapshot: {e}"), code)
        })?;
    if restore.verbose {
        eprintln!(
            "zvm: restored and running {:.1} ms after process start",
            opts.process_start.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok((vm, input))
}

/// Runs the VM to its end as `zvm run` runs one without a container: signals, terminal,
/// metrics, the outcome's lines and exit code.
fn run(handover: &Handover, vm: vmm::RunningVm, interactive: bool) -> ExitCode {
    let raw = interactive.then(terminal::RawTerminal::enable).flatten();
    if let Ok(stop) = vm.stop_handle() {
        stop_signals::install_for(stop, vm.shutdown_handle().ok(), handover.shutdown_timeout());
    }
    let metrics = run_metrics::start_for(handover.metrics.clone(), &vm);
    // The socket the VM listens on (a restore's override, else its snapshot's; a boot's
    // own), removed at its end.
    let vsock_uds = vm
        .resources()
        .and_then(|r| r.vsock.as_ref())
        .map(|v| v.uds_path.clone());
    let (outcome, boot_time) = vm.wait_with_boot_time();
    if let Some(writer) = metrics {
        writer.finish();
    }
    let (lines, code) = vm_end::outcome_lines(&outcome, boot_time);
    drop(raw);
    if let Some(uds) = vsock_uds {
        vmm::devices::virtio::vsock::remove_socket(&uds);
    }
    lines.iter().for_each(|l| eprintln!("zvm: {l}"));
    code
}
