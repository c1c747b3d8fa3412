//! Attaching virtio-fs devices, and the shareable guest memory they need.

use super::{BuildError, MicrovmBuilder, VirtioSlot};
use crate::devices::virtio::fs::Fs;
use crate::memory::{
    create_guest_memory, create_shared_guest_memory, GuestMemoryMmap, MemoryError,
};
use crate::resources::{FsConfig, VmResources};

/// Guest memory for `resources`: a memfd the vhost-user backends map when the VM has
/// virtio-fs shares, anonymous memory otherwise.
pub(crate) fn guest_memory(resources: &VmResources) -> Result<GuestMemoryMmap, MemoryError> {
    let size = resources.machine_config.mem_size_mib << 20;
    if resources.fs.is_empty() {
        create_guest_memory(size)
    } else {
        create_shared_guest_memory(size)
    }
}

impl MicrovmBuilder {
    /// A virtio-fs device for `fs`, whose backend listens on `fs.socket_path` (zvm fills
    /// it in when it starts virtiofsd for `fs.shared_dir`). The VM's memory must be
    /// shareable ([`guest_memory`]).
    pub fn attach_fs(&mut self, fs: &FsConfig) -> Result<VirtioSlot, BuildError> {
        let Some(socket) = &fs.socket_path else {
            return Err(BuildError::Fs {
                id: fs.fs_id.clone(),
                source: crate::devices::virtio::fs::FsError::NoBackend,
            });
        };
        let device =
            Fs::connect(&fs.fs_id, &fs.tag, 1, socket).map_err(|source| BuildError::Fs {
                id: fs.fs_id.clone(),
                source,
            })?;
        tracing::debug!(
            "virtio-fs {}: tag {}, backend {}",
            fs.fs_id,
            fs.tag,
            socket.display()
        );
        self.attach_virtio_mmio(Box::new(device))
    }
}
