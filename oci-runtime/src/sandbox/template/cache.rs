//! The template cache on disk.
//!
//! ```text
//! <root>/<id>/          a complete template (only ever made by renaming a finished build)
//!     template.json     its key and what it holds
//!     vmstate, memory   the snapshot
//!     agent.ext4        the agent's boot disk the snapshot booted from
//!     used              touched on every use (least recently used goes first)
//! <root>/<id>.lock      flock: exclusive while building or evicting, shared while restoring
//! <root>/<id>.build-<pid>/  a build in progress (removed by the next builder if it died)
//! ```

use super::key::TemplateKey;
use super::TemplateError;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The snapshot's state file in a template.
pub const STATE_FILE: &str = "vmstate";
/// The snapshot's memory file in a template.
pub const MEMORY_FILE: &str = "memory";
/// The agent's boot disk in a template.
pub const AGENT_DISK: &str = "agent.ext4";
/// What a template says of itself.
pub const MANIFEST: &str = "template.json";
/// Touched on every use.
const USED_STAMP: &str = "used";

/// `template.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The key the template was built for.
    pub key: TemplateKey,
    /// Seconds since the Unix epoch when it was built.
    pub created: u64,
    /// How long the boot and the snapshot took, in milliseconds.
    pub build_ms: u64,
}

/// A complete template's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateFiles {
    /// Its directory.
    pub dir: PathBuf,
    /// The snapshot's state file.
    pub state: PathBuf,
    /// The snapshot's memory file.
    pub memory: PathBuf,
    /// The agent's boot disk.
    pub agent_disk: PathBuf,
}

impl TemplateFiles {
    fn at(dir: PathBuf) -> TemplateFiles {
        TemplateFiles {
            state: dir.join(STATE_FILE),
            memory: dir.join(MEMORY_FILE),
            agent_disk: dir.join(AGENT_DISK),
            dir,
        }
    }
}

