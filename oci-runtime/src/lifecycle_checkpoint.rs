//! `pause`, `resume`, `checkpoint` and `restore`, and the state check they share with
//! `kill`.

use super::{LifecycleError, Loaded, Runtime};
use crate::backend::ContainerBackend;
use crate::backend::CreateOptions;
use crate::bundle::Bundle;
use crate::host::{write_pid_file, ProcStat};
use crate::state::ContainerLock;
use crate::state::ContainerState;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What `checkpoint` takes.
#[derive(Debug, Clone, Default)]
pub struct CheckpointRequest {
    /// Where the checkpoint goes (made if missing).
    pub image_path: PathBuf,
    /// Keep the container running afterwards (else it is stopped and destroyed).
    pub leave_running: bool,
}

impl Runtime {
    /// Locks container `id` for `op`, which needs it in one of the `accepted` states
    /// (`needed` says which, for the error).
    pub(super) fn change_state(
        &self,
        id: &str,
        op: &'static str,
        accepted: &[ContainerState],
        needed: &'static str,
    ) -> Result<(ContainerLock, Loaded, Arc<dyn ContainerBackend>), LifecycleError> {
        let (lock, c, backend) = self.lock_loaded(id)?;
        let status = self.live_status(&c, backend.as_ref());
        if !accepted.contains(&status) {
            return Err(LifecycleError::WrongState {
                id: id.into(),
                status,
                op,
                needed,
            });
        }
        Ok((lock, c, backend))
    }

    /// `pause`: freezes a created or running container (its whole VM).
    pub fn pause(&self, id: &str) -> Result<(), LifecycleError> {
        let (_lock, c, backend) = self.change_state(
            id,
            "pause",
            &[ContainerState::Created, ContainerState::Running],
            "created or running",
        )?;
        Ok(backend.pause(&c.cref())?)
    }

    /// `resume`: thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<(), LifecycleError> {
        let (_lock, c, backend) =
            self.change_state(id, "resume", &[ContainerState::Paused], "paused")?;
        Ok(backend.resume(&c.cref())?)
    }

    /// `checkpoint`: saves a running (or paused) container into `req.image_path`; unless
    /// `req.leave_running`, the container is then stopped and destroyed, as runc does.
    pub fn checkpoint(&self, id: &str, req: &CheckpointRequest) -> Result<(), LifecycleError> {
        let (lock, c, backend) = self.change_state(
            id,
            "checkpoint",
            &[ContainerState::Running, ContainerState::Paused],
            "running or paused",
        )?;
        backend.checkpoint(&c.cref(), &req.image_path, req.leave_running)?;
        if req.leave_running {
            return Ok(());
        }
        self.destroy(lock, &c, backend.as_ref(), true)
    }

    /// `restore`: makes container `id` from the bundle in `req` and the checkpoint in
    /// `image`, running again as it was; then, unless `req.detached`, waits for it, deletes
    /// it and returns its exit status (as `run` does).
    pub fn restore(
        &self,
        id: &str,
        req: &super::CreateRequest,
        image: &Path,
    ) -> Result<i32, LifecycleError> {
        crate::state::validate_id(id)?;
        let _forward = (!req.detached).then(crate::forward::install);
        let bundle = Bundle::load(&req.bundle)?;
        let backend = self.backend_of(None)?;
        let (lock, mut c) = self.record_new(id, bundle, backend.name())?;
        let opts = CreateOptions {
            console_socket: req.console_socket.clone(),
        };
        let pid = match backend.restore(&c.cref(), &opts, image) {
            Ok(pid) => pid,
            Err(e) => {
                let _ = backend.delete(&c.cref());
                let _ = lock.remove();
                return Err(e.into());
            }
        };
        c.rec.pid = Some(pid);
        c.rec.pid_start_time = ProcStat::read(pid).map(|s| s.start_time);
        c.rec.status = ContainerState::Running;
        lock.save(&c.rec)?;
        if let Some(path) = &req.pid_file {
            write_pid_file(path, pid).map_err(|source| LifecycleError::PidFile {
                path: path.clone(),
                source,
            })?;
        }
        drop(lock);
        if req.detached {
            return Ok(0);
        }
        self.wait_and_delete(id)
    }
}
