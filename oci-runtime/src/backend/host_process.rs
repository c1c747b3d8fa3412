//! **Test double, not a container runtime**: runs the container's process directly on the
//! host, in a new session, without namespaces, user switch, limits or any other isolation.
//! Compiled in only with the cargo feature `test-backend` (never in release or installed
//! binaries), and then selected with `ZVM_RUNC_BACKEND=host-process`; it exists so that the
//! lifecycle, hooks and command line can be tested fast and without a VM. Never use it for
//! untrusted code.
//!
//! Like runc, `create` forks the container process, which blocks opening `exec.fifo` in the
//! container directory for writing; `start` opens the fifo for reading, which releases it to
//! `execve` the program with exactly `process.env`. While the fifo exists the container is
//! "created"; after `start` it is "running".
//!
//! Where the program runs: when this runs as root and the rootfs holds the program (`PATH`
//! from `process.env`), the process is `chroot`ed into the rootfs and runs in `process.cwd`
//! there, so that paths mean what they mean in the container (a busybox rootfs, the
//! runtime-tools suite; /dev/null, /dev/zero and /dev/urandom are made in the rootfs when
//! missing, since nothing is mounted); otherwise (an empty rootfs, as in this crate's tests) the program is
//! looked up on the host and runs in `<rootfs>/<process.cwd>`.

use super::{
    BackendError, BackendStatus, ContainerBackend, ContainerRef, CreateOptions, ExecOutcome,
    ExecRequest,
};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The fifo the created process waits on.
pub const EXEC_FIFO: &str = "exec.fifo";

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// See the module documentation: for tests only.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostProcessBackend;

/// Finds `program` as `execvp` would, with `PATH` from `env` (else a default).
pub fn resolve_program(program: &str, env: &[String]) -> Result<PathBuf, BackendError> {
    let not_found = |reason: &str| BackendError::Exec {
        program: program.to_string(),
        reason: reason.to_string(),
    };
    let executable = |p: &Path| {
        let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: access(2) on a NUL-terminated path.
        p.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
    };
    if program.is_empty() {
        return Err(not_found("empty program name"));
    }
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(not_found("no such executable file"))
        };
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| not_found("executable file not found in $PATH"))
}

/// `<rootfs>/<cwd>`, made if missing (runc makes the cwd too).
fn host_cwd(c: &ContainerRef<'_>, cwd: &Path) -> Result<PathBuf, BackendError> {
    let dir = c.rootfs.join(cwd.strip_prefix("/").unwrap_or(cwd));
    std::fs::create_dir_all(&dir).map_err(BackendError::io(format!(
        "create the working directory {}",
        dir.display()
    )))?;
    Ok(dir)
}

/// Where a process runs: the program and working directory as `execve` and `chdir` see
/// them, and the root to `chroot` into first, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    program: PathBuf,
    cwd: PathBuf,
    chroot: Option<PathBuf>,
}

/// When running as root and the rootfs holds the program, the process runs chrooted into
/// the rootfs (so absolute paths mean what they mean in the container); otherwise it runs
/// on the host, in `<rootfs>/<cwd>`.
fn place(
    c: &ContainerRef<'_>,
    args: &[String],
    env: &[String],
    cwd: &Path,
) -> Result<Placement, BackendError> {
    let program = args.first().map(String::as_str).unwrap_or("");
    let host_dir = host_cwd(c, cwd)?;
    // SAFETY: geteuid(2) cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root && !program.is_empty() {
        if let Some(inside) = resolve_in_rootfs(c.rootfs, program, env) {
            add_dev_nodes(c.rootfs);
            return Ok(Placement {
                program: inside,
                cwd: cwd.to_path_buf(),
                chroot: Some(c.rootfs.to_path_buf()),
            });
        }
    }
    Ok(Placement {
        program: resolve_program(program, env)?,
        cwd: host_dir,
        chroot: None,
    })
}

/// Character devices a chrooted process expects (busybox `sh` opens /dev/null for
/// background jobs); made in the rootfs's /dev when missing, since this double mounts nothing.
fn add_dev_nodes(rootfs: &Path) {
    let dev = rootfs.join("dev");
    if std::fs::create_dir_all(&dev).is_err() {
        return;
    }
    for (name, minor) in [("null", 3), ("zero", 5), ("urandom", 9)] {
        let path = dev.join(name);
        if std::fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: mknod(2) on a NUL-terminated path.
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, minor)) };
    }
}

/// `program` looked up inside `rootfs` (`PATH` from `env`); the path as seen inside.
fn resolve_in_rootfs(rootfs: &Path, program: &str, env: &[String]) -> Option<PathBuf> {
    let inside = |p: &Path| rootfs.join(p.strip_prefix("/").unwrap_or(p));
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![Path::new("/").join(program)]
    } else {
        let path = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| Path::new(d).join(program))
            .collect()
    };
    candidates.into_iter().find(|p| {
        let Ok(meta) = std::fs::symlink_metadata(inside(p)) else {
            return false;
        };
        // A symlink inside the rootfs may point anywhere in it; trust it (busybox applets).
        meta.file_type().is_symlink()
            || (meta.is_file()
                && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0)
    })
}

