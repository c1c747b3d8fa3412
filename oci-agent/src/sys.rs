//! The system calls the container setup makes, behind a trait so the setup sequence can be
//! tested with a recording double; [`LinuxSys`] makes the real calls.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// Anything else (device, socket, fifo).
    Other,
}

/// The system calls used by `setup`. Paths are absolute in the caller's current view.
pub trait Sys {
    /// mount(2).
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// umount2(2).
    fn umount(&mut self, target: &Path, flags: i32) -> io::Result<()>;
    /// stat(2), following symlinks; `None` when the path does not exist.
    fn kind(&mut self, path: &Path) -> io::Result<Option<FileKind>>;
    /// `path` inside `root`, symlinks resolved without leaving `root`.
    fn resolve(&mut self, root: &Path, path: &Path) -> io::Result<PathBuf>;
    /// mkdir -p.
    fn mkdir_all(&mut self, path: &Path) -> io::Result<()>;
    /// Creates an empty file if nothing exists at `path` (bind-mount target).
    fn create_file(&mut self, path: &Path) -> io::Result<()>;
    /// mknod(2).
    fn mknod(&mut self, path: &Path, mode: u32, dev: u64) -> io::Result<()>;
    /// chown(2).
    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// symlink(2): `link` points to `target`.
    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()>;
    /// pivot_root(2).
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    /// chroot(2).
    fn chroot(&mut self, path: &Path) -> io::Result<()>;
    /// chdir(2).
    fn chdir(&mut self, path: &Path) -> io::Result<()>;
    /// Writes `data` to an existing file (cgroup, /proc/sys).
    fn write_file(&mut self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// sethostname(2).
    fn sethostname(&mut self, name: &str) -> io::Result<()>;
    /// setdomainname(2).
    fn setdomainname(&mut self, name: &str) -> io::Result<()>;
    /// unshare(2).
    fn unshare(&mut self, flags: i32) -> io::Result<()>;
    /// setns(2) into the namespace file at `path`.
    fn setns(&mut self, path: &Path, flag: i32) -> io::Result<()>;
    /// setrlimit(2).
    fn setrlimit(&mut self, resource: u32, soft: u64, hard: u64) -> io::Result<()>;
    /// umask(2).
    fn umask(&mut self, mask: u32);
    /// prctl(PR_SET_NO_NEW_PRIVS).
    fn set_no_new_privs(&mut self) -> io::Result<()>;
    /// seccomp(SECCOMP_SET_MODE_FILTER, flags, program).
    fn seccomp_filter(
        &mut self,
        program: &[seccompiler::sock_filter],
        flags: u32,
    ) -> io::Result<()>;
    /// prctl(PR_CAPBSET_DROP).
    fn cap_drop_bound(&mut self, cap: u32) -> io::Result<()>;
    /// prctl(PR_SET_KEEPCAPS).
    fn set_keep_caps(&mut self, keep: bool) -> io::Result<()>;
    /// setgroups(2).
    fn setgroups(&mut self, gids: &[u32]) -> io::Result<()>;
    /// setresgid(2) with all three ids.
    fn setresgid(&mut self, gid: u32) -> io::Result<()>;
    /// setresuid(2) with all three ids.
    fn setresuid(&mut self, uid: u32) -> io::Result<()>;
    /// capset(2), version 3.
    fn capset(&mut self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()>;
    /// prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE).
    fn cap_ambient_raise(&mut self, cap: u32) -> io::Result<()>;
    /// Whether `path` is a regular file the process may execute.
    fn is_executable(&mut self, path: &Path) -> bool;
    /// Brings the loopback interface of the current network namespace up.
    fn loopback_up(&mut self) -> io::Result<()>;
    /// Mixes `data` into the kernel's input pool, crediting all its bits (RNDADDENTROPY).
    fn add_entropy(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes the kernel's CRNG reseed from its input pool now (RNDRESEEDCRNG).
    fn reseed_crng(&mut self) -> io::Result<()>;
    /// clock_settime(CLOCK_REALTIME) to `ns` nanoseconds since the Unix epoch.
    fn set_realtime(&mut self, ns: u64) -> io::Result<()>;
    /// Size in bytes of the block device at `device` (BLKGETSIZE64).
    fn block_size(&mut self, device: &Path) -> io::Result<u64>;
}

/// Converts a path for a system call.
pub fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains a NUL byte"))
}

/// Turns a -1 return into the errno error.
pub fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The real system calls.
#[derive(Debug, Default)]
pub struct LinuxSys;

/// `_IOW('R', 0x03, int[2])`: add (and credit) entropy to the input pool.
const RNDADDENTROPY: libc::Ioctl = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG now.
const RNDRESEEDCRNG: libc::Ioctl = 0x5207;

/// `_IOR(0x12, 114, size_t)`: a block device's size in bytes.
const BLKGETSIZE64: libc::Ioctl = 0x8008_1272;

/// Runs `f` on /dev/urandom opened for writing (the random ioctls need CAP_SYS_ADMIN).
fn with_urandom(f: impl FnOnce(RawFd) -> libc::c_long) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    check(f(file.as_raw_fd())).map(drop)
}

const MAX_SYMLINKS: usize = 40;

impl Sys for LinuxSys {
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> io::Result<()> {
        let source = source.map(cpath).transpose()?;
        let target = cpath(target)?;
        let fstype = fstype.map(cstr).transpose()?;
        let data = data.map(cstr).transpose()?;
        let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: all pointers are NUL-terminated strings or null, alive for the call.
        let rc = unsafe {
            libc::mount(
                ptr(&source),
                target.as_ptr(),
                ptr(&fstype),
                flags,
                ptr(&data).cast(),
            )
        };
        check(rc.into()).map(drop)
    }

