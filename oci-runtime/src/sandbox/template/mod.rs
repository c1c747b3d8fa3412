//! VM templates: a container VM booted once to the point where its agent listens, saved as
//! a snapshot, and restored for every container of the same shape instead of booting a
//! kernel each time.
//!
//! A template is keyed ([`TemplateKey`]) by everything that shapes the VM: the kernel, the
//! agent, vCPUs, memory, the command line and zvm's version. The template VM boots with an
//! empty placeholder as the container's disk; a clone restores it with the container's own
//! disk and vsock socket in their place (the VMM tells the guest the disk's new size), so
//! every clone maps the template's memory copy-on-write. What a clone must not share with
//! its siblings (entropy, clock, host name) the sandbox refreshes through the agent.
//!
//! Templates live in a [`TemplateCache`]; one process builds a missing one while the
//! others wait for it, a build becomes visible only once complete, a template that does not
//! check out (corrupt, truncated, other version) is removed and built again, and the least
//! recently used go beyond [`TemplateSettings::max_templates`].

mod build;
mod cache;
mod key;
mod prewarm;
pub mod shape;

pub use cache::{Manifest, TemplateCache, TemplateFiles};
pub use key::{Digests, TemplateKey};
pub use prewarm::{prepare_template_shape, shape_key, TemplateShape};

use super::agent::AgentError;
use super::disk::ImageError;
use super::share::{SHARE_ID, SHARE_TAG};
use super::vmconfig::{VmSize, AGENT_DRIVE_ID, ROOTFS_DRIVE_ID};
use super::GuestArtifacts;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use vmm::builder::BuildOptions;
use vmm::devices::serial::ConsoleSink;
use vmm::snapshot::{FsOverride, RestoreOverrides, RestoreParams, SnapshotError};
use vmm::{RunningVm, VmResources};

/// `off` turns templates off (every container VM boots its kernel).
pub const TEMPLATES_ENV: &str = "ZVM_TEMPLATES";
/// Where templates are kept (default: `templates` in zvm's cache directory).
pub const TEMPLATE_DIR_ENV: &str = "ZVM_TEMPLATE_DIR";
/// How many templates are kept at most (default [`DEFAULT_MAX_TEMPLATES`]).
pub const TEMPLATE_MAX_ENV: &str = "ZVM_TEMPLATE_MAX";
/// Annotation that turns templates off for one container (`zvm.template=off`).
pub const ANNOTATION_TEMPLATE: &str = "zvm.template";
/// Templates kept when nothing says otherwise (one per VM size in use, about 30-60 MiB of
/// disk each for the default 256 MiB VM).
pub const DEFAULT_MAX_TEMPLATES: usize = 4;
/// How long a create waits for another process's build of the template it needs.
const BUILD_WAIT: Duration = Duration::from_secs(AGENT_WAIT_SECS + 120);
const AGENT_WAIT_SECS: u64 = super::daemon::AGENT_DEADLINE.as_secs();

/// Errors of the template cache.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Another process held the template's lock for too long.
    #[error("template {lock} stayed locked for {waited:?}")]
    Busy {
        /// The lock file.
        lock: PathBuf,
        /// How long this process waited.
        waited: Duration,
    },
    /// A template directory that is not a complete template for the key asked for.
    #[error("template {dir} is not usable: {reason}")]
    Corrupt {
        /// Its directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Booting or snapshotting the template VM failed.
    #[error("template build: {0}")]
    Build(String),
    /// The agent's disk could not be made.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The template VM's agent never answered.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Saving or restoring the snapshot failed.
    #[error(transparent)]
    Restore(SnapshotError),
}

/// Whether and where container VMs start from templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSettings {
    /// Use templates.
    pub enabled: bool,
    /// The cache directory.
    pub dir: PathBuf,
    /// Templates kept at most.
    pub max_templates: usize,
}

