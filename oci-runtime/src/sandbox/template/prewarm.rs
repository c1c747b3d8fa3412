//! Templates made ahead of time (`zvm template prepare`, the node's `--prepare-template`)
//! for any flavour and shape a later container VM restores from: its size, whether it has
//! the container's virtio-fs share, and how many network interfaces and data disks it
//! has. The key asked for is the one [`super::ContainerVm::key`] gives that later VM.

use super::shape::{self, Extras, DATA_DISKS_MAX};
use super::{ContainerVm, TemplateCache, TemplateError, TemplateKey};
use crate::sandbox::{GuestArtifacts, VmSize};
use agent_protocol::network::NETWORK_INTERFACES_MAX;
use std::path::Path;
use std::time::Duration;
use vmm::resources::{DriveConfig, NetConfig};

/// What a template made ahead of time is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateShape {
    /// vCPUs and memory.
    pub size: VmSize,
    /// The flavour with the container's virtio-fs share (containers with host bind
    /// mounts, volumes or their root over virtio-fs).
    pub share: bool,
    /// Network interfaces.
    pub nics: usize,
    /// Data disks after the agent's and the container's.
    pub data_disks: usize,
}

impl TemplateShape {
    /// Most network interfaces a template has.
    pub const NICS_MAX: usize = NETWORK_INTERFACES_MAX;
    /// Most data disks a template has.
    pub const DATA_DISKS_MAX: usize = DATA_DISKS_MAX;

    /// The plain shape of `size`: no share, no interface, no data disk.
    pub fn plain(size: VmSize) -> TemplateShape {
        TemplateShape {
            size,
            share: false,
            nics: 0,
            data_disks: 0,
        }
    }

    /// Checks that a template can have this shape.
    pub fn check(&self) -> Result<(), TemplateError> {
        if self.nics > NETWORK_INTERFACES_MAX {
            return Err(TemplateError::Build(format!(
                "{} network interfaces (a template has {NETWORK_INTERFACES_MAX} at most)",
                self.nics
            )));
        }
        if self.data_disks > DATA_DISKS_MAX {
            return Err(TemplateError::Build(format!(
                "{} data disks (a template has {DATA_DISKS_MAX} at most)",
                self.data_disks
            )));
        }
        Ok(())
    }

    /// Placeholder interfaces and disks of this shape (only their number shapes the
    /// template; each clone brings its own).
    fn placeholders(&self) -> (Vec<NetConfig>, Vec<DriveConfig>) {
        let nets = (0..self.nics)
            .map(|i| NetConfig {
                iface_id: shape::template_iface_id(i),
                host_dev_name: String::new(),
                guest_mac: None,
                rx_rate_limiter: None,
                tx_rate_limiter: None,
                queue_pairs: 1,
            })
            .collect();
        let disks = (0..self.data_disks)
            .map(|i| DriveConfig {
                drive_id: shape::template_drive_id(i),
                path_on_host: Default::default(),
                is_root_device: false,
                is_read_only: false,
                rate_limiter: None,
                io_engine: Default::default(),
            })
            .collect();
        (nets, disks)
    }
}

