//! `checkpoint` and `restore` options: runc's, with CRIU's options accepted. A checkpoint
//! here is the container's whole VM, so the options that tell CRIU how to treat parts of
//! a process tree (TCP connections, external Unix sockets, file locks, shell jobs,
//! namespaces, cgroups, LSM labels, lazy pages, page servers) have nothing to act on: the
//! VM keeps them all, as they were. They are accepted and ignored (logged at debug level).

use clap::Args;
use std::path::PathBuf;

/// CRIU's options that both verbs accept and that mean nothing for a whole VM.
#[derive(Debug, Clone, Default, Args)]
pub struct CriuOptions {
    /// Accepted; CRIU's scratch directory (a VM checkpoint needs none).
    #[arg(long, value_name = "DIR")]
    pub work_path: Option<PathBuf>,
    /// Accepted; the VM keeps its TCP connections as they are.
    #[arg(long)]
    pub tcp_established: bool,
    /// Accepted; the VM keeps its Unix sockets.
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// Accepted; the VM keeps its terminals.
    #[arg(long)]
    pub shell_job: bool,
    /// Accepted; the VM keeps its file locks.
    #[arg(long)]
    pub file_locks: bool,
    /// Accepted; cgroups live in the VM.
    #[arg(long, value_name = "MODE")]
    pub manage_cgroups_mode: Option<String>,
    /// Accepted; namespaces live in the VM.
    #[arg(long, value_name = "NS")]
    pub empty_ns: Vec<String>,
    /// Accepted; the memory file is written sparse already.
    #[arg(long)]
    pub auto_dedup: bool,
    /// Accepted; memory is restored on demand anyway (mapped copy-on-write).
    #[arg(long)]
    pub lazy_pages: bool,
}

/// `checkpoint` options.
#[derive(Debug, Clone, Args)]
pub struct CheckpointArgs {
    /// Where the checkpoint is written (made if missing).
    #[arg(long, value_name = "DIR", default_value = "checkpoint")]
    pub image_path: PathBuf,
    /// Keep the container running after the checkpoint.
    #[arg(long)]
    pub leave_running: bool,
    /// Accepted; a VM checkpoint is always whole (no pre-dump).
    #[arg(long)]
    pub pre_dump: bool,
    /// Accepted; a VM checkpoint is always whole.
    #[arg(long, value_name = "DIR")]
    pub parent_path: Option<PathBuf>,
    /// Accepted; no page server is used.
    #[arg(long, value_name = "ADDR")]
    pub page_server: Option<String>,
    /// Accepted; no status is reported on a descriptor.
    #[arg(long, value_name = "FD")]
    pub status_fd: Option<i32>,
    /// CRIU's options.
    #[command(flatten)]
    pub criu: CriuOptions,
    /// Container id.
    pub id: String,
}

/// `restore` options.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The checkpoint to restore.
    #[arg(long, value_name = "DIR", default_value = "checkpoint")]
    pub image_path: PathBuf,
    /// Bundle directory (default: the current directory).
    #[arg(short, long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// Return once the container runs instead of waiting for it.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the container's pid to this file.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to (process.terminal: true).
    #[arg(long, value_name = "SOCK")]
    pub console_socket: Option<PathBuf>,
    /// Accepted; the sandbox process is the container's process.
    #[arg(long)]
    pub no_subreaper: bool,
    /// Accepted; the VM has its own root.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted; LSM labels live in the VM.
    #[arg(long, value_name = "LABEL")]
    pub lsm_profile: Option<String>,
    /// Accepted; LSM labels live in the VM.
    #[arg(long, value_name = "CTX")]
    pub lsm_mount_context: Option<String>,
    /// CRIU's options.
    #[command(flatten)]
    pub criu: CriuOptions,
    /// Container id.
    pub id: String,
}

impl CriuOptions {
    /// Logs the options given, which have no effect on a VM checkpoint.
    pub fn note_ignored(&self) {
        tracing::debug!("CRIU options accepted and ignored for a VM checkpoint: {self:?}");
    }
}
