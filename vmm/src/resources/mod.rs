//! The validated description of one micro-VM, in Firecracker's vocabulary.
//!
//! Every front end (the `zvm run` flags, and later a config file or the API) produces one
//! [`VmResources`]; [`VmResources::validate`] checks it once; [`crate::build_microvm`] takes it.

mod devices;
mod fs;
mod irqchip;

pub use devices::{BlockIoEngine, DriveConfig, EntropyConfig, NetConfig, VsockConfig};
pub use fs::{FsConfig, MAX_FS};
pub use irqchip::{check_pit_and_irqchip, IrqchipKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The smallest guest zvm boots: room for a small kernel and an initramfs.
pub const MIN_MEM_MIB: u64 = 32;
/// The most vCPUs one VM gets (the MP table and the guest kernel's NR_CPUS bound it).
pub const MAX_VCPUS: u8 = 32;
/// The default kernel command line (replaced, not extended, by a user's `boot_args`).
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 nomodule";
/// The most drives one VM gets (each takes one of the IRQs the IOAPIC routes).
pub const MAX_DRIVES: usize = 16;
/// The most network interfaces one VM gets.
pub const MAX_NET_INTERFACES: usize = 8;
/// The most queue pairs one network interface gets (and never more than vCPUs).
pub const MAX_NET_QUEUE_PAIRS: u16 = crate::devices::virtio::net::MAX_QUEUE_PAIRS;
/// Command-line bytes zvm may append per virtio device (`virtio_mmio.device=4K@0x...:N`).
const CMDLINE_BYTES_PER_DEVICE: usize = 40;

/// Errors in a VM description. Each message is one line a user can act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourcesError {
    /// vcpu_count of zero.
    #[error("the VM needs at least one vCPU (cpus was 0)")]
    NoVcpus,
    /// Too many vCPUs.
    #[error("at most {max} vCPUs are supported (cpus was {requested})")]
    TooManyVcpus {
        /// Requested count.
        requested: u64,
        /// Limit.
        max: u8,
    },
    /// An irqchip kind that does not exist.
    #[error("unknown irqchip '{0}': use split or kernel")]
    BadIrqchip(String),
    /// A split irqchip asked for with KVM's PIT.
    #[error("a split irqchip cannot have a PIT: KVM's PIT needs its in-kernel PIC and IOAPIC (use irqchip kernel, or no PIT)")]
    SplitIrqchipWithPit,
    /// Memory below the minimum.
    #[error("memory of {requested} MiB is too small: a guest needs at least {min} MiB")]
    MemoryTooSmall {
        /// Requested MiB.
        requested: u64,
        /// Minimum MiB.
        min: u64,
    },
    /// Memory above what the host has.
    #[error("memory of {requested} MiB is more than this host's {host} MiB of RAM")]
    MemoryTooLarge {
        /// Requested MiB.
        requested: u64,
        /// Host MiB.
        host: u64,
    },
    /// A size string that does not parse.
    #[error("invalid memory size '{0}': use a number with an optional unit, e.g. 256M or 1G")]
    BadMemorySize(String),
    /// A file that does not exist or is not a regular file.
    #[error("{what} '{path}' {problem}")]
    BadFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A console spec that does not parse.
    #[error("invalid console '{0}': use stdio, off or file:PATH")]
    BadConsole(String),
    /// A CPU template name that does not parse.
    #[error("invalid CPU template '{0}': use auto, none or pvm")]
    BadCpuTemplate(String),
    /// A drive id that is empty or has characters other than ASCII letters, digits, `_`, `-`.
    #[error("invalid drive id '{0}': use letters, digits, '_' or '-'")]
    BadDriveId(String),
    /// Two drives with one id.
    #[error("drive id '{0}' is used twice")]
    DuplicateDriveId(String),
    /// More than one drive marked as the root device.
    #[error("drives '{0}' and '{1}' are both the root device; only one can be")]
    MultipleRootDevices(String, String),
    /// Too many drives.
    #[error("at most {max} drives are supported ({count} given)")]
    TooManyDrives {
        /// Drives given.
        count: usize,
        /// Limit.
        max: usize,
    },
    /// A network interface id that is empty or has characters other than ASCII letters,
    /// digits, `_`, `-`, `.`.
    #[error("invalid network interface id '{0}': use letters, digits, '_', '-' or '.'")]
    BadNetId(String),
    /// Two network interfaces with one id.
    #[error("network interface id '{0}' is used twice")]
    DuplicateNetId(String),
    /// A guest MAC that does not parse.
    #[error("invalid MAC address '{0}': use six hex bytes like 02:00:00:00:00:01")]
    BadMac(String),
    /// A tap name that is empty, longer than 15 bytes or has `/`, whitespace or NUL.
    #[error("invalid tap name '{0}': 1 to 15 characters, no '/', ':' or whitespace")]
    BadTapName(String),
    /// Two network interfaces on one tap.
    #[error("tap '{0}' is used by two network interfaces")]
    DuplicateTap(String),
    /// A number of queue pairs a network interface cannot have.
    #[error("network interface '{iface}': {pairs} queue pairs; use 1 to {max} (at most one per vCPU, {MAX_NET_QUEUE_PAIRS} at most)")]
    BadNetQueuePairs {
        /// The interface.
        iface: String,
        /// Pairs asked for.
        pairs: u16,
        /// The most this VM's interfaces may have.
        max: u16,
    },
    /// Too many network interfaces.
    #[error("at most {max} network interfaces are supported ({count} given)")]
    TooManyNetInterfaces {
        /// Interfaces given.
        count: usize,
        /// Limit.
        max: usize,
    },
    /// A virtio-fs share that cannot be used.
    #[error("virtio-fs share '{id}': {problem}")]
    BadFs {
        /// The share's id.
        id: String,
        /// What is wrong.
        problem: String,
    },
    /// A vsock CID below 3 (0-2 are reserved).
    #[error("invalid vsock guest_cid {0}: it must be at least 3")]
    BadVsockCid(u32),
    /// A vsock socket path that cannot be created.
    #[error("vsock uds_path '{path}' {problem}")]
    BadVsockPath {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A command line longer than the kernel accepts.
    #[error("the kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong {
        /// Length.
        len: usize,
        /// Limit.
        max: usize,
    },
}

