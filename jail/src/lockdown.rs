//! The jailed half's lock-down: namespaces, the new root, limits, privileges.

use crate::{Exposed, JailConfig, JailError};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The jailed half of a process split by [`crate::enter`]: still root, in a PID namespace
/// of its own; [`Jailed::lock_down`] finishes the jail.
#[derive(Debug)]
pub struct Jailed {
    pub(crate) config: JailConfig,
    pub(crate) id: u32,
    /// The mount point of the jail's root (its tmpfs exists only in the jail's mount
    /// namespace; on the host it stays an empty directory).
    pub(crate) root: PathBuf,
    /// Where the supervisor says the jailed half is in its cgroup (one byte; end of file
    /// when it could not put it there).
    pub(crate) go: Option<OwnedFd>,
    /// Read end of a pipe whose write end only the supervisor holds: it reads end of file
    /// once the supervisor is gone.
    pub(crate) supervisor: OwnedFd,
}

impl Jailed {
    /// The uid and gid the jailed process runs as after [`Jailed::lock_down`].
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Adds a path to chown to the jail's id at lock-down (a socket made after the split).
    pub fn own(&mut self, path: PathBuf) {
        self.config.owned.push(path);
    }

    /// Adds a path made visible in the jail.
    pub fn expose(&mut self, exposed: Exposed) {
        self.config.exposed.push(exposed);
    }

    /// Finishes the jail. Must run while the process has one thread (credentials are per
    /// thread): checked. After it the process sees only its exposed paths, is no longer
    /// root, has no capability and cannot gain any.
    pub fn lock_down(&mut self) -> Result<(), JailError> {
        let started = std::time::Instant::now();
        single_threaded()?;
        if let Some(go) = self.go.take() {
            let mut byte = [0u8; 1];
            if std::io::Read::read_exact(&mut std::fs::File::from(go), &mut byte).is_err() {
                return Err(JailError::Unavailable(
                    "the supervisor could not put the jailed half in its cgroup".into(),
                ));
            }
        }
        let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        if self.config.new_network {
            flags |= libc::CLONE_NEWNET;
        }
        // SAFETY: unshare with namespace flags only.
        if unsafe { libc::unshare(flags) } != 0 {
            return Err(JailError::last_os(
                "unshare the mount, IPC, UTS and network namespaces",
            ));
        }
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REC | libc::MS_PRIVATE,
            None,
        )?;
        let plain = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        match &self.config.root_dir {
            Some(dir) => {
                mount(Some(dir), &self.root, None, libc::MS_BIND, None)?;
                mount(
                    None,
                    &self.root,
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | plain,
                    None,
                )?;
                chown(&self.root, self.id)?;
            }
            None => mount(
                Some(Path::new("tmpfs")),
                &self.root,
                Some("tmpfs"),
                plain,
                Some("size=1m,mode=0755"),
            )?,
        }
        self.make_dev()?;
        for exposed in &self.config.exposed {
            self.bind(exposed)?;
        }
        for path in &self.config.owned {
            chown(path, self.id)?;
        }
        mount_own_processes(&self.root)?;
        point_directories_at_null()?;
        enter_root(&self.root, self.config.root_dir.is_none())?;
        // SAFETY: sethostname with a buffer and its length.
        let name = self.config.name.as_bytes();
        if unsafe { libc::sethostname(name.as_ptr().cast(), name.len().min(64)) } != 0 {
            return Err(JailError::last_os("set the jail's host name"));
        }
        self.limit()?;
        drop_privileges(self.id)?;
        // The supervisor holds the write end until it ends: gone already, so go too.
        let mut poll = libc::pollfd {
            fd: self.supervisor.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one descriptor we own, no wait.
        if unsafe { libc::poll(&mut poll, 1, 0) } != 0 {
            return Err(JailError::Unavailable(
                "the jail's supervisor is gone".into(),
            ));
        }
        tracing::debug!(
            uid = self.id,
            took_us = started.elapsed().as_micros() as u64,
            "jail {} locked down",
            self.config.name
        );
        Ok(())
    }

