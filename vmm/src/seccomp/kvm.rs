//! The KVM ioctls a vCPU thread makes, by request number (`_IOC(dir, 0xAE, nr, size)`).

use super::NamedValue;
use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_irq_routing, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_regs,
    kvm_sregs, kvm_translation, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use std::mem::size_of;

const KVMIO: u64 = 0xae;
const NONE: u64 = 0;
const WRITE: u64 = 1;
const READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

/// KVM_RUN.
pub const KVM_RUN: u64 = ioc(NONE, 0x80, 0);
/// KVM_GET_REGS.
pub const KVM_GET_REGS: u64 = ioc(READ, 0x81, size_of::<kvm_regs>());
/// KVM_GET_SREGS.
pub const KVM_GET_SREGS: u64 = ioc(READ, 0x83, size_of::<kvm_sregs>());
/// KVM_TRANSLATE.
pub const KVM_TRANSLATE: u64 = ioc(READ | WRITE, 0x85, size_of::<kvm_translation>());
/// KVM_GET_MSRS.
pub const KVM_GET_MSRS: u64 = ioc(READ | WRITE, 0x88, size_of::<kvm_msrs>());
/// KVM_GET_FPU.
pub const KVM_GET_FPU: u64 = ioc(READ, 0x8c, size_of::<kvm_fpu>());
/// KVM_GET_LAPIC.
pub const KVM_GET_LAPIC: u64 = ioc(READ, 0x8e, size_of::<kvm_lapic_state>());
/// KVM_GET_MP_STATE.
pub const KVM_GET_MP_STATE: u64 = ioc(READ, 0x98, size_of::<kvm_mp_state>());
/// KVM_GET_VCPU_EVENTS.
pub const KVM_GET_VCPU_EVENTS: u64 = ioc(READ, 0x9f, size_of::<kvm_vcpu_events>());
/// KVM_GET_DEBUGREGS.
pub const KVM_GET_DEBUGREGS: u64 = ioc(READ, 0xa1, size_of::<kvm_debugregs>());
/// KVM_GET_XSAVE.
pub const KVM_GET_XSAVE: u64 = ioc(READ, 0xa4, size_of::<kvm_xsave>());
/// KVM_GET_XCRS.
pub const KVM_GET_XCRS: u64 = ioc(READ, 0xa6, size_of::<kvm_xcrs>());
/// KVM_SET_GSI_ROUTING (a VM ioctl: the split irqchip's IOAPIC installs its routes from
/// the vCPU thread whose guest write changed them).
pub const KVM_SET_GSI_ROUTING: u64 = ioc(WRITE, 0x6a, size_of::<kvm_irq_routing>());

/// What a vCPU thread asks of KVM: running, and reading its state when parked for a
/// snapshot (`VcpuState::save`) or when it failed (the register dump and the bytes at the
/// instruction pointer), and setting the VM's GSI routes when the guest reprograms the
/// userspace IOAPIC. Setting state happens before the threads start.
pub const VCPU_IOCTLS: &[NamedValue] = &[
    (KVM_RUN, "KVM_RUN"),
    (KVM_GET_REGS, "KVM_GET_REGS"),
    (KVM_GET_SREGS, "KVM_GET_SREGS"),
    (KVM_TRANSLATE, "KVM_TRANSLATE"),
    (KVM_GET_MSRS, "KVM_GET_MSRS"),
    (KVM_GET_FPU, "KVM_GET_FPU"),
    (KVM_GET_LAPIC, "KVM_GET_LAPIC"),
    (KVM_GET_MP_STATE, "KVM_GET_MP_STATE"),
    (KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS"),
    (KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS"),
    (KVM_GET_XSAVE, "KVM_GET_XSAVE"),
    (KVM_GET_XCRS, "KVM_GET_XCRS"),
    (KVM_SET_GSI_ROUTING, "KVM_SET_GSI_ROUTING"),
];
