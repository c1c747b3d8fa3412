//! From an flist to a bootable VM: the logic shared by `zvm run --flist` and the node
//! daemon's workload processes.
//!
//! [`prepare`] fetches the flist (a local `.fl` file or an http(s) URL; blocks go through
//! flist-fetcher's cache) and decides how to boot it:
//! - a **VM image** flist holds `/boot/vmlinuz` (and optionally `/boot/initrd.img`): that
//!   kernel boots, with the unpacked flist's initrd;
//! - a **raw image** flist holds `/image.raw`: the project's kernel boots with that image
//!   as its root disk;
//! - anything else is a **container** flist: its tree is the root over virtio-fs,
//!   copy-on-write per VM ([`cow_root`]), or with [`cow_root::RootFs::Ext4`] an ext4 root
//!   disk; the project's kernel boots the OCI guest agent as PID 1, which runs the entrypoint with
//!   `env` in it (see [`container`]). When an image from `zvm flist from-oci` carries
//!   `/.zvm/image-config.json`, its entrypoint, environment, working directory and user
//!   are the defaults.
//!
//! The result is a [`BootPlan`] that [`BootPlan::apply`] turns into [`vmm::VmResources`];
//! for a container the caller then drives the agent ([`BootPlan::container`]).

pub mod bounded_store;
pub mod cmdline;
pub mod container;
pub mod cow_root;
mod fetch;
mod image_config;
pub mod tree_cache;

pub use fetch::{check_reachable, fetch_flist};

use flist_fetcher::meta::Reader;
use flist_fetcher::tree::{Kind, Tree};
use image_config::image_config;
use std::path::{Path, PathBuf};
use vmm::resources::{DriveConfig, VmResources};

