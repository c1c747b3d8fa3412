//! Pure translation of config.json into a container plan: every decision about what to mount,
//! which namespaces to create, which cgroup files to write and how the process is configured is
//! made here, without touching the system, so it can be unit-tested. `setup` then applies it.

pub mod caps;
pub mod cgroup;
pub mod mounts;
pub mod process;
pub mod seccomp;

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Spec};

pub use cgroup::CgroupPlan;
pub use mounts::MountPlan;
pub use process::{ProcessPlan, RlimitPlan};

/// Why a spec cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The spec has no `process`.
    #[error("config.json has no process")]
    NoProcess,
    /// `process.args` is missing or empty.
    #[error("process.args is empty: no program to run (no args)")]
    NoArgs,
    /// A string holds a NUL byte.
    #[error("{0} contains a NUL byte")]
    NulByte(String),
    /// An env entry is not `KEY=value`.
    #[error("environment entry {0:?} is not KEY=value")]
    BadEnv(String),
    /// `process.cwd` is relative.
    #[error("process.cwd {0:?} must be an absolute path")]
    RelativeCwd(PathBuf),
    /// An rlimit is inconsistent.
    #[error("rlimit {0}")]
    BadRlimit(String),
    /// oomScoreAdj outside -1000..=1000.
    #[error("process.oomScoreAdj {0} is outside -1000..=1000")]
    BadOomScore(i32),
    /// A capability name this agent does not know.
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    /// A mount destination is relative.
    #[error("mount destination {0:?} must be an absolute path")]
    RelativeMountDestination(PathBuf),
    /// A bind mount without source.
    #[error("bind mount at {0:?} has no source")]
    BindWithoutSource(PathBuf),
    /// A non-bind mount without type.
    #[error("mount at {0:?} has no type")]
    MountWithoutType(PathBuf),
    /// Unknown propagation mode.
    #[error("unknown mount propagation {0:?}")]
    BadPropagation(String),
    /// cgroupsPath escapes the cgroup root or is empty.
    #[error("bad linux.cgroupsPath {0:?}")]
    BadCgroupPath(PathBuf),
    /// A resource value cannot be applied.
    #[error("bad linux.resources: {0}")]
    BadResource(String),
    /// A namespace configuration this agent cannot apply.
    #[error("namespaces: {0}")]
    BadNamespace(String),
    /// A device entry is wrong.
    #[error("bad linux.devices entry: {0}")]
    BadDevice(String),
    /// `linux.seccomp` cannot be compiled.
    #[error("linux.seccomp: {0}")]
    Seccomp(String),
    /// A feature the agent does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Namespaces of the container process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespacePlan {
    /// `CLONE_NEW*` flags for the clone that creates the container process (all but cgroup).
    pub clone_flags: i32,
    /// Unshare a cgroup namespace after joining the container's cgroup.
    pub new_cgroup: bool,
    /// Existing namespaces to join: `(CLONE_NEW* flag, path)`.
    pub join: Vec<(i32, PathBuf)>,
}

impl NamespacePlan {
    /// Whether the process gets (or joins) a namespace of this `CLONE_NEW*` type.
    pub fn has(&self, flag: i32) -> bool {
        self.clone_flags & flag != 0
            || (flag == libc::CLONE_NEWCGROUP && self.new_cgroup)
            || self.join.iter().any(|(f, _)| *f == flag)
    }
}