fn cstring(bytes: &[u8], what: &str) -> Result<CString, BackendError> {
    CString::new(bytes).map_err(|_| BackendError::Exec {
        program: what.to_string(),
        reason: "contains a NUL byte".into(),
    })
}

/// Everything the forked child needs, prepared before `fork` so that the child only makes
/// async-signal-safe system calls.
struct ChildPlan {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    fifo: CString,
    cwd: CString,
    chroot: Option<CString>,
    pty_slave: Option<OwnedFd>,
}

impl ChildPlan {
    /// Runs in the forked child; never returns.
    fn exec(&self) -> ! {
        let argv: Vec<*const libc::c_char> = self
            .argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp: Vec<*const libc::c_char> = self
            .envp
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        // SAFETY: only async-signal-safe calls on memory prepared before fork.
        unsafe {
            libc::setsid();
            if let Some(slave) = &self.pty_slave {
                let fd = slave.as_raw_fd();
                libc::ioctl(fd, libc::TIOCSCTTY, 0);
                for target in 0..3 {
                    libc::dup2(fd, target);
                }
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            // Drop every inherited descriptor but stdio (state locks above all).
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
                for fd in 3..4096 {
                    libc::close(fd);
                }
            }
            let fd = libc::open(self.fifo.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                libc::_exit(126);
            }
            libc::write(fd, b"0".as_ptr().cast(), 1);
            if let Some(root) = &self.chroot {
                if libc::chroot(root.as_ptr()) != 0 {
                    let msg = b"zvm-runc host-process: chroot failed\n";
                    libc::write(2, msg.as_ptr().cast(), msg.len());
                    libc::_exit(127);
                }
            }
            libc::chdir(self.cwd.as_ptr());
            libc::execve(self.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let msg = b"zvm-runc host-process: execve failed\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127);
        }
    }
}

impl ContainerBackend for HostProcessBackend {
    fn name(&self) -> &'static str {
        "host-process"
    }

