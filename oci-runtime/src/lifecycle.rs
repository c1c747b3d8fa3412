//! The container lifecycle of the OCI runtime spec, over a [`ContainerBackend`] and the
//! [`StateStore`].
//!
//! States: `creating` -> `created` (create) -> `running` (start) -> `stopped` (the process
//! ended, or a start hook failed) -> gone (delete). `pause` and `resume` move a created or
//! running container to `paused` and back; `checkpoint` saves a running container and,
//! unless it is left running, destroys it (as runc does); `restore` brings one back from
//! its checkpoint. `start` needs `created`; `kill` needs `created`, `running` or `paused`; `delete` needs `stopped` unless forced (then the container is
//! killed with SIGKILL first). A record says `created` or `running` until a command notices
//! that the container's process has ended: the live status is always computed from the
//! process and the backend, never trusted from the record alone.
//!
//! Hooks (see [`crate::hooks`]) run on the host: `prestart`, `createRuntime` and
//! `createContainer` at the end of `create`, once the container's environment exists (state
//! `created`, as state.md defines it after lifecycle step 2 and as the runtime-tools suite
//! checks; a failure destroys the container, runs `poststop` and fails `create`), `startContainer` in `start` before the
//! program runs (state `created`; a failure kills the container, which is then `stopped`, and
//! fails `start`), `poststart` after it runs (state `running`; failures warn), `poststop` in
//! `delete` after the container is destroyed (state `stopped`; failures warn).

use crate::backend::{
    BackendError, BackendKind, BackendStatus, ContainerBackend, ContainerRef, CreateOptions,
};
use crate::bundle::{Bundle, BundleError};
use crate::hooks::{run_hooks, run_hooks_warn, HookError, HookKind};
use crate::host::{process_alive, rfc3339, write_pid_file, ProcStat};
use crate::state::ContainerState;
use crate::state::{ContainerLock, ContainerRecord, StateError, StateStore, SPEC_FILE};
use oci_spec::runtime::Spec;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::oci_state::{hook_state, user_name, view};
pub use crate::oci_state::{StateView, OCI_VERSION};
pub use checkpoint::CheckpointRequest;

/// How long `delete --force` waits for a killed container to stop.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Errors of lifecycle operations.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The bundle is unusable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// A hook failed.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The operation is not allowed in the container's status.
    #[error("container {id} is {status}: {op} needs a {needed} container")]
    WrongState {
        /// Container id.
        id: String,
        /// Its status.
        status: ContainerState,
        /// The refused operation.
        op: &'static str,
        /// The statuses it accepts.
        needed: &'static str,
    },
    /// `delete` of a container that is not stopped, without `--force`.
    #[error("cannot delete container {id}: it is {status}; stop it first or use --force")]
    NotStopped {
        /// Container id.
        id: String,
        /// Its status.
        status: ContainerState,
    },
    /// `process.terminal` and `--console-socket` do not fit together.
    #[error("{0}")]
    Console(&'static str),
    /// The pid file could not be written.
    #[error("cannot write pid file {path}: {source}")]
    PidFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The container's saved config is unreadable.
    #[error("cannot read the saved config of container {id}: {reason}")]
    SavedSpec {
        /// Container id.
        id: String,
        /// What went wrong.
        reason: String,
    },
    /// The container did not stop after SIGKILL.
    #[error("container {0} did not stop within 10 s of SIGKILL")]
    StillRunning(String),
}

/// What `create` and `run` take.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Write the container's pid here.
    pub pid_file: Option<PathBuf>,
    /// Where to send the pty master when `process.terminal` is true.
    pub console_socket: Option<PathBuf>,
    /// Whether the caller returns once the container is created/started (`create`, `run
    /// --detach`) rather than waiting for it (`run`).
    pub detached: bool,
}

/// A container's record and the config it was created with.
struct Loaded {
    rec: ContainerRecord,
    spec: Spec,
    dir: PathBuf,
}

impl Loaded {
    fn cref(&self) -> ContainerRef<'_> {
        ContainerRef {
            id: &self.rec.id,
            dir: &self.dir,
            bundle: &self.rec.bundle,
            rootfs: &self.rec.rootfs,
            spec: &self.spec,
            pid: self.rec.pid,
            pid_start_time: self.rec.pid_start_time,
        }
    }
}

