//! Node capacity: what the host has, what the node keeps for itself, what deployments
//! take, and whether this host can run VMs at all (/dev/kvm).

use crate::bytesize::MIB;
use serde::Serialize;
use std::path::Path;

/// Amounts of the three resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Amounts {
    /// vCPUs (host CPUs for `total`).
    pub cpu: u64,
    /// Memory in bytes.
    pub memory: u64,
    /// Disk in bytes (the state directory's filesystem).
    pub disk: u64,
}

/// Whether /dev/kvm can be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvmStatus {
    /// It opens and speaks KVM API version 12.
    pub usable: bool,
    /// Why not, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The `GET /capacity` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capacity {
    /// What the host has.
    pub total: Amounts,
    /// What the node keeps for itself (not offered to deployments).
    pub reserved: Amounts,
    /// What deployments take (memory and disk are reserved in full; vCPUs are shared).
    pub used: Amounts,
    /// /dev/kvm.
    pub kvm: KvmStatus,
}

impl Capacity {
    /// Memory still free for deployments.
    pub fn free_memory(&self) -> u64 {
        self.total
            .memory
            .saturating_sub(self.reserved.memory)
            .saturating_sub(self.used.memory)
    }
}

/// Probes /dev/kvm.
pub fn kvm_status() -> KvmStatus {
    let path = Path::new("/dev/kvm");
    if !path.exists() {
        return KvmStatus { usable: false, reason: Some("/dev/kvm does not exist: no KVM on this machine (no hardware virtualization, or no nested virtualization inside a VM)".into()) };
    }
    match vmm::host::HostReport::probe().api_version {
        Ok(12) => KvmStatus {
            usable: true,
            reason: None,
        },
        Ok(v) => KvmStatus {
            usable: false,
            reason: Some(format!("/dev/kvm speaks KVM API version {v}, not 12")),
        },
        Err(e) => KvmStatus {
            usable: false,
            reason: Some(e),
        },
    }
}

/// Host CPUs.
pub fn host_cpus() -> u64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
}

/// Host memory in bytes.
pub fn host_memory() -> u64 {
    vmm::host::host_memory_mib().unwrap_or(0) * MIB
}

/// Size of the filesystem holding `dir`, in bytes.
pub fn disk_total(dir: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs fills the zeroed struct we own from a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    (st.f_blocks as u64).saturating_mul(st.f_frsize as u64)
}

/// The default memory the node keeps for itself: a tenth of the host, at least 256 MiB.
pub fn default_reserved_memory(total: u64) -> u64 {
    (total / 10).max(256 * MIB).min(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn host_facts_are_plausible() {
        assert!(host_cpus() >= 1);
        assert!(host_memory() >= 256 * MIB);
        assert!(disk_total(Path::new("/")) > 0);
        assert_eq!(disk_total(Path::new("/no/such/dir")), 0);
        let k = kvm_status();
        assert_eq!(k.usable, k.reason.is_none(), "{k:?}");
        assert_eq!(default_reserved_memory(10 * 1024 * MIB), 1024 * MIB);
        assert_eq!(default_reserved_memory(1024 * MIB), 256 * MIB);
    }

    #[test]
    fn free_memory_never_underflows() {
        let c = Capacity {
            total: Amounts {
                cpu: 2,
                memory: 1000,
                disk: 0,
            },
            reserved: Amounts {
                memory: 600,
                ..Default::default()
            },
            used: Amounts {
                memory: 600,
                ..Default::default()
            },
            kvm: KvmStatus {
                usable: true,
                reason: None,
            },
        };
        assert_eq!(c.free_memory(), 0);
    }
}
