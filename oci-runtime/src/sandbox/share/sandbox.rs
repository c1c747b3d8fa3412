//! A sandbox's share: planned, prepared and served before the sandbox splits into its
//! supervisor and jailed halves (virtiofsd runs as root beside the jail, in its own
//! sandbox; the jailed VMM only connects to its socket while the VM is built).

use super::host::{find_virtiofsd, prepare, Virtiofsd};
use super::{fs_device, plan_share, RootfsMode, SharePlan, SHARE_DIR, SHARE_TAG};
use crate::sandbox::daemon::Notes;
use crate::sandbox::{SandboxConfig, SandboxError, ROOTFS_DEVICE};
use agent_protocol::Rootfs;
use std::path::Path;
use vmm::resources::FsConfig;

/// virtiofsd's messages, in the container directory.
pub const VIRTIOFSD_LOG: &str = "virtiofsd.log";

/// The share of a container being created, and the virtiofsd serving it (stopped when
/// this is dropped by the process that started it).
#[derive(Debug)]
pub(crate) struct ContainerShare {
    plan: SharePlan,
    daemon: Option<Virtiofsd>,
}

impl ContainerShare {
    /// Plans `cfg`'s share (`rootfs` is the bundle's root directory, shared when `mode`
    /// says so) and, when it has entries, prepares it and starts its virtiofsd.
    pub(crate) fn start(
        cfg: &SandboxConfig,
        rootfs: &Path,
        mode: RootfsMode,
        notes: &Notes,
    ) -> Result<Self, SandboxError> {
        let shared_root = (mode == RootfsMode::Virtiofs).then_some(rootfs);
        let plan = plan_share(&cfg.spec, &cfg.bundle, shared_root);
        if !plan.needed() {
            return Ok(ContainerShare { plan, daemon: None });
        }
        let binary = find_virtiofsd()?;
        let prepared = prepare(&cfg.container_dir.join(SHARE_DIR), &plan.entries)?;
        let daemon = Virtiofsd::start(&binary, prepared, &cfg.container_dir.join(VIRTIOFSD_LOG))?;
        notes.note(&format!(
            "share {SHARE_TAG}: {} entries ({}), virtiofsd pid {}",
            plan.entries.len(),
            plan.entries
                .iter()
                .map(|e| format!("{} {}", e.name, e.source.display()))
                .collect::<Vec<_>>()
                .join(", "),
            daemon.pid()
        ));
        Ok(ContainerShare {
            plan,
            daemon: Some(daemon),
        })
    }

    /// Whether the container has a share.
    pub(crate) fn needed(&self) -> bool {
        self.plan.needed()
    }

    /// Whether the root file system comes over the share.
    pub(crate) fn rootfs_shared(&self) -> bool {
        self.plan.rootfs_shared
    }

    /// The spec the agent gets (shared sources under the share's mount point).
    pub(crate) fn spec(&self) -> &oci_spec::runtime::Spec {
        &self.plan.spec
    }

    /// Where the agent finds the root file system.
    pub(crate) fn rootfs(&self) -> Rootfs {
        match self.plan.guest_rootfs() {
            Some(path) => Rootfs::Directory { path },
            None => Rootfs::BlockDevice {
                device: ROOTFS_DEVICE.into(),
                fstype: "ext4".into(),
            },
        }
    }

    /// The tag the agent mounts, when there is a share.
    pub(crate) fn tag(&self) -> Option<String> {
        self.daemon.as_ref().map(|_| SHARE_TAG.to_string())
    }

    /// The VM's virtio-fs device, when there is a share.
    pub(crate) fn fs_configs(&self) -> Vec<FsConfig> {
        self.daemon.iter().map(|d| fs_device(d.socket())).collect()
    }
}
