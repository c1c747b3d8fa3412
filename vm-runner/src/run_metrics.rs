//! `zvm run --metrics FILE`: the same JSON lines as the API's `PUT /metrics`, for a VM
//! started from the command line: one every [`FLUSH_INTERVAL`], one on SIGUSR1 (so that
//! a benchmark can take KVM's counters the moment a workload starts and ends) and one
//! when the VM ends.

use crate::api::metrics::{Metrics, FLUSH_INTERVAL};
use api_server::model::InstanceState;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use vmm::metrics::VmMetrics;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The eventfd SIGUSR1 writes to.
static FLUSH_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_flush_signal(_: libc::c_int) {
    let fd = FLUSH_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) of 8 bytes from a local to an eventfd: async-signal-safe.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// The thread writing the lines; [`MetricsWriter::finish`] writes the last one.
#[derive(Debug)]
pub struct MetricsWriter {
    stop: Arc<EventFd>,
    thread: JoinHandle<()>,
}

/// What wakes the writer: SIGUSR1's eventfd or the stop eventfd, else the interval.
fn wait(flush: &EventFd, stop: &EventFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: flush.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let timeout = FLUSH_INTERVAL.as_millis() as libc::c_int;
    // SAFETY: polling two valid pollfds.
    unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
    let _ = flush.read();
    fds[1].revents & libc::POLLIN != 0
}

/// `zvm run --metrics`: starts the writer for `vm` when `path` is given; a failure is
/// reported and stops the VM (the user asked for metrics).
pub fn start_for(path: Option<PathBuf>, vm: &vmm::RunningVm) -> Option<MetricsWriter> {
    match start(path?, vm.metrics()) {
        Ok(writer) => Some(writer),
        Err(e) => {
            eprintln!("zvm: {e}");
            let _ = vm.stop_handle().and_then(|s| s.request_stop());
            None
        }
    }
}

/// Opens `path` (appending) and starts writing lines for the VM whose counters are `vm`.
pub fn start(path: PathBuf, vm: Arc<VmMetrics>) -> Result<MetricsWriter, String> {
    let mut metrics = Metrics::default();
    metrics.set_path(path)?;
    metrics.vm = Some(vm);
    metrics.started = Some(Instant::now());
    let err = |e: std::io::Error| format!("cannot set up the metrics writer: {e}");
    let flush = EventFd::new(EFD_NONBLOCK).map_err(err)?;
    let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(err)?);
    FLUSH_FD.store(flush.as_raw_fd(), Ordering::Relaxed);
    // SAFETY: installing a handler that only performs an async-signal-safe write.
    unsafe {
        libc::signal(
            libc::SIGUSR1,
            on_flush_signal as *const () as libc::sighandler_t,
        )
    };
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("zvm_metrics".into())
        .spawn(move || loop {
            let last = wait(&flush, &thread_stop);
            if let Err(e) = metrics.flush(InstanceState::Running) {
                tracing::warn!("metrics: {e}");
            }
            if last {
                FLUSH_FD.store(-1, Ordering::Relaxed);
                return;
            }
        })
        .map_err(err)?;
    Ok(MetricsWriter { stop, thread })
}

impl MetricsWriter {
    /// Writes the last line (the VM ended) and waits for the writer.
    pub fn finish(self) {
        if let Err(e) = self.stop.write(1) {
            tracing::warn!("metrics: cannot stop the writer: {e}");
            return;
        }
        let _ = self.thread.join();
    }
}
