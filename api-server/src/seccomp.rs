//! The API server thread's seccomp filter (this crate runs the thread, so it owns it).

use vmm::seccomp::FilterSpec;

/// The calls of the API thread: the listener, epoll set and stop eventfd are made before
/// the filter; the loop accepts (accept4 with SOCK_NONBLOCK, so no fcntl/ioctl), reads
/// with read(2) and writes with send(MSG_NOSIGNAL), i.e. sendto(2); malloc grows a thread
/// arena's heap with mprotect.
pub fn api_thread_filter() -> FilterSpec {
    let mut spec = FilterSpec::common("api");
    spec.allow(&[
        libc::SYS_accept4,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
        libc::SYS_sendto,
        libc::SYS_mprotect,
    ]);
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audit of the API thread's calls: a change to the filter changes this list.
    #[test]
    fn audit_lists_the_api_threads_calls() {
        let audit = api_thread_filter().audit();
        println!("api ({} calls): {}", audit.len(), audit.join(", "));
        assert_eq!(
            api_thread_filter().audit_beyond_common(),
            [
                "accept4",
                "epoll_ctl",
                "epoll_pwait",
                "epoll_wait",
                "mprotect",
                "sendto"
            ]
        );
        assert!(api_thread_filter().compile().is_ok());
        assert!(!api_thread_filter().allows(libc::SYS_connect));
        assert!(!api_thread_filter().allows(libc::SYS_openat));
    }
}