/// The runtime: a state root, and which backend runs containers.
pub struct Runtime {
    store: StateStore,
    launcher: Vec<OsString>,
    fixed: Option<Arc<dyn ContainerBackend>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("root", &self.store.root())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime whose state lives under `root`. New containers use the backend named by
    /// `ZVM_RUNC_BACKEND` (the VM by default), existing ones the backend that created them;
    /// `launcher` runs the VM sandbox process.
    pub fn new(root: &Path, launcher: Vec<OsString>) -> Result<Runtime, LifecycleError> {
        Ok(Runtime {
            store: StateStore::open(root)?,
            launcher,
            fixed: None,
        })
    }

    /// A runtime that runs every container with `backend` (tests, embedding).
    pub fn with_backend(
        root: &Path,
        backend: Arc<dyn ContainerBackend>,
    ) -> Result<Runtime, LifecycleError> {
        Ok(Runtime {
            store: StateStore::open(root)?,
            launcher: Vec::new(),
            fixed: Some(backend),
        })
    }

    /// The state store.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    fn backend_of(&self, name: Option<&str>) -> Result<Arc<dyn ContainerBackend>, BackendError> {
        if let Some(b) = &self.fixed {
            return Ok(b.clone());
        }
        let kind = match name {
            Some(n) => BackendKind::parse(n)?,
            None => BackendKind::from_env()?,
        };
        Ok(kind.instantiate(&self.launcher))
    }

    fn loaded(&self, rec: ContainerRecord) -> Result<Loaded, LifecycleError> {
        let dir = self.store.container_dir(&rec.id)?;
        let path = dir.join(SPEC_FILE);
        let saved = |reason: String| LifecycleError::SavedSpec {
            id: rec.id.clone(),
            reason,
        };
        let text = std::fs::read(&path).map_err(|e| saved(format!("{}: {e}", path.display())))?;
        let spec =
            serde_json::from_slice(&text).map_err(|e| saved(format!("{}: {e}", path.display())))?;
        Ok(Loaded { rec, spec, dir })
    }

    /// The live status: the record's, unless the container's process has ended or the
    /// backend reports otherwise.
    fn live_status(&self, c: &Loaded, backend: &dyn ContainerBackend) -> ContainerState {
        match c.rec.status {
            ContainerState::Created | ContainerState::Running => {}
            other => return other,
        }
        match backend_view(c, backend) {
            Some(BackendStatus::Created) => ContainerState::Created,
            Some(BackendStatus::Running) => ContainerState::Running,
            Some(BackendStatus::Paused) => ContainerState::Paused,
            Some(BackendStatus::Stopped(_)) => ContainerState::Stopped,
            None => c.rec.status,
        }
    }

    /// `create`: loads the bundle, sets the container up to `created`, runs the create hooks
    /// and writes the pid file.
    pub fn create(&self, id: &str, req: &CreateRequest) -> Result<ContainerRecord, LifecycleError> {
        crate::state::validate_id(id)?;
        let bundle = Bundle::load(&req.bundle)?;
        let terminal = crate::bundle::wants_terminal(&bundle.spec);
        if terminal && req.detached && req.console_socket.is_none() {
            return Err(LifecycleError::Console(
                "process.terminal is true but there is no --console-socket to send the pty to",
            ));
        }
        if !terminal && req.console_socket.is_some() {
            return Err(LifecycleError::Console(
                "--console-socket needs process.terminal: true in config.json",
            ));
        }
        let backend = self.backend_of(None)?;
        let (lock, mut c) = self.record_new(id, bundle, backend.name())?;
        let opts = CreateOptions {
            console_socket: req.console_socket.clone(),
        };
        let pid = match backend.create(&c.cref(), &opts) {
            Ok(pid) => pid,
            Err(e) => {
                let _ = backend.delete(&c.cref());
                let _ = lock.remove();
                return Err(e.into());
            }
        };
        c.rec.pid = Some(pid);
        c.rec.pid_start_time = ProcStat::read(pid).map(|s| s.start_time);
        let finish = (|| -> Result<(), LifecycleError> {
            lock.save(&c.rec)?;
            let state = hook_state(&c.rec, ContainerState::Created);
            let hooks = c.spec.hooks().as_ref();
            for kind in [
                HookKind::Prestart,
                HookKind::CreateRuntime,
                HookKind::CreateContainer,
            ] {
                run_hooks(hooks, kind, &state)?;
            }
            c.rec.status = ContainerState::Created;
            lock.save(&c.rec)?;
            if let Some(path) = &req.pid_file {
                write_pid_file(path, pid).map_err(|source| LifecycleError::PidFile {
                    path: path.clone(),
                    source,
                })?;
            }
            Ok(())
        })();
        if let Err(e) = finish {
            tracing::debug!("create of {id} failed, destroying it: {e}");
            self.stop_now(&c, backend.as_ref());
            let _ = backend.delete(&c.cref());
            let _ = lock.remove();
            run_hooks_warn(
                c.spec.hooks().as_ref(),
                HookKind::Poststop,
                &hook_state(&c.rec, ContainerState::Stopped),
            );
            return Err(e);
        }
        Ok(c.rec)
    }

    /// Makes the state of a new container `id` from `bundle` (status `creating`, its
    /// config saved beside it); the lock holds it until the backend has made it.
    fn record_new(
        &self,
        id: &str,
        bundle: Bundle,
        backend: &str,
    ) -> Result<(ContainerLock, Loaded), LifecycleError> {
        let lock = self.store.create(id)?;
        let spec_json =
            serde_json::to_vec_pretty(&bundle.spec).map_err(|e| LifecycleError::SavedSpec {
                id: id.to_string(),
                reason: e.to_string(),
            })?;
        let rec = ContainerRecord {
            id: id.to_string(),
            status: ContainerState::Creating,
            pid: None,
            pid_start_time: None,
            bundle: bundle.path.clone(),
            rootfs: bundle.rootfs.clone(),
            created: rfc3339(SystemTime::now()),
            annotations: bundle
                .spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            backend: backend.to_string(),
            exit_status: None,
            // SAFETY: getuid(2) cannot fail.
            owner_uid: unsafe { libc::getuid() },
        };
        let c = Loaded {
            rec,
            spec: bundle.spec,
            dir: lock.dir().to_path_buf(),
        };
        let setup = lock
            .write_file(SPEC_FILE, &spec_json)
            .and_then(|()| lock.save(&c.rec));
        if let Err(e) = setup {
            let _ = lock.remove();
            return Err(e.into());
        }
        Ok((lock, c))
    }

    /// Kills the container with SIGKILL and waits (up to [`KILL_WAIT`]) until it is stopped.
    fn stop_now(&self, c: &Loaded, backend: &dyn ContainerBackend) -> bool {
        if let Err(e) = backend.kill(&c.cref(), libc::SIGKILL, true) {
            tracing::debug!("SIGKILL to {}: {e}", c.rec.id);
        }
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            if let Some(pid) = c.rec.pid {
                let mut status = 0;
                // SAFETY: waitpid(2) with WNOHANG: reaps the process if it is our child.
                unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            }
            if matches!(backend_view(c, backend), Some(BackendStatus::Stopped(_))) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn lock_loaded(
        &self,
        id: &str,
    ) -> Result<(ContainerLock, Loaded, Arc<dyn ContainerBackend>), LifecycleError> {
        let lock = self.store.lock(id)?;
        let c = self.loaded(lock.load()?)?;
        let backend = self.backend_of(Some(&c.rec.backend))?;
        Ok((lock, c, backend))
    }

    /// `start`: runs the user's program of a created container.
    pub fn start(&self, id: &str) -> Result<(), LifecycleError> {
        let (lock, mut c, backend) = self.lock_loaded(id)?;
        let status = self.live_status(&c, backend.as_ref());
        if status != ContainerState::Created {
            return Err(LifecycleError::WrongState {
                id: id.into(),
                status,
                op: "start",
                needed: "created",
            });
        }
        let hooks = c.spec.hooks().clone();
        if let Err(e) = run_hooks(
            hooks.as_ref(),
            HookKind::StartContainer,
            &hook_state(&c.rec, status),
        ) {
            self.stop_now(&c, backend.as_ref());
            c.rec.status = ContainerState::Stopped;
            lock.save(&c.rec)?;
            return Err(e.into());
        }
        backend.start(&c.cref())?;
        c.rec.status = ContainerState::Running;
        lock.save(&c.rec)?;
        run_hooks_warn(
            hooks.as_ref(),
            HookKind::Poststart,
            &hook_state(&c.rec, ContainerState::Running),
        );
        Ok(())
    }

    /// `kill`: sends `signal` to a created or running container (to all its processes with
    /// `all`).
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), LifecycleError> {
        let (_lock, c, backend) = self.change_state(
            id,
            "kill",
            &[
                ContainerState::Created,
                ContainerState::Running,
                ContainerState::Paused,
            ],
            "created, running or paused",
        )?;
        backend.kill(&c.cref(), signal, all)?;
        Ok(())
    }

    /// `delete`: destroys a stopped container (any container with `force`, killing it first)
    /// and runs the poststop hooks. With `force`, a container that does not exist is not an
    /// error.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), LifecycleError> {
        let (lock, c, backend) = match self.lock_loaded(id) {
            Ok(x) => x,
            Err(LifecycleError::State(StateError::NotFound(_))) if force => {
                return self.remove_leftover(id);
            }
            Err(
                e @ (LifecycleError::SavedSpec { .. }
                | LifecycleError::State(StateError::Corrupt { .. })),
            ) if force => {
                tracing::warn!("{e}; removing the container directory");
                return self.remove_leftover(id);
            }
            Err(e) => return Err(e),
        };
        let status = self.live_status(&c, backend.as_ref());
        if status != ContainerState::Stopped {
            if !force {
                return Err(LifecycleError::NotStopped {
                    id: id.into(),
                    status,
                });
            }
            if c.rec.pid.is_some() && !self.stop_now(&c, backend.as_ref()) {
                return Err(LifecycleError::StillRunning(id.into()));
            }
        }
        self.destroy(lock, &c, backend.as_ref(), force)
    }

    /// Releases what the backend holds for a stopped container (its failure is an error
    /// unless `lenient`, then only a warning), removes its state and runs the poststop hooks.
    fn destroy(
        &self,
        lock: ContainerLock,
        c: &Loaded,
        backend: &dyn ContainerBackend,
        lenient: bool,
    ) -> Result<(), LifecycleError> {
        if let Err(e) = backend.delete(&c.cref()) {
            if !lenient {
                return Err(e.into());
            }
            tracing::warn!("{e}");
        }
        lock.remove()?;
        run_hooks_warn(
            c.spec.hooks().as_ref(),
            HookKind::Poststop,
            &hook_state(&c.rec, ContainerState::Stopped),
        );
        Ok(())
    }

    fn remove_leftover(&self, id: &str) -> Result<(), LifecycleError> {
        let dir = self.store.container_dir(id)?;
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::Io {
                action: "remove",
                path: dir,
                source: e,
            }
            .into()),
            _ => Ok(()),
        }
    }

    /// `state`: the live state of one container.
    pub fn state(&self, id: &str) -> Result<StateView, LifecycleError> {
        let c = self.loaded(self.store.load(id)?)?;
        let backend = self.backend_of(Some(&c.rec.backend))?;
        let status = self.live_status(&c, backend.as_ref());
        Ok(view(&c.rec, status, String::new()))
    }

    /// `list`: the live state of every container (unreadable ones are skipped with a
    /// warning), with owner names.
    pub fn list(&self) -> Result<Vec<StateView>, LifecycleError> {
        let mut out = Vec::new();
        for id in self.store.ids()? {
            match self.state(&id) {
                Ok(mut v) => {
                    if let Ok(rec) = self.store.load(&id) {
                        v.owner = user_name(rec.owner_uid);
                    }
                    out.push(v)
                }
                Err(LifecycleError::State(StateError::NotFound(_))) => {}
                Err(e) => tracing::warn!("skipping {id}: {e}"),
            }
        }
        Ok(out)
    }
}

/// What the container's process and the backend say: stopped when the process is gone,
/// else the backend's status (`None` when the backend cannot tell).
fn backend_view(c: &Loaded, backend: &dyn ContainerBackend) -> Option<BackendStatus> {
    let Some(pid) = c.rec.pid else {
        return Some(BackendStatus::Stopped(None));
    };
    if !process_alive(pid, c.rec.pid_start_time) {
        return Some(BackendStatus::Stopped(None));
    }
    match backend.status(&c.cref()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!("status of {}: {e}", c.rec.id);
            None
        }
    }
}

#[path = "lifecycle_checkpoint.rs"]
mod checkpoint;
#[path = "lifecycle_processes.rs"]
mod processes;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "lifecycle_tests.rs"]
mod tests;
