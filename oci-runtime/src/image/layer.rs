//! Applying one image layer (a tar stream, maybe compressed) to a root filesystem.
//!
//! Entries are written with [`super::fs`], so nothing reaches outside the root: paths with `..`
//! or a leading `/` are refused, symlinks whose relative target climbs above the root are
//! refused, and symlinks already in the tree are followed as the container would see them.
//! Whiteouts follow the image spec: `.wh.NAME` deletes NAME from the layers below, and
//! `.wh..wh..opq` empties its directory of everything the layers below put there.
//!
//! What a layer may cost is bounded ([`Limits`]): the stream is read by [`tarstream`], which
//! refuses oversized extension headers and charges every entry against a byte budget before
//! reading it; entries, path lengths and directory depth are capped; and no file is written
//! that would leave the target file system with less than a reserve of free space.

mod entry;
pub mod tarstream;

use super::fs::RootDir;
use std::ffi::OsString;
use std::io::{self, Read};
use std::path::{Component, Path};

/// Paths (and hard link targets) longer than this are refused (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;

/// Errors while applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tar stream (or its compression) is malformed or truncated.
    #[error("reading layer: {0}")]
    Read(#[source] io::Error),
    /// An entry's path is absolute, has `..`, or is otherwise unusable.
    #[error("entry `{path}`: {reason}; refusing to unpack outside the root filesystem")]
    UnsafePath {
        /// the path as written in the layer
        path: String,
        /// what is wrong with it
        reason: &'static str,
    },
    /// A symlink whose relative target climbs above the root.
    #[error("entry `{path}`: symlink target `{target}` leads outside the root filesystem")]
    SymlinkEscape {
        /// the symlink's path in the layer
        path: String,
        /// its target
        target: String,
    },
    /// A hard link whose target is missing, a directory, or unsafe.
    #[error("entry `{path}`: hard link to `{target}`: {reason}")]
    HardLink {
        /// the link's path in the layer
        path: String,
        /// its target
        target: String,
        /// what is wrong
        reason: String,
    },
    /// A file system operation failed.
    #[error("entry `{path}`: {op}: {source}")]
    Io {
        /// the entry's path in the layer
        path: String,
        /// what was being done
        op: &'static str,
        /// underlying error
        #[source]
        source: io::Error,
    },
    /// The layer (with the layers before it) goes beyond one of the [`Limits`].
    #[error("{what} goes beyond the limit of {limit}; the image is refused")]
    Limit {
        /// what was too large or too many
        what: String,
        /// the limit, with its unit
        limit: String,
    },
    /// Writing a file would leave the target file system with less than the reserve.
    #[error("entry `{path}`: {needed} bytes do not fit: the target file system has {available} bytes free and keeps {reserve} in reserve")]
    NoRoom {
        /// the entry's path in the layer
        path: String,
        /// the file's size
        needed: u64,
        /// free space (for an unprivileged writer) on the target file system
        available: u64,
        /// what must stay free
        reserve: u64,
    },
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// tar+gzip.
    Gzip,
    /// tar+zstd.
    Zstd,
}

impl Compression {
    /// Guesses the compression from the first bytes of a blob.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Bounds on what unpacking may cost; [`super::unpack_rootfs`] applies them to all the
/// image's layers together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of decompressed layer stream (headers, names and contents; a sparse file
    /// counts its holes). Checked at each entry's header, before its contents are read.
    pub max_bytes: u64,
    /// Most tar entries.
    pub max_entries: u64,
    /// Free space the target file system keeps: a file that would leave less is refused.
    pub reserve: u64,
}

impl Limits {
    /// 256 GiB of layer content, 2^20 entries, 64 MiB kept free.
    pub const DEFAULT: Limits = Limits {
        max_bytes: 256 << 30,
        max_entries: 1 << 20,
        reserve: 64 << 20,
    };

