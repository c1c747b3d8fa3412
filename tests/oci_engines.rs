//! Container engines drive zvm-runc as they drive runc (issue #14): podman (Debian's, with
//! conmon) and containerd (Debian's, through its runc v2 shim with zvm-runc as the runc
//! binary, driven by `ctr`). Each test starts its engine with private state under a
//! scratch directory (podman: its own `--root`, `--runroot`, vfs storage and
//! containers.conf; containerd: its own config, root, state and socket, stopped at the
//! end), imports a busybox image built here (no registry), and runs one container VM
//! (restored from the test run's template) through which it checks many things: a
//! read-write and a read-only host directory bind-mounted (`-v HOST:CTR`, over
//! virtio-fs; podman adds its own host files, /etc/hosts and others), `-e`, `-w`,
//! `--user`, the container's stdout and stderr, an exec with stdin, its output and exit
//! status, the process list, logs, and a stop by SIGTERM whose exit status the engine
//! reports. The only skip is a missing engine (printed; scripts/install-deps.sh
//! installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use zvm_integration_tests::{busybox_rootfs, guest_kernel, oci_agent, scratch_dir, template_dir};

#[path = "oci_engines/containerd.rs"]
mod containerd;
#[path = "oci_engines/podman.rs"]
mod podman;

use containerd::{oci_archive, Containerd};
use podman::Podman;

/// A container's start: a template restore, or a template build (a boot) when the test
/// run has none yet; minutes on a busy PVM host.
const START_LIMIT: Duration = Duration::from_secs(720);
/// An exec, a stop or a kill: the guest's own fork, exec and exit (emulated kernel code).
const STEP_LIMIT: Duration = Duration::from_secs(240);

/// The container's program: says it started (with what it reads from the host directory
/// on /data), writes to /data and tries /ro, writes to stderr, and exits with 5 on SIGTERM
/// (`wait` returns at once on a trapped signal; a plain `sleep` would delay it).
const SCRIPT: &str = r#"trap 'echo got-term; exit 5' TERM
echo "started FOO=$FOO cwd=$(pwd) uid=$(id -u) data=$(cat /data/in.txt)"
echo from-container > /data/out.txt
touch /ro/x 2>/dev/null || echo ro-refused
echo to-stderr >&2
while true; do sleep 100 & wait $!; done"#;

/// The exec's program: reads a line from stdin, reports what it sees, exits with 4.
const EXEC_SCRIPT: &str =
    r#"read line; echo "exec-out $line X=$X FOO=$FOO cwd=$(pwd) uid=$(id -u)"; exit 4"#;

/// The binaries an engine needs, or a printed reason to skip.
fn have_all(engine: &str, binaries: &[&str]) -> bool {
    let missing: Vec<&str> = binaries
        .iter()
        .copied()
        .filter(|b| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "SKIP: {engine} test: {} not installed (scripts/install-deps.sh installs it)",
            missing.join(", ")
        );
    }
    missing.is_empty()
}

/// This build's zvm-runc (a copy from `ZVM_TEST_BIN_DIR` when set).
fn runc_binary() -> PathBuf {
    zvm_integration_tests::zvm_binary().with_file_name("zvm-runc")
}

/// The variables zvm-runc needs to use this checkout's kernel and agent and the test run's
/// templates.
fn zvm_env() -> Vec<(String, String)> {
    let path = |p: PathBuf| p.display().to_string();
    vec![
        ("ZVM_KERNEL".into(), path(guest_kernel())),
        ("ZVM_OCI_AGENT".into(), path(oci_agent())),
        ("ZVM_TEMPLATE_DIR".into(), path(template_dir())),
    ]
}

