//! `zvm-vmm`: the lean VMM executable `zvm run` hands plain VMs to (zvm's `vmm_exec`
//! module). It reads the VM's resources from the hand-over fd ([`handover`]), builds and runs the
//! VM as `zvm run` does (console, signals, metrics, seccomp, exit code and messages), and
//! links nothing else of zvm's, so the VM's process keeps little but the VMM resident.

// zvm writes the hand-over, zvm-vmm reads it.
#[allow(dead_code)]
mod handover;
mod lean_log;
// zvm's modules the run needs; zvm uses the rest of them.
#[allow(dead_code)]
mod api {
    pub mod metrics;
    /// The one function of zvm's logger module the metrics writer uses.
    pub mod logger {
        /// Opens `path` for appending, as zvm's logger does.
        pub fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(path)
        }
    }
}
#[allow(dead_code)]
mod run_metrics;
#[allow(dead_code)]
mod stop_signals;
mod terminal;
#[allow(dead_code)]
mod vm_end;

use handover::Handover;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmm::builder::BuildOptions;
use vmm::resources::ConsoleConfig;

fn main() -> ExitCode {
    let handover = match Handover::from_args(std::env::args_os().skip(1)) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("zvm-vmm: {e}");
            return ExitCode::from(2);
        }
    };
    lean_log::init(&handover.log_level);
    let process_start = Instant::now()
        .checked_sub(Duration::from_nanos(handover.started_ns_ago))
        .unwrap_or_else(Instant::now);
    run(&handover, process_start)
}

/// Builds and runs the VM; the rest is `zvm run`'s end of a VM without a container.
fn run(handover: &Handover, process_start: Instant) -> ExitCode {
    let resources = &handover.resources;
    let opts = BuildOptions {
        process_start,
        ..BuildOptions::default()
    };
    let vm = match vmm::build_microvm(resources, opts) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("zvm: {e}");
            return ExitCode::from(2);
        }
    };
    let interactive = resources.console == ConsoleConfig::Stdio;
    let raw = interactive.then(terminal::RawTerminal::enable).flatten();
    if let Ok(stop) = vm.stop_handle() {
        stop_signals::install_for(stop, vm.shutdown_handle().ok(), handover.shutdown_timeout());
    }
    let metrics = run_metrics::start_for(handover.metrics.clone(), &vm);
    let (outcome, boot_time) = vm.wait_with_boot_time();
    if let Some(writer) = metrics {
        writer.finish();
    }
    let (lines, code) = vm_end::outcome_lines(&outcome, boot_time);
    drop(raw);
    if let Some(vsock) = &resources.vsock {
        vmm::devices::virtio::vsock::remove_socket(&vsock.uds_path);
    }
    lines.iter().for_each(|l| eprintln!("zvm: {l}"));
    code
}
