//! Container flists: the flist's tree is the root over virtio-fs ([`super::cow_root`]) or
//! an ext4 root file system disk, and the project's kernel boots the OCI guest agent
//! (`zvm-oci-agent`) as PID 1 from its own small read-only disk, exactly as oci-runtime's
//! sandboxes do. The agent mounts the root file system (the share's `rootfs` entry, or
//! `/dev/vdb`) and runs the entrypoint in it as an OCI container ([`container_spec`]:
//! runc's defaults, sharing the VM's network so that the interfaces the kernel configured
//! from `ip=` are the container's), driven over vsock by
//! [`oci_runtime::sandbox::run_attached`] in the zvm process that runs the VM.

use super::FlistVmError;
use oci_runtime::image::spec::{default_spec, runtime_spec, ProcessConfig, DEFAULT_PATH};
use oci_runtime::sandbox::{guest_disk_device, GuestArtifacts};
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};
use std::path::{Path, PathBuf};
use vmm::resources::DriveConfig;

/// What runs in a container flist's VM, and the disks it boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerBoot {
    /// The agent's boot disk (root device, read-only).
    pub agent_image: PathBuf,
    /// The container's root file system (ext4), or an empty placeholder disk when it
    /// comes over virtio-fs (`rootfs_overlay`).
    pub rootfs_image: PathBuf,
    /// The copy-on-write layers of a root over virtio-fs ([`super::cow_root`]).
    pub rootfs_overlay: Option<super::cow_root::CowRoot>,
    /// The VM's vsock socket, through which zvm drives the agent.
    pub vsock_uds: PathBuf,
    /// The container's process: arguments, environment, working directory, user.
    pub process: ProcessConfig,
    /// The container's host name.
    pub hostname: String,
}

/// A disk the container mounts: a VM drive id and where it goes in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskMount {
    /// The drive's id among the VM's drives.
    pub drive_id: String,
    /// Absolute path in the container.
    pub mountpoint: String,
}

/// A host directory the container sees at `mountpoint`, over the VM's virtio-fs share
/// (Zero-OS's volumes; `zvm run --volume`). A directory is the user's own, unbounded; an
/// `image` volume is a bounded store ([`super::bounded_store`]: the node's volumes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The host directory, or the store's image file (absolute).
    pub source: PathBuf,
    /// Absolute path in the container.
    pub mountpoint: String,
    /// Read-only, on the host side too.
    pub read_only: bool,
    /// `source` is an ext4 image the VM mounts (detached, for virtiofsd only).
    pub image: bool,
}

/// The mount option [`add_volumes`] marks an image volume's bind mount with, until
/// [`mount_image_volumes`] replaces its source by the mounted store.
pub const IMAGE_OPTION: &str = "x-zvm-image";

impl std::str::FromStr for VolumeMount {
    type Err = String;

    /// `HOST:CONTAINER_PATH[:ro|:rw][:image]`, both absolute; with `image`, HOST is an ext4
    /// image (a bounded store) rather than a directory.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid volume '{text}': {why}");
        let mut parts = text.split(':');
        let (Some(source), Some(mountpoint)) = (parts.next(), parts.next()) else {
            return Err(bad("expected HOST_DIR:CONTAINER_PATH[:ro]"));
        };
        let (mut read_only, mut image, mut access_given) = (false, false, false);
        for flag in parts.by_ref().take(2) {
            match flag {
                "rw" | "ro" if !access_given => {
                    read_only = flag == "ro";
                    access_given = true;
                }
                "image" if !image => image = true,
                other => {
                    return Err(bad(&format!(
                        "`{other}` is not ro, rw or image (each at most once)"
                    )))
                }
            }
        }
        if parts.next().is_some() {
            return Err(bad("too many ':'"));
        }
        if !source.starts_with('/') || !mountpoint.starts_with('/') {
            return Err(bad("both paths must be absolute"));
        }
        if mountpoint.split('/').any(|c| c == "..") || mountpoint.trim_end_matches('/').is_empty() {
            return Err(bad("the container path may not be / or contain .."));
        }
        Ok(VolumeMount {
            source: PathBuf::from(source),
            mountpoint: mountpoint.to_string(),
            read_only,
            image,
        })
    }
}

/// Adds `volumes` to `spec` as bind mounts of their host directories, which the share
/// then carries into the VM ([`oci_runtime::sandbox::share::plan_share`]).
pub fn add_volumes(spec: &mut Spec, volumes: &[VolumeMount]) {
    let mut all = spec.mounts().clone().unwrap_or_default();
    for v in volumes {
        let mut mount = Mount::default();
        mount.set_destination(PathBuf::from(&v.mountpoint));
        mount.set_typ(Some("bind".into()));
        mount.set_source(Some(v.source.clone()));
        let access = if v.read_only { "ro" } else { "rw" };
        let mut options = vec!["rbind".into(), access.into(), "nodev".into()];
        if v.image {
            options.push(IMAGE_OPTION.into());
        }
        mount.set_options(Some(options));
        all.push(mount);
    }
    spec.set_mounts(Some(all));
}

