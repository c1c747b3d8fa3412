//! A container flist's root over virtio-fs, copy-on-write per VM.
//!
//! The flist's tree is unpacked ONCE into the cache, `<cache>/trees/<sha256 of the .fl>/`,
//! and never written again: every VM (deployment, `zvm run`) of that flist has it as the
//! read-only lower layer of an overlayfs whose upper layer is the VM's own
//! `rootfs/upper` in its own store, `<work>/rootfs/store.ext4`, an ext4 image of the root's
//! size that bounds what the VM can write ([`super::bounded_store`];
//! [`oci_runtime::sandbox::share::overlay`]). The cache itself is bounded too: unused trees
//! are evicted least recently used first ([`super::tree_cache`]). The VM process makes
//! the overlay as a detached mount and virtiofsd, in its own mount namespace, serves it as
//! the container's share's `rootfs` entry: the host's mount table never has it, and it is
//! gone when virtiofsd is (the VM ended, crashed or was killed). The VM's writes stay in
//! its work directory for its life (a restart finds them) and go with it; two VMs of one
//! flist never see each other's writes.

use super::bounded_store::{self, RootAttrs, StoreImage};
use super::tree_cache::{self, TreeLease};
use super::FlistVmError;
use flist_fetcher::meta::Reader;
use flist_fetcher::tree::Tree;
use oci_runtime::sandbox::share::overlay::OverlayDirs;
use sha2::{Digest, Sha256};
use std::os::fd::OwnedFd;
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
/// The store of the VM's writes to its root, in [`ROOTFS_LAYERS`].
pub const ROOT_STORE: &str = "store.ext4";
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

/// Makes sure the cache holds the unpacked tree of `fl` (loaded as `tree`) and returns a
/// lease on it ([`super::tree_cache`]: unpacked into a staging directory and renamed into
/// place whole, after unused trees were evicted to keep the cache within its size).
pub fn lower_tree(
    fl: &Path,
    reader: &Reader,
    tree: &Tree,
    cache_dir: &Path,
    unpack: &flist_fetcher::UnpackOptions,
) -> Result<TreeLease, FlistVmError> {
    let target = tree_dir(fl, cache_dir)?;
    let limit = tree_cache::limit()?;
    let entries = u64::try_from(tree.entries.len()).unwrap_or(u64::MAX);
    let lease = tree_cache::ensure_tree(&target, tree.total_size(), entries, limit, |staging| {
        tracing::info!(tree = %target.display(), "unpacking the container flist into the cache");
        let _ = std::fs::remove_dir_all(staging);
        let unpacked = flist_fetcher::unpack::unpack_tree(
            tree,
            &super::cache(unpack).map_err(|e| e.to_string())?,
            &super::router(reader).map_err(|e| e.to_string())?,
            staging,
            unpack,
        );
        unpacked
            .map(|_| ())
            .map_err(|e| format!("flist `{}`: {e}", fl.display()))
    })?;
    Ok(lease)
}

/// A container's root over virtio-fs: the cache's tree (leased for the VM's life: it is not
/// evicted while the VM runs) under the VM's writes, which go to a store of their own of a
/// fixed size ([`super::bounded_store`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CowRoot {
    /// The cache's tree, the overlay's lower layer.
    pub lower: PathBuf,
    /// The store of the VM's writes (`<work>/rootfs/store.ext4`).
    pub store: StoreImage,
    /// The lease on `lower`.
    pub lease: TreeLease,
}

impl CowRoot {
    /// Takes the store for this VM (a lock held while the returned file is open), mounts
    /// it detached, makes the overlay's upper and work directories in it (kept if there:
    /// a restarted VM finds its writes) and returns the overlay as a detached mount.
    pub fn mount(&self) -> Result<(std::fs::File, OwnedFd), FlistVmError> {
        let lock = self.store.lock()?;
        let store = self.store.mount_detached()?;
        let dirs = OverlayDirs::in_dir(&self.lower, &bounded_store::proc_path(&store));
        dirs.create()
            .map_err(|e| FlistVmError::RootDir(e.to_string()))?;
        let overlay = match dirs.mount_detached() {
            // The overlay holds its own reference to the store's mount.
            Ok(overlay) => overlay,
            // Linux before 6.15 takes an upper layer only from a mount of the caller's
            // namespace.
            Err(direct) => {
                let attach_at = self.store.path().with_file_name(STORE_MOUNT_POINT);
                overlay_in_private_namespace(&self.lower, store, &attach_at).map_err(|e| {
                    FlistVmError::RootDir(format!(
                        "{direct}; in a mount namespace of its own: {e} (--root-fs ext4 needs neither)"
                    ))
                })?
            }
        };
        Ok((lock, overlay))
    }
}

/// Where [`overlay_in_private_namespace`] attaches a root's store, beside it.
pub const STORE_MOUNT_POINT: &str = "store.mnt";

