//! Unit tests of the lifecycle with a scripted fake backend; hooks are shell scripts that
//! append to the same log the fake backend writes, so the log shows the order of everything.

use super::*;
use crate::backend::{ExecOutcome, ExecRequest};
use crate::cli::exec_process;
use std::io::Write;
use std::sync::Mutex;

#[path = "lifecycle_hook_tests.rs"]
mod hooks;

/// A backend that only logs calls and keeps a status; its "container process" is the test
/// process itself (always alive).
struct Fake {
    log: PathBuf,
    status: Mutex<BackendStatus>,
    /// The status a pause froze, which resume gives back.
    frozen: Mutex<BackendStatus>,
    exit: i32,
}

impl Fake {
    fn new(log: &Path) -> Arc<Fake> {
        Arc::new(Fake {
            log: log.to_path_buf(),
            status: Mutex::new(BackendStatus::Created),
            frozen: Mutex::new(BackendStatus::Created),
            exit: 3,
        })
    }
    fn note(&self, what: &str) {
        let mut f = std::fs::File::options()
            .append(true)
            .create(true)
            .open(&self.log)
            .unwrap();
        writeln!(f, "backend {what}").unwrap();
    }
    fn set(&self, s: BackendStatus) {
        *self.status.lock().unwrap() = s;
    }
}

impl ContainerBackend for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn create(&self, _c: &ContainerRef<'_>, _o: &CreateOptions) -> Result<i32, BackendError> {
        self.note("create");
        self.set(BackendStatus::Created);
        Ok(std::process::id() as i32)
    }
    fn start(&self, _c: &ContainerRef<'_>) -> Result<(), BackendError> {
        self.note("start");
        self.set(BackendStatus::Running);
        Ok(())
    }
    fn kill(&self, _c: &ContainerRef<'_>, signal: i32, all: bool) -> Result<(), BackendError> {
        self.note(&format!("kill {signal} {all}"));
        if signal == libc::SIGKILL {
            self.set(BackendStatus::Stopped(Some(137)));
        }
        Ok(())
    }
    fn status(&self, _c: &ContainerRef<'_>) -> Result<BackendStatus, BackendError> {
        Ok(*self.status.lock().unwrap())
    }
    fn exec(
        &self,
        _c: &ContainerRef<'_>,
        req: &ExecRequest<'_>,
    ) -> Result<ExecOutcome, BackendError> {
        self.note(&format!("exec {:?}", req.process.args()));
        Ok(ExecOutcome::Exited(5))
    }
    fn ps(&self, _c: &ContainerRef<'_>) -> Result<Vec<i32>, BackendError> {
        Ok(vec![1, 7])
    }
    fn wait(&self, _c: &ContainerRef<'_>) -> Result<Option<i32>, BackendError> {
        self.note("wait");
        self.set(BackendStatus::Stopped(Some(self.exit)));
        Ok(Some(self.exit))
    }
    fn delete(&self, _c: &ContainerRef<'_>) -> Result<(), BackendError> {
        self.note("delete");
        Ok(())
    }
    fn pause(&self, _c: &ContainerRef<'_>) -> Result<(), BackendError> {
        self.note("pause");
        *self.frozen.lock().unwrap() = *self.status.lock().unwrap();
        self.set(BackendStatus::Paused);
        Ok(())
    }
    fn resume(&self, _c: &ContainerRef<'_>) -> Result<(), BackendError> {
        self.note("resume");
        self.set(*self.frozen.lock().unwrap());
        Ok(())
    }
    fn checkpoint(
        &self,
        _c: &ContainerRef<'_>,
        image: &Path,
        leave_running: bool,
    ) -> Result<(), BackendError> {
        self.note(&format!("checkpoint {} {leave_running}", image.display()));
        if !leave_running {
            self.set(BackendStatus::Stopped(Some(137)));
        }
        Ok(())
    }
    fn restore(
        &self,
        _c: &ContainerRef<'_>,
        _o: &CreateOptions,
        image: &Path,
    ) -> Result<i32, BackendError> {
        self.note(&format!("restore {}", image.display()));
        self.set(BackendStatus::Running);
        Ok(std::process::id() as i32)
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    bundle: PathBuf,
    log: PathBuf,
    fake: Arc<Fake>,
    rt: Runtime,
}

