//! Writable storage with a hard size limit for what a guest writes over virtio-fs: the
//! copy-on-write layer of a container's root and the node's volumes.
//!
//! A store is a sparse file holding an ext4 file system (made by `mkfs.ext4`, as ext4 roots
//! are). The VM's process mounts it through a loop device as a *detached* mount
//! (fsopen(2)/fsmount(2), like the root's overlay): it never appears in the host's mount
//! table, only in the virtiofsd that serves it, and the loop device clears itself when the
//! last user is gone (the VM ended, crashed or was killed). The guest sees ENOSPC when the
//! store is full; the host file never grows past the store's size, whatever the host's file
//! system is. A store is mounted by one VM at a time ([`StoreImage::lock`]): two ext4 mounts
//! of one image would corrupt it.
//!
//! Needs loop devices (`/dev/loop-control`); a volume's store is shared as a copy of its
//! detached mount, which needs Linux 6.15 or later (a root's overlay has a fallback for
//! older kernels: [`super::cow_root::overlay_in_private_namespace`]).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The smallest store accepted (ext4 needs a little room for its own metadata).
pub const MIN_SIZE: u64 = 1 << 20;
/// The largest store accepted.
pub const MAX_SIZE: u64 = 16 << 40;
/// A container root's store when no size is given: what the container may write over its
/// image (sparse: only what it writes takes host space).
pub const DEFAULT_ROOT_SIZE: u64 = 1 << 30;
/// A node volume's size when its spec gives none.
pub const DEFAULT_VOLUME_SIZE: u64 = 1 << 30;

/// Errors making, locking or mounting a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A size out of range.
    #[error("{what}: {size} bytes is out of range ({MIN_SIZE} bytes to 16 TiB)")]
    BadSize {
        /// Which store.
        what: String,
        /// The size asked for.
        size: u64,
    },
    /// A file operation failed.
    #[error("store {path}: cannot {what}: {source}")]
    Io {
        /// The image.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `mkfs.ext4` or `debugfs` failed.
    #[error("store {path}: {tool} failed: {message}")]
    Tool {
        /// The image.
        path: PathBuf,
        /// The program.
        tool: &'static str,
        /// What it said.
        message: String,
    },
    /// Another VM has the store.
    #[error("store {0}: another VM uses it")]
    Busy(PathBuf),
}

/// The owner and mode a new store's root directory takes (a volume: the image's mount
/// point directory, as Docker gives a named volume).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootAttrs {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits (0o7777 at most).
    pub mode: u32,
}

impl Default for RootAttrs {
    /// root, 0755.
    fn default() -> Self {
        RootAttrs {
            uid: 0,
            gid: 0,
            mode: 0o755,
        }
    }
}

/// Checks a store's size as hostile input: at least [`MIN_SIZE`], at most [`MAX_SIZE`].
pub fn check_size(what: &str, size: u64) -> Result<u64, StoreError> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(StoreError::BadSize {
            what: what.to_string(),
            size,
        });
    }
    Ok(size)
}

/// An ext4 image file used as a bounded store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreImage {
    path: PathBuf,
}

impl StoreImage {
    /// The store at `path`, which must be a regular file (a symbolic link is refused).
    pub fn open(path: &Path) -> Result<StoreImage, StoreError> {
        let meta = std::fs::symlink_metadata(path).map_err(io(path, "read it"))?;
        if !meta.is_file() {
            return Err(io(path, "use it")(std::io::Error::other(
                "not a regular file (an ext4 image is expected)",
            )));
        }
        Ok(StoreImage {
            path: path.to_path_buf(),
        })
    }

