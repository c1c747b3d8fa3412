//! Helpers for tests that boot real guests: the guest kernel (built once per machine
//! from Debian's linux-source), the static guest init, initramfs images, and a boot
//! runner that captures the console and enforces a time limit.

use initramfs::Entry;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Runs a build script that prints a path as its last stdout line.
fn path_from_script(script: &Path, env: &[(&str, &str)]) -> PathBuf {
    let out = Command::new("bash")
        .arg(script)
        .envs(env.iter().copied())
        .output()
        .expect("run build script");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed:\n{stderr}",
        script.display()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("a path on the last line")
            .trim(),
    );
    assert!(
        path.is_file(),
        "{} printed {} which is not a file",
        script.display(),
        path.display()
    );
    path
}

/// The project's guest kernel (vmlinux), built on first use and cached per machine.
pub fn guest_kernel() -> PathBuf {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL
        .get_or_init(|| path_from_script(&repo_root().join("guest-kernel/build.sh"), &[]))
        .clone()
}

/// The second guest kernel (`make tinyconfig` plus guest-kernel/zvm-tiny.config: no ACPI,
/// no paravirtual guest support), built on first use and cached per machine.
pub fn tiny_guest_kernel() -> PathBuf {
    path_from_script(
        &repo_root().join("guest-kernel/build.sh"),
        &[("ZVM_KERNEL_FLAVOUR", "tiny")],
    )
}

/// The static guest init binary.
pub fn guest_init() -> PathBuf {
    static INIT: OnceLock<PathBuf> = OnceLock::new();
    INIT.get_or_init(|| path_from_script(&repo_root().join("guest/build.sh"), &[]))
        .clone()
}

/// The prefix of the scratch directories' names; the test process's pid follows it.
const SCRATCH_PREFIX: &str = "zvm-test-images-";

/// A scratch directory for this test run's images. The first call in a process removes
/// the scratch directories of test processes that have ended (each holds tens of MiB of
/// images, and nothing else would remove them).
pub fn scratch_dir() -> PathBuf {
    static SWEPT: OnceLock<()> = OnceLock::new();
    let tmp = std::env::temp_dir();
    SWEPT.get_or_init(|| remove_ended_scratch_dirs(&tmp));
    let dir = tmp.join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Removes `tmp`'s scratch directories whose process no longer runs.
fn remove_ended_scratch_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn base_entries() -> Vec<Entry> {
    let init = std::fs::read(guest_init()).expect("read guest init");
    let mut entries: Vec<Entry> = ["dev", "proc", "sys", "tmp", "bin", "sbin", "etc"]
        .iter()
        .map(|d| Entry::Dir {
            path: (*d).into(),
            mode: 0o755,
        })
        .collect();
    entries.push(Entry::CharDev {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    entries.push(Entry::File {
        path: "init".into(),
        mode: 0o755,
        data: init,
    });
    entries
}

/// The test initramfs: the static init alone (uncompressed newc).
pub fn test_initramfs() -> PathBuf {
    let path = scratch_dir().join("test-initramfs.cpio");
    let bytes = initramfs::pack_uncompressed(&base_entries()).expect("pack");
    std::fs::write(&path, bytes).expect("write initramfs");
    path
}

/// The busybox variant: Debian's busybox-static as /bin/busybox with its applets linked,
/// and `script` as /zvm-test.sh (run by the init with `zvm.mode=script`).
pub fn busybox_initramfs(script: &str) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "busybox-static is not installed (apt-get install busybox-static); .ci/run installs it"
    );
    let mut entries = base_entries();
    entries.push(Entry::File {
        path: "bin/busybox".into(),
        mode: 0o755,
        data: std::fs::read(busybox).expect("read busybox"),
    });
    let applets = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&applets.stdout)
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        entries.push(Entry::Symlink {
            path: format!("bin/{applet}"),
            target: "busybox".into(),
        });
    }
    entries.push(Entry::File {
        path: "zvm-test.sh".into(),
        mode: 0o755,
        data: script.as_bytes().to_vec(),
    });
    let tool = guest_init().with_file_name("zvm-vsock-tool");
    entries.push(Entry::File {
        path: "bin/zvm-vsock-tool".into(),
        mode: 0o755,
        data: std::fs::read(&tool).expect("guest vsock tool (guest/build.sh)"),
    });
    let path = scratch_dir().join("busybox-initramfs.cpio");
    std::fs::write(&path, initramfs::pack_uncompressed(&entries).expect("pack")).expect("write");
    path
}