/// A mounted image volume, kept for the VM's life: the store's lock and its detached mount.
#[derive(Debug)]
pub struct MountedVolume {
    _lock: std::fs::File,
    _mount: std::os::fd::OwnedFd,
    source: PathBuf,
}

impl MountedVolume {
    /// The bind mount's source now: the store's mount, which this VM alone has.
    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// Mounts every image volume of `spec` ([`IMAGE_OPTION`]): takes its store for this VM,
/// mounts it detached and makes the bind mount's source the mount
/// ([`super::bounded_store::proc_path`]), which the share then carries like a directory.
/// Keep what it returns until the share's virtiofsd runs (or the VM ends).
pub fn mount_image_volumes(spec: &mut Spec) -> Result<Vec<MountedVolume>, FlistVmError> {
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(Vec::new());
    };
    let mut mounted = Vec::new();
    for m in &mut mounts {
        let mut options = m.options().clone().unwrap_or_default();
        let Some(at) = options.iter().position(|o| o == IMAGE_OPTION) else {
            continue;
        };
        let source = m.source().clone().unwrap_or_default();
        let store = super::bounded_store::StoreImage::open(&source)?;
        let lock = store.lock()?;
        let mount = store.mount_detached()?;
        let source = super::bounded_store::proc_path(&mount);
        m.set_source(Some(source.clone()));
        options.remove(at);
        m.set_options(Some(options));
        mounted.push(MountedVolume {
            _lock: lock,
            _mount: mount,
            source,
        });
    }
    spec.set_mounts(Some(mounts));
    Ok(mounted)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FlistVmError + '_ {
    move |source| FlistVmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Builds (or reuses) the agent's boot disk `<work_dir>/agent.ext4` from the static agent
/// oci-runtime finds (`$ZVM_OCI_AGENT`, next to the program, or guest/build.sh's output);
/// rebuilt whenever that binary changes.
pub fn agent_image(work_dir: &Path) -> Result<PathBuf, FlistVmError> {
    let agent = GuestArtifacts::locate_agent().map_err(|e| FlistVmError::NoAgent(e.to_string()))?;
    let meta = std::fs::metadata(&agent).map_err(io(&agent))?;
    let stamp = format!(
        "{} {} {:?}",
        agent.display(),
        meta.len(),
        meta.modified().ok()
    );
    let image = work_dir.join("agent.ext4");
    let done = work_dir.join("agent.ext4.done");
    if image.is_file() && std::fs::read_to_string(&done).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(image);
    }
    let _ = std::fs::remove_file(&done);
    oci_runtime::sandbox::make_agent_image(&agent, &work_dir.join("agent.staging"), &image)
        .map_err(|e| FlistVmError::AgentDisk(e.to_string()))?;
    std::fs::write(&done, stamp).map_err(io(&done))?;
    Ok(image)
}

/// The container's OCI configuration: runc's defaults (`zvm oci spec`) with a writable root,
/// `boot.process`, `boot.hostname`, no network namespace (the VM is the isolation boundary;
/// the container uses the VM's interfaces), and one ext4 mount per entry of `mounts`, the
/// device found from the drive's position in `drives` (`/dev/vda` first).
pub fn container_spec(
    boot: &ContainerBoot,
    drives: &[DriveConfig],
    mounts: &[DiskMount],
    terminal: bool,
) -> Result<Spec, FlistVmError> {
    let mut spec = runtime_spec(default_spec(), &boot.process, Default::default());
    spec.set_hostname(Some(boot.hostname.clone()));
    if let Some(process) = spec.process_mut() {
        process.set_terminal(Some(terminal));
    }
    if let Some(linux) = spec.linux_mut() {
        if let Some(namespaces) = linux.namespaces_mut() {
            namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
        }
    }
    let mut all = spec.mounts().clone().unwrap_or_default();
    for m in mounts {
        if !m.mountpoint.starts_with('/') {
            return Err(FlistVmError::BadMount(format!(
                "mount point `{}` of disk `{}` is not an absolute path",
                m.mountpoint, m.drive_id
            )));
        }
        let index = drives
            .iter()
            .position(|d| d.drive_id == m.drive_id)
            .ok_or_else(|| FlistVmError::BadMount(format!("no disk `{}` to mount", m.drive_id)))?;
        let device = guest_disk_device(index).ok_or_else(|| {
            FlistVmError::BadMount(format!("disk `{}` is past /dev/vdz", m.drive_id))
        })?;
        let mut mount = Mount::default();
        mount.set_destination(PathBuf::from(&m.mountpoint));
        mount.set_typ(Some("ext4".into()));
        mount.set_source(Some(PathBuf::from(device)));
        mount.set_options(Some(vec!["rw".into(), "nosuid".into(), "nodev".into()]));
        all.push(mount);
    }
    spec.set_mounts(Some(all));
    Ok(spec)
}

