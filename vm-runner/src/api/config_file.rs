//! `--config-file`: Firecracker's one-document VM description, turned into the same API
//! requests a client would send, followed by `InstanceStart`; or, with zvm's
//! `snapshot-load` section (the body of `PUT /snapshot/load`), by a snapshot load instead.

use api_server::model::Fs;
use api_server::model::{
    ActionType, BootSource, Drive, EntropyDevice, Logger, MachineConfig, Metrics, NetworkInterface,
    SnapshotLoadParams, Vsock,
};
use api_server::ApiRequest;
use serde::Deserialize;
use std::path::Path;

/// Firecracker's configuration file layout (the sections zvm knows; others are refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(rename = "boot-source", default)]
    boot_source: Option<BootSource>,
    #[serde(rename = "snapshot-load", default)]
    snapshot_load: Option<SnapshotLoadParams>,
    #[serde(rename = "machine-config", default)]
    machine_config: Option<MachineConfig>,
    #[serde(default)]
    drives: Vec<Drive>,
    #[serde(default)]
    entropy: Option<EntropyDevice>,
    #[serde(rename = "network-interfaces", default)]
    network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    vsock: Option<Vsock>,
    #[serde(default)]
    fs: Vec<Fs>,
    #[serde(default)]
    logger: Option<Logger>,
    #[serde(default)]
    metrics: Option<Metrics>,
}

/// Reads `path` into the requests that configure and start the VM.
pub fn requests_from_file(path: &Path) -> Result<Vec<ApiRequest>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    requests_from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

/// Parses a configuration document into requests.
pub fn requests_from_str(text: &str) -> Result<Vec<ApiRequest>, String> {
    let c: ConfigFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut requests = Vec::new();
    if let Some(l) = c.logger {
        requests.push(ApiRequest::PutLogger(l));
    }
    if let Some(m) = c.metrics {
        requests.push(ApiRequest::PutMetrics(m));
    }
    let boot_source = match (c.boot_source, c.snapshot_load) {
        (Some(_), Some(_)) => return Err(CONFLICT_BOOT.into()),
        (None, None) => {
            return Err(
                "missing section `boot-source` (or `snapshot-load` to restore a snapshot)".into(),
            )
        }
        (None, Some(load)) => {
            let vm_sections = [
                ("machine-config", c.machine_config.is_some()),
                ("drives", !c.drives.is_empty()),
                ("entropy", c.entropy.is_some()),
                ("network-interfaces", !c.network_interfaces.is_empty()),
                ("vsock", c.vsock.is_some()),
                ("fs", !c.fs.is_empty()),
            ];
            if let Some((name, _)) = vm_sections.iter().find(|(_, present)| *present) {
                return Err(format!(
                    "`snapshot-load` conflicts with `{name}`: {RESTORED_RESOURCES}"
                ));
            }
            load.validate().map_err(|e| format!("snapshot-load: {e}"))?;
            requests.push(ApiRequest::LoadSnapshot(load));
            return Ok(requests);
        }
        (Some(b), None) => b,
    };
    requests.push(ApiRequest::PutBootSource(boot_source));
    if let Some(m) = c.machine_config {
        requests.push(ApiRequest::PutMachineConfig(m));
    }
    requests.extend(c.drives.into_iter().map(ApiRequest::PutDrive));
    if let Some(e) = c.entropy {
        requests.push(ApiRequest::PutEntropy(e));
    }
    requests.extend(
        c.network_interfaces
            .into_iter()
            .map(|n| ApiRequest::PutNetworkInterface(Box::new(n))),
    );
    if let Some(v) = c.vsock {
        requests.push(ApiRequest::PutVsock(v));
    }
    for fs in c.fs {
        fs.validate().map_err(|e| format!("fs: {e}"))?;
        requests.push(ApiRequest::PutFs(fs));
    }
    requests.push(ApiRequest::Action(ActionType::InstanceStart));
    Ok(requests)
}

const CONFLICT_BOOT: &str = "`snapshot-load` conflicts with `boot-source`: a config file either boots a kernel or restores a snapshot";
const RESTORED_RESOURCES: &str = "a restored VM's resources come from the snapshot (its drive_overrides, network_overrides and vsock_override change backing files, taps and the vsock socket)";

