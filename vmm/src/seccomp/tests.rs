use super::kvm::*;
use super::*;

/// Runs `body` in a child under `kind`'s filter: its exit status.
fn in_filtered_child(kind: ThreadKind, body: impl FnOnce()) -> i32 {
    exit_status_under(kind, || {
        body();
        Some(())
    })
}

#[test]
fn vcpu_ioctl_numbers_are_the_kernels() {
    // From <linux/kvm.h> on x86-64.
    assert_eq!(KVM_RUN, 0xae80);
    assert_eq!(KVM_GET_REGS, 0x8090_ae81);
    assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
    assert_eq!(KVM_TRANSLATE, 0xc018_ae85);
    assert_eq!(KVM_GET_MSRS, 0xc008_ae88);
    assert_eq!(KVM_GET_FPU, 0x81a0_ae8c);
    assert_eq!(KVM_GET_LAPIC, 0x8400_ae8e);
    assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
    assert_eq!(KVM_GET_MP_STATE, 0x8004_ae98);
    assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_ae9f);
    assert_eq!(KVM_GET_DEBUGREGS, 0x8080_aea1);
    assert_eq!(KVM_GET_XSAVE, 0x9000_aea4);
    assert_eq!(KVM_GET_XCRS, 0x8188_aea6);
}

const COMMON_AUDIT: &[&str] = &[
    "brk",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "exit",
    "exit_group",
    "fcntl(1: F_GETFD)",
    "fsync",
    "futex",
    "getpid",
    "getrandom",
    "gettid",
    "madvise",
    "mmap",
    "mremap",
    "munmap",
    "nanosleep",
    "openat (refused: EPERM)",
    "read",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sched_yield",
    "sigaltstack",
    "tgkill",
    "write",
    "writev",
];

fn expected(extra: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = COMMON_AUDIT
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    all.sort();
    all
}

/// The audit: every call each VMM thread kind may make. A change to a filter must change
/// this list, so it is reviewed.
#[test]
fn audit_lists_each_threads_calls() {
    let vcpu = filter(ThreadKind::Vcpu).audit();
    let vmm = filter(ThreadKind::Vmm).audit();
    let block_io = filter(ThreadKind::BlockIo).audit();
    println!("vcpu ({} calls): {}", vcpu.len(), vcpu.join(", "));
    println!("vmm ({} calls): {}", vmm.len(), vmm.join(", "));
    println!(
        "block I/O ({} calls): {}",
        block_io.len(),
        block_io.join(", ")
    );
    assert_eq!(
        vcpu,
        expected(&[
            "ioctl(1: KVM_GET_DEBUGREGS | KVM_GET_FPU | KVM_GET_LAPIC | KVM_GET_MP_STATE \
             | KVM_GET_MSRS | KVM_GET_REGS | KVM_GET_SREGS | KVM_GET_VCPU_EVENTS \
             | KVM_GET_XCRS | KVM_GET_XSAVE | KVM_RUN | KVM_SET_GSI_ROUTING | KVM_TRANSLATE)"
        ])
    );
    assert_eq!(
        vmm,
        expected(&[
            "accept4",
            "connect",
            "epoll_create1",
            "epoll_ctl",
            "epoll_pwait",
            "epoll_wait",
            "fdatasync",
            "io_uring_enter",
            "ioctl(1: TUNSETOFFLOAD | TUNSETQUEUE)",
            "mprotect",
            "pread64",
            "preadv",
            "pwrite64",
            "pwritev",
            "readv",
            "recvfrom",
            "recvmsg",
            "sendmsg",
            "sendto",
            "shutdown",
            "socket(0: AF_UNIX)",
            "timerfd_settime",
        ])
    );
    assert_eq!(
        block_io,
        expected(&["fdatasync", "mprotect", "preadv", "pwritev"])
    );
    assert!(
        vmm.iter()
            .chain(&vcpu)
            .chain(&block_io)
            .all(|line| !line.starts_with('?')),
        "every allowed call has a name"
    );
}

#[test]
fn filters_compile_for_every_thread_kind() {
    for kind in [ThreadKind::Vcpu, ThreadKind::Vmm, ThreadKind::BlockIo] {
        let program = filter(kind).compile().expect("filter");
        assert!(program.len() > 25, "{kind:?} filter has a rule per call");
    }
}

#[test]
fn a_filtered_vmm_thread_keeps_allowed_calls_and_loses_others() {
    let status = in_filtered_child(ThreadKind::Vmm, || {
        // Allowed: write(2) (EBADF on fd -1, but the call itself is permitted).
        // SAFETY: a harmless call on an invalid fd.
        unsafe { libc::write(-1, std::ptr::null(), 0) };
        // Opening files is refused, without ending the process (glibc may try).
        // SAFETY: a raw system call the filter refuses.
        let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/".as_ptr(), 0) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        if fd != -1 || errno != Some(libc::EPERM) {
            // SAFETY: ending the child with a code the parent does not expect.
            unsafe { libc::_exit(3) };
        }
        // Not allowed for the VMM thread: mkdirat.
        // SAFETY: a raw system call the filter stops.
        unsafe { libc::syscall(libc::SYS_mkdirat, libc::AT_FDCWD, c"/x".as_ptr(), 0) };
    });
    assert_eq!(
        status, BLOCKED_SYSCALL_EXIT,
        "openat refused with EPERM, then mkdirat blocked and reported"
    );
}

#[test]
fn a_vcpu_thread_makes_only_its_own_kvm_ioctls() {
    // Its own, on a bad fd: EBADF, not SIGSYS.
    let status = in_filtered_child(ThreadKind::Vcpu, || {
        for (request, _) in VCPU_IOCTLS {
            // SAFETY: an ioctl on an invalid fd.
            unsafe { libc::ioctl(-1, *request as libc::c_ulong, 0) };
        }
    });
    assert_eq!(status, 0);
    // Any other KVM ioctl, e.g. setting registers or making a VM: stopped.
    const KVM_SET_REGS: u64 = 0x4090_ae82;
    const KVM_CREATE_VM: u64 = 0xae01;
    for request in [KVM_SET_REGS, KVM_CREATE_VM] {
        let status = in_filtered_child(ThreadKind::Vcpu, || {
            // SAFETY: an ioctl on an invalid fd; the filter stops it first.
            unsafe { libc::ioctl(-1, request as libc::c_ulong, 0) };
        });
        assert_eq!(status, BLOCKED_SYSCALL_EXIT, "ioctl {request:#x} blocked");
    }
    // And a socket of any kind.
    let status = in_filtered_child(ThreadKind::Vcpu, || {
        // SAFETY: a raw system call the filter stops.
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    });
    assert_eq!(status, BLOCKED_SYSCALL_EXIT);
}

#[test]
fn a_block_io_thread_does_disk_io_and_nothing_else() {
    let status = in_filtered_child(ThreadKind::BlockIo, || {
        // SAFETY: vectored I/O and fdatasync on an invalid fd: EBADF, not SIGSYS.
        unsafe {
            libc::preadv(-1, std::ptr::null(), 0, 0);
            libc::pwritev(-1, std::ptr::null(), 0, 0);
            libc::fdatasync(-1);
        }
    });
    assert_eq!(status, 0);
    for call in [libc::SYS_socket, libc::SYS_epoll_ctl, libc::SYS_ioctl] {
        let status = in_filtered_child(ThreadKind::BlockIo, || {
            // SAFETY: a raw system call the filter stops.
            unsafe { libc::syscall(call, -1, 0, 0) };
        });
        assert_eq!(status, BLOCKED_SYSCALL_EXIT, "call {call} blocked");
    }
}
