//! What runs a zvm VM, shared by the `zvm` front end and the lean VMM executable
//! `zvm-vmm` (both in the zvm crate): the hand-over between them ([`handover`]), the
//! Firecracker-style API monitor that drives a VM ([`api`]), run metrics, stop signals, the
//! terminal, how a VM's end is reported, the virtiofsd daemons of virtio-fs shares and
//! the log output.
//!
//! It links no flist, OCI, node or API-client code: whatever process runs a VM through
//! this crate keeps little but the VMM resident.

pub mod api;
pub mod handover;
pub mod lean_log;
pub mod log_output;
pub mod private_tmp;
pub mod run_metrics;
pub mod stop_signals;
pub mod terminal;
pub mod virtiofs;
pub mod vm_end;
