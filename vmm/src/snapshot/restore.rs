//! Restoring a snapshot in a new process: check the state file and the host, map the
//! memory file privately, attach the same devices in the same order (with the clone's
//! overrides), put every device, the VM and the vCPUs back in their saved state, start.

use super::{
    file, memory as snapmem, MicrovmState, RestoreOverrides, RestoreParams, SnapshotError,
};
use crate::arch::state::check_cpuid_compatible;
use crate::builder::{attach_devices, BuildOptions, MicrovmBuilder};
use crate::devices::serial::ConsoleSink;
use crate::memory::{guest_memory_from_file, shared_guest_memory_from_file};
use crate::resources::{IrqchipKind, VmResources};
use crate::vm::RunningVm;
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;
use std::time::Instant;

/// Applies a clone's overrides to the snapshot's resources; an id the snapshot does not
/// have is an error, not ignored.
pub fn apply_overrides(
    resources: &mut VmResources,
    overrides: &RestoreOverrides,
) -> Result<(), SnapshotError> {
    for (id, path) in &overrides.drives {
        let drive = resources
            .drives
            .iter_mut()
            .find(|d| &d.drive_id == id)
            .ok_or_else(|| {
                SnapshotError::BadOverride(format!("the snapshot has no drive '{id}'"))
            })?;
        drive.path_on_host = path.clone();
    }
    for (id, tap) in &overrides.net {
        let iface = resources
            .net
            .iter_mut()
            .find(|n| &n.iface_id == id)
            .ok_or_else(|| {
                SnapshotError::BadOverride(format!("the snapshot has no network interface '{id}'"))
            })?;
        iface.host_dev_name = tap.clone();
    }
    apply_fs_overrides(resources, &overrides.fs)?;
    if let Some(path) = &overrides.vsock_uds_path {
        let vsock = resources
            .vsock
            .as_mut()
            .ok_or_else(|| SnapshotError::BadOverride("the snapshot has no vsock device".into()))?;
        vsock.uds_path = path.clone();
    }
    Ok(())
}

/// Forgets the snapshot's sockets of the backends zvm started (shares with a
/// `shared_dir`: that virtiofsd is gone), then applies the fs overrides: each names a
/// share by id or tag; a new directory must exist.
fn apply_fs_overrides(
    resources: &mut VmResources,
    overrides: &[super::FsOverride],
) -> Result<(), SnapshotError> {
    for fs in &mut resources.fs {
        if fs.shared_dir.is_some() {
            fs.socket_path = None;
        }
    }
    for o in overrides {
        let fs = resources
            .fs
            .iter_mut()
            .find(|f| f.fs_id == o.share || f.tag == o.share)
            .ok_or_else(|| {
                SnapshotError::BadOverride(format!(
                    "the snapshot has no virtio-fs share '{}' (by id or tag)",
                    o.share
                ))
            })?;
        if let Some(dir) = &o.shared_dir {
            if !dir.is_dir() {
                return Err(SnapshotError::BadOverride(format!(
                    "virtio-fs share '{}': {} is not a directory",
                    o.share,
                    dir.display()
                )));
            }
            fs.shared_dir = Some(dir.clone());
            fs.socket_path = None;
        }
        if let Some(read_only) = o.read_only {
            fs.read_only = read_only;
        }
        if let Some(socket) = &o.socket_path {
            // The caller's backend serves the share: the snapshot's directory (a
            // template's placeholder, perhaps gone) no longer matters.
            fs.socket_path = Some(socket.clone());
            if o.shared_dir.is_none() {
                fs.shared_dir = None;
            }
        }
    }
    Ok(())
}

/// Checks what the state claims against itself and against this host before anything is
/// built: counts that must agree, and CPU features the host must have.
fn check_state(state: &MicrovmState, kvm: &Kvm) -> Result<(), SnapshotError> {
    let mc = &state.resources.machine_config;
    if state.vcpus.len() != usize::from(mc.vcpu_count) {
        return Err(SnapshotError::BadStateFile {
            path: Default::default(),
            reason: format!(
                "{} vCPU states for {} vCPUs",
                state.vcpus.len(),
                mc.vcpu_count
            ),
        });
    }
    let host = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| SnapshotError::Incompatible(format!("cannot read this host's CPUID: {e}")))?;
    for vcpu in &state.vcpus {
        check_cpuid_compatible(&vcpu.cpuid, host.as_slice())
            .map_err(SnapshotError::Incompatible)?;
    }
    Ok(())
}

