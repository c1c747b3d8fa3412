//! A one-shot, non-blocking CLOCK_MONOTONIC timerfd, for devices that must act at a
//! moment rather than on an event (rate limiters, vsock deadlines). Creating one is done
//! before the VMM thread's seccomp filter is installed; arming and clearing it are
//! `timerfd_settime` and `read`, which the filter allows.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A non-blocking CLOCK_MONOTONIC timerfd.
#[derive(Debug)]
pub struct TimerFd(OwnedFd);

impl TimerFd {
    /// A new, disarmed timer.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system call; the result is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor owned by nobody else.
        Ok(TimerFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Arms a one-shot expiry `after` from now (at least 1 ns: zero would disarm it).
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        self.set(after.max(Duration::from_nanos(1)))
    }

    /// Disarms the timer.
    pub fn disarm(&self) -> io::Result<()> {
        self.set(Duration::ZERO)
    }

    fn set(&self, value: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: value.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: value.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not requested.
        if unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads (clears) the expiration count; 0 when it has not fired.
    pub fn clear(&self) -> u64 {
        let mut count = 0u64;
        // SAFETY: reading 8 bytes into a local u64 from our own timerfd.
        let n = unsafe { libc::read(self.0.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        if n == 8 {
            count
        } else {
            0
        }
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_and_can_be_disarmed() {
        let t = TimerFd::new().expect("timerfd");
        assert_eq!(t.clear(), 0, "a new timer has not fired");
        t.arm(Duration::from_millis(1)).expect("arm");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(t.clear(), 1);
        assert_eq!(t.clear(), 0, "one-shot");
        t.arm(Duration::from_millis(5)).expect("arm");
        t.disarm().expect("disarm");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(t.clear(), 0, "disarmed before it fired");
    }
}
