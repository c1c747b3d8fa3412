//! Request and response bodies, as in Firecracker's API (swagger) definition.
//!
//! Every request body refuses unknown fields, so a typo is a 400 rather than a setting
//! silently ignored. Optional fields are `Option`s and are left out when serialised.

use serde::{Deserialize, Serialize};

mod fs;
mod snapshot;

pub use fs::{Fs, MAX_FS_TAG};
pub use snapshot::{
    DriveOverride, MemBackend, MemBackendType, NetworkOverride, SnapshotCreateParams,
    SnapshotLoadParams, SnapshotType, VsockOverride,
};

/// Invalid values that the JSON schema alone does not catch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A `Shutdown` grace period beyond the limit.
    #[error("timeout_ms {0} is more than {MAX_SHUTDOWN_TIMEOUT_MS} (one hour)")]
    ShutdownTimeout(u64),
    /// `timeout_ms` on an action other than `Shutdown`.
    #[error("timeout_ms only goes with the Shutdown action")]
    TimeoutWithoutShutdown,
    /// A resource id that is empty, too long or has characters other than `[A-Za-z0-9_]`.
    #[error("invalid id {0:?}: use 1 to 64 characters from A-Z, a-z, 0-9 and _")]
    InvalidId(String),
    /// A MAC address not written as six colon-separated hex pairs.
    #[error("invalid MAC address {0:?}: expected the form 06:00:ac:10:00:02")]
    InvalidMac(String),
    /// A `PUT /fs` body that cannot describe a share.
    #[error("invalid fs: {0}")]
    InvalidFs(String),
    /// A vsock guest CID below 3 (0-2 are reserved).
    #[error("invalid guest_cid {0}: the guest CID must be at least 3")]
    InvalidGuestCid(u32),
    /// A vCPU count of 0.
    #[error("vcpu_count must be at least 1")]
    NoVcpus,
    /// A memory size of 0.
    #[error("mem_size_mib must be at least 1")]
    NoMemory,
    /// A PATCH body that changes nothing.
    #[error("empty PATCH request: give at least one field to change")]
    EmptyUpdate,
    /// A required path or name given as "".
    #[error("{0} must not be empty")]
    EmptyField(&'static str),
    /// `PUT /snapshot/create` asked for a snapshot format version.
    #[error("version {0:?} is not supported: zvm writes its own snapshot format (leave version out; Firecracker 1.5 removed it too)")]
    SnapshotVersion(String),
    /// `PUT /snapshot/load` with neither or both of `mem_backend` and `mem_file_path`.
    #[error("give exactly one of mem_backend (as {{\"backend_type\": \"File\", \"backend_path\": ...}}) and mem_file_path")]
    MemoryBackendChoice,
    /// `PUT /snapshot/load` with a userfaultfd memory backend.
    #[error("mem_backend backend_type Uffd is not supported: zvm maps the memory file itself; use \"File\"")]
    UffdBackend,
    /// A restore override naming the same device twice.
    #[error("{what} '{id}' is overridden twice")]
    DuplicateOverride {
        /// Which kind of device.
        what: &'static str,
        /// Its id.
        id: String,
    },
}

/// Checks a drive or network interface id as Firecracker does.
pub fn validate_id(id: &str) -> Result<(), ModelError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(ModelError::InvalidId(id.to_string()));
    }
    Ok(())
}

/// Checks a MAC address of the form `xx:xx:xx:xx:xx:xx`.
pub fn validate_mac(mac: &str) -> Result<(), ModelError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(ModelError::InvalidMac(mac.to_string()))
    }
}

/// `PUT /boot-source`: the guest kernel, its command line and initrd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Host path of the kernel image.
    pub kernel_image_path: String,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of the initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// Firecracker's CPU templates (accepted so clients can send them; a controller may refuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    None,
}

/// Backing of guest memory by huge pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Normal pages.
    None,
    /// 2 MiB hugetlbfs pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PUT /machine-config` (and the body of `GET /machine-config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading.
    #[serde(default)]
    pub smt: bool,
    /// Track dirty pages (for snapshots).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Huge pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
    /// zvm: name the virtio-mmio devices on the kernel command line too (default true);
    /// false for kernels with ACPI, which find them in the DSDT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline_devices: Option<bool>,
    /// zvm: give the guest KVM's i8254 PIT (default false), for kernels without kvmclock,
    /// which calibrate their clocks against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pit: Option<bool>,
    /// zvm: which interrupt controllers KVM emulates, `split` or `kernel` (default: split,
    /// or kernel with a PIT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irqchip: Option<IrqchipKind>,
}

