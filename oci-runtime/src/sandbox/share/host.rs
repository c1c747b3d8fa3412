//! The host side of a container's share: its directory, the opened sources, and the
//! virtiofsd that serves them (see the parent module).

use super::{ShareEntry, ShareError};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the virtiofsd binary.
pub const VIRTIOFSD_ENV: &str = "ZVM_VIRTIOFSD";
/// How long virtiofsd gets to listen on its socket.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// One source as a detached copy of its mount (open_tree), read-only already when the
/// mount asks, and the placeholder it is attached on.
#[derive(Debug)]
struct PreparedMount {
    /// The detached mount tree (attached by virtiofsd's process before it execs).
    tree: OwnedFd,
    /// The placeholder in the share's directory.
    target: CString,
}

/// How the guest's kernel may cache a share's files (virtiofsd's `--cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShareCache {
    /// Close-to-open consistency (`auto`): every open drops the file's cached pages, so the
    /// guest sees what the host changed between two opens. For shares holding host files
    /// that others may change: bind mounts, a bundle's root directory.
    #[default]
    Auto,
    /// The guest keeps what it has read (`always`), as virtiofsd allows for a directory
    /// only this guest changes: a flist's copy-on-write root and the VM's own volume
    /// stores. Each exec then finds its binary's pages cached, and the processes running
    /// the same binary keep theirs (with `auto` every open of a shared binary, a busybox
    /// image's every command, unmaps and re-reads it).
    Exclusive,
}

impl ShareCache {
    /// The policy for a share of `entries` (its root, if any, being a private
    /// copy-on-write tree): [`ShareCache::Exclusive`] when every entry's source is one of
    /// `owned`, the stores this VM alone mounts; [`ShareCache::Auto`] otherwise.
    pub fn for_entries(entries: &[super::ShareEntry], owned: &[&Path]) -> ShareCache {
        if entries.iter().all(|e| owned.contains(&e.source.as_path())) {
            ShareCache::Exclusive
        } else {
            ShareCache::Auto
        }
    }

    /// virtiofsd's name for it.
    fn virtiofsd_policy(self) -> &'static str {
        match self {
            ShareCache::Auto => "auto",
            ShareCache::Exclusive => "always",
        }
    }
}

/// A share's directory with its sources opened and checked, ready for [`Virtiofsd::start`].
#[derive(Debug)]
pub struct PreparedShare {
    dir: PathBuf,
    mounts: Vec<PreparedMount>,
    cache: ShareCache,
}

impl PreparedShare {
    /// The share's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The same share, its files cached by the guest as `cache` says (default: `Auto`).
    pub fn with_cache(self, cache: ShareCache) -> PreparedShare {
        PreparedShare { cache, ..self }
    }

    /// How the guest may cache its files.
    pub fn cache(&self) -> ShareCache {
        self.cache
    }

    /// A command that runs `program` where the share's sources are mounted on their
    /// placeholders: in a mount namespace of its own, dying with its parent.
    pub fn command(&self, program: &Path) -> Command {
        let mounts: Vec<(libc::c_int, CString)> = self
            .mounts
            .iter()
            .map(|m| (m.tree.as_raw_fd(), m.target.clone()))
            .collect();
        let mut cmd = Command::new(program);
        // SAFETY: the closure makes system calls only, on data made before the fork.
        unsafe { cmd.pre_exec(move || bind_sources(&mounts)) };
        cmd
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> ShareError {
    move |source| ShareError::Io { what, source }
}

fn cstring(path: &Path) -> Result<CString, ShareError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| ShareError::Io {
        what: format!("use {path:?}"),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// What a file type is, for an error message; `None` for the types that can be shared.
fn unsupported_kind(mode: libc::mode_t) -> Option<&'static str> {
    match mode & libc::S_IFMT {
        libc::S_IFDIR | libc::S_IFREG => None,
        libc::S_IFIFO => Some("a FIFO"),
        libc::S_IFSOCK => Some("a socket"),
        libc::S_IFCHR => Some("a character device"),
        libc::S_IFBLK => Some("a block device"),
        _ => Some("of an unknown file type"),
    }
}

/// Opens `entry`'s source (following symbolic links, as runc does: it is a host path)
/// and checks that it is a directory or a regular file. Returns the descriptor and
/// whether it is a directory.
fn open_source(entry: &ShareEntry) -> Result<(OwnedFd, bool), ShareError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(&entry.source)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => ShareError::MissingSource {
                path: entry.source.clone(),
                destination: entry.destination.clone(),
            },
            _ => ShareError::Io {
                what: format!("open bind mount source {:?}", entry.source),
                source: e,
            },
        })?;
    let fd = OwnedFd::from(file);
    // SAFETY: fstat on a descriptor we own, into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io(format!("stat {:?}", entry.source))(
            std::io::Error::last_os_error(),
        ));
    }
    if let Some(kind) = unsupported_kind(st.st_mode) {
        return Err(ShareError::UnsupportedSource {
            path: entry.source.clone(),
            destination: entry.destination.clone(),
            kind,
        });
    }
    Ok((fd, st.st_mode & libc::S_IFMT == libc::S_IFDIR))
}

