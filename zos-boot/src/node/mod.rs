//! The node daemon (issue #8): turns deployment requests into micro-VMs booted from
//! flists, supervises them, persists them, and serves an HTTP JSON API.
//!
//! Layout of a state directory:
//! ```text
//! <state>/deployments/<name>.json   the persisted record (atomic writes)
//! <state>/vms/<name>/console.log    the VM's console and zvm's messages
//! <state>/vms/<name>/vm.pid         pid, start time and marker of the VM process
//! <state>/vms/<name>/disks/*.img    sparse extra disks
//! <state>/vms/<name>/work/          unpacked flist / root disk, or the root's own layer
//! <state>/vms/<name>/work/rootfs/upper/   its writes to a root over virtio-fs
//! <state>/vms/<name>/volumes/<vol>/ its volumes (shared into the container)
//! <state>/cache/                    flist-fetcher block cache and downloaded flists
//! <state>/cache/trees/<sha256>/     unpacked container flists (lower layers, read-only)
//! ```

pub mod api;
pub mod capacity;
pub mod core;
pub mod http;
pub mod network;
pub mod procs;
pub mod restart;
pub mod runner;
pub mod spec;
pub mod store;
mod supervisor;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use self::core::{Node, NodeConfig, NodeError};
pub use runner::{ProcessRunner, WorkloadRunner};
pub use spec::WorkloadSpec;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be set up.
    #[error("{what}: {source}")]
    Listen {
        /// Which listener.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The TCP listener settings are unsafe.
    #[error("{0}")]
    Insecure(String),
    /// The node could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Where the daemon listens.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// The Unix socket (always served, no token: guard it with file permissions).
    pub api_sock: PathBuf,
    /// An optional TCP address.
    pub tcp: Option<SocketAddr>,
    /// The bearer token TCP clients must send.
    pub token: Option<String>,
    /// Allow a non-loopback TCP address.
    pub allow_remote: bool,
}

impl Listeners {
    /// Refuses a non-loopback address without `allow_remote` and a token.
    pub fn check(&self) -> Result<(), ServeError> {
        if let Some(addr) = self.tcp {
            if !addr.ip().is_loopback() {
                if !self.allow_remote {
                    return Err(ServeError::Insecure(format!("--listen {addr} is not a loopback address: add --allow-remote (and a --token) to serve the API to the network")));
                }
                if self.token.as_deref().is_none_or(str::is_empty) {
                    return Err(ServeError::Insecure(format!("--listen {addr} is reachable from the network: a bearer --token is required")));
                }
            }
        }
        Ok(())
    }
}

fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    let err = |source| ServeError::Listen {
        what: format!("API socket {}", path.display()),
        source,
    };
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another daemon is serving this socket",
        )));
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Runs the daemon until SIGTERM or SIGINT. VMs keep running when it ends; the next
/// daemon on the same state directory re-adopts them.
pub async fn serve(cfg: NodeConfig, listeners: Listeners) -> Result<(), ServeError> {
    listeners.check()?;
    let unix = bind_unix(&listeners.api_sock)?;
    let tcp = match listeners.tcp {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen {
                    what: format!("TCP {addr}"),
                    source,
                })?,
        ),
        None => None,
    };
    let node = Node::start(cfg)?;
    tracing::info!(socket = %listeners.api_sock.display(), deployments = node.len(), "node daemon ready");
    let (quit_tx, quit_rx) = tokio::sync::watch::channel(false);
    let limits = http::Limits::default();
    let unix_task = tokio::spawn(http::serve(
        unix,
        api::router(node.clone(), limits.body),
        limits,
        quit_rx.clone(),
    ));
    let tcp_task = tcp.map(|listener| {
        let app = match &listeners.token {
            Some(t) if !t.is_empty() => {
                api::router_with_token(node.clone(), t.clone(), limits.body)
            }
            _ => api::router(node.clone(), limits.body),
        };
        tokio::spawn(http::serve(listener, app, limits, quit_rx.clone()))
    });
    wait_for_signal().await;
    tracing::info!("shutting down; VMs keep running");
    node.detach();
    let _ = quit_tx.send(true);
    let _ = unix_task.await;
    if let Some(t) = tcp_task {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(&listeners.api_sock);
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