/// Kernel, initrd and command line (Firecracker's `boot-source`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Path of an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    pub kernel_image_path: PathBuf,
    /// Kernel command line; [`DEFAULT_BOOT_ARGS`] when absent.
    #[serde(default)]
    pub boot_args: Option<String>,
    /// Optional initrd / initramfs.
    #[serde(default)]
    pub initrd_path: Option<PathBuf>,
}

/// CPUID template applied to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuTemplate {
    /// `pvm` on a KVM PVM host, `none` elsewhere.
    #[default]
    Auto,
    /// The host's supported CPUID, normalised, with nothing hidden.
    None,
    /// Hides the features KVM PVM's instruction emulator cannot run in guest kernel mode.
    Pvm,
}

impl std::str::FromStr for CpuTemplate {
    type Err = ResourcesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(CpuTemplate::Auto),
            "none" => Ok(CpuTemplate::None),
            "pvm" => Ok(CpuTemplate::Pvm),
            other => Err(ResourcesError::BadCpuTemplate(other.to_string())),
        }
    }
}

/// vCPUs, memory and CPU model (Firecracker's `machine-config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// CPUID template.
    #[serde(default)]
    pub cpu_template: CpuTemplate,
    /// Track the pages the guest and zvm write, so snapshots after the first can be diffs.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Also name each virtio-mmio device on the kernel command line
    /// (`virtio_mmio.device=`), for kernels without ACPI. Kernels with ACPI find the
    /// devices in the DSDT either way; off spares them the duplicate (each then logs a
    /// "failed to claim resource" line for it).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub cmdline_devices: bool,
    /// Give the guest KVM's in-kernel i8254 PIT. Linux guests with kvmclock
    /// (`CONFIG_KVM_GUEST`) time themselves with kvmclock and the local APIC timer and
    /// never need it; kernels without (a `tinyconfig` one) calibrate the TSC and the
    /// APIC timer against it and hang without. Without a PIT a VM is created and torn
    /// down faster (benches/README.md, "Footprint of a lean VMM").
    #[serde(default, skip_serializing_if = "is_false")]
    pub pit: bool,
    /// Which interrupt controllers KVM emulates: `split` (the local APICs in KVM, the
    /// IOAPIC in zvm, no PIC; a VM is torn down ~15 ms faster) or `kernel` (KVM's PIC,
    /// IOAPIC and local APICs). Absent: split, or kernel with a PIT (KVM's PIT needs its
    /// PIC and IOAPIC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irqchip: Option<IrqchipKind>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_true(value: &bool) -> bool {
    *value
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 256,
            cpu_template: CpuTemplate::Auto,
            track_dirty_pages: false,
            cmdline_devices: true,
            pit: false,
            irqchip: None,
        }
    }
}

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleConfig {
    /// stdin/stdout of the zvm process.
    #[default]
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Nothing.
    Off,
}

