//! Runs OCI containers inside zvm micro-VMs (see issue #7).
//!
//! youki-style: a library under a thin runc-compatible command line ([`cli`]). The
//! [`lifecycle`] implements the runtime spec's state machine over a
//! [`backend::ContainerBackend`] (a micro-VM per container, or a host-process test double in
//! builds with the `test-backend` feature), with the [`state`] directory, [`hooks`] and
//! [`bundle`] checks.

pub mod backend;
pub mod bundle;
pub mod cli;
pub mod cli_checkpoint;
pub mod console;
pub mod forward;
pub mod hooks;
pub mod host;
pub mod image;
pub mod lifecycle;
pub mod logging;
pub mod oci_state;
pub mod sandbox;
pub mod signal;
pub mod state;
pub mod templates;
