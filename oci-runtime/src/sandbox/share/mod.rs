//! Host files and directories in the container over virtio-fs: one share per container.
//!
//! The container's bind mounts whose source is a host file or directory, and its root file
//! system when it comes over virtio-fs ([`RootfsMode::Virtiofs`]), all go through ONE
//! virtio-fs share with the tag [`SHARE_TAG`], served by one virtiofsd:
//!
//! - [`plan_share`] (pure) picks the mounts that need the share, names an entry for each
//!   (`m<index>` after the mount's place in `config.json`, `rootfs` for the root) and
//!   rewrites the spec the agent gets: each such mount's source becomes the entry under
//!   [`SHARE_MOUNT`], where the agent mounts the share before anything else; the agent then
//!   bind-mounts each entry to its destination as it did any bind mount (read-only where the
//!   mount says so).
//! - [`host::prepare`] makes the share's directory in the container directory with an empty
//!   placeholder per entry, opens every source (`O_PATH`: symbolic links in the source path
//!   are followed on the host, as runc does; what was checked is what gets mounted, even if
//!   the path changes after) and refuses anything that is not a directory or a regular file.
//! - [`host::Virtiofsd::start`] runs virtiofsd in a mount namespace of its own where each
//!   source is bind-mounted on its placeholder (read-only mounts read-only there too,
//!   recursively, so a guest cannot write through them whatever it sends); the host's own
//!   mount table never sees these mounts, and they vanish with the daemon. virtiofsd then
//!   confines itself to the share's directory (its `namespace` sandbox): nothing outside the
//!   entries is reachable.
//!
//! Sources that are the VM's own standard character devices ([`GUEST_DEVICES`], e.g.
//! `/dev/null`) stay bind mounts of the guest's node: a device cannot cross virtio-fs.

pub mod host;
pub mod overlay;
pub(crate) mod sandbox;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use agent_protocol::SHARE_MOUNT;
use oci_spec::runtime::Spec;
use std::path::{Path, PathBuf};

/// The guest tag of a container's share.
pub const SHARE_TAG: &str = "zvm-share";
/// The share's device id in the VM.
pub const SHARE_ID: &str = "share";
/// The share's directory in the container directory.
pub const SHARE_DIR: &str = "share";
/// The entry of the root file system in the share.
pub const ROOT_ENTRY: &str = "rootfs";
/// Annotation choosing where the root file system comes from: `virtiofs` or `image`.
pub const ANNOTATION_ROOTFS: &str = "zvm.rootfs";
/// The same for every container that has no annotation (default: `image`).
pub const ROOTFS_ENV: &str = "ZVM_ROOTFS";
/// Bind sources that are bound from the VM's own `/dev`, not shared from the host.
pub const GUEST_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// Errors planning or preparing a container's share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// [`ANNOTATION_ROOTFS`] or [`ROOTFS_ENV`] with an unknown value.
    #[error("{what}={value:?} is not valid: use virtiofs or image")]
    BadRootfsMode {
        /// The annotation or variable.
        what: &'static str,
        /// Its value.
        value: String,
    },
    /// A bind mount's source that does not exist on the host.
    #[error("bind mount source {path:?} (for {destination:?}) does not exist on the host")]
    MissingSource {
        /// The source, as resolved.
        path: PathBuf,
        /// The mount's destination.
        destination: PathBuf,
    },
    /// A bind mount's source that is neither a directory nor a regular file.
    #[error(
        "bind mount source {path:?} (for {destination:?}) is {kind}: only directories and \
         regular files reach a VM (over virtio-fs)"
    )]
    UnsupportedSource {
        /// The source.
        path: PathBuf,
        /// The mount's destination.
        destination: PathBuf,
        /// What it is ("a FIFO", ...).
        kind: &'static str,
    },
    /// A file operation on the host failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// No virtiofsd, or it did not start.
    #[error("virtiofsd: {0}")]
    Virtiofsd(String),
}

/// The VM's virtio-fs device for the share whose virtiofsd listens on `socket`.
pub fn fs_device(socket: &Path) -> vmm::resources::FsConfig {
    vmm::resources::FsConfig {
        fs_id: SHARE_ID.into(),
        tag: SHARE_TAG.into(),
        shared_dir: None,
        read_only: false,
        // Its virtiofsd is zvm-runc's own (with --xattr: see `host::virtiofsd_args`).
        xattr: false,
        socket_path: Some(socket.to_path_buf()),
    }
}

/// Where the container's root file system comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsMode {
    /// Copied into an ext4 image at create (a private, scratch copy: writes are lost).
    Image,
    /// The bundle's rootfs directory itself over virtio-fs: no copy, writes land in it.
    Virtiofs,
}

