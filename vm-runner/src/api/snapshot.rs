//! `PUT /snapshot/create` and `PUT /snapshot/load` on the monitor: Firecracker's rules
//! (create only on a paused VM; load only in a process that has configured and started
//! nothing), the request translated into [`vmm::snapshot`]'s parameters, and the
//! latencies kept for the metrics.

use super::state::PendingConfig;
use super::{refuse, Monitor, Origin};
use api_server::model::{self, SnapshotCreateParams, SnapshotLoadParams};
use api_server::{ApiResponse, ControllerError};
use std::path::PathBuf;
use std::time::Instant;
use vmm::builder::BuildOptions;
use vmm::devices::serial::ConsoleSink;
use vmm::snapshot::{
    CreateSnapshotParams, FsOverride, RestoreOverrides, RestoreParams, SnapshotError, SnapshotType,
};

impl Monitor {
    /// `PUT /snapshot/create`: the VM must be running and paused.
    pub(super) fn create_snapshot(
        &mut self,
        p: SnapshotCreateParams,
    ) -> Result<ApiResponse, ControllerError> {
        let running = self.running.as_ref().ok_or_else(|| {
            refuse(
                "PUT /snapshot/create needs a VM: send InstanceStart (or PUT /snapshot/load) first",
            )
        })?;
        if !running.pause.is_paused() {
            return Err(refuse(
                r#"PUT /snapshot/create needs a paused VM: PATCH /vm {"state": "Paused"} first"#,
            ));
        }
        let params = create_params(&p).map_err(|e| refuse(e.to_string()))?;
        let start = Instant::now();
        let info = running
            .snapshot
            .create(&params)
            .map_err(|e| refuse(format!("cannot create the snapshot: {e}")))?;
        let took = start.elapsed();
        match params.snapshot_type {
            SnapshotType::Full => self.metrics.latencies.full_create_snapshot = took,
            SnapshotType::Diff => self.metrics.latencies.diff_create_snapshot = took,
        }
        tracing::info!(
            kind = ?params.snapshot_type,
            state = %params.snapshot_path.display(),
            memory = %params.mem_file_path.display(),
            state_bytes = info.state_bytes,
            pages_written = info.pages_written,
            "snapshot created in {:.1} ms",
            took.as_secs_f64() * 1e3
        );
        Ok(ApiResponse::Empty)
    }

    /// `PUT /snapshot/load`: only before any configuration and before a VM exists; the
    /// restored VM is then this process's VM, as a booted one would be.
    pub(super) fn load_snapshot(
        &mut self,
        p: SnapshotLoadParams,
    ) -> Result<ApiResponse, ControllerError> {
        self.before_boot("PUT /snapshot/load")?;
        if self.configured {
            return Err(refuse(
                "PUT /snapshot/load is only allowed before the VM is configured (boot-source, machine-config, drives, \
                 network-interfaces, vsock, entropy): the restored VM's resources come from the snapshot",
            ));
        }
        let params = restore_params(&p, self.seccomp)?;
        let start = Instant::now();
        let opts = BuildOptions {
            process_start: self.process_start,
            ..BuildOptions::default()
        };
        // The snapshot's virtio-fs shares get new virtiofsd daemons, as InstanceStart's do.
        let mut fs_daemons = None;
        let fs_args = crate::virtiofs::FsArgs::from_env();
        let mut start_backends = |resources: &mut vmm::resources::VmResources| {
            crate::virtiofs::start_fs_backends(resources, &fs_args, false, &mut fs_daemons)
        };
        // The console goes where InstanceStart's does: this process's stdout, stdin forwarded.
        let vm = vmm::snapshot::restore_microvm_with(
            &params,
            opts,
            ConsoleSink::Stdout,
            true,
            &mut start_backends,
        )
        .map_err(|e| refuse(load_error(&e)))?;
        let took = start.elapsed();
        let vsock_uds = vm
            .resources()
            .and_then(|r| r.vsock.as_ref())
            .map(|v| v.uds_path.clone());
        if let Some(r) = vm.resources() {
            self.config = PendingConfig::from_resources(r);
        }
        self.adopt(vm, Origin::Restored, vsock_uds)?;
        if let (Some(running), Some(daemons)) = (&mut self.running, fs_daemons) {
            running._fs_daemons = daemons;
        }
        self.metrics.latencies.load_snapshot = took;
        tracing::info!(
            state = %params.snapshot_path.display(),
            memory = %params.mem_file_path.display(),
            resumed = params.resume,
            "snapshot loaded in {:.1} ms",
            self.metrics.latencies.load_snapshot.as_secs_f64() * 1e3
        );
        Ok(ApiResponse::Empty)
    }
}