/// Calls `with` on the container VM a template of `shape` is made for.
fn with_vm<T>(
    artifacts: &GuestArtifacts,
    shape: &TemplateShape,
    with: impl FnOnce(&ContainerVm<'_>) -> Result<T, TemplateError>,
) -> Result<T, TemplateError> {
    shape.check()?;
    let (nets, data_disks) = shape.placeholders();
    let placeholder = Path::new("");
    let vm = ContainerVm {
        artifacts,
        size: shape.size,
        rootfs_image: placeholder,
        vsock: placeholder,
        share: shape.share.then_some(placeholder),
        extras: Extras {
            nets: &nets,
            data_disks: &data_disks,
        },
    };
    with(&vm)
}

/// The key of the template of `shape` (the one a later container VM of that shape looks
/// up).
pub fn shape_key(
    cache: &TemplateCache,
    artifacts: &GuestArtifacts,
    shape: &TemplateShape,
) -> Result<TemplateKey, TemplateError> {
    with_vm(artifacts, shape, |vm| vm.key(cache))
}

/// Makes sure the template of `shape` exists: returns its id and, when this call built
/// it, how long that took.
pub fn prepare_template_shape(
    cache: &TemplateCache,
    artifacts: &GuestArtifacts,
    shape: &TemplateShape,
) -> Result<(String, Option<Duration>), TemplateError> {
    with_vm(artifacts, shape, |vm| {
        shape::prepare_template_for(cache, vm)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sandbox::share::fs_device;
    use crate::sandbox::vmconfig::{vm_resources, VmFiles};
    use vmm::VmResources;

    struct Fixture {
        _dir: tempfile::TempDir,
        artifacts: GuestArtifacts,
        cache: TemplateCache,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (k, a) = (dir.path().join("vmlinux"), dir.path().join("agent"));
        std::fs::write(&k, b"kernel").unwrap();
        std::fs::write(&a, b"agent").unwrap();
        let cache = TemplateCache::new(dir.path().join("templates"), 4);
        Fixture {
            artifacts: GuestArtifacts {
                kernel: k,
                agent: a,
            },
            cache,
            _dir: dir,
        }
    }

    /// A container VM as a create builds it: `size`, the share when `share`, `nics`
    /// interfaces (configured with `ip=`/`zvm.ip.`) and `disks` data disks.
    fn create(f: &Fixture, size: VmSize, share: bool, nics: usize, disks: usize) -> VmResources {
        let files = VmFiles {
            kernel: &f.artifacts.kernel,
            agent_image: Path::new("/w/agent.ext4"),
            rootfs_image: Path::new("/w/rootfs.ext4"),
            console_log: Path::new("/w/console.log"),
            vsock: Path::new("/w/vsock.sock"),
        };
        let mut r = vm_resources(size, files, false);
        if share {
            r.fs.push(fs_device(Path::new("/w/fs.sock")));
        }
        let mut words = Vec::new();
        for i in 0..nics {
            r.net.push(NetConfig {
                iface_id: format!("eth{i}"),
                host_dev_name: format!("tapdep{i}"),
                guest_mac: None,
                rx_rate_limiter: None,
                tx_rate_limiter: None,
                queue_pairs: 1,
            });
            words.push(if i == 0 {
                "ip=10.20.0.5::10.20.0.1:255.255.255.0::eth0:off".to_string()
            } else {
                format!("zvm.ip.eth{i}=10.3{i}.0.7/16")
            });
        }
        for i in 0..disks {
            r.drives.push(DriveConfig {
                drive_id: format!("vol{i}"),
                path_on_host: format!("/w/vol{i}.img").into(),
                is_root_device: false,
                is_read_only: false,
                rate_limiter: None,
                io_engine: Default::default(),
            });
            words.push(format!("zvm.mount.vol{i}=/mnt/{i}"));
        }
        if !words.is_empty() {
            let args = format!("{} {}", r.boot_args(), words.join(" "));
            r.boot_source.boot_args = Some(args);
        }
        r
    }

    #[test]
    fn a_prepared_shape_has_the_key_a_later_create_looks_up() {
        let f = fixture();
        let size = VmSize {
            vcpus: 1,
            memory_mib: 256,
        };
        let mut ids = Vec::new();
        for (share, nics, disks) in [
            (false, 0, 0),
            (true, 0, 0),
            (true, 1, 0),
            (false, 2, 1),
            (true, 1, 2),
        ] {
            let shape = TemplateShape {
                size,
                share,
                nics,
                data_disks: disks,
            };
            let prepared = shape_key(&f.cache, &f.artifacts, &shape).unwrap();
            let r = create(&f, size, share, nics, disks);
            let later = ContainerVm::from_resources(&r, &f.artifacts)
                .unwrap()
                .key(&f.cache)
                .unwrap();
            assert_eq!(prepared, later, "{shape:?}");
            ids.push(prepared.id());
        }
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), ids.len(), "{ids:?}");
        let other_size = TemplateShape::plain(VmSize {
            vcpus: 2,
            memory_mib: 512,
        });
        let key = shape_key(&f.cache, &f.artifacts, &other_size).unwrap();
        assert_eq!((key.vcpus, key.memory_mib, key.share), (2, 512, None));
    }

    #[test]
    fn shapes_a_template_cannot_have_are_refused_before_any_build() {
        let f = fixture();
        let size = VmSize {
            vcpus: 1,
            memory_mib: 256,
        };
        for shape in [
            TemplateShape {
                nics: NETWORK_INTERFACES_MAX + 1,
                ..TemplateShape::plain(size)
            },
            TemplateShape {
                data_disks: DATA_DISKS_MAX + 1,
                ..TemplateShape::plain(size)
            },
        ] {
            let err = prepare_template_shape(&f.cache, &f.artifacts, &shape)
                .unwrap_err()
                .to_string();
            assert!(err.contains("at most"), "{err}");
        }
        assert!(!f.cache.root().exists());
    }
}
