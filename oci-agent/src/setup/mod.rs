//! Applies a [`ContainerPlan`] from inside the freshly cloned
//! container process: namespaces, sysctls, root filesystem, then the process settings.
//! Every system call goes through [`Sys`], so the order is unit-tested with a recording double.

mod process;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};

pub use process::{apply_process, find_executable};

use crate::plan::{ContainerPlan, DevicePlan, MountPlan};
use crate::sys::{FileKind, Sys};

/// A setup step that failed; the message names the step.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// The step.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The working directory cannot be entered.
    #[error("cannot enter cwd {path:?}: {source}")]
    Cwd {
        /// process.cwd.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `args[0]` was not found or is not executable.
    #[error("executable {name:?} not found{where_}")]
    NotFound {
        /// `args[0]`.
        name: String,
        /// Where it was searched.
        where_: String,
    },
    /// A bind mount's source is relative.
    #[error("bind mount source {0:?} must be absolute (paths outside the VM are not visible)")]
    RelativeBindSource(PathBuf),
    /// A bind mount's source does not exist where the agent runs.
    #[error("bind mount source {0:?} does not exist in the container host (inside the VM)")]
    MissingBindSource(PathBuf),
}

/// Wraps an io error with the step it came from.
pub(crate) fn step<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> Result<T, SetupError> {
    r.map_err(|source| SetupError::Sys {
        what: what(),
        source,
    })
}

/// What the container process needs besides the plan.
#[derive(Debug, Clone, Default)]
pub struct SetupContext {
    /// `<cgroup dir>/cgroup.procs` to join, when cgroups are in use.
    pub cgroup_procs: Option<PathBuf>,
    /// The pty slave to bind on /dev/console, when the process has a terminal.
    pub console: Option<PathBuf>,
    /// A fresh network namespace, its loopback up, to join in place of the one the plan's
    /// clone flags ask for (the process was cloned without `CLONE_NEWNET` then).
    pub spare_netns: Option<PathBuf>,
}

/// Namespaces, cgroup, sysctls and hostname: the steps before the root filesystem. Runs in the
/// process created with `plan.namespaces.clone_flags`.
pub fn enter_namespaces<S: Sys>(
    sys: &mut S,
    plan: &ContainerPlan,
    ctx: &SetupContext,
) -> Result<(), SetupError> {
    if let Some(procs) = &ctx.cgroup_procs {
        step(sys.write_file(procs, b"0"), || {
            format!("join cgroup {}", procs.display())
        })?;
    }
    if plan.namespaces.new_cgroup {
        step(sys.unshare(libc::CLONE_NEWCGROUP), || {
            "unshare cgroup namespace".into()
        })?;
    }
    if let Some(spare) = &ctx.spare_netns {
        step(sys.setns(spare, libc::CLONE_NEWNET), || {
            "join the spare network namespace".into()
        })?;
    }
    for (flag, path) in &plan.namespaces.join {
        step(sys.setns(path, *flag), || {
            format!("join namespace {}", path.display())
        })?;
    }
    // A spare namespace's loopback came up when it was made (in the template).
    if plan.namespaces.clone_flags & libc::CLONE_NEWNET != 0 && ctx.spare_netns.is_none() {
        step(sys.loopback_up(), || "bring up lo".into())?;
    }
    for (key, value) in &plan.sysctl {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        step(sys.write_file(&path, value.as_bytes()), || {
            format!("sysctl {key}={value}")
        })?;
    }
    if let Some(h) = &plan.hostname {
        step(sys.sethostname(h), || format!("sethostname {h}"))?;
    }
    if let Some(d) = &plan.domainname {
        step(sys.setdomainname(d), || format!("setdomainname {d}"))?;
    }
    Ok(())
}

