//! Creating the container's processes: the init process (cloned into new namespaces, set up,
//! then parked until Start) and exec'd processes (joining the init process's namespaces).
//!
//! Parent and child talk over a close-on-exec "report" pipe: the child writes `R` when it is
//! ready to exec, or `E<message>` when a step failed; a successful execve closes the pipe, so the
//! parent reads end-of-file. The init process then waits on a "start" pipe for one byte.
//! The agent is single-threaded, so the children may allocate freely before exec.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::fdio::{self, pipe, set_nonblocking};
use crate::plan::{ContainerPlan, NamespacePlan, ProcessPlan};
use crate::setup::{apply_process, setup_container_marked, SetupContext};
use crate::sys::{check, LinuxSys, Sys};

/// Why a process could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A system call in the agent failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The child reported a failed setup step or exec.
    #[error("{0}")]
    Child(String),
    /// The child ended without reporting.
    #[error("the container process ended during setup")]
    Died,
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> SpawnError {
    move |source| SpawnError::Io { what, source }
}

/// The agent's side of a process's stdio.
#[derive(Debug)]
pub enum ChildIo {
    /// Pipes: the agent writes stdin, reads stdout and stderr (all non-blocking).
    Pipes {
        /// Write end of the process's stdin.
        stdin: OwnedFd,
        /// Read end of its stdout.
        stdout: OwnedFd,
        /// Read end of its stderr.
        stderr: OwnedFd,
    },
    /// A pty: the agent reads and writes the master (non-blocking).
    Pty {
        /// The master side.
        master: OwnedFd,
    },
}

/// The child's side of its stdio.
enum ChildEnds {
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Pty {
        slave: OwnedFd,
    },
}

fn make_io(p: &ProcessPlan) -> Result<(ChildIo, ChildEnds, Option<PathBuf>), SpawnError> {
    if p.terminal {
        let (master, slave, path) = fdio::openpty().map_err(io_err("open a pty"))?;
        set_nonblocking(&master).map_err(io_err("pty"))?;
        if let Some((rows, cols)) = p.console_size {
            fdio::set_winsize(master.as_raw_fd(), rows, cols)
                .map_err(io_err("set the pty size"))?;
        }
        return Ok((
            ChildIo::Pty { master },
            ChildEnds::Pty { slave },
            Some(path),
        ));
    }
    let (in_r, in_w) = pipe().map_err(io_err("stdin pipe"))?;
    let (out_r, out_w) = pipe().map_err(io_err("stdout pipe"))?;
    let (err_r, err_w) = pipe().map_err(io_err("stderr pipe"))?;
    for fd in [&in_w, &out_r, &err_r] {
        set_nonblocking(fd).map_err(io_err("stdio pipe"))?;
    }
    Ok((
        ChildIo::Pipes {
            stdin: in_w,
            stdout: out_r,
            stderr: err_r,
        },
        ChildEnds::Pipes {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
        },
        None,
    ))
}

/// A process just created, with the agent's ends of its pipes.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid in the agent's pid namespace.
    pub pid: i32,
    /// Its stdio.
    pub io: ChildIo,
}

/// The container's init process, set up and waiting for Start.
#[derive(Debug)]
pub struct ParkedInit {
    /// The process.
    pub spawned: Spawned,
    start: OwnedFd,
    report: OwnedFd,
}

/// fork(2) through clone(2), creating the namespaces in `flags`.
fn clone_fork(flags: i32) -> io::Result<i32> {
    // SAFETY: clone without CLONE_VM and without a new stack behaves like fork: the child runs
    // on a copy of this (single-threaded) process.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    check(rc).map(|p| p as i32)
}

/// In the child: default signal state, new session, stdio on 0/1/2.
fn child_stdio(ends: &ChildEnds) -> io::Result<()> {
    // SAFETY: signal-mask and session calls with valid arguments; dup2 onto 0..2.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::setsid();
        let fds = match ends {
            ChildEnds::Pipes {
                stdin,
                stdout,
                stderr,
            } => [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()],
            ChildEnds::Pty { slave } => {
                check(libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0).into())?;
                [slave.as_raw_fd(); 3]
            }
        };
        for (target, fd) in fds.into_iter().enumerate() {
            check(libc::dup2(fd, target as RawFd).into())?;
        }
    }
    Ok(())
}

