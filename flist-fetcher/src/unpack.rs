//! `unpack`: materialize an flist as a directory tree (a rootfs).
//!
//! Order of work:
//! 1. open and validate the flist ([`Tree::load`] rejects unsafe metadata);
//! 2. fetch every distinct block missing from the cache, in parallel;
//! 3. create directories (private mode for now);
//! 4. write regular files in parallel, each to a temporary name that is
//!    renamed into place only once complete, verified and chmod'ed;
//! 5. create symlinks, fifos, sockets and (when permitted) device nodes;
//! 6. apply owners, modes and mtimes to directories, deepest first.
//!
//! The target must be empty (or absent), so every path written is one the
//! unpack created itself and no pre-existing symlink can redirect a write.

use crate::cache::{self, Cache};
use crate::fsutil::{self, is_root, system_time};
use crate::meta::{self, Reader};
use crate::parallel;
use crate::store::{self, Router};
use crate::tree::{self, Entry, Kind, Tree};
use std::collections::HashSet;
use std::fs::{File, FileTimes, Permissions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// Errors while unpacking.
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
    /// The cache directory could not be used.
    #[error(transparent)]
    Cache(#[from] cache::Error),
    /// The target exists and is not an empty directory.
    #[error("{0}: target must be an empty or non-existent directory")]
    TargetNotEmpty(PathBuf),
    /// Filesystem error while writing the tree.
    #[error("{path}: {source}")]
    Io {
        /// file involved
        path: PathBuf,
        /// underlying error
        #[source]
        source: std::io::Error,
    },
    /// A block of a file could not be fetched or failed verification.
    #[error("{path}: block {index}: {source}")]
    Block {
        /// file (relative to the flist root)
        path: PathBuf,
        /// block index within the file
        index: usize,
        /// underlying error
        #[source]
        source: Box<cache::Error>,
    },
    /// The target's file system has less room than the flist's files need.
    #[error("{target}: the files need {needed} bytes, the file system has {available} free")]
    NoRoom {
        /// the target directory
        target: PathBuf,
        /// the sum of the files' sizes
        needed: u64,
        /// what the file system offers an unprivileged writer
        available: u64,
    },
    /// A file's blocks do not add up to its recorded size.
    #[error("{path}: blocks hold {actual} bytes but the flist records {expected}")]
    SizeMismatch {
        /// file (relative to the flist root)
        path: PathBuf,
        /// size in the inode
        expected: u64,
        /// bytes the blocks decoded to
        actual: u64,
    },
}

/// Options for [`unpack`].
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Block cache directory.
    pub cache: PathBuf,
    /// Concurrent block fetches.
    pub fetch_jobs: usize,
    /// Concurrent file writers.
    pub jobs: usize,
    /// Restore owners (`None`: when running as root).
    pub owners: Option<bool>,
    /// Show progress bars when stderr is a terminal.
    pub progress: bool,
}

impl UnpackOptions {
    /// Defaults with the given cache directory.
    pub fn new(cache: &Path) -> Self {
        UnpackOptions {
            cache: cache.to_path_buf(),
            fetch_jobs: parallel::DEFAULT_FETCH_JOBS,
            jobs: parallel::default_jobs(),
            owners: None,
            progress: false,
        }
    }
}

/// What [`unpack`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Regular files written.
    pub files: u64,
    /// Directories created (including the root).
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Devices, fifos and sockets created.
    pub specials: u64,
    /// Device nodes skipped for lack of privilege.
    pub skipped: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Blocks fetched from the stores (cache misses).
    pub fetched: u64,
}