/// The static OCI guest agent (`zvm-oci-agent`), built by guest/build.sh beside the init.
pub fn oci_agent() -> PathBuf {
    let path = guest_init().with_file_name("zvm-oci-agent");
    assert!(
        path.is_file(),
        "{} is missing: guest/build.sh builds it",
        path.display()
    );
    path
}

/// A container rootfs in `dir`: Debian's busybox-static as /bin/busybox with its applets
/// linked in /bin, plus the empty directories `dirs` (mount points, working directories).
pub fn busybox_rootfs(dir: &Path, dirs: &[&str]) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "busybox-static is not installed (apt-get install busybox-static); .ci/run installs it"
    );
    std::fs::create_dir_all(dir.join("bin")).expect("rootfs/bin");
    std::fs::copy(busybox, dir.join("bin/busybox")).expect("copy busybox");
    let applets = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&applets.stdout)
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let link = dir.join("bin").join(applet);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("busybox", &link).expect("applet symlink");
    }
    for d in dirs {
        std::fs::create_dir_all(dir.join(d.trim_start_matches('/'))).expect("rootfs dir");
    }
}

/// The `zvm` binary of this build (`cargo test --workspace` builds it for zvm's own CLI
/// tests; `scripts/test.sh` builds it first), or the one in `$ZVM_TEST_BIN_DIR` when set
/// (a copy of `zvm` and `zvm-runc` that later builds cannot relink under a running test).
pub fn zvm_binary() -> PathBuf {
    let path = match std::env::var_os("ZVM_TEST_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join("zvm"),
        None => {
            let exe = std::env::current_exe().expect("test binary path");
            // target/<profile>/deps/<test> -> target/<profile>/zvm
            exe.parent()
                .and_then(Path::parent)
                .map(|d| d.join("zvm"))
                .expect("target dir")
        }
    };
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p zvm` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// What a `zvm` process produced.
#[derive(Debug)]
pub struct ZvmRun {
    /// Exit code (None if killed).
    pub code: Option<i32>,
    /// The guest console (zvm's stdout).
    pub stdout: String,
    /// zvm's own messages.
    pub stderr: String,
    /// Whether it was killed because `limit` passed.
    pub timed_out: bool,
    /// Its process id.
    pub pid: u32,
}

/// Runs the `zvm` binary with `args`, killing it after `limit`.
pub fn run_zvm(args: &[&str], limit: Duration) -> ZvmRun {
    run_zvm_in(None, args, limit)
}

/// Like [`run_zvm`], inside network namespace `netns` when given.
pub fn run_zvm_in(netns: Option<&NetNs>, args: &[&str], limit: Duration) -> ZvmRun {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name]).arg(zvm_binary());
            c
        }
        None => Command::new(zvm_binary()),
    };
    run_to_end(command.args(args), std::process::Stdio::null(), limit)
}

/// Runs `command` with `stdin`, collecting its stdout and stderr, killing it after `limit`.
pub fn run_to_end(command: &mut Command, stdin: std::process::Stdio, limit: Duration) -> ZvmRun {
    use std::process::Stdio;
    let mut child = command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zvm");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait zvm") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ZvmRun {
        code: status.and_then(|s| s.code()),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        timed_out: status.is_none(),
        pid: child.id(),
    }
}

/// Packs `rootfs` into the `dir://` store at `store` as the flist `flist`, with `zvm flist pack`.
pub fn pack_flist(rootfs: &Path, store: &Path, flist: &Path) {
    let out = Command::new(zvm_binary())
        .args(["flist", "pack", "-s"])
        .arg(format!("dir://{}", store.display()))
        .arg("-o")
        .arg(flist)
        .arg(rootfs)
        .output()
        .expect("zvm flist pack");
    assert!(
        out.status.success(),
        "zvm flist pack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes an ext4 image of `size_mib` MiB at `path` holding `files` (name, contents), with
/// Debian's mkfs.ext4 (e2fsprogs).
pub fn ext4_image(path: &Path, size_mib: u64, files: &[(&str, &str)]) {
    let content = path.with_extension("content");
    let _ = std::fs::remove_dir_all(&content);
    std::fs::create_dir_all(&content).expect("content dir");
    for (name, text) in files {
        std::fs::write(content.join(name), text).expect("write content");
    }
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(path)
        .arg(format!("{size_mib}M"))
        .output()
        .expect("mkfs.ext4 (apt-get install e2fsprogs)");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads a file out of an ext4 image with debugfs (no mount needed).
pub fn read_from_ext4(image: &Path, name: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat /{name}"))
        .arg(image)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub mod api_client;
mod netns;
mod procs;
mod vsock;

pub use netns::NetNs;
pub use procs::processes_mentioning;
pub use vsock::{vsock_connect, vsock_request};

/// A zvm process watched while it runs (`zvm --api-sock` or `zvm run`): its console
/// (stdout) and its own messages (stderr) are collected as they arrive; killed on drop.
#[derive(Debug)]
pub struct LiveZvm {
    /// The process.
    pub child: std::process::Child,
    /// Its API socket, if it serves one.
    pub sock: Option<PathBuf>,
    console: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Collects what `from` gives, as text, on a thread of its own.
pub(crate) fn collect(
    mut from: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("output")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

impl LiveZvm {
    /// Spawns `zvm --api-sock SOCK --id ID` and waits until the socket answers.
    pub fn api(sock: &Path, id: &str) -> LiveZvm {
        let _ = std::fs::remove_file(sock);
        let mut command = Command::new(zvm_binary());
        command.arg("--api-sock").arg(sock).args(["--id", id]);
        let zvm = LiveZvm::spawn(&mut command, Some(sock.to_path_buf()));
        api_client::wait_for_socket(sock, Duration::from_secs(10));
        zvm
    }

    /// Spawns `command` (a zvm command line), stdin from /dev/null.
    pub fn spawn(command: &mut Command, sock: Option<PathBuf>) -> LiveZvm {
        use std::process::Stdio;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn zvm");
        let console = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        LiveZvm {
            child,
            sock,
            console,
            stderr,
        }
    }

    /// The console so far.
    pub fn console(&self) -> String {
        self.console.lock().expect("console").clone()
    }

    /// zvm's own messages so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// zvm's messages and the console's last lines, for assertion messages.
    pub fn show(&self) -> String {
        let console = self.console();
        let tail: Vec<&str> = console.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "\nzvm stderr:\n{}\nconsole tail:\n{}",
            self.stderr(),
            tail.join("\n")
        )
    }

    /// The executable of the process: zvm hands VMM and API mode to the lean zvm-vmm
    /// beside it (same pid).
    pub fn exe(&self) -> PathBuf {
        std::fs::read_link(format!("/proc/{}/exe", self.child.id())).expect("the process's exe")
    }

    /// One API request; returns the status and the JSON body (`Null` when empty).
    pub fn call(
        &self,
        method: &str,
        uri: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let text = body.map(serde_json::Value::to_string);
        self.call_text(method, uri, text.as_deref())
    }

    /// One API request with a body sent as it is (bad JSON included); returns the status
    /// and the body parsed as JSON (a string when it is not, `Null` when empty).
    pub fn call_text(
        &self,
        method: &str,
        uri: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let sock = self.sock.as_deref().expect("this zvm serves no API");
        let (status, answer) = api_client::request(sock, method, uri, body);
        let json = if answer.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&answer).unwrap_or(serde_json::Value::String(answer))
        };
        (status, json)
    }

    /// A request that must be answered 204.
    pub fn ok(&self, method: &str, uri: &str, body: serde_json::Value) {
        let (status, answer) = self.call(method, uri, Some(&body));
        assert_eq!(
            status,
            204,
            "{method} {uri} {body}: {answer}{}",
            self.show()
        );
    }

    /// Waits until the console holds `marker`; panics if zvm exits first or `limit` passes.
    pub fn wait_for(&mut self, marker: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.console().contains(marker) {
            if let Some(status) = self.child.try_wait().expect("wait") {
                std::thread::sleep(Duration::from_millis(200));
                panic!("zvm exited ({status}) before {marker:?}:{}", self.show());
            }
            assert!(
                Instant::now() < deadline,
                "no {marker:?} within {limit:?}:{}",
                self.show()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `limit` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                std::thread::sleep(Duration::from_millis(100)); // let the readers drain
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LiveZvm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The template cache this test run's container VMs share (`ZVM_TEMPLATE_DIR`): one
/// template per VM shape, made by the first test that needs it.
pub fn template_dir() -> PathBuf {
    repo_root().join("target/test-templates")
}

/// `zvm-runc --root <root>` of this build, finding the project's kernel and agent, with the
/// test run's template cache.
pub fn zvm_runc(root: &Path) -> Command {
    let mut command = Command::new(zvm_binary().with_file_name("zvm-runc"));
    command
        .arg("--root")
        .arg(root)
        .env("ZVM_KERNEL", guest_kernel())
        .env("ZVM_OCI_AGENT", oci_agent())
        .env("ZVM_TEMPLATE_DIR", template_dir());
    command
}