/// A device node to create in the container's /dev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    /// Absolute path inside the container.
    pub path: PathBuf,
    /// `S_IFCHR`, `S_IFBLK` or `S_IFIFO`.
    pub kind: u32,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The whole container, ready to be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    /// Where the root filesystem is, in the agent's view.
    pub rootfs: PathBuf,
    /// Remount the root read-only after setup.
    pub readonly_root: bool,
    /// Namespaces.
    pub namespaces: NamespacePlan,
    /// Hostname (needs a new UTS namespace).
    pub hostname: Option<String>,
    /// NIS domain name (needs a new UTS namespace).
    pub domainname: Option<String>,
    /// Mounts, in spec order.
    pub mounts: Vec<MountPlan>,
    /// Device nodes (the default set when /dev is a fresh mount, then linux.devices).
    pub devices: Vec<DevicePlan>,
    /// Create /dev/fd, /dev/stdin..., /dev/ptmx symlinks (when /dev is a fresh mount).
    pub dev_symlinks: bool,
    /// Propagation of the container's root mount.
    pub rootfs_propagation: Option<u64>,
    /// Paths hidden from the container.
    pub masked_paths: Vec<PathBuf>,
    /// Paths made read-only.
    pub readonly_paths: Vec<PathBuf>,
    /// `(key, value)` sysctls, written under /proc/sys in the container's namespaces.
    pub sysctl: Vec<(String, String)>,
    /// The container's cgroup.
    pub cgroup: CgroupPlan,
    /// The init process.
    pub process: ProcessPlan,
    /// Spec features accepted but not applied (for the log).
    pub ignored: Vec<String>,
}

