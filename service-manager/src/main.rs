//! `zvm-init`: a minimal PID 1 service manager in the spirit of zinit.
//!
//! As PID 1 it mounts /proc, /sys, /dev, /dev/pts, /run and /tmp, turns Ctrl-Alt-Del into
//! SIGINT, reads the services in /etc/zinit/*.yaml (see [`config`]), starts them in
//! dependency order, reaps zombies, restarts dead services with back-off, prints their
//! output on the console prefixed with their name, and on SIGINT, SIGTERM or SIGPWR stops
//! them (dependents first), unmounts, and powers off.
//!
//! Not as PID 1 (`zvm-init --config DIR`) it supervises the same way without touching
//! mounts or the machine's power, and exits once the services have stopped; that is how
//! its behaviour is tested on a host.
//!
//! `zos.KEY=VALUE` words of the kernel command line are passed to every service as
//! `ZOS_KEY=VALUE` (see [`cmdline`]).

mod backoff;
mod cmdline;
mod config;
mod graph;
mod supervisor;
mod sys;

use config::LogMode;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use supervisor::{Action, Exit, Supervisor};

/// Lines a `log: ring` service keeps.
const RING_LINES: usize = 200;
/// A partial line longer than this is printed as is.
const MAX_LINE: usize = 8192;

fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "zvm-init: {msg}");
    let _ = out.flush();
}

/// One service output pipe.
struct LogPipe {
    fd: OwnedFd,
    service: String,
    mode: LogMode,
    partial: Vec<u8>,
}

struct Manager {
    sup: Supervisor,
    env: Vec<(String, String)>,
    pipes: Vec<LogPipe>,
    rings: HashMap<String, VecDeque<String>>,
}

impl Manager {
    fn execute(&mut self, action: Action, now: Instant) {
        let (name, is_test) = match &action {
            Action::Start(n) => (n.clone(), false),
            Action::Test(n) => (n.clone(), true),
        };
        let Some(service) = self.sup.service(&name).cloned() else {
            return;
        };
        let (argv, log) = match (&service.test, is_test) {
            (Some(test), true) => (test.clone(), LogMode::Null),
            _ => (service.exec.clone(), service.log),
        };
        let result = sys::spawn(&service, &argv, &self.env, log)
            .map_err(|e| format!("cannot start {}: {e}", argv[0]));
        let result = match result {
            Ok((pid, pipe)) => {
                if let Some(fd) = pipe {
                    self.pipes.push(LogPipe {
                        fd,
                        service: name.clone(),
                        mode: log,
                        partial: Vec::new(),
                    });
                }
                if !is_test {
                    say(&format!("started {name} (pid {pid})"));
                }
                Ok(pid)
            }
            Err(e) => {
                say(&format!("{name}: {e}"));
                Err(e)
            }
        };
        if is_test {
            self.sup.test_spawned(&name, result, now);
        } else {
            self.sup.spawned(&name, result, now);
        }
    }

    /// Emits the complete lines of `pipe` (all of it at end of file).
    fn emit(&mut self, index: usize, eof: bool) {
        let pipe = &mut self.pipes[index];
        let mut text = String::new();
        let cut = if eof || pipe.partial.len() > MAX_LINE {
            pipe.partial.len()
        } else {
            pipe.partial
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |p| p + 1)
        };
        let chunk: Vec<u8> = pipe.partial.drain(..cut).collect();
        for line in String::from_utf8_lossy(&chunk).lines() {
            match pipe.mode {
                LogMode::Stdout => {
                    text.push_str(&pipe.service);
                    text.push_str(": ");
                    text.push_str(line);
                    text.push('\n');
                }
                LogMode::Ring => {
                    let ring = self.rings.entry(pipe.service.clone()).or_default();
                    if ring.len() == RING_LINES {
                        ring.pop_front();
                    }
                    ring.push_back(line.to_string());
                }
                LogMode::Null => {}
            }
        }
        if !text.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    fn read_pipes(&mut self, ready: &[RawFd]) {
        let mut i = 0;
        while i < self.pipes.len() {
            if !ready.contains(&self.pipes[i].fd.as_raw_fd()) {
                i += 1;
                continue;
            }
            let fd = self.pipes[i].fd.as_raw_fd();
            let eof = loop {
                match sys::read_available(fd, &mut self.pipes[i].partial) {
                    None => break true,
                    Some(0) => break false,
                    Some(_) => continue,
                }
            };
            self.emit(i, eof);
            if eof {
                self.pipes.remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn reaped(&mut self, pid: i32, exit: Exit, now: Instant) {
        let Some(msg) = self.sup.exited(pid, exit, now) else {
            return;
        };
        say(&msg);
        if exit == Exit::Code(0) {
            return;
        }
        let name = msg
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        if let Some(ring) = self.rings.get(&name) {
            for line in ring.iter().rev().take(20).rev() {
                say(&format!("{name} (log): {line}"));
            }
        }
    }
}

fn parse_args() -> Result<PathBuf, String> {
    let mut args = std::env::args().skip(1);
    let mut config = PathBuf::from("/etc/zinit");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                config = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--config needs a directory")?
            }
            "--help" | "-h" => {
                return Err("usage: zvm-init [--config DIR]   (default /etc/zinit)".into())
            }
            // The kernel passes unknown command-line words to init as arguments.
            _ if std::process::id() == 1 => {}
            other => {
                return Err(format!(
                    "unknown argument {other} (usage: zvm-init [--config DIR])"
                ))
            }
        }
    }
    Ok(config)
}