/// Restores the VM a snapshot describes; it runs at once if `params.resume`, else stays
/// paused until resumed. The console goes to `console` (stdin forwarded with `input`).
///
/// A snapshot with virtio-fs shares needs their backends started: use
/// [`restore_microvm_with`] (here a share zvm's virtiofsd served has no backend and the
/// restore fails with [`crate::devices::virtio::fs::FsError::NoBackend`]).
pub fn restore_microvm(
    params: &RestoreParams,
    opts: BuildOptions,
    console: ConsoleSink,
    input: bool,
) -> Result<RunningVm, SnapshotError> {
    restore_microvm_with(params, opts, console, input, &mut |_| Ok(()))
}

/// [`restore_microvm`], calling `start_backends` with the VM's resources (overrides
/// applied) before any device is attached: it starts a vhost-user backend (virtiofsd)
/// for every share in `resources.fs` that has a `shared_dir` and no `socket_path`, and
/// sets `socket_path` to where it listens. Its error fails the restore
/// ([`SnapshotError::FsBackend`]). Guest memory of a VM with shares is a memfd filled
/// from the memory file's data (the backend maps it); any other VM maps the file
/// privately, copy-on-write.
pub fn restore_microvm_with(
    params: &RestoreParams,
    opts: BuildOptions,
    console: ConsoleSink,
    input: bool,
    start_backends: &mut dyn FnMut(&mut VmResources) -> Result<(), String>,
) -> Result<RunningVm, SnapshotError> {
    let start = Instant::now();
    let state = file::read_state_file(&params.snapshot_path)?;
    let with_path = |e: SnapshotError| match e {
        SnapshotError::BadStateFile { reason, .. } => SnapshotError::BadStateFile {
            path: params.snapshot_path.clone(),
            reason,
        },
        other => other,
    };
    let kvm = Kvm::new()
        .map_err(|e| SnapshotError::Incompatible(format!("cannot open /dev/kvm: {e}")))?;
    check_state(&state, &kvm).map_err(with_path)?;
    let mut resources = state.resources.clone();
    apply_overrides(&mut resources, &params.overrides)?;
    resources.seccomp = params.seccomp;
    // Dirty tracking follows the load request alone (Firecracker's
    // enable_diff_snapshots), whatever the snapshotted VM did; the restored VM's own
    // resources say what it does, so a later diff snapshot of it is refused unless it
    // tracks, and a snapshot of it records its own setting.
    resources.machine_config.track_dirty_pages = params.track_dirty_pages;
    resources.machine_config.pit = state.vm.pit.is_some();
    // The snapshot says which irqchip it has: zvm's IOAPIC state (split), KVM's irqchip
    // state (kernel; every snapshot made before split irqchips existed), or neither.
    let split = state.devices.ioapic.is_some();
    resources.machine_config.irqchip = match (split, state.vm.irqchips.is_empty()) {
        (true, _) => Some(IrqchipKind::Split),
        (false, false) => Some(IrqchipKind::Kernel),
        (false, true) => None,
    };
    resources
        .validate()
        .map_err(|e| SnapshotError::BadStateFile {
            path: params.snapshot_path.clone(),
            reason: e.to_string(),
        })?;
    let mc = resources.machine_config.clone();
    let mem_bytes = mc.mem_size_mib << 20;
    let mem_file = snapmem::open_memory_file(&params.mem_file_path, mem_bytes)?;
    let shared = !resources.fs.is_empty();
    let mem = if shared {
        // The backends map guest memory: a private file mapping would hide the guest's
        // writes from them (and theirs from the guest).
        shared_guest_memory_from_file(&mem_file, mem_bytes)
    } else {
        guest_memory_from_file(&mem_file, mem_bytes)
    }
    .map_err(|e| SnapshotError::BadMemoryFile {
        path: params.mem_file_path.clone(),
        reason: e.to_string(),
    })?;
    if shared {
        tracing::debug!("guest memory copied into a memfd in {:?}", start.elapsed());
        start_backends(&mut resources).map_err(SnapshotError::FsBackend)?;
    }
    // A snapshot's VM gets the in-kernel devices it was saved with: a PIT only if the
    // snapshot holds one (snapshots made before the PIT became optional all do), the
    // irqchip of the kind it saved.
    let opts = BuildOptions {
        irqchip: split || !state.vm.irqchips.is_empty(),
        pit: state.vm.pit.is_some(),
        split_irqchip: split,
        ..opts
    };
    let mut builder = MicrovmBuilder::with_memory_tracked(
        mem,
        mc.mem_size_mib,
        mc.vcpu_count,
        mc.cpu_template,
        resources.seccomp,
        opts,
        params.track_dirty_pages,
    )?;
    attach_devices(&mut builder, &resources, console, input)?;
    // Interrupt controllers and vCPUs first: a device that interrupts the guest as it is
    // restored (vsock's transport reset) must not have that interrupt overwritten.
    state.vm.restore(builder.vm_fd())?;
    let cpuids: Vec<_> = state.vcpus.iter().map(|v| v.cpuid.clone()).collect();
    let vcpus = builder.create_vcpus(Some(&cpuids))?;
    for (vcpu, saved) in vcpus.iter().zip(&state.vcpus) {
        saved.restore(&vcpu.fd)?;
    }
    builder
        .device_registry()
        .restore(&state.devices)
        .map_err(|(device, reason)| SnapshotError::Device { device, reason })?;
    builder.set_resources(resources);
    let vm = builder.launch(vcpus, !params.resume)?;
    tracing::debug!(
        "snapshot restored in {:?} (resumed: {})",
        start.elapsed(),
        params.resume
    );
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::FsConfig;
    use crate::snapshot::FsOverride;
    use std::path::PathBuf;

    fn share(id: &str, tag: &str, dir: Option<PathBuf>, socket: Option<&str>) -> FsConfig {
        FsConfig {
            fs_id: id.into(),
            tag: tag.into(),
            shared_dir: dir,
            read_only: false,
            xattr: false,
            socket_path: socket.map(PathBuf::from),
        }
    }

    #[test]
    fn fs_overrides_name_shares_by_id_or_tag_and_drop_dead_sockets() {
        let old = tempfile::tempdir().expect("dir");
        let new = tempfile::tempdir().expect("dir");
        let mut r = VmResources::new("/k");
        r.fs = vec![
            share("a", "ta", Some(old.path().into()), Some("/old/a.sock")),
            share("b", "tb", None, Some("/run/outside.sock")),
        ];
        let mut none = r.clone();
        apply_overrides(&mut none, &RestoreOverrides::default()).expect("no overrides");
        assert_eq!(none.fs[0].socket_path, None, "zvm's old virtiofsd is gone");
        assert_eq!(
            none.fs[1].socket_path.as_deref(),
            Some(std::path::Path::new("/run/outside.sock")),
            "an outside backend is reconnected to"
        );

        let overrides = RestoreOverrides {
            fs: vec![
                FsOverride {
                    share: "ta".into(),
                    shared_dir: Some(new.path().into()),
                    read_only: Some(true),
                    socket_path: None,
                },
                FsOverride {
                    share: "b".into(),
                    socket_path: Some("/run/other.sock".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        apply_overrides(&mut r, &overrides).expect("by tag and by id");
        assert_eq!(r.fs[0].shared_dir.as_deref(), Some(new.path()));
        assert!(r.fs[0].read_only && r.fs[0].socket_path.is_none());
        assert_eq!(
            r.fs[1].socket_path.as_deref(),
            Some(std::path::Path::new("/run/other.sock"))
        );
        let mut r2 = VmResources::new("/k");
        r2.fs = vec![share("a", "ta", Some("/gone/placeholder".into()), None)];
        let by_socket = RestoreOverrides {
            fs: vec![FsOverride {
                share: "a".into(),
                socket_path: Some("/run/mine.sock".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        apply_overrides(&mut r2, &by_socket).expect("a backend of the caller's");
        assert_eq!(
            r2.fs[0].shared_dir, None,
            "the snapshot's directory is dropped"
        );

        for (o, expected) in [
            (
                FsOverride {
                    share: "c".into(),
                    ..Default::default()
                },
                "no virtio-fs share 'c'",
            ),
            (
                FsOverride {
                    share: "a".into(),
                    shared_dir: Some("/nonexistent/zvm-share".into()),
                    ..Default::default()
                },
                "is not a directory",
            ),
        ] {
            let overrides = RestoreOverrides {
                fs: vec![o],
                ..Default::default()
            };
            let err = apply_overrides(&mut r.clone(), &overrides).expect_err(expected);
            assert!(
                matches!(err, SnapshotError::BadOverride(_)) && err.to_string().contains(expected),
                "{err}"
            );
        }
    }
}
