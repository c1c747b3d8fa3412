//! The KVM state of a vCPU and of a VM, as plain structs a snapshot saves and restores.
//!
//! A vCPU's state is everything KVM keeps for it: general and special registers, FPU and
//! XSAVE area, XCRs, debug registers, local APIC, multiprocessor state, pending events,
//! the MSRs KVM reports as saveable, and the CPUID table it runs with. The VM's is its
//! in-kernel irqchip (both PICs and the IOAPIC), PIT and kvmclock. Each is taken with
//! the VM paused and every vCPU outside KVM_RUN with no exit left half-done.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// A piece of KVM state that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A KVM ioctl failed.
    #[error("cannot {what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// KVM took fewer entries than given.
    #[error("KVM accepted {set} of {wanted} {what}")]
    Partial {
        /// Which list.
        what: &'static str,
        /// Accepted.
        set: usize,
        /// Given.
        wanted: usize,
    },
    /// A list is larger than KVM's wrapper types hold.
    #[error("too many {0} entries")]
    TooMany(&'static str),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Kvm { what, source }
}

/// One vCPU's architectural state.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID table the vCPU runs with (restored as is).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Multiprocessor state (running, halted, waiting for INIT/SIPI).
    pub mp_state: kvm_mp_state,
    /// General purpose registers.
    pub regs: kvm_regs,
    /// Segments, control registers, descriptor tables.
    pub sregs: kvm_sregs,
    /// Legacy FPU/SSE state (also inside `xsave` when the host has XSAVE).
    pub fpu: kvm_fpu_state,
    /// The XSAVE area, when KVM has KVM_CAP_XSAVE.
    pub xsave: Option<kvm_xsave>,
    /// Extended control registers, when KVM has KVM_CAP_XCRS.
    pub xcrs: Option<kvm_xcrs>,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The in-kernel local APIC.
    pub lapic: kvm_lapic_state,
    /// Every saveable MSR KVM could read, in index order.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts and NMIs.
    pub vcpu_events: kvm_vcpu_events,
}

/// `kvm_fpu` has no serde support in kvm-bindings; its fields, as they are.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct kvm_fpu_state {
    /// x87 registers, 16 bytes each.
    pub fpr: [[u8; 16]; 8],
    /// Control word.
    pub fcw: u16,
    /// Status word.
    pub fsw: u16,
    /// Abridged tag word.
    pub ftwx: u8,
    /// Last opcode.
    pub last_opcode: u16,
    /// Last instruction pointer.
    pub last_ip: u64,
    /// Last data pointer.
    pub last_dp: u64,
    /// XMM registers.
    pub xmm: [[u8; 16]; 16],
    /// MXCSR.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for kvm_fpu_state {
    fn from(f: &kvm_fpu) -> Self {
        kvm_fpu_state {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&kvm_fpu_state> for kvm_fpu {
    fn from(f: &kvm_fpu_state) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// The indices of the MSRs KVM can save and restore (its MSR index list), sorted so that
/// IA32_TSC comes before the TSC deadline.
pub fn saveable_msr_indices(hypervisor: &Kvm) -> Result<Vec<u32>, StateError> {
    let list = hypervisor
        .get_msr_index_list()
        .map_err(kvm("read KVM's MSR index list"))?;
    let mut indices = list.as_slice().to_vec();
    indices.sort_unstable();
    indices.dedup();
    Ok(indices)
}

/// Reads the MSRs at `indices`, leaving out those KVM refuses to read on this vCPU.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut saved = Vec::with_capacity(indices.len());
    let mut rest: &[u32] = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| StateError::TooMany("MSR"))?;
        let read = fd.get_msrs(&mut msrs).map_err(kvm("read MSRs"))?;
        saved.extend_from_slice(&msrs.as_slice()[..read.min(entries.len())]);
        // KVM stops at the first MSR it cannot read: skip that one and go on.
        if read < rest.len() {
            tracing::debug!("MSR {:#x} is not readable here; not saved", rest[read]);
        }
        rest = rest.get(read + 1..).unwrap_or(&[]);
    }
    Ok(saved)
}

