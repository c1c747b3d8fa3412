//! The workload model (after Zero-OS's zmachine) and its validation.
//!
//! ```json
//! {"name": "web", "flist": "https://hub.example/web.fl",
//!  "compute": {"cpu": 1, "memory": "512M"}, "size": "2G",
//!  "disks": [{"name": "data", "size": "1G", "mountpoint": "/data"}],
//!  "volumes": [{"name": "shared", "size": "1G", "mountpoint": "/srv"}], "rootfs": "virtiofs",
//!  "network": {"interfaces": [{"network": "lan", "ip": "10.20.0.5"}]},
//!  "entrypoint": "/bin/server --port 80", "env": {"MODE": "prod"}, "kernel_args": "quiet"}
//! ```
//! Sizes are bytes, or strings with a binary unit.

use crate::bytesize::{ByteSize, MIB};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

/// The smallest VM memory accepted.
pub const MIN_MEMORY: u64 = 256 * MIB;
/// The largest disk (root or extra) accepted.
pub const MAX_DISK: u64 = 16 << 40;
/// The smallest extra disk accepted.
pub const MIN_DISK: u64 = MIB;
/// The longest deployment or disk name (a deployment's name is its container's host name;
/// Linux's sethostname takes at most 64 bytes).
pub const MAX_NAME: usize = 64;
/// Kernel command lines are at most this long on x86 (COMMAND_LINE_SIZE).
pub const MAX_KERNEL_ARGS: usize = 1024;

/// Why a spec is invalid; `field` names the offending member.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// A field has an unacceptable value.
    #[error("{field}: {reason}")]
    Invalid {
        /// JSON path of the field, e.g. `compute.memory`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A workload: one micro-VM booted from an flist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Unique name on the node; also a file name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// The flist: a local `.fl` path or an http(s) URL.
    pub flist: String,
    /// vCPUs and memory.
    pub compute: Compute,
    /// A container flist's root size: with `rootfs: virtiofs`, the most its writes take on
    /// the node (their own store; default 1 GiB); with `ext4`, the disk's size (default:
    /// content plus a margin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
    /// Extra disks: sparse files on the node, attached as virtio-blk.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// Network interfaces.
    #[serde(default)]
    pub network: NetworkSpec,
    /// The container's command (a shell-like word list) for a container flist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// Environment of the entrypoint.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra kernel command-line arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_args: Option<String>,
    /// Directories of the node shared into the container over virtio-fs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    /// Where a container flist's root comes from: `virtiofs` (the cache's unpacked flist,
    /// copy-on-write per deployment; the default) or `ext4` (a copy on a disk of `size`).
    #[serde(default)]
    pub rootfs: crate::flist_vm::cow_root::RootFs,
}

/// A volume: storage of `size` bytes the node makes in the deployment's own directory
/// (`<state>/vms/<deployment>/volumes/<name>.ext4`, a bounded store: the container gets
/// ENOSPC when it is full), shared into the container over virtio-fs, kept across restarts,
/// removed with the deployment. A new volume's root takes the owner and mode of the
/// image's directory at its mount point (root 0755 when the image has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Unique name within the workload; names the store.
    pub name: String,
    /// The most the volume holds (1 MiB to 16 TiB; default 1 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
    /// Where the container sees it (absolute path).
    pub mountpoint: String,
}

impl VolumeSpec {
    /// The volume's size: the spec's, else the default.
    pub fn bytes(&self) -> u64 {
        self.size
            .map_or(crate::flist_vm::bounded_store::DEFAULT_VOLUME_SIZE, |s| s.0)
    }
}

/// The most volumes a workload has.
pub const MAX_VOLUMES: usize = 16;

/// Checks a mount point in the container: absolute, not `/`, no `..`, nothing that would
/// split the `zvm run` argument or the kernel command line it travels in.
fn check_mountpoint(field: &str, path: &str) -> Result<(), SpecError> {
    if !path.starts_with('/') {
        return Err(invalid(field, format!("`{path}` is not an absolute path")));
    }
    check_text(field, path, 4096)?;
    if path.contains([',', ':', ' ', '\t', '\n', '"', '\\']) {
        return Err(invalid(
            field,
            format!("`{path}` may not contain commas, colons, blanks, quotes or backslashes"),
        ));
    }
    if path.split('/').any(|c| c == "..") || path.trim_end_matches('/').is_empty() {
        return Err(invalid(
            field,
            format!("`{path}` may not be / or contain .."),
        ));
    }
    Ok(())
}

