//! The container the agent runs and its processes; request handling that does not involve the
//! connection itself.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use agent_protocol::{
    oci_spec::runtime::{Process, Spec},
    AgentMessage, Bytes, ContainerStatus, Event, ExitStatus, ResponseBody, Rootfs, INIT_STREAM,
};

use super::held_ns::HeldNamespaces;
use super::rootfs::{mount as mount_rootfs, mount_share, DISK_WAIT, ROOTFS_MOUNT};
use super::{cgroup, AgentConfig};
use crate::fdio;
use crate::plan::{plan_container, process::plan_process, ContainerPlan};
use crate::spawn::{spawn_exec, spawn_init, ChildIo, ParkedInit, Spawned};
use crate::sys::{LinuxSys, Sys};

/// Read size for process output.
const CHUNK: usize = 64 * 1024;
/// EOT: what closing stdin means on a pty.
const VEOF: u8 = 4;
/// Most stdin bytes the agent keeps for the init process before Start (a pipe's worth).
const EARLY_STDIN_MAX: usize = 1 << 20;

/// A running process of the container, with the agent's ends of its stdio.
#[derive(Debug)]
pub struct Proc {
    /// `init` or the exec id.
    pub stream: String,
    /// Pid in the agent's namespace.
    pub pid: i32,
    /// Output descriptors and the fd number they stand for (1, 2).
    pub outputs: Vec<(u8, OwnedFd)>,
    /// Where stdin goes (a pipe, or a duplicate of the pty master).
    pub stdin: Option<OwnedFd>,
    /// Whether the process has a pty.
    pub pty: bool,
    /// stdin bytes not yet accepted by the process.
    pub stdin_buf: Vec<u8>,
    /// Close stdin once `stdin_buf` is written.
    pub close_after_flush: bool,
}

impl Proc {
    fn new(stream: &str, s: Spawned) -> Result<Self, String> {
        let (outputs, stdin, pty) = match s.io {
            ChildIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => (vec![(1, stdout), (2, stderr)], stdin, false),
            ChildIo::Pty { master } => {
                let input = master
                    .try_clone()
                    .map_err(|e| format!("dup pty master: {e}"))?;
                (vec![(1, master)], input, true)
            }
        };
        Ok(Self {
            stream: stream.to_owned(),
            pid: s.pid,
            outputs,
            stdin: Some(stdin),
            pty,
            stdin_buf: Vec::new(),
            close_after_flush: false,
        })
    }

    /// Reads one chunk from output `idx`; `false` when that output is finished (and removed).
    pub fn read_output(&mut self, idx: usize, out: &mut Vec<AgentMessage>) -> bool {
        let mut buf = vec![0u8; CHUNK];
        let (fd_num, fd) = &self.outputs[idx];
        match fdio::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => {}
            Ok(n) => {
                buf.truncate(n);
                out.push(AgentMessage::Event(Event::Output {
                    stream: self.stream.clone(),
                    fd: *fd_num,
                    data: Bytes(buf),
                }));
                return true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            // EIO: the pty's last slave is closed.
            Err(_) => {}
        }
        self.outputs.remove(idx);
        false
    }

    /// Reads whatever is buffered in all outputs (the process is gone).
    fn drain(&mut self, out: &mut Vec<AgentMessage>) {
        let mut idx = 0;
        while idx < self.outputs.len() {
            let before = out.len();
            // Still open but nothing read: it would block, nothing more right now.
            if self.read_output(idx, out) && out.len() == before {
                idx += 1;
            }
        }
    }

    /// Writes buffered stdin; closes it when asked and flushed.
    pub fn flush_stdin(&mut self) {
        while !self.stdin_buf.is_empty() {
            let Some(fd) = &self.stdin else {
                self.stdin_buf.clear();
                break;
            };
            match fdio::write(fd.as_raw_fd(), &self.stdin_buf) {
                Ok(n) => {
                    self.stdin_buf.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // The reader is gone.
                    self.stdin_buf.clear();
                    self.stdin = None;
                }
            }
        }
        if self.close_after_flush {
            if self.pty {
                if let Some(fd) = &self.stdin {
                    let _ = fdio::write(fd.as_raw_fd(), &[VEOF]);
                }
            }
            self.stdin = None;
            self.close_after_flush = false;
        }
    }
}

