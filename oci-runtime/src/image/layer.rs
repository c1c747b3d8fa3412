//! Applying one image layer (a tar stream, maybe compressed) to a root filesystem.
//!
//! Entries are written with [`super::fs`], so nothing reaches outside the root: paths with `..`
//! or a leading `/` are refused, symlinks whose relative target climbs above the root are
//! refused, and symlinks already in the tree are followed as the container would see them.
//! Whiteouts follow the image spec: `.wh.NAME` deletes NAME from the layers below, and
//! `.wh..wh..opq` empties its directory of everything the layers below put there.

use super::fs::{self, Kind, RootDir};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use tracing::{debug, warn};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

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

/// What may be done beyond plain files, decided once by the caller.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Set owners from the layer (needs root).
    pub chown: bool,
    /// Create character and block devices (needs root); skipped with a warning otherwise.
    pub mknod: bool,
}

impl ApplyOptions {
    /// Owners and devices when running as root, neither otherwise.
    pub fn for_current_user() -> Self {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        Self {
            chown: root,
            mknod: root,
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
        Compression::Zstd => Box::new(zstd::Decoder::new(blob).map_err(Error::Read)?),
    };
    let mut archive = tar::Archive::new(reader);
    let mut state = State {
        root,
        opts,
        stats: LayerStats::default(),
        seen: HashSet::new(),
        dirs: Vec::new(),
    };
    for entry in archive.entries().map_err(Error::Read)? {
        let mut entry = entry.map_err(Error::Read)?;
        state.entry(&mut entry)?;
    }
    state.finish_dirs();
    Ok(state.stats)
}

/// Splits a path from a layer into plain components, refusing `..` and absolute paths.
pub fn clean_path(path: &Path) -> Result<Vec<OsString>, Error> {
    let unsafe_path = |reason| Error::UnsafePath {
        path: path.display().to_string(),
        reason,
    };
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

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

struct State<'a> {
    root: &'a RootDir,
    opts: ApplyOptions,
    stats: LayerStats,
    /// Paths this layer wrote, with all their ancestors (whiteouts only hide lower layers).
    seen: HashSet<PathBuf>,
    /// Directories whose mode and mtime are set at the end (writing into them changes both).
    dirs: Vec<(Vec<OsString>, Meta)>,
}

impl State<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Error> {
        let raw = entry.path().map_err(Error::Read)?.into_owned();
        let shown = raw.display().to_string();
        let comps = clean_path(&raw)?;
        let kind = entry.header().entry_type();
        let meta = header_meta(entry).map_err(Error::Read)?;
        let io_err = |op: &'static str| {
            let path = shown.clone();
            move |source: io::Error| Error::Io { path, op, source }
        };
        let Some((name, parent)) = comps.split_last() else {
            if kind.is_dir() {
                self.stats.dirs += 1;
                self.chown(self.root.fd(), OsStr::new("."), &meta)
                    .map_err(io_err("chown"))?;
                self.dirs.push((Vec::new(), meta));
            }
            return Ok(());
        };
        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(parent, name, OsStr::from_bytes(hidden), &shown);
        }
        let rel: PathBuf = comps.iter().collect();
        for a in rel.ancestors() {
            if !self.seen.insert(a.to_owned()) {
                break;
            }
        }
        let dir = self
            .root
            .resolve_dir(parent, true)
            .map_err(io_err("resolving parent directory"))?;
        let dir = dir.as_fd();
        let existing = fs::kind_at(dir, name).map_err(io_err("lstat"))?;
        if existing.is_some() && !(kind.is_dir() && existing == Some(Kind::Dir)) {
            fs::remove_all_at(dir, name).map_err(io_err("removing the existing entry"))?;
        }
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                let mut file = fs::create_file_at(dir, name).map_err(io_err("create"))?;
                let n = io::copy(entry, &mut file).map_err(io_err("extracting file contents"))?;
                self.stats.bytes += n;
                self.stats.files += 1;
                self.chown(dir, name, &meta).map_err(io_err("chown"))?;
                set_xattrs(entry, &file, self.opts.chown, &shown);
                fs::chmod_at(dir, name, meta.mode).map_err(io_err("chmod"))?;
                fs::set_mtime_at(dir, name, meta.mtime, 0).map_err(io_err("set mtime"))?;
            }
            T::Directory => {
                if existing != Some(Kind::Dir) {
                    fs::mkdir_at(dir, name, 0o700).map_err(io_err("mkdir"))?;
                }
                self.stats.dirs += 1;
                self.chown(dir, name, &meta).map_err(io_err("chown"))?;
                self.dirs.push((comps.clone(), meta));
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(Error::Read)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if symlink_escapes(parent.len(), &target) {
                    return Err(Error::SymlinkEscape {
                        path: shown,
                        target: target.display().to_string(),
                    });
                }
                fs::symlink_at(target.as_os_str(), dir, name).map_err(io_err("symlink"))?;
                self.stats.symlinks += 1;
                self.chown(dir, name, &meta).map_err(io_err("chown"))?;
                fs::set_mtime_at(dir, name, meta.mtime, 0).map_err(io_err("set mtime"))?;
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(Error::Read)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.hard_link(dir, name, &target, &shown)?;
                self.stats.hardlinks += 1;
            }
            T::Char | T::Block | T::Fifo => {
                let fmt = match kind {
                    T::Char => libc::S_IFCHR,
                    T::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                if fmt != libc::S_IFIFO && !self.opts.mknod {
                    warn!("{shown}: device node skipped (creating devices needs root)");
                    self.stats.skipped += 1;
                    return Ok(());
                }
                let h = entry.header();
                let major = h.device_major().map_err(Error::Read)?.unwrap_or(0);
                let minor = h.device_minor().map_err(Error::Read)?.unwrap_or(0);
                fs::mknod_at(
                    dir,
                    name,
                    fmt | (meta.mode & 0o777),
                    libc::makedev(major, minor),
                )
                .map_err(io_err("mknod"))?;
                self.stats.specials += 1;
                self.chown(dir, name, &meta).map_err(io_err("chown"))?;
                fs::chmod_at(dir, name, meta.mode).map_err(io_err("chmod"))?;
                fs::set_mtime_at(dir, name, meta.mtime, 0).map_err(io_err("set mtime"))?;
            }
            T::XGlobalHeader => debug!("{shown}: pax global header ignored"),
            other => {
                warn!(
                    "{shown}: unsupported tar entry type {:?} skipped",
                    other.as_byte() as char
                );
                self.stats.skipped += 1;
            }
        }
        Ok(())
    }

    fn chown(&self, dir: std::os::fd::BorrowedFd<'_>, name: &OsStr, meta: &Meta) -> io::Result<()> {
        if self.opts.chown {
            fs::chown_at(dir, name, meta.uid, meta.gid)?;
        }
        Ok(())
    }

    fn hard_link(
        &mut self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        target: &Path,
        shown: &str,
    ) -> Result<(), Error> {
        let fail = |reason: String| Error::HardLink {
            path: shown.to_string(),
            target: target.display().to_string(),
            reason,
        };
        let tcomps = clean_path(target)?;
        let Some((tname, tparent)) = tcomps.split_last() else {
            return Err(fail("empty target".into()));
        };
        let tdir = self
            .root
            .resolve_dir(tparent, false)
            .map_err(|e| fail(e.to_string()))?;
        match fs::kind_at(tdir.as_fd(), tname).map_err(|e| fail(e.to_string()))? {
            None => {
                return Err(fail(
                    "target does not exist (it must come earlier in the layers)".into(),
                ))
            }
            Some(Kind::Dir) => return Err(fail("target is a directory".into())),
            Some(_) => {}
        }
        fs::link_at(tdir.as_fd(), tname, dir, name).map_err(|e| fail(e.to_string()))
    }

    fn whiteout(
        &mut self,
        parent: &[OsString],
        name: &OsStr,
        hidden: &OsStr,
        shown: &str,
    ) -> Result<(), Error> {
        self.stats.whiteouts += 1;
        let dir = match self.root.resolve_dir(parent, false) {
            Ok(d) => d,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(())
            }
            Err(source) => {
                return Err(Error::Io {
                    path: shown.to_string(),
                    op: "resolving whiteout directory",
                    source,
                })
            }
        };
        let prefix: PathBuf = parent.iter().collect();
        if name == OPAQUE_WHITEOUT {
            return self
                .clear_lower(dir.as_fd(), &prefix)
                .map_err(|source| Error::Io {
                    path: shown.to_string(),
                    op: "opaque whiteout",
                    source,
                });
        }
        if hidden.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            debug!("{shown}: whiteout metadata ignored");
            return Ok(());
        }
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(Error::UnsafePath {
                path: shown.to_string(),
                reason: "invalid whiteout name",
            });
        }
        if self.seen.contains(&prefix.join(hidden)) {
            return Ok(()); // a whiteout hides lower layers only
        }
        fs::remove_all_at(dir.as_fd(), hidden).map_err(|source| Error::Io {
            path: shown.to_string(),
            op: "whiteout",
            source,
        })
    }

    /// Removes from `dir` (at `prefix`) everything this layer did not write.
    fn clear_lower(&self, dir: std::os::fd::BorrowedFd<'_>, prefix: &Path) -> io::Result<()> {
        for child in fs::list_dir(dir)? {
            let path = prefix.join(&child);
            if !self.seen.contains(&path) {
                fs::remove_all_at(dir, &child)?;
            } else if fs::kind_at(dir, &child)? == Some(Kind::Dir) {
                let sub = fs::open_dir_at(dir, &child)?;
                self.clear_lower(sub.as_fd(), &path)?;
            }
        }
        Ok(())
    }

    /// Sets directory modes and times, deepest last-written first.
    fn finish_dirs(&mut self) {
        for (comps, meta) in self.dirs.drain(..).rev() {
            let result = (|| -> io::Result<()> {
                let (dir, name) = match comps.split_last() {
                    Some((name, parent)) => {
                        (self.root.resolve_dir(parent, false)?, name.as_os_str())
                    }
                    None => (self.root.fd().try_clone_to_owned()?, OsStr::new(".")),
                };
                if fs::kind_at(dir.as_fd(), name)? != Some(Kind::Dir) {
                    return Ok(()); // replaced later in the same layer
                }
                fs::chmod_at(dir.as_fd(), name, meta.mode)?;
                fs::set_mtime_at(dir.as_fd(), name, meta.mtime, 0)
            })();
            if let Err(e) = result {
                let p: PathBuf = comps.iter().collect();
                warn!("{}: setting directory mode and time: {e}", p.display());
            }
        }
    }
}

