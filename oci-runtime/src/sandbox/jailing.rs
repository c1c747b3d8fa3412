//! The sandbox's jail (the `jail` crate), on unless [`JAIL_ENV`] is `off`: the sandbox
//! process splits before its VM is built. The supervisor (the pid `zvm-runc` knows) waits
//! and passes signals on; the jailed half builds or restores the VM as root, and vmm locks
//! it down once the VM's KVM, disk and socket descriptors are open, before the guest
//! runs. The container directory is the jailed half's own (it binds its control socket
//! and writes `exit.json` and checkpoints there); the template cache is visible read-only.

use super::daemon::Notes;
use super::template::{self, TemplateSettings};
use super::vmconfig::VmSize;
use super::{SandboxConfig, SandboxError};
use jail::{CgroupLimits, Exposed, IdRange, JailConfig, Side};
use std::path::{Path, PathBuf};

/// `off` runs sandboxes unjailed (anything else, or nothing: jailed).
pub const JAIL_ENV: &str = "ZVM_JAIL";
/// The uid range of jails, `FIRST:COUNT` (default [`IdRange::DEFAULT`]).
pub const JAIL_IDS_ENV: &str = JailConfig::IDS_ENV;
/// Where jails keep their state (default [`JailConfig::STATE_DIR`]).
pub const JAIL_DIR_ENV: &str = JailConfig::STATE_DIR_ENV;

/// Room above the largest file the sandbox writes (a checkpoint's memory or disk copy).
const FILE_SIZE_ROOM: u64 = 64 << 20;

/// Whether new sandboxes run jailed (set in their config by `create`).
pub fn jail_wanted() -> bool {
    std::env::var(JAIL_ENV).map_or(true, |v| v != "off")
}

/// Which half of the sandbox carries on.
pub(crate) enum Entered {
    /// No jail.
    Unjailed,
    /// The jailed half.
    Jailed,
    /// The supervisor, once the jailed half ended with this status.
    Supervisor(i32),
}

/// Splits the sandbox when its config says it runs jailed; the container's template is
/// made first (its VM runs the project's kernel and agent only) so that the jailed half
/// only restores it (the flavour with a virtio-fs share when `shared`: the container's
/// virtiofsd already runs, outside the jail).
pub(crate) fn enter(
    cfg: &SandboxConfig,
    size: VmSize,
    rootfs_image: &Path,
    vsock: &Path,
    shared: bool,
    notes: &Notes,
) -> Result<Entered, SandboxError> {
    if !cfg.jail {
        return Ok(Entered::Unjailed);
    }
    let settings = TemplateSettings::from_env();
    let templates = settings.enabled && !template::annotation_disables(&cfg.spec);
    if templates && cfg.restore_from.is_none() {
        let cache = settings.cache();
        match template::prepare_template_flavour(&cache, &cfg.artifacts, size, shared) {
            Ok((id, Some(took))) => notes.note(&format!(
                "built template {id} in {:.1} s",
                took.as_secs_f64()
            )),
            Ok(_) => {}
            Err(e) => notes.note(&format!("no template ({e})")),
        }
    }
    let config = config(cfg, size, rootfs_image, templates.then_some(&settings.dir))?;
    let side = jail::enter(&config)
        .map_err(|e| SandboxError::Sandbox(format!("{e} ({JAIL_ENV}=off runs without one)")))?;
    match side {
        Side::Supervisor(status) => Ok(Entered::Supervisor(status)),
        Side::Jailed(mut jailed) => {
            notes.note(&format!("jailed as uid {}", jailed.id()));
            // Its own session: the container's pty becomes its controlling terminal.
            // SAFETY: setsid has no preconditions; the jailed half leads no group.
            unsafe { libc::setsid() };
            // Made while the VM is built: handed over at lock-down.
            jailed.own(vsock.to_path_buf());
            vmm::builder::set_lock_down(move || jailed.lock_down().map_err(|e| e.to_string()));
            Ok(Entered::Jailed)
        }
    }
}

fn config(
    cfg: &SandboxConfig,
    size: VmSize,
    rootfs_image: &Path,
    template_dir: Option<&PathBuf>,
) -> Result<JailConfig, SandboxError> {
    let ids = match std::env::var(JAIL_IDS_ENV) {
        Ok(text) => text
            .parse::<IdRange>()
            .map_err(|e| SandboxError::Sandbox(format!("{JAIL_IDS_ENV}: {e}")))?,
        Err(_) => IdRange::DEFAULT,
    };
    let state_dir = JailConfig::state_dir_from_env();
    let memory = size.memory_mib << 20;
    let rootfs = std::fs::metadata(rootfs_image)
        .map(|m| m.len())
        .unwrap_or(0);
    let mut exposed = vec![
        Exposed::writable(&cfg.container_dir),
        // Read when the VM boots instead of restoring a template.
        Exposed::read_only(&cfg.artifacts.kernel),
    ];
    if let Some(dir) = template_dir.filter(|d| d.is_dir()) {
        // A clone's agent disk lives there; a checkpoint copies it.
        exposed.push(Exposed::read_only(dir));
    }
    Ok(JailConfig {
        name: "zvm-sandbox".into(),
        state_dir,
        ids,
        exposed,
        owned: vec![cfg.container_dir.clone()],
        // A container VM has no network interface: its VMM needs no network.
        new_network: true,
        cgroup: CgroupLimits::for_vmm(memory, f64::from(size.vcpus) + 1.0),
        open_files: 4096,
        file_size: memory.max(rootfs) + FILE_SIZE_ROOM,
        root_dir: None,
        kvm_devices: false,
    })
}
