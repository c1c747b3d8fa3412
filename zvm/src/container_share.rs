//! A container flist's virtio-fs share in `zvm run`: its root over virtio-fs (the cache's
//! unpacked flist, copy-on-write in the work directory; see
//! [`zos_boot::flist_vm::cow_root`]) and its `--volume` directories, all in ONE share
//! (oci-runtime's [`oci_runtime::sandbox::share`]) served by one virtiofsd that this
//! process starts before any jail is made, and that dies with it.

use oci_runtime::sandbox::share::host::{prepare_with_root, ShareCache, Virtiofsd};
use oci_runtime::sandbox::share::{fs_device, plan_share, SHARE_TAG};
use oci_runtime::sandbox::ROOTFS_DEVICE;
use std::fs::File;
use std::path::Path;
use vmm::VmResources;
use zos_boot::flist_vm::container::{mount_image_volumes, ContainerBoot, MountedVolume};
use zos_boot::flist_vm::tree_cache::TreeLease;

/// The share's directory in the work directory (placeholders only: the mounts are
/// virtiofsd's alone).
pub const SHARE_DIR: &str = "share";
/// virtiofsd's messages, in the work directory.
pub const VIRTIOFSD_LOG: &str = "virtiofsd.log";

/// What the agent is told about the container's root and share.
pub struct AgentView {
    /// The spec, each shared bind mount's source under the share's mount point.
    pub spec: oci_spec::runtime::Spec,
    /// Where the root file system is.
    pub rootfs: agent_protocol::Rootfs,
    /// The share's tag, when there is one.
    pub tag: Option<String>,
}

/// The share's virtiofsd, the lock on the root's store, the lease on its cached tree and
/// the image volumes' stores, kept for the VM's life: dropping this (in the process that
/// started it) stops virtiofsd, and with it the overlay and the volumes' mounts, which only
/// its mount namespace had, and lets the tree be evicted.
pub struct ShareGuard {
    _daemon: Virtiofsd,
    _lock: Option<File>,
    _lease: Option<TreeLease>,
    _volumes: Vec<MountedVolume>,
}

/// Plans the container's share from `spec` (its volumes are bind mounts of host
/// directories, or of image volumes' stores, mounted here) and `boot`'s overlay (its writes
/// in the root's store); when there is anything to share, makes the overlay, starts
/// virtiofsd (`virtiofsd`, or found as for `--fs`) with its files in
/// `work_dir`, and adds the share's device to `resources`.
pub fn start(
    boot: &ContainerBoot,
    mut spec: oci_spec::runtime::Spec,
    work_dir: &Path,
    virtiofsd: Option<&Path>,
    resources: &mut VmResources,
) -> Result<(AgentView, Option<ShareGuard>), String> {
    let volumes = mount_image_volumes(&mut spec).map_err(|e| e.to_string())?;
    let plan = plan_share(&spec, Path::new("/"), None);
    let block = agent_protocol::Rootfs::BlockDevice {
        device: ROOTFS_DEVICE.into(),
        fstype: "ext4".into(),
    };
    let overlay = boot.rootfs_overlay.as_ref();
    if plan.entries.is_empty() && overlay.is_none() {
        let view = AgentView {
            spec,
            rootfs: block,
            tag: None,
        };
        return Ok((view, None));
    }
    let binary = crate::virtiofs::find_virtiofsd(virtiofsd).map_err(|e| e.to_string())?;
    let (lock, tree) = match overlay {
        Some(root) => {
            let (lock, tree) = root.mount().map_err(|e| e.to_string())?;
            (Some(lock), Some(tree))
        }
        None => (None, None),
    };
    // The root's overlay and the image volumes' stores are this VM's alone: unless a host
    // directory is shared too, the guest may keep what it read.
    let owned: Vec<&Path> = volumes.iter().map(MountedVolume::source).collect();
    let cache = ShareCache::for_entries(&plan.entries, &owned);
    let prepared = prepare_with_root(&work_dir.join(SHARE_DIR), &plan.entries, tree)
        .map_err(|e| e.to_string())?
        .with_cache(cache);
    let daemon = Virtiofsd::start(&binary, prepared, &work_dir.join(VIRTIOFSD_LOG))
        .map_err(|e| e.to_string())?;
    tracing::info!(
        "share {SHARE_TAG}: root {}, {} volumes, guest cache {}, virtiofsd pid {}",
        if overlay.is_some() {
            "over virtio-fs (copy-on-write, bounded store)"
        } else {
            "on ext4"
        },
        plan.entries.len(),
        match cache {
            ShareCache::Exclusive => "kept (the VM's own files)",
            ShareCache::Auto => "close-to-open (host files)",
        },
        daemon.pid()
    );
    resources.fs.push(fs_device(daemon.socket()));
    let rootfs = match overlay {
        Some(_) => agent_protocol::Rootfs::Directory {
            path: format!(
                "{}/{}",
                agent_protocol::SHARE_MOUNT,
                oci_runtime::sandbox::share::ROOT_ENTRY
            ),
        },
        None => block,
    };
    let view = AgentView {
        spec: plan.spec,
        rootfs,
        tag: Some(SHARE_TAG.to_string()),
    };
    Ok((
        view,
        Some(ShareGuard {
            _daemon: daemon,
            _lock: lock,
            _lease: overlay.map(|root| root.lease.clone()),
            _volumes: volumes,
        }),
    ))
}
