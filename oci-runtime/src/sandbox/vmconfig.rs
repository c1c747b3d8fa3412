//! Pure translation of a container spec into the VM that runs it.
//!
//! Size: `linux.resources.cpu` quota/period gives the vCPU count (rounded up; else the
//! cpuset's CPU count; else [`DEFAULT_VCPUS`]), `linux.resources.memory.limit` gives the
//! memory (the limit plus [`GUEST_OVERHEAD_MIB`] for the guest kernel and agent, at least
//! [`MIN_MEMORY_MIB`]; else [`DEFAULT_MEMORY_MIB`]). The annotations [`ANNOTATION_VCPUS`] and
//! [`ANNOTATION_MEMORY_MIB`] override both exactly.

use oci_spec::runtime::Spec;
use std::path::Path;
use vmm::resources::{
    BootSource, ConsoleConfig, CpuTemplate, EntropyConfig, MachineConfig, VsockConfig,
    DEFAULT_BOOT_ARGS, MAX_VCPUS,
};
use vmm::VmResources;

/// Annotation giving the VM's vCPU count (1 to 32).
pub const ANNOTATION_VCPUS: &str = "zvm.vcpus";
/// Annotation giving the VM's memory in MiB (at least [`MIN_MEMORY_MIB`]).
pub const ANNOTATION_MEMORY_MIB: &str = "zvm.memory_mib";
/// vCPUs when nothing says otherwise.
pub const DEFAULT_VCPUS: u8 = 1;
/// Memory when the spec sets no limit.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// The smallest VM a container gets.
pub const MIN_MEMORY_MIB: u64 = 128;
/// Added to a container's memory limit for the guest kernel, page cache and agent.
pub const GUEST_OVERHEAD_MIB: u64 = 64;
/// The kernel's default CFS period (µs), used when a quota comes without one.
const DEFAULT_CPU_PERIOD_US: u64 = 100_000;
/// The guest's vsock CID (each VM has its own device, so one value fits all).
pub(crate) const GUEST_CID: u32 = 3;
/// Drive id of the rootfs image.
pub(crate) const ROOTFS_DRIVE_ID: &str = "rootfs";
/// Drive id of the agent's boot disk.
pub(crate) const AGENT_DRIVE_ID: &str = "agent";

/// Errors turning a spec into a VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// A `zvm.*` annotation with a value that cannot be used.
    #[error("annotation {key}={value:?} is not valid: {reason}")]
    BadAnnotation {
        /// The annotation.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// `linux.resources.cpu.cpus` that is not a CPU list.
    #[error("linux.resources.cpu.cpus {0:?} is not a CPU list like \"0-3,5\"")]
    BadCpuset(String),
}

/// vCPUs and memory of a container's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// vCPU count.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// The VM size `spec` asks for (see the module documentation).
pub fn vm_size(spec: &Spec) -> Result<VmSize, TranslateError> {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    let mut vcpus = DEFAULT_VCPUS;
    if let Some(cpu) = cpu {
        let period = cpu
            .period()
            .filter(|p| *p > 0)
            .unwrap_or(DEFAULT_CPU_PERIOD_US);
        match cpu.quota() {
            Some(quota) if quota > 0 => vcpus = clamp_vcpus((quota as u64).div_ceil(period)),
            _ => {
                if let Some(list) = cpu.cpus().as_deref().filter(|s| !s.trim().is_empty()) {
                    vcpus = clamp_vcpus(
                        cpuset_count(list)
                            .ok_or_else(|| TranslateError::BadCpuset(list.to_string()))?,
                    );
                }
            }
        }
    }
    let limit = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0);
    let mut memory_mib = match limit {
        Some(bytes) => ((bytes as u64).div_ceil(1 << 20) + GUEST_OVERHEAD_MIB).max(MIN_MEMORY_MIB),
        None => DEFAULT_MEMORY_MIB,
    };
    if let Some(annotations) = spec.annotations() {
        if let Some(value) = annotations.get(ANNOTATION_VCPUS) {
            let bad = |reason: String| TranslateError::BadAnnotation {
                key: ANNOTATION_VCPUS,
                value: value.clone(),
                reason,
            };
            let n: u64 = value
                .trim()
                .parse()
                .map_err(|_| bad("not a whole number".into()))?;
            if n == 0 || n > u64::from(MAX_VCPUS) {
                return Err(bad(format!("a VM has 1 to {MAX_VCPUS} vCPUs")));
            }
            vcpus = n as u8;
        }
        if let Some(value) = annotations.get(ANNOTATION_MEMORY_MIB) {
            let bad = |reason: String| TranslateError::BadAnnotation {
                key: ANNOTATION_MEMORY_MIB,
                value: value.clone(),
                reason,
            };
            let n: u64 = value
                .trim()
                .parse()
                .map_err(|_| bad("not a whole number of MiB".into()))?;
            if n < MIN_MEMORY_MIB {
                return Err(bad(format!(
                    "a container VM needs at least {MIN_MEMORY_MIB} MiB"
                )));
            }
            memory_mib = n;
        }
    }
    Ok(VmSize { vcpus, memory_mib })
}

