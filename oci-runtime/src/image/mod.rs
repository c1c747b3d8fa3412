//! OCI images: an image layout directory (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`)
//! turned into a runtime bundle (`rootfs/` + `config.json`), or into an flist.
//!
//! - [`layout`] picks the image (by `:TAG`, the only one, following nested indexes to the
//!   host's platform) and verifies every blob's size and digest before it is used;
//! - [`layer`] applies layers in order (tar, tar+gzip, tar+zstd) with whiteouts and opaque
//!   directories, owners (as root), modes, times, hard links and devices (as root);
//! - [`fs`] keeps every write inside the root filesystem;
//! - [`spec`] derives `config.json` from the image configuration ([`user`] resolves `User`);
//! - [`flist`] packs an unpacked image into an flist with its run configuration inside;
//! - [`cli`] holds the `zvm oci unpack` and `zvm flist from-oci` arguments.

pub mod cli;
pub mod flist;
pub mod fs;
pub mod layer;
pub mod layout;
pub mod spec;
pub mod user;

use layer::{ApplyOptions, LayerStats};
use layout::{Image, Layout};
use spec::ProcessConfig;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use tracing::{debug, info};

/// Errors turning an image into a bundle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the layout, choosing the image or verifying a blob failed.
    #[error(transparent)]
    Layout(#[from] layout::Error),
    /// Applying a layer failed.
    #[error("layer {index} ({digest}): {source}")]
    Layer {
        /// 1-based position in the manifest
        index: usize,
        /// its digest
        digest: String,
        /// what went wrong
        #[source]
        source: layer::Error,
    },
    /// Deriving `config.json` failed.
    #[error(transparent)]
    Spec(#[from] spec::Error),
    /// The bundle directory exists and is not empty.
    #[error("{0}: bundle directory exists and is not empty")]
    BundleNotEmpty(PathBuf),
    /// A file system operation on the bundle failed.
    #[error("{path}: {source}")]
    Io {
        /// the path
        path: PathBuf,
        /// underlying error
        #[source]
        source: io::Error,
    },
}

/// `IMAGE_LAYOUT_DIR[:TAG]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The layout directory.
    pub dir: PathBuf,
    /// The tag (`org.opencontainers.image.ref.name`), if given.
    pub tag: Option<String>,
}

impl ImageRef {
    /// Parses `DIR[:TAG]`. A `:` starts a tag only when what follows has no `/` and the whole
    /// string is not itself an existing directory.
    pub fn parse(s: &str) -> Self {
        if !Path::new(s).is_dir() {
            if let Some((dir, tag)) = s.rsplit_once(':') {
                if !tag.is_empty() && !tag.contains('/') && !dir.is_empty() {
                    return Self {
                        dir: dir.into(),
                        tag: Some(tag.to_string()),
                    };
                }
            }
        }
        Self {
            dir: s.into(),
            tag: None,
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tag {
            Some(t) => write!(f, "{}:{t}", self.dir.display()),
            None => write!(f, "{}", self.dir.display()),
        }
    }
}

/// An unpacked image.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// The chosen image (manifest and configuration).
    pub image: Image,
    /// The process the image runs, resolved against the unpacked root.
    pub process: ProcessConfig,
    /// Annotations derived from the image.
    pub annotations: HashMap<String, String>,
    /// What the layers did, summed.
    pub stats: LayerStats,
}

