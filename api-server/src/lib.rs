//! zvm's Firecracker-compatible HTTP API, served over a Unix socket.
//!
//! This crate knows nothing about KVM: it parses and validates requests ([`http`],
//! [`routes`], [`model`]) into typed [`ApiRequest`]s, hands each to a [`VmmController`],
//! and writes the answer back. [`ApiServer`] serves many connections on one thread
//! (`zvm_api`) with a non-blocking epoll loop, under its own seccomp filter. [`client`] is
//! the other side: one request per connection, for `zvm api` and tests.
//!
//! ```no_run
//! use api_server::{ApiRequest, ApiResponse, ApiServer, ApiServerConfig, ControllerError, VmmController};
//!
//! struct Monitor;
//! impl VmmController for Monitor {
//!     fn handle(&mut self, request: ApiRequest) -> Result<ApiResponse, ControllerError> {
//!         match request {
//!             ApiRequest::PutBootSource(_) => Ok(ApiResponse::Empty),
//!             _ => Err(ControllerError::new("not supported yet")),
//!         }
//!     }
//! }
//!
//! let server = ApiServer::start(ApiServerConfig::new("/run/zvm.sock"), Monitor)?;
//! // ... later:
//! let _monitor: Monitor = server.stop()?;
//! # Ok::<(), api_server::ServerError>(())
//! ```

pub mod client;
pub mod controller;
pub mod http;
pub mod model;
pub mod routes;
pub mod seccomp;
pub mod server;

pub use controller::{ApiRequest, ApiResponse, ControllerError, VmmController};
pub use http::StatusCode;
pub use server::{ApiServer, ApiServerConfig, ServerError, DEFAULT_MAX_CONNECTIONS};
