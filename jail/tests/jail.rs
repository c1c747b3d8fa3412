//! A real jail, made in a child of the test: the jailed half checks, from inside, what it
//! can and cannot do, and reports the first failure in its exit status.

#![allow(clippy::unwrap_used)]

use jail::{CgroupLimits, Exposed, IdRange, JailConfig, Side};
use std::os::unix::net::UnixListener;
use std::path::Path;

fn config(state: &Path, exposed: &Path) -> JailConfig {
    JailConfig {
        name: "jail-test".into(),
        state_dir: state.to_path_buf(),
        ids: IdRange {
            first: 990_000,
            count: 100,
        },
        exposed: vec![Exposed::writable(exposed)],
        owned: vec![exposed.to_path_buf()],
        new_network: true,
        cgroup: CgroupLimits {
            memory_bytes: 64 << 20,
            pids: 16,
            cpus: 0.5,
        },
        open_files: 64,
        file_size: 1 << 20,
        root_dir: None,
        kvm_devices: false,
    }
}

/// Whether this host can make jails; prints why not.
fn can_jail() -> bool {
    match jail::check_host() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

/// Runs `checks` in a jailed half (after lock-down), in a child of the test; returns the
/// supervisor's exit status: the first failed check's number, 0 when all passed.
fn in_jail(config: JailConfig, checks: fn(&Path) -> i32) -> i32 {
    let exposed = config.exposed[0].path.clone();
    // SAFETY: fork in a test; the child only makes the jail and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = match jail::enter(&config) {
            Ok(Side::Supervisor(status)) => status,
            Ok(Side::Jailed(mut jailed)) => {
                let code = match jailed.lock_down() {
                    // In its cgroup by then (its own /proc tells).
                    Ok(()) => match std::fs::read_to_string("/proc/self/cgroup") {
                        Ok(own) if own.contains(&format!("zvm-{}", jailed.id())) => {
                            checks(&exposed)
                        }
                        _ => 90,
                    },
                    Err(e) => {
                        eprintln!("lock-down: {e}");
                        91
                    }
                };
                // SAFETY: leaving the jailed half.
                unsafe { libc::_exit(code) };
            }
            Err(e) => {
                eprintln!("enter: {e}");
                92
            }
        };
        // SAFETY: leaving the child.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    libc::WEXITSTATUS(status)
}

fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// What the jailed half checks about itself (the number is the failed check).
fn confined(exposed: &Path) -> i32 {
    // SAFETY: plain getters and prctl queries.
    unsafe {
        if libc::getuid() == 0 || libc::geteuid() == 0 || libc::getgid() == 0 {
            return 10;
        }
        if libc::getpid() != 1 {
            return 11;
        }
        if libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1 {
            return 12;
        }
        if libc::prctl(libc::PR_CAPBSET_READ, 21 /* CAP_SYS_ADMIN */, 0, 0, 0) != 0 {
            return 13;
        }
        // Becoming root again.
        if libc::setuid(0) == 0 {
            return 14;
        }
        // Mounting (needs CAP_SYS_ADMIN).
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        ) == 0
        {
            return 15;
        }
        // ptrace of a process outside: no such process in this PID namespace.
        if libc::ptrace(libc::PTRACE_ATTACH, 2, 0, 0) == 0 {
            return 16;
        }
    }
    // The host's files and devices are not there.
    for path in [
        "/etc/passwd",
        "/proc/sys",
        "/proc/cpuinfo",
        "/dev/kvm",
        "/root",
        "/usr",
    ] {
        if Path::new(path).exists() {
            return 20;
        }
    }
    // Its own processes alone in /proc: itself (PID 1) and its descriptors.
    if !Path::new("/proc/1/fd").exists() || Path::new("/proc/2").exists() {
        return 27;
    }
    // The root is read-only; the exposed directory is writable.
    if std::fs::write("/new-file", b"x").is_ok() {
        return 21;
    }
    if std::fs::write(exposed.join("from-jail"), b"written in the jail").is_err() {
        return 22;
    }
    // A socket outside the exposed directory (the test's own) is out of reach.
    if errno_of(std::os::unix::net::UnixStream::connect(
        exposed.with_file_name("outside.sock"),
    )) != Some(libc::ENOENT)
    {
        return 23;
    }
    // No network but loopback.
    if std::net::TcpStream::connect("10.0.2.2:80").is_ok() {
        return 24;
    }
    // The file size limit answers with EFBIG, and does not kill.
    let big = vec![0u8; 2 << 20];
    if errno_of(std::fs::write(exposed.join("big"), &big)) != Some(libc::EFBIG) {
        return 25;
    }
    let _ = std::fs::remove_file(exposed.join("big"));
    let mut name = [0u8; 64];
    // SAFETY: gethostname into a local buffer.
    unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) };
    if !name.starts_with(b"jail-test\0") {
        return 26;
    }
    0
}

#[test]
fn a_jailed_half_is_confined_and_the_supervisor_cleans_up() {
    if !can_jail() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let exposed = work.path().join("vm");
    std::fs::create_dir(&exposed).unwrap();
    // A host socket beside the exposed directory: the jail must not reach it.
    let _outside = UnixListener::bind(work.path().join("outside.sock")).unwrap();
    let status = in_jail(config(state.path(), &exposed), confined);
    assert_eq!(status, 0, "check {status} failed in the jail");
    assert_eq!(
        std::fs::read_to_string(exposed.join("from-jail")).unwrap(),
        "written in the jail"
    );
    // The exposed directory was handed to the jail's uid, in its range.
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(&exposed).unwrap().uid();
    assert!((990_000..990_100).contains(&uid), "uid {uid}");
    // The supervisor removed its mount point and its cgroup.
    let roots = std::fs::read_dir(state.path().join("roots"))
        .unwrap()
        .count();
    assert_eq!(roots, 0);
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let memory = own
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        .unwrap_or_default();
    let group = Path::new("/sys/fs/cgroup/memory")
        .join(memory.trim_start_matches('/'))
        .join(format!("zvm/zvm-{uid}"));
    assert!(!group.exists(), "{} left behind", group.display());
}

#[test]
fn the_supervisor_returns_the_jailed_halfs_exit_status() {
    if !can_jail() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let status = in_jail(config(state.path(), work.path()), |_| 7);
    assert_eq!(status, 7);
}
