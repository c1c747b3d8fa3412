//! The container's root file system: an existing directory (host tests), or a block device the
//! agent mounts once the kernel knows the device's size.
//!
//! A VM restored from a template snapshot had a 0-byte placeholder as its root-file-system disk
//! when the template booted. After the restore the VMM raises a virtio config-change interrupt
//! and the guest kernel updates the disk's capacity from a workqueue, so the Create that follows
//! may see the old size 0 for a moment: it waits (bounded) for a non-zero size before mounting.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_protocol::{Rootfs, SHARE_MOUNT};

use crate::sys::Sys;

/// Where block-device root filesystems are mounted.
pub const ROOTFS_MOUNT: &str = "/run/zvm/rootfs";

/// How long Create waits for a block device's size to become non-zero.
pub const DISK_WAIT: Duration = Duration::from_secs(10);

/// How often it looks meanwhile.
pub const DISK_POLL: Duration = Duration::from_millis(5);

/// Polls `device`'s size every `poll` while it is 0, for at most `limit`. Returns the last
/// size read (0 when the deadline passed), or None when the size cannot be read (the mount
/// then says why).
pub fn wait_for_size(
    sys: &mut impl Sys,
    device: &Path,
    limit: Duration,
    poll: Duration,
) -> Option<u64> {
    let start = Instant::now();
    loop {
        match sys.block_size(device) {
            Ok(0) => {}
            Ok(size) => {
                if start.elapsed() >= poll {
                    tracing::info!(
                        "{}: {size} bytes after {:?}",
                        device.display(),
                        start.elapsed()
                    );
                }
                return Some(size);
            }
            Err(e) => {
                tracing::warn!("size of {}: {e}", device.display());
                return None;
            }
        }
        let waited = start.elapsed();
        if waited >= limit {
            tracing::warn!("{} is still empty after {waited:?}", device.display());
            return Some(0);
        }
        std::thread::sleep(poll.min(limit - waited));
    }
}

/// Waits, as for the root, for the size of every virtio disk (`/dev/vd*`) the spec's
/// `mounts` mount to become non-zero: a clone's data disks were 0-byte placeholders in its
/// template too. One deadline, `limit`, for all of them; a disk still empty then is left
/// to its mount to fail.
pub fn wait_for_disk_mounts(
    sys: &mut impl Sys,
    mounts: &[oci_spec::runtime::Mount],
    limit: Duration,
) {
    let start = Instant::now();
    for m in mounts {
        let Some(source) = m.source().as_deref() else {
            continue;
        };
        let is_virtio_disk = source
            .to_str()
            .and_then(|s| s.strip_prefix("/dev/vd"))
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase()));
        if is_virtio_disk {
            wait_for_size(
                sys,
                source,
                limit.saturating_sub(start.elapsed()),
                DISK_POLL,
            );
        }
    }
}

/// Mounts the container's virtio-fs share `tag` on [`SHARE_MOUNT`].
pub fn mount_share(sys: &mut impl Sys, tag: &str) -> Result<PathBuf, String> {
    let target = PathBuf::from(SHARE_MOUNT);
    sys.mkdir_all(&target)
        .map_err(|e| format!("create {SHARE_MOUNT}: {e}"))?;
    sys.mount(Some(Path::new(tag)), &target, Some("virtiofs"), 0, None)
        .map_err(|e| format!("mount the virtio-fs share {tag:?} on {SHARE_MOUNT}: {e}"))?;
    Ok(target)
}