impl TemplateSettings {
    /// From [`TEMPLATES_ENV`], [`TEMPLATE_DIR_ENV`] and [`TEMPLATE_MAX_ENV`]; off when no
    /// cache directory can be found.
    pub fn from_env() -> TemplateSettings {
        let dir = std::env::var_os(TEMPLATE_DIR_ENV)
            .map(PathBuf::from)
            .or_else(|| super::artifacts::cache_root().map(|c| c.join("templates")));
        let off = std::env::var(TEMPLATES_ENV)
            .is_ok_and(|v| matches!(v.trim(), "off" | "0" | "false" | "no"));
        let max_templates = std::env::var(TEMPLATE_MAX_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX_TEMPLATES);
        TemplateSettings {
            enabled: !off && dir.is_some(),
            dir: dir.unwrap_or_default(),
            max_templates,
        }
    }

    /// The cache these settings describe.
    pub fn cache(&self) -> TemplateCache {
        TemplateCache::new(&self.dir, self.max_templates)
    }
}

/// Whether `spec`'s annotations turn templates off for its container.
pub fn annotation_disables(spec: &oci_spec::runtime::Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_TEMPLATE))
        .is_some_and(|v| matches!(v.trim(), "off" | "0" | "false" | "no"))
}

/// A container VM to start: what shapes it (the template's key) and its own files.
#[derive(Debug, Clone, Copy)]
pub struct ContainerVm<'a> {
    /// Kernel and agent.
    pub artifacts: &'a GuestArtifacts,
    /// vCPUs and memory.
    pub size: VmSize,
    /// The container's root file system image.
    pub rootfs_image: &'a Path,
    /// The VM's vsock socket.
    pub vsock: &'a Path,
    /// The vhost-user socket of the virtiofsd serving the container's share, when it has
    /// one: its template is the flavour with a share ([`TemplateKey::share`]).
    pub share: Option<&'a Path>,
    /// Its network interfaces and data disks, when it has any: its template is the shape
    /// with as many ([`shape`]).
    pub extras: shape::Extras<'a>,
}

impl<'a> ContainerVm<'a> {
    /// The container VM `resources` describe, if it is exactly the VM a template of its size
    /// is made for (the agent's disk and the container's as the only drives, vsock, entropy,
    /// no network, the container command line, the default CPU template); else why not.
    /// Paths, console and seccomp may differ: they are the clone's own.
    pub fn from_resources(
        resources: &'a VmResources,
        artifacts: &'a GuestArtifacts,
    ) -> Result<ContainerVm<'a>, String> {
        let mc = &resources.machine_config;
        let size = VmSize {
            vcpus: mc.vcpu_count,
            memory_mib: mc.mem_size_mib,
        };
        let [agent, rootfs, ..] = resources.drives.as_slice() else {
            return Err(format!(
                "{} disks (a template has the agent's and the container's)",
                resources.drives.len()
            ));
        };
        let vsock = resources
            .vsock
            .as_ref()
            .ok_or_else(|| "no vsock device".to_string())?;
        let files = super::VmFiles {
            kernel: &artifacts.kernel,
            agent_image: &agent.path_on_host,
            rootfs_image: &rootfs.path_on_host,
            console_log: Path::new(""),
            vsock: &vsock.uds_path,
        };
        let mut expected = super::vmconfig::vm_resources(size, files, false);
        expected.console = resources.console.clone();
        expected.console_timestamps = resources.console_timestamps;
        expected.seccomp = resources.seccomp;
        if resources.boot_source.kernel_image_path != artifacts.kernel {
            return Err("another kernel".into());
        }
        let extras = shape::Extras::of(resources)?;
        // Whether the devices are named on the command line only shapes a boot's command
        // line (zvm run's default; the template's kernel finds them through ACPI): a
        // restore boots nothing.
        expected.machine_config.cmdline_devices = resources.machine_config.cmdline_devices;
        expected.net = resources.net.clone();
        expected.drives.extend_from_slice(extras.data_disks);
        if shape::added_network_words(expected.boot_args(), resources.boot_args()).is_some() {
            // What the clone's agent must be told instead must be understood now.
            shape::guest_network(resources)?;
            expected.boot_source.boot_args = resources.boot_source.boot_args.clone();
        }
        let share = container_share(resources)?;
        expected.fs = resources.fs.clone();
        if resources != &expected {
            return Err(format!(
                "a different VM (command line, devices or CPU template): {} differ",
                shape::differences(resources, &expected)
            ));
        }
        Ok(ContainerVm {
            artifacts,
            size,
            rootfs_image: &rootfs.path_on_host,
            vsock: &vsock.uds_path,
            extras,
            share,
        })
    }

    /// The template key of this VM (file digests remembered in `cache`).
    pub fn key(&self, cache: &TemplateCache) -> Result<TemplateKey, TemplateError> {
        let boot_args = super::vmconfig::container_boot_args();
        let mut key = TemplateKey::new(
            &Digests::in_dir(Some(cache.root())),
            &self.artifacts.kernel,
            &self.artifacts.agent,
            self.size.vcpus,
            self.size.memory_mib,
            &boot_args,
        )
        .map_err(|source| TemplateError::Io {
            what: "read the kernel's and the agent's metadata".into(),
            source,
        })?;
        key.share = self.share.map(|_| SHARE_TAG.to_string());
        key.nics = self.extras.nets.len() as u8;
        key.data_disks = self.extras.data_disks.len() as u8;
        Ok(key)
    }
}

