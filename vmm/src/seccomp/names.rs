//! Names of the system calls zvm's filters allow, for the audit list and messages.

/// The x86-64 system calls that appear in some zvm filter, by number.
const NAMES: &[(i64, &str)] = &[
    (libc::SYS_read, "read"),
    (libc::SYS_write, "write"),
    (libc::SYS_writev, "writev"),
    (libc::SYS_readv, "readv"),
    (libc::SYS_close, "close"),
    (libc::SYS_futex, "futex"),
    (libc::SYS_mmap, "mmap"),
    (libc::SYS_munmap, "munmap"),
    (libc::SYS_mremap, "mremap"),
    (libc::SYS_madvise, "madvise"),
    (libc::SYS_mprotect, "mprotect"),
    (libc::SYS_brk, "brk"),
    (libc::SYS_clock_gettime, "clock_gettime"),
    (libc::SYS_clock_nanosleep, "clock_nanosleep"),
    (libc::SYS_nanosleep, "nanosleep"),
    (libc::SYS_sched_yield, "sched_yield"),
    (libc::SYS_getrandom, "getrandom"),
    (libc::SYS_rt_sigreturn, "rt_sigreturn"),
    (libc::SYS_rt_sigprocmask, "rt_sigprocmask"),
    (libc::SYS_sigaltstack, "sigaltstack"),
    (libc::SYS_getpid, "getpid"),
    (libc::SYS_gettid, "gettid"),
    (libc::SYS_tgkill, "tgkill"),
    (libc::SYS_exit, "exit"),
    (libc::SYS_exit_group, "exit_group"),
    (libc::SYS_fsync, "fsync"),
    (libc::SYS_fdatasync, "fdatasync"),
    (libc::SYS_fcntl, "fcntl"),
    (libc::SYS_ioctl, "ioctl"),
    (libc::SYS_pread64, "pread64"),
    (libc::SYS_pwrite64, "pwrite64"),
    (libc::SYS_preadv, "preadv"),
    (libc::SYS_pwritev, "pwritev"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_epoll_create1, "epoll_create1"),
    (libc::SYS_epoll_wait, "epoll_wait"),
    (libc::SYS_epoll_pwait, "epoll_pwait"),
    (libc::SYS_epoll_ctl, "epoll_ctl"),
    (libc::SYS_timerfd_settime, "timerfd_settime"),
    (libc::SYS_socket, "socket"),
    (libc::SYS_connect, "connect"),
    (libc::SYS_accept4, "accept4"),
    (libc::SYS_recvfrom, "recvfrom"),
    (libc::SYS_sendto, "sendto"),
    (libc::SYS_recvmsg, "recvmsg"),
    (libc::SYS_sendmsg, "sendmsg"),
    (libc::SYS_shutdown, "shutdown"),
    (libc::SYS_poll, "poll"),
    (libc::SYS_openat, "openat"),
    (libc::SYS_ppoll, "ppoll"),
];

/// The name of system call `nr`, or `"?"` for one no filter allows.
pub fn syscall_name(nr: i64) -> &'static str {
    NAMES
        .iter()
        .find(|(n, _)| *n == nr)
        .map_or("?", |(_, name)| name)
}
