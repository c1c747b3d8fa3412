//! `zvm-oci-agent`: PID 1 of an OCI container VM (or a host process for tests).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use oci_agent::transport::{Transport, UnixTransport, VsockTransport};
use oci_agent::{pid1, Agent, AgentConfig, Exit};

/// zvm's OCI guest agent: runs one container and relays its stdio to the host.
///
/// As PID 1 of a VM it mounts /proc, /sys, /dev, /run and cgroup2, listens on vsock and powers
/// the VM off after Shutdown. With --unix-socket it runs as a host process (tests) and exits
/// when the connection ends.
#[derive(Debug, Parser)]
#[command(name = "zvm-oci-agent", version)]
struct Cli {
    /// Listen on this Unix socket instead of vsock, and exit when the host disconnects.
    #[arg(long)]
    unix_socket: Option<PathBuf>,
    /// With --unix-socket: keep listening after the host disconnects, as inside a VM, instead of
    /// exiting (tests of reconnection).
    #[arg(long)]
    keep_listening: bool,
    /// vsock port to listen on.
    #[arg(long, default_value_t = agent_protocol::AGENT_VSOCK_PORT)]
    vsock_port: u32,
    /// Root of the cgroup v2 hierarchy.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "ZVM_AGENT_LOG", default_value = "info")]
    log: String,
}

fn serve<T: Transport>(cfg: AgentConfig, transport: T) -> Result<Exit, String> {
    let mut agent = Agent::new(cfg, transport).map_err(|e| e.to_string())?;
    agent.run().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // SAFETY: getpid has no preconditions.
    let pid1 = unsafe { libc::getpid() } == 1;
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // The kernel hands PID 1 whatever words of its command line it did not use.
        Err(_) if pid1 => Cli::parse_from(["zvm-oci-agent"]),
        Err(e) => e.exit(),
    };
    if pid1 {
        pid1::boot();
    } else {
        pid1::ensure_stdio();
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .init();
    let cfg = AgentConfig {
        cgroup_root: cli.cgroup_root.clone(),
        exit_on_disconnect: cli.unix_socket.is_some() && !cli.keep_listening,
        name: format!("zvm-oci-agent {}", env!("CARGO_PKG_VERSION")),
        default_env: std::env::var("GLIBC_TUNABLES")
            .map(|v| vec![format!("GLIBC_TUNABLES={v}")])
            .unwrap_or_default(),
        in_vm: pid1,
        // Made before the VM can be saved as a template, so every clone's container finds
        // it ready.
        spare_netns: if pid1 {
            oci_agent::spare_netns::make()
                .map_err(|e| tracing::warn!("no spare network namespace: {e}"))
                .ok()
                .map(std::sync::Arc::new)
        } else {
            None
        },
    };
    let result = match &cli.unix_socket {
        Some(path) => UnixTransport::bind(path)
            .map_err(|e| format!("listen on {}: {e}", path.display()))
            .and_then(|t| serve(cfg, t)),
        None => VsockTransport::bind(cli.vsock_port)
            .map_err(|e| format!("listen on vsock port {}: {e}", cli.vsock_port))
            .and_then(|t| serve(cfg, t)),
    };
    let code = match &result {
        Ok(exit) => {
            tracing::info!("agent done: {exit:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    };
    if pid1 {
        pid1::power_off();
    }
    code
}
