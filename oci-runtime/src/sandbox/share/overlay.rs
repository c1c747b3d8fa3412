//! A copy-on-write root file system for the share: an overlayfs whose lower layer is a
//! read-only tree kept elsewhere (an unpacked flist in the node's cache, shared by every
//! VM that runs it) and whose upper layer is one VM's own directory.
//!
//! The overlay is made with the new mount API (fsopen(2), fsconfig(2), fsmount(2)) as a
//! *detached* mount: it is in no mount namespace, so the host's mount table never shows it.
//! [`super::host::prepare_with_root`] hands it to virtiofsd's process, which attaches it on
//! the share's `rootfs` placeholder in its own mount namespace; the mount then lives exactly
//! as long as that virtiofsd (and the descriptor this process holds until virtiofsd runs):
//! a VM that ends, crashes or is killed leaves nothing mounted. overlayfs writes only to the
//! upper and work directories; the lower tree is never written.

use super::ShareError;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

/// The three directories of a copy-on-write root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayDirs {
    /// The read-only tree (never written).
    pub lower: PathBuf,
    /// Where this VM's writes land.
    pub upper: PathBuf,
    /// overlayfs's own scratch directory (same file system as `upper`).
    pub work: PathBuf,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> ShareError {
    move |source| ShareError::Io { what, source }
}