/// `PUT /snapshot/create`'s body as the VMM takes it.
fn create_params(p: &SnapshotCreateParams) -> Result<CreateSnapshotParams, model::ModelError> {
    p.validate()?;
    let snapshot_type = match p.snapshot_type {
        model::SnapshotType::Full => SnapshotType::Full,
        model::SnapshotType::Diff => SnapshotType::Diff,
    };
    Ok(CreateSnapshotParams {
        snapshot_type,
        snapshot_path: PathBuf::from(&p.snapshot_path),
        mem_file_path: PathBuf::from(&p.mem_file_path),
    })
}

/// `PUT /snapshot/load`'s body as the VMM takes it, once both files are found readable.
pub(super) fn restore_params(
    p: &SnapshotLoadParams,
    seccomp: bool,
) -> Result<RestoreParams, ControllerError> {
    p.validate().map_err(|e| refuse(e.to_string()))?;
    let mem_file = p.mem_file().map_err(|e| refuse(e.to_string()))?;
    check_snapshot_file("snapshot state file", &p.snapshot_path)?;
    check_snapshot_file("snapshot memory file", mem_file)?;
    let overrides = RestoreOverrides {
        drives: p
            .drive_overrides
            .iter()
            .map(|o| (o.drive_id.clone(), PathBuf::from(&o.path_on_host)))
            .collect(),
        net: p
            .network_overrides
            .iter()
            .map(|o| (o.iface_id.clone(), o.host_dev_name.clone()))
            .collect(),
        vsock_uds_path: p
            .vsock_override
            .as_ref()
            .map(|v| PathBuf::from(&v.uds_path)),
        fs: p
            .fs_overrides
            .iter()
            .map(|o| FsOverride {
                share: o.fs_id.clone(),
                shared_dir: Some(PathBuf::from(&o.shared_dir)),
                read_only: o.read_only,
                socket_path: None,
            })
            .collect(),
    };
    Ok(RestoreParams {
        snapshot_path: PathBuf::from(&p.snapshot_path),
        mem_file_path: PathBuf::from(mem_file),
        overrides,
        resume: p.resume_vm,
        track_dirty_pages: p.tracks_dirty_pages(),
        seccomp,
    })
}

/// Refuses a snapshot file that is missing or not a regular file, before the VMM looks.
pub fn check_snapshot_file(what: &str, path: &str) -> Result<(), ControllerError> {
    super::state::check_readable(what, path)
}

