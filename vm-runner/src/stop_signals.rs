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

extern "C" fn on_stop_signal(_: libc::c_int) {
    let first = !SIGNALLED.swap(true, Ordering::Relaxed);
    let shutdown = SHUTDOWN_FD.load(Ordering::Relaxed);
    let fd = if first && shutdown >= 0 {
        shutdown
    } else {
        STOP_FD.load(Ordering::Relaxed)
    };
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) of 8 bytes from a local to an eventfd: async-signal-safe.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Makes the stop signals stop the VM whose stop eventfd is `fd`.
pub fn install(fd: i32) {
    STOP_FD.store(fd, Ordering::Relaxed);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installing a handler that only performs an async-signal-safe write.
        unsafe { libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t) };
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