/// Refuses an unpack whose files need more than `target`'s file system has free, before
/// anything is written.
fn check_room(target: &Path, needed: u64) -> Result<(), Error> {
    let available = fsutil::available_bytes(target).map_err(io_at(target))?;
    if needed > available {
        return Err(Error::NoRoom {
            target: target.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { path, source }
}

fn prepare_target(target: &Path) -> Result<(), Error> {
    match std::fs::metadata(target) {
        Ok(m) if m.is_dir() => {
            let mut entries = std::fs::read_dir(target).map_err(io_at(target))?;
            if entries.next().is_some() {
                return Err(Error::TargetNotEmpty(target.to_path_buf()));
            }
            Ok(())
        }
        Ok(_) => Err(Error::TargetNotEmpty(target.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target).map_err(io_at(target))
        }
        Err(e) => Err(io_at(target)(e)),
    }
}

/// Removes a temporary file unless disarmed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

struct Ctx<'a> {
    target: &'a Path,
    tree: &'a Tree,
    cache: &'a Cache,
    router: &'a Router,
    owners: bool,
    paths: HashSet<&'a Path>,
}

impl Ctx<'_> {
    /// A temporary name in the entry's directory that no flist entry uses.
    fn temp_path(&self, entry: &Entry) -> PathBuf {
        let parent = entry.path.parent().unwrap_or(Path::new(""));
        let mut name = format!(".flist-tmp-{}", entry.inode.ino);
        while self.paths.contains(parent.join(&name).as_path()) {
            name.push('~');
        }
        self.target.join(parent).join(name)
    }

    fn write_file(&self, entry: &Entry, bar: &indicatif::ProgressBar) -> Result<u64, Error> {
        let dest = self.target.join(&entry.path);
        let tmp = self.temp_path(entry);
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io_at(&tmp))?;
        let mut guard = TempGuard(Some(tmp.clone()));
        let mut written = 0u64;
        for (index, block) in self.tree.blocks_of(entry.inode.ino).iter().enumerate() {
            let plain = self
                .cache
                .read_block(self.router, block)
                .map_err(|source| Error::Block {
                    path: entry.path.clone(),
                    index,
                    source: Box::new(source),
                })?;
            // Never write past the recorded size: blocks can repeat (deduplicated, cheap
            // to fetch), so a crafted list could otherwise fill the disk.
            let after = written.saturating_add(plain.len() as u64);
            if after > entry.inode.size {
                return Err(Error::SizeMismatch {
                    path: entry.path.clone(),
                    expected: entry.inode.size,
                    actual: after,
                });
            }
            file.write_all(&plain).map_err(io_at(&dest))?;
            written = after;
            bar.inc(plain.len() as u64);
        }
        if written != entry.inode.size {
            return Err(Error::SizeMismatch {
                path: entry.path.clone(),
                expected: entry.inode.size,
                actual: written,
            });
        }
        let node = &entry.inode;
        if self.owners {
            std::os::unix::fs::fchown(&file, Some(node.uid), Some(node.gid))
                .map_err(io_at(&dest))?;
        }
        // after chown, which clears set-id bits
        file.set_permissions(Permissions::from_mode(node.mode & 0o7777))
            .map_err(io_at(&dest))?;
        let t = system_time(node.mtime);
        file.set_times(FileTimes::new().set_accessed(t).set_modified(t))
            .map_err(io_at(&dest))?;
        drop(file);
        std::fs::rename(&tmp, &dest).map_err(io_at(&dest))?;
        guard.0 = None;
        Ok(written)
    }

    /// Creates a symlink, fifo, socket or device; returns false if skipped.
    fn make_special(&self, entry: &Entry) -> Result<bool, Error> {
        let path = self.target.join(&entry.path);
        let node = &entry.inode;
        match entry.kind {
            Kind::Symlink => {
                let target = node.data.as_deref().unwrap_or_default();
                let target = std::ffi::OsStr::from_bytes(target);
                // kept verbatim: it resolves inside the rootfs, never during unpack
                std::os::unix::fs::symlink(target, &path).map_err(io_at(&path))?;
            }
            Kind::CharDev | Kind::BlockDev | Kind::Fifo | Kind::Socket => {
                let rdev = if matches!(entry.kind, Kind::CharDev | Kind::BlockDev) {
                    node.rdev
                } else {
                    0
                };
                match fsutil::mknod(&path, node.mode & (libc::S_IFMT | 0o600), rdev) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        warn!(path = %entry.path.display(), "skipping {}: {e}", entry.kind.name());
                        return Ok(false);
                    }
                    Err(e) => return Err(io_at(&path)(e)),
                }
            }
            Kind::Dir | Kind::File => return Ok(true),
        }
        if self.owners {
            std::os::unix::fs::lchown(&path, Some(node.uid), Some(node.gid))
                .map_err(io_at(&path))?;
        }
        if entry.kind != Kind::Symlink {
            std::fs::set_permissions(&path, Permissions::from_mode(node.mode & 0o7777))
                .map_err(io_at(&path))?;
        }
        fsutil::set_mtime_nofollow(&path, node.mtime).map_err(io_at(&path))?;
        Ok(true)
    }

    fn finish_dir(&self, entry: &Entry) -> Result<(), Error> {
        let path = self.target.join(&entry.path);
        let flags = if entry.parent.is_some() {
            libc::O_DIRECTORY | libc::O_NOFOLLOW
        } else {
            libc::O_DIRECTORY
        };
        let dir = File::options()
            .read(true)
            .custom_flags(flags | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_at(&path))?;
        let node = &entry.inode;
        if self.owners {
            std::os::unix::fs::fchown(&dir, Some(node.uid), Some(node.gid))
                .map_err(io_at(&path))?;
        }
        dir.set_permissions(Permissions::from_mode(node.mode & 0o7777))
            .map_err(io_at(&path))?;
        let t = system_time(node.mtime);
        dir.set_times(FileTimes::new().set_accessed(t).set_modified(t))
            .map_err(io_at(&path))?;
        Ok(())
    }
}

