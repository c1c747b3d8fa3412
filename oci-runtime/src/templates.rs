//! What `spec` and `features` print: the default config.json (runc's, a shell on a
//! terminal) and the features document.

use serde_json::{json, Value};

/// Capabilities the default spec keeps (runc's defaults).
const DEFAULT_CAPS: [&str; 3] = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

/// runc's default config.json, for this runtime's spec version: `sh` on a terminal as root,
/// read-only rootfs `rootfs`, the usual mounts, pid/network/ipc/uts/mount namespaces.
/// `rootless` (with the caller's uid and gid) adds a user namespace mapping them to root,
/// drops the network namespace and the device cgroup rule, and bind-mounts /sys.
pub fn default_spec(rootless: Option<(u32, u32)>) -> Value {
    let mut spec = json!({
        "ociVersion": crate::lifecycle::OCI_VERSION,
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": DEFAULT_CAPS,
                "effective": DEFAULT_CAPS,
                "permitted": DEFAULT_CAPS,
                "ambient": DEFAULT_CAPS
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "zvm",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    if let Some((uid, gid)) = rootless {
        let linux = &mut spec["linux"];
        linux["uidMappings"] = json!([{"containerID": 0, "hostID": uid, "size": 1}]);
        linux["gidMappings"] = json!([{"containerID": 0, "hostID": gid, "size": 1}]);
        if let Some(obj) = linux.as_object_mut() {
            obj.remove("resources");
        }
        linux["namespaces"] = json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "user"}]);
        if let Some(mounts) = spec["mounts"].as_array_mut() {
            for m in mounts.iter_mut() {
                if m["destination"] == "/sys" {
                    *m = json!({"destination": "/sys", "type": "none", "source": "/sys",
                                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]});
                }
                if m["destination"] == "/dev/pts" {
                    if let Some(opts) = m["options"].as_array_mut() {
                        opts.retain(|o| o != "gid=5");
                    }
                }
            }
        }
    }
    spec
}

/// JSON indented with `indent` (runc: tabs for config.json, four spaces for features).
pub fn to_indented_json<T: serde::Serialize>(
    value: &T,
    indent: &[u8],
) -> Result<String, serde_json::Error> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(indent);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut ser)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The default config.json text: [`default_spec`] through the spec type (so the fields come
/// in the spec's order, `ociVersion` first), indented with tabs as runc writes it.
pub fn default_spec_text(rootless: Option<(u32, u32)>) -> Result<String, serde_json::Error> {
    let spec: oci_spec::runtime::Spec = serde_json::from_value(default_spec(rootless))?;
    to_indented_json(&spec, b"\t")
}

/// Every Linux capability name this runtime knows (the agent applies them in the guest).
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// seccomp(2) filter flags the guest agent takes (TSYNC has nothing to do there).
const SECCOMP_FLAGS: [&str; 3] = [
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
];

/// The `features` document (runtime-spec features.md), as `runc features` prints it: what
/// this runtime accepts in config.json. The guest agent applies seccomp profiles (compiled to
/// BPF for x86_64, without libseccomp); AppArmor and SELinux are not applied (the VM is the
/// isolation boundary), the guest has cgroup v2 only, and user namespaces are not offered.
pub fn features(version: &str, commit: &str) -> Value {
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": crate::lifecycle::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "lazytime",
            "noatime", "nodev", "nodiratime", "noexec", "nolazytime", "norelatime", "nostrictatime",
            "nosuid", "private", "rbind", "relatime", "remount", "ro", "rprivate", "rshared", "rslave",
            "runbindable", "rw", "shared", "slave", "strictatime", "suid", "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "capabilities": CAPABILITIES.to_vec(),
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": [
                    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"
                ],
                "operators": [
                    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"
                ],
                "archs": ["SCMP_ARCH_X86_64"],
                "knownFlags": SECCOMP_FLAGS,
                "supportedFlags": SECCOMP_FLAGS
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}}
        },
        "annotations": {
            "org.zvm.runtime.version": version,
            "org.zvm.runtime.commit": commit,
            "org.zvm.runtime.isolation": "micro-vm"
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_a_valid_runtime_spec_like_runcs() {
        let spec: oci_spec::runtime::Spec = serde_json::from_value(default_spec(None)).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_deref().unwrap(), &["sh"]);
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(
            spec.root().as_ref().unwrap().path(),
            std::path::Path::new("rootfs")
        );
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        crate::bundle::check_version(spec.version()).unwrap();
        assert_eq!(spec.mounts().as_ref().unwrap().len(), 7);
        let text = default_spec_text(None).unwrap();
        assert!(text.starts_with("{\n\t\"ociVersion\": \"1."), "{text}");
        // Capabilities are sets in the spec type, so compare as specs.
        assert_eq!(
            serde_json::from_str::<oci_spec::runtime::Spec>(&text).unwrap(),
            spec
        );
    }

    #[test]
    fn rootless_spec_maps_the_user_and_has_no_network_namespace() {
        let v = default_spec(Some((1000, 1001)));
        let spec: oci_spec::runtime::Spec = serde_json::from_value(v).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let uid = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!(
            (uid.host_id(), uid.container_id(), uid.size()),
            (1000, 0, 1)
        );
        assert_eq!(linux.gid_mappings().as_ref().unwrap()[0].host_id(), 1001);
        let ns: Vec<String> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| format!("{:?}", n.typ()).to_lowercase())
            .collect();
        assert!(
            ns.contains(&"user".to_string()) && !ns.contains(&"network".to_string()),
            "{ns:?}"
        );
        assert!(linux.resources().is_none());
    }

    #[test]
    fn features_parse_as_the_spec_features_type() {
        let v = features("0.1.0", "abc");
        let f: oci_spec::runtime::Features = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(f.oci_version_min(), "1.0.0");
        assert_eq!(f.hooks().as_ref().unwrap().len(), 6);
        assert_eq!(v["annotations"]["org.zvm.runtime.commit"], "abc");
        let seccomp = f.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
        assert_eq!(seccomp.enabled(), &Some(true));
        assert_eq!(
            seccomp.archs().as_ref().unwrap(),
            &[oci_spec::runtime::Arch::ScmpArchX86_64]
        );
    }
}