/// The one container of this agent.
#[derive(Debug)]
pub struct Container {
    /// Its plan.
    pub plan: ContainerPlan,
    /// Its cgroup directory, when cgroups are in use.
    pub cgroup_dir: Option<PathBuf>,
    /// The cgroup v2 root.
    pub cgroup_root: PathBuf,
    /// Environment defaults added to every process (see [`AgentConfig::default_env`]).
    pub default_env: Vec<String>,
    /// The root filesystem mount the agent made (block devices).
    pub mounted: Option<PathBuf>,
    /// Lifecycle state.
    pub status: ContainerStatus,
    /// Pid of the init process.
    pub init_pid: i32,
    /// The init process while it waits for Start.
    pub parked: Option<ParkedInit>,
    /// Running processes (init after Start, exec'd ones).
    pub procs: Vec<Proc>,
    /// How init ended.
    pub init_exit: Option<ExitStatus>,
    /// Exec ids used so far.
    pub exec_ids: Vec<String>,
    /// When Start released the init process (for the log's timings).
    pub started_at: Option<std::time::Instant>,
    /// stdin for the init process sent before Start (and whether it was closed): the host
    /// relays its stdin from the create on, as a pipe would hold it.
    pub early_stdin: (Vec<u8>, bool),
    /// The container's namespaces, let go of once its exit has been reported.
    pub held_namespaces: HeldNamespaces,
    /// The log line of init's exit, written once the exit has been reported.
    pub exit_log: Option<String>,
}

impl Container {
    /// Create: mount the rootfs, plan, make the cgroup, park the init process.
    /// A fresh network namespace `spare_netns` made ahead of time replaces the one the
    /// spec's clone would make.
    pub fn create(
        spec: &Spec,
        rootfs: &Rootfs,
        share: Option<&str>,
        terminal: bool,
        cfg: &AgentConfig,
        spare_netns: Option<&std::os::fd::OwnedFd>,
    ) -> Result<Self, String> {
        let cgroup_root = cfg.cgroup_root.as_path();
        let start = std::time::Instant::now();
        // Plan first against a placeholder so bad specs fail before anything is mounted.
        plan_container(spec, Path::new(ROOTFS_MOUNT), terminal).map_err(|e| e.to_string())?;
        if let Some(tag) = share {
            mount_share(&mut LinuxSys, tag)?;
        }
        let (root, mounted) = mount_rootfs(&mut LinuxSys, rootfs, DISK_WAIT)?;
        if let Some(mounts) = spec.mounts() {
            super::rootfs::wait_for_disk_mounts(&mut LinuxSys, mounts, DISK_WAIT);
        }
        let mounted_at = start.elapsed();
        let undo_mount = |mounted: &Option<PathBuf>| {
            if let Some(m) = mounted {
                let _ = LinuxSys.umount(m, libc::MNT_DETACH);
            }
        };
        let plan = match plan_container(spec, &root, terminal) {
            Ok(mut p) => {
                p.process.add_default_env(&cfg.default_env);
                p
            }
            Err(e) => {
                undo_mount(&mounted);
                return Err(e.to_string());
            }
        };
        for what in &plan.ignored {
            tracing::warn!("not applied: {what}");
        }
        let cgroup_dir = match cgroup::setup(cgroup_root, &plan.cgroup) {
            Ok(d) => d,
            Err(e) => {
                undo_mount(&mounted);
                return Err(e);
            }
        };
        let procs_file = cgroup_dir.as_ref().map(|d| d.join("cgroup.procs"));
        let cgroup_at = start.elapsed();
        let spare = spare_netns
            .filter(|_| plan.namespaces.clone_flags & libc::CLONE_NEWNET != 0)
            .map(crate::spare_netns::join_path);
        let spawned = spawn_init(&plan, procs_file, spare);
        // Where a create's time goes (the guest's kernel work dominates on slow hosts).
        tracing::info!(
            "create: rootfs mounted after {mounted_at:?}, cgroup after {cgroup_at:?}, init parked after {:?}",
            start.elapsed()
        );
        match spawned {
            Ok(parked) => Ok(Self {
                init_pid: parked.spawned.pid,
                held_namespaces: HeldNamespaces::open(parked.spawned.pid, &plan.namespaces),
                exit_log: None,
                plan,
                cgroup_dir,
                cgroup_root: cgroup_root.to_path_buf(),
                default_env: cfg.default_env.clone(),
                mounted,
                status: ContainerStatus::Created,
                parked: Some(parked),
                procs: Vec::new(),
                init_exit: None,
                exec_ids: Vec::new(),
                started_at: None,
                early_stdin: (Vec::new(), false),
            }),
            Err(e) => {
                if let Some(d) = &cgroup_dir {
                    cgroup::remove(cgroup_root, d);
                }
                undo_mount(&mounted);
                Err(format!("create container: {e}"))
            }
        }
    }

