//! Splitting a process into a supervisor and its jailed half.

use crate::{check_host, Cgroup, Hierarchy, IdLease, JailConfig, JailError, Jailed, Side};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::sync::atomic::{AtomicI32, Ordering};

/// The jailed half's pid, for the supervisor's signal handler.
static JAILED_PID: AtomicI32 = AtomicI32::new(0);

/// The signals the supervisor passes on: stop and power off, metrics, and what a
/// container's process gets from a terminal or job control.
pub const FORWARDED_SIGNALS: [libc::c_int; 13] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGCONT,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGPWR,
    libc::SIGWINCH,
];

extern "C" fn forward(sig: libc::c_int) {
    let pid = JAILED_PID.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Splits the calling process (see the crate's documentation): returns
/// [`Side::Supervisor`] with the jailed half's exit status once it has ended, and
/// [`Side::Jailed`] in the jailed half. Other threads of the caller stay with the
/// supervisor.
pub fn enter(config: &JailConfig) -> Result<Side, JailError> {
    check_host()?;
    let hierarchy = Hierarchy::detect()?;
    let lease = IdLease::claim(config.ids, &config.state_dir.join("ids"))?;
    let id = lease.id();
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(JailError::io("read /proc/self/cgroup"))?;
    let cgroup = Cgroup::create(&hierarchy, &own, &format!("zvm-{id}"), config.cgroup)?;
    let root = config.state_dir.join("roots").join(id.to_string());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .map_err(JailError::io(format!("make {}", root.display())))?;
    let (go_read, go_write) = pipe()?;
    let (alive_read, alive_write) = pipe()?;
    // SAFETY: unshare with a namespace flag: our next child starts a new PID namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        cgroup.remove();
        return Err(JailError::Unavailable(format!(
            "no new PID namespace: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fork; the child carries on with the one thread that called us (glibc keeps
    // malloc usable in it) and gives up everything of the supervisor's it does not need.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        cgroup.remove();
        return Err(JailError::last_os("fork the jailed half"));
    }
    if pid == 0 {
        drop((go_write, alive_write, lease));
        // SAFETY: prctl with integer arguments: die with the supervisor (until the uid
        // change clears it; lock_down sets it again).
        unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        if let Err(e) = cgroup.join() {
            eprintln!("{e}");
            // SAFETY: leaving without running the supervisor's destructors.
            unsafe { libc::_exit(125) };
        }
        std::mem::forget(cgroup);
        // Where the supervisor moves it (v2), the jailed half builds its VM meanwhile and
        // waits for the supervisor's go at lock-down, before the guest runs.
        return Ok(Side::Jailed(Box::new(Jailed {
            config: config.clone(),
            id,
            root,
            go: Some(go_read),
            supervisor: alive_read,
        })));
    }
    drop((go_read, alive_read));
    // A jailed half that ended already (its VM failed to build) has closed the pipe: its
    // status says why.
    // v1: the jailed half joined by itself.
    let joined_by_itself = matches!(hierarchy, Hierarchy::PerController(_));
    let attached = if joined_by_itself {
        Ok(())
    } else {
        cgroup.add(pid)
    };
    let started = attached.map(|()| {
        let _ = std::fs::File::from(go_write).write_all(&[1]);
    });
    JAILED_PID.store(pid, Ordering::Relaxed);
    if started.is_ok() {
        for sig in FORWARDED_SIGNALS {
            // SAFETY: installing a handler that only calls kill(2).
            unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
        }
    }
    let status = wait(pid);
    for sig in FORWARDED_SIGNALS {
        // SAFETY: restoring the default disposition.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    JAILED_PID.store(0, Ordering::Relaxed);
    drop(alive_write);
    cgroup.remove();
    let _ = std::fs::remove_dir(&root);
    drop(lease);
    started?;
    Ok(Side::Supervisor(status))
}

/// Waits for `pid`: its exit code, or 128 + the signal that killed it.
fn wait(pid: libc::pid_t) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            if libc::WIFSIGNALED(status) {
                return 128 + libc::WTERMSIG(status);
            }
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 255;
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(JailError::last_os("make a pipe"));
    }
    // SAFETY: both descriptors were just made and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
