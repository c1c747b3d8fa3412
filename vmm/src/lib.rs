//! zvm's virtual machine monitor.
//!
//! A KVM micro-VM monitor built on the rust-vmm crates. The flow mirrors Firecracker's:
//! a validated [`resources::VmResources`] goes into [`builder::build_microvm`], which owns
//! the boot order (memory, irqchip, kernel, devices, vCPUs) and returns a running
//! [`vm::RunningVm`]. Every VM exit reaches devices only through a typed [`bus::Bus`];
//! every thread zvm starts installs its own seccomp filter ([`seccomp`]) first.
//!
//! This crate knows nothing of containers, deployments or image lists.

pub mod arch;
pub mod builder;
pub mod bus;
pub mod devices;
pub mod host;
pub mod kvm_stats;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod metrics;
pub mod rate_limiter;
pub mod resources;
pub mod seccomp;
pub mod snapshot;
pub mod timerfd;
pub mod vcpu;
pub mod vm;

pub use builder::{build_microvm, BuildError};
pub use resources::{ConsoleConfig, MachineConfig, VmResources};
pub use vm::{RunningVm, VmOutcome};
