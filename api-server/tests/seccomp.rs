//! The serving thread runs under its own seccomp filter: it is named `zvm_api`, the
//! kernel reports a filter on it (and none when turned off), and a system call outside
//! its allowlist, made by a controller on that thread, ends the process with zvm's
//! blocked-call exit code. One test in its own binary, since it forks.

use api_server::{
    ApiRequest, ApiResponse, ApiServer, ApiServerConfig, ControllerError, VmmController,
};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

/// Records the thread it runs on; opens a file when asked for the instance info.
struct Probe {
    tid: Arc<Mutex<Option<i32>>>,
    open_a_file: bool,
}

impl VmmController for Probe {
    fn handle(&mut self, _: ApiRequest) -> Result<ApiResponse, ControllerError> {
        // SAFETY: gettid has no preconditions.
        *self
            .tid
            .lock()
            .map_err(|_| ControllerError::new("poisoned"))? = Some(unsafe { libc::gettid() });
        if self.open_a_file {
            // Opening a file is refused (EPERM) without ending the process...
            let open = std::fs::File::open("/etc/hostname");
            if open.err().and_then(|e| e.raw_os_error()) != Some(libc::EPERM) {
                // SAFETY: ending the forked child with a code the parent does not expect.
                unsafe { libc::_exit(3) };
            }
            // ...a call off the list ends it.
            // SAFETY: a raw system call the filter stops.
            unsafe { libc::syscall(libc::SYS_mkdirat, libc::AT_FDCWD, c"/x".as_ptr(), 0) };
        }
        Ok(ApiResponse::Empty)
    }
}

fn api_thread_status(seccomp: bool) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("api.sock");
    let tid = Arc::new(Mutex::new(None));
    let mut config = ApiServerConfig::new(&path);
    config.seccomp = seccomp;
    let server = ApiServer::start(
        config,
        Probe {
            tid: tid.clone(),
            open_a_file: false,
        },
    )
    .expect("start");
    let mut s = UnixStream::connect(&path).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 204"), "{reply}");
    let tid = tid.lock().expect("lock").expect("the controller ran");
    let status =
        std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).expect("thread status");
    server.stop().expect("stop");
    status
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or_default()
}

#[test]
fn the_api_thread_is_filtered_and_blocked_calls_end_the_process() {
    // Log at debug level to stderr, with timestamps, as zvm can: the API thread's
    // logging must fit within its filter too.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let on = api_thread_status(true);
    assert_eq!(field(&on, "Name:"), "zvm_api");
    assert_eq!(
        field(&on, "Seccomp:"),
        "2",
        "a filter is installed on the API thread"
    );
    let off = api_thread_status(false);
    assert_eq!(field(&off, "Seccomp:"), "0", "seccomp: false installs none");

    // SAFETY: fork in a single-test binary; the child serves one request and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: the child never outlives 20 s, even if something hangs.
        unsafe { libc::alarm(20) };
        let dir = std::env::temp_dir().join(format!("zvm-api-seccomp-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("api.sock");
        let probe = Probe {
            tid: Arc::new(Mutex::new(None)),
            open_a_file: true,
        };
        let Ok(_server) = ApiServer::start(ApiServerConfig::new(&path), probe) else {
            unsafe { libc::_exit(2) };
        };
        if let Ok(mut s) = UnixStream::connect(&path) {
            let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
            let _ = s.read(&mut [0u8; 64]);
        }
        // Not reached when the filter works: the blocked call ended the process.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("zvm-api-seccomp-{pid}")));
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        vmm::seccomp::BLOCKED_SYSCALL_EXIT,
        "openat refused and mkdirat blocked on the API thread"
    );
}