fn write_config(bundle: &Path, hooks: &str, extra_process: &str) {
    let config = format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"hooks":{hooks},
            "annotations":{{"org.example.k":"v"}},
            "process":{{"user":{{"uid":0,"gid":0}},"args":["/bin/true"],"cwd":"/","env":["A=1","PATH=/bin"]{extra_process}}}}}"#
    );
    std::fs::write(bundle.join("config.json"), config).unwrap();
}

/// A bundle whose config has `hooks` (JSON) and `extra` process fields.
fn env_with(hooks: &str, extra_process: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    write_config(&bundle, hooks, extra_process);
    let log = tmp.path().join("log");
    let fake = Fake::new(&log);
    let rt = Runtime::with_backend(&tmp.path().join("root"), fake.clone()).unwrap();
    Env {
        _tmp: tmp,
        bundle,
        log,
        fake,
        rt,
    }
}

fn env() -> Env {
    env_with("{}", "")
}

impl Env {
    fn req(&self) -> CreateRequest {
        CreateRequest {
            bundle: self.bundle.clone(),
            detached: true,
            ..Default::default()
        }
    }
    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
    /// A hook entry running a script that logs its kind, argv[1] and its stdin's status field.
    fn hook(&self, kind: &str, exit: i32) -> String {
        let script = self.bundle.join(format!("{kind}.sh"));
        let body = format!(
            "#!/bin/sh\nstate=$(cat)\nstatus=$(echo \"$state\" | sed 's/.*\"status\":\"\\([a-z]*\\)\".*/\\1/')\n\
             echo \"hook {kind} $status\" >> {log}\necho \"$state\" > {dir}/{kind}.json\nexit {exit}\n",
            log = self.log.display(),
            dir = self.bundle.display()
        );
        std::fs::write(&script, body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        format!(r#"{{"path":"{}"}}"#, script.display())
    }
}

/// A bundle with one hook of each kind; `failing` exits 1.
fn env_all_hooks(failing: Option<&str>) -> Env {
    let e = env();
    let kinds = [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ];
    let hooks: Vec<String> = kinds
        .iter()
        .map(|k| {
            format!(
                r#""{k}":[{}]"#,
                e.hook(k, if Some(*k) == failing { 1 } else { 0 })
            )
        })
        .collect();
    write_config(&e.bundle, &format!("{{{}}}", hooks.join(",")), "");
    e
}

#[test]
fn create_start_kill_delete_transitions_and_state() {
    let e = env();
    let rec = e.rt.create("c1", &e.req()).unwrap();
    assert_eq!(rec.status, ContainerState::Created);
    let st = e.rt.state("c1").unwrap();
    assert_eq!(st.status, ContainerState::Created);
    assert_eq!(st.pid, std::process::id() as i32);
    assert_eq!(st.bundle, std::fs::canonicalize(&e.bundle).unwrap());
    assert_eq!(st.rootfs, st.bundle.join("rootfs"));
    assert_eq!(st.oci_version, OCI_VERSION);
    assert_eq!(
        st.annotations.get("org.example.k").map(String::as_str),
        Some("v")
    );
    let json: serde_json::Value = serde_json::to_value(&st).unwrap();
    for key in [
        "ociVersion",
        "id",
        "pid",
        "status",
        "bundle",
        "rootfs",
        "created",
        "owner",
        "annotations",
    ] {
        assert!(json.get(key).is_some(), "state JSON lacks {key}: {json}");
    }
    assert_eq!(json["status"], "created");

    e.rt.kill("c1", libc::SIGUSR1, false).unwrap();
    e.rt.start("c1").unwrap();
    assert_eq!(e.rt.state("c1").unwrap().status, ContainerState::Running);
    let err = e.rt.start("c1").unwrap_err();
    assert!(
        matches!(err, LifecycleError::WrongState { op: "start", .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("container c1 is running: start needs a created container"),
        "{err}"
    );
    let err = e.rt.delete("c1", false).unwrap_err();
    assert!(matches!(err, LifecycleError::NotStopped { .. }), "{err}");
    assert!(err.to_string().contains("use --force"), "{err}");
    e.rt.kill("c1", libc::SIGTERM, true).unwrap();
    assert_eq!(e.rt.ps("c1").unwrap(), vec![1, 7]);

    // The process ends: stopped, pid 0; kill, start, ps and exec are refused.
    e.fake.set(BackendStatus::Stopped(Some(0)));
    let st = e.rt.state("c1").unwrap();
    assert_eq!((st.status, st.pid), (ContainerState::Stopped, 0));
    let err = e.rt.kill("c1", 15, false).unwrap_err();
    assert!(
        err.to_string()
            .contains("kill needs a created, running or paused container"),
        "{err}"
    );
    assert!(matches!(
        e.rt.start("c1"),
        Err(LifecycleError::WrongState { .. })
    ));
    assert!(matches!(
        e.rt.ps("c1"),
        Err(LifecycleError::WrongState { .. })
    ));
    let p = exec_process(
        &e.rt.process_of("c1").unwrap(),
        &["ls".into()],
        &[],
        None,
        false,
    );
    let req = ExecRequest {
        process: &p,
        console_socket: None,
        detach: false,
        pid_file: None,
    };
    assert!(matches!(
        e.rt.exec("c1", &req),
        Err(LifecycleError::WrongState { op: "exec", .. })
    ));

    e.rt.delete("c1", false).unwrap();
    assert!(matches!(
        e.rt.state("c1"),
        Err(LifecycleError::State(StateError::NotFound(_)))
    ));
    assert_eq!(
        e.log(),
        vec![
            "backend create",
            "backend kill 10 false",
            "backend start",
            "backend kill 15 true",
            "backend delete"
        ]
    );
}

#[test]
fn list_exec_and_errors_for_unknown_ids() {
    let e = env();
    e.rt.create("b", &e.req()).unwrap();
    e.rt.create("a", &e.req()).unwrap();
    let ids: Vec<String> = e.rt.list().unwrap().into_iter().map(|v| v.id).collect();
    assert_eq!(ids, vec!["a", "b"]);
    assert!(!e.rt.list().unwrap()[0].owner.is_empty());
    let p = exec_process(
        &e.rt.process_of("a").unwrap(),
        &["ls".into()],
        &[],
        None,
        false,
    );
    let req = ExecRequest {
        process: &p,
        console_socket: None,
        detach: false,
        pid_file: None,
    };
    assert_eq!(e.rt.exec("a", &req).unwrap(), ExecOutcome::Exited(5));
    for r in [
        e.rt.start("zz").err(),
        e.rt.kill("zz", 9, false).err(),
        e.rt.state("zz").err(),
        e.rt.delete("zz", false).err(),
    ] {
        let err = r.unwrap();
        assert!(
            err.to_string().contains("container zz does not exist"),
            "{err}"
        );
    }
    e.rt.delete("zz", true).unwrap();
    let err = e.rt.create("a", &e.req()).unwrap_err();
    assert!(
        err.to_string().contains("container a already exists"),
        "{err}"
    );
    let err = e.rt.create("../x", &e.req()).unwrap_err();
    assert!(err.to_string().contains("invalid container id"), "{err}");
}

#[test]
fn a_bad_bundle_leaves_nothing_behind() {
    let e = env();
    std::fs::remove_file(e.bundle.join("config.json")).unwrap();
    let err = e.rt.create("c", &e.req()).unwrap_err();
    assert!(
        matches!(err, LifecycleError::Bundle(BundleError::MissingConfig(_))),
        "{err}"
    );
    assert!(e.rt.store().ids().unwrap().is_empty());
    assert!(!e.rt.store().root().join("c").exists());
}

#[test]
fn terminal_and_console_socket_must_agree() {
    let e = env_with("{}", r#","terminal":true"#);
    let err = e.rt.create("c", &e.req()).unwrap_err();
    assert!(err.to_string().contains("no --console-socket"), "{err}");
    let e = env();
    let req = CreateRequest {
        console_socket: Some("/tmp/x.sock".into()),
        ..e.req()
    };
    let err = e.rt.create("c", &req).unwrap_err();
    assert!(err.to_string().contains("needs process.terminal"), "{err}");
    assert!(e.log().is_empty(), "nothing reached the backend");
}

#[test]
fn force_delete_kills_a_running_container() {
    let e = env();
    e.rt.create("c", &e.req()).unwrap();
    e.rt.start("c").unwrap();
    e.rt.delete("c", true).unwrap();
    assert_eq!(
        e.log(),
        vec![
            "backend create",
            "backend start",
            "backend kill 9 true",
            "backend delete"
        ]
    );
    assert!(e.rt.store().ids().unwrap().is_empty());
}

#[test]
fn run_waits_returns_the_exit_status_and_deletes() {
    let e = env();
    let req = CreateRequest {
        detached: false,
        ..e.req()
    };
    assert_eq!(e.rt.run("r", &req).unwrap(), 3);
    assert_eq!(
        e.log(),
        vec![
            "backend create",
            "backend start",
            "backend wait",
            "backend delete"
        ]
    );
    assert!(e.rt.store().ids().unwrap().is_empty());
    let req = CreateRequest {
        detached: true,
        ..e.req()
    };
    assert_eq!(e.rt.run("d", &req).unwrap(), 0);
    assert_eq!(e.rt.state("d").unwrap().status, ContainerState::Running);
}

#[test]
fn exec_process_merges_env_cwd_and_tty() {
    let base = oci_spec::runtime::ProcessBuilder::default()
        .args(vec!["sh".to_string()])
        .env(vec!["A=1".to_string(), "B=2".to_string()])
        .cwd("/")
        .terminal(true)
        .build()
        .unwrap();
    let p = exec_process(
        &base,
        &["ls".into(), "-l".into()],
        &["B=3".into(), "C=4".into()],
        Some(Path::new("/tmp")),
        false,
    );
    assert_eq!(p.args().as_deref().unwrap(), &["ls", "-l"]);
    assert_eq!(p.env().as_deref().unwrap(), &["A=1", "B=3", "C=4"]);
    assert_eq!(p.cwd(), Path::new("/tmp"));
    assert_eq!(p.terminal(), Some(false));
}

#[test]
fn pause_resume_checkpoint_and_restore_follow_runc() {
    let e = env_all_hooks(None);
    e.rt.create("c1", &e.req()).unwrap();
    // A created container can be paused; a paused one cannot start, but can be killed.
    e.rt.pause("c1").unwrap();
    assert_eq!(e.rt.state("c1").unwrap().status, ContainerState::Paused);
    assert_eq!(
        serde_json::to_value(e.rt.state("c1").unwrap()).unwrap()["status"],
        "paused"
    );
    assert!(matches!(
        e.rt.start("c1"),
        Err(LifecycleError::WrongState { .. })
    ));
    let err = e.rt.pause("c1").unwrap_err().to_string();
    assert!(
        err.contains("pause needs a created or running container"),
        "{err}"
    );
    e.rt.resume("c1").unwrap();
    let err = e.rt.resume("c1").unwrap_err().to_string();
    assert!(err.contains("resume needs a paused container"), "{err}");
    e.rt.start("c1").unwrap();

    // Checkpoint with --leave-running keeps the container; without, it is gone (runc).
    let image = e.bundle.join("ckpt");
    let req = CheckpointRequest {
        image_path: image.clone(),
        leave_running: true,
    };
    e.rt.checkpoint("c1", &req).unwrap();
    assert_eq!(e.rt.state("c1").unwrap().status, ContainerState::Running);
    let req = CheckpointRequest {
        leave_running: false,
        ..req
    };
    e.rt.checkpoint("c1", &req).unwrap();
    assert!(matches!(
        e.rt.state("c1"),
        Err(LifecycleError::State(StateError::NotFound(_)))
    ));
    let err = e.rt.checkpoint("c1", &req).unwrap_err();
    assert!(
        matches!(err, LifecycleError::State(StateError::NotFound(_))),
        "{err}"
    );

    // Restore brings it back, running, under the same id; detached it returns at once.
    let status = e.rt.restore("c1", &e.req(), &image).unwrap();
    assert_eq!(status, 0);
    assert_eq!(e.rt.state("c1").unwrap().status, ContainerState::Running);
    let err = e.rt.restore("c1", &e.req(), &image).unwrap_err();
    assert!(err.to_string().contains("exists"), "{err}");
    let log = e.log();
    let expect: [String; 7] = [
        "backend pause".to_string(),
        "backend resume".into(),
        format!("backend checkpoint {} true", image.display()),
        format!("backend checkpoint {} false", image.display()),
        "backend delete".into(),
        "hook poststop stopped".into(),
        format!("backend restore {}", image.display()),
    ];
    for want in &expect {
        assert!(log.contains(want), "{want} not in {log:?}");
    }
}