/// Unpacks the image's layers into `rootfs`, an existing directory (normally empty), within
/// `opts.limits` for all the layers together.
pub fn unpack_rootfs(
    image: &ImageRef,
    rootfs: &Path,
    opts: ApplyOptions,
) -> Result<Unpacked, Error> {
    let layout = Layout::open(&image.dir)?;
    let img = layout.image(image.tag.as_deref())?;
    info!(
        "unpacking {} (manifest {}, {} layers)",
        image,
        img.descriptor.digest(),
        img.manifest.layers().len()
    );
    let root = fs::RootDir::open(rootfs).map_err(|source| Error::Io {
        path: rootfs.to_owned(),
        source,
    })?;
    let mut stats = LayerStats::default();
    for (i, d) in img.manifest.layers().iter().enumerate() {
        let layer_err = |source| Error::Layer {
            index: i + 1,
            digest: d.digest().to_string(),
            source,
        };
        let mut blob = layout.open_blob(d)?;
        let compression = layout::layer_compression(d, &mut blob)?;
        debug!(
            "layer {} {} ({:?}, {} bytes)",
            i + 1,
            d.digest(),
            compression,
            d.size()
        );
        let layer_opts = ApplyOptions {
            limits: opts.limits.after(&stats),
            ..opts
        };
        let s = layer::apply(
            &root,
            io::BufReader::with_capacity(1 << 20, blob),
            compression,
            layer_opts,
        )
        .map_err(layer_err)?;
        add(&mut stats, &s);
    }
    let process = spec::process_config(&img.config, &root)?;
    let annotations = spec::annotations(&img);
    Ok(Unpacked {
        image: img,
        process,
        annotations,
        stats,
    })
}

fn add(total: &mut LayerStats, s: &LayerStats) {
    total.files += s.files;
    total.dirs += s.dirs;
    total.symlinks += s.symlinks;
    total.hardlinks += s.hardlinks;
    total.specials += s.specials;
    total.whiteouts += s.whiteouts;
    total.skipped += s.skipped;
    total.bytes += s.bytes;
    total.entries += s.entries;
    total.read += s.read;
}

/// Makes a runtime bundle at `bundle` (absent or an empty directory): `rootfs/` with the
/// image's layers and a `config.json` derived from its configuration. On failure, what was
/// created is removed again.
pub fn unpack_bundle(image: &ImageRef, bundle: &Path) -> Result<Unpacked, Error> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let created = match std::fs::read_dir(bundle) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::BundleNotEmpty(bundle.to_owned()));
            }
            false
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(bundle).map_err(io_err(bundle))?;
            true
        }
        Err(e) => return Err(io_err(bundle)(e)),
    };
    let rootfs = bundle.join("rootfs");
    let config = bundle.join("config.json");
    let result = (|| {
        std::fs::create_dir(&rootfs).map_err(io_err(&rootfs))?;
        std::fs::set_permissions(&rootfs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io_err(&rootfs))?;
        let unpacked = unpack_rootfs(image, &rootfs, ApplyOptions::for_current_user())?;
        let spec = spec::runtime_spec(
            spec::default_spec(),
            &unpacked.process,
            unpacked.annotations.clone(),
        );
        let mut json =
            serde_json::to_vec_pretty(&spec).map_err(|e| io_err(&config)(io::Error::other(e)))?;
        json.push(b'\n');
        std::fs::write(&config, json).map_err(io_err(&config))?;
        Ok(unpacked)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&rootfs);
        let _ = std::fs::remove_file(&config);
        if created {
            let _ = std::fs::remove_dir(bundle);
        }
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_image_refs() {
        let r = ImageRef::parse("/no/such/img:v1");
        assert_eq!(
            (r.dir, r.tag.as_deref()),
            (PathBuf::from("/no/such/img"), Some("v1"))
        );
        let r = ImageRef::parse("img");
        assert_eq!((r.dir, r.tag), (PathBuf::from("img"), None));
        let r = ImageRef::parse("/a:b/c");
        assert_eq!((r.dir, r.tag), (PathBuf::from("/a:b/c"), None));
        let r = ImageRef::parse("img:");
        assert_eq!(r.tag, None);
        let t = tempfile::tempdir().unwrap();
        let odd = t.path().join("odd:name");
        std::fs::create_dir(&odd).unwrap();
        let r = ImageRef::parse(odd.to_str().unwrap());
        assert_eq!((r.dir, r.tag), (odd, None));
    }
}