/// The socket of the container's own share among `resources`' virtio-fs devices (the
/// share flavour of a template has that one device), `None` without shares; other shares
/// do not fit a template.
fn container_share(resources: &VmResources) -> Result<Option<&Path>, String> {
    match resources.fs.as_slice() {
        [] => Ok(None),
        [fs] if fs.fs_id == SHARE_ID && fs.tag == SHARE_TAG && !fs.read_only => fs
            .socket_path
            .as_deref()
            .filter(|_| fs.shared_dir.is_none())
            .map(Some)
            .ok_or_else(|| "a share without its own backend socket".to_string()),
        _ => Err("virtio-fs shares other than the container's own".into()),
    }
}

/// How a container VM was started from a template.
#[derive(Debug)]
pub struct Started {
    /// The running VM.
    pub vm: RunningVm,
    /// The template's id.
    pub template: String,
    /// How long building the template took, when this call built it.
    pub built_in: Option<Duration>,
}

/// Starts `vm` from its template, building the template first when there is none (or
/// waiting for the process that builds it). A template that fails its checks or its
/// restore as unusable is removed and built again once.
///
/// `console` gives the clone's console (called once per restore attempt).
pub fn start_from_template(
    cache: &TemplateCache,
    vm: &ContainerVm<'_>,
    console: &dyn Fn() -> std::io::Result<ConsoleSink>,
) -> Result<Started, TemplateError> {
    let key = vm.key(cache)?;
    let id = key.id();
    let mut built_in = None;
    loop {
        let mut broken = false;
        {
            let _shared = cache.lock(&id, false, BUILD_WAIT)?;
            match cache.find(&id, &key) {
                Ok(Some(files)) => match restore_clone(&files, vm, console) {
                    Ok(running) => {
                        return Ok(Started {
                            vm: running,
                            template: id,
                            built_in,
                        })
                    }
                    Err(e) if e.is_bad_input() => {
                        tracing::warn!("template {id} cannot be restored: {e}");
                        broken = true;
                    }
                    Err(e) => return Err(TemplateError::Restore(e)),
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("{e}");
                    broken = true;
                }
            }
        }
        if broken && built_in.is_some() {
            return Err(TemplateError::Corrupt {
                dir: cache.root().join(&id),
                reason: "a freshly built template could not be restored".into(),
            });
        }
        let _exclusive = cache.lock(&id, true, BUILD_WAIT)?;
        if !broken && matches!(cache.find(&id, &key), Ok(Some(_))) {
            // Another process built it while this one waited for the lock.
            continue;
        }
        built_in = Some(build_and_install(cache, &id, &key, vm)?);
    }
}