    /// Start: release the parked init process.
    pub fn start(&mut self) -> Result<ResponseBody, String> {
        let Some(parked) = self.parked.take() else {
            return Err(format!("container is {}, not created", self.status));
        };
        self.status = ContainerStatus::Running;
        self.started_at = Some(std::time::Instant::now());
        match parked.start() {
            Ok(s) => {
                let mut init = Proc::new(INIT_STREAM, s)?;
                let (data, close) = std::mem::take(&mut self.early_stdin);
                init.stdin_buf = data;
                init.close_after_flush = close;
                init.flush_stdin();
                self.procs.push(init);
                Ok(ResponseBody::Done)
            }
            Err((s, msg)) => {
                // It exits with 127; its Exited event follows when it is reaped.
                self.procs.push(Proc::new(INIT_STREAM, s)?);
                Err(format!("start container: {msg}"))
            }
        }
    }

    /// Exec: a second process in the container.
    pub fn exec(&mut self, exec_id: &str, process: &Process) -> Result<ResponseBody, String> {
        if self.status == ContainerStatus::Stopped {
            return Err("cannot exec in a stopped container".into());
        }
        if exec_id.is_empty()
            || exec_id == INIT_STREAM
            || self.exec_ids.iter().any(|e| e == exec_id)
        {
            return Err(format!(
                "exec id {exec_id:?} is empty, reserved or already used"
            ));
        }
        let mut plan = plan_process(process, None).map_err(|e| e.to_string())?;
        plan.add_default_env(&self.default_env);
        // As runc: the container's seccomp profile holds for exec'd processes too.
        plan.seccomp = self.plan.process.seccomp.clone();
        let procs_file = self.cgroup_dir.as_ref().map(|d| d.join("cgroup.procs"));
        let s = spawn_exec(self.init_pid, &self.plan.namespaces, &plan, procs_file)
            .map_err(|e| format!("exec: {e}"))?;
        let pid = s.pid;
        self.exec_ids.push(exec_id.to_owned());
        self.procs.push(Proc::new(exec_id, s)?);
        Ok(ResponseBody::Started { pid })
    }

