//! `zvm flist from-oci`: an OCI image turned into an flist.
//!
//! The image is unpacked into a temporary root filesystem (as for a bundle), its run
//! configuration is written to [`IMAGE_CONFIG_PATH`] inside that root, and the root is packed
//! with flist-fetcher. Whoever boots the flist later (`zvm run --flist`, the node daemon) reads
//! [`ImageRunConfig`] from `/.zvm/image-config.json` to know the entrypoint, environment, working
//! directory and user.
//!
//! This lives in oci-runtime, not flist-fetcher: flist-fetcher knows nothing of OCI images and
//! must not depend on this crate.

use super::fs::{self, RootDir};
use super::layer::ApplyOptions;
use super::spec::ProcessConfig;
use super::{unpack_rootfs, ImageRef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// Where the run configuration sits in an flist made from an image (relative to its root).
pub const IMAGE_CONFIG_PATH: &str = ".zvm/image-config.json";
/// Version of [`ImageRunConfig`]'s layout.
pub const IMAGE_CONFIG_SCHEMA: u32 = 1;

/// Errors making an flist from an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Unpacking the image failed.
    #[error(transparent)]
    Unpack(#[from] super::Error),
    /// Packing the flist failed.
    #[error(transparent)]
    Pack(#[from] flist_fetcher::pack::Error),
    /// A temporary or configuration file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// the path
        path: PathBuf,
        /// underlying error
        #[source]
        source: io::Error,
    },
    /// `/.zvm/image-config.json` is not a valid run configuration.
    #[error("{path}: not a valid image run configuration: {reason}")]
    BadConfig {
        /// the file
        path: PathBuf,
        /// parser message
        reason: String,
    },
}

/// What an flist made from an image should run: `/.zvm/image-config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRunConfig {
    /// [`IMAGE_CONFIG_SCHEMA`].
    pub schema: u32,
    /// The image it came from (`DIR[:TAG]`, as given).
    pub image: String,
    /// Digest of the image's manifest.
    pub manifest_digest: String,
    /// Entrypoint + Cmd, env, cwd and user, resolved against the image's root.
    pub process: ProcessConfig,
    /// Annotations derived from the image (labels, manifest annotations, os/architecture...).
    pub annotations: BTreeMap<String, String>,
    /// The image configuration's `config` object as the image has it (Entrypoint, Cmd, Env,
    /// WorkingDir, User, Labels, StopSignal, ...).
    pub image_config: serde_json::Value,
}

impl ImageRunConfig {
    /// Reads `/.zvm/image-config.json` from an unpacked flist at `root`; `None` when the flist
    /// was not made from an image.
    pub fn read(root: &Path) -> Result<Option<Self>, Error> {
        let path = root.join(IMAGE_CONFIG_PATH);
        let dir = RootDir::open(root).map_err(|source| Error::Io {
            path: root.to_owned(),
            source,
        })?;
        let comps: Vec<_> = Path::new(IMAGE_CONFIG_PATH)
            .iter()
            .map(OsStr::to_owned)
            .collect();
        let file = match dir.open_file(&comps) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let cfg: Self =
            serde_json::from_reader(io::BufReader::new(file)).map_err(|e| Error::BadConfig {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if cfg.schema != IMAGE_CONFIG_SCHEMA {
            let reason = format!(
                "schema {} (this zvm reads {IMAGE_CONFIG_SCHEMA})",
                cfg.schema
            );
            return Err(Error::BadConfig { path, reason });
        }
        Ok(Some(cfg))
    }
}

/// Options for [`from_oci`].
#[derive(Debug, Clone, Default)]
pub struct FromOciOptions {
    /// How to pack (stores, tags, jobs...).
    pub pack: flist_fetcher::PackOptions,
    /// Where the temporary root filesystem goes (default: the system's temp directory).
    pub tmp_dir: Option<PathBuf>,
}

/// What [`from_oci`] did.
#[derive(Debug, Clone)]
pub struct FromOciStats {
    /// The run configuration stored in the flist.
    pub config: ImageRunConfig,
    /// Packing figures.
    pub pack: flist_fetcher::PackStats,
}

/// Unpacks `image` to a temporary root, writes its run configuration into it and packs it to
/// `output`.
pub fn from_oci(
    image: &ImageRef,
    output: &Path,
    opts: &FromOciOptions,
) -> Result<FromOciStats, Error> {
    let base = opts.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("zvm-from-oci-")
        .tempdir_in(&base)
        .map_err(|source| Error::Io {
            path: base.clone(),
            source,
        })?;
    let rootfs = tmp.path().join("rootfs");
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir(&rootfs).map_err(io_err(&rootfs))?;
    std::fs::set_permissions(&rootfs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io_err(&rootfs))?;
    let unpacked = unpack_rootfs(image, &rootfs, ApplyOptions::for_current_user())?;
    let config = ImageRunConfig {
        schema: IMAGE_CONFIG_SCHEMA,
        image: image.to_string(),
        manifest_digest: unpacked.image.descriptor.digest().to_string(),
        process: unpacked.process.clone(),
        annotations: unpacked.annotations.clone().into_iter().collect(),
        image_config: serde_json::to_value(unpacked.image.config.config())
            .map_err(|e| io_err(&rootfs)(io::Error::other(e)))?,
    };
    write_config(&rootfs, &config).map_err(io_err(&rootfs.join(IMAGE_CONFIG_PATH)))?;
    info!("packing {} -> {}", image, output.display());
    let pack = flist_fetcher::pack::pack(&rootfs, output, &opts.pack)?;
    Ok(FromOciStats { config, pack })
}

/// Writes `/.zvm/image-config.json` below `rootfs`, replacing whatever the image had there.
fn write_config(rootfs: &Path, config: &ImageRunConfig) -> io::Result<()> {
    let root = RootDir::open(rootfs)?;
    let dir_name = OsStr::new(".zvm");
    if fs::kind_at(root.fd(), dir_name)?.is_some() {
        warn!("the image has its own /.zvm; replaced by zvm's");
        fs::remove_all_at(root.fd(), dir_name)?;
    }
    fs::mkdir_at(root.fd(), dir_name, 0o755)?;
    let dir = fs::open_dir_at(root.fd(), dir_name)?;
    let mut json = serde_json::to_vec_pretty(config).map_err(io::Error::other)?;
    json.push(b'\n');
    let name = OsStr::new("image-config.json");
    let mut file = fs::create_file_at(std::os::fd::AsFd::as_fd(&dir), name)?;
    file.write_all(&json)?;
    fs::chmod_at(std::os::fd::AsFd::as_fd(&dir), name, 0o644)
}
