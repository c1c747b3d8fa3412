//! The seccomp filter of the sandbox's relay threads (this crate runs them, so it owns
//! it): the main loop, the agent reader and the stdin relay move bytes between
//! established streams and stdio and other threads. Nothing opens, connects or creates.

use vmm::seccomp::FilterSpec;

/// The calls of a relay thread: Unix stream reads are recv(2) (recvfrom), writes write(2)
/// or send(2) (sendto); malloc grows a thread arena's heap with mprotect.
pub fn relay_filter() -> FilterSpec {
    let mut spec = FilterSpec::common("relay");
    spec.allow(&[libc::SYS_recvfrom, libc::SYS_sendto, libc::SYS_mprotect]);
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audit of the relay threads' calls: a change to the filter changes this list.
    #[test]
    fn audit_lists_the_relay_threads_calls() {
        let audit = relay_filter().audit();
        println!("relay ({} calls): {}", audit.len(), audit.join(", "));
        assert_eq!(
            relay_filter().audit_beyond_common(),
            ["mprotect", "recvfrom", "sendto"]
        );
        assert!(relay_filter().compile().is_ok());
        for call in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_openat,
            libc::SYS_ioctl,
        ] {
            assert!(!relay_filter().allows(call), "call {call} not allowed");
        }
    }
}