/// A path as overlayfs takes it in one option: absolute, and without the characters its
/// option parser gives a meaning (`:` separates lower layers, `\` escapes, `,` separates
/// options in older kernels).
fn option_path(path: &Path) -> Result<CString, ShareError> {
    let bytes = path.as_os_str().as_bytes();
    if !path.is_absolute() || bytes.iter().any(|b| matches!(b, b':' | b',' | b'\\' | 0)) {
        return Err(ShareError::Io {
            what: format!("use {path:?} in an overlay (it must be absolute, without ':' ',' '\\')"),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    CString::new(bytes).map_err(|_| ShareError::Io {
        what: format!("use {path:?}"),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })
}

impl OverlayDirs {
    /// `<dir>/upper` and `<dir>/work` over `lower`.
    pub fn in_dir(lower: &Path, dir: &Path) -> OverlayDirs {
        OverlayDirs {
            lower: lower.to_path_buf(),
            upper: dir.join("upper"),
            work: dir.join("work"),
        }
    }

    /// Makes the upper and work directories if missing (the upper one with the lower
    /// root's mode and owner: it is the merged root's). Existing ones are kept: a VM
    /// started again finds its earlier writes. A symbolic link in their place is refused.
    pub fn create(&self) -> Result<(), ShareError> {
        let lower = std::fs::metadata(&self.lower)
            .map_err(io(format!("read the lower tree {:?}", self.lower)))?;
        if !lower.is_dir() {
            return Err(io(format!("use {:?} as a lower tree", self.lower))(
                std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        for (dir, root_like) in [(&self.upper, true), (&self.work, false)] {
            match std::fs::symlink_metadata(dir) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => {
                    return Err(io(format!("use {dir:?} as an overlay directory"))(
                        std::io::Error::from_raw_os_error(libc::ENOTDIR),
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("read {dir:?}"))(e)),
            }
            if let Some(parent) = dir.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(io(format!("create {parent:?}")))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(io(format!("create {dir:?}")))?;
            if root_like {
                std::os::unix::fs::lchown(dir, Some(lower.uid()), Some(lower.gid()))
                    .map_err(io(format!("own {dir:?} as the lower root")))?;
                std::fs::set_permissions(
                    dir,
                    std::os::unix::fs::PermissionsExt::from_mode(lower.mode() & 0o7777),
                )
                .map_err(io(format!("set the mode of {dir:?}")))?;
            }
        }
        Ok(())
    }

    /// Takes this upper directory for the caller alone (overlayfs only warns when two
    /// mounts share one, and their files then go wrong): an exclusive lock on `upper.lock`
    /// beside it, held while the returned file is open (a process that dies lets go).
    pub fn lock(&self) -> Result<std::fs::File, ShareError> {
        let path = self.upper.with_extension("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io(format!("open {path:?}")))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(io(format!(
                "take {:?}: another VM uses this root file system",
                self.upper
            ))(err));
        }
        Ok(file)
    }

    /// The overlay as a detached mount (see the module docs): in no mount namespace until
    /// a process attaches it; gone when the last descriptor and attachment are.
    pub fn mount_detached(&self) -> Result<OwnedFd, ShareError> {
        let options = [
            (c"lowerdir", option_path(&self.lower)?),
            (c"upperdir", option_path(&self.upper)?),
            (c"workdir", option_path(&self.work)?),
        ];
        // SAFETY: fsopen with a NUL-terminated name and constant flags.
        let fs = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) };
        if fs < 0 {
            return Err(io("open an overlay file system context (fsopen)".into())(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fsopen returned a new descriptor, owned from here on.
        let fs = unsafe { OwnedFd::from_raw_fd(fs as libc::c_int) };
        for (key, value) in &options {
            // SAFETY: fsconfig on our context with NUL-terminated key and value.
            let set = unsafe {
                libc::syscall(
                    libc::SYS_fsconfig,
                    fs.as_raw_fd(),
                    FSCONFIG_SET_STRING,
                    key.as_ptr(),
                    value.as_ptr(),
                    0,
                )
            };
            if set != 0 {
                let err = std::io::Error::last_os_error();
                return Err(self.failed(&format!("set {key:?}"), &fs, err));
            }
        }
        // SAFETY: fsconfig's create command on our context, no key or value.
        let created = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        if created != 0 {
            let err = std::io::Error::last_os_error();
            return Err(self.failed("create it", &fs, err));
        }
        // SAFETY: fsmount of our created context, constant flags, no attributes.
        let mount = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
        if mount < 0 {
            let err = std::io::Error::last_os_error();
            return Err(self.failed("mount it (fsmount)", &fs, err));
        }
        // SAFETY: fsmount returned a new descriptor, owned from here on.
        Ok(unsafe { OwnedFd::from_raw_fd(mount as libc::c_int) })
    }

    /// An error of step `what`, with what the kernel logged on the context (overlayfs says
    /// there why it refuses, e.g. "upperdir is in-use by another mount").
    fn failed(&self, what: &str, fs: &OwnedFd, err: std::io::Error) -> ShareError {
        let mut said = Vec::new();
        let mut buf = [0u8; 512];
        for _ in 0..8 {
            // SAFETY: read into a buffer we own, of its size.
            let n = unsafe { libc::read(fs.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(n) else { break };
            if n == 0 {
                break;
            }
            said.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        }
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(" ({})", said.join("; "))
        };
        ShareError::Io {
            what: format!(
                "make the overlay of {:?} with upper {:?}: {what}{said}",
                self.lower, self.upper
            ),
            source: err,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::host::prepare_with_root;
    use super::super::{ShareEntry, ROOT_ENTRY};
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipping: an overlay needs root");
        }
        root
    }

    fn mounted_anywhere(path: &Path) -> bool {
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let path = path.to_str().unwrap();
        table.lines().any(|l| l.contains(path))
    }

    #[test]
    fn writes_land_in_the_upper_dir_and_nothing_stays_mounted() {
        if !root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let lower = tmp.path().join("cache/tree");
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::write(lower.join("etc/os"), "from-the-flist\n").unwrap();
        std::fs::set_permissions(&lower, std::fs::Permissions::from_mode(0o751)).unwrap();
        let one = OverlayDirs::in_dir(&lower, &tmp.path().join("vm1/rootfs"));
        let two = OverlayDirs::in_dir(&lower, &tmp.path().join("vm2/rootfs"));
        let run = |dirs: &OverlayDirs, vm: &str, script: &str| {
            dirs.create().unwrap();
            let tree = dirs.mount_detached().unwrap();
            let share = tmp.path().join(vm).join("share");
            let prepared = prepare_with_root(&share, &[], Some(tree)).unwrap();
            let out = prepared
                .command(Path::new("/bin/sh"))
                .args(["-c", script])
                .current_dir(&share)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            (String::from_utf8_lossy(&out.stdout).to_string(), share)
        };
        let (said, share) = run(
            &one,
            "vm1",
            "cat rootfs/etc/os; echo mine > rootfs/etc/os; echo new > rootfs/new; \
             rm rootfs/etc/os; echo again > rootfs/etc/os",
        );
        assert_eq!(said, "from-the-flist\n");
        // The writes are in vm1's upper dir; the lower tree is as it was.
        assert_eq!(
            std::fs::read_to_string(one.upper.join("new")).unwrap(),
            "new\n"
        );
        assert_eq!(
            std::fs::read_to_string(one.upper.join("etc/os")).unwrap(),
            "again\n"
        );
        assert_eq!(
            std::fs::read_to_string(lower.join("etc/os")).unwrap(),
            "from-the-flist\n"
        );
        assert!(!lower.join("new").exists());
        // The merged root is the lower root's mode.
        assert_eq!(
            std::fs::metadata(&one.upper).unwrap().mode() & 0o7777,
            0o751
        );
        // Nothing was mounted on the host; the placeholder is empty.
        assert!(!mounted_anywhere(&share));
        assert!(std::fs::read_dir(share.join(ROOT_ENTRY))
            .unwrap()
            .next()
            .is_none());
        // A second VM of the same tree sees the tree, not vm1's writes.
        let (said, _) = run(&two, "vm2", "cat rootfs/etc/os; ls rootfs");
        assert_eq!(said, "from-the-flist\netc\n");
        // vm1 started again finds its writes.
        let (said, _) = run(&one, "vm1", "cat rootfs/etc/os rootfs/new");
        assert_eq!(said, "again\nnew\n");
        // Removing the VM's directory removes its writes (overlayfs's work dir too).
        std::fs::remove_dir_all(tmp.path().join("vm1")).unwrap();
        assert!(!tmp.path().join("vm1").exists());
    }

    #[test]
    fn one_upper_dir_serves_one_vm_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let lower = tmp.path().join("tree");
        std::fs::create_dir(&lower).unwrap();
        let dirs = OverlayDirs::in_dir(&lower, &tmp.path().join("vm"));
        dirs.create().unwrap();
        let first = dirs.lock().unwrap();
        let err = dirs.lock().unwrap_err().to_string();
        assert!(err.contains("another VM uses"), "{err}");
        drop(first);
        dirs.lock().unwrap();
    }

    #[test]
    fn bad_directories_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let lower = tmp.path().join("tree");
        std::fs::create_dir(&lower).unwrap();
        let missing = OverlayDirs::in_dir(&tmp.path().join("nope"), tmp.path());
        assert!(missing
            .create()
            .unwrap_err()
            .to_string()
            .contains("lower tree"));
        // A symbolic link where the upper dir goes is not followed.
        let vm = tmp.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        std::os::unix::fs::symlink("/etc", vm.join("upper")).unwrap();
        let linked = OverlayDirs::in_dir(&lower, &vm);
        assert!(linked.create().is_err());
        // Paths overlayfs would split are refused before any system call.
        let colon = OverlayDirs::in_dir(&tmp.path().join("a:b"), &vm);
        let err = colon.mount_detached().unwrap_err().to_string();
        assert!(err.contains("without ':'"), "{err}");
        let relative = OverlayDirs::in_dir(Path::new("tree"), &vm);
        assert!(relative.mount_detached().is_err());
        // An entry may not take the root's name.
        let entry = ShareEntry {
            name: ROOT_ENTRY.into(),
            source: lower.clone(),
            destination: "/x".into(),
            read_only: false,
            recursive: false,
        };
        if root() {
            let dirs = OverlayDirs::in_dir(&lower, &tmp.path().join("vm2"));
            dirs.create().unwrap();
            let tree = dirs.mount_detached().unwrap();
            let err = prepare_with_root(&tmp.path().join("share"), &[entry], Some(tree))
                .unwrap_err()
                .to_string();
            assert!(err.contains("an entry named rootfs"), "{err}");
        }
    }
}