/// Makes `rootfs` available: returns the root directory and, for a block device, the mount
/// the agent made (to undo). A block device is mounted on [`ROOTFS_MOUNT`] once its size is
/// non-zero, or after `limit` anyway. It is mounted read-write even for a read-only root
/// (the image is the container's own copy): the container's mount points are made first
/// and the root is made read-only after (as runc does).
pub fn mount(
    sys: &mut impl Sys,
    rootfs: &Rootfs,
    limit: Duration,
) -> Result<(PathBuf, Option<PathBuf>), String> {
    match rootfs {
        Rootfs::Directory { path } => {
            let p = PathBuf::from(path);
            if !p.is_absolute() || !p.is_dir() {
                return Err(format!("rootfs directory {path:?} does not exist (or is not an absolute directory path)"));
            }
            Ok((p, None))
        }
        Rootfs::BlockDevice { device, fstype } => {
            let size = wait_for_size(sys, Path::new(device), limit, DISK_POLL);
            let target = PathBuf::from(ROOTFS_MOUNT);
            sys.mkdir_all(&target)
                .map_err(|e| format!("create {ROOTFS_MOUNT}: {e}"))?;
            let device = Path::new(device);
            // A disk the VMM attached read-only can only be mounted read-only.
            sys.mount(Some(device), &target, Some(fstype), 0, None)
                .or_else(|e| match e.raw_os_error() {
                    Some(libc::EROFS | libc::EACCES) => {
                        sys.mount(Some(device), &target, Some(fstype), libc::MS_RDONLY, None)
                    }
                    _ => Err(e),
                })
                .map_err(|e| {
                    let empty = match size {
                        Some(0) => {
                            format!(" (the disk is empty: its size was still 0 after {limit:?})")
                        }
                        _ => String::new(),
                    };
                    format!(
                        "mount rootfs {} ({fstype}) on {ROOTFS_MOUNT}: {e}{empty}",
                        device.display()
                    )
                })?;
            Ok((target.clone(), Some(target)))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testsys::Recorder;

    fn vdb() -> Rootfs {
        Rootfs::BlockDevice {
            device: "/dev/vdb".into(),
            fstype: "ext4".into(),
        }
    }

    #[test]
    fn waits_while_the_disk_is_empty_then_mounts() {
        let mut r = Recorder {
            block_sizes: [0, 0, 0, 1 << 30].into(),
            ..Default::default()
        };
        let (root, mounted) = mount(&mut r, &vdb(), DISK_WAIT).unwrap();
        assert_eq!(root, Path::new(ROOTFS_MOUNT));
        assert_eq!(mounted.as_deref(), Some(Path::new(ROOTFS_MOUNT)));
        assert_eq!(
            r.calls,
            [
                "block_size /dev/vdb",
                "block_size /dev/vdb",
                "block_size /dev/vdb",
                "block_size /dev/vdb",
                "mkdir /run/zvm/rootfs",
                "mount /dev/vdb /run/zvm/rootfs ext4 0x0 -",
            ]
        );
        // A disk that has its size at once is mounted without a pause.
        let mut r = Recorder {
            block_sizes: [4096].into(),
            ..Default::default()
        };
        mount(&mut r, &vdb(), DISK_WAIT).unwrap();
        assert_eq!(r.pos("mount /dev/vdb /run/zvm/rootfs ext4 0x0"), 2);
    }

    #[test]
    fn a_read_only_disk_is_mounted_read_only() {
        let mut r = Recorder {
            block_sizes: [4096].into(),
            fail_on: Some("mount /dev/vdb /run/zvm/rootfs ext4 0x0".into()),
            ..Default::default()
        };
        mount(&mut r, &vdb(), DISK_WAIT).unwrap();
        assert_eq!(r.pos("mount /dev/vdb /run/zvm/rootfs ext4 0x1"), 3);
    }

    #[test]
    fn an_empty_disk_is_mounted_after_the_deadline_and_named_in_the_error() {
        let mut r = Recorder {
            fail_on: Some("mount".into()),
            ..Default::default()
        };
        let limit = Duration::from_millis(40);
        let start = Instant::now();
        let err = mount(&mut r, &vdb(), limit).unwrap_err();
        assert!(start.elapsed() >= limit);
        assert!(
            err.starts_with("mount rootfs /dev/vdb (ext4) on /run/zvm/rootfs: ")
                && err.ends_with(" (the disk is empty: its size was still 0 after 40ms)"),
            "{err}"
        );
        let polls = r
            .calls
            .iter()
            .filter(|c| c.starts_with("block_size"))
            .count();
        assert!((2..=10).contains(&polls), "{polls} polls in {limit:?}");
        assert!(r.has("mount /dev/vdb"));
    }

    #[test]
    fn an_unreadable_size_does_not_delay_the_mount() {
        let mut r = Recorder {
            fail_on: Some("block_size".into()),
            ..Default::default()
        };
        mount(&mut r, &vdb(), DISK_WAIT).unwrap();
        assert_eq!(r.calls.len(), 3, "{:?}", r.calls);
        let mut r = Recorder {
            fail_on: Some("block_size".into()),
            ..Default::default()
        };
        r.block_sizes = [0].into();
        assert_eq!(
            wait_for_size(&mut r, Path::new("/dev/x"), DISK_WAIT, DISK_POLL),
            None
        );
    }

    #[test]
    fn data_disks_are_mounted_once_they_have_a_size() {
        let mount = |source: &str, typ: &str| {
            let mut m = oci_spec::runtime::Mount::default();
            m.set_source(Some(source.into()));
            m.set_typ(Some(typ.into()));
            m
        };
        let mounts = [
            mount("proc", "proc"),
            mount("/dev/vdc", "ext4"),
            mount("/dev/vdc1", "ext4"),
            mount("/dev/vd", "ext4"),
            mount("/dev/../etc/vdx", "ext4"),
            mount("/dev/vdd", "ext4"),
        ];
        let mut r = Recorder {
            block_sizes: [0, 4096, 8192].into(),
            ..Default::default()
        };
        wait_for_disk_mounts(&mut r, &mounts, DISK_WAIT);
        assert_eq!(
            r.calls,
            [
                "block_size /dev/vdc",
                "block_size /dev/vdc",
                "block_size /dev/vdd"
            ]
        );
        // Disks that stay empty share one deadline.
        let mut r = Recorder::default();
        let limit = Duration::from_millis(40);
        let start = Instant::now();
        wait_for_disk_mounts(&mut r, &mounts, limit);
        assert!(start.elapsed() < limit * 3, "{:?}", start.elapsed());
    }

    #[test]
    fn the_share_is_mounted_by_its_tag() {
        let mut r = Recorder::default();
        let at = mount_share(&mut r, "zvm-share").unwrap();
        assert_eq!(at, Path::new(SHARE_MOUNT));
        assert_eq!(
            r.calls,
            [
                "mkdir /run/zvm/share",
                "mount zvm-share /run/zvm/share virtiofs 0x0 -"
            ]
        );
        let mut r = Recorder {
            fail_on: Some("mount".into()),
            ..Default::default()
        };
        let err = mount_share(&mut r, "zvm-share").unwrap_err();
        assert!(
            err.starts_with("mount the virtio-fs share \"zvm-share\" on /run/zvm/share: "),
            "{err}"
        );
    }

    #[test]
    fn a_directory_needs_no_mount() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recorder::default();
        let rootfs = Rootfs::Directory {
            path: dir.path().display().to_string(),
        };
        let (root, mounted) = mount(&mut r, &rootfs, DISK_WAIT).unwrap();
        assert_eq!((root.as_path(), mounted), (dir.path(), None));
        assert!(r.calls.is_empty());
        let rootfs = Rootfs::Directory {
            path: "relative".into(),
        };
        assert!(mount(&mut r, &rootfs, DISK_WAIT).is_err());
    }
}
