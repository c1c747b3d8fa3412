//! The container's VM as the sandbox holds it: a thread that waits for it to end, a guard
//! that stops it when dropped, and how the VM of a container that exited is ended.
//!
//! A container's VM is ended as soon as nothing can be lost: with a virtio-fs share, the
//! agent is asked to `Sync` (the guest writes everything it holds for the share out, and
//! answers once it is done), then the VM is stopped at once; without one, nothing the
//! guest holds outlives the VM (its disks are the container's own copy of its root, which
//! goes with the container, and the agent's read-only boot disk), so it is stopped at once.
//! The guest's own power-off (unmount, sync, reset: seconds of emulated kernel work on
//! slow hosts) is not waited for. An agent that refuses `Sync` (one older than the
//! request) gets the old way: `Shutdown` and a short grace for the VM to end by itself.

use super::agent::AgentConn;
use super::daemon::MainEvent;
use super::SandboxError;
use agent_protocol::RequestBody;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm::vm::StopHandle;

/// How long a VM may take to end by itself after an agent that cannot `Sync` acknowledged
/// Shutdown before the sandbox stops it. Short on purpose: the guest's clean reboot
/// (unmount, sync, reset) takes about 8 s here, while `run` and `wait` wait for the sandbox
/// process to exit.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How long the guest may take to write out what it holds (a large unwritten file on a
/// slow host takes seconds).
pub(crate) const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an agent that cannot `Sync` has to acknowledge Shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Stops the VM when dropped, unless it ended already; waits for its threads.
pub(crate) struct VmGuard {
    stop: StopHandle,
    done: Receiver<()>,
    ended: Arc<Mutex<Option<String>>>,
}

/// Ending a VM, as [`end_exited_vm`] needs it (a [`VmGuard`], or a test double).
pub(crate) trait VmEnding {
    /// Stops the VM now (it may have ended already) and waits for it.
    fn stop_now(&self);
    /// Waits up to `grace` for the VM to end by itself, then stops it; says which.
    fn finish(&self, grace: Duration) -> String;
}

