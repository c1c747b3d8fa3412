//! Checkpoints of a whole container VM: its snapshot (processes and memory included) and its
//! disks in one directory, restorable on this host or another with a compatible CPU.
//!
//! ```text
//! <image-path>/checkpoint.json   what the checkpoint holds (format, container, state)
//! <image-path>/vmstate, memory   the VM's snapshot
//! <image-path>/rootfs.ext4       the container's root disk as it was (sparse copy;
//!                                empty when the root came over virtio-fs)
//! <image-path>/agent.ext4        the agent's boot disk
//! ```

use super::vmconfig::{AGENT_DRIVE_ID, ROOTFS_DRIVE_ID};
use super::SandboxError;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;
use vmm::resources::DriveConfig;
use vmm::snapshot::{CreateSnapshotParams, SnapshotHandle, SnapshotType};
use vmm::vm::{PauseHandle, StopHandle};

/// The checkpoint's own description.
pub const CHECKPOINT_MANIFEST: &str = "checkpoint.json";
/// The snapshot's state file.
pub const CHECKPOINT_STATE: &str = "vmstate";
/// The snapshot's memory file.
pub const CHECKPOINT_MEMORY: &str = "memory";
/// The container's root disk.
pub const CHECKPOINT_ROOTFS: &str = "rootfs.ext4";
/// The agent's boot disk.
pub const CHECKPOINT_AGENT: &str = "agent.ext4";
/// An empty file podman and CRI-O look for before they restore a checkpoint (CRIU's
/// inventory); zvm's checkpoint does not need it.
pub const CRIU_INVENTORY: &str = "inventory.img";
/// The checkpoint format this zvm writes and reads.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// `checkpoint.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointManifest {
    /// [`CHECKPOINT_FORMAT`].
    pub format: u32,
    /// The zvm version that wrote it.
    pub zvm: String,
    /// The container's id when it was checkpointed.
    pub id: String,
    /// Whether its process had been started (else it was created, waiting for start).
    pub started: bool,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

impl CheckpointManifest {
    /// Reads and checks `<image>/checkpoint.json`, and that the other files are there.
    pub fn read(image: &Path) -> Result<CheckpointManifest, SandboxError> {
        let path = image.join(CHECKPOINT_MANIFEST);
        let bad = |reason: String| {
            SandboxError::Sandbox(format!(
                "{} is not a zvm checkpoint: {reason}",
                image.display()
            ))
        };
        let text = std::fs::read(&path).map_err(|e| bad(format!("{CHECKPOINT_MANIFEST}: {e}")))?;
        let manifest: CheckpointManifest = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("{CHECKPOINT_MANIFEST}: {e}")))?;
        if manifest.format != CHECKPOINT_FORMAT {
            return Err(bad(format!(
                "checkpoint format {} (zvm {}), this zvm reads format {CHECKPOINT_FORMAT}",
                manifest.format, manifest.zvm
            )));
        }
        for name in [
            CHECKPOINT_STATE,
            CHECKPOINT_MEMORY,
            CHECKPOINT_ROOTFS,
            CHECKPOINT_AGENT,
        ] {
            let meta =
                std::fs::metadata(image.join(name)).map_err(|e| bad(format!("{name}: {e}")))?;
            // A root over virtio-fs leaves the VM's root disk empty (the files stay in
            // the bundle's rootfs, which the restore shares again).
            if !meta.is_file() || (meta.len() == 0 && name != CHECKPOINT_ROOTFS) {
                return Err(bad(format!("{name} is empty or not a file")));
            }
        }
        Ok(manifest)
    }
}

/// The sandbox's hold on its running VM (the VM itself is with the thread waiting for it).
pub(crate) struct VmControl {
    pause: PauseHandle,
    snapshot: SnapshotHandle,
    stop: StopHandle,
    drives: Vec<DriveConfig>,
    paused: AtomicBool,
}

impl std::fmt::Debug for VmControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VmControl(paused: {})", self.is_paused())
    }
}