/// Makes template `id` for `vm` (hold its lock exclusively): boots and snapshots the VM
/// in a build directory and installs it; returns how long the build took.
fn build_and_install(
    cache: &TemplateCache,
    id: &str,
    key: &TemplateKey,
    vm: &ContainerVm<'_>,
) -> Result<Duration, TemplateError> {
    cache.remove(id)?;
    let dir = cache.start_build(id)?;
    let took = match build::build_template(&dir, vm) {
        Ok(took) => took,
        Err(e) => {
            let kept = dir.join(build::BUILD_CONSOLE);
            let console = super::agent::console_tail(&kept, 20);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(TemplateError::Build(format!(
                "{e}; last lines of the template VM's console:\n{console}"
            )));
        }
    };
    let manifest = Manifest {
        key: key.clone(),
        created: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        build_ms: took.as_millis() as u64,
    };
    cache.install(id, &dir, &manifest)?;
    Ok(took)
}

/// Makes sure the template for VMs of `size` booting `artifacts` exists (ahead of the
/// first container that needs it): returns its id and, when this call built it, how long
/// that took.
pub fn prepare_template(
    cache: &TemplateCache,
    artifacts: &GuestArtifacts,
    size: VmSize,
) -> Result<(String, Option<Duration>), TemplateError> {
    prepare_template_flavour(cache, artifacts, size, false)
}

/// [`prepare_template`] of the flavour with a virtio-fs share when `share` (for
/// containers with host bind mounts or their root over virtio-fs).
pub fn prepare_template_flavour(
    cache: &TemplateCache,
    artifacts: &GuestArtifacts,
    size: VmSize,
    share: bool,
) -> Result<(String, Option<Duration>), TemplateError> {
    let placeholder = Path::new("");
    let vm = ContainerVm {
        artifacts,
        size,
        rootfs_image: placeholder,
        vsock: placeholder,
        share: share.then_some(placeholder),
        extras: Default::default(),
    };
    let key = vm.key(cache)?;
    let id = key.id();
    {
        let _shared = cache.lock(&id, false, BUILD_WAIT)?;
        if let Ok(Some(_)) = cache.find(&id, &key) {
            return Ok((id, None));
        }
    }
    let _exclusive = cache.lock(&id, true, BUILD_WAIT)?;
    if let Ok(Some(_)) = cache.find(&id, &key) {
        return Ok((id, None));
    }
    let took = build_and_install(cache, &id, &key, &vm)?;
    Ok((id, Some(took)))
}

/// Restores a clone of the template in `files` with `vm`'s own disk and socket, and the
/// console `console` gives.
fn restore_clone(
    files: &TemplateFiles,
    vm: &ContainerVm<'_>,
    console: &dyn Fn() -> std::io::Result<ConsoleSink>,
) -> Result<RunningVm, SnapshotError> {
    let console = console().map_err(|source| SnapshotError::Io {
        what: "open the console of",
        path: vm.vsock.to_path_buf(),
        source,
    })?;
    restore_container_vm_with(
        &files.state,
        &files.memory,
        &files.agent_disk,
        vm.rootfs_image,
        vm.vsock,
        vm.share,
        console,
        &vm.extras,
    )
}

/// Restores a container VM from the snapshot in `state` and `memory` (a template's or a
/// checkpoint's) with `agent_disk` and `rootfs_image` as its two drives, `vsock` as its
/// vsock socket, `share` as the socket of its virtio-fs share's backend (a template with
/// a share; its memory is then copied into a memfd the backend maps) and `console` as
/// its console, running at once.
pub(crate) fn restore_container_vm(
    state: &Path,
    memory: &Path,
    agent_disk: &Path,
    rootfs_image: &Path,
    vsock: &Path,
    share: Option<&Path>,
    console: ConsoleSink,
) -> Result<RunningVm, SnapshotError> {
    let extras = shape::Extras::NONE;
    restore_container_vm_with(
        state,
        memory,
        agent_disk,
        rootfs_image,
        vsock,
        share,
        console,
        &extras,
    )
}