    /// The jail's `/dev`: a tmpfs of its own with `/dev/null` and `/dev/urandom` bound in
    /// and, when asked, KVM's and TUN's nodes made for the jail's uid alone.
    fn make_dev(&self) -> Result<(), JailError> {
        let dev = self.root.join("dev");
        std::fs::create_dir_all(&dev).map_err(JailError::io(format!("make {}", dev.display())))?;
        mount(
            Some(Path::new("tmpfs")),
            &dev,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("size=64k,mode=0755"),
        )?;
        for exposed in [
            Exposed::writable("/dev/null"),
            Exposed::read_only("/dev/urandom"),
        ] {
            self.bind(&exposed)?;
        }
        if self.config.kvm_devices {
            let net = dev.join("net");
            std::fs::create_dir_all(&net)
                .map_err(JailError::io(format!("make {}", net.display())))?;
            for (path, major, minor) in [(dev.join("kvm"), 10, 232), (net.join("tun"), 10, 200)] {
                let c = CString::new(path.as_os_str().as_bytes())
                    .map_err(|_| JailError::Unavailable(format!("NUL in {}", path.display())))?;
                // SAFETY: mknod(2) of a character device at a NUL-terminated path.
                let made = unsafe {
                    libc::mknod(
                        c.as_ptr(),
                        libc::S_IFCHR | 0o600,
                        libc::makedev(major, minor),
                    )
                };
                if made != 0 {
                    return Err(JailError::last_os(format!("make {}", path.display())));
                }
                chown(&path, self.id)?;
            }
        }
        Ok(())
    }

    /// Binds `exposed` at its own path below the new root.
    fn bind(&self, exposed: &Exposed) -> Result<(), JailError> {
        let source = &exposed.path;
        let meta = std::fs::metadata(source).map_err(JailError::io(format!(
            "expose {} in the jail",
            source.display()
        )))?;
        let relative = source.strip_prefix("/").map_err(|_| {
            JailError::Unavailable(format!("{} is not an absolute path", source.display()))
        })?;
        let target = self.root.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(JailError::io(format!("make {}", parent.display())))?;
        }
        if meta.is_dir() {
            std::fs::create_dir_all(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        }
        .map_err(JailError::io(format!("make {}", target.display())))?;
        mount(Some(source), &target, None, libc::MS_BIND, None)?;
        use std::os::unix::fs::FileTypeExt;
        let device = meta.file_type().is_char_device() || meta.file_type().is_block_device();
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NOEXEC;
        if !device {
            flags |= libc::MS_NODEV;
        }
        if !exposed.writable {
            flags |= libc::MS_RDONLY;
        }
        mount(None, &target, None, flags, None)
    }

    fn limit(&self) -> Result<(), JailError> {
        let set = |resource, value: u64, what: &str| {
            let mut old = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit into a local.
            unsafe { libc::getrlimit(resource, &mut old) };
            // Lowering only: raising a hard limit needs CAP_SYS_RESOURCE.
            let value = value.min(old.rlim_max);
            let new = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: setrlimit from a local.
            if unsafe { libc::setrlimit(resource, &new) } != 0 {
                return Err(JailError::last_os(format!("limit {what}")));
            }
            Ok(())
        };
        set(libc::RLIMIT_NOFILE, self.config.open_files, "open files")?;
        set(libc::RLIMIT_FSIZE, self.config.file_size, "file size")?;
        set(libc::RLIMIT_CORE, 0, "core dumps")?;
        set(libc::RLIMIT_NPROC, self.config.cgroup.pids, "processes")?;
        // Past the file size limit a write fails (EFBIG) instead of killing the VMM.
        // SAFETY: ignoring a signal.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        Ok(())
    }
}

/// `/proc` with the jail's own processes alone (its PID namespace; `subset=pid`: no
/// `/proc/sys`, no host-wide files), for `/proc/self/fd` (sockets at long paths are
/// reached through their directory's descriptor). A kernel without `subset=pid` (before
/// 5.8) gets no `/proc` in the jail.
fn mount_own_processes(root: &Path) -> Result<(), JailError> {
    let proc = root.join("proc");
    std::fs::create_dir_all(&proc).map_err(JailError::io(format!("make {}", proc.display())))?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    match mount(
        Some(Path::new("proc")),
        &proc,
        Some("proc"),
        flags,
        Some("subset=pid,hidepid=invisible"),
    ) {
        Err(JailError::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!("this kernel mounts no pid-only /proc: the jail has none");
            let _ = std::fs::remove_dir(&proc);
            Ok(())
        }
        other => other,
    }
}