/// Refuses what only makes sense with an API to finish it: a snapshot restored paused,
/// which nothing could resume.
pub fn check_without_api(requests: &[ApiRequest]) -> Result<(), String> {
    if requests
        .iter()
        .any(|r| matches!(r, ApiRequest::LoadSnapshot(p) if !p.resume_vm))
    {
        return Err("with --no-api nothing could resume a VM restored paused: set \"resume_vm\": true in snapshot-load".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_firecracker_style_document_becomes_requests_ending_in_start() {
        let doc = r#"{
            "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
            "drives": [{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false}],
            "entropy": {}
        }"#;
        let r = requests_from_str(doc).expect("valid");
        assert!(matches!(r.first(), Some(ApiRequest::PutBootSource(_))));
        assert!(r
            .iter()
            .any(|x| matches!(x, ApiRequest::PutDrive(d) if d.drive_id == "rootfs")));
        assert!(r.iter().any(|x| matches!(x, ApiRequest::PutEntropy(_))));
        assert_eq!(
            r.last(),
            Some(&ApiRequest::Action(ActionType::InstanceStart))
        );
    }

    #[test]
    fn bad_documents_give_clear_errors() {
        assert!(requests_from_str("{")
            .expect_err("truncated")
            .contains("EOF"));
        assert!(
            requests_from_str(r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#)
                .expect_err("no boot source")
                .contains("boot-source")
        );
        let unknown = r#"{"boot-source": {"kernel_image_path": "/k"}, "balloon": {}}"#;
        assert!(requests_from_str(unknown)
            .expect_err("unknown section")
            .contains("balloon"));
        assert!(requests_from_file(Path::new("/nonexistent.json"))
            .expect_err("missing")
            .contains("cannot read config file"));
    }

    #[test]
    fn snapshot_load_restores_instead_of_booting() {
        let doc = r#"{
            "logger": {"level": "Info"},
            "snapshot-load": {"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"},
                              "resume_vm": true, "vsock_override": {"uds_path": "/v.sock"}}
        }"#;
        let r = requests_from_str(doc).expect("valid");
        assert!(matches!(r.first(), Some(ApiRequest::PutLogger(_))));
        assert!(
            matches!(r.last(), Some(ApiRequest::LoadSnapshot(p)) if p.resume_vm && p.mem_file() == Ok("/m"))
        );
        assert!(!r
            .iter()
            .any(|x| matches!(x, ApiRequest::Action(_) | ApiRequest::PutBootSource(_))));
        check_without_api(&r).expect("resumed: fine without an API");
        let paused = requests_from_str(
            r#"{"snapshot-load": {"snapshot_path": "/s", "mem_file_path": "/m"}}"#,
        )
        .expect("valid");
        assert!(check_without_api(&paused)
            .expect_err("paused")
            .contains("resume_vm"));
    }

    #[test]
    fn snapshot_load_conflicts_are_named() {
        let load =
            r#""snapshot-load": {"snapshot_path": "/s", "mem_file_path": "/m", "resume_vm": true}"#;
        let with = |section: &str| {
            requests_from_str(&format!("{{{load}, {section}}}")).expect_err("conflict")
        };
        assert!(with(r#""boot-source": {"kernel_image_path": "/k"}"#)
            .contains("conflicts with `boot-source`"));
        assert!(
            with(r#""machine-config": {"vcpu_count": 1, "mem_size_mib": 128}"#)
                .contains("conflicts with `machine-config`")
        );
        assert!(with(
            r#""drives": [{"drive_id": "a", "path_on_host": "/a", "is_root_device": false}]"#
        )
        .contains("`drives`"));
        assert!(with(r#""vsock": {"guest_cid": 3, "uds_path": "/v"}"#).contains("vsock_override"));
        let bad = requests_from_str(
            r#"{"snapshot-load": {"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}}"#,
        );
        assert!(bad
            .expect_err("uffd")
            .contains("snapshot-load: mem_backend backend_type Uffd"));
        let unknown = requests_from_str(
            r#"{"snapshot-load": {"snapshot_path": "/s", "mem_file_path": "/m", "resume": true}}"#,
        );
        assert!(unknown
            .expect_err("unknown field")
            .contains("unknown field `resume`"));
    }
}