fn do_mount<S: Sys>(sys: &mut S, root: &Path, m: &MountPlan) -> Result<(), SetupError> {
    let target = step(sys.resolve(root, &m.destination), || {
        format!("resolve {}", m.destination.display())
    })?;
    let what = || {
        format!(
            "mount {} on {}",
            m.fstype.as_deref().unwrap_or("bind"),
            m.destination.display()
        )
    };
    if m.is_bind() {
        let source = m.source.as_deref().unwrap_or(Path::new(""));
        if !source.is_absolute() {
            return Err(SetupError::RelativeBindSource(source.to_path_buf()));
        }
        let kind = step(sys.kind(source), what)?
            .ok_or_else(|| SetupError::MissingBindSource(source.to_path_buf()))?;
        if kind == FileKind::Dir {
            step(sys.mkdir_all(&target), what)?;
        } else {
            if let Some(parent) = target.parent() {
                step(sys.mkdir_all(parent), what)?;
            }
            step(sys.create_file(&target), what)?;
        }
        step(sys.mount(Some(source), &target, None, m.flags, None), what)?;
        if let Some(flags) = m.remount_flags {
            step(sys.mount(None, &target, None, flags, None), what)?;
        }
    } else {
        step(sys.mkdir_all(&target), what)?;
        let source = m
            .source
            .clone()
            .or_else(|| m.fstype.as_ref().map(PathBuf::from));
        step(
            sys.mount(
                source.as_deref(),
                &target,
                m.fstype.as_deref(),
                m.flags,
                m.data.as_deref(),
            ),
            what,
        )?;
    }
    for p in &m.propagation {
        step(sys.mount(None, &target, None, *p, None), what)?;
    }
    Ok(())
}

fn make_device<S: Sys>(
    sys: &mut S,
    root: &Path,
    d: &DevicePlan,
    fresh_dev: bool,
) -> Result<(), SetupError> {
    let what = || format!("create device {}", d.path.display());
    // Directly under a /dev the setup just mounted: no symlinks to resolve, no directory to make.
    let direct = fresh_dev && d.path.parent() == Some(Path::new("/dev"));
    let target = if direct {
        root.join(d.path.strip_prefix("/").unwrap_or(&d.path))
    } else {
        let target = step(sys.resolve(root, &d.path), || {
            format!("resolve {}", d.path.display())
        })?;
        if let Some(parent) = target.parent() {
            step(sys.mkdir_all(parent), what)?;
        }
        target
    };
    let dev = libc::makedev(d.major as u32, d.minor as u32);
    match sys.mknod(&target, d.kind | d.mode, dev) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        // Without CAP_MKNOD (or on a nodev mount) bind the node from the agent's /dev instead.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            step(sys.create_file(&target), what)?;
            step(
                sys.mount(Some(&d.path), &target, None, libc::MS_BIND, None),
                what,
            )?;
            return Ok(());
        }
        Err(e) => {
            return Err(SetupError::Sys {
                what: what(),
                source: e,
            })
        }
    }
    if d.uid != 0 || d.gid != 0 {
        step(sys.chown(&target, d.uid, d.gid), what)?;
    }
    Ok(())
}

/// Builds the container's root under `plan.rootfs` (still in the agent's view): makes the mount
/// tree private to the container, binds the root onto itself, mounts, devices, /dev symlinks.
pub fn prepare_rootfs<S: Sys>(
    sys: &mut S,
    plan: &ContainerPlan,
    ctx: &SetupContext,
) -> Result<(), SetupError> {
    let root = plan.rootfs.as_path();
    // Device nodes need their exact modes.
    sys.umask(0);
    step(
        sys.mount(
            None,
            Path::new("/"),
            None,
            libc::MS_SLAVE | libc::MS_REC,
            None,
        ),
        || "make / rslave".into(),
    )?;
    step(
        sys.mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC, None),
        || format!("bind rootfs {}", root.display()),
    )?;
    for m in &plan.mounts {
        do_mount(sys, root, m)?;
    }
    for d in &plan.devices {
        make_device(sys, root, d, plan.dev_symlinks)?;
    }
    if plan.dev_symlinks {
        let links = [
            ("/proc/self/fd", "/dev/fd"),
            ("/proc/self/fd/0", "/dev/stdin"),
            ("/proc/self/fd/1", "/dev/stdout"),
            ("/proc/self/fd/2", "/dev/stderr"),
            ("pts/ptmx", "/dev/ptmx"),
        ];
        for (target, link) in links {
            let at = root.join(link.trim_start_matches('/'));
            match sys.symlink(Path::new(target), &at) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(SetupError::Sys {
                        what: format!("symlink {link}"),
                        source: e,
                    })
                }
                _ => {}
            }
        }
    }
    if let Some(console) = &ctx.console {
        let at = root.join("dev/console");
        step(sys.create_file(&at), || "create /dev/console".into())?;
        step(
            sys.mount(Some(console), &at, None, libc::MS_BIND, None),
            || "bind /dev/console".into(),
        )?;
    }
    Ok(())
}

