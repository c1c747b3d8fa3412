//! The runc-compatible command line (`zvm-runc ...` and `zvm oci ...`).
//!
//! Global options go before the command, as with runc: `zvm-runc --root DIR --log FILE
//! --log-format json create --bundle B ID`. Errors print `<name>: <message>` on stderr (and
//! go to the `--log` file when there is one) and exit with status 1; usage errors exit 2.
//!
//! Test-only: in a build with the cargo feature `test-backend` (this crate's tests; never a
//! release or installed binary), `ZVM_RUNC_BACKEND=host-process` makes new containers run
//! directly on the host without any isolation (see [`crate::backend`]); other builds refuse
//! that name.

use crate::lifecycle::{CheckpointRequest, CreateRequest, LifecycleError, Runtime, StateView};
use crate::logging::{LogError, LogFormat};
use crate::signal::SignalError;
use clap::{Args, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Default state root.
pub const DEFAULT_ROOT: &str = "/run/zvm-runc";

/// The git commit this binary was built from, or "unknown".
pub const COMMIT: &str = match option_env!("ZVM_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Global options and the command.
#[derive(Debug, Clone, Args)]
pub struct OciArgs {
    /// Directory for the containers' state.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Write logs to this file instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Format of log lines.
    #[arg(long, value_enum, default_value = "text", value_name = "FORMAT")]
    pub log_format: LogFormat,
    /// Log debug messages.
    #[arg(long)]
    pub debug: bool,
    /// Accepted for compatibility (containerd passes it) and ignored: cgroups live in the VM.
    #[arg(long)]
    pub systemd_cgroup: bool,
    /// Print the version, commit and runtime spec version.
    #[arg(short = 'v', long)]
    pub version: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Option<OciCommand>,
}

impl OciArgs {
    /// Whether the command is one of the hidden ones this runtime runs itself (the
    /// sandbox, the exec relay): their standard error is the container's, so they log to
    /// the container's `sandbox.log` and the caller must not install a logger on stderr.
    pub fn is_internal(&self) -> bool {
        matches!(
            self.command,
            Some(OciCommand::Sandbox { .. } | OciCommand::ExecRelay { .. })
        )
    }
}

/// The commands.
#[derive(Debug, Clone, Subcommand)]
pub enum OciCommand {
    /// Create a container from a bundle; its program waits for `start`.
    #[command(args_override_self = true)]
    Create(CreateArgs),
    /// Run the program of a created container.
    Start {
        /// Container id.
        id: String,
    },
    /// Print a container's state as JSON.
    State {
        /// Container id.
        id: String,
    },
    /// Send a signal (default SIGTERM) to a container's init process.
    Kill {
        /// Send the signal to all of the container's processes.
        #[arg(short, long)]
        all: bool,
        /// Container id.
        id: String,
        /// Signal name (TERM, SIGKILL, RTMIN+1) or number.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a stopped container (any container with --force).
    Delete {
        /// Kill the container first if it is not stopped; no error if it does not exist.
        #[arg(short, long)]
        force: bool,
        /// Container id.
        id: String,
    },
    /// Create, start and wait for a container, then delete it; exits with its status.
    #[command(args_override_self = true)]
    Run(RunArgs),
    /// Run another process in a container.
    Exec(ExecArgs),
    /// List the processes of a container.
    Ps {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        format: Format,
        /// Container id.
        id: String,
    },
    /// List containers.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        format: Format,
        /// Print only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a default config.json (a shell on a terminal) into the bundle directory.
    Spec {
        /// Bundle directory.
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// A spec for a rootless container (user namespace mapping the caller to root).
        #[arg(long)]
        rootless: bool,
    },
    /// Print what this runtime supports, as JSON.
    Features,
    /// Internal: the sandbox process of one container (started by `create`; runs its VM).
    #[command(name = "__sandbox", hide = true)]
    Sandbox {
        /// The container's state directory.
        container_dir: PathBuf,
    },
    /// Internal: the host process standing for a detached exec (started by `exec --detach`).
    #[command(name = "__exec", hide = true)]
    ExecRelay {
        /// The container's state directory.
        container_dir: PathBuf,
        /// The request file `exec --detach` wrote there.
        request: PathBuf,
    },
    /// Make a bundle (rootfs/ + config.json) from an OCI image layout directory.
    Unpack(crate::image::cli::UnpackArgs),
    /// Freeze every process of a container (its whole VM).
    Pause {
        /// Container id.
        id: String,
    },
    /// Thaw a paused container.
    Resume {
        /// Container id.
        id: String,
    },
    /// Save a running container (its whole VM, memory and root disk) to a directory; it
    /// is stopped and deleted afterwards unless --leave-running. A flag given twice counts
    /// once (podman passes --leave-running twice).
    #[command(args_override_self = true)]
    Checkpoint(crate::cli_checkpoint::CheckpointArgs),
    /// Bring a container back from a checkpoint (running as it was); waits for it unless
    /// --detach, as `run` does.
    #[command(args_override_self = true)]
    Restore(crate::cli_checkpoint::RestoreArgs),
}

/// Output formats of `ps` and `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
}

/// `create` options.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Bundle directory (default: the current directory).
    #[arg(short, long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// Write the container's pid to this file.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to (process.terminal: true).
    #[arg(long, value_name = "SOCK")]
    pub console_socket: Option<PathBuf>,
    /// Accepted for compatibility; the VM has its own root.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for compatibility; the VM has its own keyring.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Accepted for compatibility; must be 0 (descriptors cannot cross into a VM).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Container id.
    pub id: String,
}

/// `run` options.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    create: CreateArgs,
    /// Return once the container runs instead of waiting for it.
    #[arg(short, long)]
    pub detach: bool,
}

