//! The cache of unpacked flist trees (`<cache>/trees/<sha256 of the .fl>`), bounded: when a
//! new tree would take the cache past its size, the trees no VM uses are removed, least
//! recently used first.
//!
//! Use is marked by locks: every VM (and every preparation) of a tree holds a shared flock
//! on `trees/<hex>.lock` for as long as it uses the tree ([`TreeLease`]); the lock file's
//! modification time is the tree's last use. Eviction takes that lock exclusively without
//! waiting, so a tree in use is never touched; it renames the tree away before it removes
//! it, so that a tree at its path is always whole. A VM that starts while its tree is being
//! evicted waits for the shared lock, then finds the tree gone and unpacks it again. Trees
//! are unpacked one at a time per cache (`trees/.cache.lock`), which is what keeps the
//! size bound exact; each tree's size on disk is kept beside it (`<hex>.size`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// The environment variable that sets the cache's size (bytes or `20G`-style).
pub const LIMIT_ENV: &str = "ZVM_TREE_CACHE_SIZE";
/// The cache's size when nothing sets it.
pub const DEFAULT_LIMIT: u64 = 20 << 30;
/// What a tree's entries take beyond their content, estimated per entry.
const PER_ENTRY: u64 = 4096;
/// The cache-wide lock.
const CACHE_LOCK: &str = ".cache.lock";

static LIMIT: OnceLock<u64> = OnceLock::new();

/// Errors of the tree cache.
#[derive(Debug, thiserror::Error)]
pub enum TreeCacheError {
    /// A file operation failed.
    #[error("tree cache: cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The size setting does not parse.
    #[error("{LIMIT_ENV}=`{0}` is not a size (bytes, or a number with K, M, G or T)")]
    BadLimit(String),
    /// The tree alone is larger than the cache.
    #[error("the flist's tree needs {needed} bytes; the tree cache holds {limit} (raise it with --tree-cache-size or {LIMIT_ENV}, or use an ext4 root)")]
    TooLarge {
        /// What the tree needs.
        needed: u64,
        /// The cache's size.
        limit: u64,
    },
    /// Trees in use fill the cache.
    #[error("the tree cache is full of trees running VMs use ({used} of {limit} bytes); {needed} more are needed: raise --tree-cache-size or {LIMIT_ENV}, or stop a VM")]
    Full {
        /// Bytes the trees that stay take.
        used: u64,
        /// What the new tree needs.
        needed: u64,
        /// The cache's size.
        limit: u64,
    },
    /// Unpacking the tree failed.
    #[error("{0}")]
    Unpack(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TreeCacheError {
    let path = path.to_path_buf();
    move |source| TreeCacheError::Io { what, path, source }
}

/// Sets the cache's size for this process (the node's `--tree-cache-size`); the first
/// call wins.
pub fn set_limit(bytes: u64) {
    let _ = LIMIT.set(bytes);
}

/// The cache's size: [`set_limit`]'s, else `$ZVM_TREE_CACHE_SIZE`, else [`DEFAULT_LIMIT`].
pub fn limit() -> Result<u64, TreeCacheError> {
    if let Some(limit) = LIMIT.get() {
        return Ok(*limit);
    }
    match std::env::var(LIMIT_ENV) {
        Ok(text) => parse_limit(&text),
        Err(_) => Ok(DEFAULT_LIMIT),
    }
}

/// Parses a cache size: at least 1 MiB.
pub fn parse_limit(text: &str) -> Result<u64, TreeCacheError> {
    match crate::bytesize::ByteSize::parse(text) {
        Ok(size) if size.0 >= 1 << 20 => Ok(size.0),
        _ => Err(TreeCacheError::BadLimit(text.chars().take(64).collect())),
    }
}

/// A use of a tree: while any clone of it lives, the tree is not evicted.
#[derive(Debug, Clone)]
pub struct TreeLease {
    tree: PathBuf,
    _lock: Arc<File>,
}

impl PartialEq for TreeLease {
    fn eq(&self, other: &Self) -> bool {
        self.tree == other.tree
    }
}

impl Eq for TreeLease {}

impl TreeLease {
    /// The tree's directory.
    pub fn tree(&self) -> &Path {
        &self.tree
    }
}

/// `<trees>/<hex>.<suffix>` beside the tree `<trees>/<hex>`.
fn beside(tree: &Path, suffix: &str) -> PathBuf {
    let mut name = tree.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn open_lock(path: &Path) -> Result<File, TreeCacheError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io("open", path))
}

fn flock(file: &File, how: libc::c_int) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), how) == 0 }
}

/// Takes a lease on the tree at `tree` (which need not exist yet): a shared lock on its
/// lock file, waiting while an eviction holds it. The lock file's time becomes now.
pub fn lease(tree: &Path) -> Result<TreeLease, TreeCacheError> {
    let path = beside(tree, ".lock");
    if let Some(trees) = tree.parent() {
        std::fs::create_dir_all(trees).map_err(io("create", trees))?;
    }
    loop {
        let file = open_lock(&path)?;
        if !flock(&file, libc::LOCK_SH) {
            return Err(io("lock", &path)(std::io::Error::last_os_error()));
        }
        // An eviction removes the lock file while it holds it: a lock on a file no
        // longer at the path protects nothing; take the new one.
        let held = file.metadata().map_err(io("read", &path))?;
        match std::fs::symlink_metadata(&path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                let _ = file.set_modified(SystemTime::now());
                return Ok(TreeLease {
                    tree: tree.to_path_buf(),
                    _lock: Arc::new(file),
                });
            }
            _ => continue,
        }
    }
}