    /// What is left of these limits after `used`.
    pub fn after(&self, used: &LayerStats) -> Limits {
        Limits {
            max_bytes: self.max_bytes.saturating_sub(used.read),
            max_entries: self.max_entries.saturating_sub(used.entries),
            reserve: self.reserve,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What may be done beyond plain files, decided once by the caller, and the limits.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Set owners from the layer (needs root).
    pub chown: bool,
    /// Create character and block devices (needs root); skipped with a warning otherwise.
    pub mknod: bool,
    /// Bounds on bytes, entries and free space.
    pub limits: Limits,
}

impl ApplyOptions {
    /// Owners and devices when running as root, neither otherwise; default limits.
    pub fn for_current_user() -> Self {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        Self {
            chown: root,
            mknod: root,
            limits: Limits::DEFAULT,
        }
    }
}

/// Counts of what a layer did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks made.
    pub symlinks: u64,
    /// Hard links made.
    pub hardlinks: u64,
    /// Devices and FIFOs made.
    pub specials: u64,
    /// Whiteouts (including opaque markers) applied.
    pub whiteouts: u64,
    /// Entries skipped (devices when not root, unsupported types).
    pub skipped: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Tar entries read (extension headers not counted).
    pub entries: u64,
    /// Bytes of decompressed stream charged against [`Limits::max_bytes`].
    pub read: u64,
}

/// Applies the layer read from `blob` to `root`.
pub fn apply<R: Read>(
    root: &RootDir,
    blob: R,
    compression: Compression,
    opts: ApplyOptions,
) -> Result<LayerStats, Error> {
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(blob))),
        Compression::Zstd => {
            let mut d = zstd::Decoder::new(blob).map_err(Error::Read)?;
            // libzstd's default: no frame may make the decoder allocate a window above 128 MiB.
            d.window_log_max(27).map_err(Error::Read)?;
            Box::new(d)
        }
    };
    let mut stream = tarstream::TarStream::new(reader, opts.limits.max_bytes);
    let mut state = entry::State::new(root, opts);
    let result = (|| {
        while let Some(e) = stream.next_entry()? {
            state.entry(&e, &mut stream)?;
        }
        Ok(())
    })();
    result?;
    state.finish_dirs();
    let mut stats = state.stats;
    stats.read = stream.charged();
    Ok(stats)
}

/// Splits a path from a layer into plain components, refusing `..` and absolute paths.
pub fn clean_path(path: &Path) -> Result<Vec<OsString>, Error> {
    let unsafe_path = |reason| Error::UnsafePath {
        path: shorten(&path.display().to_string()),
        reason,
    };
    if path.as_os_str().len() > MAX_PATH {
        return Err(unsafe_path("path longer than 4096 bytes"));
    }
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_path("`..` in path")),
            Component::RootDir | Component::Prefix(_) => return Err(unsafe_path("absolute path")),
        }
    }
    Ok(out)
}

/// `text`, cut to at most 256 bytes (an attacker's name can be 64 KiB long).
pub(crate) fn shorten(text: &str) -> String {
    if text.len() <= 256 {
        return text.to_string();
    }
    let mut end = 256;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// Whether the relative symlink target `target`, placed in the directory `dir_depth` levels below
/// the root, climbs above the root.
fn symlink_escapes(dir_depth: usize, target: &Path) -> bool {
    if target.is_absolute() {
        return false; // resolved from the root of the container
    }
    let mut depth = dir_depth as isize;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_refuses_escapes() {
        assert_eq!(
            clean_path(Path::new("./a//b/./c")).unwrap(),
            ["a", "b", "c"]
        );
        assert!(clean_path(Path::new("./")).unwrap().is_empty());
        assert!(matches!(
            clean_path(Path::new("../x")),
            Err(Error::UnsafePath { .. })
        ));
        assert!(matches!(
            clean_path(Path::new("a/../../x")),
            Err(Error::UnsafePath { .. })
        ));
        assert!(matches!(
            clean_path(Path::new("/etc/passwd")),
            Err(Error::UnsafePath { .. })
        ));
    }

    #[test]
    fn symlink_escape_is_lexical_depth() {
        assert!(!symlink_escapes(0, Path::new("usr/lib")));
        assert!(!symlink_escapes(2, Path::new("../../etc")));
        assert!(symlink_escapes(2, Path::new("../../../etc")));
        assert!(symlink_escapes(0, Path::new("a/../../b")));
        assert!(!symlink_escapes(0, Path::new("/etc/alternatives/awk")));
    }

    #[test]
    fn sniffs_compression() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
    }
}
