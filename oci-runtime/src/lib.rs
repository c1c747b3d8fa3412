//! Runs OCI containers inside zvm micro-VMs (see issue #7). Not built yet.

pub mod image;
pub mod sandbox;
