//! The state directory under `--root`: one directory per container,
//! `<root>/<id>/state.json` (written atomically: temporary file, then `rename`), the config the
//! container was created with (`config.json`) and a `lock` file.
//!
//! Commands that change a container hold an exclusive `flock` on its `lock` file, so two
//! commands on one id do not race; readers (`state`, `list`) read `state.json` without the
//! lock, which the atomic rename makes safe. `create` makes the directory with `mkdir`, which
//! fails if the id is taken.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The record of one container.
pub const STATE_FILE: &str = "state.json";
/// The config.json the container was created with.
pub const SPEC_FILE: &str = "config.json";
/// The file commands lock.
pub const LOCK_FILE: &str = "lock";

/// A container's status: the OCI runtime spec's, plus runc's `paused`.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Being created.
    Creating,
    /// Created; its program waits for `start`.
    Created,
    /// Its program runs.
    Running,
    /// Created or running, and frozen.
    Paused,
    /// Its program has ended.
    #[default]
    Stopped,
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContainerState::Creating => "creating",
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Paused => "paused",
            ContainerState::Stopped => "stopped",
        })
    }
}

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The id has characters runc does not allow.
    #[error(
        "invalid container id {0:?}: use letters, digits, '_', '+', '-' and '.' (not only dots)"
    )]
    InvalidId(String),
    /// No container has this id.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// `create` with an id that is taken.
    #[error("container {0} already exists")]
    AlreadyExists(String),
    /// A file could not be read, written or locked.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// state.json is not what this runtime writes.
    #[error("corrupt state file {path}: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What the runtime keeps about a container between commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    /// Container id.
    pub id: String,
    /// Status as of the last command that changed it (the live status can be "stopped"
    /// already; see `lifecycle`).
    pub status: ContainerState,
    /// The host process that represents the container (the sandbox process for VMs).
    pub pid: Option<i32>,
    /// That process's start time (`/proc/<pid>/stat`), to notice a reused pid.
    pub pid_start_time: Option<u64>,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Absolute rootfs path.
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339.
    pub created: String,
    /// The config's annotations.
    pub annotations: BTreeMap<String, String>,
    /// Which backend runs the container (`vm`, or `host-process` in test builds).
    pub backend: String,
    /// Exit status of the container's process, when known.
    pub exit_status: Option<i32>,
    /// Uid of the user who created it.
    pub owner_uid: u32,
}

/// Checks a container id as runc does: `[A-Za-z0-9_+.-]+`, not `.` or `..`.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.');
    if id.is_empty() || id.len() > 1024 || !id.chars().all(ok_char) || id.chars().all(|c| c == '.')
    {
        return Err(StateError::InvalidId(id.to_string()));
    }
    Ok(())
}

