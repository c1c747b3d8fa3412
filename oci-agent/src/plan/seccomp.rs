//! `linux.seccomp` -> BPF programs, compiled by seccompiler (no libseccomp in the guest).
//!
//! An OCI profile gives a default action and, per group of system calls, an action with
//! optional argument conditions. seccompiler builds filters with one match action each, so
//! the profile becomes a stack of filters, which the kernel evaluates together, taking the
//! most severe answer (kill > trap > errno > trace > log > allow):
//!
//! - a *base* filter that allows every system call the profile lists with an action other
//!   than the default (under its conditions) and answers the default action for the rest
//!   (left out when the default is to allow);
//! - one filter per other action, answering it for its system calls (under their
//!   conditions) and allowing the rest.
//!
//! A listed call thus gets its own action, an unlisted one the default. As runc with
//! libseccomp, names this architecture does not have are skipped, several conditions on
//! different arguments must all hold, and several on the same argument are alternatives.

use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::PlanError;

/// What the agent installs: filters in installation order, and the seccomp(2) flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompPlan {
    /// BPF programs.
    pub programs: Vec<BpfProgram>,
    /// `SECCOMP_FILTER_FLAG_*` bits.
    pub flags: u32,
    /// Listed names this architecture has no system call for (skipped).
    pub unknown: Vec<String>,
}

fn bad(msg: impl Into<String>) -> PlanError {
    PlanError::Seccomp(msg.into())
}

/// The seccompiler action of an OCI action (`errno_ret` for ERRNO; EPERM by default).
fn action(a: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<SeccompAction, PlanError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno_ret.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => {
            SeccompAction::Trace(errno_ret.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(bad("SCMP_ACT_NOTIFY (no seccomp agent in the VM)"))
        }
    })
}

fn condition(arg: &LinuxSeccompArg) -> Result<SeccompCondition, PlanError> {
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| bad(format!("argument index {} (0 to 5)", arg.index())))?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        // (arg & value) == valueTwo
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| bad(format!("argument {index}: {e}")))
}

/// The rules of one syscall entry: `None` matches unconditionally.
fn rules(entry: &LinuxSyscall) -> Result<Option<Vec<SeccompRule>>, PlanError> {
    let args = entry.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Ok(None);
    }
    let mut indexes: Vec<usize> = args.iter().map(|a| a.index()).collect();
    indexes.sort_unstable();
    indexes.dedup();
    let conditions = args.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
    let rule = |c: Vec<SeccompCondition>| SeccompRule::new(c).map_err(|e| bad(e.to_string()));
    Ok(Some(if indexes.len() == args.len() {
        vec![rule(conditions)?]
    } else {
        conditions
            .into_iter()
            .map(|c| rule(vec![c]))
            .collect::<Result<_, _>>()?
    }))
}

/// System call number -> rules; an empty list matches unconditionally.
type RuleMap = BTreeMap<i64, Vec<SeccompRule>>;

fn add(map: &mut RuleMap, nr: i64, rules: &Option<Vec<SeccompRule>>) {
    match (map.get_mut(&nr), rules) {
        // Already unconditional.
        (Some(existing), _) if existing.is_empty() => {}
        (Some(existing), Some(more)) => existing.extend(more.iter().cloned()),
        (Some(existing), None) => existing.clear(),
        (None, rules) => {
            map.insert(nr, rules.clone().unwrap_or_default());
        }
    }
}

