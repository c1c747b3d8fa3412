//! The supervision state machine, free of system calls: it is told what happened
//! (a process started, a process exited, time passed) and answers with what to do
//! (start a service, run its test), so its rules are unit-tested without processes.
//!
//! Rules:
//! - a service starts once every service in its `after` list is *up*: a long-running
//!   service whose `test` passed (or that has no test), or a oneshot that exited 0;
//! - the `test` runs every [`TEST_INTERVAL`] while it fails and the service runs;
//! - a long-running service that dies is started again after its [`Backoff`] delay;
//! - a oneshot runs once: exit 0 makes it done, anything else failed (its dependents
//!   then never start, and the console says why);
//! - once shutting down, nothing starts any more.

use crate::backoff::Backoff;
use crate::config::Service;
use std::time::{Duration, Instant};

/// How often a failing `test` is run again.
pub const TEST_INTERVAL: Duration = Duration::from_millis(500);

/// A process id.
pub type Pid = i32;

/// Where one service is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for its dependencies.
    Blocked,
    /// Its process runs; `up` once the test passed (or it has none).
    Running {
        /// The service's process.
        pid: Pid,
        /// When it started.
        since: Instant,
        /// Whether dependents may start.
        up: bool,
    },
    /// Died; starts again at `until`.
    Backoff {
        /// When to start it again.
        until: Instant,
    },
    /// A oneshot that exited 0.
    Done,
    /// A oneshot that failed, or a service that could not be spawned.
    Failed(String),
    /// Stopped at shutdown.
    Stopped,
}

/// Something the caller should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn the service's `exec`, then call [`Supervisor::spawned`].
    Start(String),
    /// Spawn the service's `test`, then call [`Supervisor::test_spawned`].
    Test(String),
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

#[derive(Debug)]
struct Entry {
    service: Service,
    state: State,
    backoff: Backoff,
    test_pid: Option<Pid>,
    next_test: Option<Instant>,
}

/// All services and their states.
#[derive(Debug)]
pub struct Supervisor {
    entries: Vec<Entry>,
    shutting_down: bool,
}

impl Supervisor {
    /// Takes the services in start order (see [`crate::graph::start_order`]).
    pub fn new(services: Vec<Service>) -> Self {
        let entries = services
            .into_iter()
            .map(|service| Entry {
                service,
                state: State::Blocked,
                backoff: Backoff::default(),
                test_pid: None,
                next_test: None,
            })
            .collect();
        Supervisor {
            entries,
            shutting_down: false,
        }
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.entries
            .iter()
            .find(|e| e.service.name == name)
            .map(|e| &e.service)
    }

    /// The state of `name`.
    pub fn state(&self, name: &str) -> Option<&State> {
        self.entries
            .iter()
            .find(|e| e.service.name == name)
            .map(|e| &e.state)
    }

    fn is_up(&self, name: &str) -> bool {
        matches!(
            self.state(name),
            Some(State::Done | State::Running { up: true, .. })
        )
    }

