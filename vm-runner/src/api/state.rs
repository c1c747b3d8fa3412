//! The pre-boot configuration the API and config files build up, and its translation into
//! one validated [`VmResources`] for `build_microvm`.

use api_server::model::{
    self, BootSource, Drive, DriveUpdate, MachineConfig, MachineConfigUpdate, NetworkInterface,
    NetworkInterfaceUpdate, Vsock,
};
use api_server::ControllerError;
use std::path::PathBuf;
use vmm::resources::{self, DriveConfig, EntropyConfig, NetConfig, VsockConfig};
use vmm::VmResources;

/// What a client configured before `InstanceStart`, in Firecracker's vocabulary.
#[derive(Debug, Clone)]
pub struct PendingConfig {
    /// `PUT /boot-source`.
    pub boot_source: Option<BootSource>,
    /// `PUT|PATCH /machine-config`.
    pub machine: MachineConfig,
    /// `PUT /drives/{id}`, in the order first put.
    pub drives: Vec<Drive>,
    /// `PUT /entropy`.
    pub entropy: bool,
    /// `PUT /network-interfaces/{id}`, in the order first put.
    pub net: Vec<NetworkInterface>,
    /// `PUT /vsock`.
    pub vsock: Option<Vsock>,
    /// `PUT /fs/{id}`, in the order first put.
    pub fs: Vec<model::Fs>,
}

impl Default for PendingConfig {
    fn default() -> Self {
        PendingConfig {
            boot_source: None,
            machine: MachineConfig {
                vcpu_count: 1,
                mem_size_mib: 128,
                smt: false,
                track_dirty_pages: false,
                cpu_template: None,
                huge_pages: None,
                cmdline_devices: None,
            },
            drives: Vec::new(),
            entropy: false,
            net: Vec::new(),
            vsock: None,
            fs: Vec::new(),
        }
    }
}

fn refuse(message: impl Into<String>) -> ControllerError {
    ControllerError::new(message)
}

impl PendingConfig {
    /// `PUT /machine-config`: settings zvm does not have are refused, not ignored.
    pub fn put_machine(&mut self, m: MachineConfig) -> Result<(), ControllerError> {
        check_machine(&m)?;
        self.machine = m;
        Ok(())
    }

    /// `PATCH /machine-config`.
    pub fn patch_machine(&mut self, u: MachineConfigUpdate) -> Result<(), ControllerError> {
        let mut m = self.machine.clone();
        if let Some(v) = u.vcpu_count {
            m.vcpu_count = v;
        }
        if let Some(v) = u.mem_size_mib {
            m.mem_size_mib = v;
        }
        if let Some(v) = u.smt {
            m.smt = v;
        }
        if let Some(v) = u.track_dirty_pages {
            m.track_dirty_pages = v;
        }
        if u.cpu_template.is_some() {
            m.cpu_template = u.cpu_template;
        }
        if u.cmdline_devices.is_some() {
            m.cmdline_devices = u.cmdline_devices;
        }
        self.put_machine(m)
    }

    /// `PUT /drives/{id}`: adds or replaces the drive with that id.
    pub fn put_drive(&mut self, d: Drive) -> Result<(), ControllerError> {
        if d.partuuid.is_some() {
            return Err(refuse(
                "partuuid is not supported; zvm boots root=/dev/vda from the root device",
            ));
        }
        if d.cache_type == Some(model::CacheType::Unsafe) {
            return Err(refuse(
                "cache_type Unsafe is not supported: zvm offers the guest flushes and makes them durable \
                 (Writeback); leave cache_type out or set Writeback",
            ));
        }
        match self.drives.iter_mut().find(|x| x.drive_id == d.drive_id) {
            Some(existing) => *existing = d,
            None => self.drives.push(d),
        }
        Ok(())
    }

    /// `PATCH /drives/{id}` before boot.
    pub fn patch_drive(&mut self, u: DriveUpdate) -> Result<(), ControllerError> {
        let drive = self
            .drives
            .iter_mut()
            .find(|x| x.drive_id == u.drive_id)
            .ok_or_else(|| refuse(format!("no drive '{}' to update", u.drive_id)))?;
        if let Some(path) = u.path_on_host {
            drive.path_on_host = path;
        }
        if u.rate_limiter.is_some() {
            drive.rate_limiter = u.rate_limiter;
        }
        Ok(())
    }

