//! SIGINT, SIGTERM and SIGHUP while a VM runs: stop it, or (with a shutdown grace
//! period) first ask its guest to power off through the ACPI power button and stop it
//! only if it has not ended by then. A second signal stops it at once. The handler only
//! writes to eventfds, which is async-signal-safe.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;
use vmm::vm::{ShutdownHandle, StopHandle};

/// The stop eventfd of the running VM.
static STOP_FD: AtomicI32 = AtomicI32::new(-1);
/// The graceful shutdown eventfd, when signals should try that first.
static SHUTDOWN_FD: AtomicI32 = AtomicI32::new(-1);
/// Whether a signal came.
static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// Whether a signal came while there was no VM to stop yet ([`catch_early`]).
static PENDING: AtomicBool = AtomicBool::new(false);

/// Writes to the eventfd `fd` (nothing if negative).
fn kick(fd: i32) {
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) of 8 bytes from a local to an eventfd: async-signal-safe.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

extern "C" fn on_stop_signal(_: libc::c_int) {
    let first = !SIGNALLED.swap(true, Ordering::SeqCst);
    let shutdown = SHUTDOWN_FD.load(Ordering::SeqCst);
    let fd = if first && shutdown >= 0 {
        shutdown
    } else {
        STOP_FD.load(Ordering::SeqCst)
    };
    if fd >= 0 {
        kick(fd);
        return;
    }
    // No VM yet: install kicks it. If install ran meanwhile, whoever takes PENDING does.
    PENDING.store(true, Ordering::SeqCst);
    let fd = STOP_FD.load(Ordering::SeqCst);
    if fd >= 0 && PENDING.swap(false, Ordering::SeqCst) {
        kick(fd);
    }
}

fn set_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installing a handler that only performs async-signal-safe atomics and a
        // write.
        unsafe { libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t) };
    }
}

/// Catches the stop signals from now on, while the VM is being built (its vCPUs may run
/// before [`install`] names it): a signal then stops the VM as soon as it is named,
/// instead of killing the process with the VM half set up. Only for a build that ends
/// the process if it fails.
pub fn catch_early() {
    set_handlers();
}

/// Makes the stop signals stop the VM whose stop eventfd is `fd` (at once if one came
/// since [`catch_early`]).
pub fn install(fd: i32) {
    STOP_FD.store(fd, Ordering::SeqCst);
    set_handlers();
    if PENDING.swap(false, Ordering::SeqCst) {
        let shutdown = SHUTDOWN_FD.load(Ordering::SeqCst);
        kick(if shutdown >= 0 { shutdown } else { fd });
    }
}

/// Makes the stop signals end the VM: at once when `grace` is zero, else through its
/// power button with `grace` to power off. The handles stay open for the process's life.
pub fn install_for(stop: StopHandle, shutdown: Option<ShutdownHandle>, grace: Duration) {
    if let Some(shutdown) = shutdown.filter(|_| !grace.is_zero()) {
        shutdown.set_grace(grace);
        SHUTDOWN_FD.store(shutdown.raw_fd(), Ordering::Relaxed);
        std::mem::forget(shutdown);
    }
    install(stop.raw_fd());
    std::mem::forget(stop);
}

/// Whether a stop signal came.
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn a_signal_while_the_vm_is_built_stops_it_once_it_is_named() {
        catch_early();
        // SAFETY: raising SIGHUP in this process, whose handler is on_stop_signal now.
        assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
        assert!(signalled());
        let stop = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        install(stop.as_raw_fd());
        assert_eq!(stop.read().expect("the pending signal's kick"), 1);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
        assert_eq!(stop.read().expect("a later signal's kick"), 1);
        STOP_FD.store(-1, Ordering::SeqCst);
    }
}
