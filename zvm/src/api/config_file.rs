//! `--config-file`: Firecracker's one-document VM description, turned into the same API
//! requests a client would send, followed by `InstanceStart`.

use api_server::model::{ActionType, BootSource, Drive, EntropyDevice, Logger, MachineConfig, Metrics, NetworkInterface, Vsock};
use api_server::ApiRequest;
use serde::Deserialize;
use std::path::Path;

/// Firecracker's configuration file layout (the sections zvm knows; others are refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(rename = "boot-source")]
    boot_source: BootSource,
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
    logger: Option<Logger>,
    #[serde(default)]
    metrics: Option<Metrics>,
}

/// Reads `path` into the requests that configure and start the VM.
pub fn requests_from_file(path: &Path) -> Result<Vec<ApiRequest>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
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
    requests.push(ApiRequest::PutBootSource(c.boot_source));
    if let Some(m) = c.machine_config {
        requests.push(ApiRequest::PutMachineConfig(m));
    }
    requests.extend(c.drives.into_iter().map(ApiRequest::PutDrive));
    if let Some(e) = c.entropy {
        requests.push(ApiRequest::PutEntropy(e));
    }
    requests.extend(c.network_interfaces.into_iter().map(ApiRequest::PutNetworkInterface));
    if let Some(v) = c.vsock {
        requests.push(ApiRequest::PutVsock(v));
    }
    requests.push(ApiRequest::Action(ActionType::InstanceStart));
    Ok(requests)
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
        assert!(r.iter().any(|x| matches!(x, ApiRequest::PutDrive(d) if d.drive_id == "rootfs")));
        assert!(r.iter().any(|x| matches!(x, ApiRequest::PutEntropy(_))));
        assert_eq!(r.last(), Some(&ApiRequest::Action(ActionType::InstanceStart)));
    }

    #[test]
    fn bad_documents_give_clear_errors() {
        assert!(requests_from_str("{").expect_err("truncated").contains("EOF"));
        assert!(requests_from_str(r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#).expect_err("no boot source").contains("boot-source"));
        let unknown = r#"{"boot-source": {"kernel_image_path": "/k"}, "balloon": {}}"#;
        assert!(requests_from_str(unknown).expect_err("unknown section").contains("balloon"));
        assert!(requests_from_file(Path::new("/nonexistent.json")).expect_err("missing").contains("cannot read config file"));
    }
}
