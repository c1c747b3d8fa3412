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
                pit: None,
                irqchip: None,
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
        if u.pit.is_some() {
            m.pit = u.pit;
        }
        if u.irqchip.is_some() {
            m.irqchip = u.irqchip;
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
                pit: r.machine_config.pit.then_some(true),
                irqchip: r.machine_config.irqchip,
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
        r.machine_config.pit = self.machine.pit.unwrap_or(false);
        r.machine_config.irqchip = self.machine.irqchip;
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
    resources::check_pit_and_irqchip(m.pit.unwrap_or(false), m.irqchip)
        .map_err(|e| refuse(e.to_string()))?;
    if m.mem_size_mib < resources::MIN_MEM_MIB {
        return Err(refuse(format!(
            "mem_size_mib must be at least {}",
            resources::MIN_MEM_MIB
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