impl MachineConfig {
    /// Checks the values the schema bounds.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.vcpu_count == 0 {
            return Err(ModelError::NoVcpus);
        }
        if self.mem_size_mib == 0 {
            return Err(ModelError::NoMemory);
        }
        Ok(())
    }
}

/// `PATCH /machine-config`: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct MachineConfigUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline_devices: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pit: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irqchip: Option<IrqchipKind>,
}

impl MachineConfigUpdate {
    /// Checks the update changes something, to valid values.
    pub fn validate(&self) -> Result<(), ModelError> {
        if *self == Self::default() {
            return Err(ModelError::EmptyUpdate);
        }
        if self.vcpu_count == Some(0) {
            return Err(ModelError::NoVcpus);
        }
        if self.mem_size_mib == Some(0) {
            return Err(ModelError::NoMemory);
        }
        Ok(())
    }
}

/// Rate limiters and their token buckets: the VMM's own configuration types, which
/// already follow Firecracker's JSON (`bandwidth`/`ops`, `size`, `one_time_burst`,
/// `refill_time`; unknown fields refused).
pub use vmm::rate_limiter::{RateLimiterConfig as RateLimiter, TokenBucketConfig as TokenBucket};
pub use vmm::resources::IrqchipKind;

/// Block device cache policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum CacheType {
    Unsafe,
    Writeback,
}

/// Block device I/O engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum IoEngine {
    Sync,
    Async,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's id (the same as in the path).
    pub drive_id: String,
    /// Host path of the backing file.
    pub path_on_host: String,
    /// Whether this is the guest's root device.
    pub is_root_device: bool,
    /// Read-only (defaults to false, as in newer Firecracker).
    #[serde(default)]
    pub is_read_only: bool,
    /// Partition UUID of the root partition (root device only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Cache policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// I/O engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// Rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PATCH /drives/{drive_id}`: a new backing file or rate limiter for a drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    /// The drive's id (the same as in the path).
    pub drive_id: String,
    /// New host path of the backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// New rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's id (the same as in the path).
    pub iface_id: String,
    /// Host tap device name.
    pub host_dev_name: String,
    /// Guest MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Receive rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
    /// Receive and transmit queue pairs (virtio-net multiqueue; absent: 1). At most one per
    /// vCPU; the tap must be multiqueue, or zvm must be able to create it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_pairs: Option<u16>,
}

/// `PATCH /network-interfaces/{iface_id}`: new rate limiters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    /// The interface's id (the same as in the path).
    pub iface_id: String,
    /// New receive rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// New transmit rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PUT /vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Guest context id (3 or more).
    pub guest_cid: u32,
    /// Host Unix socket path for the vsock backend.
    pub uds_path: String,
    /// Deprecated id, accepted for compatibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `PUT /entropy`: a virtio-rng device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    /// Rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// Log levels of `PUT /logger` (Firecracker's names; lower case accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum LogLevel {
    #[serde(alias = "error", alias = "ERROR")]
    Error,
    #[serde(alias = "warning", alias = "WARNING", alias = "Warn", alias = "warn")]
    Warning,
    #[serde(alias = "info", alias = "INFO")]
    Info,
    #[serde(alias = "debug", alias = "DEBUG")]
    Debug,
    #[serde(alias = "trace", alias = "TRACE")]
    Trace,
    #[serde(alias = "off", alias = "OFF")]
    Off,
}

/// `PUT /logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// File or named pipe to log to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// Log level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Prefix lines with their level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Prefix lines with their source file and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log from this module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// File or named pipe to write metrics to.
    pub metrics_path: String,
}