fn main() {
    let pid1 = std::process::id() == 1;
    let config_dir = match parse_args() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("zvm-init: {e}");
            std::process::exit(2);
        }
    };
    if pid1 {
        sys::pid1_setup(&say);
    } else {
        sys::become_subreaper();
    }
    let signals = match sys::signal_fd() {
        Ok(fd) => fd,
        Err(e) => {
            say(&format!("cannot set up signals: {e}"));
            std::process::exit(1);
        }
    };
    let services =
        config::load_dir(&config_dir).and_then(|s| graph::start_order(&s).map(|order| (s, order)));
    let services = match services {
        Ok((mut services, order)) => {
            services.sort_by_key(|s| order.iter().position(|o| *o == s.name));
            services
        }
        Err(e) => {
            // A broken configuration must not leave a node silently dead: say why, and as
            // PID 1 keep reaping so the console stays readable.
            say(&format!("configuration error: {e}"));
            if !pid1 {
                std::process::exit(1);
            }
            Vec::new()
        }
    };
    say(&format!(
        "{} services from {}",
        services.len(),
        config_dir.display()
    ));

    let mut env: Vec<(String, String)> = Vec::new();
    if std::env::var_os("PATH").is_none() {
        env.push(("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()));
    }
    env.extend(cmdline::zos_env(
        &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
    ));
    let mut m = Manager {
        sup: Supervisor::new(services),
        env,
        pipes: Vec::new(),
        rings: HashMap::new(),
    };
    let mut shutdown_deadline: Option<Instant> = None;
    let mut killed = false;

    loop {
        let now = Instant::now();
        for action in m.sup.poll(now) {
            m.execute(action, now);
        }
        if m.sup.shutting_down() {
            if !m.sup.any_running() && m.pipes.is_empty() {
                break;
            }
            if !killed && shutdown_deadline.is_some_and(|d| d <= now) {
                say("services still running after their shutdown timeout: killing them");
                if pid1 {
                    sys::kill_all();
                } else {
                    for pid in m.sup.running_pids() {
                        sys::kill_group(pid, libc::SIGKILL);
                    }
                }
                killed = true;
                shutdown_deadline = Some(now + Duration::from_secs(2));
            } else if killed && shutdown_deadline.is_some_and(|d| d <= now) {
                break;
            }
        }
        let deadline = [m.sup.next_deadline(), shutdown_deadline]
            .into_iter()
            .flatten()
            .min();
        let timeout_ms = deadline.map_or(-1, |d| {
            d.saturating_duration_since(Instant::now())
                .as_millis()
                .min(60_000) as i32
        });
        let mut fds = vec![signals.as_raw_fd()];
        fds.extend(m.pipes.iter().map(|p| p.fd.as_raw_fd()));
        let ready = sys::poll_readable(&fds, timeout_ms);
        if !ready.is_empty() {
            m.read_pipes(&ready);
        }
        if ready.contains(&signals.as_raw_fd()) {
            for sig in sys::read_signals(&signals) {
                if sig == libc::SIGCHLD {
                    continue;
                }
                if !m.sup.shutting_down() {
                    say(&format!("signal {sig}: stopping services"));
                    let stops = m.sup.begin_shutdown();
                    let longest = stops.iter().map(|s| s.2).max().unwrap_or_default();
                    for (pid, signal, _) in stops {
                        sys::kill_group(pid, signal);
                    }
                    shutdown_deadline = Some(Instant::now() + longest);
                }
            }
            let now = Instant::now();
            for (pid, exit) in sys::reap() {
                m.reaped(pid, exit, now);
            }
        }
    }
    say("all services stopped");
    if pid1 {
        sys::kill_all();
        std::thread::sleep(Duration::from_millis(100));
        sys::reap();
        sys::unmount_all(&say);
        sys::power_off(&say);
    }
}
