//! Which interrupt controllers a VM's KVM emulates: a split irqchip (zvm's own IOAPIC)
//! or KVM's full one.

use super::{MachineConfig, ResourcesError};
use serde::{Deserialize, Serialize};

/// Which interrupt controllers KVM emulates ([`MachineConfig::irqchip`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IrqchipKind {
    /// Local APICs in KVM, the IOAPIC in zvm (`KVM_CAP_SPLIT_IRQCHIP`), no PIC.
    Split,
    /// KVM's PIC, IOAPIC and local APICs.
    Kernel,
}

impl std::str::FromStr for IrqchipKind {
    type Err = ResourcesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "split" => Ok(IrqchipKind::Split),
            "kernel" => Ok(IrqchipKind::Kernel),
            other => Err(ResourcesError::BadIrqchip(other.to_string())),
        }
    }
}

/// Refuses KVM's PIT with a split irqchip: the PIT needs KVM's in-kernel PIC and IOAPIC.
/// The one rule for every way a VM is described (resources, the API's machine
/// configuration).
pub fn check_pit_and_irqchip(
    pit: bool,
    irqchip: Option<IrqchipKind>,
) -> Result<(), ResourcesError> {
    if pit && irqchip == Some(IrqchipKind::Split) {
        return Err(ResourcesError::SplitIrqchipWithPit);
    }
    Ok(())
}

impl MachineConfig {
    /// The irqchip the VM gets: the one asked for, else split unless it has a PIT.
    pub fn irqchip_kind(&self) -> IrqchipKind {
        match self.irqchip {
            Some(kind) => kind,
            None if self.pit => IrqchipKind::Kernel,
            None => IrqchipKind::Split,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::with_kernel;

    #[test]
    fn the_irqchip_defaults_to_split_unless_there_is_a_pit() {
        let mut mc = MachineConfig::default();
        assert_eq!(mc.irqchip_kind(), IrqchipKind::Split);
        mc.pit = true;
        assert_eq!(mc.irqchip_kind(), IrqchipKind::Kernel);
        mc.irqchip = Some(IrqchipKind::Kernel);
        assert_eq!(mc.irqchip_kind(), IrqchipKind::Kernel);
        mc.pit = false;
        assert_eq!(mc.irqchip_kind(), IrqchipKind::Kernel);
        assert_eq!("split".parse::<IrqchipKind>(), Ok(IrqchipKind::Split));
        assert_eq!("kernel".parse::<IrqchipKind>(), Ok(IrqchipKind::Kernel));
        for bad in ["", "Split", "userspace", "split "] {
            assert_eq!(
                bad.parse::<IrqchipKind>(),
                Err(ResourcesError::BadIrqchip(bad.to_string()))
            );
        }
    }

    #[test]
    fn a_split_irqchip_with_a_pit_and_unknown_kinds_are_refused() {
        let (_f, mut r) = with_kernel();
        r.machine_config.pit = true;
        r.machine_config.irqchip = Some(IrqchipKind::Split);
        let err = r.validate().expect_err("split with a PIT");
        assert_eq!(err, ResourcesError::SplitIrqchipWithPit);
        assert!(err.to_string().contains("KVM's PIT needs"), "{err}");
        r.machine_config.irqchip = Some(IrqchipKind::Kernel);
        assert_eq!(r.validate(), Ok(()));
        let parse = |json: &str| serde_json::from_str::<MachineConfig>(json);
        let mc =
            parse(r#"{"vcpu_count": 1, "mem_size_mib": 64, "irqchip": "split"}"#).expect("split");
        assert_eq!(mc.irqchip, Some(IrqchipKind::Split));
        for bad in [r#""pic""#, r#""KERNEL""#, "1", "null", r#"["split"]"#] {
            let json = format!(r#"{{"vcpu_count": 1, "mem_size_mib": 64, "irqchip": {bad}}}"#);
            if bad == "null" {
                assert_eq!(parse(&json).expect("null is absent").irqchip, None);
            } else {
                assert!(parse(&json).is_err(), "{bad} refused");
            }
        }
        // Absent stays absent when written back (resources of older zvms read the same).
        let json = serde_json::to_string(&MachineConfig::default()).expect("json");
        assert!(!json.contains("irqchip"), "{json}");
    }
}