/// The actions of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured microVM.
    InstanceStart,
    /// Press Ctrl+Alt+Del in the guest (x86 keyboard reset).
    SendCtrlAltDel,
    /// Write the metrics now.
    FlushMetrics,
    /// Press the guest's ACPI power button (zvm).
    SendPowerButton,
    /// Press the power button and stop the VM if the guest has not powered off within
    /// `timeout_ms` (zvm).
    Shutdown,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceAction {
    /// What to do.
    pub action_type: ActionType,
    /// For `Shutdown`: how long the guest has to power off, in milliseconds (default
    /// [`DEFAULT_SHUTDOWN_TIMEOUT_MS`], at most [`MAX_SHUTDOWN_TIMEOUT_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// How long `Shutdown` gives the guest when the request does not say.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
/// The longest `Shutdown` grace period (one hour).
pub const MAX_SHUTDOWN_TIMEOUT_MS: u64 = 3_600_000;

impl InstanceAction {
    /// The `Shutdown` grace period this action asks for; refuses `timeout_ms` on other
    /// actions and values beyond [`MAX_SHUTDOWN_TIMEOUT_MS`].
    pub fn shutdown_timeout_ms(&self) -> Result<u64, ModelError> {
        match (self.action_type, self.timeout_ms) {
            (ActionType::Shutdown, None) => Ok(DEFAULT_SHUTDOWN_TIMEOUT_MS),
            (ActionType::Shutdown, Some(ms)) if ms <= MAX_SHUTDOWN_TIMEOUT_MS => Ok(ms),
            (ActionType::Shutdown, Some(ms)) => Err(ModelError::ShutdownTimeout(ms)),
            (_, Some(_)) => Err(ModelError::TimeoutWithoutShutdown),
            (_, None) => Ok(0),
        }
    }
}

/// The states `PATCH /vm` moves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stop running the vCPUs.
    Paused,
    /// Run them again.
    Resumed,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateUpdate {
    /// The state to move to.
    pub state: VmState,
}

/// The state in `GET /` ([`InstanceInfo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configuring; `InstanceStart` not yet done.
    #[serde(rename = "Not started")]
    NotStarted,
    /// The guest runs.
    Running,
    /// The guest is paused.
    Paused,
}

/// The body of `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The instance id.
    pub id: String,
    /// Its state.
    pub state: InstanceState,
    /// The monitor's version.
    pub vmm_version: String,
    /// The monitor's name.
    pub app_name: String,
}

/// The body of `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The monitor's version (Firecracker's field name, for client compatibility).
    pub firecracker_version: String,
}

/// The body of `GET /vm/config`: the whole configuration, as Firecracker names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct FullVmConfig {
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfig>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<Fs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyDevice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_round_trip_and_refuse_unknown_fields() {
        let drive: Drive = serde_json::from_value(json!({
            "drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false,
            "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}, "ops": {"size": 10, "one_time_burst": 5, "refill_time": 1}}
        }))
        .expect("drive");
        assert_eq!(
            drive
                .rate_limiter
                .as_ref()
                .and_then(|r| r.ops.as_ref())
                .and_then(|o| o.one_time_burst),
            Some(5)
        );
        let back = serde_json::to_value(&drive).expect("serialise");
        assert!(back.get("partuuid").is_none(), "None fields are left out");
        assert!(serde_json::from_value::<Drive>(
            json!({"drive_id": "a", "path_on_host": "/x", "is_root_device": true, "bogus": 1})
        )
        .is_err());
        assert!(serde_json::from_value::<TokenBucket>(
            json!({"size": 1, "refill_time": 1, "x": 0})
        )
        .is_err());
        assert!(
            serde_json::from_value::<MachineConfig>(json!({"vcpu_count": 1})).is_err(),
            "mem_size_mib is required"
        );
    }

    #[test]
    fn enums_use_firecracker_spellings() {
        assert_eq!(
            serde_json::to_value(InstanceState::NotStarted).expect("ser"),
            json!("Not started")
        );
        assert_eq!(
            serde_json::from_value::<HugePages>(json!("2M")).expect("de"),
            HugePages::Hugetlbfs2M
        );
        assert_eq!(
            serde_json::from_value::<LogLevel>(json!("warn")).expect("de"),
            LogLevel::Warning
        );
        assert!(serde_json::from_value::<ActionType>(json!("Reboot")).is_err());
        let full = serde_json::to_value(FullVmConfig::default()).expect("ser");
        assert_eq!(full, json!({"drives": [], "network-interfaces": []}));
    }

    #[test]
    fn validation() {
        assert!(validate_id("rootfs_1").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a-b").is_err());
        assert!(validate_id(&"a".repeat(65)).is_err());
        assert!(validate_mac("06:00:AC:10:00:02").is_ok());
        assert!(validate_mac("06:00:ac:10:00").is_err());
        assert!(validate_mac("06:00:ac:10:00:0g").is_err());
        assert_eq!(
            MachineConfigUpdate::default().validate(),
            Err(ModelError::EmptyUpdate)
        );
        let mc = MachineConfig {
            vcpu_count: 0,
            mem_size_mib: 1,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: None,
            cmdline_devices: None,
            pit: None,
            irqchip: None,
        };
        assert_eq!(mc.validate(), Err(ModelError::NoVcpus));
    }
}