/// Credentials are per thread: a second thread would keep root.
fn single_threaded() -> Result<(), JailError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(JailError::io("list this process's threads"))?
        .count();
    if threads == 1 {
        Ok(())
    } else {
        Err(JailError::Unavailable(format!(
            "the process has {threads} threads: the jail must be locked down before any \
             other thread starts"
        )))
    }
}

/// A directory descriptor would reach the host's file system from inside the jail
/// (`openat` relative to it): each one left open is pointed at `/dev/null`.
fn point_directories_at_null() -> Result<(), JailError> {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(JailError::io("list open descriptors"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(JailError::io("open /dev/null"))?;
    for fd in fds {
        // SAFETY: fstat into a zeroed local; a descriptor closed since the listing fails.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFDIR
            // SAFETY: dup2 onto a descriptor number this process holds.
            && unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0
        {
            return Err(JailError::last_os(format!(
                "close directory descriptor {fd}"
            )));
        }
    }
    Ok(())
}

/// Makes `root` the process's `/`, the old root detached; read-only when `read_only`.
fn enter_root(root: &Path, read_only: bool) -> Result<(), JailError> {
    std::env::set_current_dir(root).map_err(JailError::io(format!("enter {}", root.display())))?;
    let dot = c".";
    // SAFETY: pivot_root(".", ".") stacks the old root under the new one, at ".".
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
        return Err(JailError::last_os(format!(
            "pivot_root into {}",
            root.display()
        )));
    }
    // SAFETY: detaching the old root, stacked at ".".
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(JailError::last_os("detach the host's root"));
    }
    std::env::set_current_dir("/").map_err(JailError::io("enter the jail's root"))?;
    if !read_only {
        return Ok(());
    }
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
}

/// No capability in any set, the bounding set empty, uid and gid `id` (real, effective,
/// saved), no supplementary groups, no_new_privs, killed when the supervisor dies.
fn drop_privileges(id: u32) -> Result<(), JailError> {
    let last_cap: i32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(63);
    for cap in 0..=last_cap {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(JailError::Io {
                    what: format!("drop capability {cap} from the bounding set"),
                    source: err,
                });
            }
        }
    }
    // SAFETY: prctl and set*id calls with integer arguments; setgroups with an empty list.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(JailError::last_os("drop supplementary groups"));
        }
        if libc::setresgid(id, id, id) != 0 {
            return Err(JailError::last_os(format!("become gid {id}")));
        }
        if libc::setresuid(id, id, id) != 0 {
            return Err(JailError::last_os(format!("become uid {id}")));
        }
    }
    clear_capabilities()?;
    // SAFETY: prctl with integer arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(JailError::last_os("set no_new_privs"));
        }
        // A change of uid cleared it: the jailed half ends with its supervisor.
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(JailError::last_os("set the parent-death signal"));
        }
        if libc::getuid() != id || libc::geteuid() != id || libc::getegid() != id {
            return Err(JailError::Unavailable(format!("still not uid/gid {id}")));
        }
    }
    Ok(())
}

/// capset(2) with every set empty (the uid change already emptied them: made sure).
fn clear_capabilities() -> Result<(), JailError> {
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
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset with a version-3 header and the two data structs it reads.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(JailError::last_os("clear capabilities"));
    }
    Ok(())
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let cstr =
        |s: &str| CString::new(s).map_err(|_| JailError::Unavailable(format!("NUL in {s:?}")));
    let path_c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| JailError::Unavailable(format!("NUL in {}", p.display())))
    };
    let source = source.map(path_c).transpose()?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    let target_c = path_c(target)?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: mount(2) with NUL-terminated strings (or null) that outlive the call.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target_c.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc != 0 {
        return Err(JailError::last_os(format!(
            "mount {} (flags {flags:#x})",
            target.display()
        )));
    }
    Ok(())
}

fn chown(path: &Path, id: u32) -> Result<(), JailError> {
    std::os::unix::fs::lchown(path, Some(id), Some(id)).map_err(JailError::io(format!(
        "give {} to uid {id}",
        path.display()
    )))
}