fn report_error(report: RawFd, msg: &str) {
    let mut buf = Vec::with_capacity(msg.len() + 1);
    buf.push(b'E');
    // Keep it within PIPE_BUF so the write is atomic.
    buf.extend_from_slice(&msg.as_bytes()[..msg.len().min(4000)]);
    let _ = fdio::write_all(report, &buf);
}

/// Runs `body` in the child and ends the process: execve on success, exit 1 and an `E` report
/// on failure. Never returns, even on a panic.
fn run_child(
    report: RawFd,
    args: &[CString],
    env: &[CString],
    body: impl FnOnce() -> Result<CString, String>,
) -> ! {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    let code = match outcome {
        Ok(Ok(exe)) => {
            let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
            argv.push(std::ptr::null());
            let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
            envp.push(std::ptr::null());
            // SAFETY: NUL-terminated strings and null-terminated pointer arrays, alive here.
            unsafe { libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            let e = io::Error::last_os_error();
            report_error(report, &format!("exec {:?}: {e}", exe.to_string_lossy()));
            127
        }
        Ok(Err(msg)) => {
            report_error(report, &msg);
            1
        }
        Err(_) => {
            report_error(report, "container setup panicked");
            126
        }
    };
    // SAFETY: ending the child without running the parent's exit handlers.
    unsafe { libc::_exit(code) }
}

enum Report {
    /// Ready to exec, with the child's step times (text, for the agent's log).
    Ready(String),
    Failed(String),
    Eof,
}

fn read_report(fd: &OwnedFd) -> io::Result<Report> {
    let mut buf = [0u8; 4096];
    let n = fdio::read(fd.as_raw_fd(), &mut buf)?;
    Ok(match n {
        0 => Report::Eof,
        _ if buf[0] == b'R' => Report::Ready(String::from_utf8_lossy(&buf[1..n]).into_owned()),
        _ => Report::Failed(String::from_utf8_lossy(&buf[1..n]).into_owned()),
    })
}

/// Page faults this process has taken so far (minor and major): where guest kernel code is
/// emulated each costs milliseconds, so the debug timings count them beside the steps. Only
/// counted when those timings are logged: the count is a system call, itself such a cost.
fn page_faults() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    (usage.ru_minflt + usage.ru_majflt) as u64
}

/// Times a child's setup steps against the agent's clock (`CLOCK_MONOTONIC`, which the
/// child shares), from an instant taken before the clone.
struct StepTimes {
    since: Instant,
    text: String,
    /// Whether the report also gives the page faults taken.
    count_faults: bool,
}

impl StepTimes {
    fn new(since: Instant, count_faults: bool) -> StepTimes {
        StepTimes {
            since,
            text: String::new(),
            count_faults,
        }
    }

    /// Records that `step` ended now.
    fn mark(&mut self, step: &str) {
        use std::fmt::Write;
        let sep = if self.text.is_empty() { "" } else { ", " };
        let _ = write!(self.text, "{sep}{step} {:?}", self.since.elapsed());
    }

    /// The `R` report: ready, then the step times (short enough for one atomic write).
    fn ready_report(&self) -> Vec<u8> {
        let mut report = Vec::with_capacity(self.text.len() + 32);
        report.push(b'R');
        if self.count_faults {
            report.extend_from_slice(format!("{} page faults; ", page_faults()).as_bytes());
        }
        report.extend_from_slice(&self.text.as_bytes()[..self.text.len().min(1000)]);
        report
    }
}