    /// The store at `path`, made if missing: `size` bytes (checked), its root directory
    /// owned as `root` says, no `lost+found`. An existing store is kept as it is, its data
    /// and size with it.
    pub fn ensure(path: &Path, size: u64, root: RootAttrs) -> Result<StoreImage, StoreError> {
        if std::fs::symlink_metadata(path).is_ok() {
            return StoreImage::open(path);
        }
        check_size(&path.display().to_string(), size)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = path.with_file_name(format!(".{name}.{}.staging", std::process::id()));
        let made = make(&staging, size, root)
            .and_then(|()| std::fs::rename(&staging, path).map_err(io(path, "put it in place")));
        if made.is_err() {
            let _ = std::fs::remove_file(&staging);
        }
        made?;
        Ok(StoreImage {
            path: path.to_path_buf(),
        })
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the store for the caller alone: an exclusive lock on `<image>.lock`, held
    /// while the returned file is open (a process that dies lets go).
    pub fn lock(&self) -> Result<File, StoreError> {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".lock");
        let lock_path = PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(io(&lock_path, "open its lock"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StoreError::Busy(self.path.clone()));
        }
        Ok(file)
    }

    /// The store's file system as a detached mount (nodev, nosuid), through a loop device
    /// that clears itself when the mount is gone. The caller must hold [`Self::lock`].
    pub fn mount_detached(&self) -> Result<OwnedFd, StoreError> {
        let image = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(io(&self.path, "open it"))?;
        wait_for_release(&self.path, RELEASE_WAIT)?;
        let (loop_path, loop_dev) =
            attach_loop(&image).map_err(io(&self.path, "attach a loop device"))?;
        drop(image);
        let mount = mount_ext4(&loop_path).map_err(io(&self.path, "mount it (fsmount)"));
        // The mount holds the device from here on; the device goes with it.
        drop(loop_dev);
        mount
    }
}

fn io<'a>(path: &'a Path, what: &'a str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        what: what.to_string(),
        source,
    }
}

