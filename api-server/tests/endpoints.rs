//! Every endpoint over a real socket: happy paths, status codes, the pre-boot / running
//! state machine of the fake controller, and the refusals (bad JSON, unknown fields, ids).

mod common;

use api_server::model::{ActionType, InstanceState, VmState};
use api_server::ApiRequest;
use common::{one_shot, TestServer};
use serde_json::json;

#[test]
fn configure_boot_pause_resume_over_one_connection() {
    let t = TestServer::start();
    let mut c = t.client();

    let info = c.request("GET", "/", None);
    assert_eq!(info.status, 200);
    assert_eq!(info.header("Content-Type"), Some("application/json"));
    assert_eq!(
        info.json(),
        json!({"id": "test-vm", "state": "Not started", "vmm_version": "0.1.0", "app_name": "zvm"})
    );

    let version = c.request("GET", "/version", None);
    assert_eq!(
        (version.status, version.json()),
        (
            200,
            json!({"firecracker_version": env!("CARGO_PKG_VERSION")})
        )
    );

    let puts: &[(&str, &str, serde_json::Value)] = &[
        (
            "PUT",
            "/boot-source",
            json!({"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"}),
        ),
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": true}),
        ),
        ("PATCH", "/machine-config", json!({"mem_size_mib": 512})),
        (
            "PUT",
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false,
                   "partuuid": "0eaa91a0-01", "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000}}}),
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
                   "rx_rate_limiter": {"ops": {"size": 100, "one_time_burst": 10, "refill_time": 100}}}),
        ),
        (
            "PUT",
            "/vsock",
            json!({"guest_cid": 3, "uds_path": "/tmp/v.sock"}),
        ),
        ("PUT", "/entropy", json!({})),
        (
            "PUT",
            "/logger",
            json!({"log_path": "/tmp/log", "level": "Debug", "show_level": true, "show_log_origin": false}),
        ),
        ("PUT", "/metrics", json!({"metrics_path": "/tmp/metrics"})),
    ];
    for (method, path, body) in puts {
        let r = c.request(method, path, Some(&body.to_string()));
        assert_eq!(r.status, 204, "{method} {path}: {}", r.body);
        assert_eq!(r.body, "", "204 has no body");
        assert_eq!(
            r.header("Content-Length"),
            None,
            "204 has no Content-Length"
        );
    }

    let machine = c.request("GET", "/machine-config", None);
    assert_eq!(machine.status, 200);
    assert_eq!(
        machine.json(),
        json!({"vcpu_count": 2, "mem_size_mib": 512, "smt": false, "track_dirty_pages": true})
    );

    let config = c.request("GET", "/vm/config", None).json();
    assert_eq!(config["boot-source"]["kernel_image_path"], "/k");
    assert_eq!(config["drives"][0]["partuuid"], "0eaa91a0-01");
    assert_eq!(
        config["network-interfaces"][0]["guest_mac"],
        "06:00:ac:10:00:02"
    );
    assert_eq!(config["vsock"]["guest_cid"], 3);
    assert_eq!(config["metrics"]["metrics_path"], "/tmp/metrics");

    // Post-boot-only operations are refused before boot.
    let early = c.request("PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(early.status, 400);
    assert!(early.fault().contains("before starting"), "{}", early.body);

    assert_eq!(
        c.request(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#)
        )
        .status,
        204
    );
    assert_eq!(c.request("GET", "/", None).json()["state"], "Running");

    // Pre-boot configuration is refused once running.
    let late = c.request(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path":"/other"}"#),
    );
    assert_eq!(late.status, 400);
    assert!(
        late.fault().contains("after starting the microVM"),
        "{}",
        late.body
    );
    assert_eq!(
        c.request(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#)
        )
        .status,
        400
    );

    for (method, path, body) in [
        (
            "PATCH",
            "/drives/rootfs",
            r#"{"drive_id":"rootfs","path_on_host":"/new.ext4"}"#,
        ),
        (
            "PATCH",
            "/network-interfaces/eth0",
            r#"{"iface_id":"eth0","tx_rate_limiter":{"bandwidth":{"size":1,"refill_time":1}}}"#,
        ),
        ("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#),
        ("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#),
        ("PATCH", "/vm", r#"{"state":"Paused"}"#),
    ] {
        let r = c.request(method, path, Some(body));
        assert_eq!(r.status, 204, "{method} {path}: {}", r.body);
    }
    assert_eq!(c.request("GET", "/", None).json()["state"], "Paused");
    assert_eq!(
        c.request("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#))
            .status,
        204
    );
    assert_eq!(c.request("GET", "/", None).json()["state"], "Running");
    assert_eq!(
        c.request("PATCH", "/drives/nope", Some(r#"{"drive_id":"nope"}"#))
            .status,
        400
    );

    drop(c);
    let vmm = t.stop();
    assert_eq!(vmm.state, InstanceState::Running);
    assert_eq!(
        vmm.config.drives[0].path_on_host, "/new.ext4",
        "PATCH /drives reached the controller"
    );
    assert!(vmm
        .log
        .contains(&ApiRequest::Action(ActionType::SendCtrlAltDel)));
    assert!(vmm.log.contains(&ApiRequest::PatchVm(VmState::Resumed)));
}

#[test]
fn malformed_json_unknown_fields_and_bad_values_are_400() {
    let t = TestServer::start();
    let mut c = t.client();
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "PUT",
            "/boot-source",
            "{\"kernel_image_path\": ",
            "EOF while parsing",
        ),
        ("PUT", "/boot-source", "", "EOF while parsing"),
        ("PUT", "/boot-source", "not json", "expected"),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path":"/k","kernel_args":"x"}"#,
            "unknown field `kernel_args`",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1}"#,
            "missing field `mem_size_mib`",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":-1,"mem_size_mib":1}"#,
            "invalid value",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":0,"mem_size_mib":1}"#,
            "vcpu_count",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":1,"cpu_template":"Z9"}"#,
            "unknown variant",
        ),
        ("PATCH", "/machine-config", "{}", "empty PATCH"),
        (
            "PUT",
            "/drives/d1",
            r#"{"drive_id":"d1","path_on_host":"/x","is_root_device":false,"rate_limiter":{"bandwidth":{"size":1}}}"#,
            "refill_time",
        ),
        (
            "PUT",
            "/drives/d1",
            r#"{"drive_id":"d1","path_on_host":"/x","is_root_device":false,"rate_limiter":{"iops":{}}}"#,
            "unknown field `iops`",
        ),
        (
            "PUT",
            "/network-interfaces/e",
            r#"{"iface_id":"e","host_dev_name":"t","guest_mac":"06:00"}"#,
            "MAC",
        ),
        (
            "PUT",
            "/vsock",
            r#"{"guest_cid":2,"uds_path":"/v"}"#,
            "guest_cid",
        ),
        ("PUT", "/logger", r#"{"level":"Loud"}"#, "unknown variant"),
        ("PUT", "/metrics", "{}", "missing field `metrics_path`"),
        (
            "PUT",
            "/actions",
            r#"{"action_type":"Reboot"}"#,
            "unknown variant `Reboot`",
        ),
        ("PATCH", "/vm", r#"{"state":"Stopped"}"#, "unknown variant"),
        (
            "PUT",
            "/entropy",
            r#"{"rate_limiter":{},"extra":true}"#,
            "unknown field `extra`",
        ),
        (
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path":"/s"}"#,
            "missing field `mem_file_path`",
        ),
        (
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_type":"Partial","snapshot_path":"/s","mem_file_path":"/m"}"#,
            "unknown variant `Partial`",
        ),
        (
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path":"/s","mem_file_path":"/m","version":"1.4.0"}"#,
            "version \"1.4.0\" is not supported",
        ),
        (
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path":"/s"}"#,
            "exactly one of mem_backend",
        ),
        (
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"Uffd","backend_path":"/u"}}"#,
            "Uffd is not supported",
        ),
        (
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path":"/s","mem_file_path":"/m","resume":true}"#,
            "unknown field `resume`",
        ),
        (
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path":"/s","mem_file_path":"/m","network_overrides":{}}"#,
            "invalid type",
        ),
    ];
    for (method, path, body, expect) in cases {
        let r = c.request(method, path, Some(body));
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.body);
        assert!(
            r.fault().contains(expect),
            "{method} {path} {body}: {:?} lacks {expect:?}",
            r.fault()
        );
    }
    // The connection survived every refusal, and none reached the controller.
    assert_eq!(c.request("GET", "/", None).status, 200);
    drop(c);
    assert_eq!(t.stop().log, vec![ApiRequest::GetInstanceInfo]);
}

#[test]
fn snapshot_load_then_create_follow_the_vm_state() {
    let t = TestServer::start();
    let mut c = t.client();
    let create =
        json!({"snapshot_type": "Full", "snapshot_path": "/s", "mem_file_path": "/m"}).to_string();
    assert_eq!(
        c.request("PUT", "/snapshot/create", Some(&create)).status,
        400,
        "nothing to snapshot yet"
    );
    let load = json!({
        "snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"},
        "track_dirty_pages": true, "resume_vm": false,
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1"}],
        "drive_overrides": [{"drive_id": "rootfs", "path_on_host": "/clone.ext4"}],
        "vsock_override": {"uds_path": "/v1.sock"}
    });
    let r = c.request("PUT", "/snapshot/load", Some(&load.to_string()));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(c.request("GET", "/", None).json()["state"], "Paused");
    assert_eq!(
        c.request("PUT", "/snapshot/create", Some(&create)).status,
        204
    );
    assert_eq!(
        c.request("PUT", "/snapshot/load", Some(&load.to_string()))
            .status,
        400,
        "one VM per process"
    );
    assert_eq!(
        c.request("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#))
            .status,
        204
    );
    assert_eq!(
        c.request("PUT", "/snapshot/create", Some(&create)).status,
        400,
        "only when paused"
    );
    drop(c);
    let vmm = t.stop();
    let loaded = vmm.log.iter().find_map(|r| match r {
        ApiRequest::LoadSnapshot(p) => Some(p.clone()),
        _ => None,
    });
    let loaded = loaded.expect("the load reached the controller");
    assert_eq!(loaded.mem_file(), Ok("/m"));
    assert!(loaded.tracks_dirty_pages());
    assert_eq!(loaded.drive_overrides[0].path_on_host, "/clone.ext4");
}

#[test]
fn path_and_body_ids_must_agree() {
    let t = TestServer::start();
    let mut c = t.client();
    let drive =
        r#"{"drive_id":"b","path_on_host":"/x","is_root_device":false,"is_read_only":true}"#;
    let r = c.request("PUT", "/drives/a", Some(drive));
    assert_eq!(r.status, 400);
    assert!(
        r.fault().contains("\"a\"") && r.fault().contains("\"b\""),
        "{}",
        r.fault()
    );
    assert_eq!(
        c.request("PATCH", "/drives/a", Some(r#"{"drive_id":"b"}"#))
            .status,
        400
    );
    assert_eq!(
        c.request(
            "PUT",
            "/network-interfaces/x",
            Some(r#"{"iface_id":"y","host_dev_name":"t"}"#)
        )
        .status,
        400
    );
    assert_eq!(
        c.request(
            "PATCH",
            "/network-interfaces/x",
            Some(r#"{"iface_id":"y"}"#)
        )
        .status,
        400
    );
    let bad_id = c.request(
        "PUT",
        "/drives/a%20b",
        Some(r#"{"drive_id":"a%20b","path_on_host":"/x","is_root_device":false}"#),
    );
    assert_eq!(bad_id.status, 400);
    assert!(bad_id.fault().contains("invalid id"), "{}", bad_id.fault());
    assert_eq!(c.request("PUT", "/drives/b", Some(drive)).status, 204);
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405() {
    let t = TestServer::start();
    let mut c = t.client();
    for path in [
        "/nope",
        "/drives",
        "/drives/a/b",
        "/vm/config/x",
        "/snapshot",
        "/snapshot/create/x",
        "/balloon",
    ] {
        let r = c.request("GET", path, None);
        assert_eq!(r.status, 404, "{path}");
        assert!(r.fault().contains(path), "{}", r.fault());
    }
    for (method, path, allow) in [
        ("PUT", "/", "GET"),
        ("PATCH", "/version", "GET"),
        ("GET", "/boot-source", "PUT"),
        ("GET", "/drives/x", "PUT, PATCH"),
        ("PUT", "/vm", "PATCH"),
        ("PATCH", "/actions", "PUT"),
        ("PUT", "/vm/config", "GET"),
        ("GET", "/snapshot/create", "PUT"),
        ("PATCH", "/snapshot/load", "PUT"),
    ] {
        let r = c.request(method, path, Some("{}"));
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("Allow"), Some(allow), "{method} {path}");
        assert!(r.fault().contains("not allowed"), "{}", r.fault());
    }
    // Methods outside GET/PUT/PATCH: 405 from the HTTP layer, then the connection closes.
    for method in ["POST", "DELETE", "HEAD"] {
        let mut c = t.client();
        c.send_raw(format!("{method} / HTTP/1.1\r\n\r\n").as_bytes());
        let r = c.read_reply();
        assert_eq!(r.status, 405, "{method}");
        assert!(r.fault().contains(method));
        assert!(c.at_eof());
    }
    assert_eq!(c.request("GET", "/", None).status, 200);
}

#[test]
fn connection_close_and_http10_are_honoured() {
    let t = TestServer::start();
    let r = one_shot(
        &t.path,
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path":"/k"}"#),
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.header("Connection"), Some("close"));

    let mut c = t.client();
    c.send_raw(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_reply().status, 200);
    assert!(c.at_eof(), "HTTP/1.0 without keep-alive closes");

    let mut c = t.client();
    c.send_raw(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read_reply().status, 200);
    assert_eq!(
        c.request("GET", "/version", None).status,
        200,
        "HTTP/1.0 keep-alive stays open"
    );
}