/// A restore failure, said as such.
pub fn load_error(e: &SnapshotError) -> String {
    format!("cannot load the snapshot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use api_server::ApiRequest;
    use serde_json::json;

    fn load(v: serde_json::Value) -> SnapshotLoadParams {
        serde_json::from_value(v).expect("load body")
    }

    #[test]
    fn load_bodies_become_restore_params() {
        let dir = tempfile::tempdir().expect("dir");
        let (state, mem) = (dir.path().join("vm.state"), dir.path().join("vm.mem"));
        std::fs::write(&state, b"state").expect("state");
        std::fs::write(&mem, b"mem").expect("mem");
        let p = load(json!({
            "snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": mem},
            "enable_diff_snapshots": true, "resume_vm": true,
            "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}],
            "drive_overrides": [{"drive_id": "rootfs", "path_on_host": "/clone.ext4"}],
            "vsock_override": {"uds_path": "/run/clone.sock"},
            "fs_overrides": [{"fs_id": "share", "shared_dir": "/srv/c1"}]
        }));
        let r = restore_params(&p, true).expect("valid");
        assert_eq!(
            (r.snapshot_path.as_path(), r.mem_file_path.as_path()),
            (state.as_path(), mem.as_path())
        );
        assert!(r.resume && r.track_dirty_pages && r.seccomp);
        assert_eq!(
            r.overrides.net,
            vec![("eth0".to_string(), "tap9".to_string())]
        );
        assert_eq!(
            r.overrides.drives,
            vec![("rootfs".to_string(), PathBuf::from("/clone.ext4"))]
        );
        assert_eq!(
            r.overrides.vsock_uds_path,
            Some(PathBuf::from("/run/clone.sock"))
        );
        assert_eq!(
            r.overrides.fs,
            [FsOverride {
                share: "share".into(),
                shared_dir: Some("/srv/c1".into()),
                read_only: None,
                socket_path: None
            }]
        );

        let missing =
            load(json!({"snapshot_path": state, "mem_file_path": dir.path().join("nope.mem")}));
        let e = restore_params(&missing, true).expect_err("missing memory file");
        assert!(
            e.message.contains("snapshot memory file") && e.message.contains("nope.mem"),
            "{}",
            e.message
        );
        let dir_as_state = load(json!({"snapshot_path": dir.path(), "mem_file_path": mem}));
        assert!(restore_params(&dir_as_state, true)
            .expect_err("a directory")
            .message
            .contains("not a regular file"));
        let neither = load(json!({"snapshot_path": state}));
        assert!(restore_params(&neither, true)
            .expect_err("no memory")
            .message
            .contains("exactly one"));
    }

    fn monitor() -> Monitor {
        let (events, _) = std::sync::mpsc::channel();
        Monitor {
            id: "test".into(),
            seccomp: false,
            config: Default::default(),
            configured: false,
            running: None,
            metrics: Default::default(),
            logging: Box::new(crate::lean_log::LineLogControl::detached()),
            process_start: Instant::now(),
            events,
        }
    }

    fn files(dir: &std::path::Path, state: &[u8]) -> (String, String) {
        let (s, m) = (dir.join("vm.state"), dir.join("vm.mem"));
        std::fs::write(&s, state).expect("state");
        std::fs::write(&m, vec![0u8; 4096]).expect("mem");
        (s.display().to_string(), m.display().to_string())
    }

    #[test]
    fn the_monitor_enforces_firecrackers_snapshot_rules() {
        let dir = tempfile::tempdir().expect("dir");
        let (state, mem) = files(dir.path(), b"not a zvm snapshot at all");
        let mut m = monitor();
        let create = SnapshotCreateParams {
            snapshot_type: model::SnapshotType::Full,
            snapshot_path: "/s".into(),
            mem_file_path: "/m".into(),
            version: None,
        };
        let e = m
            .handle(ApiRequest::CreateSnapshot(create))
            .expect_err("no VM");
        assert!(e.message.contains("needs a VM"), "{}", e.message);

        // Logger and metrics are not VM configuration: a load may still come.
        let metrics = model::Metrics {
            metrics_path: dir.path().join("metrics").display().to_string(),
        };
        m.handle(ApiRequest::PutMetrics(metrics)).expect("metrics");
        let garbage = load(json!({"snapshot_path": state, "mem_file_path": mem}));
        let e = m
            .handle(ApiRequest::LoadSnapshot(garbage.clone()))
            .expect_err("garbage state");
        assert!(
            e.message.starts_with("cannot load the snapshot: ") && e.message.contains("vm.state"),
            "{}",
            e.message
        );
        assert!(
            m.running.is_none() && !m.configured,
            "a refused load leaves the process as it was"
        );
        assert_eq!(m.metrics.refused.take_delta(), 2);

        m.handle(ApiRequest::PutMachineConfig(m.config.machine.clone()))
            .expect("configure");
        let e = m
            .handle(ApiRequest::LoadSnapshot(garbage))
            .expect_err("after configuration");
        assert!(
            e.message
                .contains("only allowed before the VM is configured"),
            "{}",
            e.message
        );
    }

    #[test]
    fn create_bodies_become_create_params() {
        let p: SnapshotCreateParams = serde_json::from_value(
            json!({"snapshot_type": "Diff", "snapshot_path": "/s", "mem_file_path": "/m"}),
        )
        .expect("body");
        let c = create_params(&p).expect("valid");
        assert_eq!(
            (c.snapshot_type, c.snapshot_path, c.mem_file_path),
            (SnapshotType::Diff, PathBuf::from("/s"), PathBuf::from("/m"))
        );
        let p = SnapshotCreateParams {
            version: Some("1.4.0".into()),
            ..p
        };
        assert!(create_params(&p).is_err());
    }
}