impl std::str::FromStr for ConsoleConfig {
    type Err = ResourcesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(ConsoleConfig::Stdio),
            "off" => Ok(ConsoleConfig::Off),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(ConsoleConfig::File(PathBuf::from(path))),
                _ => Err(ResourcesError::BadConsole(s.to_string())),
            },
        }
    }
}

/// Everything needed to build one micro-VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VmResources {
    /// Kernel, initrd, command line.
    pub boot_source: BootSource,
    /// vCPUs and memory.
    #[serde(default)]
    pub machine_config: MachineConfig,
    /// Serial console destination.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Prefix console lines with the time since process start.
    #[serde(default)]
    pub console_timestamps: bool,
    /// Install seccomp filters on every thread (only ever off for debugging).
    #[serde(default = "default_true")]
    pub seccomp: bool,
    /// Block devices; the root device (if any) is attached first.
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    /// A virtio-rng device feeding the guest's entropy pool.
    #[serde(default)]
    pub entropy: Option<EntropyConfig>,
    /// Network interfaces, attached in order after the drives.
    #[serde(default, rename = "network-interfaces")]
    pub net: Vec<NetConfig>,
    /// A virtio-vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Host directories shared over virtio-fs (attached after every other device).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsConfig>,
}

fn default_true() -> bool {
    true
}

impl VmResources {
    /// Resources for `kernel` with every other setting at its default.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmResources {
            boot_source: BootSource {
                kernel_image_path: kernel.into(),
                boot_args: None,
                initrd_path: None,
            },
            machine_config: MachineConfig::default(),
            console: ConsoleConfig::default(),
            console_timestamps: false,
            seccomp: true,
            drives: Vec::new(),
            entropy: None,
            net: Vec::new(),
            vsock: None,
            fs: Vec::new(),
        }
    }

    /// The command line the guest gets before zvm appends device parameters.
    pub fn boot_args(&self) -> &str {
        self.boot_source
            .boot_args
            .as_deref()
            .unwrap_or(DEFAULT_BOOT_ARGS)
    }

    /// Checks every field against its limits and the files against the file system.
    pub fn validate(&self) -> Result<(), ResourcesError> {
        let mc = &self.machine_config;
        if mc.vcpu_count == 0 {
            return Err(ResourcesError::NoVcpus);
        }
        if mc.vcpu_count > MAX_VCPUS {
            return Err(ResourcesError::TooManyVcpus {
                requested: mc.vcpu_count.into(),
                max: MAX_VCPUS,
            });
        }
        check_pit_and_irqchip(mc.pit, mc.irqchip)?;
        if mc.mem_size_mib < MIN_MEM_MIB {
            return Err(ResourcesError::MemoryTooSmall {
                requested: mc.mem_size_mib,
                min: MIN_MEM_MIB,
            });
        }
        if let Some(host) = crate::host::host_memory_mib() {
            if mc.mem_size_mib > host {
                return Err(ResourcesError::MemoryTooLarge {
                    requested: mc.mem_size_mib,
                    host,
                });
            }
        }
        check_file("kernel", &self.boot_source.kernel_image_path)?;
        if let Some(initrd) = &self.boot_source.initrd_path {
            check_file("initrd", initrd)?;
        }
        self.validate_drives()?;
        self.validate_net()?;
        self.validate_vsock()?;
        self.validate_fs()?;
        let len = self.boot_args().len();
        // Room is kept for the parameters zvm appends for its devices.
        let devices = self.drives.len()
            + usize::from(self.entropy.is_some())
            + self.net.len()
            + usize::from(self.vsock.is_some())
            + self.fs.len();
        let max = crate::layout::CMDLINE_MAX_SIZE - 512 - devices * CMDLINE_BYTES_PER_DEVICE;
        if len > max {
            return Err(ResourcesError::CmdlineTooLong { len, max });
        }
        Ok(())
    }
}

