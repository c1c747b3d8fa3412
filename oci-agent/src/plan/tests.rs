//! Tests of the whole-spec translation.

use super::*;

fn spec(json: &str) -> Spec {
    serde_json::from_str(json).unwrap()
}

/// A spec in the shape of `runc spec`, with overrides merged in.
fn base_spec(extra: serde_json::Value) -> Spec {
    let mut v = serde_json::to_value(Spec::default()).unwrap();
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        // The default spec names a hostname; tests without a UTS namespace must not.
        obj.remove("hostname");
        for (k, val) in extra {
            obj.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).unwrap()
}

#[test]
fn default_spec_plan() {
    let plan = plan_container(&Spec::default(), Path::new("/run/zvm/rootfs"), false).unwrap();
    assert_eq!(plan.rootfs, Path::new("/run/zvm/rootfs"));
    let ns = &plan.namespaces;
    for flag in [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWNET,
    ] {
        assert_ne!(ns.clone_flags & flag, 0, "{flag:#x}");
    }
    // The cgroup namespace is unshared after joining the cgroup, not at clone time.
    assert_eq!(ns.clone_flags & libc::CLONE_NEWCGROUP, 0);
    assert!(ns.new_cgroup);
    // /dev is a tmpfs in the default spec: default devices and symlinks are created.
    assert!(plan.dev_symlinks);
    let names: Vec<_> = plan
        .devices
        .iter()
        .map(|d| d.path.display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/random",
            "/dev/urandom",
            "/dev/tty"
        ]
    );
    assert!(plan.masked_paths.contains(&PathBuf::from("/proc/kcore")));
    assert!(plan.readonly_paths.contains(&PathBuf::from("/proc/sys")));
    assert_eq!(plan.cgroup.path, Path::new(cgroup::DEFAULT_CGROUP));
    assert_eq!(plan.process.args.len(), 1);
    assert!(plan
        .mounts
        .iter()
        .any(|m| m.fstype.as_deref() == Some("proc")));
}

#[test]
fn hostname_readonly_devices_sysctl_and_cgroup() {
    let s = base_spec(serde_json::json!({
        "hostname": "box",
        "root": {"path": "rootfs", "readonly": true},
        "linux": {
            "namespaces": [{"type": "mount"}, {"type": "uts"}, {"type": "network"},
                           {"type": "ipc", "path": "/proc/1/ns/ipc"}],
            "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438},
                        {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "uid": 7}],
            "sysctl": {"net.ipv4.ip_forward": "1", "kernel.msgmax": "8192"},
            "cgroupsPath": "/mine",
            "resources": {"pids": {"limit": 10}, "blockIO": {"weight": 10}},
            "rootfsPropagation": "rslave",
            "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}
        }
    }));
    let plan = plan_container(&s, Path::new("/r"), true).unwrap();
    assert!(plan.readonly_root);
    assert!(plan.process.terminal);
    assert_eq!(plan.hostname.as_deref(), Some("box"));
    assert_eq!(
        plan.namespaces.clone_flags,
        libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWNET
    );
    assert_eq!(
        plan.namespaces.join,
        vec![(libc::CLONE_NEWIPC, PathBuf::from("/proc/1/ns/ipc"))]
    );
    assert!(plan.namespaces.has(libc::CLONE_NEWIPC));
    assert!(!plan.namespaces.has(libc::CLONE_NEWPID));
    // Spec devices replace defaults of the same path.
    let null = plan
        .devices
        .iter()
        .find(|d| d.path == Path::new("/dev/null"))
        .unwrap();
    assert_eq!(null.uid, 7);
    assert_eq!(
        plan.devices
            .iter()
            .filter(|d| d.path == Path::new("/dev/null"))
            .count(),
        1
    );
    let fuse = plan
        .devices
        .iter()
        .find(|d| d.path == Path::new("/dev/fuse"))
        .unwrap();
    assert_eq!(
        (fuse.major, fuse.minor, fuse.mode, fuse.kind),
        (10, 229, 0o666, libc::S_IFCHR)
    );
    assert_eq!(
        plan.sysctl,
        vec![
            ("kernel.msgmax".into(), "8192".into()),
            ("net.ipv4.ip_forward".into(), "1".into())
        ]
    );
    assert_eq!(plan.cgroup.path, Path::new("mine"));
    assert_eq!(
        plan.cgroup.writes,
        vec![("pids.max".to_string(), "10".to_string())]
    );
    assert_eq!(plan.rootfs_propagation, Some(libc::MS_SLAVE | libc::MS_REC));
    let seccomp = plan.process.seccomp.as_ref().unwrap();
    assert!(seccomp.programs.is_empty(), "allow-all needs no filter");
    assert!(!plan.ignored.iter().any(|i| i.contains("seccomp")));
    assert!(plan
        .ignored
        .contains(&"linux.resources.blockIO".to_string()));
}

#[test]
fn bad_specs_give_clear_errors() {
    let no_process = spec(r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"}}"#);
    let cases: Vec<(Spec, &str)> = vec![
        (no_process, "no process"),
        (
            base_spec(serde_json::json!({"process": {"cwd": "/", "user": {"uid": 0, "gid": 0}}})),
            "no args",
        ),
        (
            base_spec(serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}})),
            "mount namespace is required",
        ),
        (
            base_spec(
                serde_json::json!({"linux": {"namespaces": [{"type": "mount"}, {"type": "user"}]}}),
            ),
            "user namespaces",
        ),
        (
            base_spec(
                serde_json::json!({"linux": {"namespaces": [{"type": "mount"}, {"type": "mount"}]}}),
            ),
            "twice",
        ),
        (
            base_spec(
                serde_json::json!({"hostname": "h", "linux": {"namespaces": [{"type": "mount"}]}}),
            ),
            "UTS",
        ),
        (
            base_spec(
                serde_json::json!({"linux": {"namespaces": [{"type": "mount"}],
                                                    "sysctl": {"net.core.somaxconn": "1"}}}),
            ),
            "network namespace",
        ),
        (
            base_spec(
                serde_json::json!({"linux": {"namespaces": [{"type": "mount"}],
                                                    "devices": [{"path": "/etc/x", "type": "c"}]}}),
            ),
            "not under /dev",
        ),
        (
            base_spec(
                serde_json::json!({"linux": {"namespaces": [{"type": "mount"}],
                                                    "cgroupsPath": "/../x"}}),
            ),
            "cgroupsPath",
        ),
        (
            base_spec(serde_json::json!({"mounts": [{"destination": "/x", "type": "bind"}]})),
            "no source",
        ),
        (
            base_spec(
                serde_json::json!({"linux": {"namespaces": [{"type": "mount"}],
                                                    "rootfsPropagation": "weird"}}),
            ),
            "propagation",
        ),
    ];
    for (s, want) in cases {
        let err = plan_container(&s, Path::new("/r"), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "want {want:?} in {err:?}");
    }
}
