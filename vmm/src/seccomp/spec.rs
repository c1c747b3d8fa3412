//! A thread's filter as data: the system calls it may make, some only with given argument
//! values. The same description compiles to BPF and prints as the audit list, so what is
//! reviewed is what is enforced.

use super::names::syscall_name;
use super::SeccompError;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// A named argument value (an ioctl request, a socket family, an fcntl command).
pub type NamedValue = (u64, &'static str);

/// Argument `index` of a call must equal one of `values` (compared as 32-bit words, as
/// the kernel passes these arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgValues {
    /// Which argument (0-based).
    pub index: u8,
    /// The values allowed, with their names.
    pub values: Vec<NamedValue>,
}

/// The system calls one kind of thread may make. Anything else raises SIGSYS, which zvm
/// reports and ends the process with.
#[derive(Debug, Clone)]
pub struct FilterSpec {
    thread: &'static str,
    calls: BTreeMap<i64, Option<ArgValues>>,
}

/// System calls every zvm thread makes: memory, locks, time, signals, exit, logging.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_fsync,
];

/// Calls every filtered thread is refused with EPERM rather than stopped: glibc's malloc
/// opens `/proc/sys/vm/overcommit_memory` the first time it trims a thread's arena, which
/// can happen on any thread and is harmless when the open fails. Anything else opening a
/// file is refused the same way.
const REFUSED_WITH_EPERM: &[i64] = &[libc::SYS_openat];

impl FilterSpec {
    /// The calls every thread makes, for a thread called `thread` (in messages). Also
    /// `fcntl(fd, F_GETFD)`: Rust's standard library checks a descriptor is open when it
    /// drops one (debug builds).
    pub fn common(thread: &'static str) -> Self {
        let mut spec = FilterSpec {
            thread,
            calls: BTreeMap::new(),
        };
        spec.allow(COMMON);
        spec.allow_arg(libc::SYS_fcntl, 1, &[(libc::F_GETFD as u64, "F_GETFD")]);
        spec
    }

    /// The thread's name, as messages give it.
    pub fn thread(&self) -> &'static str {
        self.thread
    }

    /// Allows `calls` with any arguments.
    pub fn allow(&mut self, calls: &[i64]) -> &mut Self {
        for nr in calls {
            self.calls.insert(*nr, None);
        }
        self
    }

    /// Allows `call` only when argument `index` is one of `values` (added to the values
    /// already allowed; a call allowed with any arguments stays so).
    pub fn allow_arg(&mut self, call: i64, index: u8, values: &[NamedValue]) -> &mut Self {
        let entry = self.calls.entry(call).or_insert_with(|| {
            Some(ArgValues {
                index,
                values: Vec::new(),
            })
        });
        if let Some(arg) = entry {
            debug_assert_eq!(arg.index, index, "one argument per call");
            for v in values {
                if !arg.values.contains(v) {
                    arg.values.push(*v);
                }
            }
        }
        self
    }

    /// Whether `call` is allowed with some arguments.
    pub fn allows(&self, call: i64) -> bool {
        self.calls.contains_key(&call)
    }

    /// The audit list: one line per call, by name, with the argument values it is limited
    /// to (`ioctl(1: KVM_RUN | KVM_GET_REGS)`), in name order.
    pub fn audit(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .calls
            .iter()
            .map(|(nr, arg)| {
                let name = syscall_name(*nr);
                match arg {
                    None => name.to_string(),
                    Some(a) => {
                        let mut names: Vec<&str> = a.values.iter().map(|(_, n)| *n).collect();
                        names.sort_unstable();
                        format!("{name}({}: {})", a.index, names.join(" | "))
                    }
                }
            })
            .collect();
        lines.extend(
            REFUSED_WITH_EPERM
                .iter()
                .map(|nr| format!("{} (refused: EPERM)", syscall_name(*nr))),
        );
        lines.sort();
        lines
    }

    /// The audit lines beyond those of [`Self::common`]: what this thread kind adds.
    pub fn audit_beyond_common(&self) -> Vec<String> {
        let common = FilterSpec::common(self.thread).audit();
        self.audit()
            .into_iter()
            .filter(|line| !common.contains(line))
            .collect()
    }

    /// Compiles the filter (unlisted calls trap).
    pub fn compile(&self) -> Result<BpfProgram, SeccompError> {
        let build = |e: String| SeccompError::Build(self.thread, e);
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (nr, arg) in &self.calls {
            let call_rules = match arg {
                None => Vec::new(),
                Some(a) => a
                    .values
                    .iter()
                    .map(|(value, _)| {
                        let cond = SeccompCondition::new(
                            a.index,
                            SeccompCmpArgLen::Dword,
                            SeccompCmpOp::Eq,
                            *value,
                        )
                        .map_err(|e| build(e.to_string()))?;
                        SeccompRule::new(vec![cond]).map_err(|e| build(e.to_string()))
                    })
                    .collect::<Result<_, _>>()?,
            };
            rules.insert(*nr, call_rules);
        }
        // Passed on to the refusing filter, whose EPERM wins over this one's Allow.
        for nr in REFUSED_WITH_EPERM {
            rules.entry(*nr).or_default();
        }
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Trap,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .map_err(|e| build(e.to_string()))?;
        BpfProgram::try_from(filter).map_err(|e| build(e.to_string()))
    }

    /// The filter that refuses [`REFUSED_WITH_EPERM`] (and lets everything else on to the
    /// main filter).
    fn compile_refusals(&self) -> Result<BpfProgram, SeccompError> {
        let build = |e: String| SeccompError::Build(self.thread, e);
        let rules = REFUSED_WITH_EPERM
            .iter()
            .map(|nr| (*nr, Vec::new()))
            .collect();
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            TargetArch::x86_64,
        )
        .map_err(|e| build(e.to_string()))?;
        BpfProgram::try_from(filter).map_err(|e| build(e.to_string()))
    }

    /// Installs the filter on the calling thread (when `enabled`; off is for debugging and
    /// says so).
    pub fn install(&self, enabled: bool) -> Result<(), SeccompError> {
        if !enabled {
            tracing::warn!(
                "seccomp is off for this {} thread (debugging only)",
                self.thread
            );
            return Ok(());
        }
        super::install_sigsys_reporter();
        let (refusals, program) = (self.compile_refusals()?, self.compile()?);
        let apply = |p: &BpfProgram| {
            seccompiler::apply_filter(p).map_err(|e| SeccompError::Install(self.thread, e))
        };
        apply(&refusals)?;
        apply(&program)
    }
}
