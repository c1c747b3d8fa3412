//! File operations confined to a root directory.
//!
//! Every operation works on directory file descriptors (`*at` system calls) and never follows a
//! symlink in its last component. Symlinks met in the middle of a path are followed with the
//! container's view of the world: an absolute target starts again at the root directory and `..`
//! stops at it (the semantics of `openat2(RESOLVE_IN_ROOT)`), so no path handled here can reach
//! a file outside the root, whatever the layers put in it.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path};

/// At most this many symlinks are followed while resolving one path (Linux's own limit).
const MAX_SYMLINKS: u32 = 40;
/// Directories nested deeper than this below the root are refused (each level holds a
/// descriptor while a path is resolved).
pub const MAX_DEPTH: usize = 128;

/// A directory that operations cannot escape.
#[derive(Debug)]
pub struct RootDir {
    fd: OwnedFd,
}

/// The type of an existing file, from `lstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A regular file.
    File,
    /// A device node, FIFO or socket.
    Other,
}

impl RootDir {
    /// Opens `path`, which must be a directory.
    pub fn open(path: &Path) -> io::Result<Self> {
        let c = cstring(path.as_os_str())?;
        // SAFETY: `c` is a valid NUL-terminated string; the returned fd is checked.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        Ok(Self { fd: owned(fd)? })
    }

    /// The root directory's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Resolves the directory at `components` (below the root), following symlinks inside the
    /// root. With `create`, missing directories are made (mode 0755).
    pub fn resolve_dir(&self, components: &[OsString], create: bool) -> io::Result<OwnedFd> {
        let mut stack: Vec<OwnedFd> = vec![self.fd.try_clone()?];
        let mut queue: VecDeque<OsString> = components.iter().cloned().collect();
        let mut hops = 0u32;
        while let Some(name) = queue.pop_front() {
            if name.is_empty() || name == "." {
                continue;
            }
            if name == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let top = stack
                .last()
                .ok_or_else(|| io::Error::other("empty stack"))?;
            let next = match kind_at(top.as_fd(), &name)? {
                None if stack.len() > MAX_DEPTH => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("directories nested more than {MAX_DEPTH} deep"),
                    ))
                }
                None if create => {
                    mkdir_at(top.as_fd(), &name, 0o755)?;
                    open_dir_at(top.as_fd(), &name)?
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{}: no such directory", name.to_string_lossy()),
                    ))
                }
                Some(Kind::Dir) if stack.len() > MAX_DEPTH => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("directories nested more than {MAX_DEPTH} deep"),
                    ))
                }
                Some(Kind::Dir) => open_dir_at(top.as_fd(), &name)?,
                Some(Kind::Symlink) => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let target = read_link_at(top.as_fd(), &name)?;
                    let target = Path::new(&target);
                    if target.is_absolute() {
                        stack.truncate(1);
                    }
                    for c in target.components().rev() {
                        match c {
                            Component::Normal(n) => queue.push_front(n.to_owned()),
                            Component::ParentDir => queue.push_front("..".into()),
                            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                        }
                    }
                    continue;
                }
                Some(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{}: not a directory", name.to_string_lossy()),
                    ))
                }
            };
            stack.push(next);
        }
        stack.pop().ok_or_else(|| io::Error::other("empty stack"))
    }

    /// Opens the regular file at `components` for reading, following symlinks (also in the last
    /// component) inside the root.
    pub fn open_file(&self, components: &[OsString]) -> io::Result<File> {
        let mut comps = components.to_vec();
        for _ in 0..MAX_SYMLINKS {
            let Some((name, parent)) = comps.split_last() else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a regular file",
                ));
            };
            let dir = self.resolve_dir(parent, false)?;
            match kind_at(dir.as_fd(), name)? {
                Some(Kind::Symlink) => {
                    let target = read_link_at(dir.as_fd(), name)?;
                    let target = Path::new(&target);
                    let mut next = if target.is_absolute() {
                        Vec::new()
                    } else {
                        parent.to_vec()
                    };
                    for c in target.components() {
                        match c {
                            Component::Normal(n) => next.push(n.to_owned()),
                            Component::ParentDir => next.push("..".into()),
                            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                        }
                    }
                    comps = next;
                }
                Some(_) => return open_file_at(dir.as_fd(), name),
                None => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
            }
        }
        Err(io::Error::from_raw_os_error(libc::ELOOP))
    }
}

/// Converts a name to a C string, refusing interior NULs.
pub fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor returned by the kernel that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `lstat` of `name` in `dir`: its kind, mode bits and inode, or `None` if it does not exist.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<(Kind, libc::stat)>> {
    let c = cstring(name)?;
    // SAFETY: zeroed `stat` is a valid value; the kernel fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, string and out-pointer.
    let ret = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFREG => Kind::File,
        _ => Kind::Other,
    };
    Ok(Some((kind, st)))
}

/// The kind of `name` in `dir`, or `None` if it does not exist.
pub fn kind_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Kind>> {
    Ok(stat_at(dir, name)?.map(|(k, _)| k))
}

/// Opens the directory `name` in `dir` as an `O_PATH` descriptor, refusing a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    open_at(
        dir,
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
    )
}

/// `openat(dir, name, flags, mode)`.
pub fn open_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    let c = cstring(name)?;
    // SAFETY: valid fd and string; the returned fd is checked.
    owned(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, mode as libc::c_uint) })
}

/// Creates a new regular file `name` in `dir` (mode 0600, fails if anything exists there).
pub fn create_file_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let fd = open_at(
        dir,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0o600,
    )?;
    Ok(File::from(fd))
}

