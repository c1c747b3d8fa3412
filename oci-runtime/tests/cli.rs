//! The real `zvm-runc` binary, driven as containerd or a shell script would, with `--root`
//! in a temporary directory and the test-only host-process backend
//! (`ZVM_RUNC_BACKEND=host-process`: container processes run on the host, no VM).
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_zvm-runc");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    /// Runs zvm-runc with `--root`; stdout and stderr go to files (a created container
    /// inherits them, so pipes would stay open after zvm-runc exits).
    fn runc(&self, args: &[&str]) -> Run {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (out, err) = (
            self.tmp.path().join(format!("out{n}")),
            self.tmp.path().join(format!("err{n}")),
        );
        let status = Command::new(BIN)
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env("ZVM_RUNC_BACKEND", "host-process")
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .status()
            .unwrap();
        Run {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&out).unwrap(),
            stderr: std::fs::read_to_string(&err).unwrap(),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let r = self.runc(args);
        assert_eq!(r.code, 0, "zvm-runc {args:?} failed: {}", r.stderr);
        r.stdout
    }

    fn fails(&self, args: &[&str], message: &str) {
        let r = self.runc(args);
        assert_eq!(
            r.code, 1,
            "zvm-runc {args:?} should fail with 1: {} {}",
            r.stdout, r.stderr
        );
        assert!(
            r.stderr.contains(message),
            "zvm-runc {args:?}: {:?} lacks {message:?}",
            r.stderr
        );
    }

    fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    fn wait_status(&self, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.state(id);
            if s["status"] == want || Instant::now() > deadline {
                assert_eq!(s["status"], want, "{s}");
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A bundle whose process is `sh -c script` with hooks `hooks` (JSON object).
    fn bundle(&self, name: &str, script: &str, hooks: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {
                "user": {"uid": 0, "gid": 0},
                "args": ["/bin/sh", "-c", script],
                "env": ["PATH=/usr/bin:/bin", "GREETING=hello"],
                "cwd": "/"
            },
            "annotations": {"org.example.test": "yes"},
            "hooks": serde_json::from_str::<Value>(hooks).unwrap()
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        dir
    }
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Waits (up to 10 s) until no live process has `needle` in its command line.
fn assert_no_process_mentions(needle: &Path) {
    let needle = needle.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<i64> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i64>().ok())
            .filter(|&pid| alive(pid))
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                    .unwrap_or(false)
            })
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes {left:?} still mention {needle}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !matches!(
                s.rsplit(')').next().unwrap_or("").trim().chars().next(),
                Some('Z' | 'X')
            )
        })
        .unwrap_or(false)
}

#[test]
fn create_start_state_kill_delete() {
    let e = Env::new();
    let mark = e.tmp.path().join("mark");
    let b = e.bundle(
        "b",
        &format!("echo $GREETING > {}; exec sleep 60", mark.display()),
        "{}",
    );
    let pid_file = e.tmp.path().join("c1.pid");
    e.ok(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "c1",
    ]);
    let s = e.state("c1");
    assert_eq!(s["status"], "created");
    assert_eq!(s["id"], "c1");
    assert_eq!(s["ociVersion"].as_str().unwrap().chars().next(), Some('1'));
    assert_eq!(
        s["bundle"],
        std::fs::canonicalize(&b).unwrap().display().to_string()
    );
    assert_eq!(s["annotations"]["org.example.test"], "yes");
    let pid = s["pid"].as_i64().unwrap();
    assert!(pid > 0 && alive(pid));
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    assert!(!mark.exists(), "the program must not run before start");

    e.ok(&["start", "c1"]);
    assert_eq!(wait_for_file(&mark).trim(), "hello");
    assert_eq!(e.state("c1")["status"], "running");
    e.fails(&["start", "c1"], "start needs a created container");
    e.fails(&["delete", "c1"], "use --force");

    e.ok(&["kill", "c1", "TERM"]);
    let s = e.wait_status("c1", "stopped");
    assert_eq!(s["pid"], 0);
    e.fails(
        &["kill", "c1"],
        "kill needs a created, running or paused container",
    );
    e.fails(&["start", "c1"], "start needs a created container");
    e.ok(&["delete", "c1"]);
    e.fails(&["state", "c1"], "container c1 does not exist");
    e.fails(&["delete", "c1"], "does not exist");
    e.ok(&["delete", "--force", "c1"]);
}