/// `exec` options.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// JSON file with the process (runtime spec `process` object); replaces the command.
    #[arg(short, long, value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// Give the process a terminal (sent to --console-socket).
    #[arg(short, long)]
    pub tty: bool,
    /// Return at once, leaving the process running.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the process's pid to this file.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to (with --tty).
    #[arg(long, value_name = "SOCK")]
    pub console_socket: Option<PathBuf>,
    /// Working directory in the container.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// User as `UID[:GID]`.
    #[arg(short, long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Container id.
    pub id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A lifecycle operation failed.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// A bad signal argument.
    #[error(transparent)]
    Signal(#[from] SignalError),
    /// The log file could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Arguments that do not fit together.
    #[error("{0}")]
    Usage(String),
    /// Reading or writing a file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// `unpack` failed.
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    /// `exec --process` is not a valid process object.
    #[error("{path} is not a valid OCI process: {source}")]
    ProcessFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

/// `[current executable, prefix...]`: how a binary re-runs itself for the VM sandbox process
/// (`zvm-runc`: `["__sandbox"]`, `zvm`: `["oci", "__sandbox"]`).
pub fn self_launcher(prefix: &[&str]) -> Vec<OsString> {
    let exe = std::env::current_exe()
        .map(OsString::from)
        .unwrap_or_else(|_| OsString::from("/proc/self/exe"));
    std::iter::once(exe)
        .chain(prefix.iter().map(OsString::from))
        .collect()
}

/// The three `--version` lines.
pub fn version_text(name: &str) -> String {
    format!(
        "{name} version {}\ncommit: {COMMIT}\nspec: {}\n",
        env!("CARGO_PKG_VERSION"),
        crate::lifecycle::OCI_VERSION
    )
}

/// Runs a parsed command line; `name` prefixes error messages, `launcher` runs the sandbox
/// process.
pub fn run(args: OciArgs, name: &str, launcher: Vec<OsString>) -> ExitCode {
    if args.version {
        print!("{}", version_text(name));
        return ExitCode::SUCCESS;
    }
    let Some(command) = args.command.clone() else {
        eprintln!("{name}: give a command (see {name} --help)");
        return ExitCode::from(2);
    };
    if let OciCommand::Sandbox { container_dir } = &command {
        // Before anything starts a thread: the sandbox sets up its own signal handling.
        return crate::sandbox::sandbox_main(container_dir);
    }
    if let OciCommand::ExecRelay {
        container_dir,
        request,
    } = &command
    {
        // Likewise: the relay blocks the signals it forwards before starting threads.
        return crate::sandbox::exec_relay_main(container_dir, request);
    }
    let guard = match crate::logging::init(args.log.as_deref(), args.log_format, args.debug) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(1);
        }
    };
    match dispatch(&args, command, launcher) {
        Ok(code) => code,
        Err(e) => {
            if guard.to_file() {
                tracing::error!("{e}");
            }
            eprintln!("{name}: {e}");
            ExitCode::from(1)
        }
    }
}

fn runtime(args: &OciArgs, launcher: Vec<OsString>) -> Result<Runtime, CliError> {
    Ok(Runtime::new(&args.root, launcher)?)
}

fn create_request(a: &CreateArgs, detached: bool) -> Result<CreateRequest, CliError> {
    if a.preserve_fds > 0 {
        return Err(CliError::Usage(
            "--preserve-fds is not supported: descriptors cannot cross into a VM".into(),
        ));
    }
    if a.no_pivot || a.no_new_keyring {
        tracing::debug!(
            "--no-pivot / --no-new-keyring accepted and ignored (the container has its own VM)"
        );
    }
    Ok(CreateRequest {
        bundle: a.bundle.clone().unwrap_or_else(|| PathBuf::from(".")),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        detached,
    })
}

fn exit_code(status: i32) -> ExitCode {
    ExitCode::from(status.clamp(0, 255) as u8)
}

