//! Harness for the host tests: a busybox rootfs, an agent process on a Unix socket, a client.

#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use agent_protocol::{
    handshake, read_frame, write_frame, AgentMessage, Event, ExitStatus, Request, RequestBody,
    ResponseBody, Rootfs,
};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "hostname", "ls", "sleep", "touch", "grep", "pwd", "test", "true",
    "false", "kill", "mkdir", "stat", "readlink", "tty", "env", "ps", "wc", "stty",
];

/// Whether this machine can create the namespaces the agent uses; prints why not.
pub fn can_unshare() -> bool {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("/bin/true");
    // SAFETY: unshare in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            let flags = libc::CLONE_NEWNS
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWNET
                | libc::CLONE_NEWPID;
            if libc::unshare(flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match cmd.status() {
        Ok(s) if s.success() => true,
        Ok(s) => {
            eprintln!("SKIP: unshare probe exited with {s}");
            false
        }
        Err(e) => {
            eprintln!("SKIP: cannot create namespaces here (unshare: {e}); the agent's host tests need root");
            false
        }
    }
}

/// A cgroup v2 root usable here, if any.
fn cgroup2_root() -> PathBuf {
    for p in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if Path::new(p).join("cgroup.controllers").is_file() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("/nonexistent-cgroup2")
}

/// A temp dir whose `rootfs/` holds a static busybox and its applets.
pub fn busybox_rootfs() -> tempfile::TempDir {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: install Debian's busybox-static (scripts/install-deps.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    for d in [
        "bin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "etc",
        "home/user",
        "data",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("etc/secret"), "top secret\n").unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    dir
}

/// The default spec (as `runc spec` makes it) with a writable root, a unique cgroup and the
/// given changes applied to its JSON.
pub fn spec(
    name: &str,
    change: impl FnOnce(&mut serde_json::Value),
) -> Box<agent_protocol::oci_spec::runtime::Spec> {
    let mut v = serde_json::to_value(agent_protocol::oci_spec::runtime::Spec::default()).unwrap();
    v["root"]["readonly"] = false.into();
    v["hostname"] = "zvm-test".into();
    v["linux"]["cgroupsPath"] = format!("/zvm-agent-test/{name}-{}", std::process::id()).into();
    change(&mut v);
    Box::new(serde_json::from_value(v).unwrap())
}

/// Sets `process.args`.
pub fn args(v: &mut serde_json::Value, a: &[&str]) {
    v["process"]["args"] = a
        .iter()
        .map(|s| serde_json::Value::from(*s))
        .collect::<Vec<_>>()
        .into();
}

/// `sh -c SCRIPT`.
pub fn sh(v: &mut serde_json::Value, script: &str) {
    args(v, &["sh", "-c", script]);
}

/// What a finished process printed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub status: Option<ExitStatus>,
}

/// An agent process and a connection to it.
pub struct Agent {
    child: Child,
    conn: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
    events: Vec<Event>,
    pub rootfs: tempfile::TempDir,
}

impl Agent {
    /// Starts `zvm-oci-agent --unix-socket` and connects (hello exchanged).
    pub fn start() -> Agent {
        Self::start_with(&[])
    }

    /// [`Self::start`] with further agent arguments.
    pub fn start_with(extra: &[&str]) -> Agent {
        let rootfs = busybox_rootfs();
        let sock = rootfs.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_zvm-oci-agent"))
            .arg("--unix-socket")
            .arg(&sock)
            .arg("--cgroup-root")
            .arg(cgroup2_root())
            .args(extra)
            .env("ZVM_AGENT_LOG", "debug")
            // As zvm's PVM template hands it to init; glibc ignores unknown tunables.
            .env("GLIBC_TUNABLES", "zvm.test=1")
            .spawn()
            .unwrap();
        let (conn, reader) = connect(&sock);
        Agent {
            child,
            conn,
            reader,
            next_id: 1,
            events: Vec::new(),
            rootfs,
        }
    }

    /// Ends the connection (the agent goes on with `--keep-listening`).
    pub fn disconnect(&mut self) {
        self.conn.shutdown(std::net::Shutdown::Both).unwrap();
    }

    /// Connects again (hello exchanged); events already received stay queued.
    pub fn connect(&mut self) {
        (self.conn, self.reader) = connect(&self.rootfs.path().join("agent.sock"));
    }
}