    fn create(&self, c: &ContainerRef<'_>, opts: &CreateOptions) -> Result<i32, BackendError> {
        let process = c
            .spec
            .process()
            .as_ref()
            .ok_or_else(|| BackendError::Unsupported("no process".into()))?;
        let args = process.args().as_deref().unwrap_or(&[]);
        let env = process.env().as_deref().unwrap_or(&[]);
        let placed = place(c, args, env, process.cwd())?;
        let fifo = c.dir.join(EXEC_FIFO);
        let fifo_c = cstring(fifo.as_os_str().as_bytes(), "fifo path")?;
        // SAFETY: mkfifo(3) on a NUL-terminated path.
        if unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) } != 0 {
            return Err(BackendError::io(format!("create {}", fifo.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        let (pty_master, pty_slave) =
            match (process.terminal().unwrap_or(false), &opts.console_socket) {
                (true, Some(_)) => {
                    let (m, s) =
                        crate::console::open_pty().map_err(BackendError::io("allocate a pty"))?;
                    (Some(m), Some(s))
                }
                _ => (None, None),
            };
        let plan = ChildPlan {
            program: cstring(
                placed.program.as_os_str().as_bytes(),
                &placed.program.display().to_string(),
            )?,
            argv: args
                .iter()
                .map(|a| cstring(a.as_bytes(), a))
                .collect::<Result<_, _>>()?,
            envp: env
                .iter()
                .map(|e| cstring(e.as_bytes(), e))
                .collect::<Result<_, _>>()?,
            fifo: fifo_c,
            cwd: cstring(placed.cwd.as_os_str().as_bytes(), "cwd")?,
            chroot: placed
                .chroot
                .as_ref()
                .map(|r| cstring(r.as_os_str().as_bytes(), "rootfs"))
                .transpose()?,
            pty_slave,
        };
        // SAFETY: the child runs only ChildPlan::exec, which makes async-signal-safe calls.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(BackendError::io("fork")(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            plan.exec();
        }
        drop(plan);
        if let (Some(master), Some(socket)) = (pty_master, &opts.console_socket) {
            if let Err(e) = crate::console::send_fd(socket, std::os::fd::AsFd::as_fd(&master)) {
                // SAFETY: kill(2) on the child we just forked.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                super::wait_gone(pid, None, std::time::Duration::from_secs(5));
                return Err(BackendError::io(format!(
                    "send the pty to {}",
                    socket.display()
                ))(e));
            }
        }
        Ok(pid)
    }

    fn start(&self, c: &ContainerRef<'_>) -> Result<(), BackendError> {
        let fifo = c.dir.join(EXEC_FIFO);
        let file = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .map_err(BackendError::io(format!("open {}", fifo.display())))?;
        let pid = c.pid.unwrap_or(0);
        loop {
            let mut pfd = libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll(2) on one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, 100) };
            if n > 0 && pfd.revents & libc::POLLIN != 0 {
                break;
            }
            if !crate::host::process_alive(pid, c.pid_start_time) {
                return Err(BackendError::Exec {
                    program: c.id.to_string(),
                    reason: "the container process ended before start".into(),
                });
            }
        }
        let mut byte = [0u8; 1];
        // SAFETY: read(2) of one byte into a valid buffer.
        unsafe { libc::read(file.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
        std::fs::remove_file(&fifo)
            .map_err(BackendError::io(format!("remove {}", fifo.display())))?;
        Ok(())
    }

    fn kill(&self, c: &ContainerRef<'_>, signal: i32, all: bool) -> Result<(), BackendError> {
        let pid = c
            .pid
            .filter(|&p| p > 0)
            .ok_or_else(|| BackendError::Unsupported("container has no process".into()))?;
        // With `all`, the process group the container process leads, and the process itself
        // too: right after create it may not have called setsid yet, and then the group does
        // not exist.
        let targets: &[i32] = if all { &[-pid, pid] } else { &[pid] };
        for &target in targets {
            // SAFETY: kill(2) on the container process or the group it leads.
            if unsafe { libc::kill(target, signal) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(BackendError::io(format!(
                        "send signal {signal} to {target}"
                    ))(e));
                }
            }
        }
        Ok(())
    }

    fn status(&self, c: &ContainerRef<'_>) -> Result<BackendStatus, BackendError> {
        Ok(if c.dir.join(EXEC_FIFO).exists() {
            BackendStatus::Created
        } else {
            BackendStatus::Running
        })
    }

    fn exec(
        &self,
        c: &ContainerRef<'_>,
        req: &ExecRequest<'_>,
    ) -> Result<ExecOutcome, BackendError> {
        if req.process.terminal().unwrap_or(false) {
            return Err(BackendError::Unsupported(
                "exec --tty is not supported by the host-process test backend".into(),
            ));
        }
        let args = req.process.args().as_deref().unwrap_or(&[]);
        let env = req.process.env().as_deref().unwrap_or(&[]);
        let placed = place(c, args, env, req.process.cwd())?;
        let program = placed.program.clone();
        let mut cmd = std::process::Command::new(&program);
        cmd.args(args.iter().skip(1)).env_clear();
        match &placed.chroot {
            None => {
                cmd.current_dir(&placed.cwd);
            }
            Some(root) => {
                let root = cstring(root.as_os_str().as_bytes(), "rootfs")?;
                let cwd = cstring(placed.cwd.as_os_str().as_bytes(), "cwd")?;
                // SAFETY: the closure only calls chroot(2) and chdir(2) in the child.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::chroot(root.as_ptr()) != 0 || libc::chdir(cwd.as_ptr()) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
        }
        for (k, v) in env.iter().filter_map(|e| e.split_once('=')) {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| BackendError::Exec {
            program: program.display().to_string(),
            reason: e.to_string(),
        })?;
        let pid = child.id() as i32;
        if let Some(path) = req.pid_file {
            crate::host::write_pid_file(path, pid)
                .map_err(BackendError::io(format!("write {}", path.display())))?;
        }
        if req.detach {
            return Ok(ExecOutcome::Detached(pid));
        }
        let mut forward = |sig: i32| {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, sig) };
        };
        let status = super::wait_pid(pid, None, &mut forward);
        drop(child);
        Ok(ExecOutcome::Exited(status.unwrap_or(255)))
    }

    fn ps(&self, c: &ContainerRef<'_>) -> Result<Vec<i32>, BackendError> {
        Ok(c.pid.map(crate::host::session_members).unwrap_or_default())
    }

    fn wait(&self, c: &ContainerRef<'_>) -> Result<Option<i32>, BackendError> {
        let Some(pid) = c.pid else { return Ok(None) };
        let mut forward = |sig: i32| {
            let _ = self.kill(c, sig, false);
        };
        Ok(super::wait_pid(pid, c.pid_start_time, &mut forward))
    }

    fn delete(&self, c: &ContainerRef<'_>) -> Result<(), BackendError> {
        match std::fs::remove_file(c.dir.join(EXEC_FIFO)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(BackendError::io("remove exec.fifo")(e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_path_from_the_env() {
        assert_eq!(
            resolve_program("sh", &["PATH=/bin".into()]).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            resolve_program("/bin/sh", &[]).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert!(resolve_program("sh", &[]).is_ok(), "default PATH");
        let err =
            resolve_program("no-such-program-zvm", &["PATH=/bin:/usr/bin".into()]).unwrap_err();
        assert!(err.to_string().contains("not found in $PATH"), "{err}");
        assert!(
            resolve_program("/etc/passwd", &[]).is_err(),
            "not executable"
        );
        assert!(resolve_program("", &[]).is_err());
    }
}
