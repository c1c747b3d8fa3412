//! `zvm --api-sock`: Firecracker's REST API served by a real zvm process, first without a
//! guest (configuration, logger, the `zvm api` client), then driving one Linux boot from
//! configuration through pause, resume and Ctrl-Alt-Del to exit. zvm hands API mode to
//! the lean zvm-vmm beside it: the process serving the API is zvm-vmm.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};
use vmm::resources::DEFAULT_BOOT_ARGS;
use zvm_integration_tests::api_client::{ConsoleReader, ZvmProcess};
use zvm_integration_tests::{guest_kernel, scratch_dir, test_initramfs, zvm_binary};

#[test]
fn api_configures_a_vm_and_refuses_bad_requests() {
    let zvm = ZvmProcess::start("api-config");
    let (status, info) = zvm.call("GET", "/", None);
    assert_eq!(status, 200);
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["id"], "api-config");
    assert_eq!(info["app_name"], "zvm");
    assert!(zvm.exe().ends_with("/zvm-vmm"), "{}", zvm.exe());
    assert_eq!(zvm.call("GET", "/version", None).0, 200);

    assert_eq!(
        zvm.call(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 2, "mem_size_mib": 256}"#)
        )
        .0,
        204
    );
    assert_eq!(
        zvm.call("PATCH", "/machine-config", Some(r#"{"mem_size_mib": 512}"#))
            .0,
        204
    );
    let (status, mc) = zvm.call("GET", "/machine-config", None);
    assert_eq!(
        (
            status,
            mc["vcpu_count"].as_u64(),
            mc["mem_size_mib"].as_u64()
        ),
        (200, Some(2), Some(512))
    );

    let (status, fault) = zvm.call(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#),
    );
    assert_eq!(status, 400);
    assert!(
        fault["fault_message"]
            .as_str()
            .unwrap_or("")
            .contains("cannot be read"),
        "{fault}"
    );
    let (status, fault) = zvm.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 400, "no boot source yet");
    assert!(
        fault["fault_message"]
            .as_str()
            .unwrap_or("")
            .contains("boot source"),
        "{fault}"
    );
    let (status, fault) = zvm.call(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 128, "bogus": 1}"#),
    );
    assert_eq!(status, 400);
    assert!(
        fault["fault_message"]
            .as_str()
            .unwrap_or("")
            .contains("bogus"),
        "{fault}"
    );
    assert_eq!(
        zvm.call(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": "#)
        )
        .0,
        400,
        "truncated JSON"
    );
    assert_eq!(
        zvm.call(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 128, "smt": true}"#)
        )
        .0,
        400
    );
    assert_eq!(
        zvm.call(
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
        zvm.call(
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
    assert_eq!(zvm.call("PUT", "/vsock", Some(&vsock)).0, 204);
    assert_eq!(
        zvm.call(
            "PUT",
            "/vsock",
            Some(r#"{"guest_cid": 2, "uds_path": "/tmp/x.sock"}"#)
        )
        .0,
        400,
        "CID 2 is the host"
    );
    assert_eq!(zvm.call("GET", "/nowhere", None).0, 404);
    assert_eq!(
        zvm.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        400,
        "nothing to pause before start"
    );

    let disk = scratch_dir().join("api-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let drive = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": true}}"#,
        disk.display()
    );
    assert_eq!(zvm.call("PUT", "/drives/data", Some(&drive)).0, 204);
    assert_eq!(
        zvm.call("PUT", "/drives/other", Some(&drive)).0,
        400,
        "path and body ids differ"
    );
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
fn logger_moves_zvm_log_to_a_file_with_level_and_origin() {
    let zvm = ZvmProcess::start("api-logger");
    let log = scratch_dir().join("api-logger.log");
    let _ = std::fs::remove_file(&log);
    let body = serde_json::json!({"log_path": log, "level": "Debug", "show_level": true, "show_log_origin": true}).to_string();
    assert_eq!(zvm.call("PUT", "/logger", Some(&body)).0, 204);
    assert_eq!(zvm.call("GET", "/machine-config", None).0, 200);
    let text = std::fs::read_to_string(&log).expect("log file written");
    let line = text
        .lines()
        .find(|l| l.contains("API request") && l.contains("GetMachineConfig"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.starts_with("DEBUG "), "the level is shown: {line}");
    assert!(line.contains("routes.rs:"), "the origin is shown: {line}");

    let body = serde_json::json!({"level": "Warning", "show_level": false}).to_string();
    assert_eq!(zvm.call("PUT", "/logger", Some(&body)).0, 204);
    let before = std::fs::read_to_string(&log).expect("log").len();
    assert_eq!(zvm.call("GET", "/machine-config", None).0, 200);
    assert_eq!(
        std::fs::read_to_string(&log).expect("log").len(),
        before,
        "debug lines are filtered out now"
    );

    let (status, fault) = zvm.call(
        "PUT",
        "/logger",
        Some(r#"{"log_path": "/nonexistent/dir/zvm.log"}"#),
    );
    assert_eq!(status, 400);
    assert!(
        fault["fault_message"]
            .as_str()
            .unwrap_or("")
            .contains("/nonexistent/dir/zvm.log"),
        "{fault}"
    );
    assert_eq!(
        zvm.call("PUT", "/logger", Some(r#"{"level": "Loud"}"#)).0,
        400,
        "unknown level"
    );
    assert_eq!(
        zvm.call("PUT", "/logger", Some(r#"{"module": "a b"}"#)).0,
        400,
        "not a module path"
    );
    assert_eq!(
        zvm.call(
            "PUT",
            "/logger",
            Some(r#"{"module": "api_server", "level": "Debug"}"#)
        )
        .0,
        204
    );
    assert_eq!(zvm.call("GET", "/", None).0, 200, "still serving");
}

#[test]
fn zvm_api_client_prints_status_and_body_and_fails_on_errors() {
    let zvm = ZvmProcess::start("api-client");
    let sock = zvm.sock.to_str().expect("utf8");
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
        zvm.call("GET", "/machine-config", None).1["vcpu_count"],
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

fn sum(lines: &[serde_json::Value], group: &str, counter: &str) -> u64 {
    lines
        .iter()
        .filter_map(|l| l[group][counter].as_u64())
        .sum()
}

#[test]
fn api_drives_a_linux_boot_through_pause_resume_and_the_power_button() {
    let mut zvm = ZvmProcess::start("api-boot");
    let console = ConsoleReader::start(&mut zvm.child);
    let metrics = scratch_dir().join("api-boot.metrics");
    let _ = std::fs::remove_file(&metrics);
    let boot = serde_json::json!({
        "kernel_image_path": guest_kernel(),
        "initrd_path": test_initramfs(),
        "boot_args": format!("{DEFAULT_BOOT_ARGS} zvm.mode=wait"),
    });
    assert_eq!(
        zvm.call("PUT", "/boot-source", Some(&boot.to_string())).0,
        204
    );
    assert_eq!(
        zvm.call(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 256}"#)
        )
        .0,
        204
    );
    let disk = scratch_dir().join("api-boot-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let drive = serde_json::json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false, "is_read_only": true});
    assert_eq!(
        zvm.call("PUT", "/drives/data", Some(&drive.to_string())).0,
        204
    );
    let metrics_body = serde_json::json!({"metrics_path": metrics}).to_string();
    assert_eq!(zvm.call("PUT", "/metrics", Some(&metrics_body)).0, 204);
    let (status, fault) = zvm.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    );
    assert_eq!(status, 400, "no VM to send keys to yet");
    assert_eq!(
        zvm.call("PUT", "/actions", Some(r#"{"action_type": "Shutdown"}"#))
            .0,
        400,
        "no VM to shut down yet"
    );
    assert!(
        fault["fault_message"]
            .as_str()
            .unwrap_or("")
            .contains("InstanceStart"),
        "{fault}"
    );
    assert_eq!(
        zvm.call(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#)
        )
        .0,
        204
    );
    assert_eq!(zvm.call("GET", "/", None).1["state"], "Running");
    assert!(
        zvm.exe().ends_with("/zvm-vmm"),
        "the VM's process is the lean VMM: {}",
        zvm.exe()
    );
    assert_eq!(
        zvm.call("PUT", "/boot-source", Some(&boot.to_string())).0,
        400,
        "no reconfiguration after start"
    );
    assert_eq!(
        zvm.call(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#)
        )
        .0,
        400,
        "only one start"
    );

    // The guest's init reaches userspace and waits for Ctrl-Alt-Del.
    console.wait_for(
        "zvm-guest: waiting for ctrl-alt-del",
        &mut zvm,
        Duration::from_secs(900),
    );
    assert_eq!(
        zvm.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    assert_eq!(zvm.call("GET", "/", None).1["state"], "Paused");
    let (status, fault) = zvm.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendPowerButton"}"#),
    );
    assert_eq!(status, 400, "a paused guest cannot answer the button");
    assert!(
        fault["fault_message"]
            .as_str()
            .unwrap_or("")
            .contains("paused"),
        "{fault}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        zvm.call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0,
        204
    );
    assert_eq!(zvm.call("GET", "/", None).1["state"], "Running");
    assert_eq!(
        zvm.call(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "FlushMetrics"}"#)
        )
        .0,
        204
    );

    // A graceful shutdown: the ACPI power button makes the kernel signal init, which
    // powers off through ACPI well within the grace period.
    assert_eq!(
        zvm.call(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "Shutdown", "timeout_ms": 3600001}"#)
        )
        .0,
        400,
        "a grace period over an hour"
    );
    assert_eq!(
        zvm.call(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "Shutdown", "timeout_ms": 600000}"#)
        )
        .0,
        204
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = zvm.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the guest did not power off after the power button:\n{}",
            console.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut errors = String::new();
    if let Some(mut err) = zvm.child.stderr.take() {
        let _ = err.read_to_string(&mut errors);
    }
    std::thread::sleep(Duration::from_millis(200));
    let text = console.text();
    assert!(
        text.contains("i8042.dumbkbd"),
        "zvm added the i8042 switches:\n{text}"
    );
    assert!(
        text.contains("zvm-guest: power button, powering off"),
        "{errors}\n{text}"
    );
    assert!(errors.contains("zvm: guest powered off"), "{errors}");
    assert_eq!(status.code(), Some(0), "{errors}");

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .expect("metrics written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(
        lines.len() >= 2,
        "FlushMetrics and the final flush: {lines:?}"
    );
    let booted = |l: &&serde_json::Value| {
        l["vmm"]["state"] == "Running" && l["vmm"]["boot_time_us"].as_u64().is_some()
    };
    assert!(
        lines.iter().any(|l| booted(&l)),
        "a line while running shows the guest's boot time: {lines:?}"
    );
    // Counters are increases since the previous line, so they add up over the lines.
    assert!(sum(&lines, "api_server", "requests") >= 14, "{lines:?}");
    assert!(sum(&lines, "api_server", "refused") >= 3, "{lines:?}");
    assert!(
        sum(&lines, "vcpu", "exit_io_out") > 0,
        "serial output is port I/O: {lines:?}"
    );
    assert!(
        sum(&lines, "vcpu", "exit_mmio_write") > 0,
        "virtio and the boot timer are MMIO: {lines:?}"
    );
    // KVM's own counters are totals: they only grow from line to line.
    let kvm = |l: &serde_json::Value, name: &str| l["kvm"][name].as_u64().unwrap_or(0);
    if lines
        .iter()
        .all(|l| l["kvm"].as_object().is_some_and(|m| m.is_empty()))
    {
        println!("KVM's counters not checked: this kernel has no KVM_GET_STATS_FD");
    } else {
        let last = lines.last().expect("a line");
        for name in ["exits", "mmio_exits", "irq_injections"] {
            assert!(kvm(last, name) > 0, "{name}: {last}");
        }
        assert!(
            lines
                .windows(2)
                .all(|w| kvm(&w[1], "exits") >= kvm(&w[0], "exits")),
            "{lines:?}"
        );
    }
    assert!(
        sum(&lines, "block_data", "read_bytes") > 0,
        "the kernel read the partition table: {lines:?}"
    );
    assert_eq!(
        sum(&lines, "block_data", "write_count"),
        0,
        "a read-only disk"
    );
    assert!(
        !zvm.sock.exists(),
        "the API socket is removed when zvm exits"
    );
}
