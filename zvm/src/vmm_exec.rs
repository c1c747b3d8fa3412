//! zvm hands a plain VM and API mode to the lean VMM executable, `zvm-vmm`
//! (src/vmm_main.rs): once the front end has parsed the flags and built the VM's resources
//! (or, in API mode, entered the jail if asked), it `exec`s `zvm-vmm` in its own process
//! (same PID, terminal, signals and exit code), passing the job through an inherited memfd
//! ([`crate::handover`]). The VM's process then carries only the VMM's code and
//! vm-runner's: not the flist, OCI, node and client code of zvm, nor their libraries
//! (benches/README.md, "The lean VMM in use", "API mode in the lean VMM").
//!
//! `zvm-vmm` is found beside zvm (`ZVM_VMM=PATH` overrides; `ZVM_VMM=none` keeps every VM
//! in zvm). Runs that need zvm around the VM after it ends or beside it keep it in
//! zvm: flists (their work directory is removed, their container talked to), virtio-fs
//! shares, also a snapshot's (their virtiofsd stops with zvm), `--output` (a thread of
//! zvm copies it), and log filters other than a plain level. Restores (`zvm run
//! --restore`) are handed over as boots are; with `--jail on` the jailed half is (its
//! supervisor stays zvm) and zvm-vmm locks the jail down. API mode (`zvm --api-sock`,
//! `--config-file`, jailed with `--jail-root`) is handed over whole: zvm-vmm serves the
//! API, virtio-fs shares included (vm-runner starts their virtiofsd).
//!
//! Still in a process with more than the VMM: `zvm run --flist` container VMs (the VM and
//! the thread that talks to the agent) and zvm-runc's sandbox (the VM, the agent client,
//! the stdio relay, checkpoints). Splitting them as Kata splits its shim from the
//! hypervisor would mean: the front end stays as the shim and starts `zvm-vmm` as a child
//! (fork + exec, not exec in place) with an API job on a socket in the work or container
//! directory, console to a file; the agent is reached as now, through the VM's vsock
//! socket; the shim's in-process handles become API calls (stop: `Shutdown`/kill; pause
//! and checkpoints: `PATCH /vm`, `PUT /snapshot/create`; template clones and checkpoint
//! restores: `PUT /snapshot/load`, whose `fs_overrides` would then need a
//! `socket_path`, the virtiofsd the shim started); the VM's end is the child's exit code
//! (vm-runner's vm_end codes) instead of a `VmOutcome` (the sandbox's ACPI power-off event
//! included, which shares code 0 with a reboot); the sandbox's jail is handed to the child
//! as `zvm run --jail` hands it. The VM's process would keep about 2.8 MiB, but each
//! container would cost the shim's memory on top (zvm's 7.6 MiB today, unless the shim is
//! slimmed too), so the sum per container grows.

use crate::handover::{Handover, Job, FD_FLAG, LOG_LEVELS};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Instant;

/// The environment variable naming the lean executable (or `none`).
pub const VMM_ENV: &str = "ZVM_VMM";
/// The lean executable's name, beside zvm.
pub const VMM_BINARY: &str = "zvm-vmm";

/// The lean executable to run VMs in: `$ZVM_VMM`, else `zvm-vmm` beside this zvm; None
/// when there is none (or `ZVM_VMM=none`).
pub fn find() -> Option<PathBuf> {
    match std::env::var_os(VMM_ENV) {
        Some(v) if v == "none" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => {
            let beside = std::env::current_exe().ok()?.with_file_name(VMM_BINARY);
            beside.is_file().then_some(beside)
        }
    }
}

/// Runs the VM in `zvm-vmm` when it can: returns only if it cannot (nothing found, a log
/// filter it does not take, virtio-fs shares) or the `exec` failed (a warning then; the
/// caller runs the VM itself).
///
/// In a jail's jailed half the jail goes along ([`crate::vm_jail::take_jailed`]; back
/// if the `exec` fails) and zvm-vmm locks it down.
pub fn exec(handover: &Handover, process_start: Instant) -> Option<std::io::Error> {
    let shares = match &handover.job {
        Job::Boot(resources) => !resources.fs.is_empty(),
        // A snapshot zvm cannot read stays with zvm, which reports why.
        Job::Restore(restore) => vmm::snapshot::read_state_file(&restore.snapshot_path)
            .map_or(true, |state| !state.resources.fs.is_empty()),
        // zvm-vmm starts the API's virtiofsd itself.
        Job::Api(_) => false,
    };
    if shares || !LOG_LEVELS.contains(&handover.log_level.as_str()) {
        return None;
    }
    let path = find()?;
    let mut handover = Handover {
        started_ns_ago: u64::try_from(process_start.elapsed().as_nanos()).unwrap_or(u64::MAX),
        ..handover.clone()
    };
    // The jail's pipes stay open (and owned here) until the exec.
    let mut jail_fds = Vec::new();
    if let Some(jailed) = crate::vm_jail::take_jailed() {
        match jailed.into_handover() {
            Ok((jail, fds)) => {
                handover.jail = Some(jail);
                jail_fds = fds;
            }
            Err(e) => return Some(std::io::Error::other(e.to_string())),
        }
    }
    let err = exec_with(&path, &handover);
    if let Some(jail) = handover.jail.take() {
        // The exec failed: the jail is this process's to lock down after all.
        jail_fds.into_iter().for_each(|fd| {
            let _ = fd.into_raw_fd();
        });
        // SAFETY: the descriptors are the ones into_handover left open, released just
        // above, so nothing else owns them.
        match unsafe { jail::Jailed::from_handover(jail) } {
            Ok(jailed) => crate::vm_jail::put_back_jailed(Box::new(jailed)),
            Err(e) => return Some(std::io::Error::other(e.to_string())),
        }
    }
    Some(err)
}

/// `exec`s `path` with `handover`; returns only on failure.
fn exec_with(path: &std::path::Path, handover: &Handover) -> std::io::Error {
    let fd = match handover.to_memfd() {
        Ok(fd) => fd,
        Err(e) => return std::io::Error::other(e.to_string()),
    };
    tracing::debug!("handing the VM to {}", path.display());
    let err = std::process::Command::new(path)
        .arg(FD_FLAG)
        .arg(fd.as_raw_fd().to_string())
        .exec();
    std::io::Error::new(err.kind(), format!("cannot run {}: {err}", path.display()))
}