/// [`restore_container_vm`] with `extras`' data disks and taps in place of the
/// template's placeholders.
#[allow(clippy::too_many_arguments)]
fn restore_container_vm_with(
    state: &Path,
    memory: &Path,
    agent_disk: &Path,
    rootfs_image: &Path,
    vsock: &Path,
    share: Option<&Path>,
    console: ConsoleSink,
    extras: &shape::Extras<'_>,
) -> Result<RunningVm, SnapshotError> {
    let (data_disks, net) = extras.overrides();
    let fs = share
        .map(|socket| FsOverride {
            share: SHARE_ID.into(),
            shared_dir: None,
            read_only: None,
            socket_path: Some(socket.to_path_buf()),
        })
        .into_iter()
        .collect();
    let params = RestoreParams {
        snapshot_path: state.to_path_buf(),
        mem_file_path: memory.to_path_buf(),
        overrides: RestoreOverrides {
            drives: vec![
                (AGENT_DRIVE_ID.to_string(), agent_disk.to_path_buf()),
                (ROOTFS_DRIVE_ID.to_string(), rootfs_image.to_path_buf()),
            ]
            .into_iter()
            .chain(data_disks)
            .collect(),
            net,
            vsock_uds_path: Some(vsock.to_path_buf()),
            fs,
        },
        resume: true,
        track_dirty_pages: false,
        seccomp: true,
    };
    vmm::snapshot::restore_microvm(&params, BuildOptions::default(), console, false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sandbox::vmconfig::{vm_resources, VmFiles};

    #[test]
    fn only_the_vm_a_template_is_made_for_fits_one() {
        let artifacts = GuestArtifacts {
            kernel: "/k/vmlinux".into(),
            agent: "/k/agent".into(),
        };
        let size = VmSize {
            vcpus: 2,
            memory_mib: 512,
        };
        let files = VmFiles {
            kernel: &artifacts.kernel,
            agent_image: Path::new("/w/agent.ext4"),
            rootfs_image: Path::new("/w/rootfs.ext4"),
            console_log: Path::new("/w/console.log"),
            vsock: Path::new("/w/vsock.sock"),
        };
        let mut resources = vm_resources(size, files, false);
        resources.console = vmm::ConsoleConfig::Off;
        let vm = ContainerVm::from_resources(&resources, &artifacts).unwrap();
        assert_eq!(vm.size, size);
        assert_eq!(vm.rootfs_image, Path::new("/w/rootfs.ext4"));
        assert_eq!(vm.vsock, Path::new("/w/vsock.sock"));

        let misfit = |change: &dyn Fn(&mut VmResources), why: &str| {
            let mut r = resources.clone();
            change(&mut r);
            let err = ContainerVm::from_resources(&r, &artifacts).unwrap_err();
            assert!(err.contains(why), "{err}");
        };
        misfit(&|r| r.drives.truncate(1), "1 disks");
        misfit(&|r| r.vsock = None, "no vsock");
        misfit(
            &|r| r.boot_source.kernel_image_path = "/other".into(),
            "another kernel",
        );
        misfit(
            &|r| r.boot_source.boot_args = Some("console=ttyS0 ip=dhcp".into()),
            "command line",
        );
        misfit(&|r| r.entropy = None, "different VM");
        misfit(&|r| r.drives[1].is_read_only = true, "different VM");
        // The container's own share fits the share flavour; any other share does not.
        let mut shared = resources.clone();
        shared
            .fs
            .push(crate::sandbox::share::fs_device(Path::new("/w/fs.sock")));
        let vm = ContainerVm::from_resources(&shared, &artifacts).unwrap();
        assert_eq!(vm.share, Some(Path::new("/w/fs.sock")));
        misfit(
            &|r| {
                let mut fs = crate::sandbox::share::fs_device(Path::new("/w/fs.sock"));
                fs.tag = "other".into();
                r.fs.push(fs)
            },
            "shares other than",
        );
        misfit(
            &|r| {
                r.net.push(vmm::resources::NetConfig {
                    iface_id: "eth0".into(),
                    host_dev_name: "tap0".into(),
                    guest_mac: None,
                    rx_rate_limiter: Some(Default::default()),
                    tx_rate_limiter: None,
                    queue_pairs: 1,
                })
            },
            "rate limiter",
        );
    }
}
