//! `zvm run --jail on` (issue #16) with a tiny hand-assembled guest: the jailed VMM checked
//! from the host while its guest runs, signals passed through the supervisor, everything
//! removed afterwards; an API-mode VMM jailed in its directory; a jailed restore.

mod common;

use common::{guest_code, no_kvm, shared_reader, tiny_elf};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether the API server listens on `sock`: the file appears at bind(), before listen().
fn listening(sock: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(sock).is_ok()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Why this host cannot make jails, if it cannot.
fn no_jail() -> Option<String> {
    no_kvm().or_else(|| jail::check_host().err().map(|e| e.to_string()))
}

/// zvm's cgroup limits for a guest of `memory_mib` and `cpus` of CPU time.
fn limits(memory_mib: u64, cpus: f64) -> jail::CgroupLimits {
    jail::CgroupLimits {
        memory_bytes: (memory_mib + 256) << 20,
        pids: 256,
        cpus,
    }
}

/// A `zvm` process of the test (its jails' state in `jails`), its console and messages
/// collected; killed on drop.
struct Zvm {
    child: Child,
    console: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Zvm {
    fn spawn(args: &[&str], jails: &Path) -> Zvm {
        let mut child = Command::new(env!("CARGO_BIN_EXE_zvm"))
            .args(args)
            .env("ZVM_JAIL_DIR", jails)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn zvm");
        let console = shared_reader(child.stdout.take().expect("stdout"));
        let stderr = shared_reader(child.stderr.take().expect("stderr"));
        Zvm {
            child,
            console,
            stderr,
        }
    }

    fn errors(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr")).into_owned()
    }

    fn wait_for_dot(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.console.lock().expect("console").contains(&b'.') {
            assert!(
                Instant::now() < deadline,
                "no dot from the guest: {}",
                self.errors()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its jailed half, checked from the host against `limits`.
    fn jailed(&self, limits: &jail::CgroupLimits) -> Result<jail::inspect::JailedVmm, String> {
        jail::inspect::wait_for_jailed_child(self.child.id(), Duration::from_secs(10))
            .and_then(|pid| jail::inspect::check_jailed(pid, limits))
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }
}

impl Drop for Zvm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one API request to `sock`: the status and the body.
fn api_call(sock: &Path, method: &str, uri: &str, body: &str) -> (u16, String) {
    let response = api_server::client::request(
        sock,
        method,
        uri,
        Some(body.as_bytes()),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
    (
        response.status,
        String::from_utf8_lossy(&response.body).into_owned(),
    )
}

/// A path as an argument (the tests' temporary paths are UTF-8).
fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// A tiny guest kernel written at `path`.
fn tiny_kernel(path: &Path) {
    std::fs::write(path, tiny_elf(&guest_code())).expect("kernel");
}

#[test]
fn a_jailed_vmm_is_confined_while_its_guest_runs_and_cleaned_up_after() {
    if let Some(why) = no_jail() {
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let kernel = dir.path().join("tiny.elf");
    tiny_kernel(&kernel);
    let metrics = dir.path().join("metrics.json");
    let state = dir.path().join("jails");
    let args = [
        "run",
        "--jail",
        "on",
        "--kernel",
        arg(&kernel),
        "--memory",
        "32M",
        "--console",
        "stdio",
        "--metrics",
        arg(&metrics),
    ];
    let mut zvm = Zvm::spawn(&args, &state);
    zvm.wait_for_dot();
    let jailed = zvm
        .jailed(&limits(32, 2.0))
        .unwrap_or_else(|e| panic!("the VMM is not jailed as it should be: {e}"));
    assert!(
        (900_000..965_536).contains(&jailed.uid),
        "uid {}",
        jailed.uid
    );
    assert!(
        jailed.own_network,
        "taps are open: it needs no host network"
    );
    // Its root: /dev (null, urandom; no KVM: its VM's descriptors are open), its own
    // /proc, and the paths of its kernel and metrics file.
    assert!(jailed.root_entries.contains(&"dev".to_string()));
    assert!(!Path::new(&format!("/proc/{}/root/dev/kvm", jailed.pid)).exists());
    let status = std::fs::read_to_string(format!("/proc/{}/status", jailed.pid)).expect("status");
    assert!(
        status.contains("\nNSpid:\t") && status.contains("\t1\n"),
        "{status}"
    );
    // The jailed half runs the lean zvm-vmm (zvm/src/vmm_exec.rs); the supervisor is zvm.
    let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    assert!(
        exe(jailed.pid).ends_with("zvm-vmm"),
        "{:?}",
        exe(jailed.pid)
    );
    assert!(
        exe(zvm.child.id()).ends_with("zvm"),
        "{:?}",
        exe(zvm.child.id())
    );
    // The supervisor passes SIGUSR1 on: the jailed half writes a metrics line.
    zvm.signal(libc::SIGUSR1);
    wait_for("a metrics line", || {
        std::fs::read_to_string(&metrics)
            .unwrap_or_default()
            .lines()
            .count()
            == 1
    });
    // And SIGTERM: the VM stops, zvm says so and exits with 130.
    zvm.signal(libc::SIGTERM);
    let code = zvm.child.wait().expect("wait").code();
    assert_eq!(code, Some(130), "{}", zvm.errors());
    // The reader thread may still be taking the last message from the pipe.
    wait_for("the stop message", || {
        zvm.errors().contains("stopped by signal")
    });
    // The jailed half is gone with its cgroup and mount point; its id is free again.
    assert!(!Path::new(&format!("/proc/{}", jailed.pid)).exists());
    let roots = std::fs::read_dir(state.join("roots"))
        .expect("roots")
        .count();
    assert_eq!(roots, 0, "a mount point was left behind");
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
    let memory = own
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        .unwrap_or_default();
    let group = Path::new("/sys/fs/cgroup/memory")
        .join(memory.trim_start_matches('/'))
        .join(format!("zvm/zvm-{}", jailed.uid));
    assert!(!group.exists(), "{} was left behind", group.display());
}

#[test]
fn an_api_mode_vmm_jailed_in_its_directory_sees_only_paths_inside_it() {
    if let Some(why) = no_jail() {
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    tiny_kernel(&root.join("tiny.elf"));
    let outside = dir.path().join("outside.elf");
    tiny_kernel(&outside);
    // Paths are the jail's: the socket is DIR/api.sock on the host.
    let args = [
        "--api-sock",
        "/api.sock",
        "--jail-root",
        arg(&root),
        "--jail-memory-mib",
        "64",
        "--jail-cpus",
        "1",
    ];
    let zvm = Zvm::spawn(&args, &dir.path().join("jails"));
    let sock = root.join("api.sock");
    wait_for("the API socket in the jail's directory", || {
        listening(&sock)
    });
    // A host path outside the jail does not exist for the VMM.
    let host_kernel = format!(r#"{{"kernel_image_path":"{}"}}"#, outside.display());
    let (code, body) = api_call(&sock, "PUT", "/boot-source", &host_kernel);
    let started = if code < 300 {
        api_call(
            &sock,
            "PUT",
            "/actions",
            r#"{"action_type":"InstanceStart"}"#,
        )
    } else {
        (code, body)
    };
    assert!(
        started.0 >= 400,
        "a kernel outside the jail was used: {started:?}"
    );
    for (uri, body) in [
        ("/boot-source", r#"{"kernel_image_path":"/tiny.elf"}"#),
        ("/machine-config", r#"{"vcpu_count":1,"mem_size_mib":32}"#),
        ("/actions", r#"{"action_type":"InstanceStart"}"#),
    ] {
        let (code, answer) = api_call(&sock, "PUT", uri, body);
        assert!(code < 300, "PUT {uri}: {code} {answer}\n{}", zvm.errors());
    }
    zvm.wait_for_dot();
    let jailed = zvm.jailed(&limits(64, 2.0));
    // A snapshot, written from inside the jail to paths inside it.
    let snapshot =
        r#"{"snapshot_type":"Full","snapshot_path":"/snap.state","mem_file_path":"/snap.mem"}"#;
    let snapshotted = [
        api_call(&sock, "PATCH", "/vm", r#"{"state":"Paused"}"#),
        api_call(&sock, "PUT", "/snapshot/create", snapshot),
    ];
    // The jailed half serves the API from the lean zvm-vmm (zvm/src/vmm_exec.rs).
    let exe = jailed.as_ref().ok().map(|j| {
        std::fs::read_link(format!("/proc/{}/exe", j.pid))
            .unwrap_or_default()
            .display()
            .to_string()
    });
    drop(zvm);
    let jailed = jailed.unwrap_or_else(|e| panic!("the API-mode VMM is not jailed: {e}"));
    let exe = exe.unwrap_or_default();
    assert!(exe.ends_with("zvm-vmm"), "the jailed API server runs {exe}");
    assert!(
        snapshotted.iter().all(|(code, _)| *code < 300),
        "{snapshotted:?}"
    );
    for entry in ["api.sock", "tiny.elf", "dev", "proc"] {
        assert!(
            jailed.root_entries.iter().any(|e| e == entry),
            "{entry} is not in the jail's root: {:?}",
            jailed.root_entries
        );
    }
    assert!(!jailed.root_entries.iter().any(|e| e == "outside.elf"));
    // It opens taps only after the start: it stays in the host's network namespace.
    assert!(!jailed.own_network);
    assert!(root.join("snap.state").is_file() && root.join("snap.mem").is_file());
}

#[test]
fn a_jailed_restore_of_missing_files_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_zvm"))
        .args([
            "run",
            "--jail",
            "on",
            "--restore",
            "/nonexistent",
            "--mem",
            "/nonexistent",
        ])
        .output()
        .expect("zvm run");
    let errors = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{errors}");
    assert!(errors.contains("/nonexistent"), "{errors}");
}

#[test]
fn a_jailed_restore_runs_the_snapshot_on() {
    if let Some(why) = no_jail() {
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path();
    let kernel = root.join("tiny.elf");
    tiny_kernel(&kernel);
    let jails = root.join("jails");
    // The snapshot, from an unjailed API-mode VM.
    let sock = root.join("api.sock");
    let vm = Zvm::spawn(&["--api-sock", arg(&sock)], &jails);
    wait_for("the API socket", || listening(&sock));
    let boot = format!(r#"{{"kernel_image_path":"{}"}}"#, kernel.display());
    let (state, mem) = (root.join("snap.state"), root.join("snap.mem"));
    let snapshot = format!(
        r#"{{"snapshot_type":"Full","snapshot_path":"{}","mem_file_path":"{}"}}"#,
        state.display(),
        mem.display()
    );
    for (method, uri, body) in [
        ("PUT", "/boot-source", boot.as_str()),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":32}"#,
        ),
        ("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#),
    ] {
        let (code, answer) = api_call(&sock, method, uri, body);
        assert!(code < 300, "{method} {uri}: {code} {answer}");
    }
    vm.wait_for_dot();
    for (method, uri, body) in [
        ("PATCH", "/vm", r#"{"state":"Paused"}"#),
        ("PUT", "/snapshot/create", snapshot.as_str()),
    ] {
        let (code, answer) = api_call(&sock, method, uri, body);
        assert!(code < 300, "{method} {uri}: {code} {answer}");
    }
    drop(vm);
    // `zvm run --restore --jail on`: the snapshot runs on, jailed (files opened before).
    let args = [
        "run",
        "--jail",
        "on",
        "--console",
        "stdio",
        "--restore",
        arg(&state),
        "--mem",
        arg(&mem),
    ];
    let restored = Zvm::spawn(&args, &jails);
    restored.wait_for_dot();
    let jailed = restored
        .jailed(&limits(32, 1.0))
        .unwrap_or_else(|e| panic!("the restore is not jailed: {e}\n{}", restored.errors()));
    assert!(jailed.own_network);
}

/// Whether this host has a virtiofsd where zvm looks (`bash scripts/install-virtiofsd.sh`
/// puts it in zvm's cache; `scripts/test.sh` runs it).
fn virtiofsd_installed() -> bool {
    std::env::var_os("ZVM_VIRTIOFSD").is_some_and(|p| Path::new(&p).is_file())
        || oci_runtime::sandbox::share::host::virtiofsd_candidates()
            .iter()
            .any(|c| c.is_file())
}

/// The pids whose parent is `parent`, with their command names.
fn children_of(parent: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c).to_string();
        let ppid = tail.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(parent) {
            found.push((pid, comm));
        }
    }
    found
}

#[test]
fn a_jailed_vmm_reaches_its_virtiofs_share_through_a_daemon_outside_the_jail() {
    if let Some(why) = no_jail() {
        println!("skipped: {why}");
        return;
    }
    if !virtiofsd_installed() {
        println!("skipped: virtiofsd is not installed (bash scripts/install-virtiofsd.sh)");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let kernel = dir.path().join("tiny.elf");
    tiny_kernel(&kernel);
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share");
    let fs = format!("tag=data,path={}", share.display());
    let state = dir.path().join("jails");
    let args = [
        "run",
        "--jail",
        "on",
        "--kernel",
        arg(&kernel),
        "--memory",
        "32M",
        "--console",
        "stdio",
        "--fs",
        &fs,
    ];
    let mut zvm = Zvm::spawn(&args, &state);
    zvm.wait_for_dot();
    // The VMM connected to virtiofsd while its VM was built, then locked itself down.
    let jailed = zvm
        .jailed(&limits(32, 2.0))
        .unwrap_or_else(|e| panic!("the VMM is not jailed as it should be: {e}"));
    let inside = |path: &Path| {
        Path::new(&format!("/proc/{}/root", jailed.pid))
            .join(path.strip_prefix("/").unwrap_or(path))
    };
    assert!(!inside(&share).exists(), "the share is visible in the jail");
    let sockets: Vec<_> = std::fs::read_dir(inside(Path::new("/tmp")))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !sockets
            .iter()
            .any(|n| n.to_string_lossy().starts_with("zvm-fs-")),
        "virtiofsd's socket directory is visible in the jail: {sockets:?}"
    );
    // virtiofsd is the supervisor's child, beside the jailed half, not in the jail.
    let children = children_of(zvm.child.id());
    let daemon = children
        .iter()
        .find(|(_, comm)| comm == "virtiofsd")
        .map(|(pid, _)| *pid)
        .unwrap_or_else(|| panic!("no virtiofsd under the supervisor: {children:?}"));
    assert!(children.iter().any(|(pid, _)| *pid == jailed.pid));
    zvm.signal(libc::SIGTERM);
    let code = zvm.child.wait().expect("wait").code();
    assert_eq!(code, Some(130), "{}", zvm.errors());
    wait_for("virtiofsd to end with the supervisor", || {
        !Path::new(&format!("/proc/{daemon}")).exists()
    });
}