/// Blocks until `pid` is gone (it is exiting after a failed setup).
fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// Clones the container's init process into its namespaces, lets it set everything up and
/// returns once it waits for Start (or with the step that failed).
pub fn spawn_init(
    plan: &ContainerPlan,
    cgroup_procs: Option<PathBuf>,
    spare_netns: Option<PathBuf>,
) -> Result<ParkedInit, SpawnError> {
    let (io, ends, console) = make_io(&plan.process)?;
    let (report_r, report_w) = pipe().map_err(io_err("report pipe"))?;
    let (start_r, start_w) = pipe().map_err(io_err("start pipe"))?;
    // With a spare network namespace the child joins it rather than have clone make one.
    let mut flags = plan.namespaces.clone_flags;
    if spare_netns.is_some() {
        flags &= !libc::CLONE_NEWNET;
    }
    let ctx = SetupContext {
        cgroup_procs,
        console,
        spare_netns,
    };
    let count_faults = tracing::enabled!(tracing::Level::DEBUG);
    let faults_before = if count_faults { page_faults() } else { 0 };
    let before_clone = Instant::now();
    let pid = clone_fork(flags).map_err(io_err("clone the container process"))?;
    if pid == 0 {
        // The parent's ends are close-on-exec; closing them here would only cost system calls.
        let (report, start) = (report_w.as_raw_fd(), start_r.as_raw_fd());
        run_child(report, &plan.process.args, &plan.process.env, || {
            let mut times = StepTimes::new(before_clone, count_faults);
            times.mark("cloned");
            child_stdio(&ends).map_err(|e| format!("set up stdio: {e}"))?;
            // The originals are close-on-exec: no need to spend system calls closing them.
            std::mem::forget(ends);
            let exe =
                setup_container_marked(&mut LinuxSys, plan, &ctx, &mut |step| times.mark(step))
                    .map_err(|e| e.to_string())?;
            fdio::write_all(report, &times.ready_report()).map_err(|e| e.to_string())?;
            let mut b = [0u8; 1];
            match fdio::read(start, &mut b) {
                Ok(1) => Ok(exe),
                // The agent gave up on this container.
                // SAFETY: plain exit of the child.
                _ => unsafe { libc::_exit(1) },
            }
        });
    }
    let clone_returned = before_clone.elapsed();
    drop((ends, report_w, start_r));
    if let Some(score) = plan.process.oom_score_adj {
        let _ = LinuxSys.write_file(
            Path::new(&format!("/proc/{pid}/oom_score_adj")),
            score.to_string().as_bytes(),
        );
    }
    match read_report(&report_r) {
        Ok(Report::Ready(times)) => {
            tracing::debug!(
                "init process: clone returned after {clone_returned:?}; in the child: {times}; \
                 parked, seen after {:?}; {} page faults in the agent meanwhile",
                before_clone.elapsed(),
                page_faults().saturating_sub(faults_before)
            );
            Ok(ParkedInit {
                spawned: Spawned { pid, io },
                start: start_w,
                report: report_r,
            })
        }
        Ok(Report::Failed(msg)) => {
            reap(pid);
            Err(SpawnError::Child(msg))
        }
        Ok(Report::Eof) | Err(_) => {
            reap(pid);
            Err(SpawnError::Died)
        }
    }
}

impl ParkedInit {
    /// Lets the process exec; returns once execve succeeded or with its error (the process then
    /// exits with 127 and is reaped by the caller's loop).
    pub fn start(self) -> Result<Spawned, (Spawned, String)> {
        let released = Instant::now();
        if let Err(e) = fdio::write_all(self.start.as_raw_fd(), b"S") {
            return Err((self.spawned, format!("release the container process: {e}")));
        }
        drop(self.start);
        match read_report(&self.report) {
            Ok(Report::Eof) => {
                tracing::debug!(
                    "init process exec'd {:?} after its release",
                    released.elapsed()
                );
                Ok(self.spawned)
            }
            Ok(Report::Failed(msg)) => Err((self.spawned, msg)),
            Ok(Report::Ready(_)) => Err((
                self.spawned,
                "unexpected report from the container process".into(),
            )),
            Err(e) => Err((self.spawned, format!("read the container's report: {e}"))),
        }
    }
}

/// `(CLONE_NEW* flag, /proc/<pid>/ns name)` in the order exec'd processes join them; the mount
/// namespace last, since it changes what /proc is.
const JOIN_ORDER: [(i32, &str); 5] = [
    (libc::CLONE_NEWCGROUP, "cgroup"),
    (libc::CLONE_NEWIPC, "ipc"),
    (libc::CLONE_NEWUTS, "uts"),
    (libc::CLONE_NEWNET, "net"),
    (libc::CLONE_NEWNS, "mnt"),
];