    fn entry_mut(&mut self, name: &str) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.service.name == name)
    }

    /// What to do at `now`: services to start, tests to run.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.shutting_down {
            return actions;
        }
        for i in 0..self.entries.len() {
            let ready = self.entries[i].service.after.iter().all(|d| self.is_up(d));
            let entry = &mut self.entries[i];
            match entry.state {
                State::Blocked if ready => actions.push(Action::Start(entry.service.name.clone())),
                State::Backoff { until } if until <= now => {
                    actions.push(Action::Start(entry.service.name.clone()))
                }
                State::Running { up: false, .. }
                    if entry.service.test.is_some()
                        && entry.test_pid.is_none()
                        && entry.next_test.is_none_or(|t| t <= now) =>
                {
                    actions.push(Action::Test(entry.service.name.clone()));
                }
                _ => {}
            }
        }
        actions
    }

    /// The earliest time [`Supervisor::poll`] has something new to do (None: only a
    /// process exit can change anything).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|e| match e.state {
                State::Backoff { until } => Some(until),
                State::Running { up: false, .. }
                    if e.service.test.is_some() && e.test_pid.is_none() =>
                {
                    e.next_test
                }
                _ => None,
            })
            .min()
    }

    /// The service's process was spawned (Ok(pid)) or could not be (Err(reason)).
    pub fn spawned(&mut self, name: &str, result: Result<Pid, String>, now: Instant) {
        let Some(entry) = self.entry_mut(name) else {
            return;
        };
        entry.state = match result {
            Ok(pid) => {
                entry.next_test = None;
                State::Running {
                    pid,
                    since: now,
                    up: entry.service.test.is_none() && !entry.service.oneshot,
                }
            }
            Err(reason) if entry.service.oneshot => State::Failed(reason),
            Err(_) => {
                let delay = entry.backoff.on_exit(Duration::ZERO);
                State::Backoff { until: now + delay }
            }
        };
    }

    /// The service's test process was spawned (or not: it is tried again later).
    pub fn test_spawned(&mut self, name: &str, result: Result<Pid, String>, now: Instant) {
        let Some(entry) = self.entry_mut(name) else {
            return;
        };
        match result {
            Ok(pid) => entry.test_pid = Some(pid),
            Err(_) => entry.next_test = Some(now + TEST_INTERVAL),
        }
    }

    /// A child exited. Returns a console message about it, if any (unknown pids, e.g.
    /// orphans re-parented to PID 1, return None).
    pub fn exited(&mut self, pid: Pid, exit: Exit, now: Instant) -> Option<String> {
        let shutting_down = self.shutting_down;
        for entry in &mut self.entries {
            let name = entry.service.name.clone();
            if entry.test_pid == Some(pid) {
                entry.test_pid = None;
                if let State::Running { up, .. } = &mut entry.state {
                    if exit == Exit::Code(0) {
                        *up = true;
                        return Some(format!("{name} is up (test passed)"));
                    }
                    entry.next_test = Some(now + TEST_INTERVAL);
                }
                return None;
            }
            let State::Running {
                pid: running,
                since,
                ..
            } = entry.state
            else {
                continue;
            };
            if running != pid {
                continue;
            }
            if shutting_down {
                entry.state = State::Stopped;
                return Some(format!("{name} stopped ({exit})"));
            }
            if entry.service.oneshot {
                if exit == Exit::Code(0) {
                    entry.state = State::Done;
                    return Some(format!("{name} done"));
                }
                entry.state = State::Failed(exit.to_string());
                return Some(format!(
                    "{name} failed ({exit}); services after it will not start"
                ));
            }
            let delay = entry.backoff.on_exit(now.saturating_duration_since(since));
            entry.state = State::Backoff { until: now + delay };
            return Some(format!(
                "{name} exited ({exit}); restarting in {} s",
                delay.as_secs_f32()
            ));
        }
        None
    }

    /// Enters shutdown: nothing starts any more. Returns (pid, stop signal, timeout) of
    /// every running service, dependents before their dependencies.
    pub fn begin_shutdown(&mut self) -> Vec<(Pid, i32, Duration)> {
        self.shutting_down = true;
        let mut out = Vec::new();
        for entry in self.entries.iter_mut().rev() {
            match entry.state {
                State::Running { pid, .. } => out.push((
                    pid,
                    entry.service.stop_signal,
                    Duration::from_secs(entry.service.shutdown_timeout),
                )),
                State::Blocked | State::Backoff { .. } => entry.state = State::Stopped,
                _ => {}
            }
        }
        out
    }

    /// Whether any service process still runs.
    pub fn any_running(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.state, State::Running { .. }))
    }

    /// The processes of the running services.
    pub fn running_pids(&self) -> Vec<Pid> {
        self.entries
            .iter()
            .filter_map(|e| {
                if let State::Running { pid, .. } = e.state {
                    Some(pid)
                } else {
                    None
                }
            })
            .collect()
    }

    /// Whether shutdown began.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::parse_service;

    fn sup(defs: &[(&str, &str)]) -> Supervisor {
        Supervisor::new(
            defs.iter()
                .map(|(n, t)| parse_service(n, t).unwrap())
                .collect(),
        )
    }

    fn starts(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| {
                if let Action::Start(n) = a {
                    Some(n.as_str())
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn dependents_wait_for_oneshots_and_tests() {
        let mut s = sup(&[
            ("storage", "exec: prepare\noneshot: true\n"),
            ("node", "exec: serve\ntest: status\nafter: [storage]\n"),
            ("report", "exec: report\noneshot: true\nafter: [node]\n"),
        ]);
        let t0 = Instant::now();
        assert_eq!(starts(&s.poll(t0)), ["storage"]);
        s.spawned("storage", Ok(10), t0);
        assert!(s.poll(t0).is_empty(), "node waits for storage");
        assert_eq!(
            s.exited(10, Exit::Code(0), t0).as_deref(),
            Some("storage done")
        );
        assert_eq!(starts(&s.poll(t0)), ["node"]);
        s.spawned("node", Ok(11), t0);
        assert_eq!(s.poll(t0), [Action::Test("node".into())]);
        s.test_spawned("node", Ok(12), t0);
        assert!(s.poll(t0).is_empty(), "one test at a time");
        assert_eq!(s.exited(12, Exit::Code(1), t0), None);
        assert!(s.poll(t0).is_empty(), "failed test waits for the interval");
        assert_eq!(s.next_deadline(), Some(t0 + TEST_INTERVAL));
        let t1 = t0 + TEST_INTERVAL;
        assert_eq!(s.poll(t1), [Action::Test("node".into())]);
        s.test_spawned("node", Ok(13), t1);
        assert_eq!(
            s.exited(13, Exit::Code(0), t1).as_deref(),
            Some("node is up (test passed)")
        );
        assert_eq!(starts(&s.poll(t1)), ["report"]);
    }

    #[test]
    fn failed_oneshot_blocks_its_dependents() {
        let mut s = sup(&[
            ("storage", "exec: prepare\noneshot: true\n"),
            ("node", "exec: serve\nafter: [storage]\n"),
        ]);
        let t0 = Instant::now();
        s.poll(t0);
        s.spawned("storage", Ok(10), t0);
        let msg = s.exited(10, Exit::Code(3), t0).unwrap();
        assert!(msg.contains("storage failed (exit code 3)"), "{msg}");
        assert!(s.poll(t0 + Duration::from_secs(100)).is_empty());
        assert_eq!(s.state("node"), Some(&State::Blocked));
        // A oneshot that cannot even be spawned fails too, and is not retried.
        let mut s = sup(&[("x", "exec: nope\noneshot: true\n")]);
        s.poll(t0);
        s.spawned("x", Err("No such file".into()), t0);
        assert_eq!(s.state("x"), Some(&State::Failed("No such file".into())));
        assert!(s.poll(t0 + Duration::from_secs(100)).is_empty());
    }

    #[test]
    fn dead_services_restart_with_backoff() {
        let mut s = sup(&[("d", "exec: daemon\n")]);
        let t0 = Instant::now();
        assert_eq!(starts(&s.poll(t0)), ["d"]);
        s.spawned("d", Ok(1), t0);
        assert!(
            matches!(s.state("d"), Some(State::Running { up: true, .. })),
            "no test: up at once"
        );
        let msg = s.exited(1, Exit::Signal(9), t0).unwrap();
        assert_eq!(msg, "d exited (signal 9); restarting in 1 s");
        assert!(s.poll(t0 + Duration::from_millis(999)).is_empty());
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(starts(&s.poll(t1)), ["d"]);
        s.spawned("d", Ok(2), t1);
        assert!(s
            .exited(2, Exit::Code(1), t1)
            .unwrap()
            .ends_with("restarting in 2 s"));
        // Unknown pids (orphans reaped by PID 1) are ignored.
        assert_eq!(s.exited(999, Exit::Code(0), t1), None);
    }

    #[test]
    fn shutdown_stops_in_reverse_order_and_starts_nothing() {
        let mut s = sup(&[
            ("a", "exec: a\n"),
            (
                "b",
                "exec: b\nafter: [a]\nsignal: {stop: SIGINT}\nshutdown_timeout: 2\n",
            ),
            ("c", "exec: c\noneshot: true\nafter: [b]\n"),
        ]);
        let t0 = Instant::now();
        s.poll(t0);
        s.spawned("a", Ok(1), t0);
        s.poll(t0);
        s.spawned("b", Ok(2), t0);
        let stops = s.begin_shutdown();
        assert_eq!(
            stops,
            [
                (2, libc::SIGINT, Duration::from_secs(2)),
                (1, libc::SIGTERM, Duration::from_secs(10))
            ]
        );
        assert!(s.poll(t0).is_empty());
        assert_eq!(s.state("c"), Some(&State::Stopped));
        assert_eq!(
            s.exited(2, Exit::Code(0), t0).as_deref(),
            Some("b stopped (exit code 0)")
        );
        assert!(s.any_running());
        s.exited(1, Exit::Signal(15), t0);
        assert!(!s.any_running());
    }
}