/// Errors of the flist-to-VM logic.
#[derive(Debug, thiserror::Error)]
pub enum FlistVmError {
    /// The flist (file or URL) cannot be had.
    #[error("flist `{flist}` is not reachable: {reason}")]
    Unreachable {
        /// The flist as given.
        flist: String,
        /// Why.
        reason: String,
    },
    /// Reading, fetching or unpacking the flist failed.
    #[error("flist `{flist}`: {source}")]
    Flist {
        /// The flist as given.
        flist: String,
        /// The flist-fetcher error.
        #[source]
        source: Box<flist_fetcher::Error>,
    },
    /// Local file trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A container flist without anything to run.
    #[error("container flist `{0}` has no entrypoint: give one (--entrypoint / \"entrypoint\")")]
    NoEntrypoint(String),
    /// The entrypoint or environment cannot be handed to the guest.
    #[error("entrypoint: {0}")]
    Cmdline(#[from] cmdline::CmdlineError),
    /// The guest agent for container flists was not found.
    #[error("container flists need the guest agent: {0}")]
    NoAgent(String),
    /// A disk mount of a container cannot be made.
    #[error("{0}")]
    BadMount(String),
    /// The container's host name cannot be used.
    #[error("{0}")]
    BadHostname(String),
    /// Making the container's root disk failed.
    #[error("root disk: {0}")]
    RootDisk(#[from] flist_fetcher::ext4::Error),
    /// Making the VM's copy-on-write layers of the root failed.
    #[error("root layers: {0}")]
    RootDir(String),
    /// A bounded store (a virtio-fs root's writes, a volume) cannot be made or mounted.
    #[error("{0}")]
    Store(#[from] bounded_store::StoreError),
    /// The cache of unpacked trees cannot take the flist's tree.
    #[error("{0}")]
    TreeCache(#[from] tree_cache::TreeCacheError),
    /// Making the agent's boot disk failed.
    #[error("agent disk: {0}")]
    AgentDisk(String),
    /// The project's guest kernel was not found.
    #[error("{0} (or give --kernel)")]
    NoKernel(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FlistVmError + '_ {
    move |source| FlistVmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What kind of flist this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlistKind {
    /// `/boot/vmlinuz` (+ `/boot/initrd.img`).
    VmImage,
    /// `/image.raw`.
    RawImage,
    /// A root filesystem to run a command in.
    Container,
}

/// Inputs of [`prepare`].
#[derive(Debug, Clone)]
pub struct FlistBootOptions {
    /// A `.fl` path or an http(s) URL.
    pub flist: String,
    /// Cache directory (blocks and downloaded flists).
    pub cache_dir: PathBuf,
    /// Directory for this VM's unpacked files and root disk (kept across restarts).
    pub work_dir: PathBuf,
    /// Container entrypoint (overrides the image's).
    pub entrypoint: Option<String>,
    /// Container environment (added to the image's).
    pub env: Vec<(String, String)>,
    /// A container flist's root size: the ext4 disk's (default: content * 1.5 + 64 MiB),
    /// or with a root over virtio-fs the store of its writes (default
    /// [`bounded_store::DEFAULT_ROOT_SIZE`], 1 MiB to 16 TiB).
    pub root_size: Option<u64>,
    /// The project's kernel (for container and raw-image flists); located when `None`.
    pub kernel: Option<PathBuf>,
    /// The container's host name (default: the flist's file name without `.fl`).
    pub hostname: Option<String>,
    /// Where a container's root comes from ([`cow_root`]).
    pub root_fs: cow_root::RootFs,
}

/// How to boot the VM an flist describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    /// The flist's kind.
    pub kind: FlistKind,
    /// Kernel to boot.
    pub kernel: PathBuf,
    /// Initrd, if any.
    pub initrd: Option<PathBuf>,
    /// Root disk (attached first, `root=/dev/vda rw`).
    pub root_disk: Option<PathBuf>,
    /// Kernel arguments to append.
    pub extra_args: String,
    /// For container flists: the agent's and the container's disks and what to run.
    pub container: Option<container::ContainerBoot>,
}

impl BootPlan {
    /// Points `resources` at this plan's kernel, initrd and root disk and appends its
    /// arguments to the command line. For a container: the agent's disk and the root file
    /// system become the first two disks, the agent's boot arguments are appended, and
    /// the VM gets a vsock device (unless it has one) and an entropy device.
    pub fn apply(&self, resources: &mut VmResources) {
        if let Some(c) = &self.container {
            resources.drives.retain(|d| !d.is_root_device);
            let [agent, rootfs] =
                oci_runtime::sandbox::agent_drives(&c.agent_image, &c.rootfs_image, false);
            resources.drives.splice(0..0, [agent, rootfs]);
            if resources.vsock.is_none() {
                resources.vsock = Some(vmm::resources::VsockConfig {
                    guest_cid: 3,
                    uds_path: c.vsock_uds.clone(),
                });
            }
            resources.entropy.get_or_insert_with(Default::default);
        }
        resources.boot_source.kernel_image_path = self.kernel.clone();
        resources.boot_source.initrd_path = self.initrd.clone();
        if !self.extra_args.is_empty() {
            let base = resources.boot_args().to_string();
            resources.boot_source.boot_args = Some(cmdline::append_args(&base, &self.extra_args));
        }
        if let Some(disk) = &self.root_disk {
            resources.drives.retain(|d| !d.is_root_device);
            resources.drives.insert(
                0,
                DriveConfig {
                    drive_id: "root".into(),
                    path_on_host: disk.clone(),
                    is_root_device: true,
                    is_read_only: false,
                    rate_limiter: None,
                    io_engine: Default::default(),
                },
            );
        }
    }
}

/// Finds the project's guest kernel: `explicit`, else as oci-runtime's containers do
/// ([`oci_runtime::sandbox::GuestArtifacts::locate_kernel`]: `$ZVM_KERNEL`, `vmlinux` next to
/// the running program or in its install's `lib/zvm/`, the newest build in the kernel cache).
pub fn locate_kernel(explicit: Option<&Path>) -> Result<PathBuf, FlistVmError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(FlistVmError::Io {
                path: p.to_path_buf(),
                source: std::io::ErrorKind::NotFound.into(),
            })
        };
    }
    oci_runtime::sandbox::GuestArtifacts::locate_kernel()
        .map_err(|e| FlistVmError::NoKernel(e.to_string()))
}

/// Classifies a loaded flist tree.
pub fn classify(tree: &Tree) -> FlistKind {
    let has = |path: &str| {
        tree.entries
            .iter()
            .any(|e| e.path == Path::new(path) && e.kind == Kind::File)
    };
    if has("boot/vmlinuz") {
        FlistKind::VmImage
    } else if has("image.raw") {
        FlistKind::RawImage
    } else {
        FlistKind::Container
    }
}

/// Fetches the flist and prepares its files under `work_dir`; see the module docs.
pub fn prepare(opts: &FlistBootOptions) -> Result<BootPlan, FlistVmError> {
    let flist_err = |source: flist_fetcher::Error| FlistVmError::Flist {
        flist: opts.flist.clone(),
        source: Box::new(source),
    };
    if let Some(name) = &opts.hostname {
        check_hostname(name).map_err(FlistVmError::BadHostname)?;
    }
    std::fs::create_dir_all(&opts.work_dir).map_err(io(&opts.work_dir))?;
    let fl = fetch_flist(&opts.flist, &opts.cache_dir)?;
    let reader = Reader::open(&fl).map_err(|e| flist_err(e.into()))?;
    let tree = Tree::load(&reader).map_err(|e| flist_err(e.into()))?;
    let kind = classify(&tree);
    let blocks = opts.cache_dir.join("blocks");
    let unpack = flist_fetcher::UnpackOptions::new(&blocks);
    match kind {
        FlistKind::VmImage | FlistKind::RawImage => {
            let root = opts.work_dir.join("flist");
            let done = opts.work_dir.join("flist.done");
            if !done.exists() {
                let _ = std::fs::remove_dir_all(&root);
                tracing::info!(flist = %opts.flist, dir = %root.display(), "unpacking VM image flist");
                flist_fetcher::unpack(&fl, &root, &unpack).map_err(|e| flist_err(e.into()))?;
                std::fs::write(&done, b"").map_err(io(&done))?;
            }
            if kind == FlistKind::VmImage {
                let initrd = Some(root.join("boot/initrd.img")).filter(|p| p.is_file());
                Ok(BootPlan {
                    kind,
                    kernel: root.join("boot/vmlinuz"),
                    initrd,
                    root_disk: None,
                    extra_args: String::new(),
                    container: None,
                })
            } else {
                let kernel = locate_kernel(opts.kernel.as_deref())?;
                Ok(BootPlan {
                    kind,
                    kernel,
                    initrd: None,
                    root_disk: Some(root.join("image.raw")),
                    extra_args: String::new(),
                    container: None,
                })
            }
        }
        FlistKind::Container => {
            let kernel = locate_kernel(opts.kernel.as_deref())?;
            let image_config = image_config(&tree, &fl, &opts.work_dir, &unpack);
            let argv = match &opts.entrypoint {
                Some(e) => cmdline::split_words(e)?,
                None => image_config.argv.clone(),
            };
            if argv.is_empty() {
                return Err(FlistVmError::NoEntrypoint(opts.flist.clone()));
            }
            let mut env = image_config.env;
            for (k, v) in &opts.env {
                env.retain(|(key, _)| key != k);
                env.push((k.clone(), v.clone()));
            }
            let cwd = image_config.cwd.as_deref().unwrap_or("/");
            let process = container::process(argv, &env, cwd, image_config.user);
            let mut rootfs_overlay = None;
            let disk = if opts.root_fs == cow_root::RootFs::Virtiofs {
                let size = bounded_store::check_size(
                    "the root's size",
                    opts.root_size.unwrap_or(bounded_store::DEFAULT_ROOT_SIZE),
                )?;
                let lease = cow_root::lower_tree(&fl, &reader, &tree, &opts.cache_dir, &unpack)?;
                let (root, placeholder) = cow_root::vm_layers(lease, &opts.work_dir, size)?;
                rootfs_overlay = Some(root);
                placeholder
            } else {
                opts.work_dir.join("root.ext4")
            };
            let done = opts.work_dir.join("root.ext4.done");
            if rootfs_overlay.is_none() && !(disk.is_file() && done.exists()) {
                let content = tree.total_size();
                // Sizes come from the flist: saturate rather than overflow.
                let size = opts
                    .root_size
                    .unwrap_or(content.saturating_add(content / 2).saturating_add(64 << 20))
                    .checked_next_multiple_of(1 << 20)
                    .unwrap_or(u64::MAX);
                tracing::info!(flist = %opts.flist, disk = %disk.display(), size, "building the root disk");
                let staging = opts.work_dir.join("rootfs.staging");
                let _ = std::fs::remove_dir_all(&staging);
                flist_fetcher::unpack::unpack_tree(
                    &tree,
                    &cache(&unpack)?,
                    &router(&reader)?,
                    &staging,
                    &unpack,
                )
                .map_err(|e| flist_err(e.into()))?;
                let ext4_opts = flist_fetcher::ext4::Ext4Options {
                    label: Some("rootfs".into()),
                    root_owner: tree.root_owner(),
                    ..Default::default()
                };
                let built = flist_fetcher::ext4::make_from_dir(&staging, &disk, size, &ext4_opts);
                let _ = std::fs::remove_dir_all(&staging);
                built?;
                std::fs::write(&done, b"").map_err(io(&done))?;
            }
            let agent_image = container::agent_image(&opts.work_dir)?;
            let hostname = opts
                .hostname
                .clone()
                .unwrap_or_else(|| default_hostname(&opts.flist));
            Ok(BootPlan {
                kind,
                kernel,
                initrd: None,
                root_disk: None,
                extra_args: oci_runtime::sandbox::AGENT_BOOT_ARGS.to_string(),
                container: Some(container::ContainerBoot {
                    agent_image,
                    rootfs_image: disk,
                    rootfs_overlay,
                    // At any depth: vmm's vsock device and oci-runtime's client both
                    // reach a long path through its directory.
                    vsock_uds: opts.work_dir.join("vsock.sock"),
                    process,
                    hostname,
                }),
            })
        }
    }
}

/// The owner and mode of the directory at each of `paths` (absolute, in the container) in
/// the flist's tree, `None` where it has no directory (missing, or not a directory): what a
/// new volume mounted there takes, as Docker's named volumes do.
pub fn image_dir_attrs(
    flist: &str,
    cache_dir: &Path,
    paths: &[&str],
) -> Result<Vec<Option<bounded_store::RootAttrs>>, FlistVmError> {
    let flist_err = |source: flist_fetcher::Error| FlistVmError::Flist {
        flist: flist.to_string(),
        source: Box::new(source),
    };
    let fl = fetch_flist(flist, cache_dir)?;
    let reader = Reader::open(&fl).map_err(|e| flist_err(e.into()))?;
    let tree = Tree::load(&reader).map_err(|e| flist_err(e.into()))?;
    Ok(paths.iter().map(|p| dir_attrs(&tree, p)).collect())
}

/// The owner and mode of the directory at `path` in `tree` (see [`image_dir_attrs`]).
pub fn dir_attrs(tree: &Tree, path: &str) -> Option<bounded_store::RootAttrs> {
    let relative = Path::new(path.trim_matches('/'));
    tree.entries
        .iter()
        .find(|e| e.path == relative && e.kind == Kind::Dir)
        .map(|e| bounded_store::RootAttrs {
            uid: e.inode.uid,
            gid: e.inode.gid,
            mode: e.inode.mode & 0o7777,
        })
}

/// Checks a container's host name before anything is fetched or booted, by the rules of
/// deployment names (which become host names; [`crate::node::spec::check_name`]: at most
/// 64 bytes, as Linux's sethostname takes). Returns why not.
pub fn check_hostname(name: &str) -> Result<(), String> {
    crate::node::spec::check_name("host name", name).map_err(|e| e.to_string())
}

/// The flist's file name without `.fl`, as a host name (`zvm` when nothing usable is left).
fn default_hostname(flist: &str) -> String {
    let name = flist.rsplit('/').next().unwrap_or_default();
    let name = name.strip_suffix(".fl").unwrap_or(name);
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let clean = clean.trim_matches('-').to_string();
    if clean.is_empty() {
        "zvm".into()
    } else {
        clean
    }
}

fn cache(unpack: &flist_fetcher::UnpackOptions) -> Result<flist_fetcher::Cache, FlistVmError> {
    flist_fetcher::Cache::new(&unpack.cache).map_err(|e| FlistVmError::Io {
        path: unpack.cache.clone(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn router(reader: &Reader) -> Result<flist_fetcher::Router, FlistVmError> {
    let fail = |e: String| FlistVmError::Unreachable {
        flist: reader.path().display().to_string(),
        reason: format!("its stores: {e}"),
    };
    let routes = reader.routes().map_err(|e| fail(e.to_string()))?;
    flist_fetcher::Router::from_routes(&routes).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_checked_before_anything_is_fetched() {
        let max = crate::node::spec::MAX_NAME;
        for good in ["web", "web-1.node_a", &"h".repeat(max)] {
            assert_eq!(check_hostname(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "host name: must not be empty"),
            (&"h".repeat(max + 1), "longer than 64"),
            ("-web", "must not start"),
            (".web", "must not start"),
            ("web server", "contains ' '"),
            ("web/x", "contains '/'"),
            ("h\u{e9}", "contains '\u{e9}'"),
        ] {
            let err = check_hostname(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        // prepare() refuses it first: the flist named does not exist, and is not looked at.
        let dir = tempfile::tempdir().unwrap();
        let opts = FlistBootOptions {
            flist: dir.path().join("missing.fl").display().to_string(),
            cache_dir: dir.path().join("cache"),
            work_dir: dir.path().join("work"),
            entrypoint: None,
            env: Vec::new(),
            root_size: None,
            kernel: None,
            hostname: Some("bad name".into()),
            root_fs: Default::default(),
        };
        let err = prepare(&opts).map(|_| ()).unwrap_err();
        assert!(matches!(err, FlistVmError::BadHostname(_)), "{err}");
        assert!(!dir.path().join("work").exists());
    }

    #[test]
    fn host_names_come_from_the_flist_name() {
        assert_eq!(default_hostname("http://hub/x/web_app.fl"), "web-app");
        assert_eq!(default_hostname("/tmp/alpine"), "alpine");
        assert_eq!(default_hostname("http://hub/.fl"), "zvm");
    }

    #[test]
    fn a_container_plan_boots_the_agent_with_the_rootfs_second() {
        let mut r = VmResources::new("/old");
        r.drives.push(DriveConfig {
            drive_id: "data".into(),
            path_on_host: "/data.img".into(),
            is_root_device: false,
            is_read_only: false,
            rate_limiter: None,
            io_engine: Default::default(),
        });
        let plan = BootPlan {
            kind: FlistKind::Container,
            kernel: "/k".into(),
            initrd: None,
            root_disk: None,
            extra_args: oci_runtime::sandbox::AGENT_BOOT_ARGS.into(),
            container: Some(container::ContainerBoot {
                agent_image: "/w/agent.ext4".into(),
                rootfs_image: "/w/root.ext4".into(),
                rootfs_overlay: None,
                vsock_uds: "/w/vsock.sock".into(),
                process: container::process(vec!["/bin/true".into()], &[], "/", (0, 0)),
                hostname: "h".into(),
            }),
        };
        plan.apply(&mut r);
        let ids: Vec<&str> = r.drives.iter().map(|d| d.drive_id.as_str()).collect();
        assert_eq!(ids, ["agent", "rootfs", "data"]);
        assert!(r.drives[0].is_root_device && r.drives[0].is_read_only);
        assert_eq!(
            r.vsock.as_ref().unwrap().uds_path,
            PathBuf::from("/w/vsock.sock")
        );
        assert!(r.entropy.is_some());
        assert!(
            r.boot_args().ends_with(" rootfstype=ext4 init=/init"),
            "{}",
            r.boot_args()
        );
    }

    #[test]
    fn a_plan_sets_kernel_disk_and_arguments() {
        let mut r = VmResources::new("/old");
        let plan = BootPlan {
            kind: FlistKind::Container,
            kernel: "/k".into(),
            initrd: None,
            root_disk: Some("/d/root.ext4".into()),
            extra_args: "init=/bin/sh".into(),
            container: None,
        };
        plan.apply(&mut r);
        assert_eq!(r.boot_source.kernel_image_path, PathBuf::from("/k"));
        assert!(
            r.boot_args().ends_with(" init=/bin/sh"),
            "{}",
            r.boot_args()
        );
        assert!(r.drives[0].is_root_device);
        assert_eq!(r.drives[0].path_on_host, PathBuf::from("/d/root.ext4"));
    }
}
