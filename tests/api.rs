//! `zvm --api-sock`: Firecracker's REST API served by a real zvm process, first without a
//! guest, then driving a Linux boot from configuration to exit.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vmm::resources::DEFAULT_BOOT_ARGS;
use zvm_integration_tests::api_client::{request, wait_for_socket};
use zvm_integration_tests::{guest_kernel, scratch_dir, test_initramfs, zvm_binary};

struct ZvmProcess {
    child: Child,
    sock: PathBuf,
}

impl ZvmProcess {
    fn start(name: &str) -> ZvmProcess {
        let sock = scratch_dir().join(format!("{name}.sock"));
        let child = Command::new(zvm_binary())
            .args(["--api-sock", sock.to_str().expect("utf8"), "--id", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn zvm");
        wait_for_socket(&sock, Duration::from_secs(10));
        ZvmProcess { child, sock }
    }

    fn call(&self, method: &str, uri: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let (status, body) = request(&self.sock, method, uri, body);
        let json = if body.trim().is_empty() { serde_json::Value::Null } else { serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)) };
        (status, json)
    }
}

impl Drop for ZvmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn api_configures_a_vm_and_refuses_bad_requests() {
    let zvm = ZvmProcess::start("api-config");
    let (status, info) = zvm.call("GET", "/", None);
    assert_eq!(status, 200);
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["id"], "api-config");
    assert_eq!(info["app_name"], "zvm");
    assert_eq!(zvm.call("GET", "/version", None).0, 200);

    assert_eq!(zvm.call("PUT", "/machine-config", Some(r#"{"vcpu_count": 2, "mem_size_mib": 256}"#)).0, 204);
    assert_eq!(zvm.call("PATCH", "/machine-config", Some(r#"{"mem_size_mib": 512}"#)).0, 204);
    let (status, mc) = zvm.call("GET", "/machine-config", None);
    assert_eq!((status, mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()), (200, Some(2), Some(512)));

    let (status, fault) = zvm.call("PUT", "/boot-source", Some(r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#));
    assert_eq!(status, 400);
    assert!(fault["fault_message"].as_str().unwrap_or("").contains("cannot be read"), "{fault}");
    let (status, fault) = zvm.call("PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#));
    assert_eq!(status, 400, "no boot source yet");
    assert!(fault["fault_message"].as_str().unwrap_or("").contains("boot source"), "{fault}");
    let (status, fault) = zvm.call("PUT", "/machine-config", Some(r#"{"vcpu_count": 1, "mem_size_mib": 128, "bogus": 1}"#));
    assert_eq!(status, 400);
    assert!(fault["fault_message"].as_str().unwrap_or("").contains("bogus"), "{fault}");
    assert_eq!(zvm.call("PUT", "/machine-config", Some(r#"{"vcpu_count": 1, "mem_size_mib": "#)).0, 400, "truncated JSON");
    assert_eq!(zvm.call("PUT", "/machine-config", Some(r#"{"vcpu_count": 1, "mem_size_mib": 128, "smt": true}"#)).0, 400);
    assert_eq!(zvm.call("PUT", "/network-interfaces/eth0", Some(r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01"}"#)).0, 204);
    assert_eq!(zvm.call("PUT", "/network-interfaces/eth1", Some(r#"{"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "not-a-mac"}"#)).0, 400);
    let vsock = serde_json::json!({"guest_cid": 3, "uds_path": scratch_dir().join("api-config.vsock")}).to_string();
    assert_eq!(zvm.call("PUT", "/vsock", Some(&vsock)).0, 204);
    assert_eq!(zvm.call("PUT", "/vsock", Some(r#"{"guest_cid": 2, "uds_path": "/tmp/x.sock"}"#)).0, 400, "CID 2 is the host");
    assert_eq!(zvm.call("GET", "/nowhere", None).0, 404);
    assert_eq!(zvm.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0, 400, "nothing to pause before start");

    let disk = scratch_dir().join("api-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let drive = format!(r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": true}}"#, disk.display());
    assert_eq!(zvm.call("PUT", "/drives/data", Some(&drive)).0, 204);
    assert_eq!(zvm.call("PUT", "/drives/other", Some(&drive)).0, 400, "path and body ids differ");
    assert_eq!(zvm.call("PUT", "/entropy", Some("{}")).0, 204);
    let (status, config) = zvm.call("GET", "/vm/config", None);
    assert_eq!(status, 200);
    assert_eq!(config["drives"][0]["drive_id"], "data");
    assert_eq!(config["machine-config"]["mem_size_mib"], 512);
    assert!(config.get("entropy").is_some(), "{config}");
    assert_eq!(config["network-interfaces"][0]["host_dev_name"], "tap0");
    assert_eq!(config["vsock"]["guest_cid"], 3);
    // Still serving after all of that.
    assert_eq!(zvm.call("GET", "/", None).0, 200);
}

#[test]
fn api_drives_a_linux_boot_with_pause_and_resume() {
    let mut zvm = ZvmProcess::start("api-boot");
    let metrics = scratch_dir().join("api-boot.metrics");
    let _ = std::fs::remove_file(&metrics);
    let boot = serde_json::json!({
        "kernel_image_path": guest_kernel(),
        "initrd_path": test_initramfs(),
        "boot_args": format!("{DEFAULT_BOOT_ARGS} zvm.mode=marker"),
    });
    assert_eq!(zvm.call("PUT", "/boot-source", Some(&boot.to_string())).0, 204);
    assert_eq!(zvm.call("PUT", "/machine-config", Some(r#"{"vcpu_count": 1, "mem_size_mib": 256}"#)).0, 204);
    let metrics_body = serde_json::json!({"metrics_path": metrics}).to_string();
    assert_eq!(zvm.call("PUT", "/metrics", Some(&metrics_body)).0, 204);
    assert_eq!(zvm.call("PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#)).0, 204);
    assert_eq!(zvm.call("GET", "/", None).1["state"], "Running");
    assert_eq!(zvm.call("PUT", "/boot-source", Some(&boot.to_string())).0, 400, "no reconfiguration after start");
    assert_eq!(zvm.call("PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#)).0, 400, "only one start");

    assert_eq!(zvm.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0, 204);
    assert_eq!(zvm.call("GET", "/", None).1["state"], "Paused");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(zvm.call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0, 204);
    assert_eq!(zvm.call("GET", "/", None).1["state"], "Running");
    assert_eq!(zvm.call("PUT", "/actions", Some(r#"{"action_type": "FlushMetrics"}"#)).0, 204);

    // The guest boots, reaches userspace and reboots; zvm then exits 0.
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = zvm.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the API-started guest did not finish");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut console = String::new();
    let mut errors = String::new();
    if let Some(mut out) = zvm.child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut console);
    }
    if let Some(mut err) = zvm.child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut errors);
    }
    assert!(console.contains("zvm-guest: userspace reached"), "{errors}\n{console}");
    assert!(errors.contains("zvm: guest rebooted; VM ended"), "{errors}");
    assert_eq!(status.code(), Some(0), "{errors}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .expect("metrics written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(lines.len() >= 2, "FlushMetrics and the final flush: {lines:?}");
    assert!(lines[0]["api_server"]["requests"].as_u64().unwrap_or(0) >= 5);
    assert!(lines.last().map(|l| l["vmm"]["boot_time_us"].as_u64().is_some()).unwrap_or(false), "{lines:?}");
    assert!(!zvm.sock.exists(), "the API socket is removed when zvm exits");
}
