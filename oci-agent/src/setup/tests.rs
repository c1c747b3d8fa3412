//! The setup sequence against a recording [`Sys`] double.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::*;
use crate::plan::{plan_container, ContainerPlan};
use crate::sys::{FileKind, Sys};

#[derive(Default)]
struct Recorder {
    calls: Vec<String>,
    kinds: HashMap<PathBuf, FileKind>,
    executables: Vec<PathBuf>,
    pivot_einval: bool,
    mknod_eperm: bool,
    fail_on: Option<String>,
}

impl Recorder {
    fn log(&mut self, s: String) -> io::Result<()> {
        let fail = self
            .fail_on
            .as_ref()
            .is_some_and(|f| s.starts_with(f.as_str()));
        self.calls.push(s);
        if fail {
            Err(io::Error::from_raw_os_error(libc::EACCES))
        } else {
            Ok(())
        }
    }
    fn has(&self, prefix: &str) -> bool {
        self.calls.iter().any(|c| c.starts_with(prefix))
    }
    fn pos(&self, prefix: &str) -> usize {
        self.calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no call {prefix:?} in {:#?}", self.calls))
    }
}

fn d(p: &Path) -> String {
    p.display().to_string()
}

impl Sys for Recorder {
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> io::Result<()> {
        let src = source.map(d).unwrap_or_else(|| "-".into());
        self.log(format!(
            "mount {src} {} {} {flags:#x} {}",
            d(target),
            fstype.unwrap_or("-"),
            data.unwrap_or("-")
        ))
    }
    fn umount(&mut self, target: &Path, flags: i32) -> io::Result<()> {
        self.log(format!("umount {} {flags}", d(target)))
    }
    fn kind(&mut self, path: &Path) -> io::Result<Option<FileKind>> {
        Ok(self.kinds.get(path).copied())
    }
    fn resolve(&mut self, root: &Path, path: &Path) -> io::Result<PathBuf> {
        Ok(root.join(path.strip_prefix("/").unwrap_or(path)))
    }
    fn mkdir_all(&mut self, path: &Path) -> io::Result<()> {
        self.log(format!("mkdir {}", d(path)))
    }
    fn create_file(&mut self, path: &Path) -> io::Result<()> {
        self.log(format!("touch {}", d(path)))
    }
    fn mknod(&mut self, path: &Path, mode: u32, dev: u64) -> io::Result<()> {
        self.log(format!("mknod {} {mode:o} {dev}", d(path)))?;
        if self.mknod_eperm {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.log(format!("chown {} {uid} {gid}", d(path)))
    }
    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()> {
        self.log(format!("symlink {} {}", d(target), d(link)))
    }
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        self.log(format!("pivot_root {} {}", d(new_root), d(put_old)))?;
        if self.pivot_einval {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }
    fn chroot(&mut self, path: &Path) -> io::Result<()> {
        self.log(format!("chroot {}", d(path)))
    }
    fn chdir(&mut self, path: &Path) -> io::Result<()> {
        self.log(format!("chdir {}", d(path)))
    }
    fn write_file(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.log(format!(
            "write {} {}",
            d(path),
            String::from_utf8_lossy(data)
        ))
    }
    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        self.log(format!("sethostname {name}"))
    }
    fn setdomainname(&mut self, name: &str) -> io::Result<()> {
        self.log(format!("setdomainname {name}"))
    }
    fn unshare(&mut self, flags: i32) -> io::Result<()> {
        self.log(format!("unshare {flags:#x}"))
    }
    fn setns(&mut self, path: &Path, flag: i32) -> io::Result<()> {
        self.log(format!("setns {} {flag:#x}", d(path)))
    }
    fn setrlimit(&mut self, resource: u32, soft: u64, hard: u64) -> io::Result<()> {
        self.log(format!("setrlimit {resource} {soft} {hard}"))
    }
    fn umask(&mut self, mask: u32) {
        let _ = self.log(format!("umask {mask:o}"));
    }
    fn set_no_new_privs(&mut self) -> io::Result<()> {
        self.log("no_new_privs".into())
    }
    fn seccomp_filter(
        &mut self,
        program: &[seccompiler::sock_filter],
        flags: u32,
    ) -> io::Result<()> {
        self.log(format!(
            "seccomp {} instructions flags {flags}",
            program.len()
        ))
    }
    fn cap_drop_bound(&mut self, cap: u32) -> io::Result<()> {
        self.log(format!("capbset_drop {cap}"))
    }
    fn set_keep_caps(&mut self, keep: bool) -> io::Result<()> {
        self.log(format!("keepcaps {keep}"))
    }
    fn setgroups(&mut self, gids: &[u32]) -> io::Result<()> {
        self.log(format!("setgroups {gids:?}"))
    }
    fn setresgid(&mut self, gid: u32) -> io::Result<()> {
        self.log(format!("setresgid {gid}"))
    }
    fn setresuid(&mut self, uid: u32) -> io::Result<()> {
        self.log(format!("setresuid {uid}"))
    }
    fn capset(&mut self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
        self.log(format!(
            "capset {effective:#x} {permitted:#x} {inheritable:#x}"
        ))
    }
    fn cap_ambient_raise(&mut self, cap: u32) -> io::Result<()> {
        self.log(format!("ambient {cap}"))
    }
    fn is_executable(&mut self, path: &Path) -> bool {
        let _ = self.log(format!("access {}", d(path)));
        self.executables.iter().any(|e| e == path)
    }
    fn loopback_up(&mut self) -> io::Result<()> {
        self.log("lo up".into())
    }
}

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
    };
    let exe = setup_container(&mut r, &p, &ctx).unwrap();
    assert_eq!(exe.to_str().unwrap(), "/bin/sh");
    // Cgroup joined before its namespace is unshared; sysctl inside the new netns.
    assert!(r.pos("write /sys/fs/cgroup/c/cgroup.procs 0") < r.pos("unshare 0x2000000"));
    assert!(r.pos("lo up") < r.pos("write /proc/sys/net/ipv4/ip_forward 1"));
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