fn compile(
    map: RuleMap,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, PlanError> {
    let filter = SeccompFilter::new(map, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| bad(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| bad(e.to_string()))
}

/// Compiles `profile` for x86_64.
pub fn plan_seccomp(profile: &LinuxSeccomp) -> Result<SeccompPlan, PlanError> {
    if profile.listener_path().is_some() {
        return Err(bad("listenerPath (no seccomp agent in the VM)"));
    }
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut base = RuleMap::new();
    // Per action, in first-seen order (SeccompAction is not Ord).
    let mut by_action: Vec<(SeccompAction, RuleMap)> = Vec::new();
    let mut unknown = Vec::new();
    for entry in profile.syscalls().iter().flatten() {
        let act = action(entry.action(), entry.errno_ret())?;
        let mut numbers = Vec::new();
        for name in entry.names() {
            match syscalls::Sysno::from_str(name) {
                Ok(sysno) => numbers.push(i64::from(sysno.id())),
                Err(()) => unknown.push(name.clone()),
            }
        }
        if act == default {
            continue;
        }
        let rules = rules(entry)?;
        for nr in numbers {
            add(&mut base, nr, &rules);
            if act != SeccompAction::Allow {
                match by_action.iter_mut().find(|(a, _)| *a == act) {
                    Some((_, map)) => add(map, nr, &rules),
                    None => {
                        let mut map = RuleMap::new();
                        add(&mut map, nr, &rules);
                        by_action.push((act.clone(), map));
                    }
                }
            }
        }
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(compile(base, default, SeccompAction::Allow)?);
    }
    for (act, map) in by_action {
        programs.push(compile(map, SeccompAction::Allow, act)?);
    }
    let mut flags = 0;
    for flag in profile.flags().iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // One thread runs setup: nothing to synchronise; no notify listener to wait on.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync
            | LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        } as u32;
    }
    Ok(SeccompPlan {
        programs,
        flags,
        unknown,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).unwrap()
    }

    /// Runs `check` in a forked child under `plan`'s filters; the child's wait status.
    fn under(plan: &SeccompPlan, check: fn() -> bool) -> i32 {
        // SAFETY: fork in a test; the child only makes system calls and ends with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: prctl with integer arguments; the child's own filters.
            let ok = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0
                && plan.programs.iter().all(|p| {
                    use crate::sys::Sys;
                    crate::sys::LinuxSys.seccomp_filter(p, plan.flags).is_ok()
                })
                && check();
            // SAFETY: ending the child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    /// (answer, errno) of a raw system call without pointer arguments.
    fn call(nr: libc::c_long, a: libc::c_long, b: libc::c_long) -> (libc::c_long, i32) {
        // SAFETY: system calls without pointer arguments.
        let rc = unsafe { libc::syscall(nr, a, b) };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        (rc, if rc == -1 { errno } else { 0 })
    }

    #[test]
    fn an_allow_by_default_profile_denies_what_it_lists() {
        let plan = plan_seccomp(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["getpgid"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
                {"names": ["no_such_call", "getsid"], "action": "SCMP_ACT_ALLOW"}
            ]
        })))
        .unwrap();
        assert_eq!(plan.unknown, ["no_such_call"]);
        assert_eq!(
            plan.programs.len(),
            2,
            "no base filter; ERRNO 38 and ERRNO EPERM"
        );
        let status = under(&plan, || {
            call(libc::SYS_getppid, 0, 0) == (-1, libc::ENOSYS)
                && call(libc::SYS_getpgid, 1, 0) == (-1, libc::EPERM)
                && call(libc::SYS_getpgid, 0, 0).0 >= 0
                && call(libc::SYS_getsid, 0, 0).0 >= 0
        });
        assert_eq!(status, 0, "child status {status:#x}");
    }

    #[test]
    fn a_deny_by_default_profile_allows_what_it_lists_under_its_conditions() {
        let plan = plan_seccomp(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["exit", "exit_group", "getppid"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["getpgid"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                // Same argument twice: either value.
                {"names": ["getsid"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
                // Masked: (arg & 0xf0) == 0x10.
                {"names": ["getpriority"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 240, "valueTwo": 16, "op": "SCMP_CMP_MASKED_EQ"}]}
            ]
        })))
        .unwrap();
        assert_eq!(plan.programs.len(), 1, "only the base filter");
        let status = under(&plan, || {
            let denied = (-1, libc::EPERM);
            call(libc::SYS_getppid, 0, 0).0 > 0
                && call(libc::SYS_getuid, 0, 0) == denied
                && call(libc::SYS_getpgid, 0, 0).0 >= 0
                && call(libc::SYS_getpgid, 1, 0) == denied
                && call(libc::SYS_getsid, 0, 0).0 >= 0
                && call(libc::SYS_getsid, 1, 0) != denied
                && call(libc::SYS_getsid, 2, 0) == denied
                // 0x13 & 0xf0 == 0x10: allowed (an invalid `which`: EINVAL).
                && call(libc::SYS_getpriority, 0x13, 0) == (-1, libc::EINVAL)
                && call(libc::SYS_getpriority, 0x23, 0) == denied
        });
        assert_eq!(status, 0, "child status {status:#x}");
    }

    #[test]
    fn a_killing_action_ends_the_process() {
        let plan = plan_seccomp(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]
        })))
        .unwrap();
        let status = under(&plan, || {
            // SAFETY: a plain system call (it kills the child).
            unsafe { libc::getppid() };
            true
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn what_cannot_be_applied_is_a_clear_error() {
        for (json, needle) in [
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"}),
                "SCMP_ACT_NOTIFY",
            ),
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/l.sock"}),
                "listenerPath",
            ),
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ERRNO",
                     "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}),
                "argument index 6",
            ),
        ] {
            let err = plan_seccomp(&profile(json)).unwrap_err().to_string();
            assert!(
                err.starts_with("linux.seccomp: ") && err.contains(needle),
                "{err}"
            );
        }
        let flags = plan_seccomp(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_TSYNC"]
        })))
        .unwrap();
        assert_eq!(flags.flags, libc::SECCOMP_FILTER_FLAG_LOG as u32);
        assert!(flags.programs.is_empty(), "allow everything: no filter");
    }
}
