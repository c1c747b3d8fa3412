//! Seccomp filters, one per kind of thread, each installed by the thread itself before it
//! runs guest code or serves I/O.
//!
//! A filter is a [`FilterSpec`]: the calls a thread may make, some only with given argument
//! values (the vCPU threads' KVM ioctls by number). The spec compiles to BPF and prints as
//! an audit list ([`FilterSpec::audit`]). Each crate owns the filters of the threads it runs:
//! this one the vCPU and VMM threads; the API server and the container runtime build theirs
//! from [`FilterSpec::common`].
//!
//! A disallowed system call raises SIGSYS; zvm's handler names the call and ends the
//! process, so a missing rule is a clear message rather than a mystery.

pub(crate) mod kvm;
mod names;
mod spec;

pub use names::syscall_name;
pub use spec::{ArgValues, FilterSpec, NamedValue};

use std::sync::Once;

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be compiled.
    #[error("cannot build the seccomp filter of the {0} thread: {1}")]
    Build(&'static str, String),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter of the {0} thread: {1}")]
    Install(&'static str, seccompiler::Error),
}

/// The kinds of threads the VMM starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs one vCPU: KVM_RUN, and reading its state while the VM is paused (snapshots)
    /// or when it fails (register dumps).
    Vcpu,
    /// The VMM event loop: console input, exit events, stopping vCPUs, virtio queues.
    Vmm,
    /// A disk's I/O worker (`zvm_blk_io`, the Async engine where io_uring is missing):
    /// preadv/pwritev/fsync between guest memory and the disk file.
    BlockIo,
}

/// The filter of a `kind` thread.
pub fn filter(kind: ThreadKind) -> FilterSpec {
    match kind {
        ThreadKind::Vcpu => {
            let mut spec = FilterSpec::common("vcpu");
            spec.allow_arg(libc::SYS_ioctl, 1, kvm::VCPU_IOCTLS);
            spec
        }
        ThreadKind::Vmm => vmm_filter(),
        ThreadKind::BlockIo => block_io_filter(),
    }
}

fn block_io_filter() -> FilterSpec {
    let mut spec = FilterSpec::common("block I/O");
    // Vectored I/O straight between guest memory and the disk file (fsync is common);
    // malloc grows this thread's arena heap with mprotect.
    spec.allow(&[
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_fdatasync,
        libc::SYS_mprotect,
    ]);
    spec
}

fn vmm_filter() -> FilterSpec {
    let mut spec = FilterSpec::common("vmm");
    // The loop makes its epoll sets and serves virtio queues: disk I/O (pread64/pwrite64,
    // preadv/pwritev between guest memory and the file, fsync or fdatasync; io_uring_enter
    // to submit to and wait on an Async disk's ring, set up before the filter) and entropy
    // (getrandom, common); malloc grows this thread's arena heap with mprotect. Rate
    // limiters and vsock deadlines re-arm their timerfds.
    spec.allow(&[
        libc::SYS_epoll_create1,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_io_uring_enter,
        libc::SYS_fdatasync,
        libc::SYS_mprotect,
        libc::SYS_timerfd_settime,
    ]);
    // virtio-net sets the tap offloads the driver accepted, and attaches or detaches the
    // queues of a multiqueue tap as the driver chooses how many pairs it uses.
    spec.allow_arg(
        libc::SYS_ioctl,
        1,
        &[
            (
                crate::devices::virtio::net::tap::TUNSETOFFLOAD,
                "TUNSETOFFLOAD",
            ),
            (crate::devices::virtio::net::tap::TUNSETQUEUE, "TUNSETQUEUE"),
        ],
    );
    // virtio-net reads frames from the tap straight into guest buffers (readv; writev, for
    // transmit, is common).
    spec.allow(&[libc::SYS_readv]);
    // virtio-vsock's host sockets: accept4 (non-blocking) on the listener, a non-blocking
    // Unix stream socket + connect for guest-initiated connections, recv/send
    // (recvfrom/sendto) and shutdown on connections.
    spec.allow_arg(libc::SYS_socket, 0, &[(libc::AF_UNIX as u64, "AF_UNIX")]);
    spec.allow(&[
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_shutdown,
    ]);
    // virtio-fs talks vhost-user to its backend (virtiofsd) when the driver starts or
    // resets the device: messages that carry descriptors (the memfd of guest memory, the
    // queues' eventfds) over the Unix socket connected at build time.
    spec.allow(&[libc::SYS_sendmsg, libc::SYS_recvmsg]);
    spec
}

/// Installs the filter for `kind` on the calling thread (when `enabled`).
pub fn install(kind: ThreadKind, enabled: bool) -> Result<(), SeccompError> {
    filter(kind).install(enabled)
}

static SIGSYS_HANDLER: Once = Once::new();

/// Installs (once per process) the SIGSYS handler that reports a blocked system call.
pub(crate) fn install_sigsys_reporter() {
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

/// Runs `body` in a forked child under `kind`'s filter and returns the child's exit
/// status: 0 when `body` gave `Some`, 1 when `None`, 2 when the filter could not be
/// installed, [`BLOCKED_SYSCALL_EXIT`] when it made a call the filter stops (tests).
#[cfg(test)]
pub(crate) fn exit_status_under(kind: ThreadKind, body: impl FnOnce() -> Option<()>) -> i32 {
    // SAFETY: fork in a test; the child only runs `body` and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = match install(kind, true) {
            Ok(()) => body().map_or(1, |()| 0),
            Err(_) => 2,
        };
        // SAFETY: ending the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    libc::WEXITSTATUS(status)
}

#[cfg(test)]
mod tests;
