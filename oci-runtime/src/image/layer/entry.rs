//! One tar entry applied to the root: files, directories, links, devices and whiteouts.

use super::tarstream::{Entry, TarStream};
use super::{clean_path, shorten, symlink_escapes, ApplyOptions, Error, LayerStats};
use crate::image::fs::{self, Kind, RootDir};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tracing::{debug, warn};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// Bytes of names the whiteout bookkeeping of one layer may hold.
const MAX_SEEN_BYTES: usize = 256 << 20;

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

pub(super) struct State<'a> {
    root: &'a RootDir,
    opts: ApplyOptions,
    pub(super) stats: LayerStats,
    /// Bytes held in `seen`.
    seen_bytes: usize,
    /// Paths this layer wrote, with all their ancestors (whiteouts only hide lower layers).
    seen: HashSet<PathBuf>,
    /// Directories (device, inode) an opaque whiteout already emptied of lower layers' files,
    /// with everything below them: they are not walked again.
    cleared: HashSet<(u64, u64)>,
    /// Directories whose mode and mtime are set at the end (writing into them changes both).
    dirs: Vec<(Vec<OsString>, Meta)>,
}

impl<'a> State<'a> {
    pub(super) fn new(root: &'a RootDir, opts: ApplyOptions) -> Self {
        Self {
            root,
            opts,
            stats: LayerStats::default(),
            seen_bytes: 0,
            seen: HashSet::new(),
            cleared: HashSet::new(),
            dirs: Vec::new(),
        }
    }

    /// Applies `entry`, whose contents `stream` reads next.
    pub(super) fn entry<R: Read>(
        &mut self,
        entry: &Entry,
        stream: &mut TarStream<R>,
    ) -> Result<(), Error> {
        self.stats.entries += 1;
        if self.stats.entries > self.opts.limits.max_entries {
            return Err(Error::Limit {
                what: format!("entry {} of the image", self.stats.entries),
                limit: format!("{} entries", self.opts.limits.max_entries),
            });
        }
        let raw = Path::new(OsStr::from_bytes(entry.path_bytes()));
        let shown = shorten(&raw.display().to_string());
        let comps = clean_path(raw)?;
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
            if self.seen.contains(a) {
                break;
            }
            self.seen_bytes += a.as_os_str().len() + 64;
            if self.seen_bytes > MAX_SEEN_BYTES {
                return Err(Error::Limit {
                    what: "the names of one layer's entries".into(),
                    limit: format!("{MAX_SEEN_BYTES} bytes"),
                });
            }
            self.seen.insert(a.to_owned());
        }
        let needed = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                entry.size()
            }
            _ => 0,
        };
        self.check_room(needed, &shown)?;
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
                let n = io::copy(&mut stream.data(), &mut file)
                    .map_err(io_err("extracting file contents"))?;
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
                let target = Path::new(OsStr::from_bytes(entry.link_bytes().unwrap_or_default()));
                if symlink_escapes(parent.len(), target) {
                    return Err(Error::SymlinkEscape {
                        path: shown,
                        target: shorten(&target.display().to_string()),
                    });
                }
                fs::symlink_at(target.as_os_str(), dir, name).map_err(io_err("symlink"))?;
                self.stats.symlinks += 1;
                self.chown(dir, name, &meta).map_err(io_err("chown"))?;
                fs::set_mtime_at(dir, name, meta.mtime, 0).map_err(io_err("set mtime"))?;
            }
            T::Link => {
                let target = Path::new(OsStr::from_bytes(entry.link_bytes().unwrap_or_default()));
                self.hard_link(dir, name, target, &shown)?;
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
            other => {
                if self.stats.skipped < 16 {
                    warn!(
                        "{shown}: unsupported tar entry type {:?} skipped",
                        other.as_byte() as char
                    );
                }
                self.stats.skipped += 1;
            }
        }
        Ok(())
    }

    /// Refuses an entry of `needed` bytes that would leave less than the reserve free.
    fn check_room(&self, needed: u64, shown: &str) -> Result<(), Error> {
        let available = fs::available_bytes(self.root.fd()).map_err(|source| Error::Io {
            path: shown.to_string(),
            op: "checking free space",
            source,
        })?;
        let reserve = self.opts.limits.reserve;
        if needed.saturating_add(reserve) > available {
            return Err(Error::NoRoom {
                path: shown.to_string(),
                needed,
                available,
                reserve,
            });
        }
        Ok(())
    }

    fn chown(&self, dir: BorrowedFd<'_>, name: &OsStr, meta: &Meta) -> io::Result<()> {
        if self.opts.chown {
            fs::chown_at(dir, name, meta.uid, meta.gid)?;
        }
        Ok(())
    }

    fn hard_link(
        &mut self,
        dir: BorrowedFd<'_>,
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

    /// Removes from `dir` (at `prefix`) everything this layer did not write. Each directory is
    /// walked once per layer: repeated or nested opaque whiteouts cost nothing more.
    fn clear_lower(&mut self, dir: BorrowedFd<'_>, prefix: &Path) -> io::Result<()> {
        let id = dir_id(dir)?;
        if self.cleared.contains(&id) {
            return Ok(());
        }
        for child in fs::list_dir(dir)? {
            let path = prefix.join(&child);
            if !self.seen.contains(&path) {
                fs::remove_all_at(dir, &child)?;
            } else if fs::kind_at(dir, &child)? == Some(Kind::Dir) {
                let sub = fs::open_dir_at(dir, &child)?;
                self.clear_lower(sub.as_fd(), &path)?;
            }
        }
        self.cleared.insert(id);
        Ok(())
    }

    /// Sets directory modes and times, deepest last-written first.
    pub(super) fn finish_dirs(&mut self) {
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

/// The (device, inode) of a directory descriptor.
fn dir_id(dir: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    // SAFETY: zeroed `stat` is a valid value; the kernel fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor (O_PATH allows fstat) and out-pointer.
    if unsafe { libc::fstat(dir.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.st_dev, st.st_ino))
}

fn header_meta(entry: &Entry) -> io::Result<Meta> {
    let h = entry.header();
    let mode = h.mode()? & 0o7777;
    let uid = u32::try_from(h.uid()?).map_err(|_| io::Error::other("uid out of range"))?;
    let gid = u32::try_from(h.gid()?).map_err(|_| io::Error::other("gid out of range"))?;
    let mut mtime = i64::try_from(h.mtime()?).unwrap_or(i64::MAX);
    if let Some(exts) = entry.pax() {
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
fn set_xattrs(entry: &Entry, file: &std::fs::File, root: bool, shown: &str) {
    if !root {
        return;
    }
    let Some(exts) = entry.pax() else {
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