    /// Guest pids of the container's processes.
    pub fn pids(&self) -> Vec<i32> {
        if let Some(dir) = &self.cgroup_dir {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                let mut pids: Vec<i32> =
                    text.lines().filter_map(|l| l.trim().parse().ok()).collect();
                if self.status == ContainerStatus::Created && !pids.contains(&self.init_pid) {
                    pids.push(self.init_pid);
                }
                pids.sort_unstable();
                return pids;
            }
        }
        let mut pids: Vec<i32> = self.procs.iter().map(|p| p.pid).collect();
        if self.parked.is_some() {
            pids.push(self.init_pid);
        }
        pids.sort_unstable();
        pids
    }

    /// Signal one stream's process, or all the container's processes.
    pub fn signal(&self, stream: &str, signal: i32, all: bool) -> Result<ResponseBody, String> {
        if !(1..=64).contains(&signal) {
            return Err(format!("bad signal number {signal}"));
        }
        let targets = if all {
            self.pids()
        } else if stream == INIT_STREAM {
            if self.status == ContainerStatus::Stopped {
                return Err("container is stopped".into());
            }
            vec![self.init_pid]
        } else {
            match self.procs.iter().find(|p| p.stream == stream) {
                Some(p) => vec![p.pid],
                None => return Err(format!("no running process for stream {stream:?}")),
            }
        };
        for pid in targets {
            // SAFETY: kill(2) on a pid of this container.
            if unsafe { libc::kill(pid, signal) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(format!("kill {pid} with signal {signal}: {e}"));
                }
            }
        }
        Ok(ResponseBody::Done)
    }

    /// Queues stdin bytes for a stream.
    pub fn stdin(
        &mut self,
        stream: &str,
        data: &[u8],
        close: bool,
    ) -> Result<ResponseBody, String> {
        if stream == INIT_STREAM && self.parked.is_some() {
            // Kept for Start (up to EARLY_STDIN_MAX bytes), as a pipe would hold it.
            let (buf, closed) = &mut self.early_stdin;
            if *closed {
                return Err(format!("stdin of {stream:?} is closed"));
            }
            if buf.len() + data.len() > EARLY_STDIN_MAX {
                return Err(format!(
                    "more than {EARLY_STDIN_MAX} bytes of stdin before Start"
                ));
            }
            buf.extend_from_slice(data);
            *closed |= close;
            return Ok(ResponseBody::Done);
        }
        let p = self
            .procs
            .iter_mut()
            .find(|p| p.stream == stream)
            .ok_or_else(|| format!("no running process for stream {stream:?}"))?;
        if p.stdin.is_none() || p.close_after_flush {
            return Err(format!("stdin of {stream:?} is closed"));
        }
        p.stdin_buf.extend_from_slice(data);
        p.close_after_flush |= close;
        p.flush_stdin();
        Ok(ResponseBody::Done)
    }

    /// Resizes a stream's pty.
    pub fn resize(&self, stream: &str, rows: u16, cols: u16) -> Result<ResponseBody, String> {
        let p = self
            .procs
            .iter()
            .find(|p| p.stream == stream)
            .ok_or_else(|| format!("no running process for stream {stream:?}"))?;
        match (&p.stdin, p.pty) {
            (Some(fd), true) => {
                fdio::set_winsize(fd.as_raw_fd(), rows, cols).map_err(|e| format!("resize: {e}"))?
            }
            _ => return Err(format!("stream {stream:?} has no terminal")),
        }
        Ok(ResponseBody::Done)
    }

    /// State response.
    pub fn state(&self) -> ResponseBody {
        let pid = (self.status != ContainerStatus::Stopped).then_some(self.init_pid);
        ResponseBody::State {
            status: self.status,
            pid,
            exit: self.init_exit,
            init_pid: Some(self.init_pid),
            execs: self
                .procs
                .iter()
                .filter(|p| p.stream != INIT_STREAM)
                .map(|p| p.stream.clone())
                .collect(),
        }
    }

    /// A child ended: its last output and its Exited event. Unknown pids are orphans reaped by
    /// PID 1 and ignored.
    pub fn reaped(&mut self, pid: i32, status: ExitStatus, out: &mut Vec<AgentMessage>) {
        if let Some(i) = self.procs.iter().position(|p| p.pid == pid) {
            let mut p = self.procs.remove(i);
            p.drain(out);
            out.push(AgentMessage::Event(Event::Exited {
                stream: p.stream.clone(),
                status,
            }));
        } else if pid == self.init_pid && self.parked.take().is_some() {
            out.push(AgentMessage::Event(Event::Exited {
                stream: INIT_STREAM.into(),
                status,
            }));
        } else {
            return;
        }
        if pid == self.init_pid {
            let since_start = self.started_at.map(|t| t.elapsed());
            // Logged once the event is out: a console line is slow guest work on some hosts.
            self.exit_log = Some(format!(
                "container init {pid} ended: {status:?} ({since_start:?} after Start)"
            ));
            self.status = ContainerStatus::Stopped;
            self.init_exit = Some(status);
        }
    }

    /// Kills every process of the container (SIGKILL) and waits for them.
    pub fn kill_all(&mut self, out: &mut Vec<AgentMessage>) {
        let _ = self.signal(INIT_STREAM, libc::SIGKILL, true);
        let _ = self.signal(INIT_STREAM, libc::SIGKILL, false);
        let mut pids: Vec<i32> = self.procs.iter().map(|p| p.pid).collect();
        if self.parked.is_some() {
            pids.push(self.init_pid);
        }
        for pid in pids {
            let _ = self.signal(INIT_STREAM, libc::SIGKILL, true);
            let mut st = 0;
            // SAFETY: waiting for our own child.
            if unsafe { libc::waitpid(pid, &mut st, 0) } == pid {
                self.reaped(pid, exit_status(st), out);
            }
        }
    }

    /// Once init's exit has been sent or kept for the host: writes its log line and lets go
    /// of the container's namespaces (whose teardown the host need not wait for).
    pub fn after_exit_reported(&mut self) {
        if let Some(line) = self.exit_log.take() {
            tracing::info!("{line}");
        }
        if self.status == ContainerStatus::Stopped {
            self.held_namespaces.release();
        }
    }

    /// Removes the cgroup and unmounts the root filesystem (after `kill_all`).
    pub fn cleanup(&mut self) {
        self.held_namespaces.release();
        if let Some(d) = self.cgroup_dir.take() {
            cgroup::remove(&self.cgroup_root, &d);
        }
        if let Some(m) = self.mounted.take() {
            if LinuxSys.umount(&m, 0).is_err() {
                let _ = LinuxSys.umount(&m, libc::MNT_DETACH);
            }
        }
    }
}

/// Decodes a wait status.
pub fn exit_status(st: i32) -> ExitStatus {
    if libc::WIFSIGNALED(st) {
        ExitStatus::signaled(libc::WTERMSIG(st))
    } else {
        ExitStatus::exited(libc::WEXITSTATUS(st))
    }
}
