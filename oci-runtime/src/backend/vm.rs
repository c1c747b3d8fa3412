//! The real backend: every container is a micro-VM run by its sandbox process
//! ([`crate::sandbox`]). The sandbox process is `state.pid`; commands reach it through its
//! control socket in the container directory.

use super::{
    BackendError, BackendStatus, ContainerBackend, ContainerRef, CreateOptions, ExecOutcome,
    ExecRequest,
};
use crate::sandbox::{
    self, GuestArtifacts, SandboxClient, SandboxConfig, SandboxError, SandboxStatus,
};
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

/// How long `delete` waits for a stopped container's sandbox process to finish shutting the
/// VM down before its files are removed.
const SANDBOX_EXIT_WAIT: Duration = Duration::from_secs(10);

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

    /// Starts the container's sandbox process (restoring the checkpoint in `restore_from`
    /// when given) and returns its pid once the container exists.
    fn launch(
        &self,
        c: &ContainerRef<'_>,
        opts: &CreateOptions,
        restore_from: Option<std::path::PathBuf>,
    ) -> Result<i32, BackendError> {
        let artifacts = GuestArtifacts::locate().map_err(err)?;
        let cfg = SandboxConfig {
            id: c.id.to_string(),
            bundle: c.bundle.to_path_buf(),
            spec: c.spec.clone(),
            container_dir: c.dir.to_path_buf(),
            console_socket: opts.console_socket.clone(),
            artifacts,
            launcher: self.launcher.clone(),
            restore_from,
            jail: sandbox::jail_wanted(),
        };
        let pid = sandbox::create(&cfg).map_err(err)?;
        i32::try_from(pid)
            .map_err(|_| BackendError::Sandbox(format!("sandbox pid {pid} out of range")))
    }
}

/// Whether the sandbox of the container in `dir` runs jailed (its config says so).
fn sandbox_jailed(dir: &Path) -> bool {
    std::fs::read(dir.join(sandbox::CONFIG_FILE))
        .ok()
        .and_then(|text| serde_json::from_slice::<SandboxConfig>(&text).ok())
        .is_some_and(|cfg| cfg.jail)
}

fn err(e: SandboxError) -> BackendError {
    BackendError::Sandbox(e.to_string())
}

fn client(c: &ContainerRef<'_>) -> Result<SandboxClient, BackendError> {
    SandboxClient::connect(c.dir).map_err(err)
}