/// Makes sure the cache holds the tree `tree` (`<cache>/trees/<hex>`) and returns a lease
/// on it. When missing, it is made by `unpack` (into the directory it is given, which is
/// renamed into place once whole) after the least recently used trees no VM uses were
/// evicted to make room for `content` bytes in `entries` entries within `limit`.
pub fn ensure_tree(
    tree: &Path,
    content: u64,
    entries: u64,
    limit: u64,
    unpack: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<TreeLease, TreeCacheError> {
    let lease = lease(tree)?;
    if tree.is_dir() && beside(tree, ".size").is_file() {
        return Ok(lease);
    }
    let trees = tree.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&trees).map_err(io("create", &trees))?;
    let cache_lock = open_lock(&trees.join(CACHE_LOCK))?;
    if !flock(&cache_lock, libc::LOCK_EX) {
        return Err(io("lock", &trees)(std::io::Error::last_os_error()));
    }
    remove_leftovers(&trees);
    if tree.is_dir() {
        // Made by another process meanwhile, or by an older zvm without its size.
        if !beside(tree, ".size").is_file() {
            record_size(tree)?;
        }
        return Ok(lease);
    }
    let needed = content.saturating_add(entries.saturating_mul(PER_ENTRY));
    if needed > limit {
        return Err(TreeCacheError::TooLarge { needed, limit });
    }
    make_room(&trees, needed, limit)?;
    let name = tree
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = trees.join(format!(".{name}.staging"));
    let made = unpack(&staging).map_err(TreeCacheError::Unpack);
    let made = made.and_then(|()| {
        let size = record_size_of(&staging, tree)?;
        std::fs::rename(&staging, tree).map_err(io("put in place", tree))?;
        // What it really took may be more than the estimate: make room again.
        let _ = make_room(&trees, 0, limit);
        tracing::debug!(tree = %tree.display(), bytes = size, "flist tree cached");
        Ok(())
    });
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
        let _ = std::fs::remove_file(beside(tree, ".size"));
    }
    made.map(|()| lease)
}

/// Removes what an unpack or eviction that died left (only called under the cache lock,
/// when no unpack runs).
fn remove_leftovers(trees: &Path) {
    let Ok(dir) = std::fs::read_dir(trees) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && (name.ends_with(".staging") || name.ends_with(".evicting")) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Bytes the tree at `dir` takes on disk (hard links once).
fn disk_usage(dir: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&d) else {
            continue;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        total = total.saturating_add(m.blocks().saturating_mul(512));
        if m.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&d) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

fn record_size_of(dir: &Path, tree: &Path) -> Result<u64, TreeCacheError> {
    let size = disk_usage(dir);
    let path = beside(tree, ".size");
    std::fs::write(&path, size.to_string()).map_err(io("write", &path))?;
    Ok(size)
}

fn record_size(tree: &Path) -> Result<u64, TreeCacheError> {
    record_size_of(tree, tree)
}

/// A tree in the cache and what it takes.
struct Cached {
    tree: PathBuf,
    size: u64,
    last_use: SystemTime,
}

/// The complete trees in `trees` (a directory with a lock or size file beside it).
fn cached_trees(trees: &Path) -> Vec<Cached> {
    let Ok(dir) = std::fs::read_dir(trees) else {
        return Vec::new();
    };
    let mut all = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let tree = entry.path();
        // A size file that is missing or garbled is measured again.
        let size = std::fs::read_to_string(beside(&tree, ".size"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let size = match size {
            Some(s) => s,
            None => record_size(&tree).unwrap_or_else(|_| disk_usage(&tree)),
        };
        let last_use = std::fs::metadata(beside(&tree, ".lock"))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        all.push(Cached {
            tree,
            size,
            last_use,
        });
    }
    all
}

/// Evicts unused trees, least recently used first, until `needed` more bytes fit within
/// `limit`.
fn make_room(trees: &Path, needed: u64, limit: u64) -> Result<(), TreeCacheError> {
    let mut all = cached_trees(trees);
    let mut used: u64 = all.iter().map(|c| c.size).sum();
    all.sort_by_key(|c| c.last_use);
    for cached in &all {
        if used.saturating_add(needed) <= limit {
            break;
        }
        if evict(&cached.tree) {
            tracing::info!(tree = %cached.tree.display(), bytes = cached.size, "evicted an unused flist tree from the cache");
            used = used.saturating_sub(cached.size);
        }
    }
    if used.saturating_add(needed) > limit {
        return Err(TreeCacheError::Full {
            used,
            needed,
            limit,
        });
    }
    Ok(())
}

/// Removes `tree` when no one holds a lease on it; says whether it did.
fn evict(tree: &Path) -> bool {
    let lock_path = beside(tree, ".lock");
    let Ok(lock) = open_lock(&lock_path) else {
        return false;
    };
    if !flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
        return false;
    }
    let name = tree
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let away = tree.with_file_name(format!(".{name}.evicting"));
    if std::fs::rename(tree, &away).is_err() {
        return false;
    }
    let _ = std::fs::remove_file(beside(tree, ".size"));
    // Removed while held: a VM waiting on it takes the new one (see `lease`).
    let _ = std::fs::remove_file(&lock_path);
    drop(lock);
    let _ = std::fs::remove_dir_all(&away);
    true
}

#[cfg(test)]
#[path = "tree_cache_tests.rs"]
mod tests;