fn vm_err(what: &str) -> impl FnOnce(String) -> SandboxError + '_ {
    move |e| SandboxError::Sandbox(format!("cannot {what}: {e}"))
}

impl VmControl {
    /// Handles on `vm`, taken before it is handed to the thread that waits for it.
    pub(crate) fn of(vm: &vmm::RunningVm) -> Result<VmControl, SandboxError> {
        Ok(VmControl {
            pause: vm
                .pause_handle()
                .map_err(SandboxError::io("get a pause handle"))?,
            snapshot: vm
                .snapshot_handle()
                .map_err(SandboxError::io("get a snapshot handle"))?,
            stop: vm
                .stop_handle()
                .map_err(SandboxError::io("get a stop handle"))?,
            drives: vm.resources().map(|r| r.drives.clone()).unwrap_or_default(),
            paused: AtomicBool::new(false),
        })
    }

    /// Whether the sandbox paused the VM.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Pauses the VM (nothing if paused already).
    pub(crate) fn pause(&self) -> Result<(), SandboxError> {
        if !self.paused.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.pause.pause() {
                self.paused.store(false, Ordering::Release);
                return Err(vm_err("pause the VM")(e.0));
            }
        }
        Ok(())
    }

    /// Resumes the VM (nothing if it runs).
    pub(crate) fn resume(&self) {
        if self.paused.swap(false, Ordering::AcqRel) {
            self.pause.resume();
        }
    }

    /// Stops the VM.
    pub(crate) fn stop(&self) {
        let _ = self.stop.request_stop();
    }

    fn drive(&self, id: &str) -> Result<&Path, SandboxError> {
        self.drives
            .iter()
            .find(|d| d.drive_id == id)
            .map(|d| d.path_on_host.as_path())
            .ok_or_else(|| SandboxError::Sandbox(format!("the VM has no drive '{id}'")))
    }

    /// Writes a checkpoint of the VM into `image` (made if missing; what was there is
    /// replaced). The VM is paused for it and stays paused; the caller resumes or stops it.
    pub(crate) fn checkpoint(
        &self,
        image: &Path,
        id: &str,
        started: bool,
    ) -> Result<(), SandboxError> {
        std::fs::create_dir_all(image)
            .map_err(SandboxError::io(format!("create {}", image.display())))?;
        let _ = std::fs::remove_file(image.join(CHECKPOINT_MANIFEST));
        self.pause()?;
        let params = CreateSnapshotParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: image.join(CHECKPOINT_STATE),
            mem_file_path: image.join(CHECKPOINT_MEMORY),
        };
        self.snapshot
            .create(&params)
            .map_err(|e| vm_err("snapshot the VM")(e.to_string()))?;
        copy_sparse(self.drive(ROOTFS_DRIVE_ID)?, &image.join(CHECKPOINT_ROOTFS))?;
        copy_sparse(self.drive(AGENT_DRIVE_ID)?, &image.join(CHECKPOINT_AGENT))?;
        let manifest = CheckpointManifest {
            format: CHECKPOINT_FORMAT,
            zvm: env!("CARGO_PKG_VERSION").to_string(),
            id: id.to_string(),
            started,
            created: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| SandboxError::Sandbox(format!("encode the checkpoint manifest: {e}")))?;
        let inventory = image.join(CRIU_INVENTORY);
        std::fs::write(&inventory, b"")
            .map_err(SandboxError::io(format!("write {}", inventory.display())))?;
        // Written last: a checkpoint without it is incomplete.
        let path = image.join(CHECKPOINT_MANIFEST);
        std::fs::write(&path, json).map_err(SandboxError::io(format!("write {}", path.display())))
    }
}

/// The directory a jailed sandbox writes a checkpoint into (the only one it can write):
/// `<container_dir>/checkpoint.staging`, moved into place by [`collect_staged`].
pub fn staging_dir(container_dir: &Path) -> PathBuf {
    container_dir.join("checkpoint.staging")
}

