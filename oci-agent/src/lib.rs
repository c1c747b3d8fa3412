//! `zvm-oci-agent`: runs one OCI container inside a zvm micro-VM, driven by the host over the
//! [`agent_protocol`] (vsock port 1024), or as a host process over a Unix socket (tests).
//!
//! Layers:
//! - [`plan`]: pure translation of config.json into a [`plan::ContainerPlan`] (namespaces,
//!   mounts, devices, cgroup writes, rlimits, capabilities, user, env), unit-tested;
//! - [`setup`]: applies a plan inside the new container process through the [`sys::Sys`]
//!   trait (real calls: [`sys::LinuxSys`]); the call order is unit-tested with a recorder;
//! - `spawn`: clones the container process (parked until Start) and exec'd processes;
//! - [`agent`]: the single-threaded poll loop (connection, signalfd, stdio relay, reaping);
//! - [`transport`]: vsock or Unix listener; [`pid1`]: the VM init duties ([`netcfg`]: the
//!   further interfaces' addresses).

pub mod agent;
mod fdio;
pub mod netcfg;
pub mod pid1;
pub mod plan;
pub mod setup;
pub mod spare_netns;
mod spawn;
pub mod sys;
#[cfg(test)]
mod testsys;
pub mod transport;

pub use agent::{Agent, AgentConfig, AgentError, Exit};
pub use spawn::SpawnError;
