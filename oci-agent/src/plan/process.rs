//! `process` of config.json (or of an Exec request) -> what the child applies before exec.

use std::ffi::CString;
use std::path::PathBuf;

use oci_spec::runtime::{PosixRlimitType, Process};

use super::caps::{plan_caps, CapSets};
use super::PlanError;

/// PATH used for the executable lookup when the process environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RlimitPlan {
    /// `RLIMIT_*` number.
    pub resource: u32,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Everything about the process itself (as opposed to its container).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    /// argv; `args[0]` is looked up in PATH unless it contains a `/`.
    pub args: Vec<CString>,
    /// The environment, `KEY=value`.
    pub env: Vec<CString>,
    /// PATH from `env`, or [`DEFAULT_PATH`].
    pub path: String,
    /// Working directory inside the container (absolute).
    pub cwd: PathBuf,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups (replaces whatever the agent had).
    pub additional_gids: Vec<u32>,
    /// umask, when given.
    pub umask: Option<u32>,
    /// Resource limits.
    pub rlimits: Vec<RlimitPlan>,
    /// Capability sets; `None` leaves the capabilities alone.
    pub caps: Option<CapSets>,
    /// Set `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privileges: bool,
    /// The container's seccomp filters (`linux.seccomp`; exec'd processes get them too).
    pub seccomp: Option<super::seccomp::SeccompPlan>,
    /// Value for /proc/self/oom_score_adj.
    pub oom_score_adj: Option<i32>,
    /// Give the process a pty.
    pub terminal: bool,
    /// Initial pty size `(rows, cols)` from `process.consoleSize`.
    pub console_size: Option<(u16, u16)>,
}

// The RLIMIT_* constants are u32 with glibc and i32 elsewhere.
#[allow(clippy::unnecessary_cast)]
fn rlimit_number(t: PosixRlimitType) -> u32 {
    use PosixRlimitType::*;
    let n = match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    };
    n as u32
}

fn cstring(what: &str, s: &str) -> Result<CString, PlanError> {
    CString::new(s).map_err(|_| PlanError::NulByte(format!("{what} {s:?}")))
}