impl VcpuState {
    /// Saves the state of a vCPU that is outside KVM_RUN with no exit half-done.
    pub fn save(
        fd: &VcpuFd,
        msr_indices: &[u32],
        cpuid: &[kvm_cpuid_entry2],
        xsave: bool,
        xcrs: bool,
    ) -> Result<Self, StateError> {
        let mp_state = fd.get_mp_state().map_err(kvm("read the MP state"))?;
        let regs = fd.get_regs().map_err(kvm("read the registers"))?;
        let sregs = fd.get_sregs().map_err(kvm("read the special registers"))?;
        let fpu = kvm_fpu_state::from(&fd.get_fpu().map_err(kvm("read the FPU state"))?);
        let xsave = if xsave {
            Some(fd.get_xsave().map_err(kvm("read the XSAVE area"))?)
        } else {
            None
        };
        let xcrs = if xcrs {
            Some(fd.get_xcrs().map_err(kvm("read the XCRs"))?)
        } else {
            None
        };
        let debug_regs = fd
            .get_debug_regs()
            .map_err(kvm("read the debug registers"))?;
        let lapic = fd.get_lapic().map_err(kvm("read the local APIC"))?;
        let msrs = read_msrs(fd, msr_indices)?;
        let vcpu_events = fd
            .get_vcpu_events()
            .map_err(kvm("read the pending events"))?;
        Ok(VcpuState {
            cpuid: cpuid.to_vec(),
            mp_state,
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            vcpu_events,
        })
    }

    /// Restores the state onto a new vCPU that has not run, in the order KVM needs:
    /// CPUID first (it shapes what the rest may hold), pending events last.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), StateError> {
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| StateError::TooMany("CPUID"))?;
        fd.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))?;
        fd.set_mp_state(self.mp_state)
            .map_err(kvm("set the MP state"))?;
        fd.set_regs(&self.regs).map_err(kvm("set the registers"))?;
        fd.set_sregs(&self.sregs)
            .map_err(kvm("set the special registers"))?;
        fd.set_fpu(&kvm_fpu::from(&self.fpu))
            .map_err(kvm("set the FPU state"))?;
        if let Some(xsave) = &self.xsave {
            // SAFETY: a fixed-size `kvm_xsave`, as KVM_SET_XSAVE takes without XSAVE2.
            unsafe { fd.set_xsave(xsave) }.map_err(kvm("set the XSAVE area"))?;
        }
        if let Some(xcrs) = &self.xcrs {
            fd.set_xcrs(xcrs).map_err(kvm("set the XCRs"))?;
        }
        fd.set_debug_regs(&self.debug_regs)
            .map_err(kvm("set the debug registers"))?;
        fd.set_lapic(&self.lapic)
            .map_err(kvm("set the local APIC"))?;
        let msrs = Msrs::from_entries(&self.msrs).map_err(|_| StateError::TooMany("MSR"))?;
        let set = fd.set_msrs(&msrs).map_err(kvm("set the MSRs"))?;
        if set != self.msrs.len() {
            let index = self.msrs.get(set).map_or(0, |m| m.index);
            tracing::warn!("KVM refused MSR {index:#x} at restore");
            return Err(StateError::Partial {
                what: "MSRs",
                set,
                wanted: self.msrs.len(),
            });
        }
        fd.set_vcpu_events(&self.vcpu_events)
            .map_err(kvm("set the pending events"))?;
        Ok(())
    }
}

/// The VM's in-kernel devices and clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    /// PIC master, PIC slave and IOAPIC, in that order (empty without an irqchip).
    pub irqchips: Vec<kvm_irqchip>,
    /// The PIT (absent without an irqchip, or when the VM was built without one).
    pub pit: Option<kvm_pit_state2>,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

const IRQCHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

impl VmState {
    /// Saves a paused VM's state; `irqchip` says whether it has the in-kernel irqchip (and
    /// maybe a PIT).
    pub fn save(vm: &VmFd, irqchip: bool) -> Result<Self, StateError> {
        let mut irqchips = Vec::new();
        let mut pit = None;
        if irqchip {
            for chip_id in IRQCHIPS {
                let mut chip = kvm_irqchip {
                    chip_id,
                    ..Default::default()
                };
                vm.get_irqchip(&mut chip).map_err(kvm("read the irqchip"))?;
                irqchips.push(chip);
            }
            // A VM may have the irqchip without a PIT: KVM answers ENXIO then.
            pit = match vm.get_pit2() {
                Ok(state) => Some(state),
                Err(e) if e.errno() == libc::ENXIO => None,
                Err(e) => return Err(kvm("read the PIT")(e)),
            };
        }
        let clock = vm.get_clock().map_err(kvm("read kvmclock"))?;
        Ok(VmState {
            irqchips,
            pit,
            clock,
        })
    }

