//! How a sandbox gets its VM: restored from a template, booted, or restored from a
//! container checkpoint.

use super::checkpoint::{
    copy_sparse, CheckpointManifest, CHECKPOINT_AGENT, CHECKPOINT_MEMORY, CHECKPOINT_ROOTFS,
    CHECKPOINT_STATE,
};
use super::daemon::Notes;
use super::vmconfig::{vm_resources, VmFiles, VmSize};
use super::{template, SandboxConfig, SandboxError, AGENT_IMAGE};
use std::path::Path;
use vmm::builder::BuildOptions;
use vmm::devices::serial::ConsoleSink;

/// Starts the container's VM: restored from its template unless templates are off (the
/// settings, or the container's `zvm.template` annotation); booted when there is no
/// template and none can be made (the reason is noted). `fs` is the container's
/// virtio-fs share, if it has one (served by the container's virtiofsd): its template is
/// the flavour with a share. The
/// root file system's disk is read-write even for a read-only root (the agent makes the
/// container's mount points before it makes the root read-only, as runc does).
pub(crate) fn start_vm(
    cfg: &SandboxConfig,
    size: VmSize,
    files: VmFiles<'_>,
    fs: Vec<vmm::resources::FsConfig>,
    notes: &Notes,
) -> Result<vmm::RunningVm, SandboxError> {
    let settings = template::TemplateSettings::from_env();
    if settings.enabled && !template::annotation_disables(&cfg.spec) {
        let vm = template::ContainerVm {
            artifacts: &cfg.artifacts,
            size,
            rootfs_image: files.rootfs_image,
            vsock: files.vsock,
            share: fs.first().and_then(|f| f.socket_path.as_deref()),
            extras: Default::default(),
        };
        let console = || std::fs::File::create(files.console_log).map(ConsoleSink::File);
        match template::start_from_template(&settings.cache(), &vm, &console) {
            Ok(started) => {
                if let Some(took) = started.built_in {
                    notes.note(&format!(
                        "built template {} in {:.1} s",
                        started.template,
                        took.as_secs_f64()
                    ));
                }
                notes.note(&format!("VM restored from template {}", started.template));
                return Ok(started.vm);
            }
            Err(e) => notes.note(&format!("no template ({e}); booting the kernel")),
        }
    } else {
        notes.note("templates are off; booting the kernel");
    }
    super::disk::make_agent_image(
        &cfg.artifacts.agent,
        &cfg.container_dir.join("agent-root"),
        files.agent_image,
    )?;
    let mut resources = vm_resources(size, files, false);
    resources.fs = fs;
    Ok(vmm::build_microvm(&resources, BuildOptions::default())?)
}

/// Restores the VM of the checkpoint in `image` for the container in `dir`: its disks are
/// copied into `dir` first (so the checkpoint can be restored again), the console goes to
/// `console_log` and the vsock socket is `vsock`; its virtio-fs share, if it had one, is
/// served by the virtiofsd listening on `share`, which takes the checkpoint's state of
/// it. Returns the VM and the checkpoint's description.
pub(crate) fn restore_checkpoint(
    image: &Path,
    dir: &Path,
    rootfs_image: &Path,
    console_log: &Path,
    vsock: &Path,
    share: Option<&Path>,
) -> Result<(vmm::RunningVm, CheckpointManifest), SandboxError> {
    let manifest = CheckpointManifest::read(image)?;
    copy_sparse(&image.join(CHECKPOINT_ROOTFS), rootfs_image)?;
    let agent_disk = dir.join(AGENT_IMAGE);
    copy_sparse(&image.join(CHECKPOINT_AGENT), &agent_disk)?;
    let console = std::fs::File::create(console_log).map_err(SandboxError::io(format!(
        "create {}",
        console_log.display()
    )))?;
    let vm = template::restore_container_vm(
        &image.join(CHECKPOINT_STATE),
        &image.join(CHECKPOINT_MEMORY),
        &agent_disk,
        rootfs_image,
        vsock,
        share,
        ConsoleSink::File(console),
    )
    .map_err(|e| {
        SandboxError::Sandbox(format!(
            "cannot restore the checkpoint in {}: {e}",
            image.display()
        ))
    })?;
    Ok((vm, manifest))
}

/// The VM's own host name: the container's, else its id (at most 64 bytes).
pub(crate) fn vm_hostname(cfg: &SandboxConfig) -> String {
    let name = cfg
        .spec
        .hostname()
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| cfg.id.clone());
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}
