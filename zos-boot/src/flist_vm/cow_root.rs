//! A container flist's root over virtio-fs, copy-on-write per VM.
//!
//! The flist's tree is unpacked ONCE into the cache, `<cache>/trees/<sha256 of the .fl>/`,
//! and never written again: every VM (deployment, `zvm run`) of that flist has it as the
//! read-only lower layer of an overlayfs whose upper layer is the VM's own
//! `<work>/rootfs/upper` ([`oci_runtime::sandbox::share::overlay`]). The VM process makes
//! the overlay as a detached mount and virtiofsd, in its own mount namespace, serves it as
//! the container's share's `rootfs` entry: the host's mount table never has it, and it is
//! gone when virtiofsd is (the VM ended, crashed or was killed). The VM's writes stay in
//! its work directory for its life (a restart finds them) and go with it; two VMs of one
//! flist never see each other's writes.

use super::FlistVmError;
use flist_fetcher::meta::Reader;
use flist_fetcher::tree::Tree;
use oci_runtime::sandbox::share::overlay::OverlayDirs;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Where a container's root file system comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootFs {
    /// The unpacked flist in the cache, copy-on-write, over virtio-fs (the default).
    #[default]
    Virtiofs,
    /// A private ext4 copy of the flist's tree on a virtio-blk disk (bounded by its size;
    /// needs no virtiofsd).
    Ext4,
}

impl std::str::FromStr for RootFs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "virtiofs" | "virtio-fs" => Ok(RootFs::Virtiofs),
            "ext4" | "image" => Ok(RootFs::Ext4),
            other => Err(format!("`{other}` is not a root: use virtiofs or ext4")),
        }
    }
}

impl std::fmt::Display for RootFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RootFs::Virtiofs => "virtiofs",
            RootFs::Ext4 => "ext4",
        })
    }
}

/// The directory of a VM's own layers in its work directory.
pub const ROOTFS_LAYERS: &str = "rootfs";
/// The VM's second disk when its root comes over virtio-fs: empty, unused by the agent
/// (the VM keeps the shape its template has).
pub const ROOTFS_PLACEHOLDER: &str = "rootfs.placeholder";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FlistVmError + '_ {
    move |source| FlistVmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The cache's tree of the flist file `fl`: `<cache_dir>/trees/<sha256 of fl>`.
pub fn tree_dir(fl: &Path, cache_dir: &Path) -> Result<PathBuf, FlistVmError> {
    let bytes = std::fs::read(fl).map_err(io(fl))?;
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(cache_dir.join("trees").join(hex))
}

/// Makes sure the cache holds the unpacked tree of `fl` (loaded as `tree`): unpacked into
/// a staging directory and renamed into place whole, so that a tree in place is always
/// complete, and another process unpacking the same flist at the same time loses nothing.
pub fn lower_tree(
    fl: &Path,
    reader: &Reader,
    tree: &Tree,
    cache_dir: &Path,
    unpack: &flist_fetcher::UnpackOptions,
) -> Result<PathBuf, FlistVmError> {
    let target = tree_dir(fl, cache_dir)?;
    if target.is_dir() {
        return Ok(target);
    }
    let trees = target.parent().unwrap_or(cache_dir).to_path_buf();
    std::fs::create_dir_all(&trees).map_err(io(&trees))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = trees.join(format!(".{name}.{}.staging", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    tracing::info!(tree = %target.display(), "unpacking the container flist into the cache");
    let unpacked = flist_fetcher::unpack::unpack_tree(
        tree,
        &super::cache(unpack)?,
        &super::router(reader)?,
        &staging,
        unpack,
    );
    if let Err(e) = unpacked {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(FlistVmError::Flist {
            flist: fl.display().to_string(),
            source: Box::new(e.into()),
        });
    }
    if let Err(e) = std::fs::rename(&staging, &target) {
        let _ = std::fs::remove_dir_all(&staging);
        // Another process put the same tree in place first.
        if !target.is_dir() {
            return Err(io(&target)(e));
        }
    }
    Ok(target)
}

/// The VM's layers over `lower` in `work_dir` (made if missing, kept if there), and its
/// placeholder second disk.
pub fn vm_layers(lower: &Path, work_dir: &Path) -> Result<(OverlayDirs, PathBuf), FlistVmError> {
    // overlayfs takes absolute paths (`--flist-cache` and `--flist-work` may be relative).
    let lower = std::path::absolute(lower).map_err(io(lower))?;
    let layers = std::path::absolute(work_dir.join(ROOTFS_LAYERS)).map_err(io(work_dir))?;
    let dirs = OverlayDirs::in_dir(&lower, &layers);
    dirs.create()
        .map_err(|e| FlistVmError::RootDir(e.to_string()))?;
    let placeholder = work_dir.join(ROOTFS_PLACEHOLDER);
    std::fs::File::create(&placeholder).map_err(io(&placeholder))?;
    Ok((dirs, placeholder))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roots_parse_and_print() {
        assert_eq!("virtiofs".parse::<RootFs>(), Ok(RootFs::Virtiofs));
        assert_eq!("ext4".parse::<RootFs>(), Ok(RootFs::Ext4));
        assert!("btrfs"
            .parse::<RootFs>()
            .unwrap_err()
            .contains("virtiofs or ext4"));
        assert_eq!(RootFs::default().to_string(), "virtiofs");
    }

    #[test]
    fn a_tree_is_named_after_the_flist_content_and_stays_in_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.fl"), dir.path().join("b.fl"));
        std::fs::write(&a, b"one").unwrap();
        std::fs::write(&b, b"one").unwrap();
        let cache = dir.path().join("cache");
        let ta = tree_dir(&a, &cache).unwrap();
        assert_eq!(ta, tree_dir(&b, &cache).unwrap());
        assert!(ta.starts_with(cache.join("trees")));
        std::fs::write(&b, b"two").unwrap();
        assert_ne!(ta, tree_dir(&b, &cache).unwrap());
        let (dirs, placeholder) = vm_layers(dir.path(), &dir.path().join("work")).unwrap();
        assert!(dirs.upper.starts_with(dir.path().join("work")));
        assert!(dirs.work.starts_with(dir.path().join("work")));
        assert_eq!(std::fs::metadata(placeholder).unwrap().len(), 0);
    }
}