fn check_file(what: &'static str, path: &Path) -> Result<(), ResourcesError> {
    let bad = |problem: String| ResourcesError::BadFile {
        what,
        path: path.to_path_buf(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(bad("is not a regular file".into()));
    }
    if meta.len() == 0 {
        return Err(bad("is empty".into()));
    }
    Ok(())
}

/// Parses a memory size into MiB: `256`, `256M`, `256MiB`, `1G`, `1GiB`, `524288K`.
/// A bare number is MiB.
pub fn parse_mem_size_mib(text: &str) -> Result<u64, ResourcesError> {
    let bad = || ResourcesError::BadMemorySize(text.to_string());
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let kib_per_unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1024,
        "g" | "gb" | "gib" => 1024 * 1024,
        "k" | "kb" | "kib" => 1,
        _ => return Err(bad()),
    };
    let kib = n.checked_mul(kib_per_unit).ok_or_else(bad)?;
    if kib % 1024 != 0 {
        return Err(bad());
    }
    Ok(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn with_kernel() -> (tempfile::NamedTempFile, VmResources) {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        std::io::Write::write_all(&mut f, b"not empty").expect("write");
        let r = VmResources::new(f.path());
        (f, r)
    }

    #[test]
    fn memory_sizes_parse_with_units() {
        assert_eq!(parse_mem_size_mib("256"), Ok(256));
        assert_eq!(parse_mem_size_mib("256M"), Ok(256));
        assert_eq!(parse_mem_size_mib("256MiB"), Ok(256));
        assert_eq!(parse_mem_size_mib("2G"), Ok(2048));
        assert_eq!(parse_mem_size_mib("1gib"), Ok(1024));
        assert_eq!(parse_mem_size_mib("65536K"), Ok(64));
        for bad in [
            "",
            "M",
            "12X",
            "-5",
            "1.5G",
            "1000K",
            "99999999999999999999G",
        ] {
            assert!(parse_mem_size_mib(bad).is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn zero_or_too_many_cpus_are_refused() {
        let (_f, mut r) = with_kernel();
        r.machine_config.vcpu_count = 0;
        assert_eq!(r.validate(), Err(ResourcesError::NoVcpus));
        r.machine_config.vcpu_count = MAX_VCPUS + 1;
        assert!(matches!(
            r.validate(),
            Err(ResourcesError::TooManyVcpus { .. })
        ));
        r.machine_config.vcpu_count = 2;
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn memory_bounds_are_enforced() {
        let (_f, mut r) = with_kernel();
        r.machine_config.mem_size_mib = MIN_MEM_MIB - 1;
        assert!(matches!(
            r.validate(),
            Err(ResourcesError::MemoryTooSmall { .. })
        ));
        r.machine_config.mem_size_mib = u64::MAX >> 20;
        assert!(matches!(
            r.validate(),
            Err(ResourcesError::MemoryTooLarge { .. })
        ));
    }

    #[test]
    fn missing_empty_or_directory_kernel_is_refused() {
        let r = VmResources::new("/nonexistent/vmlinux");
        let err = r.validate().expect_err("missing");
        assert!(
            err.to_string()
                .starts_with("kernel '/nonexistent/vmlinux' cannot be read"),
            "{err}"
        );
        let dir = tempfile::tempdir().expect("dir");
        let err = VmResources::new(dir.path()).validate().expect_err("dir");
        assert!(err.to_string().ends_with("is not a regular file"), "{err}");
        let empty = tempfile::NamedTempFile::new().expect("tmp");
        let err = VmResources::new(empty.path())
            .validate()
            .expect_err("empty");
        assert!(err.to_string().ends_with("is empty"), "{err}");
    }

    #[test]
    fn console_and_template_specs_parse() {
        assert_eq!("stdio".parse(), Ok(ConsoleConfig::Stdio));
        assert_eq!("off".parse(), Ok(ConsoleConfig::Off));
        assert_eq!(
            "file:/tmp/c.log".parse(),
            Ok(ConsoleConfig::File("/tmp/c.log".into()))
        );
        assert!("file:".parse::<ConsoleConfig>().is_err());
        assert!("tty".parse::<ConsoleConfig>().is_err());
        assert_eq!("pvm".parse(), Ok(CpuTemplate::Pvm));
        assert!("t2".parse::<CpuTemplate>().is_err());
    }

    #[test]
    fn json_with_unknown_fields_is_rejected() {
        let ok = r#"{"boot-source":{"kernel_image_path":"/k"},"machine-config":{"vcpu_count":2,"mem_size_mib":128}}"#;
        let r: VmResources = serde_json::from_str(ok).expect("valid");
        assert_eq!(r.machine_config.vcpu_count, 2);
        assert!(r.seccomp);
        let bad = r#"{"boot-source":{"kernel_image_path":"/k","bogus":1}}"#;
        assert!(serde_json::from_str::<VmResources>(bad).is_err());
    }

    #[test]
    fn overlong_cmdline_is_refused() {
        let (_f, mut r) = with_kernel();
        r.boot_source.boot_args = Some("x".repeat(4000));
        assert!(matches!(
            r.validate(),
            Err(ResourcesError::CmdlineTooLong { .. })
        ));
    }
}
