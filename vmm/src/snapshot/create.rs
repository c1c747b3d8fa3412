//! Taking a snapshot of a paused VM: the devices finish the requests they have in flight,
//! the vCPUs save their own state while parked, the devices are read under their locks
//! (the VMM loop serves none while paused), then the VM's state, the state file and guest
//! memory are written.

use super::memory as snapmem;
use super::{file, CreateSnapshotParams, MicrovmState, SnapshotError, SnapshotInfo, SnapshotType};
use crate::arch::state::VmState;
use crate::devices::DeviceRegistry;
use crate::memory::GuestMemoryMmap;
use crate::resources::VmResources;
use crate::vcpu::VcpuControl;
use kvm_ioctls::VmFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a running VM keeps so it can be snapshotted.
pub(crate) struct SnapshotParts {
    pub vm: Arc<VmFd>,
    pub control: Arc<VcpuControl>,
    pub vcpu_count: usize,
    pub mem: GuestMemoryMmap,
    pub devices: DeviceRegistry,
    /// What the VM was built from (absent for tiny test guests built step by step).
    pub resources: Option<VmResources>,
    pub track_dirty_pages: bool,
    pub irqchip: bool,
}

impl std::fmt::Debug for SnapshotParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SnapshotParts({} vCPUs, dirty tracking {})",
            self.vcpu_count, self.track_dirty_pages
        )
    }
}

/// Snapshots a running VM while it is paused; usable from any thread.
pub struct SnapshotHandle {
    parts: Arc<SnapshotParts>,
    /// One snapshot at a time.
    busy: Mutex<()>,
}

impl std::fmt::Debug for SnapshotHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotHandle({} vCPUs)", self.parts.vcpu_count)
    }
}

/// How long parked vCPUs get to save their state.
const VCPU_SAVE_TIMEOUT: Duration = Duration::from_secs(10);

impl SnapshotHandle {
    pub(crate) fn new(parts: Arc<SnapshotParts>) -> Self {
        SnapshotHandle {
            parts,
            busy: Mutex::new(()),
        }
    }

    /// Writes the paused VM's state file and memory file. The VM stays paused.
    pub fn create(&self, params: &CreateSnapshotParams) -> Result<SnapshotInfo, SnapshotError> {
        let _one = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let start = Instant::now();
        let parts = &self.parts;
        if !parts.control.is_paused() {
            return Err(SnapshotError::NotAllowed(
                "a snapshot needs a paused VM: pause it first (PATCH /vm {\"state\": \"Paused\"})"
                    .into(),
            ));
        }
        let resources = parts.resources.clone().ok_or_else(|| {
            SnapshotError::NotAllowed(
                "this VM was not built from resources; it cannot be snapshotted".into(),
            )
        })?;
        if params.snapshot_type == SnapshotType::Diff && !parts.track_dirty_pages {
            return Err(SnapshotError::NotAllowed(
                "a diff snapshot needs dirty page tracking: boot with track_dirty_pages, or restore with enable_diff_snapshots".into(),
            ));
        }
        // A diff's base is checked before anything is written or the dirty log is read
        // (reading it restarts it: a refused diff must not lose pages for the next one).
        let diff_base = match params.snapshot_type {
            SnapshotType::Diff => Some(snapmem::open_diff_base(
                &params.mem_file_path,
                snapmem::memory_bytes(&parts.mem),
            )?),
            SnapshotType::Full => None,
        };
        // Requests still in flight (asynchronous disks) are finished first, so their
        // used-ring entries and interrupts are in the memory and irqchip state saved;
        // backends that stopped for it (virtio-fs) start again afterwards, whatever
        // became of the snapshot.
        let quiesced = parts
            .devices
            .quiesce()
            .map_err(|(device, reason)| SnapshotError::Device { device, reason });
        let result = quiesced.and_then(|()| self.save_quiesced(params, resources, diff_base));
        parts.devices.resume_after_snapshot();
        result.map(|written| SnapshotInfo {
            duration: start.elapsed(),
            ..written
        })
    }

    /// The rest of [`Self::create`], once the devices are quiesced.
    fn save_quiesced(
        &self,
        params: &CreateSnapshotParams,
        resources: VmResources,
        diff_base: Option<std::fs::File>,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let parts = &self.parts;
        let vcpus = parts
            .control
            .save_parked(parts.vcpu_count, VCPU_SAVE_TIMEOUT)
            .map_err(SnapshotError::NotAllowed)?;
        let vm = VmState::save(&parts.vm, parts.irqchip)?;
        let devices = parts.devices.save();
        let state = MicrovmState {
            resources,
            track_dirty_pages: parts.track_dirty_pages,
            vm,
            vcpus,
            devices,
        };
        let written = match &diff_base {
            None => {
                let written = snapmem::write_full(&parts.mem, &params.mem_file_path)?;
                if parts.track_dirty_pages {
                    // The new file is the base the next diff builds on.
                    snapmem::take_dirty_pages(&parts.vm, &parts.mem)?;
                }
                written
            }
            Some(base) => {
                let dirty = snapmem::take_dirty_pages(&parts.vm, &parts.mem)?;
                snapmem::write_diff(&parts.mem, &dirty, base, &params.mem_file_path)?
            }
        };
        let state_bytes = file::write_state_file(&params.snapshot_path, &state)?;
        Ok(SnapshotInfo {
            state_bytes,
            pages_written: written.pages,
            mem_bytes_written: written.bytes,
            duration: Duration::ZERO,
        })
    }
}