/// Starts a second process in the namespaces of `init_pid` (and its cgroup). Returns once it
/// has exec'd, or with the step that failed.
pub fn spawn_exec(
    init_pid: i32,
    ns: &NamespacePlan,
    process: &ProcessPlan,
    cgroup_procs: Option<PathBuf>,
) -> Result<Spawned, SpawnError> {
    let (io, ends, _) = make_io(process)?;
    let (report_r, report_w) = pipe().map_err(io_err("report pipe"))?;
    // Children of the agent land in the container's pid namespace while pid_for_children
    // points there; the agent itself stays where it is.
    let pidns = if ns.has(libc::CLONE_NEWPID) {
        let own = Path::new("/proc/self/ns/pid");
        let theirs = PathBuf::from(format!("/proc/{init_pid}/ns/pid"));
        let own = std::fs::File::open(own).map_err(io_err("open own pid namespace"))?;
        LinuxSys
            .setns(&theirs, libc::CLONE_NEWPID)
            .map_err(io_err("enter the container's pid namespace"))?;
        Some(own)
    } else {
        None
    };
    let forked = clone_fork(0);
    if let Some(own) = &pidns {
        if !matches!(forked, Ok(0)) {
            // SAFETY: setns on an open namespace descriptor.
            let rc = unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWPID) };
            if rc != 0 {
                tracing::error!(
                    "cannot return to the agent's pid namespace: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
    let pid = forked.map_err(io_err("fork the exec process"))?;
    if pid == 0 {
        let report = report_w.as_raw_fd();
        run_child(report, &process.args, &process.env, || {
            child_stdio(&ends).map_err(|e| format!("set up stdio: {e}"))?;
            // The originals are close-on-exec: no need to spend system calls closing them.
            std::mem::forget(ends);
            let sys = &mut LinuxSys;
            if let Some(procs) = &cgroup_procs {
                sys.write_file(procs, b"0")
                    .map_err(|e| format!("join cgroup {}: {e}", procs.display()))?;
            }
            for (flag, name) in JOIN_ORDER {
                if ns.has(flag) {
                    let path = PathBuf::from(format!("/proc/{init_pid}/ns/{name}"));
                    sys.setns(&path, flag)
                        .map_err(|e| format!("join the container's {name} namespace: {e}"))?;
                }
            }
            apply_process(sys, process).map_err(|e| e.to_string())
        });
    }
    drop((ends, report_w));
    if let Some(score) = process.oom_score_adj {
        let _ = LinuxSys.write_file(
            Path::new(&format!("/proc/{pid}/oom_score_adj")),
            score.to_string().as_bytes(),
        );
    }
    match read_report(&report_r) {
        Ok(Report::Eof) => Ok(Spawned { pid, io }),
        Ok(Report::Failed(msg)) => {
            reap(pid);
            Err(SpawnError::Child(msg))
        }
        Ok(Report::Ready(_)) | Err(_) => {
            reap(pid);
            Err(SpawnError::Died)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{page_faults, StepTimes};
    use std::time::Instant;

    #[test]
    fn the_ready_report_counts_faults_only_when_asked() {
        let mut quiet = StepTimes::new(Instant::now(), false);
        quiet.mark("cloned");
        let report = String::from_utf8(quiet.ready_report()).expect("text");
        assert!(report.starts_with("Rcloned "), "{report}");
        let mut counting = StepTimes::new(Instant::now(), true);
        counting.mark("cloned");
        let report = String::from_utf8(counting.ready_report()).expect("text");
        assert!(
            report.starts_with('R') && report.contains(" page faults; cloned "),
            "{report}"
        );
    }

    #[test]
    fn page_faults_count_first_touches() {
        const PAGES: usize = 64;
        let len = PAGES * 4096;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let before = page_faults();
        for page in 0..PAGES {
            // SAFETY: within the mapping; volatile so each first touch happens.
            unsafe { std::ptr::write_volatile(map.cast::<u8>().add(page * 4096), 1) };
        }
        let after = page_faults();
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(map, len) };
        // Other tests' threads fault too, so only a lower bound holds.
        assert!(after >= before + PAGES as u64, "{before} -> {after}");
    }
}
