//! The container VM's disks: the bundle's rootfs as an ext4 image, the agent as an initramfs.

use initramfs::Entry;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    /// mkfs.ext4 could not be run.
    #[error("cannot run mkfs.ext4 (install e2fsprogs): {0}")]
    MkfsMissing(std::io::Error),
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4 could not make {image} from {rootfs} ({status}): {stderr}")]
    Mkfs {
        /// The image.
        image: PathBuf,
        /// The rootfs directory.
        rootfs: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        stderr: String,
    },
    /// The initramfs could not be packed or written.
    #[error("cannot make the agent initramfs {path}: {detail}")]
    Initramfs {
        /// The initramfs.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
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
/// `mkfs.ext4 -q -F -d <rootfs> <image> <size>M`.
pub fn make_rootfs_image(rootfs: &Path, image: &Path) -> Result<(), ImageError> {
    if !rootfs.is_dir() {
        return Err(ImageError::NoRootfs(rootfs.to_path_buf()));
    }
    let size = image_size_mib(tree_size(rootfs)?);
    let _ = std::fs::remove_file(image);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0"])
        .arg("-d")
        .arg(rootfs)
        .arg(image)
        .arg(format!("{size}M"))
        .output()
        .map_err(ImageError::MkfsMissing)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(image);
        return Err(ImageError::Mkfs {
            image: image.to_path_buf(),
            rootfs: rootfs.to_path_buf(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The initramfs entries for `agent`: `/init` and the mount points it needs, with
/// `/dev/console` so the kernel gives init a console.
pub fn initramfs_entries(agent: Vec<u8>) -> Vec<Entry> {
    let mut entries: Vec<Entry> = ["dev", "proc", "sys", "run", "tmp"]
        .iter()
        .map(|d| Entry::Dir {
            path: (*d).into(),
            mode: 0o755,
        })
        .collect();
    entries.push(Entry::CharDev {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    entries.push(Entry::File {
        path: "init".into(),
        mode: 0o755,
        data: agent,
    });
    entries
}

/// Writes an uncompressed initramfs to `out` holding `agent` as `/init` (uncompressed:
/// decompressing costs more than reading under an emulated guest kernel).
pub fn make_initramfs(agent: &Path, out: &Path) -> Result<(), ImageError> {
    let err = |detail: String| ImageError::Initramfs {
        path: out.to_path_buf(),
        detail,
    };
    let data = std::fs::read(agent)
        .map_err(|e| err(format!("cannot read the agent {}: {e}", agent.display())))?;
    let bytes =
        initramfs::pack_uncompressed(&initramfs_entries(data)).map_err(|e| err(e.to_string()))?;
    std::fs::write(out, bytes).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        assert!(matches!(err, ImageError::Mkfs { .. }), "{err}");
        assert!(
            err.to_string().starts_with("mkfs.ext4 could not make"),
            "{err}"
        );
    }

    #[test]
    fn initramfs_has_the_agent_as_init() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"\x7fELF-agent").unwrap();
        let out = dir.path().join("initramfs.cpio");
        make_initramfs(&agent, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert!(bytes.starts_with(b"070701"), "newc, uncompressed");
        let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"init\0") && find(b"\x7fELF-agent") && find(b"dev/console\0"));
        let err = make_initramfs(&dir.path().join("missing"), &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read the agent"), "{err}");
    }
}