/// Opens the regular file `name` in `dir` for reading, refusing symlinks and non-regular files
/// (checked before opening: opening a device can have effects, a FIFO can block).
pub fn open_file_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    match kind_at(dir, name)? {
        Some(Kind::File) => {}
        None => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        Some(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ))
        }
    }
    let fd = open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
        0,
    )?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Bytes free for an unprivileged writer on the file system holding `fd`.
pub fn available_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: zeroed `statvfs` is a valid value; the kernel fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd (O_PATH descriptors allow fstatvfs) and out-pointer.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// `mkdirat`; an existing directory is not an error.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid fd and string.
    match check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) }) {
        Err(e)
            if e.kind() == io::ErrorKind::AlreadyExists
                && kind_at(dir, name)? == Some(Kind::Dir) =>
        {
            Ok(())
        }
        r => r,
    }
}

/// `symlinkat(target, dir, name)`.
pub fn symlink_at(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let t = cstring(target)?;
    let c = cstring(name)?;
    // SAFETY: valid fd and strings.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) })
}

/// `linkat(old_dir, old, new_dir, new, 0)`: links the entry itself, never a symlink's target.
pub fn link_at(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
) -> io::Result<()> {
    let o = cstring(old)?;
    let n = cstring(new)?;
    // SAFETY: valid fds and strings.
    check(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            o.as_ptr(),
            new_dir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })
}

/// `mknodat(dir, name, mode, dev)`.
pub fn mknod_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, dev: libc::dev_t) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid fd and string.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, dev) })
}

/// `readlinkat(dir, name)`.
pub fn read_link_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OsString> {
    let c = cstring(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid fd, string and buffer of the given length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`.
pub fn chown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid fd and string.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            c.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// `fchmodat(dir, name, mode)` on an entry known not to be a symlink (Linux cannot chmod a
/// symlink, and `fchmodat` follows one, so callers check the kind first).
pub fn chmod_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid fd and string.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, 0) })
}

/// Sets access and modification time of `name` (not following a symlink) to `mtime`.
pub fn set_mtime_at(dir: BorrowedFd<'_>, name: &OsStr, secs: i64, nsecs: i64) -> io::Result<()> {
    let c = cstring(name)?;
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsecs as _,
    };
    let times = [ts, ts];
    // SAFETY: valid fd, string and a two-element timespec array.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Removes `name` from `dir`: a file or symlink is unlinked, a directory removed with all its
/// contents (never following a symlink). A missing entry is not an error.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let Some(kind) = kind_at(dir, name)? else {
        return Ok(());
    };
    let c = cstring(name)?;
    if kind == Kind::Dir {
        let sub = open_dir_at(dir, name)?;
        for child in list_dir(sub.as_fd())? {
            remove_all_at(sub.as_fd(), &child)?;
        }
        // SAFETY: valid fd and string.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
    } else {
        // SAFETY: valid fd and string.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) })
    }
}

/// Names in the directory `dir` (without `.` and `..`).
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let fd = open_at(
        dir,
        OsStr::new("."),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
    // SAFETY: `raw` is an open directory descriptor; on success the DIR stream owns it.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the descriptor is still ours to close.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; resetting it distinguishes end-of-stream from errors.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dirp` is a valid open DIR stream.
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error().unwrap_or(0) == 0 {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes != b"." && bytes != b".." {
            names.push(OsStr::from_bytes(bytes).to_owned());
        }
    };
    // SAFETY: `dirp` is valid and closed exactly once (this also closes `raw`).
    unsafe { libc::closedir(dirp) };
    result.map(|()| names)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn comps(s: &str) -> Vec<OsString> {
        s.split('/').map(OsString::from).collect()
    }

    #[test]
    fn resolves_symlinks_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("/usr", root.join("abs")).unwrap();
        symlink("../../../../..", root.join("up")).unwrap();
        symlink(outside.path(), root.join("host")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let r = RootDir::open(root).unwrap();
        let ino = |fd: OwnedFd| {
            File::from(fd)
                .metadata()
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap()
        };
        let usr_lib = std::fs::metadata(root.join("usr/lib")).unwrap();
        let root_ino = std::fs::metadata(root).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            ino(r.resolve_dir(&comps("lib"), false).unwrap()),
            usr_lib.ino()
        );
        assert_eq!(
            ino(r.resolve_dir(&comps("abs/lib"), false).unwrap()),
            usr_lib.ino()
        );
        assert_eq!(
            ino(r.resolve_dir(&comps("up"), false).unwrap()),
            root_ino.ino()
        );
        // An absolute symlink to a host directory lands inside the root (created there).
        let fd = r.resolve_dir(&comps("host/x"), true).unwrap();
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        let inside = root
            .join(outside.path().strip_prefix("/").unwrap())
            .join("x");
        assert_eq!(ino(fd), std::fs::metadata(inside).unwrap().ino());
        let e = r.resolve_dir(&comps("loop"), false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert_eq!(
            r.resolve_dir(&comps("nope"), false).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn remove_all_does_not_follow_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("d/e")).unwrap();
        std::fs::write(tmp.path().join("d/e/f"), b"x").unwrap();
        symlink(outside.path(), tmp.path().join("d/link")).unwrap();
        let r = RootDir::open(tmp.path()).unwrap();
        let mut names = list_dir(r.fd()).unwrap();
        names.sort();
        assert_eq!(names, vec![OsString::from("d")]);
        remove_all_at(r.fd(), OsStr::new("d")).unwrap();
        assert!(!tmp.path().join("d").exists());
        assert!(outside.path().join("keep").exists());
        remove_all_at(r.fd(), OsStr::new("d")).unwrap();
    }
}