impl VmGuard {
    /// How the VM ended, once it has.
    pub(crate) fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl VmEnding for VmGuard {
    fn finish(&self, grace: Duration) -> String {
        let start = Instant::now();
        if self.ended().is_none() && self.done.recv_timeout(grace).is_err() {
            self.stop_now();
            return format!("VM stopped: it did not end by itself within {grace:?}");
        }
        format!(
            "VM ended by itself after {:.1} s: {}",
            start.elapsed().as_secs_f64(),
            self.ended().unwrap_or_default()
        )
    }

    fn stop_now(&self) {
        if self.ended().is_none() {
            let _ = self.stop.request_stop();
            let _ = self.done.recv_timeout(Duration::from_secs(10));
        }
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Ends the VM of a container whose process exited. With `share` (the VM has a virtio-fs
/// share, whose writes the guest may still hold): `Sync`, then stop at once; with an agent
/// that refuses `Sync`, `Shutdown` and [`SHUTDOWN_GRACE`]. Without: stop at once. Says
/// what happened, for the sandbox's notes.
pub(crate) fn end_exited_vm(agent: &AgentConn, vm: &dyn VmEnding, share: bool) -> String {
    if !share {
        vm.stop_now();
        return "VM stopped at once: no share, nothing in the guest outlives it".into();
    }
    let start = Instant::now();
    match agent.request_done(RequestBody::Sync, SYNC_TIMEOUT) {
        Ok(()) => {
            let synced = start.elapsed();
            vm.stop_now();
            format!(
                "guest synced in {:.3} s; VM stopped {:.3} s later",
                synced.as_secs_f64(),
                (start.elapsed() - synced).as_secs_f64()
            )
        }
        Err(e) => {
            let shutdown = match agent.request_done(RequestBody::Shutdown, SHUTDOWN_TIMEOUT) {
                Ok(()) => String::new(),
                Err(e) => format!("; shutdown: {e}"),
            };
            format!("no sync ({e}){shutdown}; {}", vm.finish(SHUTDOWN_GRACE))
        }
    }
}

/// Waits for the VM on its own thread: the main loop hears when it ends.
pub(crate) fn watch_vm(vm: vmm::RunningVm, tx: Sender<MainEvent>) -> Result<VmGuard, SandboxError> {
    let stop = vm
        .stop_handle()
        .map_err(SandboxError::io("get the VM's stop handle"))?;
    let ended = Arc::new(Mutex::new(None));
    let (done_tx, done) = mpsc::sync_channel(1);
    let flag = ended.clone();
    std::thread::Builder::new()
        .name("zvm_vm_wait".into())
        .spawn(move || {
            let outcome = vm.wait();
            let how = format!("{outcome:?}");
            *flag.lock().unwrap_or_else(|p| p.into_inner()) = Some(how.clone());
            let event = match outcome {
                vmm::VmOutcome::Poweroff => MainEvent::VmPoweredOff,
                _ => MainEvent::VmEnded(how),
            };
            let _ = tx.send(event);
            let _ = done_tx.send(());
        })
        .map_err(SandboxError::io("start the VM watcher"))?;
    Ok(VmGuard { stop, done, ended })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agent_protocol::{handshake, read_frame, write_frame, AgentMessage, Request, ResponseBody};
    use std::os::unix::net::UnixStream;

    /// Records what the sandbox did to the VM.
    #[derive(Default)]
    struct FakeVm {
        calls: Mutex<Vec<String>>,
    }

    impl VmEnding for FakeVm {
        fn stop_now(&self) {
            self.calls.lock().unwrap().push("stop_now".into());
        }
        fn finish(&self, grace: Duration) -> String {
            self.calls.lock().unwrap().push(format!("finish {grace:?}"));
            "VM stopped".into()
        }
    }

    /// An agent that answers `Sync` (or refuses it, as an older agent does) and `Shutdown`,
    /// until one succeeds; returns the requests it saw, in order.
    fn agent(syncs: bool) -> (Arc<AgentConn>, std::thread::JoinHandle<Vec<String>>) {
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        let thread = std::thread::spawn(move || {
            handshake(&mut guest, "fake-agent").unwrap();
            let mut seen = Vec::new();
            while let Ok(Request { id, body }) = read_frame::<_, Request>(&mut guest) {
                seen.push(super::super::agent::request_name(&body).to_string());
                let result = match body {
                    RequestBody::Sync if !syncs => {
                        Err("bad request: unknown variant `sync`".to_string())
                    }
                    _ => Ok(ResponseBody::Done),
                };
                let last = result.is_ok();
                write_frame(&mut guest, &AgentMessage::Response { id, result }).unwrap();
                if last {
                    // Sync, or the Shutdown after a refused one: the host asks nothing more.
                    break;
                }
            }
            seen
        });
        handshake(&mut host, "test-host").unwrap();
        (AgentConn::start(host, false, |_| {}).unwrap(), thread)
    }

    #[test]
    fn a_synced_guest_is_stopped_at_once_without_a_grace() {
        let (conn, thread) = agent(true);
        let vm = FakeVm::default();
        let note = end_exited_vm(&conn, &vm, true);
        assert!(note.starts_with("guest synced in "), "{note}");
        assert_eq!(*vm.calls.lock().unwrap(), ["stop_now"]);
        assert_eq!(thread.join().unwrap(), ["Sync"]);
    }

    #[test]
    fn an_agent_without_sync_gets_shutdown_and_the_grace() {
        let (conn, thread) = agent(false);
        let vm = FakeVm::default();
        let note = end_exited_vm(&conn, &vm, true);
        assert!(
            note.contains("no sync") && note.contains("unknown variant"),
            "{note}"
        );
        assert_eq!(
            *vm.calls.lock().unwrap(),
            [format!("finish {SHUTDOWN_GRACE:?}")]
        );
        assert_eq!(thread.join().unwrap(), ["Sync", "Shutdown"]);
    }

    #[test]
    fn a_lost_agent_still_ends_the_vm() {
        let (host, guest) = UnixStream::pair().unwrap();
        drop(guest);
        let conn = AgentConn::start(host, false, |_| {}).unwrap();
        let vm = FakeVm::default();
        let note = end_exited_vm(&conn, &vm, true);
        assert!(note.contains("no sync"), "{note}");
        assert_eq!(vm.calls.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_vm_without_a_share_is_stopped_without_asking_the_guest() {
        let (host, guest) = UnixStream::pair().unwrap();
        let conn = AgentConn::start(host, false, |_| {}).unwrap();
        let vm = FakeVm::default();
        let note = end_exited_vm(&conn, &vm, false);
        assert!(note.contains("no share"), "{note}");
        assert_eq!(*vm.calls.lock().unwrap(), ["stop_now"]);
        drop(conn);
        let mut guest = guest;
        guest
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(
            read_frame::<_, Request>(&mut guest).is_err(),
            "no request reached the agent"
        );
    }
}