/// Host directories for the container: `volume` (read-write, open to every uid, holding
/// `in.txt`) and `readonly`.
fn host_dirs(base: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let (rw, ro) = (base.join("volume"), base.join("readonly"));
    for d in [&rw, &ro] {
        std::fs::create_dir_all(d).expect("host dir");
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    std::fs::write(rw.join("in.txt"), "from-host\n").expect("in.txt");
    (rw, ro)
}

/// Checks what the container did to the host directories.
fn check_host_dirs(rw: &Path, ro: &Path) {
    assert_eq!(
        std::fs::read_to_string(rw.join("out.txt")).unwrap_or_default(),
        "from-container\n",
        "the container's write reached the host directory"
    );
    assert!(!ro.join("x").exists(), "a read-only mount took a write");
}

/// A busybox root file system (with /etc/passwd naming uid 65534) as a tar archive.
fn busybox_tar(base: &Path) -> PathBuf {
    let rootfs = base.join("image-rootfs");
    busybox_rootfs(&rootfs, &["/proc", "/sys", "/dev", "/tmp", "/work", "/etc"]);
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnobody:x:65534:\n").expect("group");
    let tar = base.join("rootfs.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        "tar the rootfs",
    );
    tar
}

/// Runs `command` to its end (killed after `limit`) with `stdin` as its input.
fn output_with(command: &mut Command, stdin: &str, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    if let Some(mut input) = child.stdin.take() {
        let _ = std::io::Write::write_all(&mut input, stdin.as_bytes());
    }
    let pid = child.id();
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: kill(2) with signal 0 only checks that the process exists.
            if unsafe { libc::kill(pid as i32, 0) } != 0 {
                return;
            }
        }
        // SAFETY: kill(2) of our own child, which has outlived its limit.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let out = child.wait_with_output().expect("wait");
    let _ = killer.join();
    out
}

/// Runs `command` (no input) and fails the test unless it succeeds; returns its stdout.
fn run_ok(command: &mut Command, what: &str) -> String {
    run_ok_within(command, what, STEP_LIMIT)
}