/// Moves the checkpoint a jailed sandbox left in `staging` into `image` (made if missing):
/// renamed where both are on one file system, else copied (holes kept); the files become
/// root's, and `staging` is removed. The jailed side owns the directory `staging` is in,
/// so nothing there is trusted: `staging` is opened without following a link and read
/// through that descriptor, and only regular files are taken from it, none through a link.
pub fn collect_staged(staging: &Path, image: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(staging)
        .map_err(SandboxError::io(format!("open {}", staging.display())))?;
    let through = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    std::fs::create_dir_all(image)
        .map_err(SandboxError::io(format!("create {}", image.display())))?;
    let entries = std::fs::read_dir(&through)
        .map_err(SandboxError::io(format!("read {}", staging.display())))?;
    for entry in entries {
        let entry = entry.map_err(SandboxError::io(format!("read {}", staging.display())))?;
        let name = entry.file_name();
        let to = image.join(&name);
        let Ok(from) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(through.join(&name))
        else {
            continue; // A link, or gone.
        };
        let meta = from
            .metadata()
            .map_err(SandboxError::io(format!("stat {}", to.display())))?;
        if !meta.is_file() {
            continue;
        }
        let name_c =
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str()))
                .map_err(|_| SandboxError::Sandbox("a staged name holds NUL".into()))?;
        let to_c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(to.as_os_str()))
            .map_err(|_| SandboxError::Sandbox(format!("NUL in {}", to.display())))?;
        // SAFETY: renameat(2) of an entry of the directory we hold open to a path we own.
        let renamed = unsafe {
            libc::renameat(
                dir.as_raw_fd(),
                name_c.as_ptr(),
                libc::AT_FDCWD,
                to_c.as_ptr(),
            )
        } == 0;
        if !renamed {
            copy_sparse(
                Path::new(&format!("/proc/self/fd/{}", from.as_raw_fd())),
                &to,
            )?;
        }
        std::os::unix::fs::lchown(&to, Some(0), Some(0))
            .map_err(SandboxError::io(format!("give {} to root", to.display())))?;
    }
    drop(dir);
    std::fs::remove_dir_all(staging)
        .map_err(SandboxError::io(format!("remove {}", staging.display())))
}