/// The directory holding every container's state.
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    /// Opens (creating, mode 0700) the state root.
    pub fn open(root: &Path) -> Result<StateStore, StateError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io_err("create", root))?;
        Ok(StateStore {
            root: root.to_path_buf(),
        })
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<id>`.
    pub fn container_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        Ok(self.root.join(id))
    }

    /// Makes the directory of a new container and locks it; fails if the id is taken.
    pub fn create(&self, id: &str) -> Result<ContainerLock, StateError> {
        let dir = self.container_dir(id)?;
        match std::fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StateError::AlreadyExists(id.to_string()))
            }
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
        let lock_path = dir.join(LOCK_FILE);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&lock_path)
            .map_err(io_err("create", &lock_path))?;
        flock(&file, &lock_path)?;
        Ok(ContainerLock {
            id: id.to_string(),
            dir,
            _file: file,
        })
    }

    /// Locks an existing container, waiting for another command that holds it.
    pub fn lock(&self, id: &str) -> Result<ContainerLock, StateError> {
        let dir = self.container_dir(id)?;
        let lock_path = dir.join(LOCK_FILE);
        loop {
            let file = match File::open(&lock_path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StateError::NotFound(id.to_string()))
                }
                Err(e) => return Err(io_err("open", &lock_path)(e)),
            };
            flock(&file, &lock_path)?;
            // The holder may have deleted the container (and another `create` may have made a
            // new one with this id): the lock counts only if it is still the file at the path.
            let held = file.metadata().map_err(io_err("stat", &lock_path))?;
            match std::fs::metadata(&lock_path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(ContainerLock {
                        id: id.to_string(),
                        dir,
                        _file: file,
                    })
                }
                Ok(_) => continue,
                Err(_) => return Err(StateError::NotFound(id.to_string())),
            }
        }
    }

    /// Reads a container's record without locking.
    pub fn load(&self, id: &str) -> Result<ContainerRecord, StateError> {
        let dir = self.container_dir(id)?;
        read_record(&dir, id)
    }

    /// Ids of all containers with a record, sorted.
    pub fn ids(&self) -> Result<Vec<String>, StateError> {
        let entries = std::fs::read_dir(&self.root).map_err(io_err("read", &self.root))?;
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(STATE_FILE).is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| validate_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

fn read_record(dir: &Path, id: &str) -> Result<ContainerRecord, StateError> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StateError::NotFound(id.to_string()))
        }
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    serde_json::from_slice(&text).map_err(|source| StateError::Corrupt { path, source })
}

fn flock(file: &File, path: &Path) -> Result<(), StateError> {
    loop {
        // SAFETY: flock(2) on an open file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(io_err("lock", path)(e));
        }
    }
}

/// An exclusive lock on one container's directory; released when dropped.
#[derive(Debug)]
pub struct ContainerLock {
    id: String,
    dir: PathBuf,
    _file: File,
}

impl ContainerLock {
    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `<root>/<id>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the record.
    pub fn load(&self) -> Result<ContainerRecord, StateError> {
        read_record(&self.dir, &self.id)
    }

    /// Writes the record atomically.
    pub fn save(&self, record: &ContainerRecord) -> Result<(), StateError> {
        let path = self.dir.join(STATE_FILE);
        let text = serde_json::to_vec(record).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        crate::host::write_atomic(&path, &text).map_err(io_err("write", &path))
    }

    /// Writes a file into the container directory atomically.
    pub fn write_file(&self, name: &str, data: &[u8]) -> Result<(), StateError> {
        let path = self.dir.join(name);
        crate::host::write_atomic(&path, data).map_err(io_err("write", &path))
    }

    /// Removes the container directory (the lock is held until this returns).
    pub fn remove(self) -> Result<(), StateError> {
        std::fs::remove_dir_all(&self.dir).map_err(io_err("remove", &self.dir))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    fn record(id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            status: ContainerState::Creating,
            pid: None,
            pid_start_time: None,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "2026-01-01T00:00:00.000000000Z".into(),
            annotations: BTreeMap::new(),
            backend: "host-process".into(),
            exit_status: None,
            owner_uid: 0,
        }
    }

    #[test]
    fn ids_follow_runc_rules() {
        for ok in ["a", "abc-123", "A_b+c.d", "..a", "x".repeat(200).as_str()] {
            validate_id(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "ä", "a\n"] {
            assert!(
                matches!(validate_id(bad), Err(StateError::InvalidId(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn create_save_load_list_and_remove() {
        let root = tempfile::tempdir().unwrap();
        let store = StateStore::open(&root.path().join("state")).unwrap();
        let lock = store.create("c1").unwrap();
        lock.save(&record("c1")).unwrap();
        assert!(matches!(
            store.create("c1"),
            Err(StateError::AlreadyExists(_))
        ));
        drop(lock);
        let mut r = store.load("c1").unwrap();
        assert_eq!(r, record("c1"));
        let lock = store.lock("c1").unwrap();
        r.status = ContainerState::Created;
        r.pid = Some(7);
        lock.save(&r).unwrap();
        assert_eq!(lock.load().unwrap(), r);
        drop(lock);
        store.create("c0").unwrap().save(&record("c0")).unwrap();
        // A directory without a record (a create in progress, or junk) is not listed.
        std::fs::create_dir(store.root().join("junk")).unwrap();
        assert_eq!(store.ids().unwrap(), vec!["c0", "c1"]);
        store.lock("c1").unwrap().remove().unwrap();
        assert!(matches!(store.load("c1"), Err(StateError::NotFound(_))));
        assert!(matches!(store.lock("c1"), Err(StateError::NotFound(_))));
        assert!(matches!(
            store.lock("../etc"),
            Err(StateError::InvalidId(_))
        ));
    }

    #[test]
    fn a_corrupt_record_is_reported() {
        let root = tempfile::tempdir().unwrap();
        let store = StateStore::open(root.path()).unwrap();
        let lock = store.create("c").unwrap();
        lock.write_file(STATE_FILE, b"{not json").unwrap();
        let err = store.load("c").unwrap_err();
        assert!(err.to_string().contains("corrupt state file"), "{err}");
    }

    #[test]
    fn a_second_command_waits_for_the_lock_and_sees_a_delete() {
        let root = tempfile::tempdir().unwrap();
        let store = StateStore::open(root.path()).unwrap();
        let lock = store.create("c").unwrap();
        lock.save(&record("c")).unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let (s2, b2) = (store.clone(), barrier.clone());
        let waiter = std::thread::spawn(move || {
            b2.wait();
            s2.lock("c").map(|_| ())
        });
        barrier.wait();
        std::thread::sleep(Duration::from_millis(100));
        // The waiter is blocked in flock; deleting the container releases it into NotFound.
        lock.remove().unwrap();
        let result = waiter.join().unwrap();
        assert!(matches!(result, Err(StateError::NotFound(_))), "{result:?}");
    }

    #[test]
    fn a_lock_on_a_deleted_and_recreated_id_is_the_new_one() {
        let root = tempfile::tempdir().unwrap();
        let store = StateStore::open(root.path()).unwrap();
        let lock = store.create("c").unwrap();
        lock.save(&record("c")).unwrap();
        let (s2, started) = (store.clone(), Arc::new(Barrier::new(2)));
        let b2 = started.clone();
        let waiter = std::thread::spawn(move || {
            b2.wait();
            s2.lock("c").and_then(|l| l.load())
        });
        started.wait();
        std::thread::sleep(Duration::from_millis(100));
        lock.remove().unwrap();
        let again = store.create("c").unwrap();
        let mut r = record("c");
        r.pid = Some(99);
        again.save(&r).unwrap();
        drop(again);
        // Either NotFound (it looked in between) or the new record, never the old lock.
        match waiter.join().unwrap() {
            Ok(rec) => assert_eq!(rec.pid, Some(99)),
            Err(e) => assert!(matches!(e, StateError::NotFound(_)), "{e}"),
        }
    }
}