/// The overlay over `lower` with its upper and work directories in `store` (a detached
/// mount), made by a thread of this process in a mount namespace of its own, where `store`
/// is attached on `attach_at` (an empty directory, made if missing) for as long as the
/// thread lives: the overlay keeps its own reference to the store's mount, the thread's
/// namespace and its attachment go with the thread, and the host's mount table never has
/// either. For kernels that take an overlay's upper layer only from a mount in the caller's
/// namespace (before 6.15).
pub fn overlay_in_private_namespace(
    lower: &Path,
    store: OwnedFd,
    attach_at: &Path,
) -> Result<OwnedFd, String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(attach_at) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(format!("create {}: {e}", attach_at.display()))
        }
        _ => {}
    }
    let target = std::ffi::CString::new(attach_at.as_os_str().as_encoded_bytes())
        .map_err(|e| e.to_string())?;
    let lower = lower.to_path_buf();
    let attach_at = attach_at.to_path_buf();
    let worker = move || -> Result<OwnedFd, String> {
        let last = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
        // SAFETY: unshare of this thread's file system attributes and mount namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return Err(last("unshare the mount namespace"));
        }
        // SAFETY: a propagation change of this thread's own namespace copy.
        let private = unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        if private != 0 {
            return Err(last("make the namespace's mounts private"));
        }
        const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
        // SAFETY: move_mount of a detached mount we own onto a NUL-terminated path.
        let moved = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                store.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if moved != 0 {
            return Err(last("attach the store (move_mount)"));
        }
        let dirs = OverlayDirs::in_dir(&lower, &attach_at);
        dirs.create().map_err(|e| e.to_string())?;
        dirs.mount_detached().map_err(|e| e.to_string())
    };
    std::thread::Builder::new()
        .name("zvm_overlay_ns".into())
        .spawn(worker)
        .map_err(|e| format!("start a thread: {e}"))?
        .join()
        .map_err(|_| "its thread panicked".to_string())?
}

/// The VM's layers over the leased tree in `work_dir`: its store of `size` bytes (made if
/// missing, kept with its data and size if there), and its placeholder second disk.
pub fn vm_layers(
    lease: TreeLease,
    work_dir: &Path,
    size: u64,
) -> Result<(CowRoot, PathBuf), FlistVmError> {
    // overlayfs takes absolute paths (`--flist-cache` and `--flist-work` may be relative).
    let lower = std::path::absolute(lease.tree()).map_err(io(lease.tree()))?;
    let layers = std::path::absolute(work_dir.join(ROOTFS_LAYERS)).map_err(io(work_dir))?;
    std::fs::create_dir_all(&layers).map_err(io(&layers))?;
    let store = StoreImage::ensure(&layers.join(ROOT_STORE), size, RootAttrs::default())?;
    let placeholder = work_dir.join(ROOTFS_PLACEHOLDER);
    std::fs::File::create(&placeholder).map_err(io(&placeholder))?;
    Ok((
        CowRoot {
            lower,
            store,
            lease,
        },
        placeholder,
    ))
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
        if flist_fetcher::ext4::find_mkfs().is_none() {
            return;
        }
        let lease = tree_cache::lease(dir.path()).unwrap();
        let work = dir.path().join("work");
        let (root, placeholder) = vm_layers(lease, &work, 2 << 20).unwrap();
        assert!(root.store.path().starts_with(&work));
        assert_eq!(std::fs::metadata(root.store.path()).unwrap().len(), 2 << 20);
        assert_eq!(root.lower, dir.path());
        assert_eq!(std::fs::metadata(placeholder).unwrap().len(), 0);
        // A hostile size is refused before anything is made.
        let lease = tree_cache::lease(dir.path()).unwrap();
        let err = vm_layers(lease.clone(), &dir.path().join("w2"), 0).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!(!dir.path().join("w2/rootfs/store.ext4").exists());
    }

    #[test]
    fn older_kernels_get_the_overlay_from_a_private_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || flist_fetcher::ext4::find_mkfs().is_none() {
            eprintln!("skipping: needs root and mkfs.ext4");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("tree");
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::write(lower.join("etc/os"), "flist\n").unwrap();
        let work = dir.path().join("work");
        let (root, _) = vm_layers(tree_cache::lease(&lower).unwrap(), &work, 2 << 20).unwrap();
        let _lock = root.store.lock().unwrap();
        let store = root.store.mount_detached().unwrap();
        let attach_at = work.join("rootfs").join(STORE_MOUNT_POINT);
        let overlay = overlay_in_private_namespace(&root.lower, store, &attach_at).unwrap();
        let merged = PathBuf::from(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            overlay.as_raw_fd()
        }));
        assert_eq!(
            std::fs::read_to_string(merged.join("etc/os")).unwrap(),
            "flist\n"
        );
        std::fs::write(merged.join("new"), "mine\n").unwrap();
        // Nothing is attached in this process's namespace; the mount point stays empty.
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!table.contains(work.to_str().unwrap()), "{table}");
        assert!(std::fs::read_dir(&attach_at).unwrap().next().is_none());
        assert!(!lower.join("new").exists());
        drop(overlay);
        // The write went to the store: a direct mount of it shows the upper layer.
        let store = root.store.mount_detached().unwrap();
        let upper = bounded_store::proc_path(&store).join("upper/new");
        assert_eq!(std::fs::read_to_string(upper).unwrap(), "mine\n");
    }
}
