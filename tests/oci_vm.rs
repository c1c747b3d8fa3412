//! One OCI container in its own micro-VM, driven through oci-runtime's sandbox API the way
//! the `zvm oci` / `zvm-runc` commands drive it: create (the sandbox process boots the VM and
//! the agent creates the container), status, start, the container's stdio through the
//! sandbox's inherited stdin/stdout, a signal sent to the sandbox process forwarded to the
//! container, exec of a second process, kill, and the recorded exit status. One VM, restored
//! from the test run's template (made by the first test that needs it), checks everything.

use oci_runtime::sandbox::{
    self, ExecIo, GuestArtifacts, SandboxClient, SandboxConfig, SandboxError, SandboxStatus,
};
use oci_spec::runtime::{
    LinuxNamespaceType, MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zvm_integration_tests::{
    busybox_rootfs, guest_kernel, oci_agent, scratch_dir, template_dir, zvm_binary,
};

/// The container's program: report what the spec set up, then serve stdin and signals.
const SCRIPT: &str = r#"trap 'echo trapped-hup' HUP
echo "env FOO=$FOO"
echo "cwd $(pwd)"
id
echo "hostname $(hostname)"
touch /rootfs-write 2>&1 || echo "root write refused"
echo tmp-ok > /tmp/t && cat /tmp/t
mkdir /tmp/d 2>&1 || echo "mkdir refused"
echo ready
while :; do
  if read -r line; then echo "stdin: $line"; fi
done
"#;

/// How long anything that needs the guest may take (a boot is 50-60 s idle, minutes busy).
const GUEST_LIMIT: Duration = Duration::from_secs(420);

fn spec(rootfs: &str) -> Spec {
    let mut spec = Spec::default();
    let process = ProcessBuilder::default()
        .args(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            SCRIPT.to_string(),
        ])
        .env(vec!["PATH=/bin".to_string(), "FOO=bar".to_string()])
        .cwd("/work")
        .user(
            UserBuilder::default()
                .uid(1000u32)
                .gid(1000u32)
                .additional_gids(vec![2000u32])
                .build()
                .expect("user"),
        )
        .build()
        .expect("process");
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(true)
            .build()
            .expect("root"),
    ));
    spec.set_hostname(Some("zvm-box".into()));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let tmp = MountBuilder::default()
        .destination("/tmp")
        .typ("tmpfs")
        .source("tmpfs")
        .options(vec![
            "nosuid".to_string(),
            "nodev".to_string(),
            "mode=1777".to_string(),
        ])
        .build()
        .expect("mount");
    mounts.push(tmp);
    spec.set_mounts(Some(mounts));
    // No pid namespace: sh would be its pid 1 and ignore SIGTERM (as under runc).
    if let Some(linux) = spec.linux_mut() {
        if let Some(ns) = linux.namespaces_mut() {
            ns.retain(|n| n.typ() != LinuxNamespaceType::Pid);
        }
        // The agent compiles and installs the profile: mkdir fails with EACCES.
        let seccomp = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
        });
        linux.set_seccomp(Some(serde_json::from_value(seccomp).expect("seccomp")));
    }
    spec
}

/// A pipe: (read end, write end).
fn pipe() -> (File, File) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: new descriptors owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// Runs `f` with fds 0, 1, 2 temporarily replaced (the sandbox process inherits them).
fn with_stdio<T>(fds: [&File; 3], f: impl FnOnce() -> T) -> T {
    // SAFETY: dup/dup2 on descriptors this process owns; restored below.
    let saved: Vec<OwnedFd> = (0..3)
        .map(|fd| unsafe { OwnedFd::from_raw_fd(libc::dup(fd)) })
        .collect();
    for (target, file) in fds.iter().enumerate() {
        // SAFETY: as above.
        assert!(unsafe { libc::dup2(file.as_raw_fd(), target as RawFd) } >= 0);
    }
    let out = f();
    for (target, fd) in saved.iter().enumerate() {
        // SAFETY: as above.
        unsafe { libc::dup2(fd.as_raw_fd(), target as RawFd) };
    }
    out
}

/// Collects what a pipe's read end receives.
fn collect(mut pipe: File) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

