//! The node API's HTTP server: hyper's HTTP/1 connections under a cap on open connections
//! and deadlines, so clients that connect and never finish a request (or trickle it)
//! cannot hold every slot. `axum::serve` has neither.
//!
//! - At most [`Limits::max_connections`] connections per listener; one more is closed at
//!   once, unanswered.
//! - A request's head must arrive within [`Limits::header`] (hyper's header read timeout,
//!   which also closes a connection idle that long between requests).
//! - Its body must arrive within [`Limits::body`] (the API's body layer, 408 otherwise).

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// The server's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections per listener.
    pub max_connections: usize,
    /// Time for a request's head (and the longest idle time between requests).
    pub header: Duration,
    /// Time for a request's body, once its head is in.
    pub body: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header: Duration::from_secs(10),
            body: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `quit` turns true; connections already open finish
/// on their own.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: Limits,
    mut quit: watch::Receiver<bool>,
) where
    L: axum::serve::Listener,
    L::Io: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            _ = quit.wait_for(|q| *q) => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = limits.max_connections,
                "node API: too many open connections; closing a new one"
            );
            drop(io);
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header)
                .serve_connection(TokioIo::new(io), service);
            if let Err(e) = connection.await {
                tracing::debug!("node API connection ended: {e}");
            }
            drop(slot);
        });
    }
}