impl ContainerBackend for VmBackend {
    fn name(&self) -> &'static str {
        "vm"
    }

    fn create(&self, c: &ContainerRef<'_>, opts: &CreateOptions) -> Result<i32, BackendError> {
        self.launch(c, opts, None)
    }

    fn restore(
        &self,
        c: &ContainerRef<'_>,
        opts: &CreateOptions,
        image: &Path,
    ) -> Result<i32, BackendError> {
        sandbox::CheckpointManifest::read(image).map_err(err)?;
        let image = std::path::absolute(image)
            .map_err(BackendError::io(format!("resolve {}", image.display())))?;
        self.launch(c, opts, Some(image))
    }

    fn pause(&self, c: &ContainerRef<'_>) -> Result<(), BackendError> {
        client(c)?.pause().map_err(err)
    }

    fn resume(&self, c: &ContainerRef<'_>) -> Result<(), BackendError> {
        client(c)?.resume().map_err(err)
    }

    fn checkpoint(
        &self,
        c: &ContainerRef<'_>,
        image: &Path,
        leave_running: bool,
    ) -> Result<(), BackendError> {
        let image = std::path::absolute(image)
            .map_err(BackendError::io(format!("resolve {}", image.display())))?;
        if !sandbox_jailed(c.dir) {
            return client(c)?.checkpoint(&image, leave_running).map_err(err);
        }
        // A jailed sandbox writes only in its own directory: the checkpoint is staged there.
        let staging = sandbox::checkpoint_staging_dir(c.dir);
        let _ = std::fs::remove_dir_all(&staging);
        client(c)?
            .checkpoint(&staging, leave_running)
            .map_err(err)?;
        sandbox::collect_staged(&staging, &image).map_err(err)
    }

    fn start(&self, c: &ContainerRef<'_>) -> Result<(), BackendError> {
        client(c)?.start().map_err(err)
    }

    fn kill(&self, c: &ContainerRef<'_>, signal: i32, all: bool) -> Result<(), BackendError> {
        match client(c).and_then(|mut cl| cl.kill(signal, all).map_err(err)) {
            Ok(()) => Ok(()),
            // A sandbox that cannot be reached (still booting, or stuck) dies with the VM.
            Err(e) if signal == libc::SIGKILL => match c.pid {
                Some(pid) if crate::host::process_alive(pid, c.pid_start_time) => {
                    tracing::debug!("{e}; killing sandbox process {pid}");
                    // SAFETY: kill(2) on the sandbox process, checked alive with its start time.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    Ok(())
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    fn status(&self, c: &ContainerRef<'_>) -> Result<BackendStatus, BackendError> {
        match SandboxClient::connect(c.dir).and_then(|mut cl| cl.status()) {
            Ok(SandboxStatus::Created) => Ok(BackendStatus::Created),
            Ok(SandboxStatus::Running) => Ok(BackendStatus::Running),
            Ok(SandboxStatus::Paused) => Ok(BackendStatus::Paused),
            Ok(SandboxStatus::Stopped { exit }) => Ok(BackendStatus::Stopped(Some(exit))),
            Err(e) => match sandbox::recorded_exit(c.dir) {
                Some(exit) => Ok(BackendStatus::Stopped(Some(exit))),
                None => Err(err(e)),
            },
        }
    }

    fn exec(
        &self,
        c: &ContainerRef<'_>,
        req: &ExecRequest<'_>,
    ) -> Result<ExecOutcome, BackendError> {
        if req.detach {
            // A relay process on the host stands for the process in the guest.
            let pid =
                sandbox::exec_detached(c.dir, &self.launcher, req.process, req.console_socket)
                    .map_err(err)?;
            let pid = i32::try_from(pid)
                .map_err(|_| BackendError::Sandbox(format!("exec relay pid {pid} out of range")))?;
            if let Some(path) = req.pid_file {
                crate::host::write_pid_file(path, pid)
                    .map_err(BackendError::io(format!("write {}", path.display())))?;
            }
            return Ok(ExecOutcome::Detached(pid));
        }
        if req.pid_file.is_some() {
            tracing::warn!("exec --pid-file: not written, the process runs in the container's VM");
        }
        let code = client(c)?
            .exec(req.process, req.console_socket)
            .map_err(err)?;
        Ok(ExecOutcome::Exited(code))
    }

    fn ps(&self, c: &ContainerRef<'_>) -> Result<Vec<i32>, BackendError> {
        client(c)?.ps().map_err(err)
    }

    fn wait(&self, c: &ContainerRef<'_>) -> Result<Option<i32>, BackendError> {
        let Some(pid) = c.pid else {
            return Ok(sandbox::recorded_exit(c.dir));
        };
        let mut forward = |sig: i32| {
            if let Err(e) = client(c).and_then(|mut cl| cl.kill(sig, false).map_err(err)) {
                tracing::debug!("forwarding signal {sig}: {e}");
            }
        };
        // The sandbox process exits with the container's status; the recorded status covers a
        // sandbox that is not our child.
        let status = super::wait_pid(pid, c.pid_start_time, &mut forward);
        Ok(sandbox::recorded_exit(c.dir).or(status))
    }

    fn delete(&self, c: &ContainerRef<'_>) -> Result<(), BackendError> {
        if let Some(pid) = c.pid {
            if !super::wait_gone(pid, c.pid_start_time, SANDBOX_EXIT_WAIT) {
                tracing::warn!(
                    "sandbox process {pid} of {} is still running; killing it",
                    c.id
                );
                // SAFETY: kill(2) on the sandbox process, checked alive with its start time.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                super::wait_gone(pid, c.pid_start_time, SANDBOX_EXIT_WAIT);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_detached_exec_writes_the_relays_pid_to_the_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        // A relay stand-in: reports the process started, then records its own pid.
        let relay = dir.path().join("relay.sh");
        std::fs::write(
            &relay,
            "#!/bin/sh\n[ \"$1\" = __exec ] || exit 9\necho '{\"ok\":true}' >&3\necho $$ > \"$2/relay.pid\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&relay, std::fs::Permissions::from_mode(0o755)).unwrap();
        let backend = VmBackend::new(vec![relay.into_os_string(), "__sandbox".into()]);
        let spec = crate::image::spec::default_spec();
        let c = ContainerRef {
            id: "c1",
            dir: dir.path(),
            bundle: dir.path(),
            rootfs: dir.path(),
            spec: &spec,
            pid: None,
            pid_start_time: None,
        };
        let pid_file = dir.path().join("exec.pid");
        let process = spec.process().clone().unwrap();
        let req = ExecRequest {
            process: &process,
            console_socket: None,
            detach: true,
            pid_file: Some(&pid_file),
        };
        let ExecOutcome::Detached(pid) = backend.exec(&c, &req).unwrap() else {
            panic!("not detached");
        };
        assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
        let mut status = 0;
        // SAFETY: waiting for our own child, the relay stand-in.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("relay.pid"))
                .unwrap()
                .trim(),
            pid.to_string(),
            "the pid is the relay's"
        );
    }
}