    /// Restores the state onto a VM whose irqchip and PIT were just created.
    pub fn restore(&self, vm: &VmFd) -> Result<(), StateError> {
        for chip in &self.irqchips {
            vm.set_irqchip(chip).map_err(kvm("set the irqchip"))?;
        }
        if let Some(pit) = &self.pit {
            vm.set_pit2(pit).map_err(kvm("set the PIT"))?;
        }
        // The guest's clock continues from the value it had when paused; KVM takes no
        // flags here but KVM_CLOCK_REALTIME, which would make it jump to the wall clock.
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(kvm("set kvmclock"))?;
        Ok(())
    }
}

/// CPUID feature registers a snapshot's CPU must find on the restoring host: (leaf,
/// subleaf, which of eax/ebx/ecx/edx hold feature flags).
const FEATURE_LEAVES: [(u32, u32, [bool; 4]); 4] = [
    (1, 0, [false, false, true, true]),
    (7, 0, [false, true, true, true]),
    (0xd, 1, [true, false, false, false]),
    (0x8000_0001, 0, [false, false, true, true]),
];

/// Feature bits no host reports as supported but zvm sets itself (hypervisor, APIC/x2APIC
/// topology are per VM, TSC-deadline is emulated by KVM and reported through a capability).
fn vmm_owned_bits(function: u32, reg: usize) -> u32 {
    match (function, reg) {
        // ECX: bit 31 hypervisor, bit 24 TSC deadline, bit 21 x2APIC.
        (1, 2) => (1 << 31) | (1 << 24) | (1 << 21),
        // EDX: bit 9 APIC, bit 28 HTT.
        (1, 3) => (1 << 9) | (1 << 28),
        _ => 0,
    }
}

/// Checks that `host` (KVM's supported CPUID here) has every feature bit the snapshot's
/// vCPUs were given; the error names the first missing ones.
pub fn check_cpuid_compatible(
    saved: &[kvm_cpuid_entry2],
    host: &[kvm_cpuid_entry2],
) -> Result<(), String> {
    let find = |entries: &[kvm_cpuid_entry2], function: u32, index: u32| {
        entries
            .iter()
            .find(|e| e.function == function && (e.index == index || e.flags & 1 == 0))
            .copied()
    };
    let mut missing = Vec::new();
    for (function, index, flag_regs) in FEATURE_LEAVES {
        let Some(s) = find(saved, function, index) else {
            continue;
        };
        let h = find(host, function, index).unwrap_or_default();
        let regs = [
            (s.eax, h.eax),
            (s.ebx, h.ebx),
            (s.ecx, h.ecx),
            (s.edx, h.edx),
        ];
        for (reg, (want, have)) in regs.iter().enumerate() {
            if !flag_regs[reg] {
                continue;
            }
            let lacking = want & !have & !vmm_owned_bits(function, reg);
            if lacking != 0 {
                let name = ["eax", "ebx", "ecx", "edx"][reg];
                missing.push(format!(
                    "CPUID.{function:#x}.{index}:{name} bits {lacking:#x}"
                ));
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the snapshot's CPU has features this host lacks: {}",
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn cpuid_features_must_be_on_the_host() {
        let host = [leaf(1, 0b1011, 0xff), leaf(0x8000_0001, 1, 0)];
        assert!(check_cpuid_compatible(&[leaf(1, 0b0011, 0x0f)], &host).is_ok());
        let hypervisor = leaf(1, 0b0011 | (1 << 31), 0x0f);
        assert!(
            check_cpuid_compatible(&[hypervisor], &host).is_ok(),
            "bits zvm sets itself"
        );
        let err =
            check_cpuid_compatible(&[leaf(1, 0b0111, 0)], &host).expect_err("bit 2 is missing");
        assert!(err.contains("CPUID.0x1.0:ecx bits 0x4"), "{err}");
        let err = check_cpuid_compatible(&[leaf(0x8000_0001, 0, 1 << 29)], &host)
            .expect_err("long mode missing");
        assert!(err.contains("0x80000001"), "{err}");
        assert!(
            check_cpuid_compatible(&[leaf(0x4000_0000, 7, 7)], &host).is_ok(),
            "other leaves are not features"
        );
    }

    #[test]
    fn fpu_state_round_trips() {
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            last_ip: 7,
            xmm: [[3; 16]; 16],
            ..Default::default()
        };
        let back = kvm_fpu::from(&kvm_fpu_state::from(&fpu));
        assert_eq!(
            (back.fcw, back.mxcsr, back.last_ip, back.xmm),
            (0x37f, 0x1f80, 7, [[3; 16]; 16])
        );
    }
}
