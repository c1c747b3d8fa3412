//! Escape attempts from inside a jail under the VMM's own seccomp filters (issue #16):
//! each is refused, by the jail alone or by the filter of the thread that would make it.

mod common;

use common::no_kvm;
use std::path::Path;

/// Why this host cannot make jails, if it cannot.
fn no_jail() -> Option<String> {
    no_kvm().or_else(|| jail::check_host().err().map(|e| e.to_string()))
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