/// Makes `plan.rootfs` the root: pivot_root, or (on the initramfs, where pivot_root is refused)
/// moving the root mount over / and chroot.
pub fn enter_rootfs<S: Sys>(sys: &mut S, plan: &ContainerPlan) -> Result<(), SetupError> {
    let root = plan.rootfs.as_path();
    let dot = Path::new(".");
    step(sys.chdir(root), || format!("chdir {}", root.display()))?;
    match sys.pivot_root(dot, dot) {
        Ok(()) => {
            // The old root is stacked under the new one: detach it.
            step(
                sys.mount(None, dot, None, libc::MS_SLAVE | libc::MS_REC, None),
                || "make old root rslave".into(),
            )?;
            step(sys.umount(dot, libc::MNT_DETACH), || {
                "detach old root".into()
            })?;
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            step(
                sys.mount(Some(root), Path::new("/"), None, libc::MS_MOVE, None),
                || "move rootfs to /".into(),
            )?;
            step(sys.chroot(dot), || "chroot".into())?;
        }
        Err(e) => {
            return Err(SetupError::Sys {
                what: "pivot_root".into(),
                source: e,
            })
        }
    }
    step(sys.chdir(Path::new("/")), || "chdir /".into())
}

/// After the root switch: propagation, masked and read-only paths, read-only root.
pub fn finish_rootfs<S: Sys>(sys: &mut S, plan: &ContainerPlan) -> Result<(), SetupError> {
    let slash = Path::new("/");
    if let Some(p) = plan.rootfs_propagation {
        step(sys.mount(None, slash, None, p, None), || {
            "rootfs propagation".into()
        })?;
    }
    for p in &plan.masked_paths {
        let what = || format!("mask {}", p.display());
        match step(sys.kind(p), what)? {
            None => {}
            Some(FileKind::Dir) => step(
                sys.mount(
                    Some(Path::new("tmpfs")),
                    p,
                    Some("tmpfs"),
                    libc::MS_RDONLY,
                    None,
                ),
                what,
            )?,
            Some(_) => step(
                sys.mount(Some(Path::new("/dev/null")), p, None, libc::MS_BIND, None),
                what,
            )?,
        }
    }
    for p in &plan.readonly_paths {
        let what = || format!("make {} read-only", p.display());
        if step(sys.kind(p), what)?.is_none() {
            continue;
        }
        step(
            sys.mount(Some(p), p, None, libc::MS_BIND | libc::MS_REC, None),
            what,
        )?;
        step(
            sys.mount(
                None,
                p,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                None,
            ),
            what,
        )?;
    }
    if plan.readonly_root {
        step(
            sys.mount(
                None,
                slash,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                None,
            ),
            || "remount / read-only".into(),
        )?;
    }
    Ok(())
}

/// The whole container setup, in order; returns the executable to exec.
pub fn setup_container<S: Sys>(
    sys: &mut S,
    plan: &ContainerPlan,
    ctx: &SetupContext,
) -> Result<std::ffi::CString, SetupError> {
    setup_container_marked(sys, plan, ctx, &mut |_| {})
}

/// [`setup_container`], calling `mark` with each step's name as it completes (the agent
/// times the steps with it).
pub fn setup_container_marked<S: Sys>(
    sys: &mut S,
    plan: &ContainerPlan,
    ctx: &SetupContext,
    mark: &mut dyn FnMut(&'static str),
) -> Result<std::ffi::CString, SetupError> {
    enter_namespaces(sys, plan, ctx)?;
    mark("namespaces");
    prepare_rootfs(sys, plan, ctx)?;
    mark("mounts");
    enter_rootfs(sys, plan)?;
    mark("pivot_root");
    finish_rootfs(sys, plan)?;
    mark("masks");
    let exe = apply_process(sys, &plan.process)?;
    mark("process");
    Ok(exe)
}
