//! A `zvm run --flist` container's process, run through the guest agent on a thread of
//! zvm's once the VM is up.

use crate::container_log::ContainerConsole;
use agent_protocol::ExitStatus;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A container flist's process, run through the guest agent once the VM is up.
pub struct ContainerRun {
    pub spec: oci_spec::runtime::Spec,
    /// Where the agent finds the root file system.
    pub rootfs: agent_protocol::Rootfs,
    /// The container's share's tag, when it has one.
    pub share_tag: Option<String>,
    /// Its virtiofsd, kept by `zvm run` for the VM's life.
    pub share: Option<crate::container_share::ShareGuard>,
    pub vsock_uds: PathBuf,
    pub terminal: bool,
    /// The VM's seccomp setting, also applied to the threads talking to the agent.
    pub seccomp: bool,
    /// Where the guest console and zvm's messages go.
    pub console: ContainerConsole,
}

/// Why the VM ended, once it has (for the container thread's error).
pub type Ended = Arc<Mutex<Option<String>>>;

impl ContainerRun {
    /// Runs the process on a thread of its own (seccomp-filtered as a relay once connected
    /// to the agent); the VM is stopped once the process exited and the guest synced, or
    /// on failure. The thread's result is the process's exit status. `network` is what the
    /// agent of a VM restored from a template gives its interfaces (empty: nothing to do).
    pub fn spawn(
        self,
        vm: &vmm::RunningVm,
        vm_ended: Ended,
        network: Vec<agent_protocol::network::NetInterface>,
    ) -> Result<JoinHandle<Result<ExitStatus, String>>, String> {
        let stop = vm
            .stop_handle()
            .map_err(|e| format!("cannot get the VM's stop handle: {e}"))?;
        let seccomp = self.seccomp;
        let uds = self.vsock_uds;
        let (spec, rootfs, share_tag) = (self.spec, self.rootfs, self.share_tag);
        std::thread::Builder::new()
            .name("zvm_container".into())
            .spawn(move || {
                let run = oci_runtime::sandbox::AttachedRun {
                    vsock_uds: &uds,
                    // The failure report quotes the console itself.
                    console_log: None,
                    spec,
                    rootfs,
                    share_tag,
                    seccomp,
                };
                let gone = || vm_ended.lock().unwrap_or_else(|p| p.into_inner()).clone();
                // Once the process exited and the guest synced: no guest power-off.
                let stop_vm = || {
                    let _ = stop.request_stop();
                };
                let result =
                    oci_runtime::sandbox::run_attached_with_network(run, &network, &gone, &stop_vm)
                        .map_err(|e| e.to_string());
                if result.is_err() {
                    let _ = stop.request_stop();
                }
                result
            })
            .map_err(|e| format!("cannot start the container thread: {e}"))
    }
}