fn header_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
    let h = entry.header();
    let mode = h.mode()? & 0o7777;
    let uid = u32::try_from(h.uid()?).map_err(|_| io::Error::other("uid out of range"))?;
    let gid = u32::try_from(h.gid()?).map_err(|_| io::Error::other("gid out of range"))?;
    let mut mtime = i64::try_from(h.mtime()?).unwrap_or(i64::MAX);
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts.flatten() {
            if ext.key_bytes() == b"mtime" {
                let v = ext.value().unwrap_or("");
                if let Ok(secs) = v.split('.').next().unwrap_or("").parse::<i64>() {
                    mtime = secs;
                }
            }
        }
    }
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
    })
}

/// Copies `SCHILY.xattr.*` PAX records onto a regular file (only as root: `security.*` and
/// `trusted.*` need it). Failures are warnings: the file itself is intact.
fn set_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    file: &std::fs::File,
    root: bool,
    shown: &str,
) {
    if !root {
        return;
    }
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return;
    };
    for ext in exts.flatten() {
        let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        let Ok(key) = fs::cstring(OsStr::from_bytes(key)) else {
            continue;
        };
        let value = ext.value_bytes();
        // SAFETY: valid fd, NUL-terminated key and a value buffer of the given length.
        let ret = unsafe {
            libc::fsetxattr(
                file.as_raw_fd(),
                key.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if ret < 0 {
            warn!(
                "{shown}: xattr {}: {}",
                key.to_string_lossy(),
                io::Error::last_os_error()
            );
        }
    }
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
