//! Guest CPUID: KVM's supported set, normalised per vCPU, with an optional template.
//!
//! Normalisation gives each vCPU its APIC ID and a topology of `n` single-thread cores,
//! sets the hypervisor bit and keeps KVM's hypervisor leaf (0x4000_0000, "KVMKVMKVM") so
//! the guest finds kvm-clock. Templates hide features, as Firecracker's CPU templates do.

use crate::resources::CpuTemplate;
use kvm_bindings::kvm_cpuid_entry2;

/// A CPUID feature bit: (leaf, register, bit).
#[derive(Debug, Clone, Copy)]
struct Feature {
    leaf: u32,
    reg: Reg,
    bit: u32,
}

#[derive(Debug, Clone, Copy)]
enum Reg {
    Ebx,
    Ecx,
}

const fn f(leaf: u32, reg: Reg, bit: u32) -> Feature {
    Feature { leaf, reg, bit }
}

/// Features KVM PVM's instruction emulator cannot execute in guest kernel mode, or that
/// need XSAVE state: hidden by the `pvm` template.
const PVM_HIDDEN: &[Feature] = &[
    f(1, Reg::Ecx, 13),           // CX16
    f(1, Reg::Ecx, 17),           // PCID
    f(1, Reg::Ecx, 23),           // POPCNT
    f(1, Reg::Ecx, 26),           // XSAVE
    f(1, Reg::Ecx, 27),           // OSXSAVE
    f(1, Reg::Ecx, 28),           // AVX (needs XSAVE)
    f(1, Reg::Ecx, 12),           // FMA (needs XSAVE)
    f(1, Reg::Ecx, 29),           // F16C (needs XSAVE)
    f(1, Reg::Ecx, 30),           // RDRAND
    f(7, Reg::Ebx, 0),            // FSGSBASE
    f(7, Reg::Ebx, 5),            // AVX2
    f(7, Reg::Ebx, 7),            // SMEP
    f(7, Reg::Ebx, 10),           // INVPCID
    f(7, Reg::Ebx, 16),           // AVX512F
    f(7, Reg::Ebx, 17),           // AVX512DQ
    f(7, Reg::Ebx, 18),           // RDSEED
    f(7, Reg::Ebx, 20),           // SMAP
    f(7, Reg::Ebx, 21),           // AVX512IFMA
    f(7, Reg::Ebx, 28),           // AVX512CD
    f(7, Reg::Ebx, 30),           // AVX512BW
    f(7, Reg::Ebx, 31),           // AVX512VL
    f(7, Reg::Ecx, 1),            // AVX512VBMI
    f(7, Reg::Ecx, 6),            // AVX512_VBMI2
    f(7, Reg::Ecx, 11),           // AVX512_VNNI
    f(7, Reg::Ecx, 12),           // AVX512_BITALG
    f(7, Reg::Ecx, 14),           // AVX512_VPOPCNTDQ
    f(7, Reg::Ecx, 22),           // RDPID
    f(0x8000_0001, Reg::Ecx, 11), // XOP
    f(0x8000_0001, Reg::Ecx, 16), // FMA4
];

/// Guest kernel parameters the `pvm` template adds to the command line.
///
/// On a KVM PVM host the guest's CPUID instruction is not intercepted (it returns the
/// host's values), so the CPUID edits above cannot hide anything there; the kernel is
/// told to clear the same features itself. On VMX/SVM hosts the CPUID edits suffice and
/// the `pvm` template is not chosen by default.
///
/// The same native CPUID makes guest userspace believe AVX state is saved (OSXSAVE), while
/// the guest kernel, without XSAVE, only preserves SSE state across context switches: the
/// last parameter reaches init's environment and keeps glibc's string functions off AVX.
/// Emulated guest kernel code is slow enough on a loaded host for RCU's stall detector to
/// fire (and its NMI backtraces to stall the guest further), so stall warnings are off.
pub const PVM_KERNEL_ARGS: &str = "clearcpuid=xsave,cx16,popcnt,smap,smep,fsgsbase,rdrand,rdseed,invpcid,pcid,rdpid \
     noxsave nosmap nosmep nopcid noinvpcid nofsgsbase rcupdate.rcu_cpu_stall_suppress=1 \
     GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-FMA,-AVX_Fast_Unaligned_Load";

/// Features hidden from every guest: nested virtualization.
const ALWAYS_HIDDEN: &[Feature] = &[
    f(1, Reg::Ecx, 5),           // VMX
    f(0x8000_0001, Reg::Ecx, 2), // SVM
];

const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const HYPERVISOR_LEAF: u32 = 0x4000_0000;

fn clear(entries: &mut [kvm_cpuid_entry2], features: &[Feature]) {
    for feat in features {
        for e in entries
            .iter_mut()
            .filter(|e| e.function == feat.leaf && (feat.leaf != 7 || e.index == 0))
        {
            let reg = match feat.reg {
                Reg::Ebx => &mut e.ebx,
                Reg::Ecx => &mut e.ecx,
            };
            *reg &= !(1 << feat.bit);
        }
    }
}

