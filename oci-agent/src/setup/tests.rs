//! The setup sequence against a recording [`Sys`] double.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::*;
use crate::plan::{plan_container, ContainerPlan};
use crate::sys::FileKind;
use crate::testsys::Recorder;

fn plan(extra: serde_json::Value) -> ContainerPlan {
    let mut v = serde_json::to_value(Spec::default()).unwrap();
    let obj = v.as_object_mut().unwrap();
    for (k, val) in extra.as_object().unwrap() {
        obj.insert(k.clone(), val.clone());
    }
    plan_container(&serde_json::from_value(v).unwrap(), Path::new("/r"), false).unwrap()
}

fn recorder() -> Recorder {
    Recorder {
        executables: vec![PathBuf::from("/bin/sh")],
        ..Default::default()
    }
}

#[test]
fn full_sequence_in_order() {
    let p = plan(serde_json::json!({
        "root": {"path": "rootfs", "readonly": true},
        "process": {"args": ["sh"], "cwd": "/home", "env": ["PATH=/usr/bin:/bin"],
                    "user": {"uid": 1000, "gid": 1000, "additionalGids": [10]},
                    "noNewPrivileges": true,
                    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                                     "permitted": ["CAP_KILL"], "inheritable": ["CAP_KILL"],
                                     "ambient": ["CAP_KILL"]},
                    "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 64, "hard": 64}]},
        "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "network"},
                                 {"type": "uts"}, {"type": "cgroup"}],
                  "sysctl": {"net.ipv4.ip_forward": "1"},
                  "maskedPaths": ["/proc/kcore", "/proc/acpi", "/nope"],
                  "readonlyPaths": ["/proc/sys"]}
    }));
    let mut r = recorder();
    r.kinds.insert("/proc/kcore".into(), FileKind::File);
    r.kinds.insert("/proc/acpi".into(), FileKind::Dir);
    r.kinds.insert("/proc/sys".into(), FileKind::Dir);
    let ctx = SetupContext {
        cgroup_procs: Some("/sys/fs/cgroup/c/cgroup.procs".into()),
        console: None,
        spare_netns: None,
    };
    let exe = setup_container(&mut r, &p, &ctx).unwrap();
    assert_eq!(exe.to_str().unwrap(), "/bin/sh");
    // Cgroup joined before its namespace is unshared; sysctl inside the new netns.
    assert!(r.pos("write /sys/fs/cgroup/c/cgroup.procs 0") < r.pos("unshare 0x2000000"));
    assert!(r.pos("lo up") < r.pos("write /proc/sys/net/ipv4/ip_forward 1"));
    assert!(!r.has("setns"));

    // With a spare network namespace (the clone made none), it is joined first and the
    // sysctl lands in it; its loopback came up when it was made.
    let mut spare = recorder();
    let spare_ctx = SetupContext {
        spare_netns: Some("/proc/self/fd/9".into()),
        ..ctx.clone()
    };
    enter_namespaces(&mut spare, &p, &spare_ctx).unwrap();
    assert!(
        spare.pos("setns /proc/self/fd/9 0x40000000")
            < spare.pos("write /proc/sys/net/ipv4/ip_forward 1")
    );
    assert!(!spare.has("lo up"));
    assert!(r.has("sethostname"));
    // Rootfs: private tree, self-bind, mounts, devices before the pivot.
    assert!(r.pos("mount - / - 0x84000") < r.pos("mount /r /r - 0x5000"));
    assert!(r.pos("mount proc /r/proc proc") < r.pos("pivot_root . ."));
    assert!(r.pos("mknod /r/dev/null 20666") < r.pos("pivot_root"));
    assert!(r.has("symlink /proc/self/fd /r/dev/fd"));
    assert!(r.pos("pivot_root") < r.pos("umount . 2"));
    // Masks after the pivot, with /dev/null for files and a read-only tmpfs for directories.
    assert!(r.pos("pivot_root") < r.pos("mount /dev/null /proc/kcore - 0x1000"));
    assert!(r.has("mount tmpfs /proc/acpi tmpfs 0x1"));
    assert!(!r.has("mount /dev/null /nope"));
    assert!(r.has("mount - /proc/sys - 0x1021"));
    // Read-only root last among the mounts, before the process settings.
    assert!(r.pos("mount - / - 0x1021") < r.pos("setrlimit"));
    // Capabilities: bounding drops and keepcaps before the user switch, capset after.
    assert!(r.has("capbset_drop 0"));
    assert!(!r.has("capbset_drop 5 "));
    assert!(!r.calls.contains(&"capbset_drop 5".to_string()));
    assert!(r.pos("capbset_drop 40") < r.pos("keepcaps true"));
    assert!(r.pos("keepcaps true") < r.pos("setgroups [10]"));
    assert!(r.pos("setgroups") < r.pos("setresgid 1000"));
    assert!(r.pos("setresgid 1000") < r.pos("setresuid 1000"));
    assert!(r.pos("setresuid 1000") < r.pos("capset 0x20 0x20 0x20"));
    assert!(r.pos("capset") < r.pos("ambient 5"));
    assert!(r.pos("no_new_privs") < r.pos("chdir /home"));
    // PATH lookup in the process's PATH, after cwd.
    assert!(r.pos("chdir /home") < r.pos("access /usr/bin/sh"));
}

