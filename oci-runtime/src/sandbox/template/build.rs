//! Making a template: boot a container VM with an empty placeholder for the container's
//! disk, wait until its agent answers, let go of the connection, pause, snapshot, stop.

use super::cache::{AGENT_DISK, MEMORY_FILE, STATE_FILE};
use super::{ContainerVm, TemplateError};
use crate::sandbox::agent::wait_for_agent;
use crate::sandbox::daemon::AGENT_DEADLINE;
use crate::sandbox::disk::make_agent_image;
use crate::sandbox::share::host::{find_virtiofsd, prepare, Virtiofsd};
use crate::sandbox::share::{fs_device, ShareError};
use crate::sandbox::vmconfig::{vm_resources, VmFiles};
use agent_protocol::AGENT_VSOCK_PORT;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm::builder::BuildOptions;
use vmm::snapshot::{CreateSnapshotParams, SnapshotType};

/// Console of the template's boot (kept in the template, for when a build fails).
pub const BUILD_CONSOLE: &str = "console.log";
/// The placeholder for the container's disk: an empty file (the clone's real disk has
/// another size; the VMM tells the guest so after the restore).
const PLACEHOLDER: &str = "rootfs.placeholder";
/// The template VM's vsock socket while it runs.
const BUILD_VSOCK: &str = "vsock.sock";
/// The empty directory the template VM's share serves while it boots.
const EMPTY_SHARE: &str = "share";
/// That virtiofsd's messages (kept in the template).
const BUILD_VIRTIOFSD_LOG: &str = "virtiofsd.log";
/// How long the agent gets to see the connection go before the VM is paused: a clone then
/// starts with an agent already listening again (the restore resets every vsock
/// connection anyway, so this only saves a clone some guest work).
const SETTLE: Duration = Duration::from_millis(300);

/// Boots the template VM for `vm`'s kernel, agent and size (and share, when it has one)
/// in `dir` and leaves its snapshot there (`vmstate`, `memory`, `agent.ext4`); the VM is
/// stopped afterwards.
pub(crate) fn build_template(dir: &Path, vm: &ContainerVm<'_>) -> Result<Duration, TemplateError> {
    let start = Instant::now();
    let agent_disk = dir.join(AGENT_DISK);
    make_agent_image(&vm.artifacts.agent, &dir.join("agent-root"), &agent_disk)?;
    let placeholder = dir.join(PLACEHOLDER);
    std::fs::write(&placeholder, b"").map_err(|source| TemplateError::Io {
        what: format!("create {}", placeholder.display()),
        source,
    })?;
    let (console, vsock) = (dir.join(BUILD_CONSOLE), dir.join(BUILD_VSOCK));
    let files = VmFiles {
        kernel: &vm.artifacts.kernel,
        agent_image: &agent_disk,
        rootfs_image: &placeholder,
        console_log: &console,
        vsock: &vsock,
    };
    // The flavour with a share: its device is probed by the guest, never mounted, and
    // served meanwhile by a virtiofsd on an empty directory; each clone's own virtiofsd
    // takes over at the restore.
    let backend = match vm.share {
        Some(_) => Some(start_empty_share(dir)?),
        None => None,
    };
    let mut resources = vm_resources(vm.size, files, false);
    if let Some(backend) = &backend {
        resources.fs = vec![fs_device(backend.socket())];
    }
    let shape_scratch = vm.extras.add_to_template(&mut resources, dir)?;
    let running = vmm::build_microvm(&resources, BuildOptions::default())
        .map_err(|e| TemplateError::Build(format!("cannot boot the template VM: {e}")))?;
    let handle_err = |e: std::io::Error| TemplateError::Build(format!("VM handle: {e}"));
    let pause = running.pause_handle().map_err(handle_err)?;
    let snapshot = running.snapshot_handle().map_err(handle_err)?;
    let stop = running.stop_handle().map_err(handle_err)?;
    let ended = Arc::new(Mutex::new(None::<String>));
    let flag = ended.clone();
    let waiter = std::thread::Builder::new()
        .name("zvm_template_wait".into())
        .spawn(move || {
            let outcome = running.wait();
            *flag.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{outcome:?}"));
        })
        .map_err(|source| TemplateError::Io {
            what: "start the template VM's watcher".into(),
            source,
        })?;
    let gone = || ended.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let made = (|| {
        let stream = wait_for_agent(
            &vsock,
            AGENT_VSOCK_PORT,
            Instant::now() + AGENT_DEADLINE,
            Some(&console),
            &gone,
        )?;
        drop(stream);
        std::thread::sleep(SETTLE);
        pause
            .pause()
            .map_err(|e| TemplateError::Build(format!("cannot pause the template VM: {e}")))?;
        let params = CreateSnapshotParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: dir.join(STATE_FILE),
            mem_file_path: dir.join(MEMORY_FILE),
        };
        snapshot.create(&params).map_err(TemplateError::Restore)?;
        Ok(())
    })();
    let _ = stop.request_stop();
    let _ = waiter.join();
    drop(backend);
    for scratch in [&vsock, &placeholder].into_iter().chain(&shape_scratch) {
        let _ = std::fs::remove_file(scratch);
    }
    let _ = std::fs::remove_dir_all(dir.join(EMPTY_SHARE));
    made.map(|()| start.elapsed())
}

/// A virtiofsd serving an empty directory in `dir`, for the template VM's share.
fn start_empty_share(dir: &Path) -> Result<Virtiofsd, TemplateError> {
    let failed = |e: ShareError| TemplateError::Build(format!("the template's share: {e}"));
    let prepared = prepare(&dir.join(EMPTY_SHARE), &[]).map_err(failed)?;
    Virtiofsd::start(
        &find_virtiofsd().map_err(failed)?,
        prepared,
        &dir.join(BUILD_VIRTIOFSD_LOG),
    )
    .map_err(failed)
}
