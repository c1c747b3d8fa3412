//! The real backend: every container is a micro-VM run by a sandbox process.

use super::{
    BackendError, BackendStatus, ContainerBackend, ContainerRef, CreateOptions, ExecOutcome,
    ExecRequest,
};
use std::ffi::OsString;

/// Runs each container in its own micro-VM through the sandbox module.
#[derive(Debug, Clone)]
pub struct VmBackend {
    launcher: Vec<OsString>,
}

impl VmBackend {
    /// `launcher`: program and arguments that run the sandbox process (the container
    /// directory is appended).
    pub fn new(launcher: Vec<OsString>) -> VmBackend {
        VmBackend { launcher }
    }
}

fn not_yet() -> BackendError {
    BackendError::Unsupported("the VM backend is not built yet".into())
}

impl ContainerBackend for VmBackend {
    fn name(&self) -> &'static str {
        "vm"
    }
    fn create(&self, _c: &ContainerRef<'_>, _opts: &CreateOptions) -> Result<i32, BackendError> {
        let _ = &self.launcher;
        Err(not_yet())
    }
    fn start(&self, _c: &ContainerRef<'_>) -> Result<(), BackendError> {
        Err(not_yet())
    }
    fn kill(&self, _c: &ContainerRef<'_>, _signal: i32, _all: bool) -> Result<(), BackendError> {
        Err(not_yet())
    }
    fn status(&self, _c: &ContainerRef<'_>) -> Result<BackendStatus, BackendError> {
        Err(not_yet())
    }
    fn exec(
        &self,
        _c: &ContainerRef<'_>,
        _req: &ExecRequest<'_>,
    ) -> Result<ExecOutcome, BackendError> {
        Err(not_yet())
    }
    fn ps(&self, _c: &ContainerRef<'_>) -> Result<Vec<i32>, BackendError> {
        Err(not_yet())
    }
    fn wait(&self, _c: &ContainerRef<'_>) -> Result<Option<i32>, BackendError> {
        Err(not_yet())
    }
    fn delete(&self, _c: &ContainerRef<'_>) -> Result<(), BackendError> {
        Ok(())
    }
}