fn dispatch(
    args: &OciArgs,
    command: OciCommand,
    launcher: Vec<OsString>,
) -> Result<ExitCode, CliError> {
    if args.systemd_cgroup {
        tracing::debug!("--systemd-cgroup accepted and ignored");
    }
    match command {
        OciCommand::Create(a) => {
            runtime(args, launcher)?.create(&a.id, &create_request(&a, true)?)?;
        }
        OciCommand::Start { id } => runtime(args, launcher)?.start(&id)?,
        OciCommand::State { id } => {
            let view = runtime(args, launcher)?.state(&id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&view).unwrap_or_default()
            );
        }
        OciCommand::Kill { all, id, signal } => {
            let sig = crate::signal::parse_signal(&signal)?;
            runtime(args, launcher)?.kill(&id, sig, all)?;
        }
        OciCommand::Delete { force, id } => runtime(args, launcher)?.delete(&id, force)?,
        OciCommand::Run(a) => {
            let status = runtime(args, launcher)?
                .run(&a.create.id, &create_request(&a.create, a.detach)?)?;
            return Ok(exit_code(status));
        }
        OciCommand::Exec(a) => return exec(args, a, launcher),
        OciCommand::Ps { format, id } => {
            let pids = runtime(args, launcher)?.ps(&id)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string(&pids).unwrap_or_default()),
                Format::Table => {
                    println!("PID");
                    for pid in pids {
                        println!("{pid}");
                    }
                }
            }
        }
        OciCommand::List { format, quiet } => {
            let views = runtime(args, launcher)?.list()?;
            if quiet {
                views.iter().for_each(|v| println!("{}", v.id));
            } else {
                match format {
                    Format::Json => {
                        println!("{}", serde_json::to_string(&views).unwrap_or_default())
                    }
                    Format::Table => print!("{}", list_table(&views)),
                }
            }
        }
        OciCommand::Spec { bundle, rootless } => write_spec(&bundle, rootless)?,
        OciCommand::Features => {
            let v = crate::templates::features(env!("CARGO_PKG_VERSION"), COMMIT);
            let text = crate::templates::to_indented_json(&v, b"    ")
                .map_err(|e| CliError::Usage(e.to_string()))?;
            println!("{text}");
        }
        OciCommand::Sandbox { container_dir } => {
            return Ok(crate::sandbox::sandbox_main(&container_dir))
        }
        OciCommand::ExecRelay {
            container_dir,
            request,
        } => return Ok(crate::sandbox::exec_relay_main(&container_dir, &request)),
        OciCommand::Unpack(a) => crate::image::cli::run_unpack(&a)?,
        OciCommand::Pause { id } => runtime(args, launcher)?.pause(&id)?,
        OciCommand::Resume { id } => runtime(args, launcher)?.resume(&id)?,
        OciCommand::Checkpoint(a) => {
            a.criu.note_ignored();
            let req = CheckpointRequest {
                image_path: a.image_path.clone(),
                leave_running: a.leave_running,
            };
            runtime(args, launcher)?.checkpoint(&a.id, &req)?;
        }
        OciCommand::Restore(a) => {
            a.criu.note_ignored();
            let req = CreateRequest {
                bundle: a.bundle.clone().unwrap_or_else(|| PathBuf::from(".")),
                pid_file: a.pid_file.clone(),
                console_socket: a.console_socket.clone(),
                detached: a.detach,
            };
            let status = runtime(args, launcher)?.restore(&a.id, &req, &a.image_path)?;
            return Ok(exit_code(status));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_spec(bundle: &Path, rootless: bool) -> Result<(), CliError> {
    let path = bundle.join(crate::bundle::CONFIG_NAME);
    if path.exists() {
        return Err(CliError::Usage(format!(
            "{} exists; remove it first",
            path.display()
        )));
    }
    // SAFETY: getuid(2)/getgid(2) cannot fail.
    let ids = rootless.then(|| unsafe { (libc::getuid(), libc::getgid()) });
    let text =
        crate::templates::default_spec_text(ids).map_err(|e| CliError::Usage(e.to_string()))?;
    std::fs::write(&path, text).map_err(|source| CliError::Io {
        action: "write",
        path,
        source,
    })
}

/// runc's `list` table: ID PID STATUS BUNDLE CREATED OWNER.
fn list_table(views: &[StateView]) -> String {
    let mut rows = vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
        .map(String::from)
        .to_vec()];
    for v in views {
        rows.push(vec![
            v.id.clone(),
            v.pid.to_string(),
            v.status.to_string(),
            v.bundle.display().to_string(),
            v.created.clone(),
            v.owner.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| (rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0) + 3).max(12))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 5 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[path = "cli_exec.rs"]
mod exec_command;
use exec_command::exec;
pub use exec_command::exec_process;
#[cfg(test)]
use exec_command::parse_user;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "cli_tests.rs"]
mod tests;