    /// `PUT /network-interfaces/{id}`: adds or replaces the interface with that id.
    pub fn put_net(&mut self, n: NetworkInterface) {
        match self.net.iter_mut().find(|x| x.iface_id == n.iface_id) {
            Some(existing) => *existing = n,
            None => self.net.push(n),
        }
    }

    /// `PUT /fs/{id}`: a new share, or one that replaces the share with that id.
    pub fn put_fs(&mut self, fs: model::Fs) {
        match self.fs.iter_mut().find(|x| x.fs_id == fs.fs_id) {
            Some(existing) => *existing = fs,
            None => self.fs.push(fs),
        }
    }

    /// `PATCH /network-interfaces/{id}` before boot: new rate limiters.
    pub fn patch_net(&mut self, u: NetworkInterfaceUpdate) -> Result<(), ControllerError> {
        let iface = self
            .net
            .iter_mut()
            .find(|x| x.iface_id == u.iface_id)
            .ok_or_else(|| refuse(format!("no network interface '{}' to update", u.iface_id)))?;
        if u.rx_rate_limiter.is_some() {
            iface.rx_rate_limiter = u.rx_rate_limiter;
        }
        if u.tx_rate_limiter.is_some() {
            iface.tx_rate_limiter = u.tx_rate_limiter;
        }
        Ok(())
    }

    /// The configuration as `GET /vm/config` shows it.
    pub fn to_json(&self) -> serde_json::Value {
        let full = model::FullVmConfig {
            boot_source: self.boot_source.clone(),
            drives: self.drives.clone(),
            machine_config: Some(self.machine.clone()),
            network_interfaces: self.net.clone(),
            vsock: self.vsock.clone(),
            fs: self.fs.clone(),
            ..Default::default()
        };
        let mut value = serde_json::to_value(full).unwrap_or(serde_json::Value::Null);
        if let Some(map) = value.as_object_mut() {
            if self.entropy {
                map.insert("entropy".into(), serde_json::json!({}));
            }
        }
        value
    }

    /// What a restored VM was built from, in the API's terms (what `GET /vm/config` and
    /// `GET /machine-config` show once a snapshot is loaded).
    pub fn from_resources(r: &VmResources) -> PendingConfig {
        let path = |p: &std::path::Path| p.display().to_string();
        PendingConfig {
            boot_source: Some(BootSource {
                kernel_image_path: path(&r.boot_source.kernel_image_path),
                boot_args: r.boot_source.boot_args.clone(),
                initrd_path: r.boot_source.initrd_path.as_deref().map(path),
            }),
            machine: MachineConfig {
                vcpu_count: r.machine_config.vcpu_count,
                mem_size_mib: r.machine_config.mem_size_mib,
                smt: false,
                track_dirty_pages: r.machine_config.track_dirty_pages,
                cpu_template: None,
                huge_pages: None,
                cmdline_devices: (!r.machine_config.cmdline_devices).then_some(false),
            },
            drives: r
                .drives
                .iter()
                .map(|d| Drive {
                    drive_id: d.drive_id.clone(),
                    path_on_host: path(&d.path_on_host),
                    is_root_device: d.is_root_device,
                    is_read_only: d.is_read_only,
                    partuuid: None,
                    cache_type: None,
                    io_engine: (!d.io_engine.is_sync()).then_some(model::IoEngine::Async),
                    rate_limiter: d.rate_limiter,
                })
                .collect(),
            entropy: r.entropy.is_some(),
            net: r
                .net
                .iter()
                .map(|n| NetworkInterface {
                    iface_id: n.iface_id.clone(),
                    host_dev_name: n.host_dev_name.clone(),
                    guest_mac: n.guest_mac.clone(),
                    rx_rate_limiter: n.rx_rate_limiter,
                    tx_rate_limiter: n.tx_rate_limiter,
                    queue_pairs: (n.queue_pairs != 1).then_some(n.queue_pairs),
                })
                .collect(),
            vsock: r.vsock.as_ref().map(|v| Vsock {
                guest_cid: v.guest_cid,
                uds_path: path(&v.uds_path),
                vsock_id: None,
            }),
            fs: r.fs.iter().map(crate::virtiofs::to_api).collect(),
        }
    }