#[test]
fn kill_takes_names_and_numbers_and_delete_force_kills() {
    let e = Env::new();
    let b = e.bundle(
        "b",
        "trap 'exit 42' USR1; while :; do sleep 0.05; done",
        "{}",
    );
    for (id, sig) in [("n1", "SIGKILL"), ("n2", "9"), ("n3", "kill")] {
        e.ok(&["create", "-b", b.to_str().unwrap(), id]);
        e.ok(&["start", id]);
        e.ok(&["kill", id, sig]);
        e.wait_status(id, "stopped");
        e.ok(&["delete", id]);
    }
    e.ok(&["create", "-b", b.to_str().unwrap(), "k"]);
    e.fails(&["kill", "k", "SIGNOPE"], "unknown signal");
    e.fails(&["kill", "k", "65"], "unknown signal");
    // A created container can be killed too.
    e.ok(&["kill", "k", "KILL"]);
    e.wait_status("k", "stopped");
    e.ok(&["delete", "k"]);
    e.ok(&["create", "-b", b.to_str().unwrap(), "f"]);
    e.ok(&["start", "f"]);
    let pid = e.state("f")["pid"].as_i64().unwrap();
    e.ok(&["delete", "--force", "f"]);
    assert!(!alive(pid), "delete --force must kill the container");
    e.fails(&["state", "f"], "does not exist");
}