/// The process of an entrypoint given as words, with `env` (a `PATH` is added when missing),
/// in `cwd`, as root unless the image said otherwise.
pub fn process(
    argv: Vec<String>,
    env: &[(String, String)],
    cwd: &str,
    user: (u32, u32),
) -> ProcessConfig {
    let mut env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    ProcessConfig {
        args: argv,
        env,
        cwd: cwd.to_string(),
        user: String::new(),
        uid: user.0,
        gid: user.1,
        additional_gids: Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn boot() -> ContainerBoot {
        ContainerBoot {
            agent_image: "/w/agent.ext4".into(),
            rootfs_image: "/w/root.ext4".into(),
            rootfs_overlay: None,
            vsock_uds: "/w/vsock.sock".into(),
            process: process(
                vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
                &[("X".into(), "a b".into())],
                "/srv",
                (0, 0),
            ),
            hostname: "web".into(),
        }
    }

    fn drive(id: &str) -> DriveConfig {
        DriveConfig {
            drive_id: id.into(),
            path_on_host: format!("/{id}").into(),
            is_root_device: false,
            is_read_only: false,
            rate_limiter: None,
            io_engine: Default::default(),
        }
    }

    #[test]
    fn the_spec_runs_the_entrypoint_in_the_vms_network_with_its_disks() {
        let drives = [drive("agent"), drive("rootfs"), drive("data")];
        let mounts = [DiskMount {
            drive_id: "data".into(),
            mountpoint: "/data".into(),
        }];
        let spec = container_spec(&boot(), &drives, &mounts, false).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/bin/sh", "-c", "echo hi"]);
        assert_eq!(p.env().as_ref().unwrap(), &[DEFAULT_PATH, "X=a b"]);
        assert_eq!(p.cwd(), &PathBuf::from("/srv"));
        assert_eq!(p.terminal(), Some(false));
        assert_eq!(spec.hostname().as_deref(), Some("web"));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
        let ns = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert!(ns.iter().all(|n| n.typ() != LinuxNamespaceType::Network));
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid));
        let data = spec.mounts().as_ref().unwrap().last().unwrap();
        assert_eq!(data.destination(), &PathBuf::from("/data"));
        assert_eq!(data.source().as_deref(), Some(Path::new("/dev/vdc")));
        assert_eq!(data.typ().as_deref(), Some("ext4"));
    }

    #[test]
    fn bad_mounts_are_refused() {
        let drives = [drive("agent"), drive("rootfs")];
        let missing = [DiskMount {
            drive_id: "data".into(),
            mountpoint: "/data".into(),
        }];
        let e = container_spec(&boot(), &drives, &missing, false).unwrap_err();
        assert!(e.to_string().contains("no disk `data`"), "{e}");
        let relative = [DiskMount {
            drive_id: "rootfs".into(),
            mountpoint: "data".into(),
        }];
        let e = container_spec(&boot(), &drives, &relative, false).unwrap_err();
        assert!(e.to_string().contains("not an absolute path"), "{e}");
    }

    #[test]
    fn volumes_parse_and_become_bind_mounts() {
        let v: VolumeMount = "/srv/v:/data:ro".parse().unwrap();
        assert_eq!(
            (v.source.as_path(), v.mountpoint.as_str(), v.read_only),
            (Path::new("/srv/v"), "/data", true)
        );
        let i: VolumeMount = "/v/x.ext4:/data:image".parse().unwrap();
        assert!(i.image && !i.read_only);
        let i: VolumeMount = "/v/x.ext4:/data:ro:image".parse().unwrap();
        assert!(i.image && i.read_only);
        assert!(!v.image);
        for bad in [
            "/a",
            "a:/b",
            "/a:b",
            "/a:/b:rx",
            "/a:/b:ro:x",
            "/a:/b:ro:rw",
            "/a:/b:image:image",
            "/a:/b:ro:image:x",
            "/a:/",
            "/a:/x/../y",
        ] {
            assert!(bad.parse::<VolumeMount>().is_err(), "{bad} accepted");
        }
        let mut spec = container_spec(&boot(), &[], &[], false).unwrap();
        add_volumes(&mut spec, &[v]);
        let m = spec.mounts().as_ref().unwrap().last().unwrap().clone();
        let plan = oci_runtime::sandbox::share::plan_share(&spec, Path::new("/"), None);
        assert_eq!(plan.entries.len(), 1);
        assert_eq!(plan.entries[0].source, PathBuf::from("/srv/v"));
        assert!(plan.entries[0].read_only);
        assert_eq!(m.destination(), &PathBuf::from("/data"));
    }

    #[test]
    fn a_path_is_added_only_when_missing() {
        let p = process(
            vec!["x".into()],
            &[("PATH".into(), "/opt".into())],
            "/",
            (5, 6),
        );
        assert_eq!(p.env, ["PATH=/opt"]);
        assert_eq!((p.uid, p.gid), (5, 6));
    }
}
