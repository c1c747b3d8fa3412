//! The system side: PID 1 set-up, signals through a signalfd, spawning services with
//! their output on pipes, reaping, and the final power-off.

use crate::config::{LogMode, Service};
use crate::supervisor::{Exit, Pid};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Signals PID 1 handles through its signalfd: children, Ctrl-Alt-Del (SIGINT once
/// `RB_DISABLE_CAD` is set) and termination requests.
const HANDLED: [i32; 4] = [libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGPWR];

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Mounts `fstype` at `target` (creating it); "already mounted" is fine.
pub fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    let _ = std::fs::create_dir_all(target);
    let to_c = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (s, t, f) = (to_c(source)?, to_c(target)?, to_c(fstype)?);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, std::ptr::null()) };
    match cvt(rc) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// The early PID 1 set-up: API file systems, Ctrl-Alt-Del as SIGINT. Failures are
/// reported on the console and boot goes on.
pub fn pid1_setup(say: &dyn Fn(&str)) {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    for (src, target, fstype, flags) in [
        ("proc", "/proc", "proc", nosuid_nodev | libc::MS_NOEXEC),
        ("sysfs", "/sys", "sysfs", nosuid_nodev | libc::MS_NOEXEC),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
        ),
        ("tmpfs", "/run", "tmpfs", nosuid_nodev),
        ("tmpfs", "/tmp", "tmpfs", nosuid_nodev),
    ] {
        if let Err(e) = mount(src, target, fstype, flags) {
            say(&format!("mount {fstype} on {target}: {e}"));
        }
    }
    // SAFETY: plain reboot(2) command; PID 1 may set it.
    unsafe { libc::reboot(libc::RB_DISABLE_CAD) };
}

/// A signalfd for [`HANDLED`] (the signals are blocked so they queue on it).
pub fn signal_fd() -> io::Result<OwnedFd> {
    // SAFETY: sigset manipulation on a local set; signalfd returns a new descriptor.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
        }
        cvt(libc::sigprocmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        let fd = cvt(libc::signalfd(
            -1,
            &set,
            libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Reads the pending signal numbers from the signalfd.
pub fn read_signals(fd: &OwnedFd) -> Vec<i32> {
    let mut out = Vec::new();
    loop {
        // SAFETY: signalfd_siginfo is plain data; we read at most its size.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading into a properly sized local buffer.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n != size as isize {
            return out;
        }
        out.push(info.ssi_signo as i32);
    }
}

/// Reaps every exited child: (pid, how it ended).
pub fn reap() -> Vec<(Pid, Exit)> {
    let mut out = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return out;
        }
        let exit = if libc::WIFEXITED(status) {
            Exit::Code(libc::WEXITSTATUS(status))
        } else {
            Exit::Signal(libc::WTERMSIG(status))
        };
        out.push((pid, exit));
    }
}

/// Makes this process the reaper of orphaned descendants (when it is not PID 1).
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `argv` for `service` in its own process group with the signal mask cleared.
/// Returns the pid and, unless output is discarded, the read end of its output pipe.
pub fn spawn(
    service: &Service,
    argv: &[String],
    env: &[(String, String)],
    log: LogMode,
) -> io::Result<(Pid, Option<OwnedFd>)> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).process_group(0);
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd.envs(service.env.iter());
    if let Some(dir) = &service.dir {
        cmd.current_dir(dir);
    }
    let reader = match log {
        LogMode::Null => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            None
        }
        LogMode::Stdout | LogMode::Ring => {
            let (read, write) = pipe()?;
            // The child's ends must block like normal stdio.
            // SAFETY: fcntl on a descriptor we own.
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETFL, 0) };
            let write2 = write.try_clone()?;
            cmd.stdout(Stdio::from(write)).stderr(Stdio::from(write2));
            Some(read)
        }
    };
    // SAFETY: the closure only calls async-signal-safe functions (sigprocmask).
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id() as Pid;
    // The child is reaped by `reap`, not by std.
    drop(child);
    Ok((pid, reader))
}

/// Sends `signal` to the process group of `pid` (services run in their own groups).
pub fn kill_group(pid: Pid, signal: i32) {
    // SAFETY: kill(2) with integer arguments.
    unsafe { libc::kill(-pid, signal) };
}

/// Kills every remaining process (PID 1 is spared by the kernel).
pub fn kill_all() {
    // SAFETY: kill(2) with integer arguments.
    unsafe { libc::kill(-1, libc::SIGKILL) };
}

/// Waits for readability on `fds` for at most `timeout_ms` (-1: forever); returns the
/// readable (or hung-up) descriptors.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> Vec<RawFd> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: pfds is a valid array of pollfd of the given length.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if n <= 0 {
        return Vec::new();
    }
    pfds.iter()
        .filter(|p| p.revents != 0)
        .map(|p| p.fd)
        .collect()
}

/// Reads what is available on a non-blocking descriptor; None at end of file.
pub fn read_available(fd: RawFd, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    // SAFETY: reading into a local buffer of the given size.
    let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
    match n {
        0 => None,
        n if n < 0 => {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock || err.kind() == io::ErrorKind::Interrupted {
                Some(0)
            } else {
                None
            }
        }
        n => {
            buf.extend_from_slice(&chunk[..n as usize]);
            Some(n as usize)
        }
    }
}

/// Unmounts everything but the API file systems (deepest first), then syncs.
pub fn unmount_all(say: &dyn Fn(&str)) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let keep = ["/", "/proc", "/sys", "/dev", "/dev/pts", "/run", "/tmp"];
    let points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| !keep.contains(p))
        .collect();
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    for point in points.iter().rev() {
        let Ok(c) = CString::new(*point) else {
            continue;
        };
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::umount(c.as_ptr()) } != 0 {
            say(&format!("umount {point}: {}", io::Error::last_os_error()));
        }
    }
}

/// Powers the machine off. Without ACPI (a micro-VM), Linux cannot power off and would
/// halt forever, so it reboots instead, which ends the VM under zvm or Firecracker.
pub fn power_off(say: &dyn Fn(&str)) -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let has_acpi = std::path::Path::new("/sys/firmware/acpi").exists();
    let cmd = if has_acpi {
        say("powering off");
        libc::RB_POWER_OFF
    } else {
        say("powering off (no ACPI: by reboot, which ends a micro-VM)");
        libc::RB_AUTOBOOT
    };
    // SAFETY: reboot(2) as PID 1 after syncing.
    unsafe { libc::reboot(cmd) };
    say(&format!("reboot failed: {}", io::Error::last_os_error()));
    loop {
        std::thread::park();
    }
}
