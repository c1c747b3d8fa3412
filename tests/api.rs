//! `zvm --api-sock`: Firecracker's REST API served by a real zvm process without a guest
//! (configuration, logger, the `zvm api` client). zvm hands API mode to the lean zvm-vmm
//! beside it: the process serving the API is zvm-vmm. The API driving a Linux guest
//! through start, pause, snapshot, resume, metrics and the power button is checked on
//! the snapshot test's boot (snapshot_linux.rs), so the suite boots one kernel for both.

use std::path::Path;
use std::process::Command;
use zvm_integration_tests::{scratch_dir, zvm_binary, LiveZvm};

/// Asserts that a refusal's `fault_message` contains `needle` (the fault shown if not).
fn assert_fault_mentions(fault: &serde_json::Value, needle: &str) {
    let message = fault["fault_message"].as_str().unwrap_or("");
    assert!(message.contains(needle), "no {needle:?} in {fault}");
}

/// `zvm --api-sock SCRATCH/NAME.sock --id NAME`, once its socket answers.
fn api_zvm(name: &str) -> LiveZvm {
    LiveZvm::api(&scratch_dir().join(format!("{name}.sock")), name)
}

#[test]
fn api_configures_a_vm_and_refuses_bad_requests() {
    let zvm = api_zvm("api-config");
    let (status, info) = zvm.call_text("GET", "/", None);
    assert_eq!(status, 200);
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["id"], "api-config");
    assert_eq!(info["app_name"], "zvm");
    assert!(zvm.exe().ends_with("zvm-vmm"), "{}", zvm.exe().display());
    assert_eq!(zvm.call_text("GET", "/version", None).0, 200);

    assert_eq!(
        zvm.call_text(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 2, "mem_size_mib": 256}"#)
        )
        .0,
        204
    );
    assert_eq!(
        zvm.call_text("PATCH", "/machine-config", Some(r#"{"mem_size_mib": 512}"#))
            .0,
        204
    );
    let (status, mc) = zvm.call_text("GET", "/machine-config", None);
    assert_eq!(
        (
            status,
            mc["vcpu_count"].as_u64(),
            mc["mem_size_mib"].as_u64()
        ),
        (200, Some(2), Some(512))
    );

    let (status, fault) = zvm.call_text(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#),
    );
    assert_eq!(status, 400);
    assert_fault_mentions(&fault, "cannot be read");
    let (status, fault) = zvm.call_text(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 400, "no boot source yet");
    assert_fault_mentions(&fault, "boot source");
    let (status, fault) = zvm.call_text(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 128, "bogus": 1}"#),
    );
    assert_eq!(status, 400);
    assert_fault_mentions(&fault, "bogus");
    assert_eq!(
        zvm.call_text(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": "#)
        )
        .0,
        400,
        "truncated JSON"
    );
    assert_eq!(
        zvm.call_text(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 128, "smt": true}"#)
        )
        .0,
        400
    );
    assert_eq!(
        zvm.call_text(
            "PUT",
            "/network-interfaces/eth0",
            Some(
                r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01"}"#
            )
        )
        .0,
        204
    );
    assert_eq!(
        zvm.call_text(
            "PUT",
            "/network-interfaces/eth1",
            Some(r#"{"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "not-a-mac"}"#)
        )
        .0,
        400
    );
    let vsock =
        serde_json::json!({"guest_cid": 3, "uds_path": scratch_dir().join("api-config.vsock")})
            .to_string();
    assert_eq!(zvm.call_text("PUT", "/vsock", Some(&vsock)).0, 204);
    assert_eq!(
        zvm.call_text(
            "PUT",
            "/vsock",
            Some(r#"{"guest_cid": 2, "uds_path": "/tmp/x.sock"}"#)
        )
        .0,
        400,
        "CID 2 is the host"
    );
    assert_eq!(zvm.call_text("GET", "/nowhere", None).0, 404);
    assert_eq!(
        zvm.call_text("PATCH", "/vm", Some(r#"{"state": "Paused"}"#))
            .0,
        400,
        "nothing to pause before start"
    );
    assert_eq!(
        zvm.call_text(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#)
        )
        .0,
        400,
        "no VM to send keys to yet"
    );
    let (status, fault) = zvm.call_text("PUT", "/actions", Some(r#"{"action_type": "Shutdown"}"#));
    assert_eq!(status, 400, "no VM to shut down yet");
    assert_fault_mentions(&fault, "InstanceStart");

    let disk = scratch_dir().join("api-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let drive = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": true}}"#,
        disk.display()
    );
    assert_eq!(zvm.call_text("PUT", "/drives/data", Some(&drive)).0, 204);
    assert_eq!(
        zvm.call_text("PUT", "/drives/other", Some(&drive)).0,
        400,
        "path and body ids differ"
    );
    assert_eq!(zvm.call_text("PUT", "/entropy", Some("{}")).0, 204);
    let (status, config) = zvm.call_text("GET", "/vm/config", None);
    assert_eq!(status, 200);
    assert_eq!(config["drives"][0]["drive_id"], "data");
    assert_eq!(config["machine-config"]["mem_size_mib"], 512);
    assert!(config.get("entropy").is_some(), "{config}");
    assert_eq!(config["network-interfaces"][0]["host_dev_name"], "tap0");
    assert_eq!(config["vsock"]["guest_cid"], 3);
    // Still serving after all of that.
    assert_eq!(zvm.call_text("GET", "/", None).0, 200);

    // Metrics count every request, those the router refuses (bad JSON, an unknown path,
    // a Shutdown timeout over an hour) as well as those the VMM refuses.
    let metrics = scratch_dir().join("api-config.metrics");
    let _ = std::fs::remove_file(&metrics);
    let body = serde_json::json!({ "metrics_path": metrics }).to_string();
    assert_eq!(zvm.call_text("PUT", "/metrics", Some(&body)).0, 204);
    let flush = Some(r#"{"action_type": "FlushMetrics"}"#);
    assert_eq!(zvm.call_text("PUT", "/actions", flush).0, 204);
    for (method, uri, body) in [
        ("PUT", "/actions", Some("{not json")),
        ("GET", "/no-such-resource", None),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "Shutdown", "timeout_ms": 3600001}"#),
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#),
        ),
    ] {
        let status = zvm.call_text(method, uri, body).0;
        assert!((400..500).contains(&status), "{method} {uri}: {status}");
    }
    assert_eq!(zvm.call_text("PUT", "/actions", flush).0, 204);
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    let last: serde_json::Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("a JSON metrics line");
    assert_eq!(
        (
            &last["api_server"]["requests"],
            &last["api_server"]["refused"]
        ),
        (&serde_json::json!(5), &serde_json::json!(4)),
        "four refused requests and the flush since the last line: {text}"
    );
}

#[test]
fn logger_moves_zvm_log_to_a_file_with_level_and_origin() {
    let zvm = api_zvm("api-logger");
    let log = scratch_dir().join("api-logger.log");
    let _ = std::fs::remove_file(&log);
    let body = serde_json::json!({"log_path": log, "level": "Debug", "show_level": true, "show_log_origin": true}).to_string();
    assert_eq!(zvm.call_text("PUT", "/logger", Some(&body)).0, 204);
    assert_eq!(zvm.call_text("GET", "/machine-config", None).0, 200);
    let text = std::fs::read_to_string(&log).expect("log file written");
    let line = text
        .lines()
        .find(|l| l.contains("API request") && l.contains("GetMachineConfig"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.starts_with("DEBUG "), "the level is shown: {line}");
    assert!(line.contains("routes.rs:"), "the origin is shown: {line}");

    let body = serde_json::json!({"level": "Warning", "show_level": false}).to_string();
    assert_eq!(zvm.call_text("PUT", "/logger", Some(&body)).0, 204);
    let before = std::fs::read_to_string(&log).expect("log").len();
    assert_eq!(zvm.call_text("GET", "/machine-config", None).0, 200);
    assert_eq!(
        std::fs::read_to_string(&log).expect("log").len(),
        before,
        "debug lines are filtered out now"
    );

    let (status, fault) = zvm.call_text(
        "PUT",
        "/logger",
        Some(r#"{"log_path": "/nonexistent/dir/zvm.log"}"#),
    );
    assert_eq!(status, 400);
    assert_fault_mentions(&fault, "/nonexistent/dir/zvm.log");
    assert_eq!(
        zvm.call_text("PUT", "/logger", Some(r#"{"level": "Loud"}"#))
            .0,
        400,
        "unknown level"
    );
    assert_eq!(
        zvm.call_text("PUT", "/logger", Some(r#"{"module": "a b"}"#))
            .0,
        400,
        "not a module path"
    );
    assert_eq!(
        zvm.call_text(
            "PUT",
            "/logger",
            Some(r#"{"module": "api_server", "level": "Debug"}"#)
        )
        .0,
        204
    );
    assert_eq!(zvm.call_text("GET", "/", None).0, 200, "still serving");
}

#[test]
fn zvm_api_client_prints_status_and_body_and_fails_on_errors() {
    let zvm = api_zvm("api-client");
    let sock = zvm.sock.as_deref().and_then(Path::to_str).expect("utf8");
    let run = |args: &[&str]| {
        Command::new(zvm_binary())
            .arg("api")
            .arg(sock)
            .args(args)
            .output()
            .expect("run zvm api")
    };
    let out = run(&["GET", "/"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 200 OK"));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the body is JSON");
    assert_eq!(info["state"], "Not started");

    let out = run(&[
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 204 No Content"));
    assert!(out.stdout.is_empty(), "no body");
    assert_eq!(
        zvm.call_text("GET", "/machine-config", None).1["vcpu_count"],
        2,
        "the request took effect"
    );

    let out = run(&["PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#]);
    assert_eq!(out.status.code(), Some(1), "a 400 answer");
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 400"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("InstanceStart"),
        "the fault says what to do first"
    );

    let out = Command::new(zvm_binary())
        .args(["api", "/nonexistent/zvm.sock", "GET", "/"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}