/// Fetches every distinct block of `tree` missing from the cache.
pub fn prefetch(
    tree: &Tree,
    cache: &Cache,
    router: &Router,
    jobs: usize,
    progress: bool,
) -> Result<u64, Error> {
    let mut seen = HashSet::new();
    let mut missing = Vec::new();
    for entry in tree.entries.iter().filter(|e| e.kind == Kind::File) {
        for (index, block) in tree.blocks_of(entry.inode.ino).iter().enumerate() {
            if seen.insert(block.id) && !cache.contains(&block.id) {
                missing.push((entry, index, block));
            }
        }
    }
    info!(blocks = missing.len(), "fetching blocks");
    let bar = parallel::count_bar(progress, missing.len() as u64, "fetching");
    parallel::for_each(
        &missing,
        jobs,
        |_, (entry, index, block)| -> Result<(), Error> {
            cache
                .ensure(router, &block.id)
                .map_err(|source| Error::Block {
                    path: entry.path.clone(),
                    index: *index,
                    source: Box::new(source),
                })?;
            bar.inc(1);
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    Ok(missing.len() as u64)
}

/// Unpacks the flist at `flist` into `target` (empty or absent).
pub fn unpack(flist: &Path, target: &Path, opts: &UnpackOptions) -> Result<UnpackStats, Error> {
    let reader = Reader::open(flist)?;
    let tree = Tree::load(&reader)?;
    let router = Router::from_routes(&reader.routes()?)?;
    let cache = Cache::new(&opts.cache)?;
    unpack_tree(&tree, &cache, &router, target, opts)
}

/// Unpacks an already loaded tree (used by [`unpack`] and the image builder).
pub fn unpack_tree(
    tree: &Tree,
    cache: &Cache,
    router: &Router,
    target: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, Error> {
    prepare_target(target)?;
    let mut stats = UnpackStats {
        fetched: prefetch(tree, cache, router, opts.fetch_jobs, opts.progress)?,
        ..UnpackStats::default()
    };
    let ctx = Ctx {
        target,
        tree,
        cache,
        router,
        owners: opts.owners.unwrap_or_else(is_root),
        paths: tree.entries.iter().map(|e| e.path.as_path()).collect(),
    };

    for entry in tree
        .entries
        .iter()
        .filter(|e| e.kind == Kind::Dir && e.parent.is_some())
    {
        let path = target.join(&entry.path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io_at(&path))?;
    }

    let mut files: Vec<&Entry> = tree
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File)
        .collect();
    // largest first, for better load balance
    files.sort_by_key(|e| std::cmp::Reverse(e.inode.size));
    let total = files
        .iter()
        .fold(0u64, |sum, e| sum.saturating_add(e.inode.size));
    check_room(target, total)?;
    let bar = parallel::bytes_bar(opts.progress, total, "writing");
    parallel::for_each(&files, opts.jobs, |_, entry| {
        ctx.write_file(entry, &bar).map(|_| ())
    })?;
    bar.finish_and_clear();
    stats.files = files.len() as u64;
    stats.bytes = total;

    for entry in &tree.entries {
        match entry.kind {
            Kind::Dir => stats.dirs += 1,
            Kind::File => {}
            kind => {
                if ctx.make_special(entry)? {
                    if kind == Kind::Symlink {
                        stats.symlinks += 1;
                    } else {
                        stats.specials += 1;
                    }
                } else {
                    stats.skipped += 1;
                }
            }
        }
    }
    for entry in tree.entries.iter().rev().filter(|e| e.kind == Kind::Dir) {
        ctx.finish_dir(entry)?;
    }
    info!(?stats, target = %target.display(), "unpacked");
    Ok(stats)
}