/// Makes `dir` (replacing what was there) the share's directory: opens and checks each
/// entry's source and makes an empty directory or file of the same kind as its
/// placeholder. Nothing is mounted yet.
pub fn prepare(dir: &Path, entries: &[ShareEntry]) -> Result<PreparedShare, ShareError> {
    prepare_with_root(dir, entries, None)
}

/// [`prepare`], with `root` (a detached mount, e.g. a copy-on-write overlay made by
/// [`super::overlay::OverlayDirs::mount_detached`]) attached on the [`super::ROOT_ENTRY`]
/// directory; `entries` must then not name that entry.
pub fn prepare_with_root(
    dir: &Path,
    entries: &[ShareEntry],
    root: Option<OwnedFd>,
) -> Result<PreparedShare, ShareError> {
    if root.is_some() && entries.iter().any(|e| e.name == super::ROOT_ENTRY) {
        return Err(ShareError::Io {
            what: format!("share a root and an entry named {}", super::ROOT_ENTRY),
            source: std::io::Error::from_raw_os_error(libc::EEXIST),
        });
    }
    // Check every source before anything is made.
    let opened = entries
        .iter()
        .map(|e| open_source(e).map(|(fd, is_dir)| (e, fd, is_dir)))
        .collect::<Result<Vec<_>, _>>()?;
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(format!("remove {dir:?}"))(e))
        }
        _ => {}
    }
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(dir)
        .map_err(io(format!("create {dir:?}")))?;
    let mut mounts = Vec::with_capacity(opened.len() + 1);
    if let Some(tree) = root {
        let target = dir.join(super::ROOT_ENTRY);
        std::fs::create_dir(&target).map_err(io(format!("create {target:?}")))?;
        mounts.push(PreparedMount {
            tree,
            target: cstring(&target)?,
        });
    }
    for (entry, fd, is_dir) in opened {
        let target = dir.join(&entry.name);
        if is_dir {
            std::fs::create_dir(&target).map_err(io(format!("create {target:?}")))?;
        } else {
            File::create(&target).map_err(io(format!("create {target:?}")))?;
        }
        mounts.push(PreparedMount {
            tree: detached_copy(entry, &fd)?,
            target: cstring(&target)?,
        });
    }
    Ok(PreparedShare {
        dir: dir.to_path_buf(),
        mounts,
        cache: ShareCache::Auto,
    })
}

/// The virtiofsd binary: [`VIRTIOFSD_ENV`] when set (and then nothing else), else beside
/// the running executable, in an install's `lib/zvm/`, zvm's cache
/// (scripts/install-virtiofsd.sh), `/usr/libexec/virtiofsd`, `$PATH`.
pub fn find_virtiofsd() -> Result<PathBuf, ShareError> {
    if let Some(path) = std::env::var_os(VIRTIOFSD_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ShareError::Virtiofsd(format!(
                "{VIRTIOFSD_ENV}={} is not a file",
                path.display()
            )))
        };
    }
    virtiofsd_candidates()
        .into_iter()
        .find(|c| c.is_file())
        .ok_or_else(|| {
            ShareError::Virtiofsd(format!(
                "not found; install it with `bash scripts/install-virtiofsd.sh` or `zvm setup`, \
             or name it with {VIRTIOFSD_ENV}"
            ))
        })
}

/// Where a virtiofsd is looked for when none is named, in order: beside the running
/// executable, in an install's `lib/zvm/`, zvm's cache (scripts/install-virtiofsd.sh),
/// Debian's `/usr/libexec/virtiofsd`, then `$PATH`: the same places `zvm` looks.
pub use vm_runner::virtiofs::virtiofsd_candidates;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// A detached copy of the mount at `source` (the whole tree below it when `entry` is
/// recursive), made read-only (recursively) when `entry` is: open_tree(2) and
/// mount_setattr(2), Linux 5.12 or later.
fn detached_copy(entry: &ShareEntry, source: &OwnedFd) -> Result<OwnedFd, ShareError> {
    let empty = c"";
    let recursive = if entry.recursive { AT_RECURSIVE } else { 0 };
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | libc::AT_EMPTY_PATH as libc::c_uint
        | recursive;
    // SAFETY: open_tree on a descriptor we own with an empty, NUL-terminated path.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            source.as_raw_fd(),
            empty.as_ptr(),
            flags,
        )
    };
    if tree < 0 {
        return Err(io(format!(
            "copy the mount of {:?} (open_tree)",
            entry.source
        ))(std::io::Error::last_os_error()));
    }
    // SAFETY: open_tree returned a new descriptor, owned from here on.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as libc::c_int) };
    if entry.read_only {
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: a descriptor we own, an empty path and a mount_attr with its size.
        let set = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint | recursive,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if set != 0 {
            return Err(io(format!(
                "make the copy of {:?} read-only (mount_setattr)",
                entry.source
            ))(std::io::Error::last_os_error()));
        }
    }
    Ok(tree)
}