impl RootfsMode {
    fn parse(what: &'static str, value: &str) -> Result<Self, ShareError> {
        match value {
            "virtiofs" | "virtio-fs" | "fs" => Ok(Self::Virtiofs),
            "image" | "ext4" | "block" => Ok(Self::Image),
            _ => Err(ShareError::BadRootfsMode {
                what,
                value: value.to_string(),
            }),
        }
    }

    /// The container's mode: its [`ANNOTATION_ROOTFS`], else `env` (the value of
    /// [`ROOTFS_ENV`]), else [`RootfsMode::Image`].
    pub fn of(spec: &Spec, env: Option<&str>) -> Result<Self, ShareError> {
        let annotation = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_ROOTFS));
        match (annotation, env) {
            (Some(value), _) => Self::parse(ANNOTATION_ROOTFS, value),
            (None, Some(value)) if !value.is_empty() => Self::parse(ROOTFS_ENV, value),
            _ => Ok(Self::Image),
        }
    }

    /// [`Self::of`] with [`ROOTFS_ENV`] from the environment.
    pub fn from_env(spec: &Spec) -> Result<Self, ShareError> {
        Self::of(spec, std::env::var(ROOTFS_ENV).ok().as_deref())
    }
}

/// One entry of the share: a host file or directory the guest sees as
/// `SHARE_MOUNT/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareEntry {
    /// Its name in the share.
    pub name: String,
    /// The host path (absolute; a relative source is taken from the bundle directory).
    pub source: PathBuf,
    /// Where the container sees it (for error messages).
    pub destination: PathBuf,
    /// Mounted read-only on the host side too.
    pub read_only: bool,
    /// A recursive bind (`rbind`): the source's submounts come along.
    pub recursive: bool,
}

/// What a container's share holds, and the spec the agent gets.
#[derive(Debug, Clone)]
pub struct SharePlan {
    /// The entries; none: the container needs no share.
    pub entries: Vec<ShareEntry>,
    /// The spec with each shared bind mount's source under [`SHARE_MOUNT`].
    pub spec: Spec,
    /// The root file system is the [`ROOT_ENTRY`] entry.
    pub rootfs_shared: bool,
}

impl SharePlan {
    /// Whether the container needs a share (and so a virtiofsd).
    pub fn needed(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The root file system's directory as the guest sees it, when it is shared.
    pub fn guest_rootfs(&self) -> Option<String> {
        self.rootfs_shared
            .then(|| format!("{SHARE_MOUNT}/{ROOT_ENTRY}"))
    }
}

/// Whether a spec mount is a bind mount, and whether recursive (as the agent reads it).
fn bind_kind(typ: Option<&str>, options: &[String]) -> Option<bool> {
    let rbind = options.iter().any(|o| o == "rbind");
    let bind = rbind || options.iter().any(|o| o == "bind") || typ == Some("bind");
    bind.then_some(rbind)
}

/// Whether the options ask for read-only (the last of `ro` / `rw` wins).
fn read_only(options: &[String]) -> bool {
    options
        .iter()
        .rev()
        .find(|o| *o == "ro" || *o == "rw")
        .is_some_and(|o| o == "ro")
}

/// Plans the share of a container whose bundle is `bundle`: every bind mount whose source
/// is not one of [`GUEST_DEVICES`], and `rootfs` (the bundle's root directory) when the
/// root comes over virtio-fs. Nothing is looked at on the host.
pub fn plan_share(spec: &Spec, bundle: &Path, rootfs: Option<&Path>) -> SharePlan {
    let mut entries = Vec::new();
    let mut spec = spec.clone();
    if let Some(root) = rootfs {
        entries.push(ShareEntry {
            name: ROOT_ENTRY.into(),
            source: root.to_path_buf(),
            destination: PathBuf::from("/"),
            read_only: false,
            recursive: true,
        });
    }
    if let Some(mounts) = spec.mounts().clone() {
        let mut rewritten = Vec::with_capacity(mounts.len());
        for (index, mut m) in mounts.into_iter().enumerate() {
            let options = m.options().clone().unwrap_or_default();
            let source = m.source().clone();
            match (bind_kind(m.typ().as_deref(), &options), source) {
                (Some(recursive), Some(source))
                    if !GUEST_DEVICES.iter().any(|d| source == Path::new(d)) =>
                {
                    let name = format!("m{index}");
                    entries.push(ShareEntry {
                        name: name.clone(),
                        source: bundle.join(&source),
                        destination: m.destination().clone(),
                        read_only: read_only(&options),
                        recursive,
                    });
                    m.set_source(Some(Path::new(SHARE_MOUNT).join(name)));
                }
                _ => {}
            }
            rewritten.push(m);
        }
        spec.set_mounts(Some(rewritten));
    }
    SharePlan {
        entries,
        spec,
        rootfs_shared: rootfs.is_some(),
    }
}