    /// The validated resources to build, with the console on stdio.
    pub fn to_resources(&self) -> Result<VmResources, ControllerError> {
        let boot = self
            .boot_source
            .as_ref()
            .ok_or_else(|| refuse("InstanceStart needs a boot source: PUT /boot-source first"))?;
        let mut r = VmResources::new(PathBuf::from(&boot.kernel_image_path));
        r.boot_source.boot_args = boot.boot_args.clone();
        r.boot_source.initrd_path = boot.initrd_path.as_ref().map(PathBuf::from);
        r.machine_config.vcpu_count = self.machine.vcpu_count;
        r.machine_config.mem_size_mib = self.machine.mem_size_mib;
        r.machine_config.track_dirty_pages = self.machine.track_dirty_pages;
        r.machine_config.cmdline_devices = self.machine.cmdline_devices.unwrap_or(true);
        r.drives = self
            .drives
            .iter()
            .map(|d| DriveConfig {
                drive_id: d.drive_id.clone(),
                path_on_host: PathBuf::from(&d.path_on_host),
                is_root_device: d.is_root_device,
                is_read_only: d.is_read_only,
                rate_limiter: d.rate_limiter,
                io_engine: match d.io_engine {
                    Some(model::IoEngine::Async) => resources::BlockIoEngine::Async,
                    Some(model::IoEngine::Sync) | None => resources::BlockIoEngine::Sync,
                },
            })
            .collect();
        r.entropy = self.entropy.then(EntropyConfig::default);
        r.net = self
            .net
            .iter()
            .map(|n| NetConfig {
                iface_id: n.iface_id.clone(),
                host_dev_name: n.host_dev_name.clone(),
                guest_mac: n.guest_mac.clone(),
                rx_rate_limiter: n.rx_rate_limiter,
                tx_rate_limiter: n.tx_rate_limiter,
                queue_pairs: n.queue_pairs.unwrap_or(1),
            })
            .collect();
        r.vsock = self.vsock.as_ref().map(|v| VsockConfig {
            guest_cid: v.guest_cid,
            uds_path: PathBuf::from(&v.uds_path),
        });
        r.fs = self.fs.iter().map(crate::virtiofs::from_api).collect();
        r.validate().map_err(|e| refuse(e.to_string()))?;
        Ok(r)
    }
}

/// Refuses a path that is not a readable regular file, as Firecracker does at PUT time.
pub fn check_readable(what: &str, path: &str) -> Result<(), ControllerError> {
    match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(refuse(format!("{what} '{path}' is not a regular file"))),
        Err(e) => Err(refuse(format!("{what} '{path}' cannot be read: {e}"))),
    }
}