fn clamp_vcpus(n: u64) -> u8 {
    if n > u64::from(MAX_VCPUS) {
        tracing::warn!("the container asks for {n} CPUs; its VM gets {MAX_VCPUS}");
    }
    n.clamp(1, u64::from(MAX_VCPUS)) as u8
}

/// Number of CPUs in a cpuset list (`0-3,5`); None when it does not parse.
fn cpuset_count(list: &str) -> Option<u64> {
    let mut count = 0u64;
    for part in list.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a {
                    return None;
                }
                count = count.checked_add(b - a + 1)?;
            }
            None => {
                part.parse::<u64>().ok()?;
                count += 1;
            }
        }
    }
    Some(count)
}

/// Paths of the files a container VM is made of.
#[derive(Debug, Clone, Copy)]
pub struct VmFiles<'a> {
    /// Guest kernel.
    pub kernel: &'a Path,
    /// The agent's boot disk ([`super::make_agent_image`]).
    pub agent_image: &'a Path,
    /// The rootfs ext4 image.
    pub rootfs_image: &'a Path,
    /// Where the serial console goes.
    pub console_log: &'a Path,
    /// The vsock Unix socket.
    pub vsock: &'a Path,
}

/// The VM description for a container: `size`; the agent's disk as the read-only root
/// device (`/dev/vda`, booted with `rootfstype=ext4 init=/init`); the rootfs image as the
/// second virtio-blk disk ([`ROOTFS_DEVICE`], read-only when `readonly`; the agent mounts
/// it); an entropy device; vsock with [`GUEST_CID`]; the console to a file.
pub fn vm_resources(size: VmSize, files: VmFiles<'_>, readonly: bool) -> VmResources {
    VmResources {
        boot_source: BootSource {
            kernel_image_path: files.kernel.to_path_buf(),
            boot_args: Some(container_boot_args()),
            initrd_path: None,
        },
        machine_config: MachineConfig {
            vcpu_count: size.vcpus,
            mem_size_mib: size.memory_mib,
            cpu_template: CpuTemplate::Auto,
            track_dirty_pages: false,
            // The project's kernel finds the devices through ACPI.
            cmdline_devices: false,
            // and times itself with kvmclock and the local APIC timer.
            pit: false,
            // A split irqchip: no PIT, so the VM ends without tearing KVM's PIC down.
            irqchip: None,
        },
        console: ConsoleConfig::File(files.console_log.to_path_buf()),
        console_timestamps: false,
        seccomp: true,
        drives: super::agent_drives(files.agent_image, files.rootfs_image, readonly).to_vec(),
        entropy: Some(EntropyConfig {}),
        net: Vec::new(),
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: files.vsock.to_path_buf(),
        }),
        fs: Vec::new(),
    }
}

/// The kernel command line of a container VM. With [`AGENT_LOG_ENV`] set (to a plain
/// tracing filter such as `debug`), the guest agent logs at that level on the VM's console
/// (the kernel hands `NAME=value` words to init as its environment); the line is part of
/// the template key, so such VMs get their own template.
pub(crate) fn container_boot_args() -> String {
    let base = format!("{DEFAULT_BOOT_ARGS} {AGENT_BOOT_ARGS}");
    match std::env::var(AGENT_LOG_ENV)
        .ok()
        .and_then(|v| agent_log_word(&v))
    {
        Some(word) => format!("{base} {word}"),
        None => base,
    }
}

/// Host environment variable that sets the guest agent's log filter (`ZVM_AGENT_LOG`, the
/// variable the agent reads).
pub const AGENT_LOG_ENV: &str = "ZVM_AGENT_LOG";