/// Plans a process. `terminal` overrides `process.terminal` when given (Create's flag).
pub fn plan_process(p: &Process, terminal: Option<bool>) -> Result<ProcessPlan, PlanError> {
    let args = p
        .args()
        .as_ref()
        .filter(|a| !a.is_empty())
        .ok_or(PlanError::NoArgs)?;
    if args[0].is_empty() {
        return Err(PlanError::NoArgs);
    }
    let args = args
        .iter()
        .map(|a| cstring("argument", a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = Vec::new();
    let mut path = None;
    for e in p.env().iter().flatten() {
        if !e.contains('=') || e.starts_with('=') {
            return Err(PlanError::BadEnv(e.clone()));
        }
        if let Some(v) = e.strip_prefix("PATH=") {
            path = Some(v.to_owned());
        }
        env.push(cstring("environment entry", e)?);
    }
    let cwd = p.cwd().clone();
    if !cwd.is_absolute() {
        return Err(PlanError::RelativeCwd(cwd));
    }
    let user = p.user();
    let mut rlimits = Vec::new();
    for r in p.rlimits().iter().flatten() {
        if r.soft() > r.hard() {
            return Err(PlanError::BadRlimit(format!(
                "{}: soft limit {} above hard limit {}",
                r.typ(),
                r.soft(),
                r.hard()
            )));
        }
        rlimits.push(RlimitPlan {
            resource: rlimit_number(r.typ()),
            soft: r.soft(),
            hard: r.hard(),
        });
    }
    let caps = p.capabilities().as_ref().map(plan_caps).transpose()?;
    if let Some(score) = p.oom_score_adj() {
        if !(-1000..=1000).contains(&score) {
            return Err(PlanError::BadOomScore(score));
        }
    }
    Ok(ProcessPlan {
        args,
        env,
        path: path.unwrap_or_else(|| DEFAULT_PATH.to_owned()),
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        rlimits,
        caps,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        seccomp: None,
        oom_score_adj: p.oom_score_adj(),
        terminal: terminal.unwrap_or_else(|| p.terminal().unwrap_or(false)),
        console_size: p
            .console_size()
            .filter(|b| b.height() > 0 && b.width() > 0)
            .map(|b| {
                (
                    b.height().min(u16::MAX.into()) as u16,
                    b.width().min(u16::MAX.into()) as u16,
                )
            }),
    })
}

impl ProcessPlan {
    /// Appends `KEY=value` entries whose key the environment does not set yet (the agent's
    /// platform defaults, e.g. the PVM host's GLIBC_TUNABLES).
    pub fn add_default_env(&mut self, defaults: &[String]) {
        for entry in defaults {
            let Some((key, _)) = entry.split_once('=') else {
                continue;
            };
            let prefix = format!("{key}=");
            if self
                .env
                .iter()
                .any(|e| e.as_bytes().starts_with(prefix.as_bytes()))
            {
                continue;
            }
            if let Ok(c) = CString::new(entry.as_str()) {
                self.env.push(c);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn process(json: &str) -> Process {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn full_process() {
        let p = process(
            r#"{"args": ["sh", "-c", "id"], "env": ["PATH=/bin", "A=b=c"], "cwd": "/tmp",
                "user": {"uid": 1000, "gid": 100, "additionalGids": [5, 6], "umask": 18},
                "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}],
                "noNewPrivileges": true, "oomScoreAdj": 500, "terminal": true,
                "capabilities": {"bounding": ["CAP_KILL"]}}"#,
        );
        let plan = plan_process(&p, None).unwrap();
        assert_eq!(plan.args[2].to_str().unwrap(), "id");
        assert_eq!(plan.path, "/bin");
        assert_eq!(plan.env[1].to_str().unwrap(), "A=b=c");
        assert_eq!((plan.uid, plan.gid), (1000, 100));
        assert_eq!(plan.additional_gids, vec![5, 6]);
        assert_eq!(plan.umask, Some(0o22));
        assert_eq!(
            plan.rlimits,
            vec![RlimitPlan {
                resource: rlimit_number(PosixRlimitType::RlimitNofile),
                soft: 100,
                hard: 200
            }]
        );
        assert!(plan.no_new_privileges);
        assert_eq!(plan.oom_score_adj, Some(500));
        assert!(plan.terminal);
        assert_eq!(plan.caps.unwrap().bounding, 1 << 5);
        assert!(!plan_process(&p, Some(false)).unwrap().terminal);
        let p = process(
            r#"{"args": ["x"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "consoleSize": {"height": 30, "width": 90}}"#,
        );
        assert_eq!(plan_process(&p, None).unwrap().console_size, Some((30, 90)));
    }

    #[test]
    fn default_env_does_not_override() {
        let mut plan = plan_process(
            &process(
                r#"{"args": ["x"], "env": ["A=1"], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#,
            ),
            None,
        )
        .unwrap();
        plan.add_default_env(&["A=2".into(), "B=3".into(), "junk".into()]);
        let env: Vec<_> = plan.env.iter().map(|e| e.to_str().unwrap()).collect();
        assert_eq!(env, ["A=1", "B=3"]);
    }

    #[test]
    fn defaults() {
        let plan = plan_process(
            &process(r#"{"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#),
            None,
        )
        .unwrap();
        assert_eq!(plan.path, DEFAULT_PATH);
        assert!(plan.env.is_empty());
        assert_eq!(plan.caps, None);
        assert!(!plan.no_new_privileges);
        assert!(!plan.terminal);
    }

    #[test]
    fn bad_processes_are_refused() {
        let cases = [
            (r#"{"cwd": "/", "user": {"uid": 0, "gid": 0}}"#, "no args"),
            (
                r#"{"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#,
                "no args",
            ),
            (
                r#"{"args": [""], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#,
                "no args",
            ),
            (
                r#"{"args": ["a\u0000b"], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#,
                "NUL",
            ),
            (
                r#"{"args": ["x"], "env": ["NOEQUALS"], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#,
                "environment",
            ),
            (
                r#"{"args": ["x"], "cwd": "tmp", "user": {"uid": 0, "gid": 0}}"#,
                "cwd",
            ),
            (
                r#"{"args": ["x"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                 "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 2, "hard": 1}]}"#,
                "soft limit",
            ),
            (
                r#"{"args": ["x"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "oomScoreAdj": 5000}"#,
                "oom",
            ),
        ];
        for (json, want) in cases {
            let err = plan_process(&process(json), None).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