/// vCPUs and memory of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compute {
    /// vCPUs (1 or more).
    pub cpu: u32,
    /// Memory (256 MiB or more, whole MiB).
    pub memory: ByteSize,
}

/// An extra disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Unique name within the workload; the guest sees it as the disk serial.
    pub name: String,
    /// Size of the sparse file.
    pub size: ByteSize,
    /// Where the guest is expected to mount it (absolute path).
    pub mountpoint: String,
}

/// Network interfaces of a workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// One virtio-net interface each, on the node bridge of its network.
    #[serde(default)]
    pub interfaces: Vec<InterfaceSpec>,
}

/// One interface: a network of the node and an optional fixed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceSpec {
    /// Name of a network the node serves (`zvm node serve --network NAME=CIDR`).
    pub network: String,
    /// The address; allocated from the network's range when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
}

/// Checks that `name` is usable as a file name and a deployment name.
pub fn check_name(field: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.len() > MAX_NAME {
        return Err(invalid(field, format!("longer than {MAX_NAME} characters")));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(invalid(
            field,
            format!("`{name}` must not start with '.' or '-'"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(invalid(
            field,
            format!("`{name}` contains {c:?}; use letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

fn check_text(field: &str, text: &str, max: usize) -> Result<(), SpecError> {
    if text.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    if text.len() > max {
        return Err(invalid(field, format!("longer than {max} bytes")));
    }
    Ok(())
}

impl WorkloadSpec {
    /// Parses a spec from JSON, with serde's message (unknown fields, wrong types) on error.
    pub fn from_json(bytes: &[u8]) -> Result<WorkloadSpec, SpecError> {
        serde_json::from_slice(bytes).map_err(|e| invalid("spec", e.to_string()))
    }

    /// Checks everything that needs no I/O: names, limits, sizes, env, arguments.
    /// `networks` are the names of the networks the node serves.
    pub fn validate(&self, networks: &[String]) -> Result<(), SpecError> {
        check_name("name", &self.name)?;
        if self.flist.trim().is_empty() {
            return Err(invalid("flist", "must not be empty"));
        }
        check_text("flist", &self.flist, 4096)?;
        let max_cpus = u32::from(vmm::resources::MAX_VCPUS);
        if self.compute.cpu < 1 || self.compute.cpu > max_cpus {
            return Err(invalid(
                "compute.cpu",
                format!(
                    "{} is out of range: give 1 to {max_cpus} vCPUs",
                    self.compute.cpu
                ),
            ));
        }
        let mem = self.compute.memory.0;
        if mem < MIN_MEMORY {
            return Err(invalid(
                "compute.memory",
                format!("{} is below the minimum of 256 MiB", self.compute.memory),
            ));
        }
        if !mem.is_multiple_of(MIB) {
            return Err(invalid(
                "compute.memory",
                format!("{mem} bytes is not a whole number of MiB"),
            ));
        }
        if mem > MAX_DISK {
            return Err(invalid(
                "compute.memory",
                format!("{} is absurdly large", self.compute.memory),
            ));
        }
        if let Some(size) = self.size {
            if size.0 < 16 * MIB || size.0 > MAX_DISK {
                return Err(invalid(
                    "size",
                    format!("{size} is out of range (16 MiB to 16 TiB)"),
                ));
            }
        }
        let max_disks = vmm::resources::MAX_DRIVES - 1;
        if self.disks.len() > max_disks {
            return Err(invalid(
                "disks",
                format!("{} disks given; at most {max_disks}", self.disks.len()),
            ));
        }
        let mut disk_names = HashSet::new();
        for (i, disk) in self.disks.iter().enumerate() {
            let field = format!("disks[{i}]");
            check_name(&format!("{field}.name"), &disk.name)?;
            if ["root", "agent", "rootfs"].contains(&disk.name.as_str()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!(
                        "`{}` is reserved for the VM's own disks (root, agent, rootfs)",
                        disk.name
                    ),
                ));
            }
            if !disk_names.insert(disk.name.as_str()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("`{}` is used by another disk", disk.name),
                ));
            }
            if disk.size.0 < MIN_DISK || disk.size.0 > MAX_DISK {
                return Err(invalid(
                    format!("{field}.size"),
                    format!("{} is out of range (1 MiB to 16 TiB)", disk.size),
                ));
            }
            if !disk.mountpoint.starts_with('/') {
                return Err(invalid(
                    format!("{field}.mountpoint"),
                    format!("`{}` is not an absolute path", disk.mountpoint),
                ));
            }
            check_text(&format!("{field}.mountpoint"), &disk.mountpoint, 4096)?;
            // The path travels in a `--disk` list and on the kernel command line.
            if disk.mountpoint.contains([',', ' ', '\t', '\n', '"']) {
                return Err(invalid(
                    format!("{field}.mountpoint"),
                    format!(
                        "`{}` may not contain commas, blanks or quotes",
                        disk.mountpoint
                    ),
                ));
            }
        }
        self.validate_volumes()?;
        let max_nics = vmm::resources::MAX_NET_INTERFACES;
        if self.network.interfaces.len() > max_nics {
            return Err(invalid(
                "network.interfaces",
                format!(
                    "{} interfaces given; at most {max_nics}",
                    self.network.interfaces.len()
                ),
            ));
        }
        let mut ips = HashSet::new();
        for (i, nic) in self.network.interfaces.iter().enumerate() {
            let field = format!("network.interfaces[{i}]");
            if !networks.iter().any(|n| n == &nic.network) {
                let known = if networks.is_empty() {
                    "none".to_string()
                } else {
                    networks.join(", ")
                };
                return Err(invalid(
                    format!("{field}.network"),
                    format!(
                        "unknown network `{}` (this node serves: {known})",
                        nic.network
                    ),
                ));
            }
            if let Some(ip) = nic.ip {
                if !ips.insert(ip) {
                    return Err(invalid(
                        format!("{field}.ip"),
                        format!("{ip} is given twice"),
                    ));
                }
            }
        }
        if let Some(entrypoint) = &self.entrypoint {
            check_text("entrypoint", entrypoint, 4096)?;
            crate::flist_vm::cmdline::split_words(entrypoint)
                .map_err(|e| invalid("entrypoint", e.to_string()))?;
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') {
                return Err(invalid(
                    "env",
                    format!("`{key}` is not a valid variable name"),
                ));
            }
            check_text(&format!("env.{key}"), key, 256)?;
            check_text(&format!("env.{key}"), value, 4096)?;
        }
        if let Some(args) = &self.kernel_args {
            check_text("kernel_args", args, MAX_KERNEL_ARGS)?;
        }
        Ok(())
    }

    fn validate_volumes(&self) -> Result<(), SpecError> {
        if self.volumes.len() > MAX_VOLUMES {
            return Err(invalid(
                "volumes",
                format!(
                    "{} volumes given; at most {MAX_VOLUMES}",
                    self.volumes.len()
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut mountpoints: HashSet<&str> =
            self.disks.iter().map(|d| d.mountpoint.as_str()).collect();
        for (i, volume) in self.volumes.iter().enumerate() {
            let field = format!("volumes[{i}]");
            // A file name: the volume's directory cannot be anywhere but its own.
            check_name(&format!("{field}.name"), &volume.name)?;
            if !names.insert(volume.name.as_str()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("`{}` is used by another volume", volume.name),
                ));
            }
            if let Some(size) = volume.size {
                if size.0 < MIN_DISK || size.0 > MAX_DISK {
                    return Err(invalid(
                        format!("{field}.size"),
                        format!("{size} is out of range (1 MiB to 16 TiB)"),
                    ));
                }
            }
            check_mountpoint(&format!("{field}.mountpoint"), &volume.mountpoint)?;
            if !mountpoints.insert(volume.mountpoint.as_str()) {
                return Err(invalid(
                    format!("{field}.mountpoint"),
                    format!("`{}` is used by another disk or volume", volume.mountpoint),
                ));
            }
        }
        Ok(())
    }

    /// Memory in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.compute.memory.mib()
    }

    /// Bytes of node storage the extra disks, volumes and a virtio-fs root's store take
    /// (at most, being sparse).
    pub fn disk_bytes(&self) -> u64 {
        let root = match (self.size, self.rootfs) {
            (Some(s), _) => s.0,
            (None, crate::flist_vm::cow_root::RootFs::Virtiofs) => {
                crate::flist_vm::bounded_store::DEFAULT_ROOT_SIZE
            }
            (None, crate::flist_vm::cow_root::RootFs::Ext4) => 0,
        };
        self.disks
            .iter()
            .map(|d| d.size.0)
            .chain(self.volumes.iter().map(VolumeSpec::bytes))
            .fold(root, u64::saturating_add)
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