/// Copies `src` to `dst` (replacing it), leaving holes where `src` has them.
pub(crate) fn copy_sparse(src: &Path, dst: &Path) -> Result<(), SandboxError> {
    let io = |what: &str, path: &Path| SandboxError::io(format!("{what} {}", path.display()));
    let from = File::open(src).map_err(io("open", src))?;
    let len = from.metadata().map_err(io("stat", src))?.len();
    let tmp = PathBuf::from(format!("{}.tmp", dst.display()));
    let to = File::create(&tmp).map_err(io("create", &tmp))?;
    to.set_len(len).map_err(io("size", &tmp))?;
    let (fd_in, fd_out) = (from.as_raw_fd(), to.as_raw_fd());
    let mut pos: i64 = 0;
    let end = len as i64;
    while pos < end {
        // SAFETY: lseek(2) on a descriptor we own.
        let data = unsafe { libc::lseek(fd_in, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole is left.
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd_in, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole.min(end) };
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            let chunk = (hole - off_in) as usize;
            // SAFETY: copy_file_range(2) between two descriptors we own, with offsets.
            let n = unsafe {
                libc::copy_file_range(fd_in, &mut off_in, fd_out, &mut off_out, chunk, 0)
            };
            if n < 0 {
                return Err(io("copy", src)(std::io::Error::last_os_error()));
            }
            if n == 0 {
                break;
            }
        }
        pos = hole;
    }
    to.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, dst).map_err(io("rename", dst))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_sparse_copy_is_equal_and_keeps_its_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("disk");
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(&[7u8; 5000]).unwrap();
        drop(f);
        let dst = dir.path().join("copy");
        std::fs::write(&dst, b"old").unwrap();
        copy_sparse(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        let blocks = std::fs::metadata(&dst).unwrap().blocks() * 512;
        assert!(
            blocks < 1 << 20,
            "{blocks} bytes allocated for 8 KiB of data"
        );
        assert!(copy_sparse(&dir.path().join("none"), &dst).is_err());
    }

    #[test]
    fn a_checkpoint_that_is_incomplete_or_foreign_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = CheckpointManifest::read(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a zvm checkpoint"), "{err}");
        let mut m = CheckpointManifest {
            format: CHECKPOINT_FORMAT,
            zvm: "0.1.0".into(),
            id: "c".into(),
            started: true,
            created: 0,
        };
        let write = |m: &CheckpointManifest| {
            std::fs::write(
                dir.path().join(CHECKPOINT_MANIFEST),
                serde_json::to_vec(m).unwrap(),
            )
            .unwrap()
        };
        write(&m);
        let err = CheckpointManifest::read(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains(CHECKPOINT_STATE), "{err}");
        for name in [
            CHECKPOINT_STATE,
            CHECKPOINT_MEMORY,
            CHECKPOINT_ROOTFS,
            CHECKPOINT_AGENT,
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(CheckpointManifest::read(dir.path()).unwrap(), m);
        std::fs::write(dir.path().join(CHECKPOINT_MEMORY), b"").unwrap();
        let err = CheckpointManifest::read(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory is empty"), "{err}");
        std::fs::write(dir.path().join(CHECKPOINT_MEMORY), b"x").unwrap();
        // The root disk of a container whose root came over virtio-fs is empty.
        std::fs::write(dir.path().join(CHECKPOINT_ROOTFS), b"").unwrap();
        assert_eq!(CheckpointManifest::read(dir.path()).unwrap(), m);
        m.format = 99;
        write(&m);
        let err = CheckpointManifest::read(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("format 99"), "{err}");
        std::fs::write(dir.path().join(CHECKPOINT_MANIFEST), b"{\"format\":").unwrap();
        assert!(CheckpointManifest::read(dir.path()).is_err());
    }

    #[test]
    fn a_staged_checkpoint_moves_into_place_and_only_its_regular_files_do() {
        let dir = tempfile::tempdir().unwrap();
        let staging = staging_dir(dir.path());
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join(CHECKPOINT_STATE), b"state").unwrap();
        std::fs::write(staging.join(CHECKPOINT_MEMORY), b"memory").unwrap();
        // What a compromised jailed sandbox could leave there instead of files.
        let secret = dir.path().join("host-secret");
        std::fs::write(&secret, b"not yours").unwrap();
        std::os::unix::fs::symlink(&secret, staging.join(CHECKPOINT_ROOTFS)).unwrap();
        std::fs::create_dir(staging.join("sub")).unwrap();
        let image = dir.path().join("out/image");
        collect_staged(&staging, &image).unwrap();
        assert_eq!(
            std::fs::read(image.join(CHECKPOINT_STATE)).unwrap(),
            b"state"
        );
        assert_eq!(
            std::fs::read(image.join(CHECKPOINT_MEMORY)).unwrap(),
            b"memory"
        );
        assert!(std::fs::symlink_metadata(image.join(CHECKPOINT_ROOTFS)).is_err());
        assert!(!image.join("sub").exists());
        assert!(!staging.exists());
        assert_eq!(std::fs::read(&secret).unwrap(), b"not yours");
        // A damaged staging area is an error, not a half-moved checkpoint reported whole.
        assert!(collect_staged(&staging, &image).is_err());
        // A staging directory that is a link to a host directory is refused.
        let host = dir.path().join("host-dir");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("passwd"), b"host file").unwrap();
        std::os::unix::fs::symlink(&host, &staging).unwrap();
        assert!(collect_staged(&staging, &image).is_err());
        assert!(host.join("passwd").exists() && !image.join("passwd").exists());
    }
}