/// [`run_ok`] with a time limit of its own.
fn run_ok_within(command: &mut Command, what: &str, limit: Duration) -> String {
    let out = output_with(command, "", limit);
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `read` until its text contains `needle` or `limit` passes; returns the last text.
fn wait_for(mut read: impl FnMut() -> String, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = read();
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Kills and reaps a child we started, if it still runs.
fn stop_child(child: &mut Child, signal: i32) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: kill(2) of our own, unreaped child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn podman_runs_a_container_through_zvm_runc() {
    if !have_all("podman", &["podman", "conmon"]) {
        return;
    }
    let base = scratch_dir().join(format!("podman-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("scratch");
    let tar = busybox_tar(&base);
    let podman = Podman::new(&base);
    run_ok(
        podman
            .cmd()
            .arg("import")
            .arg(&tar)
            .arg("localhost/zvm-busybox:test"),
        "podman import",
    );

    let (rw, ro) = host_dirs(&base);
    let started = Instant::now();
    let id = run_ok_within(
        podman
            .cmd()
            .args(["run", "--detach", "--name", "c1", "--network", "none"])
            .arg("-v")
            .arg(format!("{}:/data", rw.display()))
            .arg("-v")
            .arg(format!("{}:/ro:ro", ro.display()))
            .args(["-e", "FOO=bar", "-w", "/work", "--user", "65534:65534"])
            .args(["localhost/zvm-busybox:test", "sh", "-c", SCRIPT]),
        "podman run --detach",
        START_LIMIT,
    );
    assert!(!id.trim().is_empty(), "podman run printed no id");
    let logs = wait_for(|| podman.logs("c1"), "to-stderr", START_LIMIT);
    eprintln!("podman: container started in {:?}", started.elapsed());
    assert!(
        logs.contains("started FOO=bar cwd=/work uid=65534 data=from-host\nro-refused\n")
            && logs.contains("to-stderr\n"),
        "podman logs: {logs}"
    );
    check_host_dirs(&rw, &ro);

    let t = Instant::now();
    let exec = output_with(
        podman
            .cmd()
            .args(["exec", "-i", "-e", "X=1", "-w", "/tmp", "--user", "0", "c1"])
            .args(["sh", "-c", EXEC_SCRIPT]),
        "piped\n",
        STEP_LIMIT,
    );
    eprintln!("podman: exec took {:?}", t.elapsed());
    let exec_out = String::from_utf8_lossy(&exec.stdout);
    assert_eq!(
        exec_out,
        "exec-out piped X=1 FOO=bar cwd=/tmp uid=0\n",
        "stderr: {}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert_eq!(exec.status.code(), Some(4), "podman exec's exit status");

    let ps = run_ok(
        podman
            .cmd()
            .args(["ps", "--format", "{{.Names}} {{.Status}}"]),
        "podman ps",
    );
    assert!(ps.contains("c1 Up"), "podman ps: {ps}");

    let t = Instant::now();
    run_ok(
        podman.cmd().args(["stop", "--time", "120", "c1"]),
        "podman stop",
    );
    eprintln!("podman: stop took {:?}", t.elapsed());
    let state = run_ok(
        podman.cmd().args([
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            "c1",
        ]),
        "podman inspect",
    );
    assert_eq!(state.trim(), "exited 5", "SIGTERM reached the trap");
    assert!(podman.logs("c1").contains("got-term"));
    run_ok(podman.cmd().args(["rm", "c1"]), "podman rm");
}

#[test]
fn containerd_runs_a_container_through_zvm_runc() {
    if !have_all(
        "containerd",
        &["containerd", "ctr", "containerd-shim-runc-v2"],
    ) {
        return;
    }
    let base = scratch_dir().join(format!("containerd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("scratch");
    let archive = oci_archive(&base, &busybox_tar(&base), "localhost/zvm-busybox:test");
    let (rw, ro) = host_dirs(&base);
    let containerd = Containerd::start(&base.join("daemon"));
    run_ok(
        containerd
            .ctr()
            .args(["image", "import", "--snapshotter", "native"])
            .arg(&archive),
        "ctr image import",
    );

    // `ctr run` stays attached: the container's stdout and stderr are its own, and it exits
    // with the container's status.
    let (out_path, err_path) = (base.join("run.out"), base.join("run.err"));
    let started = Instant::now();
    let mut run = containerd
        .ctr()
        .args(["run", "--rm", "--snapshotter", "native"])
        .arg("--runc-binary")
        .arg(runc_binary())
        .arg("--runc-root")
        .arg(base.join("zvm-runc"))
        .arg("--fifo-dir")
        .arg(base.join("fifo"))
        .args(["--env", "FOO=bar", "--cwd", "/work", "--mount"])
        .arg(format!(
            "type=bind,src={},dst=/data,options=rbind:rw",
            rw.display()
        ))
        .arg("--mount")
        .arg(format!(
            "type=bind,src={},dst=/ro,options=rbind:ro",
            ro.display()
        ))
        .args(["localhost/zvm-busybox:test", "c1", "sh", "-c", SCRIPT])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("run.out"))
        .stderr(std::fs::File::create(&err_path).expect("run.err"))
        .spawn()
        .expect("ctr run");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let err = wait_for(|| read(&err_path), "to-stderr", START_LIMIT);
    eprintln!("containerd: container started in {:?}", started.elapsed());
    assert!(
        err.contains("to-stderr\n"),
        "stderr: {err}\nstdout: {}\ncontainerd: {}",
        read(&out_path),
        containerd.log()
    );
    assert_eq!(
        read(&out_path),
        "started FOO=bar cwd=/work uid=0 data=from-host\nro-refused\n"
    );
    check_host_dirs(&rw, &ro);

    let t = Instant::now();
    let exec = output_with(
        containerd
            .ctr()
            .args([
                "task",
                "exec",
                "--exec-id",
                "e1",
                "--cwd",
                "/tmp",
                "--user",
                "65534",
            ])
            .args(["c1", "sh", "-c", EXEC_SCRIPT]),
        "piped\n",
        STEP_LIMIT,
    );
    eprintln!("containerd: exec took {:?}", t.elapsed());
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout),
        "exec-out piped X= FOO=bar cwd=/tmp uid=65534\n",
        "stderr: {}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert_eq!(exec.status.code(), Some(4), "ctr task exec's exit status");

    let ps = run_ok(containerd.ctr().args(["task", "ps", "c1"]), "ctr task ps");
    assert!(
        ps.lines().skip(1).any(|l| l
            .split_whitespace()
            .next()
            .is_some_and(|p| p.parse::<u32>().is_ok())),
        "ctr task ps lists the container's processes: {ps}"
    );

    let t = Instant::now();
    run_ok(
        containerd
            .ctr()
            .args(["task", "kill", "--signal", "SIGTERM", "c1"]),
        "ctr task kill",
    );
    let deadline = Instant::now() + STEP_LIMIT;
    let status = loop {
        if let Ok(Some(status)) = run.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("containerd: stop took {:?}", t.elapsed());
    stop_child(&mut run, libc::SIGKILL);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(5),
        "ctr run exits with the container's status; stdout: {}",
        read(&out_path)
    );
    assert!(
        read(&out_path).ends_with("got-term\n"),
        "{}",
        read(&out_path)
    );
}
