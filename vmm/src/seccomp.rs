//! Seccomp filters, one per kind of zvm thread, each installed by the thread itself
//! before it runs guest code or serves I/O.
//!
//! A disallowed system call raises SIGSYS; zvm's handler names the call and the thread
//! and ends the process, so a missing rule is a clear message rather than a mystery.

use seccompiler::{
    apply_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::sync::Once;

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be compiled.
    #[error("cannot build the {0:?} seccomp filter: {1}")]
    Build(ThreadKind, String),
    /// The kernel refused the filter.
    #[error("cannot install the {0:?} seccomp filter: {1}")]
    Install(ThreadKind, seccompiler::Error),
}

/// The kinds of threads zvm starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs one vCPU: KVM_RUN and the device accesses of its exits.
    Vcpu,
    /// The VMM event loop: console input, exit events, stopping vCPUs, virtio queues.
    Vmm,
    /// The HTTP API server loop: accepts connections on its Unix socket and serves them.
    Api,
    /// Relays an established stream (e.g. a guest's vsock connection through the VMM's
    /// Unix socket) to and from the process's stdio and other threads: reads, writes,
    /// send/recv, nothing that opens, connects or creates.
    Relay,
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

/// The `ioctl` type byte of every KVM ioctl.
const KVM_IOCTL_TYPE: u64 = 0xae;

fn rules_for(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().map(|nr| (*nr, Vec::new())).collect();
    // fcntl(fd, F_GETFD) only: Rust's standard library checks a descriptor is open when
    // it drops one (debug builds).
    let getfd = SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::F_GETFD as u64,
    )
    .map_err(|e| e.to_string())?;
    rules.insert(
        libc::SYS_fcntl,
        vec![SeccompRule::new(vec![getfd]).map_err(|e| e.to_string())?],
    );
    match kind {
        ThreadKind::Vcpu => {
            // Only KVM ioctls: (request >> 8) & 0xff == 0xae.
            let cond = SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(0xff00),
                KVM_IOCTL_TYPE << 8,
            )
            .map_err(|e| e.to_string())?;
            rules.insert(
                libc::SYS_ioctl,
                vec![SeccompRule::new(vec![cond]).map_err(|e| e.to_string())?],
            );
        }
        ThreadKind::Vmm => {
            // The loop also serves virtio queues: disk I/O (pread64/pwrite64, fsync or
            // fdatasync) and entropy (getrandom, in COMMON); malloc grows this thread's
            // arena heap with mprotect.
            for nr in [
                libc::SYS_epoll_create1,
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_ctl,
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_fdatasync,
                libc::SYS_mprotect,
                // Rate limiters re-arm their timerfds.
                libc::SYS_timerfd_settime,
            ] {
                rules.insert(nr, Vec::new());
            }
            // virtio-net sets the tap offloads the driver accepted: ioctl(TUNSETOFFLOAD) only.
            let offload = SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                crate::devices::virtio::net::tap::TUNSETOFFLOAD,
            )
            .map_err(|e| e.to_string())?;
            rules.insert(
                libc::SYS_ioctl,
                vec![SeccompRule::new(vec![offload]).map_err(|e| e.to_string())?],
            );
            // virtio-vsock's host sockets: accept4 (SOCK_NONBLOCK) on the listener, a
            // non-blocking socket(AF_UNIX) + connect for guest-initiated connections,
            // recv/send (recvfrom/sendto) and shutdown on connections.
            for nr in [
                libc::SYS_accept4,
                libc::SYS_connect,
                libc::SYS_recvfrom,
                libc::SYS_sendto,
                libc::SYS_shutdown,
            ] {
                rules.insert(nr, Vec::new());
            }
            let unix = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::AF_UNIX as u64,
            )
            .map_err(|e| e.to_string())?;
            rules.insert(
                libc::SYS_socket,
                vec![SeccompRule::new(vec![unix]).map_err(|e| e.to_string())?],
            );
        }
        ThreadKind::Relay => {
            // Unix stream reads are recv(2) (recvfrom), writes write(2) or send(2)
            // (sendto); malloc grows a thread arena's heap with mprotect.
            for nr in [libc::SYS_recvfrom, libc::SYS_sendto, libc::SYS_mprotect] {
                rules.insert(nr, Vec::new());
            }
        }
        ThreadKind::Api => {
            // The listener, epoll and stop eventfd are made before the filter; the loop
            // accepts (accept4 with SOCK_NONBLOCK, so no fcntl/ioctl), reads with read(2)
            // and writes with send(MSG_NOSIGNAL), i.e. sendto(2). malloc grows a thread
            // arena's heap with mprotect.
            for nr in [
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_ctl,
                libc::SYS_accept4,
                libc::SYS_sendto,
                libc::SYS_mprotect,
            ] {
                rules.insert(nr, Vec::new());
            }
        }
    }
    Ok(rules)
}