fn default_devices() -> Vec<DevicePlan> {
    [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
    .into_iter()
    .map(|(name, major, minor)| DevicePlan {
        path: Path::new("/dev").join(name),
        kind: libc::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

fn plan_namespaces(spec: &Spec) -> Result<NamespacePlan, PlanError> {
    let mut plan = NamespacePlan::default();
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut seen = Vec::new();
    for ns in &namespaces {
        let typ = ns.typ();
        if seen.contains(&typ) {
            return Err(PlanError::BadNamespace(format!(
                "{typ} namespace listed twice"
            )));
        }
        seen.push(typ);
        let flag = match typ {
            LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
            LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
            LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
            LinuxNamespaceType::Network => libc::CLONE_NEWNET,
            LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
            LinuxNamespaceType::User | LinuxNamespaceType::Time => {
                return Err(PlanError::Unsupported(format!(
                    "{typ} namespaces (the VM is the container's isolation boundary)"
                )))
            }
        };
        match ns.path() {
            Some(path) if !path.as_os_str().is_empty() => {
                if matches!(typ, LinuxNamespaceType::Mount | LinuxNamespaceType::Pid) {
                    return Err(PlanError::Unsupported(format!(
                        "joining an existing {typ} namespace ({})",
                        path.display()
                    )));
                }
                plan.join.push((flag, path.clone()));
            }
            _ if flag == libc::CLONE_NEWCGROUP => plan.new_cgroup = true,
            _ => plan.clone_flags |= flag,
        }
    }
    if plan.clone_flags & libc::CLONE_NEWNS == 0 {
        return Err(PlanError::BadNamespace(
            "a mount namespace is required (linux.namespaces must list \"mount\")".into(),
        ));
    }
    Ok(plan)
}

fn plan_devices(spec: &Spec, fresh_dev: bool) -> Result<Vec<DevicePlan>, PlanError> {
    let mut devices = if fresh_dev {
        default_devices()
    } else {
        Vec::new()
    };
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
    {
        let path = d.path().clone();
        if !path.starts_with("/dev/") {
            return Err(PlanError::BadDevice(format!(
                "{} is not under /dev",
                path.display()
            )));
        }
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(PlanError::BadDevice(format!(
                    "{}: type \"a\"",
                    path.display()
                )))
            }
        };
        let (major, minor) = (d.major(), d.minor());
        if major < 0 || minor < 0 {
            return Err(PlanError::BadDevice(format!(
                "{}: negative number",
                path.display()
            )));
        }
        devices.retain(|x| x.path != path);
        devices.push(DevicePlan {
            path,
            kind,
            major: major as u64,
            minor: minor as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    Ok(devices)
}

/// Plans a container whose root filesystem is (already) at `rootfs` in the agent's view.
pub fn plan_container(
    spec: &Spec,
    rootfs: &Path,
    terminal: bool,
) -> Result<ContainerPlan, PlanError> {
    let process_spec = spec.process().as_ref().ok_or(PlanError::NoProcess)?;
    let mut process = process::plan_process(process_spec, Some(terminal))?;
    let namespaces = plan_namespaces(spec)?;
    let uts = namespaces.has(libc::CLONE_NEWUTS);
    for (what, value) in [
        ("hostname", spec.hostname()),
        ("domainname", spec.domainname()),
    ] {
        if value.as_ref().is_some_and(|h| !h.is_empty()) && !uts {
            return Err(PlanError::BadNamespace(format!(
                "{what} needs a new UTS namespace"
            )));
        }
    }
    let mounts = spec
        .mounts()
        .iter()
        .flatten()
        .map(mounts::plan_mount)
        .collect::<Result<Vec<_>, _>>()?;
    let fresh_dev = mounts
        .iter()
        .any(|m| m.destination == Path::new("/dev") && !m.is_bind());
    let devices = plan_devices(spec, fresh_dev)?;
    let linux = spec.linux().clone().unwrap_or_default();
    let rootfs_propagation = linux
        .rootfs_propagation()
        .as_ref()
        .filter(|p| !p.is_empty())
        .map(|p| mounts::propagation_flags(p))
        .transpose()?;
    let paths = |v: &Option<Vec<String>>| -> Result<Vec<PathBuf>, PlanError> {
        v.iter()
            .flatten()
            .map(|p| {
                let p = PathBuf::from(p);
                if p.is_absolute() {
                    Ok(p)
                } else {
                    Err(PlanError::Unsupported(format!(
                        "relative masked/readonly path {}",
                        p.display()
                    )))
                }
            })
            .collect()
    };
    let mut sysctl: Vec<(String, String)> = linux
        .sysctl()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    sysctl.sort();
    for (key, _) in &sysctl {
        if key.is_empty() || key.contains("..") || key.starts_with(['.', '/']) {
            return Err(PlanError::Unsupported(format!("sysctl key {key:?}")));
        }
        if key.starts_with("net.") && !namespaces.has(libc::CLONE_NEWNET) {
            return Err(PlanError::BadNamespace(format!(
                "sysctl {key} needs a new network namespace"
            )));
        }
    }
    let mut ignored = Vec::new();
    let mut writes = Vec::new();
    if let Some(res) = linux.resources() {
        let (w, skipped) = cgroup::plan_resources(res)?;
        writes = w;
        ignored.extend(skipped.iter().map(|s| format!("linux.resources.{s}")));
    }
    let cgroup = CgroupPlan {
        path: cgroup::cgroup_path(linux.cgroups_path().as_deref())?,
        writes,
    };
    if let Some(profile) = linux.seccomp() {
        let plan = seccomp::plan_seccomp(profile)?;
        if !plan.unknown.is_empty() {
            ignored.push(format!(
                "linux.seccomp system calls this architecture lacks: {}",
                plan.unknown.join(", ")
            ));
        }
        process.seccomp = Some(plan);
    }
    if process_spec.apparmor_profile().is_some() {
        ignored.push("process.apparmorProfile".into());
    }
    if process_spec.selinux_label().is_some() {
        ignored.push("process.selinuxLabel".into());
    }
    if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(PlanError::Unsupported(
            "linux.uidMappings (user namespaces)".into(),
        ));
    }
    Ok(ContainerPlan {
        rootfs: rootfs.to_path_buf(),
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        namespaces,
        hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        domainname: spec.domainname().clone().filter(|h| !h.is_empty()),
        mounts,
        devices,
        dev_symlinks: fresh_dev,
        rootfs_propagation,
        masked_paths: paths(linux.masked_paths())?,
        readonly_paths: paths(linux.readonly_paths())?,
        sysctl,
        cgroup,
        process,
        ignored,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
