//! Capability names -> bit masks.

use oci_spec::runtime::{Capabilities, LinuxCapabilities};

use super::PlanError;

/// Capability names in kernel order (bit number = index), without the `CAP_` prefix.
const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Highest capability number this agent knows.
pub const LAST_CAP: u32 = CAP_NAMES.len() as u32 - 1;

/// The five capability sets of a process as bit masks (bit n = capability n).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSets {
    /// Bounding set: capabilities not in it are dropped with `PR_CAPBSET_DROP`.
    pub bounding: u64,
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
}

/// Number of a capability name (`CAP_CHOWN` or `CHOWN`, any case).
pub fn cap_number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAP_NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

fn mask(set: &Option<Capabilities>) -> Result<u64, PlanError> {
    let mut bits = 0u64;
    for cap in set.iter().flatten() {
        let name = cap.to_string();
        let n = cap_number(&name).ok_or(PlanError::UnknownCapability(name))?;
        bits |= 1 << n;
    }
    Ok(bits)
}

/// Turns the spec's capability lists into masks. Absent lists are empty sets.
pub fn plan_caps(caps: &LinuxCapabilities) -> Result<CapSets, PlanError> {
    Ok(CapSets {
        bounding: mask(caps.bounding())?,
        effective: mask(caps.effective())?,
        permitted: mask(caps.permitted())?,
        inheritable: mask(caps.inheritable())?,
        ambient: mask(caps.ambient())?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_kernel_numbers() {
        assert_eq!(cap_number("CAP_CHOWN"), Some(0));
        assert_eq!(cap_number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(cap_number("cap_net_bind_service"), Some(10));
        assert_eq!(cap_number("CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(cap_number("CAP_FLY"), None);
    }

    #[test]
    fn spec_sets_become_masks() {
        // The default spec: AUDIT_WRITE (29), KILL (5), NET_BIND_SERVICE (10) in every set.
        let sets = plan_caps(&LinuxCapabilities::default()).unwrap();
        let want = (1 << 29) | (1 << 5) | (1 << 10);
        assert_eq!(
            sets,
            CapSets {
                bounding: want,
                effective: want,
                permitted: want,
                inheritable: want,
                ambient: want
            }
        );
        let json = r#"{"bounding": ["CAP_SYS_ADMIN", "CAP_CHOWN"], "effective": []}"#;
        let caps: LinuxCapabilities = serde_json::from_str(json).unwrap();
        let sets = plan_caps(&caps).unwrap();
        assert_eq!(sets.bounding, (1 << 21) | 1);
        assert_eq!(sets.effective, 0);
        assert_eq!(sets.ambient, 0);
    }
}