#[test]
fn run_exits_with_the_container_status_and_passes_stdio() {
    let e = Env::new();
    let b = e.bundle("b", "echo out-$GREETING; echo err >&2; exit 7", "{}");
    let r = e.runc(&["run", "--bundle", b.to_str().unwrap(), "r1"]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert_eq!(r.stdout, "out-hello\n");
    assert_eq!(r.stderr, "err\n");
    e.fails(&["state", "r1"], "does not exist");
    let b = e.bundle("k", "kill -TERM $$", "{}");
    assert_eq!(
        e.runc(&["run", "-b", b.to_str().unwrap(), "r2"]).code,
        128 + 15
    );
    // run --detach returns at once and leaves it running.
    let b = e.bundle("d", "exec sleep 60", "{}");
    e.ok(&["run", "--detach", "-b", b.to_str().unwrap(), "r3"]);
    assert_eq!(e.state("r3")["status"], "running");
    e.ok(&["delete", "-f", "r3"]);
}

#[test]
fn list_ps_and_exec() {
    let e = Env::new();
    assert_eq!(
        e.ok(&["list"])
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    );
    assert_eq!(e.ok(&["list", "--format", "json"]).trim(), "[]");
    let b = e.bundle("b", "exec sleep 60", "{}");
    e.ok(&["create", "-b", b.to_str().unwrap(), "two"]);
    e.ok(&["run", "-d", "-b", b.to_str().unwrap(), "one"]);
    assert_eq!(e.ok(&["list", "-q"]), "one\ntwo\n");
    let list: Value = serde_json::from_str(&e.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list[0]["id"], "one");
    assert_eq!(list[0]["status"], "running");
    assert_eq!(list[1]["status"], "created");
    assert_eq!(list[0]["owner"], "root");
    let table = e.ok(&["list"]);
    assert!(table.lines().nth(1).unwrap().starts_with("one "), "{table}");

    let pid = e.state("one")["pid"].as_i64().unwrap();
    let pids: Vec<i64> = serde_json::from_str(&e.ok(&["ps", "--format", "json", "one"])).unwrap();
    assert!(pids.contains(&pid), "{pids:?} lacks {pid}");
    assert!(e.ok(&["ps", "one"]).starts_with("PID\n"));

    let r = e.runc(&[
        "exec",
        "--env",
        "X=1",
        "one",
        "/bin/sh",
        "-c",
        "echo $GREETING$X; exit 3",
    ]);
    assert_eq!((r.code, r.stdout.as_str()), (3, "hello1\n"), "{}", r.stderr);
    let proc_file = e.tmp.path().join("process.json");
    std::fs::write(&proc_file, r#"{"args":["/bin/sh","-c","pwd; exit 4"],"cwd":"/sub","user":{"uid":0,"gid":0},"env":["PATH=/bin"]}"#).unwrap();
    let r = e.runc(&["exec", "--process", proc_file.to_str().unwrap(), "one"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stdout.trim().ends_with("/b/rootfs/sub"), "{}", r.stdout);
    e.fails(&["exec", "one"], "exec needs a command");
    e.ok(&["kill", "one", "KILL"]);
    e.wait_status("one", "stopped");
    e.fails(
        &["exec", "one", "/bin/true"],
        "exec needs a created or running container",
    );
    e.fails(&["ps", "one"], "ps needs a created or running container");
    e.ok(&["delete", "one"]);
    e.ok(&["delete", "-f", "two"]);
    assert_eq!(e.ok(&["list", "-q"]), "");
}

#[test]
fn hooks_get_the_state_on_stdin() {
    let e = Env::new();
    let out = e.tmp.path().join("hooks");
    std::fs::create_dir(&out).unwrap();
    let hook = |kind: &str| {
        format!(
            r#"{{"path":"/bin/sh","args":["sh","-c","cat > {}/{kind}.json"]}}"#,
            out.display()
        )
    };
    let kinds = [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ];
    let hooks = format!(
        "{{{}}}",
        kinds
            .iter()
            .map(|k| format!(r#""{k}":[{}]"#, hook(k)))
            .collect::<Vec<_>>()
            .join(",")
    );
    let b = e.bundle("b", "exec sleep 60", &hooks);
    e.ok(&["create", "-b", b.to_str().unwrap(), "h"]);
    let pid = e.state("h")["pid"].clone();
    let read = |k: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(out.join(format!("{k}.json"))).unwrap())
            .unwrap()
    };
    for k in ["prestart", "createRuntime", "createContainer"] {
        let s = read(k);
        assert_eq!(
            (s["id"].as_str(), s["status"].as_str()),
            (Some("h"), Some("created")),
            "{k}: {s}"
        );
        assert_eq!(s["pid"], pid, "{k}");
        assert_eq!(
            s["bundle"],
            std::fs::canonicalize(&b).unwrap().display().to_string()
        );
        assert_eq!(s["annotations"]["org.example.test"], "yes");
    }
    assert!(!out.join("startContainer.json").exists());
    e.ok(&["start", "h"]);
    assert_eq!(read("startContainer")["status"], "created");
    assert_eq!(read("poststart")["status"], "running");
    e.ok(&["delete", "--force", "h"]);
    assert_eq!(read("poststop")["status"], "stopped");

    // A failing createRuntime hook fails create and leaves no container.
    let bad =
        r#"{"createRuntime":[{"path":"/bin/sh","args":["sh","-c","echo denied >&2; exit 1"]}]}"#;
    let b = e.bundle("bad", "exec sleep 60", bad);
    e.fails(
        &["create", "-b", b.to_str().unwrap(), "x"],
        "createRuntime hook /bin/sh failed (exit status 1): denied",
    );
    e.fails(&["state", "x"], "does not exist");
    // ... and no container process is left waiting for a start that will never come.
    assert_no_process_mentions(&b);
    // A hook past its timeout is killed and fails create.
    let slow = r#"{"prestart":[{"path":"/bin/sleep","args":["sleep","30"],"timeout":1}]}"#;
    let b = e.bundle("slow", "exec sleep 60", slow);
    e.fails(
        &["create", "-b", b.to_str().unwrap(), "y"],
        "timed out after 1 s",
    );
    assert_no_process_mentions(&b);
}

#[test]
fn bad_bundles_and_ids_are_clear_errors() {
    let e = Env::new();
    let b = e.bundle("b", "true", "{}");
    let bs = b.to_str().unwrap();
    let config = std::fs::read_to_string(b.join("config.json")).unwrap();
    std::fs::write(b.join("config.json"), config.replace("1.0.2", "2.0.0")).unwrap();
    e.fails(
        &["create", "-b", bs, "c"],
        "unsupported ociVersion \"2.0.0\"",
    );
    std::fs::write(b.join("config.json"), "{\"ociVersion\": \"1.0.2\",").unwrap();
    e.fails(
        &["create", "-b", bs, "c"],
        "is not a valid OCI runtime config",
    );
    std::fs::remove_file(b.join("config.json")).unwrap();
    e.fails(&["create", "-b", bs, "c"], "has no config.json");
    std::fs::write(b.join("config.json"), config).unwrap();
    std::fs::remove_dir(b.join("rootfs")).unwrap();
    e.fails(&["create", "-b", bs, "c"], "rootfs");
    e.fails(
        &["create", "-b", "/nonexistent/bundle", "c"],
        "is not a directory",
    );
    std::fs::create_dir(b.join("rootfs")).unwrap();
    e.fails(&["create", "-b", bs, "a/b"], "invalid container id");
    e.ok(&["create", "-b", bs, "c"]);
    e.fails(&["create", "-b", bs, "c"], "container c already exists");
    e.ok(&["delete", "-f", "c"]);
    // Usage errors exit 2.
    assert_eq!(e.runc(&["create"]).code, 2);
    assert_eq!(e.runc(&["frobnicate"]).code, 2);
}

#[test]
fn spec_features_version_and_json_logs() {
    let e = Env::new();
    let dir = e.tmp.path().join("spec");
    std::fs::create_dir(&dir).unwrap();
    e.ok(&["spec", "--bundle", dir.to_str().unwrap()]);
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["args"][0], "sh");
    assert_eq!(spec["process"]["terminal"], true);
    assert_eq!(spec["root"]["path"], "rootfs");
    e.fails(
        &["spec", "--bundle", dir.to_str().unwrap()],
        "exists; remove it first",
    );
    let rootless = e.tmp.path().join("rootless");
    std::fs::create_dir(&rootless).unwrap();
    e.ok(&["spec", "--rootless", "-b", rootless.to_str().unwrap()]);
    assert!(std::fs::read_to_string(rootless.join("config.json"))
        .unwrap()
        .contains("uidMappings"));

    let f: Value = serde_json::from_str(&e.ok(&["features"])).unwrap();
    assert_eq!(f["ociVersionMin"], "1.0.0");
    assert!(f["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h == "createRuntime"));

    let v = e.ok(&["--version"]);
    let lines: Vec<&str> = v.lines().collect();
    assert_eq!(lines.len(), 3, "{v}");
    assert!(lines[0].starts_with("zvm-runc version "));
    assert!(lines[1].starts_with("commit: "));
    assert!(lines[2].starts_with("spec: 1."));

    let log = e.tmp.path().join("log.json");
    let r = e.runc(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "--systemd-cgroup",
        "state",
        "nope",
    ]);
    assert_eq!(r.code, 1);
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["level"], "error");
    assert_eq!(line["msg"], "container nope does not exist");
    assert!(r.stderr.contains("container nope does not exist"));
}

#[test]
fn a_rootfs_with_the_program_runs_chrooted() {
    // SAFETY: geteuid(2) cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let busybox = Path::new("/bin/busybox");
    if !root || !busybox.is_file() {
        eprintln!("skipped: needs root and /bin/busybox (busybox-static) for a chroot rootfs");
        return;
    }
    let e = Env::new();
    let b = e.bundle("b", "echo in > /output; pwd > /cwd", "{}");
    let bin = b.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bin.join("sh")).unwrap();
    let config = std::fs::read_to_string(b.join("config.json")).unwrap();
    std::fs::write(
        b.join("config.json"),
        config.replace(r#""cwd":"/""#, r#""cwd":"/work""#),
    )
    .unwrap();
    let r = e.runc(&["run", "-b", b.to_str().unwrap(), "chr"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(b.join("rootfs/output")).unwrap(),
        "in\n"
    );
    assert_eq!(
        std::fs::read_to_string(b.join("rootfs/cwd")).unwrap(),
        "/work\n"
    );
}
