//! The container VM's disks: the bundle's rootfs as an ext4 image, and a small ext4 image
//! the guest boots from whose `/init` is the agent.

use flist_fetcher::ext4::{self, Ext4Options};
use std::path::{Path, PathBuf};

/// Free space added to the rootfs image beyond its content (the image file is sparse).
pub const IMAGE_MARGIN_MIB: u64 = 128;

/// Errors making the VM's disk images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The rootfs directory is missing or not a directory.
    #[error("rootfs {0} is not a directory")]
    NoRootfs(PathBuf),
    /// A file of the rootfs could not be inspected.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The ext4 file system could not be made.
    #[error(transparent)]
    Ext4(#[from] ext4::Error),
}

/// Bytes a tree takes on ext4, roughly (erring high): every entry's data rounded up to
/// 4 KiB blocks plus an inode (256 bytes) each; symlinks are not followed.
pub fn tree_size(root: &Path) -> Result<u64, ImageError> {
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let read = |source| ImageError::Read {
            path: dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&dir).map_err(read)? {
            let entry = entry.map_err(|source| ImageError::Read {
                path: dir.clone(),
                source,
            })?;
            let meta = entry.metadata().map_err(|source| ImageError::Read {
                path: entry.path(),
                source,
            })?;
            total = total.saturating_add(meta.len().div_ceil(4096) * 4096 + 256);
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// Size in MiB of an image holding `content` bytes: a quarter more for metadata and the
/// journal, plus [`IMAGE_MARGIN_MIB`].
pub fn image_size_mib(content: u64) -> u64 {
    (content + content / 4).div_ceil(1 << 20) + IMAGE_MARGIN_MIB
}

/// Makes `image` (replacing it) an ext4 file system holding a copy of `rootfs`, with
/// `mkfs.ext4 -q -F -d <rootfs> <image> <size>M` ([`image_size_mib`]), without a journal.
///
/// The image is the container's own throwaway copy: it lives as long as the container and
/// no VM mounts it after the one that ran it, so a journal would protect nothing: a guest
/// that crashes ends the container, whose disk goes with it; a checkpoint saves the disk
/// with the VM's memory at the same paused instant, so the restored kernel finds the disk
/// as its page cache and its metadata left it. Without one the guest's mount starts no
/// journal thread and reads no journal, and the container's writes are not written twice.
pub fn make_rootfs_image(rootfs: &Path, image: &Path) -> Result<(), ImageError> {
    if !rootfs.is_dir() {
        return Err(ImageError::NoRootfs(rootfs.to_path_buf()));
    }
    mkfs(rootfs, image, image_size_mib(tree_size(rootfs)?), false)
}

/// `mkfs.ext4` of `dir` into `image` of `size_mib` MiB, inode tables written at once (so the
/// guest kernel does not spend emulated time initialising them).
fn mkfs(dir: &Path, image: &Path, size_mib: u64, journal: bool) -> Result<(), ImageError> {
    let opts = Ext4Options {
        journal,
        eager_inode_tables: true,
        ..Default::default()
    };
    Ok(ext4::make_from_dir(dir, image, size_mib << 20, &opts)?)
}

/// Directories the agent needs on its root file system (mount points; the root is
/// mounted read-only).
const AGENT_ROOT_DIRS: &[&str] = &["dev", "proc", "sys", "run", "tmp"];

/// Makes `image` (replacing it) a small read-only-use ext4 file system (no journal) whose
/// `/init` is `agent`, with the mount points the agent needs; `staging` is a scratch
/// directory (removed again). The guest kernel boots from it (`root=`, `init=/init`): the
/// agent's pages are read from the disk as they are used, where an initramfs would be
/// copied whole by emulated kernel code first (measured: about half of a boot here).
pub fn make_agent_image(agent: &Path, staging: &Path, image: &Path) -> Result<(), ImageError> {
    let _ = std::fs::remove_dir_all(staging);
    let io = |source| ImageError::Read {
        path: staging.to_path_buf(),
        source,
    };
    for d in AGENT_ROOT_DIRS {
        std::fs::create_dir_all(staging.join(d)).map_err(io)?;
    }
    let init = staging.join("init");
    std::fs::copy(agent, &init).map_err(|source| ImageError::Read {
        path: agent.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io)?;
    let content = tree_size(staging)?;
    let size = (content + content / 4).div_ceil(1 << 20) + 4;
    let made = mkfs(staging, image, size, false);
    let _ = std::fs::remove_dir_all(staging);
    made
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::process::Command;

    fn have_mkfs() -> bool {
        let ok = Command::new("mkfs.ext4").arg("-V").output().is_ok();
        if !ok {
            eprintln!("skipping: mkfs.ext4 is not installed (apt-get install e2fsprogs)");
        }
        ok
    }

    #[test]
    fn sizes_count_blocks_and_inodes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![0u8; 5000]).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/b"), b"").unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("l")).unwrap();
        let size = tree_size(dir.path()).unwrap();
        // a: 2 blocks; d: its directory blocks; b: none; l: one (counted, if stored inline); 4 inodes.
        let dir_len = std::fs::metadata(dir.path().join("d"))
            .unwrap()
            .len()
            .div_ceil(4096)
            * 4096;
        assert_eq!(size, 8192 + dir_len + 4096 + 4 * 256);
        assert_eq!(image_size_mib(0), IMAGE_MARGIN_MIB);
        assert_eq!(image_size_mib(8 << 20), 10 + IMAGE_MARGIN_MIB);
    }

    #[test]
    fn rootfs_image_holds_the_tree() {
        if !have_mkfs() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/hostname"), b"box\n").unwrap();
        let image = dir.path().join("rootfs.ext4");
        std::fs::write(&image, b"stale").unwrap();
        make_rootfs_image(&rootfs, &image).unwrap();
        assert_eq!(
            std::fs::metadata(&image).unwrap().len(),
            image_size_mib(tree_size(&rootfs).unwrap()) << 20
        );
        let out = Command::new("debugfs")
            .args(["-R", "cat /etc/hostname"])
            .arg(&image)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "box\n");
        let features = Command::new("debugfs")
            .args(["-R", "features"])
            .arg(&image)
            .output()
            .unwrap();
        let features = String::from_utf8_lossy(&features.stdout);
        assert!(!features.contains("has_journal"), "no journal: {features}");
    }

    #[test]
    fn missing_rootfs_and_mkfs_failure_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = make_rootfs_image(&dir.path().join("nope"), &dir.path().join("i")).unwrap_err();
        assert!(
            err.to_string().ends_with("nope is not a directory"),
            "{err}"
        );
        if !have_mkfs() {
            return;
        }
        let err = make_rootfs_image(dir.path(), &dir.path().join("missing-dir/img")).unwrap_err();
        assert!(matches!(err, ImageError::Ext4(_)), "{err}");
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }

    #[test]
    fn agent_image_has_the_agent_as_init_and_the_mount_points() {
        if !have_mkfs() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"\x7fELF-agent").unwrap();
        let (staging, image) = (dir.path().join("staging"), dir.path().join("agent.ext4"));
        make_agent_image(&agent, &staging, &image).unwrap();
        assert!(!staging.exists(), "staging removed");
        let debugfs = |cmd: &str| {
            let out = Command::new("debugfs")
                .args(["-R", cmd])
                .arg(&image)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(debugfs("cat /init"), "\x7fELF-agent");
        assert!(
            debugfs("stat /init").contains("Mode:  0755"),
            "{}",
            debugfs("stat /init")
        );
        let root = debugfs("ls /");
        for d in AGENT_ROOT_DIRS {
            assert!(root.contains(d), "{d} in {root}");
        }
        assert!(!debugfs("features").contains("has_journal"), "no journal");
        let err = make_agent_image(&dir.path().join("missing"), &staging, &image)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