#[test]
fn seccomp_goes_in_after_no_new_privs_or_else_while_still_root() {
    let profile = serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["read", "execve"], "action": "SCMP_ACT_ALLOW"},
                     {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]});
    for nnp in [true, false] {
        let p = plan(serde_json::json!({
            "root": {"path": "rootfs"},
            "hostname": "",
            "process": {"args": ["sh"], "cwd": "/srv", "user": {"uid": 1000, "gid": 1000},
                        "noNewPrivileges": nnp},
            "linux": {"namespaces": [{"type": "mount"}], "seccomp": profile.clone()}
        }));
        let mut r = recorder();
        setup_container(&mut r, &p, &SetupContext::default()).unwrap();
        let filters: Vec<_> = r
            .calls
            .iter()
            .filter(|c| c.starts_with("seccomp "))
            .collect();
        assert_eq!(filters.len(), 2, "base and kill filters: {filters:?}");
        if nnp {
            assert!(r.pos("no_new_privs") < r.pos("seccomp "));
            assert!(r.pos("seccomp ") < r.pos("chdir /srv"));
        } else {
            assert!(!r.has("no_new_privs"));
            assert!(r.pos("seccomp ") < r.pos("setresuid 1000"));
        }
    }
}

#[test]
fn pivot_root_refused_falls_back_to_move_and_chroot() {
    let p = plan(serde_json::json!({}));
    let mut r = recorder();
    r.pivot_einval = true;
    enter_rootfs(&mut r, &p).unwrap();
    assert_eq!(
        r.calls,
        [
            "chdir /r",
            "pivot_root . .",
            "mount /r / - 0x2000 -",
            "chroot .",
            "chdir /"
        ]
    );
}

#[test]
fn mknod_refused_binds_the_node() {
    let p = plan(serde_json::json!({}));
    let mut r = recorder();
    r.mknod_eperm = true;
    prepare_rootfs(&mut r, &p, &SetupContext::default()).unwrap();
    assert!(r.has("mount /dev/null /r/dev/null - 0x1000"));
}

#[test]
fn bind_mounts_and_console() {
    let p = plan(serde_json::json!({
        "mounts": [{"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "ro"]},
                   {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["bind"]}]
    }));
    let mut r = recorder();
    r.kinds.insert("/srv".into(), FileKind::Dir);
    r.kinds.insert("/etc/hosts".into(), FileKind::File);
    let ctx = SetupContext {
        cgroup_procs: None,
        console: Some("/dev/pts/3".into()),
        spare_netns: None,
    };
    prepare_rootfs(&mut r, &p, &ctx).unwrap();
    assert!(r.pos("mkdir /r/data") < r.pos("mount /srv /r/data - 0x5000"));
    assert!(r.has("mount - /r/data - 0x1021"));
    assert!(r.pos("touch /r/etc/hosts") < r.pos("mount /etc/hosts /r/etc/hosts - 0x1000"));
    assert!(r.has("mount /dev/pts/3 /r/dev/console - 0x1000"));

    let p = plan(serde_json::json!({
        "mounts": [{"destination": "/data", "type": "bind", "source": "/absent", "options": ["rbind"]}]
    }));
    let err = prepare_rootfs(&mut recorder(), &p, &ctx).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn process_errors_name_the_step() {
    let p = plan(serde_json::json!({
        "process": {"args": ["nosuch"], "cwd": "/", "user": {"uid": 0, "gid": 0}}
    }));
    let err = apply_process(&mut recorder(), &p.process)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"nosuch\" not found in $PATH"), "{err}");

    let mut r = recorder();
    r.fail_on = Some("chdir".into());
    let err = apply_process(&mut r, &p.process).unwrap_err().to_string();
    assert!(err.contains("cannot enter cwd \"/\""), "{err}");

    let mut r = recorder();
    r.fail_on = Some("mount proc".into());
    let err = prepare_rootfs(&mut r, &p, &SetupContext::default())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("mount proc on /proc:"), "{err}");
}

#[test]
fn executable_lookup() {
    let mut r = Recorder {
        executables: vec![PathBuf::from("/b/x"), PathBuf::from("./y")],
        ..Default::default()
    };
    assert_eq!(
        find_executable(&mut r, "x", "/a:/b").unwrap(),
        Path::new("/b/x")
    );
    assert_eq!(
        find_executable(&mut r, "./y", "/a").unwrap(),
        Path::new("./y")
    );
    assert!(find_executable(&mut r, "/b/z", "/b").is_err());
    assert!(find_executable(&mut r, "x", "/a").is_err());
}