/// The number of bits needed to number `n` items (ceil(log2(n))).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Rewrites `entries` (from KVM_GET_SUPPORTED_CPUID) for vCPU `cpu_index` of `cpu_count`
/// with `template` resolved (not `Auto`).
pub fn normalize(
    entries: &mut Vec<kvm_cpuid_entry2>,
    cpu_index: u8,
    cpu_count: u8,
    template: CpuTemplate,
) {
    let apic_id = u32::from(cpu_index);
    let count = u32::from(cpu_count);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            4 => {
                // Cores per package - 1 in EAX[31:26]; one thread shares each cache level
                // below L3.
                let cores = (count - 1) & 0x3f;
                e.eax = (e.eax & 0x03ff_ffff) | (cores << 26);
            }
            0xb | 0x1f => {
                // Level 0: SMT (one thread per core); level 1: cores; beyond: invalid.
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    1 => {
                        e.eax = bits_for(count);
                        e.ebx = count;
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: number of cores - 1 and the APIC ID size.
                e.ecx = (e.ecx & !0xf0ff) | (count - 1) | (bits_for(count) << 12);
            }
            0x8000_001e => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff; // one thread per core, core id = APIC ID
                e.ecx = 0;
            }
            _ => {}
        }
    }
    clear(entries, ALWAYS_HIDDEN);
    if template == CpuTemplate::Pvm {
        clear(entries, PVM_HIDDEN);
        // No XSAVE: the XSAVE state leaf goes too.
        entries.retain(|e| e.function != 0xd);
    }
    if !entries.iter().any(|e| e.function == HYPERVISOR_LEAF) {
        // KVM normally reports its own leaf; if not, say at least which hypervisor this is.
        let sig = b"ZVMZVMZVM\0\0\0";
        let word = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
        entries.push(kvm_cpuid_entry2 {
            function: HYPERVISOR_LEAF,
            eax: HYPERVISOR_LEAF,
            ebx: word(0),
            ecx: word(4),
            edx: word(8),
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, ecx: u32, ebx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ecx,
            ebx,
            ..Default::default()
        }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("leaf")
    }

    fn sample() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(
                1,
                0,
                (1 << 26) | (1 << 23) | (1 << 13) | (1 << 5) | 1,
                0x0001_0800,
            ),
            leaf(7, 0, 1 << 22, (1 << 20) | (1 << 7) | (1 << 3)),
            leaf(0xb, 0, 0, 0),
            leaf(0xb, 1, 0, 0),
            leaf(0xd, 0, 0, 0),
            leaf(0x8000_0001, 0, 1 << 2, 0),
        ]
    }

    #[test]
    fn every_vcpu_gets_its_apic_id_and_the_hypervisor_bit() {
        let mut e = sample();
        normalize(&mut e, 3, 4, CpuTemplate::None);
        let l1 = find(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(l1.ecx & (1 << 5), 0, "VMX is hidden");
        assert_eq!(find(&e, 0x8000_0001, 0).ecx & (1 << 2), 0, "SVM is hidden");
        assert_eq!(find(&e, 0xb, 1).ebx, 4);
        assert_eq!(find(&e, 0xb, 1).eax, 2);
        assert_eq!(find(&e, 0xb, 0).edx, 3);
        assert!(e.iter().any(|x| x.function == HYPERVISOR_LEAF));
    }

    #[test]
    fn no_template_keeps_host_features() {
        let mut e = sample();
        normalize(&mut e, 0, 1, CpuTemplate::None);
        assert_ne!(find(&e, 1, 0).ecx & (1 << 26), 0, "XSAVE kept");
        assert_ne!(find(&e, 7, 0).ebx & (1 << 20), 0, "SMAP kept");
        assert!(e.iter().any(|x| x.function == 0xd));
    }

    #[test]
    fn pvm_template_hides_what_the_emulator_cannot_run() {
        let mut e = sample();
        normalize(&mut e, 0, 1, CpuTemplate::Pvm);
        let l1 = find(&e, 1, 0);
        for bit in [13, 23, 26] {
            assert_eq!(l1.ecx & (1 << bit), 0, "leaf 1 ecx bit {bit}");
        }
        assert_eq!(l1.ecx & 1, 1, "SSE3 untouched");
        let l7 = find(&e, 7, 0);
        assert_eq!(l7.ebx & ((1 << 20) | (1 << 7)), 0, "SMAP and SMEP hidden");
        assert_ne!(l7.ebx & (1 << 3), 0, "BMI1 untouched");
        assert_eq!(l7.ecx & (1 << 22), 0, "RDPID hidden");
        assert!(!e.iter().any(|x| x.function == 0xd), "XSAVE leaf removed");
    }

    #[test]
    fn topology_bits() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(32), 5);
    }
}
