//! The stateless node (issue #8): the node daemon ([`node`]) that turns deployment
//! requests into micro-VMs booted from flists, and the flist-to-VM logic ([`flist_vm`])
//! it shares with `zvm run --flist`.

pub mod bytesize;
pub mod cli;
pub mod flist_vm;
pub mod image;
pub mod node;
