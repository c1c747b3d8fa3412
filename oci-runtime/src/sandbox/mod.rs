//! The VM behind a container, host side.
//!
//! Every container runs in its own micro-VM. [`create`] starts a *sandbox process* (detached,
//! in its own session) through [`SandboxConfig::launcher`]; that process runs
//! [`sandbox_main`]:
//!
//! 1. turns the bundle's rootfs directory into an ext4 image (`mkfs.ext4 -d`) and the guest
//!    agent (`zvm-oci-agent`) into a small ext4 boot disk whose `/init` it is (booting from a
//!    disk reads the agent's pages as they are used; an initramfs would first be copied whole
//!    by emulated kernel code);
//! 2. boots the project's guest kernel with `vmm` as a library: the agent's disk as the root
//!    device, the rootfs image as a second virtio-blk disk (the agent makes a read-only
//!    root read-only once its mount points exist; with `zvm.rootfs=virtiofs` the disk is
//!    empty and the root comes over the container's virtio-fs share, see [`share`]),
//!    virtio-vsock, an entropy device, the serial console to
//!    `console.log`, vCPUs and memory from `linux.resources` ([`vm_size`]);
//! 3. connects to the agent over vsock (retrying until it listens), sends `Create`, and tells
//!    the waiting [`create`] call the outcome through a pipe;
//! 4. serves [`SandboxClient`] requests on `sandbox.sock` (start, kill, status, exec, ps),
//!    relays the container's stdio to the stdin/stdout/stderr it inherited (or a pty sent to
//!    the console socket when `process.terminal`), forwards the signals it receives;
//! 5. when the container's process exits: records the exit status in `exit.json`, asks the
//!    agent to shut down, stops the VM and exits with the container's exit status.
//!
//! Files in the container directory: [`CONFIG_FILE`], [`CONTROL_SOCKET`], [`VSOCK_SOCKET`],
//! [`CONSOLE_LOG`], [`EXIT_FILE`], [`ROOTFS_IMAGE`], [`AGENT_IMAGE`], [`LOG_FILE`].
//! The control protocol on `sandbox.sock` is described in the `control` module.

mod agent;
mod artifacts;
mod attached;
mod checkpoint;
mod control;
mod daemon;
mod detached;
mod disk;
mod jailing;
mod launch;
pub(crate) mod pty;
mod seccomp;
mod server;
pub mod share;
mod stdio;
pub mod template;
mod unix;
mod vm_guard;
mod vmconfig;
mod vmstart;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use agent::AgentError;
pub use artifacts::{
    GuestArtifacts, AGENT_BINARY, AGENT_ENV, INSTALL_DIR, KERNEL_ENV, KERNEL_FILE,
};
pub use attached::{
    agent_drives, guest_disk_device, run_attached, run_attached_with_network, AttachedRun,
    AGENT_DRIVE, ROOTFS_DRIVE,
};
pub use checkpoint::{
    collect_staged, staging_dir as checkpoint_staging_dir, CheckpointManifest, CHECKPOINT_MANIFEST,
};
pub use control::{
    recorded_exit, ControlReply, ControlRequest, ExecIo, SandboxClient, SandboxStatus,
};
pub use daemon::sandbox_main;
pub use detached::{exec_detached, exec_relay_main, EXEC_RELAY_SUBCOMMAND};
pub use disk::{make_agent_image, make_rootfs_image, ImageError};
pub use jailing::{jail_wanted, JAIL_DIR_ENV, JAIL_ENV, JAIL_IDS_ENV};
pub use launch::{create, READY_FD_ENV};
pub use vmconfig::{
    vm_resources, vm_size, TranslateError, VmFiles, VmSize, AGENT_BOOT_ARGS, ANNOTATION_MEMORY_MIB,
    ANNOTATION_VCPUS, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS, ROOTFS_DEVICE,
};

use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::PathBuf;

/// The sandbox's copy of its [`SandboxConfig`] (written by [`create`]).
pub const CONFIG_FILE: &str = "sandbox.json";
/// The control socket [`SandboxClient`] connects to.
pub const CONTROL_SOCKET: &str = "sandbox.sock";
/// The VM's vsock Unix socket (host side of the agent connection).
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// The guest's serial console.
pub const CONSOLE_LOG: &str = "console.log";
/// The container's exit status, written when its process ends ([`recorded_exit`]).
pub const EXIT_FILE: &str = "exit.json";
/// The rootfs as an ext4 image.
pub const ROOTFS_IMAGE: &str = "rootfs.ext4";
/// The agent's boot disk (ext4, `/init` is the agent).
pub const AGENT_IMAGE: &str = "agent.ext4";
/// The sandbox process's own notes (boot, agent, shutdown), one line each.
pub const LOG_FILE: &str = "sandbox.log";

/// Everything the sandbox process needs to run one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// Container id.
    pub id: String,
    /// Absolute path of the bundle.
    pub bundle: PathBuf,
    /// The bundle's config.json, already validated by the cli layer.
    pub spec: oci_spec::runtime::Spec,
    /// `<root>/<id>/`; exists; the sandbox's files go here.
    pub container_dir: PathBuf,
    /// Where to send the pty master when `process.terminal` is true.
    pub console_socket: Option<PathBuf>,
    /// Guest kernel and agent.
    pub artifacts: GuestArtifacts,
    /// Program and arguments that run [`sandbox_main`] in a new process; the container
    /// directory is appended (zvm-runc: `[exe, "__sandbox"]`, zvm: `[exe, "oci", "__sandbox"]`).
    pub launcher: Vec<OsString>,
    /// Restore the container from this checkpoint directory instead of creating it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<PathBuf>,
    /// Run the sandbox jailed (see [`jail_wanted`]).
    #[serde(default)]
    pub jail: bool,
}

/// Errors of the sandbox layer.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The guest kernel or agent could not be found.
    #[error("no guest {what} found: {detail}; set {env} to its path")]
    MissingArtifact {
        /// "kernel" or "agent".
        what: &'static str,
        /// The environment variable that names it.
        env: &'static str,
        /// Where it was looked for, or what is wrong with the given path.
        detail: String,
    },
    /// A file or socket operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The spec cannot be turned into a VM.
    #[error(transparent)]
    Translate(#[from] TranslateError),
    /// The rootfs image or the agent's disk could not be made.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The VM could not be built.
    #[error("cannot boot the VM: {0}")]
    Vm(#[from] vmm::BuildError),
    /// Talking to the guest agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The sandbox process reported a failure (or died) while creating the container.
    #[error("{0}")]
    Sandbox(String),
    /// No sandbox process serves this container (it has exited, or never started).
    #[error("no sandbox is running for {dir} ({reason})")]
    NotRunning {
        /// The container directory.
        dir: PathBuf,
        /// Why the control socket could not be reached.
        reason: String,
    },
    /// The sandbox refused a request (e.g. start when not created).
    #[error("{0}")]
    Refused(String),
    /// The control connection broke or carried something unexpected.
    #[error("sandbox control connection: {0}")]
    Control(String),
    /// The container's virtio-fs share could not be made or served.
    #[error(transparent)]
    Share(#[from] share::ShareError),
}

impl SandboxError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
        let what = what.into();
        move |source| SandboxError::Io { what, source }
    }
}
