//! Kicking a vCPU thread out of KVM_RUN so it sees a request, without ever losing a kick.
//!
//! The requester first records its request ([`super::VcpuControl`]), then sends the
//! thread the kick signal ([`kick_signal`]). The signal's handler sets `immediate_exit`
//! in the thread's own `kvm_run` (registered by [`KickTarget`]), and the run loop clears it
//! just before it looks at the requests. So whenever the signal arrives:
//! - inside KVM_RUN: KVM_RUN returns EINTR;
//! - after the loop cleared `immediate_exit` and before KVM_RUN: `immediate_exit` is set,
//!   so KVM_RUN returns EINTR at once without running the guest;
//! - before the loop cleared it: the request was recorded before the signal was sent, so
//!   the loop's check that follows sees it.
//!
//! One kick per request is therefore enough: nothing retries.

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;
use std::cell::Cell;
use std::sync::Once;
use std::thread::JoinHandle;
use vmm_sys_util::signal::Killable;

thread_local! {
    /// The `kvm_run` area of the vCPU this thread runs, or null. Const-initialised and
    /// without a destructor, so reading it from a signal handler is safe.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

static HANDLER: Once = Once::new();

/// Signal used to kick vCPU threads out of KVM_RUN.
pub(crate) fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

/// Installs the kick signal's handler (once per process).
pub(crate) fn install_handler() {
    HANDLER.call_once(|| {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick) {
            tracing::error!("cannot install the vCPU kick handler: {e}");
        }
    });
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = KVM_RUN.try_with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: `run` is this thread's vCPU's kvm_run mapping, registered by a
            // KickTarget that unregisters it before the mapping can go away.
            unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*run).immediate_exit), 1) };
        }
    });
}

/// Sends the kick signal to a vCPU thread that has not ended.
pub(crate) fn kick<T>(thread: &JoinHandle<T>) {
    if thread.is_finished() {
        return;
    }
    if let Err(e) = thread.kill(kick_signal()) {
        tracing::debug!("cannot kick a vCPU thread: {e}");
    }
}

/// Makes kicks sent to the current thread set `immediate_exit` in `fd`'s `kvm_run`, for
/// as long as it lives. `fd` must outlive it (it is borrowed from the run loop's vCPU).
pub(crate) struct KickTarget(());

impl KickTarget {
    pub(crate) fn register(fd: &mut VcpuFd) -> KickTarget {
        let run: *mut kvm_run = fd.get_kvm_run();
        KVM_RUN.with(|slot| slot.set(run));
        KickTarget(())
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        KVM_RUN.with(|slot| slot.set(std::ptr::null_mut()));
    }
}

/// Clears `immediate_exit` before the run loop looks at its requests (see the module
/// documentation for why the order matters).
pub(crate) fn clear_immediate_exit(fd: &mut VcpuFd) {
    let run: *mut kvm_run = fd.get_kvm_run();
    // SAFETY: `run` is `fd`'s live kvm_run mapping; the volatile write pairs with the
    // signal handler's.
    unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*run).immediate_exit), 0) };
}