/// In virtiofsd's process before it execs: dies with its parent, takes a mount namespace of
/// its own (slave to the host's, so nothing goes back) and attaches each detached mount on
/// its placeholder. System calls only (no allocation after fork).
fn bind_sources(mounts: &[(libc::c_int, CString)]) -> std::io::Result<()> {
    let fail = || Err(std::io::Error::last_os_error());
    let empty = c"";
    // SAFETY: prctl, unshare, mount and move_mount with constant arguments, descriptors
    // the parent made, or NUL-terminated strings that live across the calls.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return fail();
        }
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return fail();
        }
        let root = c"/";
        let flags = libc::MS_REC | libc::MS_SLAVE;
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        ) != 0
        {
            return fail();
        }
        for (tree, target) in mounts {
            if libc::syscall(
                libc::SYS_move_mount,
                *tree,
                empty.as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ) != 0
            {
                return fail();
            }
        }
    }
    Ok(())
}

/// The arguments of the virtiofsd serving a container's share `dir` on `socket`. With
/// `--xattr`: as under runc, the container sees its files' extended attributes, file
/// capabilities (`security.capability`, which the guest kernel honours at exec) among
/// them; without it an image's `setcap` binaries would run without their capabilities.
/// What the container may set is bounded by the guest kernel as runc's are by the host's
/// (`trusted.*` needs CAP_SYS_ADMIN in the guest). `cache`: see [`ShareCache`].
pub fn virtiofsd_args(dir: &Path, socket: &Path, cache: ShareCache) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--shared-dir".into(),
        dir.into(),
        "--socket-path".into(),
        socket.into(),
    ];
    let policy = cache.virtiofsd_policy();
    args.extend(
        ["--sandbox", "namespace", "--cache", policy, "--xattr"]
            .into_iter()
            .chain(vmm::devices::virtio::fs::VIRTIOFSD_MIGRATION_ARGS)
            .chain(["--log-level", "warn"])
            .map(Into::into),
    );
    args
}

/// The virtiofsd serving a container's share; stopped (and its socket's directory
/// removed) when dropped by the process that started it.
#[derive(Debug)]
pub struct Virtiofsd {
    child: Child,
    socket: PathBuf,
    socket_dir: PathBuf,
    owner: u32,
}

impl Virtiofsd {
    /// Starts `binary` on `share` (its log goes to `log`) and waits until it listens.
    pub fn start(binary: &Path, share: PreparedShare, log: &Path) -> Result<Self, ShareError> {
        let socket_dir = tempfile::Builder::new()
            .prefix("zvm-share-")
            .tempdir()
            .map_err(io("make virtiofsd's socket directory".into()))?
            .keep();
        let socket = socket_dir.join("fs.sock");
        let stderr = File::create(log).map_err(io(format!("create {log:?}")))?;
        let mut cmd = share.command(binary);
        cmd.args(virtiofsd_args(&share.dir, &socket, share.cache))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .env_remove("RUST_LOG");
        let started = |e: std::io::Error| {
            ShareError::Virtiofsd(format!(
                "cannot start {} on {}: {e}",
                binary.display(),
                share.dir.display()
            ))
        };
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&socket_dir);
                return Err(started(e));
            }
        };
        // The sources' descriptors are not needed once virtiofsd has mounted them.
        drop(share);
        let mut daemon = Virtiofsd {
            child,
            socket,
            socket_dir,
            owner: std::process::id(),
        };
        daemon.wait_listening(log)?;
        Ok(daemon)
    }

    fn wait_listening(&mut self, log: &Path) -> Result<(), ShareError> {
        use std::os::unix::fs::FileTypeExt;
        let start = Instant::now();
        loop {
            if std::fs::metadata(&self.socket).is_ok_and(|m| m.file_type().is_socket()) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let said = std::fs::read_to_string(log).unwrap_or_default();
                return Err(ShareError::Virtiofsd(format!(
                    "it exited ({status}) before it listened: {}",
                    said.trim()
                )));
            }
            if start.elapsed() > START_DEADLINE {
                return Err(ShareError::Virtiofsd(format!(
                    "it did not listen on {} within {START_DEADLINE:?}",
                    self.socket.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Its vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        // A forked copy (the jailed half of a sandbox) neither owns nor can stop it.
        if std::process::id() != self.owner {
            return;
        }
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.socket_dir);
    }
}
