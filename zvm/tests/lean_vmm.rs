//! `zvm run` hands a plain VM to the lean executable `zvm-vmm` in the same process: the
//! running VM's process is zvm-vmm (unless `ZVM_VMM=none`), it holds no hand-over fd,
//! and zvm-vmm refuses a hand-over it cannot trust with one line and exit code 2. API mode
//! (`zvm --api-sock`) is served by zvm-vmm too.

mod common;

use common::{guest_code, no_kvm, shared_reader, tiny_elf};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the tiny guest with `vmm_env` as `ZVM_VMM` (None: unset) until its first
/// output; returns the VM process's executable and fd targets, then stops it.
fn running_vm(kernel: &Path, vmm_env: Option<&str>) -> (String, Vec<String>, String) {
    let args = ["run", "--kernel", path_arg(kernel)];
    running_zvm(
        &[&args[..], &["--memory", "32M", "--console", "stdio"]].concat(),
        vmm_env,
    )
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Runs zvm with `args` (a VM of the tiny guest on stdout) as [`running_vm`] does.
fn running_zvm(args: &[&str], vmm_env: Option<&str>) -> (String, Vec<String>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zvm"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match vmm_env {
        Some(v) => cmd.env("ZVM_VMM", v),
        None => cmd.env_remove("ZVM_VMM"),
    };
    let mut zvm = cmd.spawn().expect("spawn zvm run");
    let console = shared_reader(zvm.stdout.take().expect("stdout"));
    let stderr = shared_reader(zvm.stderr.take().expect("stderr"));
    // A dot after the 'B': the VM has run a while, its stop signals are installed (the
    // VMM installs them once the VM is built, as the guest starts printing).
    wait_for("the guest's first output", || {
        let console = console.lock().expect("console");
        console.contains(&b'B') && console.contains(&b'.')
    });
    let proc_dir = format!("/proc/{}", zvm.id());
    let exe = std::fs::read_link(format!("{proc_dir}/exe"))
        .expect("exe")
        .display()
        .to_string();
    let fds = std::fs::read_dir(format!("{proc_dir}/fd"))
        .expect("fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(zvm.id() as libc::pid_t, libc::SIGTERM) };
    let status = zvm.wait().expect("wait");
    let errors = || String::from_utf8_lossy(&stderr.lock().expect("stderr")).into_owned();
    // The reader thread may still be reading the last line.
    wait_for("zvm's last message", || {
        errors().contains("zvm: stopped by signal")
    });
    let errors = errors();
    assert_eq!(status.code(), Some(130), "{errors}");
    (exe, fds, errors)
}

#[test]
fn a_plain_vm_runs_in_zvm_vmm_without_the_hand_over_fd() {
    if let Some(why) = no_kvm() {
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let kernel = dir.path().join("tiny.elf");
    std::fs::write(&kernel, tiny_elf(&guest_code())).expect("kernel");
    let (exe, fds, errors) = running_vm(&kernel, None);
    assert!(exe.ends_with("/zvm-vmm"), "{exe}");
    assert!(
        !fds.iter().any(|f| f.contains("zvm-handover")),
        "the hand-over fd is closed once read: {fds:?}"
    );
    assert!(!errors.contains("WARN"), "{errors}");
    // ZVM_VMM=none keeps the VM in zvm; a ZVM_VMM that cannot run warns and does too.
    let (exe, _, _) = running_vm(&kernel, Some("none"));
    assert!(exe.ends_with("/zvm"), "{exe}");
    let missing = dir.path().join("no-such-vmm");
    let (exe, _, errors) = running_vm(&kernel, missing.to_str());
    assert!(exe.ends_with("/zvm"), "{exe}");
    assert!(errors.contains("the VM runs in zvm"), "{errors}");
}

/// Runs `vmm` with `file` open as its hand-over fd: fd 3, the only one beside stdio (std
/// opens everything else close-on-exec), as zvm leaves its memfd.
fn vmm_reading_hand_over_file(vmm: &Path, file: &Path) -> std::process::Output {
    let script = format!(
        "exec 3<{} && exec {} --handover-fd 3",
        file.display(),
        vmm.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("sh")
}

#[test]
fn zvm_vmm_refuses_a_hand_over_it_cannot_trust() {
    let vmm = Path::new(env!("CARGO_BIN_EXE_zvm")).with_file_name("zvm-vmm");
    let refused = |args: &[&str], stdin: Stdio| {
        let out = Command::new(&vmm)
            .args(args)
            .stdin(stdin)
            .output()
            .expect("run zvm-vmm");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("zvm-vmm: "), "{err}");
        err
    };
    assert!(refused(&[], Stdio::null()).contains("usage"));
    assert!(refused(&["--handover-fd", "x"], Stdio::null()).contains("usage"));
    assert!(refused(&["--handover-fd", "77"], Stdio::null()).contains("hand-over fd 77"));
    // Garbage on the hand-over fd.
    let dir = tempfile::tempdir().expect("dir");
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"{\"resources\": 1}").expect("junk");
    let out = vmm_reading_hand_over_file(&vmm, &junk);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("zvm-vmm: invalid hand-over"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Starts `zvm --api-sock` with `vmm_env` as `ZVM_VMM` (None: unset), asks `GET /`;
/// returns the API process's executable and the answer, then stops it.
fn api_process(dir: &Path, vmm_env: Option<&str>) -> (String, String) {
    use std::io::{Read, Write};
    let sock = dir.join("api.sock");
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zvm"));
    cmd.arg("--api-sock")
        .arg(&sock)
        .args(["--id", "lean-api"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match vmm_env {
        Some(v) => cmd.env("ZVM_VMM", v),
        None => cmd.env_remove("ZVM_VMM"),
    };
    let mut zvm = cmd.spawn().expect("spawn zvm --api-sock");
    let mut stream = None;
    wait_for("the API socket", || {
        stream = std::os::unix::net::UnixStream::connect(&sock).ok();
        stream.is_some()
    });
    let mut stream = stream.expect("connected");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let exe = std::fs::read_link(format!("/proc/{}/exe", zvm.id()))
        .expect("exe")
        .display()
        .to_string();
    let _ = zvm.kill();
    let _ = zvm.wait();
    (exe, answer)
}

#[test]
fn api_mode_is_served_by_zvm_vmm() {
    let dir = tempfile::tempdir().expect("dir");
    let (exe, answer) = api_process(dir.path(), None);
    assert!(exe.ends_with("/zvm-vmm"), "{exe}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"id\":\"lean-api\""), "{answer}");
    let (exe, answer) = api_process(dir.path(), Some("none"));
    assert!(exe.ends_with("/zvm"), "{exe}");
    assert!(answer.contains("\"id\":\"lean-api\""), "{answer}");
}

#[test]
fn a_config_file_vm_runs_in_zvm_vmm_and_ends_on_a_signal_as_before() {
    if let Some(why) = no_kvm() {
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let kernel = dir.path().join("tiny.elf");
    std::fs::write(&kernel, tiny_elf(&guest_code())).expect("kernel");
    let config = dir.path().join("vm.json");
    let json = serde_json::json!({
        "boot-source": {"kernel_image_path": kernel},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
    });
    std::fs::write(&config, json.to_string()).expect("config");
    let args = ["--config-file", path_arg(&config), "--no-api"];
    let (exe, fds, errors) = running_zvm(&args, None);
    assert!(exe.ends_with("/zvm-vmm"), "{exe}");
    assert!(!fds.iter().any(|f| f.contains("zvm-handover")), "{fds:?}");
    assert!(!errors.contains("WARN"), "{errors}");
    let (exe, _, _) = running_zvm(&args, Some("none"));
    assert!(exe.ends_with("/zvm"), "{exe}");
}

#[test]
fn zvm_vmm_refuses_a_hostile_api_hand_over() {
    let vmm = Path::new(env!("CARGO_BIN_EXE_zvm")).with_file_name("zvm-vmm");
    let dir = tempfile::tempdir().expect("dir");
    let handover = |job: &str| {
        format!(
            r#"{{"job":{{"api":{job}}},"metrics":null,"shutdown_timeout_secs":0,"log_level":"info","started_ns_ago":0}}"#
        )
    };
    let long_id = "x".repeat(5000);
    for (job, why) in [
        (
            r#"{"api_sock":null,"config_file":null,"id":"a","seccomp":true}"#.to_string(),
            "API socket or a config file",
        ),
        (
            r#"{"api_sock":"","config_file":null,"id":"a","seccomp":true}"#.to_string(),
            "empty path",
        ),
        (
            format!(r#"{{"api_sock":"/s","config_file":null,"id":"{long_id}","seccomp":true}}"#),
            "too long",
        ),
        (
            r#"{"api_sock":"/s","config_file":null,"id":"a","seccomp":true,"jailer":1}"#
                .to_string(),
            "unknown field",
        ),
    ] {
        let file = dir.path().join("handover");
        std::fs::write(&file, handover(&job)).expect("hand-over");
        let out = vmm_reading_hand_over_file(&vmm, &file);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("zvm-vmm: invalid hand-over"), "{err}");
        assert!(err.contains(why), "{why}: {err}");
    }
}