/// Connects to the agent's socket (waiting for it to appear) and exchanges hellos.
fn connect(sock: &Path) -> (UnixStream, BufReader<UnixStream>) {
    let begin = Instant::now();
    let mut conn = loop {
        match UnixStream::connect(sock) {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    begin.elapsed() < Duration::from_secs(30),
                    "agent socket never appeared: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    // A broken agent fails the test instead of hanging it.
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let hello = handshake(&mut conn, "host-test").unwrap();
    assert!(hello.name.starts_with("zvm-oci-agent"), "{hello:?}");
    let reader = BufReader::new(conn.try_clone().unwrap());
    (conn, reader)
}

impl Agent {
    pub fn rootfs_path(&self) -> String {
        self.rootfs.path().join("rootfs").display().to_string()
    }

    /// Sends a request and returns its response; events arriving meanwhile are kept.
    pub fn request(&mut self, body: RequestBody) -> Result<ResponseBody, String> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.conn, &Request { id, body }).unwrap();
        self.response(id)
    }

    /// Sends raw JSON as one frame and returns the response with `id`.
    pub fn raw_request(&mut self, id: u64, json: &str) -> Result<ResponseBody, String> {
        let mut frame = (json.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(json.as_bytes());
        self.conn.write_all(&frame).unwrap();
        self.response(id)
    }

    fn response(&mut self, id: u64) -> Result<ResponseBody, String> {
        loop {
            match read_frame::<_, AgentMessage>(&mut self.reader).unwrap() {
                AgentMessage::Response { id: got, result } if got == id => return result,
                AgentMessage::Response { id: got, .. } => {
                    panic!("response for {got}, waiting for {id}")
                }
                AgentMessage::Event(e) => self.events.push(e),
            }
        }
    }

    /// Create with the test rootfs.
    pub fn create(
        &mut self,
        spec: Box<agent_protocol::oci_spec::runtime::Spec>,
        terminal: bool,
    ) -> Result<ResponseBody, String> {
        let rootfs = Rootfs::Directory {
            path: self.rootfs_path(),
        };
        self.request(RequestBody::Create {
            spec,
            rootfs,
            terminal,
            share: None,
        })
    }

    /// Create + Start.
    pub fn run(&mut self, spec: Box<agent_protocol::oci_spec::runtime::Spec>) {
        self.create(spec, false).unwrap();
        assert_eq!(
            self.request(RequestBody::Start).unwrap(),
            ResponseBody::Done
        );
    }

    /// Reads events until `stream` has written `needle` to its stdout; every event stays
    /// queued for [`Self::wait`].
    pub fn wait_for_stdout(&mut self, stream: &str, needle: &str) {
        loop {
            let stdout: String = self
                .events
                .iter()
                .filter_map(|e| match e {
                    Event::Output {
                        stream: s,
                        fd: 1,
                        data,
                    } if s == stream => Some(String::from_utf8_lossy(data).into_owned()),
                    _ => None,
                })
                .collect();
            if stdout.contains(needle) {
                return;
            }
            match read_frame::<_, AgentMessage>(&mut self.reader).unwrap() {
                AgentMessage::Event(e) => self.events.push(e),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Collects the output of `stream` until its Exited event.
    pub fn wait(&mut self, stream: &str) -> Outcome {
        let mut out = Outcome::default();
        let mut pending = std::mem::take(&mut self.events).into_iter();
        loop {
            let e = match pending.next() {
                Some(e) => e,
                None => match read_frame::<_, AgentMessage>(&mut self.reader).unwrap() {
                    AgentMessage::Event(e) => e,
                    other => panic!("unexpected {other:?}"),
                },
            };
            match e {
                Event::Output {
                    stream: s,
                    fd,
                    data,
                } if s == stream => {
                    let text = String::from_utf8_lossy(&data).into_owned();
                    if fd == 2 {
                        out.stderr.push_str(&text);
                    } else {
                        out.stdout.push_str(&text);
                    }
                }
                Event::Exited { stream: s, status } if s == stream => {
                    out.status = Some(status);
                    self.events.extend(pending);
                    return out;
                }
                other => self.events.push(other),
            }
        }
    }

    /// Shutdown; the agent process exits 0.
    pub fn shutdown(mut self) {
        assert_eq!(
            self.request(RequestBody::Shutdown).unwrap(),
            ResponseBody::Done
        );
        let status = self.child.wait().unwrap();
        assert!(status.success(), "agent exited with {status}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        if let Ok(None) = self.child.try_wait() {
            // The agent exits when the connection ends; give it a moment, then make sure.
            for _ in 0..200 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
