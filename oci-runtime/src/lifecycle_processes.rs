//! `ps`, `exec` and `run`: the container's processes once it exists.

use super::{CreateRequest, LifecycleError, Loaded, Runtime};
use crate::backend::{BackendStatus, ContainerBackend, ExecOutcome, ExecRequest};
use crate::state::ContainerState;
use oci_spec::runtime::Process;
use std::sync::Arc;

impl Runtime {
    /// Container `id` and its backend, if it is created or running (else `op` is refused).
    fn created_or_running(
        &self,
        id: &str,
        op: &'static str,
    ) -> Result<(Loaded, Arc<dyn ContainerBackend>), LifecycleError> {
        let c = self.loaded(self.store.load(id)?)?;
        let backend = self.backend_of(Some(&c.rec.backend))?;
        let status = self.live_status(&c, backend.as_ref());
        if !matches!(status, ContainerState::Created | ContainerState::Running) {
            return Err(LifecycleError::WrongState {
                id: id.into(),
                status,
                op,
                needed: "created or running",
            });
        }
        Ok((c, backend))
    }

    /// `ps`: pids of a created or running container's processes.
    pub fn ps(&self, id: &str) -> Result<Vec<i32>, LifecycleError> {
        let (c, backend) = self.created_or_running(id, "ps")?;
        Ok(backend.ps(&c.cref())?)
    }

    /// The process of the container's config (the base of `exec` processes).
    pub fn process_of(&self, id: &str) -> Result<Process, LifecycleError> {
        let c = self.loaded(self.store.load(id)?)?;
        Ok(c.spec.process().clone().unwrap_or_default())
    }

    /// `exec`: runs `process` in a created or running container.
    pub fn exec(&self, id: &str, req: &ExecRequest<'_>) -> Result<ExecOutcome, LifecycleError> {
        let (c, backend) = self.created_or_running(id, "exec")?;
        let _forward = (!req.detach).then(crate::forward::install);
        Ok(backend.exec(&c.cref(), req)?)
    }

    /// `run`: create, start, and (unless detached) wait for the container, forwarding
    /// signals to it, then delete it. Returns the container's exit status (0 when detached).
    pub fn run(&self, id: &str, req: &CreateRequest) -> Result<i32, LifecycleError> {
        let _forward = (!req.detached).then(crate::forward::install);
        self.create(id, req)?;
        if let Err(e) = self.start(id) {
            if let Err(d) = self.delete(id, true) {
                tracing::warn!("{d}");
            }
            return Err(e);
        }
        if req.detached {
            return Ok(0);
        }
        self.wait_and_delete(id)
    }

    /// Waits for the container's process to end, deletes the container and returns its
    /// exit status.
    pub(super) fn wait_and_delete(&self, id: &str) -> Result<i32, LifecycleError> {
        let c = self.loaded(self.store.load(id)?)?;
        let backend = self.backend_of(Some(&c.rec.backend))?;
        let waited = backend.wait(&c.cref());
        let exit = match waited {
            Ok(Some(code)) => code,
            Ok(None) => match backend.status(&c.cref()) {
                Ok(BackendStatus::Stopped(Some(code))) => code,
                _ => {
                    tracing::warn!("the exit status of container {id} is unknown");
                    255
                }
            },
            Err(e) => {
                let _ = self.delete(id, true);
                return Err(e.into());
            }
        };
        self.delete(id, true)?;
        Ok(exit)
    }
}