fn wait_for(text: &Mutex<String>, needle: &str, what: &dyn Fn() -> String) {
    let deadline = Instant::now() + GUEST_LIMIT;
    while !text.lock().expect("lock").contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the container's output:\n{}\n{}",
            text.lock().expect("lock"),
            what()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for our child `pid`; its exit code.
fn wait_exit(pid: u32, what: &dyn Fn() -> String) -> i32 {
    let deadline = Instant::now() + GUEST_LIMIT;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let rc = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        if rc == pid as i32 {
            assert!(
                libc::WIFEXITED(status),
                "the sandbox process was killed by a signal ({status:#x}): {}",
                what()
            );
            return libc::WEXITSTATUS(status);
        }
        assert!(
            Instant::now() < deadline,
            "the sandbox process did not exit: {}",
            what()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `zvm oci __sandbox`: how `zvm oci create` runs the sandbox process.
fn sandbox_launcher() -> Vec<OsString> {
    vec![zvm_binary().into(), "oci".into(), "__sandbox".into()]
}

#[test]
fn container_vm_runs_a_busybox_container_from_create_to_exit() {
    if std::env::var_os("ZVM_TEMPLATE_DIR").is_none() {
        // The sandbox process inherits it: the test run's template cache.
        std::env::set_var("ZVM_TEMPLATE_DIR", template_dir());
    }
    let base = scratch_dir().join("oci-vm");
    let _ = std::fs::remove_dir_all(&base);
    let (bundle, container_dir) = (base.join("bundle"), base.join("state/oci-vm-test"));
    std::fs::create_dir_all(&container_dir).expect("container dir");
    // No /proc, /sys or /dev under a read-only root: the agent makes them first, as runc.
    busybox_rootfs(&bundle.join("rootfs"), &["tmp", "work", "etc"]);
    let spec = spec("rootfs");
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_string_pretty(&spec).expect("json"),
    )
    .expect("config.json");
    let launcher = sandbox_launcher();
    let cfg = SandboxConfig {
        id: "oci-vm-test".into(),
        bundle: bundle.clone(),
        spec,
        container_dir: container_dir.clone(),
        console_socket: None,
        artifacts: GuestArtifacts {
            kernel: guest_kernel(),
            agent: oci_agent(),
        },
        launcher,
        restore_from: None,
        // Jailed, as zvm-runc runs sandboxes by default.
        jail: oci_runtime::sandbox::jail_wanted(),
    };
    let dir = container_dir.clone();
    let diagnostics = move || {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| format!("({name}: {e})"))
        };
        let console = read(sandbox::CONSOLE_LOG);
        let tail: Vec<&str> = console
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!(
            "sandbox.log:\n{}\nconsole tail:\n{}",
            read(sandbox::LOG_FILE),
            tail.join("\n")
        )
    };

    // The sandbox inherits these as the container's stdio.
    let (stdin_r, mut stdin_w) = pipe();
    let (stdout_r, stdout_w) = pipe();
    let (stderr_r, stderr_w) = pipe();
    let t0 = Instant::now();
    let created = with_stdio([&stdin_r, &stdout_w, &stderr_w], || sandbox::create(&cfg));
    eprintln!(
        "create (image, boot, agent, Create): {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    drop((stdin_r, stdout_w, stderr_w));
    let (out, err) = (collect(stdout_r), collect(stderr_r));
    let pid = created.unwrap_or_else(|e| panic!("create: {e}\n{}", diagnostics()));
    let show = || format!("stderr:\n{}\n{}", err.lock().expect("lock"), diagnostics());

    let console =
        std::fs::read_to_string(container_dir.join(sandbox::CONSOLE_LOG)).expect("console.log");
    // The agent (the VM's init) created the container; the VM is a clone of the test run's
    // template (its console starts after the restore), not a boot.
    assert!(
        console.contains("container created, init pid"),
        "the agent created the container: {}",
        show()
    );
    let notes = std::fs::read_to_string(container_dir.join(sandbox::LOG_FILE)).unwrap_or_default();
    assert!(
        notes.contains("VM restored from template"),
        "the VM was restored from a template: {}",
        show()
    );
    let mut client = SandboxClient::connect(&container_dir).expect("control socket");
    assert_eq!(client.status().expect("status"), SandboxStatus::Created);
    assert!(
        !out.lock().expect("lock").contains("ready"),
        "nothing runs before start"
    );

    let ts = Instant::now();
    client.start().expect("start");
    assert_eq!(client.status().expect("status"), SandboxStatus::Running);
    assert!(
        matches!(client.start(), Err(SandboxError::Refused(_))),
        "start twice"
    );
    wait_for(&out, "ready\n", &show);
    eprintln!(
        "start -> container output done: {:.1} s",
        ts.elapsed().as_secs_f64()
    );
    let text = out.lock().expect("lock").clone();
    for needle in [
        "env FOO=bar\n",
        "cwd /work\n",
        "uid=1000 gid=1000 groups=",
        "hostname zvm-box\n",
        "Read-only file system",
        "root write refused\n",
        "tmp-ok\n",
        "mkdir: can't create directory '/tmp/d': Permission denied\n",
        "mkdir refused\n",
    ] {
        assert!(
            text.contains(needle),
            "no {needle:?} in the container's output:\n{text}\n{}",
            show()
        );
    }
    assert!(text.contains("2000"), "additional gid: {text}");

    // stdin through the sandbox; a signal to the sandbox process reaches the container.
    stdin_w.write_all(b"hello-stdin\n").expect("stdin");
    wait_for(&out, "stdin: hello-stdin\n", &show);
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    wait_for(&out, "trapped-hup\n", &show);

    let pids = client.ps().expect("ps");
    assert!(!pids.is_empty(), "ps lists the container's processes");

    // exec: a second process in the container, its output, its exit code.
    let exec = ProcessBuilder::default()
        .args(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "echo exec-ok; hostname; exit 3".to_string(),
        ])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .expect("exec process");
    let exec_out = Arc::new(Mutex::new(Vec::new()));
    let io = ExecIo {
        stdin: Box::new(std::io::empty()),
        stdout: Box::new(SharedBuf(exec_out.clone())),
        stderr: Box::new(std::io::sink()),
    };
    let t1 = Instant::now();
    let code = SandboxClient::connect(&container_dir)
        .expect("connect")
        .exec_with(&exec, io)
        .unwrap_or_else(|e| panic!("exec: {e}\n{}", show()));
    assert_eq!(
        String::from_utf8_lossy(&exec_out.lock().expect("lock")),
        "exec-ok\nzvm-box\n"
    );
    assert_eq!(code, 3);
    eprintln!("exec: {:.1} s", t1.elapsed().as_secs_f64());

    // exec --detach: a relay process on the host stands for the guest process; its stdio
    // is the relay's, a signal to it reaches the process, its exit status is the process's.
    let detached = ProcessBuilder::default()
        .args(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "trap 'echo detached-term; exit 5' TERM; echo detached-ok; while :; do sleep 1; done"
                .to_string(),
        ])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .expect("detached process");
    let (devnull, (relay_out_r, relay_out_w)) = (File::open("/dev/null").expect("null"), pipe());
    let t3 = Instant::now();
    let relay = with_stdio([&devnull, &relay_out_w, &relay_out_w], || {
        sandbox::exec_detached(&container_dir, &sandbox_launcher(), &detached, None)
    })
    .unwrap_or_else(|e| panic!("exec --detach: {e}\n{}", show()));
    drop(relay_out_w);
    let relay_out = collect(relay_out_r);
    wait_for(&relay_out, "detached-ok\n", &show);
    eprintln!(
        "exec --detach -> output: {:.1} s",
        t3.elapsed().as_secs_f64()
    );
    // SAFETY: kill(2) on our own child, the relay.
    assert_eq!(unsafe { libc::kill(relay as i32, libc::SIGTERM) }, 0);
    assert_eq!(
        wait_exit(relay, &show),
        5,
        "the relay exits with the process's status"
    );
    assert!(
        relay_out.lock().expect("lock").contains("detached-term\n"),
        "SIGTERM forwarded: {}",
        relay_out.lock().expect("lock")
    );

    client.kill(libc::SIGTERM, false).expect("kill");
    let t2 = Instant::now();
    let exit = wait_exit(pid, &show);
    eprintln!("kill -> sandbox exit: {:.1} s", t2.elapsed().as_secs_f64());
    assert_eq!(exit, 143, "128 + SIGTERM: {}", show());
    assert_eq!(sandbox::recorded_exit(&container_dir), Some(143));
    assert!(
        matches!(
            SandboxClient::connect(&container_dir),
            Err(SandboxError::NotRunning { .. })
        ),
        "the sandbox is gone"
    );
    let log = std::fs::read_to_string(container_dir.join(sandbox::LOG_FILE)).expect("sandbox.log");
    assert!(log.contains("container exited: 143"), "{log}");
    // Without a share nothing in the guest outlives the VM: it was stopped at once, neither
    // waiting for a sync nor for a power-off (tests/oci_runc_vm.rs has the synced kind).
    assert!(log.contains("VM stopped at once: no share"), "{log}");
    let console =
        std::fs::read_to_string(container_dir.join(sandbox::CONSOLE_LOG)).unwrap_or_default();
    let tail: Vec<&str> = console.lines().rev().take(8).collect();
    eprintln!(
        "sandbox.log:\n{log}\nconsole tail (newest first):\n{}",
        tail.join("\n")
    );
    drop(stdin_w);
    let _ = std::fs::remove_dir_all(&base);
}

/// A writer into shared memory.
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn create_without_a_usable_kernel_names_the_variable_to_set() {
    let base = scratch_dir().join("oci-vm-bad");
    std::fs::create_dir_all(&base).expect("dir");
    let cfg = SandboxConfig {
        id: "bad".into(),
        bundle: base.clone(),
        spec: Spec::default(),
        container_dir: base.clone(),
        console_socket: None,
        artifacts: GuestArtifacts {
            kernel: base.join("no-vmlinux"),
            agent: base.join("no-agent"),
        },
        launcher: vec!["/bin/false".into()],
        restore_from: None,
        jail: false,
    };
    let err = sandbox::create(&cfg).expect_err("no kernel").to_string();
    assert!(
        err.contains("no guest kernel found") && err.contains("ZVM_KERNEL"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&base);
}