/// An flock on a template's lock file, released when dropped.
#[derive(Debug)]
pub struct TemplateLock(#[allow(dead_code)] File);

/// The cache directory and its limits.
#[derive(Debug, Clone)]
pub struct TemplateCache {
    root: PathBuf,
    max_templates: usize,
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError {
    let what = format!("{what} {}", path.display());
    move |source| TemplateError::Io { what, source }
}

impl TemplateCache {
    /// The cache at `root`, keeping at most `max_templates` (at least one).
    pub fn new(root: impl Into<PathBuf>, max_templates: usize) -> TemplateCache {
        TemplateCache {
            root: root.into(),
            max_templates: max_templates.max(1),
        }
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock_path(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.lock"))
    }

    /// Takes the lock of template `id`, shared or exclusive, waiting up to `wait` (a build
    /// by another process holds it exclusively for a whole boot).
    pub fn lock(
        &self,
        id: &str,
        exclusive: bool,
        wait: Duration,
    ) -> Result<TemplateLock, TemplateError> {
        std::fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        let path = self.lock_path(id);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        } | libc::LOCK_NB;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock(2) on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(TemplateLock(file));
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) && e.raw_os_error() != Some(libc::EINTR)
            {
                return Err(io("lock", &path)(e));
            }
            if Instant::now() >= deadline {
                return Err(TemplateError::Busy {
                    lock: path,
                    waited: wait,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The complete template `id`, if there is one whose manifest names `key` (hold its
    /// lock). A directory that is not a complete template for this key is an error: the
    /// caller removes it and builds again.
    pub fn find(
        &self,
        id: &str,
        key: &TemplateKey,
    ) -> Result<Option<TemplateFiles>, TemplateError> {
        let dir = self.root.join(id);
        if !dir.exists() {
            return Ok(None);
        }
        let bad = |reason: String| TemplateError::Corrupt {
            dir: dir.clone(),
            reason,
        };
        let text = std::fs::read(dir.join(MANIFEST))
            .map_err(|e| bad(format!("cannot read {MANIFEST}: {e}")))?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| bad(format!("bad {MANIFEST}: {e}")))?;
        if &manifest.key != key {
            return Err(bad("it was built for other inputs".into()));
        }
        let files = TemplateFiles::at(dir.clone());
        for file in [&files.state, &files.memory, &files.agent_disk] {
            let meta =
                std::fs::metadata(file).map_err(|e| bad(format!("{}: {e}", file.display())))?;
            if !meta.is_file() || meta.len() == 0 {
                return Err(bad(format!("{} is empty or not a file", file.display())));
            }
        }
        let _ = std::fs::write(dir.join(USED_STAMP), b"");
        Ok(Some(files))
    }

    /// A fresh directory to build template `id` in (hold its lock exclusively); removes
    /// what earlier, unfinished builds left.
    pub fn start_build(&self, id: &str) -> Result<PathBuf, TemplateError> {
        self.remove_unfinished(id);
        let dir = self.root.join(format!("{id}.build-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        Ok(dir)
    }

    fn remove_unfinished(&self, id: &str) {
        let prefix = format!("{id}.build-");
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Makes the finished build in `build_dir` template `id` (hold its lock exclusively):
    /// writes its manifest, then renames the directory into place in one step. Then
    /// evicts the least recently used templates beyond the limit.
    pub fn install(
        &self,
        id: &str,
        build_dir: &Path,
        manifest: &Manifest,
    ) -> Result<TemplateFiles, TemplateError> {
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| TemplateError::Io {
            what: "encode the manifest".into(),
            source: std::io::Error::other(e),
        })?;
        let path = build_dir.join(MANIFEST);
        std::fs::write(&path, json).map_err(io("write", &path))?;
        sync_dir(build_dir);
        let dir = self.root.join(id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(build_dir, &dir).map_err(io("install", &dir))?;
        sync_dir(&self.root);
        let _ = std::fs::write(dir.join(USED_STAMP), b"");
        self.evict(id);
        Ok(TemplateFiles::at(dir))
    }

    /// Removes template `id` (hold its lock exclusively).
    pub fn remove(&self, id: &str) -> Result<(), TemplateError> {
        let dir = self.root.join(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &dir)(e)),
            _ => Ok(()),
        }
    }

    /// Every complete template: id, manifest (None when unreadable), bytes on disk.
    pub fn list(&self) -> Vec<(String, Option<Manifest>, u64)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return out;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.path().is_dir() || name.contains('.') {
                continue;
            }
            let manifest = std::fs::read(entry.path().join(MANIFEST))
                .ok()
                .and_then(|t| serde_json::from_slice(&t).ok());
            out.push((name, manifest, disk_usage(&entry.path())));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Removes the least recently used templates beyond the limit, skipping `keep` and any
    /// in use (a shared lock held by a restore).
    fn evict(&self, keep: &str) {
        let mut others: Vec<(SystemTime, String)> = self
            .list()
            .into_iter()
            .filter(|(id, _, _)| id != keep)
            .map(|(id, _, _)| {
                let used = std::fs::metadata(self.root.join(&id).join(USED_STAMP))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                (used, id)
            })
            .collect();
        others.sort();
        let mut excess = (others.len() + 1).saturating_sub(self.max_templates);
        for (_, id) in others {
            if excess == 0 {
                break;
            }
            if let Ok(_lock) = self.lock(&id, true, Duration::ZERO) {
                tracing::info!("template cache: evicting {id}");
                if self.remove(&id).is_ok() {
                    excess -= 1;
                }
            }
        }
    }
}

/// Bytes a directory's files take on disk (holes not counted).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(dir: &Path, vcpus: u8) -> TemplateKey {
        let f = dir.join("file");
        std::fs::write(&f, b"x").unwrap();
        let digests = super::super::key::Digests::in_dir(None);
        TemplateKey::new(&digests, &f, &f, vcpus, 256, "").unwrap()
    }

    fn build(cache: &TemplateCache, key: &TemplateKey) -> TemplateFiles {
        let id = key.id();
        let _lock = cache.lock(&id, true, Duration::ZERO).unwrap();
        let dir = cache.start_build(&id).unwrap();
        for f in [STATE_FILE, MEMORY_FILE, AGENT_DISK] {
            std::fs::write(dir.join(f), b"data").unwrap();
        }
        let manifest = Manifest {
            key: key.clone(),
            created: 0,
            build_ms: 0,
        };
        cache.install(&id, &dir, &manifest).unwrap()
    }

    #[test]
    fn a_template_is_found_only_once_complete_and_for_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TemplateCache::new(dir.path().join("t"), 4);
        let k = key(dir.path(), 1);
        assert_eq!(cache.find(&k.id(), &k).unwrap(), None);
        // An unfinished build is invisible, and the next build clears it away.
        let _lock = cache.lock(&k.id(), true, Duration::ZERO).unwrap();
        let stale = cache.start_build(&k.id()).unwrap();
        std::fs::write(stale.join(STATE_FILE), b"half").unwrap();
        drop(_lock);
        assert_eq!(cache.find(&k.id(), &k).unwrap(), None);
        let files = build(&cache, &k);
        assert!(!stale.exists());
        assert_eq!(cache.find(&k.id(), &k).unwrap(), Some(files.clone()));
        // A truncated file or a manifest for other inputs is corrupt, not used.
        std::fs::write(&files.memory, b"").unwrap();
        let err = cache.find(&k.id(), &k).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        std::fs::write(&files.memory, b"data").unwrap();
        let other = key(dir.path(), 2);
        let err = cache.find(&k.id(), &other).unwrap_err().to_string();
        assert!(err.contains("other inputs"), "{err}");
        std::fs::write(files.dir.join(MANIFEST), b"{").unwrap();
        assert!(cache.find(&k.id(), &k).is_err());
    }

    #[test]
    fn locks_exclude_builders_and_let_restores_share() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TemplateCache::new(dir.path(), 4);
        let shared = cache.lock("t", false, Duration::ZERO).unwrap();
        let _also = cache.lock("t", false, Duration::ZERO).unwrap();
        let err = cache
            .lock("t", true, Duration::from_millis(120))
            .unwrap_err();
        assert!(matches!(err, TemplateError::Busy { .. }), "{err}");
        drop(shared);
        drop(_also);
        let _excl = cache.lock("t", true, Duration::ZERO).unwrap();
        assert!(cache.lock("t", false, Duration::ZERO).is_err());
    }

    #[test]
    fn the_least_recently_used_beyond_the_limit_are_evicted_unless_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TemplateCache::new(dir.path().join("t"), 2);
        let (a, b, c, d) = (
            key(dir.path(), 1),
            key(dir.path(), 2),
            key(dir.path(), 3),
            key(dir.path(), 4),
        );
        build(&cache, &a);
        std::thread::sleep(Duration::from_millis(20));
        build(&cache, &b);
        std::thread::sleep(Duration::from_millis(20));
        // a used after b: b is now the least recently used.
        cache.find(&a.id(), &a).unwrap().unwrap();
        build(&cache, &c);
        let ids: Vec<String> = cache.list().into_iter().map(|(id, _, _)| id).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.contains(&a.id()) && ids.contains(&c.id()), "{ids:?}");
        // A template being restored from is not evicted.
        let _in_use = cache.lock(&a.id(), false, Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        cache.find(&c.id(), &c).unwrap().unwrap();
        build(&cache, &d);
        let ids: Vec<String> = cache.list().into_iter().map(|(id, _, _)| id).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.contains(&a.id()) && ids.contains(&d.id()), "{ids:?}");
    }
}
