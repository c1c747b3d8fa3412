//! Signals that `run` and `exec` forward to the container while they wait for it.
//!
//! [`install`] sets handlers (without `SA_RESTART`, so a blocking `waitpid` returns `EINTR`)
//! that only record the signal; the waiting loop then takes it with [`take_pending`] and sends
//! it to the container. The previous handlers come back when the guard drops.

use std::sync::atomic::{AtomicU64, Ordering};

/// Signals forwarded to the container.
pub const FORWARDED: [i32; 7] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

static PENDING: AtomicU64 = AtomicU64::new(0);

extern "C" fn record(sig: libc::c_int) {
    if (1..=64).contains(&sig) {
        PENDING.fetch_or(1 << (sig - 1), Ordering::SeqCst);
    }
}

/// Takes one recorded signal, if any.
pub fn take_pending() -> Option<i32> {
    let mut bits = PENDING.load(Ordering::SeqCst);
    while bits != 0 {
        let sig = bits.trailing_zeros() as i32 + 1;
        let bit = 1u64 << (sig - 1);
        match PENDING.compare_exchange(bits, bits & !bit, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return Some(sig),
            Err(now) => bits = now,
        }
    }
    None
}

/// Restores the previous handlers when dropped.
#[derive(Debug)]
pub struct ForwardGuard {
    previous: Vec<(i32, libc::sigaction)>,
}

/// Installs the recording handler for [`FORWARDED`].
pub fn install() -> ForwardGuard {
    let mut previous = Vec::new();
    for sig in FORWARDED {
        // SAFETY: sigaction(2) with a zeroed struct, an empty mask and a handler that only
        // touches an atomic.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = record as extern "C" fn(libc::c_int) as usize;
            act.sa_flags = 0;
            libc::sigemptyset(&mut act.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, &act, &mut old) == 0 {
                previous.push((sig, old));
            }
        }
    }
    ForwardGuard { previous }
}

impl Drop for ForwardGuard {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            // SAFETY: restores a disposition sigaction(2) returned earlier.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recorded_signals_are_taken_once_each() {
        record(libc::SIGUSR1);
        record(libc::SIGWINCH);
        record(libc::SIGUSR1);
        let mut got = vec![];
        while let Some(s) = take_pending() {
            got.push(s);
        }
        got.sort();
        assert_eq!(got, vec![libc::SIGUSR1, libc::SIGWINCH]);
        assert_eq!(take_pending(), None);
    }
}