fn check_machine(m: &MachineConfig) -> Result<(), ControllerError> {
    if m.smt {
        return Err(refuse(
            "smt is not supported: zvm gives each vCPU its own core",
        ));
    }
    if m.huge_pages.is_some_and(|h| h != model::HugePages::None) {
        return Err(refuse("huge pages are not supported yet"));
    }
    if m.cpu_template
        .is_some_and(|t| t != model::CpuTemplate::None)
    {
        return Err(refuse("Firecracker's CPU templates are not supported; zvm picks its own (none, or pvm on KVM PVM hosts)"));
    }
    if m.vcpu_count == 0 || m.vcpu_count > resources::MAX_VCPUS {
        return Err(refuse(format!(
            "vcpu_count must be 1..={}",
            resources::MAX_VCPUS
        )));
    }
    if m.mem_size_mib < resources::MIN_MEM_MIB {
        return Err(refuse(format!(
            "mem_size_mib must be at least {}",
            resources::MIN_MEM_MIB
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, path: &str) -> Drive {
        serde_json::from_value(
            serde_json::json!({"drive_id": id, "path_on_host": path, "is_root_device": false}),
        )
        .expect("drive")
    }

    #[test]
    fn start_needs_a_boot_source_and_valid_files() {
        let mut c = PendingConfig::default();
        assert!(c
            .to_resources()
            .expect_err("no boot source")
            .message
            .contains("PUT /boot-source"));
        c.boot_source = Some(BootSource {
            kernel_image_path: "/nonexistent/vmlinux".into(),
            boot_args: None,
            initrd_path: None,
        });
        assert!(c
            .to_resources()
            .expect_err("missing kernel")
            .message
            .contains("cannot be read"));
    }

    #[test]
    fn drive_settings_zvm_does_not_honour_are_refused_not_ignored() {
        let mut c = PendingConfig::default();
        let with = |field: &str, value: &str| {
            serde_json::from_value::<Drive>(serde_json::json!({
                "drive_id": "d", "path_on_host": "/d", "is_root_device": false, field: value
            }))
            .expect("drive")
        };
        let err = c
            .put_drive(with("cache_type", "Unsafe"))
            .expect_err("Unsafe");
        assert!(err.message.contains("Writeback"), "{}", err.message);
        assert!(c.drives.is_empty());
        c.put_drive(with("cache_type", "Writeback"))
            .expect("what zvm does");
        c.put_drive(with("io_engine", "Sync"))
            .expect("what zvm does");
        assert_eq!(c.drives.len(), 1);
    }

    #[test]
    fn io_engine_async_reaches_the_resources_and_back() {
        let mut c = PendingConfig {
            boot_source: Some(BootSource {
                kernel_image_path: "/proc/self/exe".into(),
                boot_args: None,
                initrd_path: None,
            }),
            ..Default::default()
        };
        for (id, engine) in [("a", Some("Async")), ("s", Some("Sync")), ("d", None)] {
            let mut d = serde_json::json!({
                "drive_id": id, "path_on_host": "/proc/self/exe", "is_root_device": false
            });
            if let Some(engine) = engine {
                d["io_engine"] = engine.into();
            }
            c.put_drive(serde_json::from_value(d).expect("drive"))
                .expect("accepted");
        }
        let r = c.to_resources().expect("resources");
        let engines: Vec<_> = r.drives.iter().map(|d| d.io_engine).collect();
        use resources::BlockIoEngine::{Async, Sync};
        assert_eq!(engines, [Async, Sync, Sync]);
        let back = PendingConfig::from_resources(&r);
        assert_eq!(back.drives[0].io_engine, Some(model::IoEngine::Async));
        assert_eq!(back.drives[1].io_engine, None, "Sync is the default");
    }

    #[test]
    fn unsupported_machine_settings_are_refused() {
        let mut c = PendingConfig::default();
        let mut m = c.machine.clone();
        m.smt = true;
        assert!(c.put_machine(m).is_err());
        let patch = MachineConfigUpdate {
            vcpu_count: Some(0),
            ..Default::default()
        };
        assert!(c.patch_machine(patch).is_err());
        let patch = MachineConfigUpdate {
            mem_size_mib: Some(512),
            vcpu_count: Some(2),
            ..Default::default()
        };
        c.patch_machine(patch).expect("valid patch");
        assert_eq!((c.machine.vcpu_count, c.machine.mem_size_mib), (2, 512));
    }

    #[test]
    fn network_vsock_and_rate_limiters_reach_the_resources() {
        let dir = tempfile::tempdir().expect("dir");
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"kernel").expect("kernel");
        let mut c = PendingConfig {
            boot_source: Some(BootSource {
                kernel_image_path: kernel.display().to_string(),
                boot_args: None,
                initrd_path: None,
            }),
            ..Default::default()
        };
        let iface: NetworkInterface = serde_json::from_value(serde_json::json!({
            "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01",
            "tx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}
        }))
        .expect("iface");
        c.put_net(iface);
        let update = NetworkInterfaceUpdate {
            iface_id: "eth0".into(),
            rx_rate_limiter: Some(model::RateLimiter::default()),
            tx_rate_limiter: None,
        };
        c.patch_net(update).expect("patch");
        assert!(c
            .patch_net(NetworkInterfaceUpdate {
                iface_id: "eth9".into(),
                rx_rate_limiter: None,
                tx_rate_limiter: None
            })
            .is_err());
        c.vsock = Some(
            serde_json::from_value(
                serde_json::json!({"guest_cid": 3, "uds_path": dir.path().join("v.sock")}),
            )
            .expect("vsock"),
        );
        let r = c.to_resources().expect("valid");
        assert_eq!(r.net[0].host_dev_name, "tap0");
        assert_eq!(
            r.net[0]
                .tx_rate_limiter
                .and_then(|l| l.bandwidth)
                .map(|b| b.size),
            Some(1000)
        );
        assert!(r.net[0].rx_rate_limiter.is_some());
        assert_eq!(r.net[0].queue_pairs, 1, "one queue pair unless asked");
        // Multiqueue is opt-in through the interface's body and bounded by the vCPUs.
        let mq: NetworkInterface = serde_json::from_value(serde_json::json!({
            "iface_id": "eth0", "host_dev_name": "tap0", "queue_pairs": 2
        }))
        .expect("iface");
        c.put_net(mq);
        let err = c.to_resources().expect_err("1 vCPU, 2 pairs").to_string();
        assert!(err.contains("2 queue pairs; use 1 to 1"), "{err}");
        c.machine.vcpu_count = 2;
        let r = c.to_resources().expect("valid");
        assert_eq!(r.net[0].queue_pairs, 2);
        let back = PendingConfig::from_resources(&r);
        assert_eq!(
            back.net[0].queue_pairs,
            Some(2),
            "GET /vm/config shows them"
        );
        c.machine.vcpu_count = 1;
        c.put_net(serde_json::from_value(serde_json::json!({
            "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01",
            "rx_rate_limiter": {}, "tx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}
        }))
        .expect("iface"));
        assert_eq!(r.vsock.as_ref().map(|v| v.guest_cid), Some(3));
        assert!(!r.machine_config.track_dirty_pages);
        c.patch_machine(MachineConfigUpdate {
            track_dirty_pages: Some(true),
            ..Default::default()
        })
        .expect("patch");
        assert!(
            c.to_resources()
                .expect("valid")
                .machine_config
                .track_dirty_pages,
            "reaches the VMM for diff snapshots"
        );
        assert!(
            c.to_resources()
                .expect("valid")
                .machine_config
                .cmdline_devices
        );
        c.patch_machine(MachineConfigUpdate {
            cmdline_devices: Some(false),
            ..Default::default()
        })
        .expect("patch");
        assert!(
            !c.to_resources()
                .expect("valid")
                .machine_config
                .cmdline_devices,
            "an ACPI kernel's VM leaves the devices off the command line"
        );
        let back = PendingConfig::from_resources(&c.to_resources().expect("valid"));
        assert_eq!(
            back.to_json(),
            c.to_json(),
            "a restored VM's configuration reads as the one it was built from"
        );
        assert_eq!(c.to_json()["network-interfaces"][0]["iface_id"], "eth0");
    }

    #[test]
    fn drives_are_replaced_by_id_and_patched() {
        let mut c = PendingConfig::default();
        c.put_drive(drive("a", "/one")).expect("put");
        c.put_drive(drive("b", "/two")).expect("put");
        c.put_drive(drive("a", "/three")).expect("replace");
        assert_eq!(
            c.drives
                .iter()
                .map(|d| d.path_on_host.as_str())
                .collect::<Vec<_>>(),
            ["/three", "/two"]
        );
        c.patch_drive(DriveUpdate {
            drive_id: "b".into(),
            path_on_host: Some("/four".into()),
            rate_limiter: None,
        })
        .expect("patch");
        assert_eq!(c.drives[1].path_on_host, "/four");
        assert!(c
            .patch_drive(DriveUpdate {
                drive_id: "zz".into(),
                path_on_host: None,
                rate_limiter: None
            })
            .is_err());
        let json = c.to_json();
        assert_eq!(json["drives"][0]["drive_id"], "a");
        assert_eq!(json["machine-config"]["vcpu_count"], 1);
    }
}
