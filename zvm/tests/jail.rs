//! `zvm run --jail on` (issue #16) with a tiny hand-assembled guest: the jailed VMM checked
//! from the host while its guest runs, signals passed through the supervisor, everything
//! removed afterwards; and escape attempts from inside a jail under the VMM's own seccomp
//! filters, each refused.

mod common;

use common::{guest_code, no_kvm, shared_reader, tiny_elf};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

#[test]
fn a_jailed_vmm_is_confined_while_its_guest_runs_and_cleaned_up_after() {
    if let Some(why) = no_jail() {
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let kernel = dir.path().join("tiny.elf");
    std::fs::write(&kernel, tiny_elf(&guest_code())).expect("kernel");
    let metrics = dir.path().join("metrics.json");
    let state = dir.path().join("jails");
    let mut zvm = Command::new(env!("CARGO_BIN_EXE_zvm"))
        .args(["run", "--jail", "on", "--kernel"])
        .arg(&kernel)
        .args(["--memory", "32M", "--console", "stdio", "--metrics"])
        .arg(&metrics)
        .env("ZVM_JAIL_DIR", &state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zvm run");
    let console = shared_reader(zvm.stdout.take().expect("stdout"));
    let stderr = shared_reader(zvm.stderr.take().expect("stderr"));
    wait_for("the guest's first dot", || {
        console.lock().expect("console").contains(&b'.')
    });
    let limits = jail::CgroupLimits {
        memory_bytes: (32 + 256) << 20,
        pids: 256,
        cpus: 2.0,
    };
    let jailed = jail::inspect::wait_for_jailed_child(zvm.id(), Duration::from_secs(10))
        .and_then(|pid| jail::inspect::check_jailed(pid, &limits));
    let jailed = match jailed {
        Ok(j) => j,
        Err(e) => {
            let _ = zvm.kill();
            panic!("the VMM is not jailed as it should be: {e}");
        }
    };
    assert!(
        (900_000..965_536).contains(&jailed.uid),
        "uid {}",
        jailed.uid
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
    // The supervisor passes SIGUSR1 on: the jailed half writes a metrics line.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(zvm.id() as libc::pid_t, libc::SIGUSR1) };
    wait_for("a metrics line", || {
        std::fs::read_to_string(&metrics)
            .unwrap_or_default()
            .lines()
            .count()
            == 1
    });
    // And SIGTERM: the VM stops, zvm says so and exits with 130.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(zvm.id() as libc::pid_t, libc::SIGTERM) };
    let code = zvm.wait().expect("wait").code();
    let errors = String::from_utf8_lossy(&stderr.lock().expect("stderr")).into_owned();
    assert_eq!(code, Some(130), "{errors}");
    assert!(errors.contains("stopped by signal"), "{errors}");
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
    std::fs::write(root.join("tiny.elf"), tiny_elf(&guest_code())).expect("kernel");
    let outside = dir.path().join("outside.elf");
    std::fs::write(&outside, tiny_elf(&guest_code())).expect("kernel");
    // Paths are the jail's: the socket is DIR/api.sock on the host.
    let mut zvm = Command::new(env!("CARGO_BIN_EXE_zvm"))
        .args(["--api-sock", "/api.sock", "--jail-root"])
        .arg(&root)
        .args(["--jail-memory-mib", "64", "--jail-cpus", "1"])
        .env("ZVM_JAIL_DIR", dir.path().join("jails"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zvm --api-sock");
    let console = shared_reader(zvm.stdout.take().expect("stdout"));
    let stderr = shared_reader(zvm.stderr.take().expect("stderr"));
    let sock = root.join("api.sock");
    wait_for("the API socket in the jail's directory", || sock.exists());
    let call = |method: &str, uri: &str, body: &str| -> (u16, String) {
        let response = api_server::client::request(
            &sock,
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
    };
    // A host path outside the jail does not exist for the VMM.
    let host_kernel = format!(r#"{{"kernel_image_path":"{}"}}"#, outside.display());
    let (code, body) = call("PUT", "/boot-source", &host_kernel);
    let started = if code < 300 {
        call("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#)
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
        let (code, answer) = call("PUT", uri, body);
        let errors = String::from_utf8_lossy(&stderr.lock().expect("stderr")).into_owned();
        assert!(code < 300, "PUT {uri}: {code} {answer}\n{errors}");
    }
    wait_for("the guest's first dot", || {
        console.lock().expect("console").contains(&b'.')
    });
    let limits = jail::CgroupLimits {
        memory_bytes: (64 + 256) << 20,
        pids: 256,
        cpus: 2.0,
    };
    let jailed = jail::inspect::wait_for_jailed_child(zvm.id(), Duration::from_secs(10))
        .and_then(|pid| jail::inspect::check_jailed(pid, &limits));
    // A snapshot, written from inside the jail to paths inside it.
    let snapshot = [
        ("PATCH", "/vm", r#"{"state":"Paused"}"#),
        (
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_type":"Full","snapshot_path":"/snap.state","mem_file_path":"/snap.mem"}"#,
        ),
    ];
    let snapshotted: Vec<(u16, String)> = snapshot
        .iter()
        .map(|(method, uri, body)| call(method, uri, body))
        .collect();
    let _ = zvm.kill();
    let _ = zvm.wait();
    let jailed = jailed.unwrap_or_else(|e| panic!("the API-mode VMM is not jailed: {e}"));
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

/// What an attempt made inside the jail came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The call failed with this errno.
    Failed(i32),
    /// The seccomp filter stopped the process.
    Stopped,
    /// The call worked: an escape.
    Worked,
}

/// Runs `attempt` in a child of the jailed half with the filter of `kind` installed (none
/// when `kind` is None): the call's errno when it fails, or how the child ended.
fn attempt(kind: Option<vmm::seccomp::ThreadKind>, call: impl FnOnce() -> i64) -> Outcome {
    // SAFETY: fork in the (single-threaded) jailed half; the child leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        if let Some(kind) = kind {
            if vmm::seccomp::install(kind, true).is_err() {
                // SAFETY: leaving the child.
                unsafe { libc::_exit(250) };
            }
        }
        let rc = call();
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY: leaving the child with the errno of a failed call, 0 for success.
        unsafe { libc::_exit(if rc < 0 { errno.clamp(1, 200) } else { 0 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let stopped = (libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS)
        || (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 128 + libc::SIGSYS);
    match (stopped, libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
        (true, _, _) => Outcome::Stopped,
        (false, true, 0) => Outcome::Worked,
        (false, true, errno) => Outcome::Failed(errno),
        _ => Outcome::Worked,
    }
}

/// The escape attempts, as (name, outcome); run in the jailed half after lock-down.
fn escape_attempts(outside: &Path, host_pid: i32, vm_fd: i32) -> Vec<(&'static str, Outcome)> {
    use vmm::seccomp::ThreadKind::{Vcpu, Vmm};
    let passwd = c"/etc/passwd";
    let socket_path = outside.to_path_buf();
    let connect_outside = move || {
        let path = socket_path.clone();
        match std::os::unix::net::UnixStream::connect(&path) {
            Ok(_) => 0,
            Err(e) => {
                // SAFETY: setting errno for the caller to read.
                unsafe { *libc::__errno_location() = e.raw_os_error().unwrap_or(libc::EIO) };
                -1
            }
        }
    };
    // SAFETY (all calls below): plain system calls with constant or owned arguments.
    vec![
        (
            "open a host file (jail alone)",
            attempt(None, || unsafe {
                libc::open(passwd.as_ptr(), libc::O_RDONLY) as i64
            }),
        ),
        (
            "open a host file (VMM thread)",
            attempt(Some(Vmm), || unsafe {
                libc::open(passwd.as_ptr(), libc::O_RDONLY) as i64
            }),
        ),
        (
            "connect to a host socket (jail alone)",
            attempt(None, connect_outside.clone()),
        ),
        (
            "connect to a host socket (VMM thread)",
            attempt(Some(Vmm), connect_outside),
        ),
        (
            "KVM_CREATE_VCPU on the VM (vCPU thread)",
            attempt(Some(Vcpu), || unsafe {
                libc::ioctl(vm_fd, 0xae41, 5) as i64
            }),
        ),
        (
            "ptrace a host process (jail alone)",
            attempt(None, || unsafe {
                libc::ptrace(libc::PTRACE_ATTACH, host_pid, 0, 0)
            }),
        ),
        (
            "ptrace a host process (VMM thread)",
            attempt(Some(Vmm), || unsafe {
                libc::ptrace(libc::PTRACE_ATTACH, host_pid, 0, 0)
            }),
        ),
        (
            "become root again (jail alone)",
            attempt(None, || unsafe { libc::setuid(0) as i64 }),
        ),
        (
            "a user namespace (VMM thread)",
            attempt(Some(Vmm), || unsafe {
                libc::unshare(libc::CLONE_NEWUSER) as i64
            }),
        ),
        (
            "mount over / (jail alone)",
            attempt(None, || unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                ) as i64
            }),
        ),
    ]
}

#[test]
fn escape_attempts_from_a_jailed_vmm_are_refused() {
    if let Some(why) = no_jail() {
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let exposed = dir.path().join("vm");
    std::fs::create_dir(&exposed).expect("vm dir");
    let outside = dir.path().join("host.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&outside).expect("host socket");
    let config = jail::JailConfig {
        name: "escape".into(),
        state_dir: dir.path().join("jails"),
        ids: jail::IdRange {
            first: 990_200,
            count: 100,
        },
        exposed: vec![jail::Exposed::writable(&exposed)],
        owned: vec![exposed.clone()],
        new_network: true,
        cgroup: jail::CgroupLimits {
            memory_bytes: 256 << 20,
            pids: 32,
            cpus: 1.0,
        },
        open_files: 256,
        file_size: 1 << 20,
        root_dir: None,
        kvm_devices: false,
    };
    let host_pid = std::process::id() as i32;
    // SAFETY: fork in a test; the child makes the jail and leaves with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let code = match jail::enter(&config) {
            Ok(jail::Side::Supervisor(status)) => status,
            Ok(jail::Side::Jailed(mut jailed)) => {
                // What a VMM holds when it locks down: KVM and its VM.
                let kvm = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/kvm")
                    .expect("/dev/kvm");
                use std::os::fd::AsRawFd;
                // SAFETY: KVM_CREATE_VM on the KVM descriptor.
                let vm_fd = unsafe { libc::ioctl(kvm.as_raw_fd(), 0xae01, 0) };
                if jailed.lock_down().is_err() || vm_fd < 0 {
                    // SAFETY: leaving the jailed half.
                    unsafe { libc::_exit(91) };
                }
                let lines: Vec<String> = escape_attempts(&outside, host_pid, vm_fd)
                    .into_iter()
                    .map(|(name, outcome)| format!("{name}: {outcome:?}"))
                    .collect();
                let _ = std::fs::write(exposed.join("report.txt"), lines.join("\n"));
                0
            }
            Err(e) => {
                eprintln!("{e}");
                92
            }
        };
        // SAFETY: leaving the child (both halves).
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}"
    );
    let text = std::fs::read_to_string(exposed.join("report.txt")).expect("the jail's report");
    println!("escape attempts from a jailed VMM:\n{text}");
    assert_eq!(text.lines().count(), 10, "{text}");
    for line in text.lines() {
        assert!(
            !line.ends_with("Worked"),
            "an escape worked: {line}\n{text}"
        );
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

#[test]
fn a_jailed_restore_runs_the_snapshot_on() {
    if let Some(why) = no_jail() {
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path();
    let kernel = root.join("tiny.elf");
    std::fs::write(&kernel, tiny_elf(&guest_code())).expect("kernel");
    // The snapshot, from an unjailed API-mode VM.
    let sock = root.join("api.sock");
    let mut vm = Command::new(env!("CARGO_BIN_EXE_zvm"))
        .arg("--api-sock")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn zvm --api-sock");
    let console = shared_reader(vm.stdout.take().expect("stdout"));
    wait_for("the API socket", || sock.exists());
    let boot = format!(r#"{{"kernel_image_path":"{}"}}"#, kernel.display());
    let snapshot = format!(
        r#"{{"snapshot_type":"Full","snapshot_path":"{}","mem_file_path":"{}"}}"#,
        root.join("snap.state").display(),
        root.join("snap.mem").display()
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
    wait_for("the guest's first dot", || {
        console.lock().expect("console").contains(&b'.')
    });
    for (method, uri, body) in [
        ("PATCH", "/vm", r#"{"state":"Paused"}"#),
        ("PUT", "/snapshot/create", snapshot.as_str()),
    ] {
        let (code, answer) = api_call(&sock, method, uri, body);
        assert!(code < 300, "{method} {uri}: {code} {answer}");
    }
    let _ = vm.kill();
    let _ = vm.wait();

    // `zvm run --restore --jail on`: the snapshot runs on, jailed (files opened before).
    let mut restored = Command::new(env!("CARGO_BIN_EXE_zvm"))
        .args(["run", "--jail", "on", "--console", "stdio", "--restore"])
        .arg(root.join("snap.state"))
        .arg("--mem")
        .arg(root.join("snap.mem"))
        .env("ZVM_JAIL_DIR", root.join("jails"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zvm run --restore");
    let console = shared_reader(restored.stdout.take().expect("stdout"));
    let stderr = shared_reader(restored.stderr.take().expect("stderr"));
    let jailed = jail::inspect::wait_for_jailed_child(restored.id(), Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !console.lock().expect("console").contains(&b'.') {
        let errors = String::from_utf8_lossy(&stderr.lock().expect("stderr")).into_owned();
        assert!(
            Instant::now() < deadline,
            "no dots from the restored guest: {errors}; {jailed:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let limits = jail::CgroupLimits {
        memory_bytes: (32 + 256) << 20,
        pids: 256,
        cpus: 1.0,
    };
    let checked = jailed.and_then(|pid| jail::inspect::check_jailed(pid, &limits));
    let _ = restored.kill();
    let _ = restored.wait();
    let errors = String::from_utf8_lossy(&stderr.lock().expect("stderr")).into_owned();
    let checked = checked.unwrap_or_else(|e| panic!("the restore is not jailed: {e}\n{errors}"));
    assert!(checked.own_network);
}