/// Makes the image at `path`: a sparse file of `size` bytes, `mkfs.ext4` (no reserved
/// blocks, inode tables and journal left to be written lazily), then `debugfs` gives the
/// root directory its owner and mode and removes `lost+found`.
fn make(path: &Path, size: u64, root: RootAttrs) -> Result<(), StoreError> {
    let file = File::create(path).map_err(io(path, "create it"))?;
    file.set_len(size).map_err(io(path, "size it"))?;
    drop(file);
    let mkfs = flist_fetcher::ext4::find_mkfs().ok_or_else(|| StoreError::Tool {
        path: path.to_path_buf(),
        tool: "mkfs.ext4",
        message: "not found: install e2fsprogs".into(),
    })?;
    let out = Command::new(&mkfs)
        .args(["-q", "-F", "-t", "ext4", "-m", "0", "-L", "zvm-store", "-E"])
        .arg(format!(
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner={}:{}",
            root.uid, root.gid
        ))
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(io(path, "run mkfs.ext4"))?;
    if !out.status.success() {
        return Err(StoreError::Tool {
            path: path.to_path_buf(),
            tool: "mkfs.ext4",
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let debugfs = mkfs.with_file_name("debugfs");
    let debugfs = if debugfs.is_file() {
        debugfs
    } else {
        PathBuf::from("debugfs")
    };
    let requests = format!(
        "set_inode_field / mode 0{:o}\nrmdir lost+found\n",
        0o040000 | (root.mode & 0o7777)
    );
    let mut child = Command::new(&debugfs)
        .args(["-w", "-f", "-"])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(path, "run debugfs"))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(requests.as_bytes())
            .map_err(io(path, "write to debugfs"))?;
    }
    let out = child.wait_with_output().map_err(io(path, "run debugfs"))?;
    // debugfs exits 0 even when a request fails; it says so on standard error, after its
    // version line.
    let said = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = said
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !out.status.success() || !complaints.is_empty() {
        return Err(StoreError::Tool {
            path: path.to_path_buf(),
            tool: "debugfs",
            message: complaints.join("; "),
        });
    }
    Ok(())
}

/// How long a mount waits for the loop device of a VM that ended to let go of the image.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The loop devices bound to `image` (their sysfs `backing_file` names it).
fn loops_backed_by(image: &Path) -> Vec<String> {
    let Ok(image) = std::fs::canonicalize(image) else {
        return Vec::new();
    };
    let Ok(devices) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    devices
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("loop"))
        .filter(|d| {
            std::fs::read_to_string(d.path().join("loop/backing_file"))
                .is_ok_and(|f| Path::new(f.trim_end_matches('\n')) == image)
        })
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Waits (at most `wait`) until no loop device is bound to `image`: the store's lock is
/// free as soon as a VM's process is gone, but its virtiofsd's mount, and with it the file
/// system and its loop device, may take a moment longer to go; a second mount of the image
/// meanwhile would corrupt it.
fn wait_for_release(image: &Path, wait: std::time::Duration) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let bound = loops_backed_by(image);
        if bound.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!(image = %image.display(), devices = ?bound, "the store is still mounted");
            return Err(StoreError::Busy(image.to_path_buf()));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` of linux/loop.h.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of linux/loop.h.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Binds a free loop device to `image` with autoclear (LOOP_CONFIGURE, Linux 5.8+);
/// another process taking the same free device first is retried.
fn attach_loop(image: &File) -> std::io::Result<(String, File)> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")?;
    let mut last = std::io::Error::other("no free loop device");
    for _ in 0..16 {
        // SAFETY: an ioctl without argument on a descriptor we own.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let path = format!("/dev/loop{n}");
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)?;
        let config = LoopConfig {
            fd: image.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_AUTOCLEAR,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE with a loop_config that lives across the call.
        let set = unsafe {
            libc::ioctl(
                device.as_raw_fd(),
                LOOP_CONFIGURE,
                &config as *const LoopConfig,
            )
        };
        if set == 0 {
            return Ok((path, device));
        }
        last = std::io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EBUSY) {
            return Err(last);
        }
    }
    Err(last)
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// ext4 on `device` as a detached mount, without the kernel's background zeroing of inode
/// tables (it would write the image's whole inode tables at once).
fn mount_ext4(device: &str) -> std::io::Result<OwnedFd> {
    let device = std::ffi::CString::new(device).map_err(std::io::Error::other)?;
    // SAFETY: fsopen with a NUL-terminated name and constant flags.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, c"ext4".as_ptr(), FSOPEN_CLOEXEC) };
    if fs < 0 {
        return Err(last_error());
    }
    // SAFETY: fsopen returned a new descriptor, owned from here on.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as libc::c_int) };
    let config =
        |cmd: libc::c_uint, key: Option<&std::ffi::CStr>, value: Option<&std::ffi::CStr>| {
            // SAFETY: fsconfig on our context with NUL-terminated key and value (or none).
            let r = unsafe {
                libc::syscall(
                    libc::SYS_fsconfig,
                    fs.as_raw_fd(),
                    cmd,
                    key.map_or(std::ptr::null(), |k| k.as_ptr()),
                    value.map_or(std::ptr::null(), |v| v.as_ptr()),
                    0,
                )
            };
            if r != 0 {
                Err(last_error())
            } else {
                Ok(())
            }
        };
    config(FSCONFIG_SET_STRING, Some(c"source"), Some(&device))?;
    config(FSCONFIG_SET_FLAG, Some(c"noinit_itable"), None)?;
    config(FSCONFIG_CMD_CREATE, None, None)?;
    // SAFETY: fsmount of our created context with constant flags and attributes.
    let mount = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID,
        )
    };
    if mount < 0 {
        return Err(last_error());
    }
    // SAFETY: fsmount returned a new descriptor, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(mount as libc::c_int) })
}

/// The path through which this process reaches the root of the detached mount `mount`
/// (overlayfs and open(2) follow it into the mount).
pub fn proc_path(mount: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", mount.as_raw_fd()))
}

#[cfg(test)]
#[path = "bounded_store_tests.rs"]
mod tests;
