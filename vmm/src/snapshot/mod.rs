//! Snapshots: save a paused VM to a state file and a memory file, and restore it in a
//! new process.
//!
//! The state file ([`mod@file`]) holds one [`MicrovmState`]: the resources the VM was built
//! from (so the restoring process attaches the same devices at the same slots and IRQs),
//! every vCPU's architectural state, the VM's (irqchip, PIT, kvmclock) and every device's,
//! each a plain versioned struct saved beside its device. Guest memory goes to its own
//! file ([`memory`]): the RAM regions back to back, all-zero pages left as holes. A
//! restore maps that file privately (copy-on-write, loaded on demand), so VMs restored
//! from one snapshot share every page none of them has written.
//!
//! A diff snapshot writes only the pages written since the previous snapshot (by the
//! guest, as KVM's dirty log reports, or by zvm's devices, as the guest memory's dirty
//! bitmap reports) into an existing memory file, over the base it was made from.

pub mod create;
pub mod file;
pub mod memory;
pub mod restore;

pub use create::SnapshotHandle;
pub use file::read_state_file;
pub use restore::{restore_microvm, restore_microvm_with};

use crate::arch::state::{VcpuState, VmState};
use crate::devices::DevicesState;
use crate::resources::VmResources;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Everything a state file holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct MicrovmState {
    /// What the VM was built from (console and seccomp are the restoring process's own).
    /// Kept as JSON inside the state: its types skip absent optional fields when they
    /// serialize, which only a self-describing encoding reads back.
    #[serde(with = "resources_as_json")]
    pub resources: VmResources,
    /// Whether guest memory writes were being tracked (diff snapshots possible). A
    /// restore does not follow it: [`RestoreParams::track_dirty_pages`] decides.
    pub track_dirty_pages: bool,
    /// The VM's in-kernel devices and clock.
    pub vm: VmState,
    /// One per vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// The emulated devices.
    pub devices: DevicesState,
}

mod resources_as_json {
    use crate::resources::VmResources;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(resources: &VmResources, s: S) -> Result<S::Ok, S::Error> {
        serde_json::to_string(resources)
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VmResources, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// Full or diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SnapshotType {
    /// All of guest memory, into a new memory file.
    #[default]
    Full,
    /// Only the pages written since the previous snapshot, into an existing memory file.
    Diff,
}

/// What `create` is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSnapshotParams {
    /// Full or diff.
    pub snapshot_type: SnapshotType,
    /// Where the state file goes (replaced atomically).
    pub snapshot_path: PathBuf,
    /// Where guest memory goes: a new file for a full snapshot (replaced atomically), the
    /// base memory file to update in place for a diff (which must exist and have the
    /// guest memory's size: a diff into anything else is refused).
    pub mem_file_path: PathBuf,
}

/// What a snapshot wrote and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Size of the state file.
    pub state_bytes: u64,
    /// Guest memory pages written to the memory file.
    pub pages_written: u64,
    /// Bytes of guest memory written (the rest are holes or untouched).
    pub mem_bytes_written: u64,
    /// From the request to both files being durable.
    pub duration: Duration,
}

/// Per-clone things a restore changes so clones of one snapshot do not collide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreOverrides {
    /// `(drive_id, new backing file)`.
    pub drives: Vec<(String, PathBuf)>,
    /// `(iface_id, new host tap)`.
    pub net: Vec<(String, String)>,
    /// A new vsock Unix socket path.
    pub vsock_uds_path: Option<PathBuf>,
    /// virtio-fs shares served from another host directory (or another backend).
    pub fs: Vec<FsOverride>,
}

/// A virtio-fs share of the snapshot, changed for this clone (`fs_overrides` of
/// `PUT /snapshot/load`, `--fs-override` of `zvm run --restore`).
///
/// A snapshot of a VM with shares can be taken only while the guest has never sent a
/// request to any of them (probed, not mounted: a container template); the restore then
/// starts each share's backend afresh. A share whose backend zvm started (it has a
/// `shared_dir`) loses the snapshot's socket path: the caller of
/// [`restore::restore_microvm_with`] starts a new virtiofsd for `shared_dir` and fills
/// in `socket_path` (zvm does it for `zvm run --restore` and the API); a share that names
/// only an outside backend (`socket_path`) reconnects to that path unless overridden.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsOverride {
    /// The share, by its `fs_id` or its `tag` in the snapshot (an id or tag the snapshot
    /// lacks is an error).
    pub share: String,
    /// The host directory the new backend serves; `None` keeps the snapshot's. Must be a
    /// directory.
    pub shared_dir: Option<PathBuf>,
    /// Read-only or read-write; `None` keeps the snapshot's.
    pub read_only: Option<bool>,
    /// The socket of a backend the caller started itself (the snapshot's `shared_dir` is
    /// then dropped unless this override names one); `None`: the caller of
    /// [`restore::restore_microvm_with`] starts one for `shared_dir` in its hook.
    pub socket_path: Option<PathBuf>,
}

/// What a restore is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreParams {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// The memory file, mapped privately.
    pub mem_file_path: PathBuf,
    /// Per-clone overrides.
    pub overrides: RestoreOverrides,
    /// Start the vCPUs at once (else the VM is restored paused).
    pub resume: bool,
    /// Track written pages from the restore on (later diff snapshots); without it the
    /// restored VM does not track, whether or not the snapshotted one did.
    pub track_dirty_pages: bool,
    /// Seccomp filters on the restored VM's threads.
    pub seccomp: bool,
}

/// Why a snapshot could not be made or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state file is not a zvm snapshot, or not one this zvm reads.
    #[error("snapshot state file {path}: {reason}")]
    BadStateFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (version, checksum, truncation, decoding).
        reason: String,
    },
    /// The memory file does not fit the snapshot.
    #[error("snapshot memory file {path}: {reason}")]
    BadMemoryFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// This host cannot run the snapshot (CPU features, KVM capabilities).
    #[error("this host cannot restore the snapshot: {0}")]
    Incompatible(String),
    /// An override names something the snapshot does not have.
    #[error("restore override: {0}")]
    BadOverride(String),
    /// The VM is not in a state where this is allowed.
    #[error("{0}")]
    NotAllowed(String),
    /// Saving or restoring a piece of KVM state failed.
    #[error(transparent)]
    State(#[from] crate::arch::state::StateError),
    /// A device's state could not be saved or restored.
    #[error("device {device}: {reason}")]
    Device {
        /// Which device.
        device: String,
        /// What failed.
        reason: String,
    },
    /// Rebuilding the VM failed.
    #[error(transparent)]
    Build(#[from] crate::builder::BuildError),
    /// The backend of a virtio-fs share (virtiofsd) could not be started for the restore.
    #[error("virtio-fs backend: {0}")]
    FsBackend(String),
    /// Reading or writing a file.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl SnapshotError {
    /// Whether the error is about what was asked for (a bad or foreign file, an override,
    /// an incompatible host: exit status 2 for a command line) rather than a failure.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            SnapshotError::BadStateFile { .. }
                | SnapshotError::BadMemoryFile { .. }
                | SnapshotError::Incompatible(_)
                | SnapshotError::BadOverride(_)
                | SnapshotError::NotAllowed(_)
        )
    }
}
