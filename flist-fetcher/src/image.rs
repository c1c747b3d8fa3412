//! `image`: build a bootable ext4 disk image from an flist.
//!
//! The flist is unpacked into a temporary directory next to the image, then
//! `mkfs.ext4 -d` (e2fsprogs) populates a new filesystem from it. The image is
//! written under a temporary name and renamed into place on success. Run as
//! root so that owners and device nodes are reproduced exactly.

use crate::cache::Cache;
use crate::ext4::{self, Ext4Options};
use crate::fsutil::is_root;
use crate::meta::{self, Reader};
use crate::store::{self, Router};
use crate::tree::{self, Tree};
use crate::unpack::{self, unpack_tree, UnpackOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// Errors while building an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flist could not be read.
    #[error(transparent)]
    Meta(#[from] meta::Error),
    /// The flist's tree is unsafe or inconsistent.
    #[error(transparent)]
    Tree(#[from] tree::Error),
    /// A route's store could not be opened.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Unpacking failed.
    #[error(transparent)]
    Unpack(#[from] unpack::Error),
    /// The cache directory could not be used.
    #[error(transparent)]
    Cache(#[from] crate::cache::Error),
    /// The size argument is not understood.
    #[error("invalid size `{0}`: expected bytes or a number with K, M, G or T (binary units)")]
    BadSize(String),
    /// The requested size cannot hold the content.
    #[error("image size {size} bytes cannot hold {content} bytes of files")]
    TooSmall {
        /// requested size
        size: u64,
        /// content size
        content: u64,
    },
    /// Filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// file involved
        path: PathBuf,
        /// underlying error
        #[source]
        source: std::io::Error,
    },
    /// The ext4 file system could not be made.
    #[error(transparent)]
    Ext4(#[from] ext4::Error),
}

/// Options for [`image`].
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Image size in bytes.
    pub size: u64,
    /// Filesystem label.
    pub label: String,
    /// How to unpack (cache, parallelism, progress).
    pub unpack: UnpackOptions,
}

/// Parses `1048576`, `512M`, `2G`, `1.5G`, `10GiB`... (binary units).
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let bad = || Error::BadSize(s.to_string());
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(bad()),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() || v <= 0.0 {
        return Err(bad());
    }
    let bytes = v * mult as f64;
    if bytes > u64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Removes a tree even where an unpack left directories without write permission.
fn force_remove(dir: &Path) {
    fn open_up(p: &Path) {
        if let Ok(m) = std::fs::symlink_metadata(p) {
            if m.is_dir() {
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
                if let Ok(rd) = std::fs::read_dir(p) {
                    for e in rd.flatten() {
                        open_up(&e.path());
                    }
                }
            }
        }
    }
    open_up(dir);
    if let Err(e) = std::fs::remove_dir_all(dir) {
        warn!(dir = %dir.display(), "could not remove temporary tree: {e}");
    }
}

/// Builds an ext4 image at `img` from the flist at `flist`.
pub fn image(flist: &Path, img: &Path, opts: &ImageOptions) -> Result<(), Error> {
    let reader = Reader::open(flist)?;
    let tree = Tree::load(&reader)?;
    let content = tree.total_size();
    if opts.size < content {
        return Err(Error::TooSmall {
            size: opts.size,
            content,
        });
    }
    if ext4::find_mkfs().is_none() {
        return Err(ext4::Error::MkfsMissing.into());
    }
    let router = Router::from_routes(&reader.routes()?)?;
    let cache = Cache::new(&opts.unpack.cache)?;
    if !is_root() {
        warn!("not running as root: file owners in the image will be the current user's");
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let dir = match img.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if img.file_name().is_none() {
        return Err(Error::BadSize(format!("{}: no file name", img.display())));
    }
    let staging = tempfile::Builder::new()
        .prefix(".flist-rootfs-")
        .tempdir_in(&dir)
        .map_err(io(&dir))?
        .keep();
    let result = (|| {
        unpack_tree(&tree, &cache, &router, &staging, &opts.unpack)?;
        info!(image = %img.display(), size = opts.size, "running mkfs.ext4");
        let ext4_opts = Ext4Options {
            label: Some(opts.label.clone()),
            root_owner: tree.root_owner(),
            ..Default::default()
        };
        ext4::make_from_dir(&staging, img, opts.size, &ext4_opts)?;
        Ok(())
    })();
    force_remove(&staging);
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        for bad in ["", "x", "12Q", "-1G", "0", "nanG"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