/// The compiled filter for `kind`.
pub fn filter_for(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = |e: String| SeccompError::Build(kind, e);
    let filter = SeccompFilter::new(
        rules_for(kind).map_err(build)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| build(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| build(e.to_string()))
}

/// Installs the filter for `kind` on the calling thread (when `enabled`).
pub fn install(kind: ThreadKind, enabled: bool) -> Result<(), SeccompError> {
    if !enabled {
        tracing::warn!("seccomp is off for this {kind:?} thread (debugging only)");
        return Ok(());
    }
    install_sigsys_reporter();
    let program = filter_for(kind)?;
    apply_filter(&program).map_err(|e| SeccompError::Install(kind, e))
}

static SIGSYS_HANDLER: Once = Once::new();

/// Installs (once per process) the SIGSYS handler that reports a blocked system call.
fn install_sigsys_reporter() {
    SIGSYS_HANDLER.call_once(|| {
        // SAFETY: a zeroed sigaction with a valid handler and SA_SIGINFO is well formed.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = report_blocked_syscall as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut());
        }
    });
}

/// Exit code of a process ended by a blocked system call.
pub const BLOCKED_SYSCALL_EXIT: i32 = 159;

extern "C" fn report_blocked_syscall(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // Only async-signal-safe work here: format into a stack buffer, write(2), _exit(2).
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for SIGSYS the
    // syscall number is the int at offset 24 (si_syscall).
    let nr = unsafe { *((info as *const u8).add(24) as *const i32) };
    let mut buf = [0u8; 96];
    let prefix = b"zvm: seccomp blocked system call ";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut len = prefix.len();
    let mut digits = [0u8; 12];
    let mut n = nr.unsigned_abs();
    let mut d = 0;
    loop {
        digits[d] = b'0' + (n % 10) as u8;
        d += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        buf[len] = digits[d];
        len += 1;
    }
    let suffix = b" (run with --seccomp off to debug)\n";
    buf[len..len + suffix.len()].copy_from_slice(suffix);
    len += suffix.len();
    // SAFETY: writing our own buffer to stderr and exiting are async-signal-safe.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(BLOCKED_SYSCALL_EXIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_every_thread_kind() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::Vmm,
            ThreadKind::Api,
            ThreadKind::Relay,
        ] {
            let program = filter_for(kind).expect("filter");
            assert!(
                program.len() > COMMON.len(),
                "{kind:?} filter has a rule per call"
            );
        }
    }

    #[test]
    fn a_filtered_thread_keeps_allowed_calls_and_loses_others() {
        // Run in a child process: the SIGSYS reporter ends the process it fires in.
        // SAFETY: fork in a test; the child only makes raw system calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            if install(ThreadKind::Vmm, true).is_err() {
                unsafe { libc::_exit(1) };
            }
            // Allowed: write to a closed-fd is fine (EBADF), the call itself is permitted.
            unsafe { libc::write(-1, std::ptr::null(), 0) };
            // Not allowed for the VMM thread: openat.
            unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/".as_ptr(), 0) };
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status));
        assert_eq!(
            libc::WEXITSTATUS(status),
            BLOCKED_SYSCALL_EXIT,
            "openat was blocked and reported"
        );
    }
}