/// The kernel command-line word `ZVM_AGENT_LOG=<filter>`, when `filter` is short and holds
/// nothing that could split or quote the line (else none: the agent logs at info).
fn agent_log_word(filter: &str) -> Option<String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_,=:.".contains(c);
    (!filter.is_empty() && filter.len() <= 64 && filter.chars().all(plain))
        .then(|| format!("{AGENT_LOG_ENV}={filter}"))
}

/// The guest device the rootfs image appears as (the agent's disk is `/dev/vda`).
pub const ROOTFS_DEVICE: &str = "/dev/vdb";
/// Kernel arguments that boot the agent from its disk (vmm adds `root=/dev/vda ro`).
pub const AGENT_BOOT_ARGS: &str = "rootfstype=ext4 init=/init";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_log_filter_reaches_the_command_line_only_when_plain() {
        assert_eq!(
            agent_log_word("debug").as_deref(),
            Some("ZVM_AGENT_LOG=debug")
        );
        assert_eq!(
            agent_log_word("info,oci_agent=debug").as_deref(),
            Some("ZVM_AGENT_LOG=info,oci_agent=debug")
        );
        for hostile in ["", "debug init=/bin/sh", "a\"b", "x\ny", &"d".repeat(65)] {
            assert_eq!(agent_log_word(hostile), None, "{hostile:?}");
        }
    }
    use oci_spec::runtime::{
        LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, SpecBuilder,
    };
    use std::collections::HashMap;

    fn spec(
        cpu: Option<(Option<i64>, Option<u64>, Option<&str>)>,
        mem: Option<i64>,
        annotations: &[(&str, &str)],
    ) -> Spec {
        let mut res = LinuxResourcesBuilder::default();
        if let Some((quota, period, cpus)) = cpu {
            let mut c = LinuxCpuBuilder::default();
            if let Some(q) = quota {
                c = c.quota(q);
            }
            if let Some(p) = period {
                c = c.period(p);
            }
            if let Some(s) = cpus {
                c = c.cpus(s);
            }
            res = res.cpu(c.build().unwrap());
        }
        if let Some(m) = mem {
            res = res.memory(LinuxMemoryBuilder::default().limit(m).build().unwrap());
        }
        let linux = LinuxBuilder::default()
            .resources(res.build().unwrap())
            .build()
            .unwrap();
        let ann: HashMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SpecBuilder::default()
            .linux(linux)
            .annotations(ann)
            .build()
            .unwrap()
    }

    fn size(vcpus: u8, memory_mib: u64) -> VmSize {
        VmSize { vcpus, memory_mib }
    }

    #[test]
    fn defaults_without_resources() {
        assert_eq!(vm_size(&Spec::default()).unwrap(), size(1, 256));
        assert_eq!(vm_size(&spec(None, None, &[])).unwrap(), size(1, 256));
        let bare = SpecBuilder::default().build().unwrap();
        assert_eq!(vm_size(&bare).unwrap(), size(1, 256));
    }

    #[test]
    fn cpu_quota_over_period_rounds_up() {
        assert_eq!(
            vm_size(&spec(Some((Some(200_000), Some(100_000), None)), None, &[]))
                .unwrap()
                .vcpus,
            2
        );
        assert_eq!(
            vm_size(&spec(Some((Some(150_000), Some(100_000), None)), None, &[]))
                .unwrap()
                .vcpus,
            2
        );
        assert_eq!(
            vm_size(&spec(Some((Some(50_000), Some(100_000), None)), None, &[]))
                .unwrap()
                .vcpus,
            1
        );
        assert_eq!(
            vm_size(&spec(Some((Some(300_000), None, None)), None, &[]))
                .unwrap()
                .vcpus,
            3,
            "default period"
        );
        assert_eq!(
            vm_size(&spec(Some((Some(-1), Some(100_000), None)), None, &[]))
                .unwrap()
                .vcpus,
            1,
            "unlimited"
        );
        assert_eq!(
            vm_size(&spec(
                Some((Some(100_000), Some(0), Some("0-7"))),
                None,
                &[]
            ))
            .unwrap()
            .vcpus,
            1,
            "zero period"
        );
        assert_eq!(
            vm_size(&spec(Some((Some(i64::MAX), Some(1), None)), None, &[]))
                .unwrap()
                .vcpus,
            MAX_VCPUS,
            "clamped"
        );
    }

    #[test]
    fn cpuset_counts_when_there_is_no_quota() {
        assert_eq!(
            vm_size(&spec(Some((None, None, Some("0-3"))), None, &[]))
                .unwrap()
                .vcpus,
            4
        );
        assert_eq!(
            vm_size(&spec(Some((None, None, Some("0,2, 4-5"))), None, &[]))
                .unwrap()
                .vcpus,
            4
        );
        assert_eq!(
            vm_size(&spec(Some((None, None, Some(""))), None, &[]))
                .unwrap()
                .vcpus,
            1
        );
        for bad in ["a", "3-1", "1-", "1,,2"] {
            let err = vm_size(&spec(Some((None, None, Some(bad))), None, &[])).unwrap_err();
            assert_eq!(err, TranslateError::BadCpuset(bad.into()));
        }
    }

    #[test]
    fn memory_limit_plus_overhead_with_a_floor() {
        assert_eq!(
            vm_size(&spec(None, Some(512 << 20), &[]))
                .unwrap()
                .memory_mib,
            512 + GUEST_OVERHEAD_MIB
        );
        assert_eq!(
            vm_size(&spec(None, Some((256 << 20) + 1), &[]))
                .unwrap()
                .memory_mib,
            257 + GUEST_OVERHEAD_MIB
        );
        assert_eq!(
            vm_size(&spec(None, Some(16 << 20), &[]))
                .unwrap()
                .memory_mib,
            MIN_MEMORY_MIB
        );
        assert_eq!(
            vm_size(&spec(None, Some(-1), &[])).unwrap().memory_mib,
            DEFAULT_MEMORY_MIB
        );
        assert_eq!(
            vm_size(&spec(None, Some(0), &[])).unwrap().memory_mib,
            DEFAULT_MEMORY_MIB
        );
    }

    #[test]
    fn annotations_override_exactly() {
        let s = spec(
            Some((Some(400_000), Some(100_000), None)),
            Some(1 << 30),
            &[("zvm.vcpus", "2"), ("zvm.memory_mib", " 384 ")],
        );
        assert_eq!(vm_size(&s).unwrap(), size(2, 384));
    }

    #[test]
    fn bad_annotations_are_clear_errors() {
        for (key, value, reason) in [
            ("zvm.vcpus", "two", "not a whole number"),
            ("zvm.vcpus", "0", "1 to 32 vCPUs"),
            ("zvm.vcpus", "33", "1 to 32 vCPUs"),
            ("zvm.vcpus", "-1", "not a whole number"),
            ("zvm.memory_mib", "1G", "not a whole number of MiB"),
            ("zvm.memory_mib", "64", "at least 128 MiB"),
        ] {
            let err = vm_size(&spec(None, None, &[(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("annotation {key}={value:?} is not valid"))
                    && err.contains(reason),
                "{err}"
            );
        }
    }

    #[test]
    fn resources_describe_the_container_vm() {
        let p = Path::new;
        let files = VmFiles {
            kernel: p("/k"),
            agent_image: p("/d/a.ext4"),
            rootfs_image: p("/d/r.ext4"),
            console_log: p("/d/c.log"),
            vsock: p("/d/v.sock"),
        };
        let r = vm_resources(size(2, 300), files, true);
        assert_eq!(r.machine_config.vcpu_count, 2);
        assert_eq!(r.machine_config.mem_size_mib, 300);
        assert_eq!(r.boot_source.initrd_path, None);
        assert_eq!(
            r.boot_args(),
            "console=ttyS0 reboot=k panic=1 nomodule rootfstype=ext4 init=/init"
        );
        assert_eq!(r.console, ConsoleConfig::File("/d/c.log".into()));
        assert_eq!(r.drives.len(), 2);
        let order: Vec<&str> = r
            .drives_in_attach_order()
            .iter()
            .map(|d| d.drive_id.as_str())
            .collect();
        assert_eq!(
            order,
            ["agent", "rootfs"],
            "the agent's disk is /dev/vda, the rootfs /dev/vdb"
        );
        assert!(r.drives[0].is_root_device && r.drives[0].is_read_only);
        assert_eq!(r.drives[0].path_on_host, p("/d/a.ext4"));
        assert!(r.drives[1].is_read_only && !r.drives[1].is_root_device);
        assert_eq!(r.drives[1].path_on_host, p("/d/r.ext4"));
        assert!(r.entropy.is_some());
        assert_eq!(
            r.vsock,
            Some(VsockConfig {
                guest_cid: 3,
                uds_path: "/d/v.sock".into()
            })
        );
        assert!(!vm_resources(size(1, 128), files, false).drives[1].is_read_only);
    }
}
