//! x86_64 specifics: descriptor tables, boot register state, CPUID, MP table, the KVM
//! state snapshots save.

pub mod acpi;
pub mod cpuid;
pub mod gdt;
pub mod mptable;
pub mod regs;
pub mod state;