    fn umount(&mut self, target: &Path, flags: i32) -> io::Result<()> {
        let target = cpath(target)?;
        // SAFETY: valid C string.
        check(unsafe { libc::umount2(target.as_ptr(), flags) }.into()).map(drop)
    }

    fn kind(&mut self, path: &Path) -> io::Result<Option<FileKind>> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(Some(FileKind::Dir)),
            Ok(m) if m.is_file() => Ok(Some(FileKind::File)),
            Ok(_) => Ok(Some(FileKind::Other)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn resolve(&mut self, root: &Path, path: &Path) -> io::Result<PathBuf> {
        resolve_in_root(root, path)
    }

    fn mkdir_all(&mut self, path: &Path) -> io::Result<()> {
        // One mkdir when the directory (or something else: the mount then reports it) exists,
        // instead of std's mkdir + stat: system calls are expensive in the VM. Mode 0755
        // whatever the umask (the setup runs with 0), as runc makes mount points: over
        // virtio-fs they are made in the bundle's rootfs.
        use std::os::unix::fs::DirBuilderExt;
        let create_dir = |path: &Path| std::fs::DirBuilder::new().mode(0o755).create(path);
        match create_dir(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match path.parent() {
                Some(parent) if parent != path => {
                    self.mkdir_all(parent)?;
                    match create_dir(path) {
                        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
                        _ => Ok(()),
                    }
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    fn create_file(&mut self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn mknod(&mut self, path: &Path, mode: u32, dev: u64) -> io::Result<()> {
        let p = cpath(path)?;
        // SAFETY: valid C string.
        check(unsafe { libc::mknod(p.as_ptr(), mode, dev) }.into()).map(drop)
    }

    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        let (n, o) = (cpath(new_root)?, cpath(put_old)?);
        // SAFETY: valid C strings.
        check(unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) }).map(drop)
    }

    fn chroot(&mut self, path: &Path) -> io::Result<()> {
        std::os::unix::fs::chroot(path)
    }

    fn chdir(&mut self, path: &Path) -> io::Result<()> {
        std::env::set_current_dir(path)
    }

    fn write_file(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .write_all(data)
    }

    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        // SAFETY: pointer and length of a live buffer.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }.into()).map(drop)
    }

    fn setdomainname(&mut self, name: &str) -> io::Result<()> {
        // SAFETY: pointer and length of a live buffer.
        check(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) }.into()).map(drop)
    }

    fn unshare(&mut self, flags: i32) -> io::Result<()> {
        // SAFETY: plain syscall.
        check(unsafe { libc::unshare(flags) }.into()).map(drop)
    }

    fn setns(&mut self, path: &Path, flag: i32) -> io::Result<()> {
        let f = std::fs::File::open(path)?;
        // SAFETY: `f` is an open descriptor.
        check(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), flag) }.into()).map(drop)
    }

    fn setrlimit(&mut self, resource: u32, soft: u64, hard: u64) -> io::Result<()> {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: valid rlimit struct; resource numbers come from the plan.
        check(unsafe { libc::setrlimit(resource as _, &lim) }.into()).map(drop)
    }

    fn umask(&mut self, mask: u32) {
        // SAFETY: plain syscall.
        unsafe { libc::umask(mask) };
    }

    fn set_no_new_privs(&mut self) -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }.into()).map(drop)
    }

    fn seccomp_filter(
        &mut self,
        program: &[seccompiler::sock_filter],
        flags: u32,
    ) -> io::Result<()> {
        let len = u16::try_from(program.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seccomp program too long"))?;
        let prog = libc::sock_fprog {
            len,
            // sock_filter has libc's layout (code, jt, jf, k; repr(C)).
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the kernel copies the program it is given; `prog` outlives the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            )
        })
        .map(drop)
    }

    fn cap_drop_bound(&mut self, cap: u32) -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) }.into())
            .map(drop)
    }

    fn set_keep_caps(&mut self, keep: bool) -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, keep as libc::c_ulong, 0, 0, 0) }.into())
            .map(drop)
    }

    fn setgroups(&mut self, gids: &[u32]) -> io::Result<()> {
        // SAFETY: pointer and length of a live slice. The raw syscall sets the groups of this
        // thread only, which is the whole process here (the setup runs single-threaded).
        check(unsafe { libc::syscall(libc::SYS_setgroups, gids.len(), gids.as_ptr()) }).map(drop)
    }

    fn setresgid(&mut self, gid: u32) -> io::Result<()> {
        // SAFETY: plain syscall (raw, so glibc does not try to sync other threads: there are none).
        check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(drop)
    }

    fn setresuid(&mut self, uid: u32) -> io::Result<()> {
        // SAFETY: plain syscall, as above.
        check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
    }

    fn capset(&mut self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        let header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let half = |v: u64, hi: bool| if hi { (v >> 32) as u32 } else { v as u32 };
        let data = [false, true].map(|hi| Data {
            effective: half(effective, hi),
            permitted: half(permitted, hi),
            inheritable: half(inheritable, hi),
        });
        // SAFETY: header and two data structs laid out as the kernel's v3 ABI.
        check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) }).map(drop)
    }

    fn cap_ambient_raise(&mut self, cap: u32) -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE,
                cap as libc::c_ulong,
                0,
                0,
            )
        };
        check(rc.into()).map(drop)
    }

    fn is_executable(&mut self, path: &Path) -> bool {
        let Ok(p) = cpath(path) else { return false };
        // SAFETY: valid C string; zeroed stat is a valid out buffer.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::stat(p.as_ptr(), &mut st) == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFREG
                && libc::access(p.as_ptr(), libc::X_OK) == 0
        }
    }

    fn loopback_up(&mut self) -> io::Result<()> {
        // SAFETY: socket/ioctl/close on our own descriptor with a zeroed, NUL-terminated ifreq.
        unsafe {
            let fd = check(
                libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0).into(),
            )? as i32;
            let mut req: libc::ifreq = std::mem::zeroed();
            for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
                *d = *s as libc::c_char;
            }
            req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            let rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
            libc::close(fd);
            check(rc.into()).map(drop)
        }
    }

    fn add_entropy(&mut self, data: &[u8]) -> io::Result<()> {
        let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "too much entropy");
        let len = i32::try_from(data.len()).map_err(|_| too_long())?;
        let bits = len.checked_mul(8).ok_or_else(too_long)?;
        // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }, built in
        // u32 words so the kernel reads it aligned.
        let mut info: Vec<u32> = Vec::with_capacity(2 + data.len().div_ceil(4));
        info.extend([bits as u32, len as u32]);
        info.extend(data.chunks(4).map(|c| {
            let mut word = [0u8; 4];
            word[..c.len()].copy_from_slice(c);
            u32::from_ne_bytes(word)
        }));
        // SAFETY: `info` is a rand_pool_info whose buffer holds `len` bytes; the kernel only
        // reads it.
        with_urandom(|fd| unsafe { libc::ioctl(fd, RNDADDENTROPY, info.as_ptr()) }.into())
    }

    fn reseed_crng(&mut self) -> io::Result<()> {
        // SAFETY: an ioctl without argument.
        with_urandom(|fd| unsafe { libc::ioctl(fd, RNDRESEEDCRNG) }.into())
    }

    fn set_realtime(&mut self, ns: u64) -> io::Result<()> {
        let secs = libc::time_t::try_from(ns / 1_000_000_000)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "time out of range"))?;
        let ts = libc::timespec {
            tv_sec: secs,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: a valid timespec, read by the kernel.
        check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }.into()).map(drop)
    }

    fn block_size(&mut self, device: &Path) -> io::Result<u64> {
        let file = std::fs::File::open(device)?;
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
        check(unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) }.into())?;
        Ok(size)
    }
}

/// Joins `path` onto `root` following symlinks the way the container would see them: absolute
/// link targets and `..` are taken relative to `root` and never leave it. Components that do not
/// exist yet are appended as they are.
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut pending: Vec<PathBuf> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut parts: Vec<PathBuf> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == Path::new("..") {
            parts.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&parts);
        candidate.push(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("too many symlinks under {}", path.display()),
                    ));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    parts.clear();
                }
                let comps: Vec<_> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(PathBuf::from(n)),
                        Component::ParentDir => Some(PathBuf::from("..")),
                        _ => None,
                    })
                    .collect();
                pending.extend(comps.into_iter().rev());
            }
            _ => parts.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(parts);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resolve_stays_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/lib/x")).unwrap(),
            root.join("usr/lib/x")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/escape/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/../../a/./b")).unwrap(),
            root.join("a/b")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/")).unwrap(),
            root.to_path_buf()
        );
        assert!(resolve_in_root(root, Path::new("/loop/x")).is_err());
    }
}
