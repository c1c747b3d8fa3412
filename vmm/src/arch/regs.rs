//! Initial vCPU state for the two boot protocols, boot MSRs and the local APIC.

use super::gdt::{
    boot_segment, BOOT_GDT, CODE32_SELECTOR, CODE64_SELECTOR, DATA_SELECTOR, TSS_SELECTOR,
};
use crate::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START};
use crate::memory::GuestMemoryMmap;
use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

/// Errors setting up vCPU registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM register ioctl failed.
    #[error("cannot set {what}: {source}")]
    Kvm {
        /// Which state.
        what: &'static str,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// Writing boot tables into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    Memory {
        /// Which table.
        what: &'static str,
        /// Cause.
        source: vm_memory::GuestMemoryError,
    },
    /// KVM accepted fewer MSRs than given.
    #[error("KVM set only {set} of {wanted} boot MSRs")]
    Msrs {
        /// Accepted.
        set: usize,
        /// Given.
        wanted: usize,
    },
}

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = start info.
    Pvh {
        /// Entry address from the PVH ELF note.
        entry: u64,
        /// Guest address of `hvm_start_info`.
        start_info: u64,
    },
    /// Linux 64-bit boot protocol: long mode, identity paging, `%rsi` = zero page.
    Linux64 {
        /// 64-bit entry address.
        entry: u64,
        /// Guest address of `boot_params`.
        zero_page: u64,
    },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// General purpose registers at the kernel entry.
pub fn boot_regs(entry: BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        BootEntry::Pvh { entry, start_info } => {
            regs.rip = entry;
            regs.rbx = start_info;
        }
        BootEntry::Linux64 { entry, zero_page } => {
            regs.rip = entry;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = zero_page;
        }
    }
    regs
}

/// Special registers at the kernel entry, starting from the vCPU's current `sregs`.
pub fn boot_sregs(mut sregs: kvm_sregs, entry: BootEntry) -> kvm_sregs {
    let code = match entry {
        BootEntry::Pvh { .. } => CODE32_SELECTOR,
        BootEntry::Linux64 { .. } => CODE64_SELECTOR,
    };
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 0;
    sregs.cs = boot_segment(code);
    let data = boot_segment(DATA_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = boot_segment(TSS_SELECTOR);
    match entry {
        BootEntry::Pvh { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootEntry::Linux64 { .. } => {
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    sregs
}

/// Writes the boot GDT and the identity page tables: the first 4 GiB (RAM below the
/// gap and the MMIO gap itself) in 2 MiB pages, four page directories.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let err = |what| move |source| RegsError::Memory { what, source };
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(err("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(err("IDT"))?;
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(err("PML4"))?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PDE_START + gib * 0x1000;
        mem.write_obj(pd | 0x03, GuestAddress(PDPTE_START + gib * 8))
            .map_err(err("PDPT"))?;
        for i in 0..512u64 {
            let addr = (gib << 30) | (i << 21);
            mem.write_obj(addr | 0x83, GuestAddress(pd + i * 8))
                .map_err(err("PD"))?;
        }
    }
    Ok(())
}

/// How much the boot page tables identity-map.
pub const IDENTITY_MAPPED_GIB: u64 = 4;

/// Puts `vcpu` at the kernel entry: registers, special registers, FPU.
pub fn set_boot_state(vcpu: &VcpuFd, entry: BootEntry) -> Result<(), RegsError> {
    let kvm = |what| move |source| RegsError::Kvm { what, source };
    let sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    vcpu.set_sregs(&boot_sregs(sregs, entry))
        .map_err(kvm("special registers"))?;
    vcpu.set_regs(&boot_regs(entry)).map_err(kvm("registers"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU"))?;
    Ok(())
}

/// MSR indices set at boot.
mod msr {
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
}

/// The MSR values every vCPU starts with.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(msr::IA32_SYSENTER_CS, 0),
        entry(msr::IA32_SYSENTER_ESP, 0),
        entry(msr::IA32_SYSENTER_EIP, 0),
        entry(msr::STAR, 0),
        entry(msr::CSTAR, 0),
        entry(msr::KERNEL_GS_BASE, 0),
        entry(msr::SYSCALL_MASK, 0),
        entry(msr::LSTAR, 0),
        entry(msr::IA32_TSC, 0),
        entry(msr::IA32_MISC_ENABLE, 1),          // fast strings
        entry(msr::MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs on, default write-back
    ]
}

/// Sets the boot MSRs on `vcpu`.
pub fn set_boot_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs {
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(|source| RegsError::Kvm {
        what: "MSRs",
        source,
    })?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| state.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *b as _;
    }
}

/// LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a BIOS leaves them.
pub fn configure_lint(state: &mut kvm_lapic_state) {
    let with_mode = |reg: u32, mode: u32| (reg & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(state, APIC_LVT0);
    set_lapic_reg(state, APIC_LVT0, with_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(state, APIC_LVT1);
    set_lapic_reg(state, APIC_LVT1, with_mode(lvt1, APIC_MODE_NMI));
}

/// Applies [`configure_lint`] to `vcpu`'s in-kernel local APIC.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut state = vcpu.get_lapic().map_err(|source| RegsError::Kvm {
        what: "LAPIC",
        source,
    })?;
    configure_lint(&mut state);
    vcpu.set_lapic(&state).map_err(|source| RegsError::Kvm {
        what: "LAPIC",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_entry_is_32_bit_protected_mode_without_paging() {
        let entry = BootEntry::Pvh {
            entry: 0x100_0000,
            start_info: 0x6000,
        };
        let regs = boot_regs(entry);
        assert_eq!((regs.rip, regs.rbx, regs.rflags), (0x100_0000, 0x6000, 2));
        let sregs = boot_sregs(kvm_sregs::default(), entry);
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!(sregs.cr0 & X86_CR0_PE, 1);
        assert_eq!(sregs.efer, 0);
        assert_eq!(
            (sregs.cs.selector, sregs.cs.db, sregs.cs.l),
            (CODE32_SELECTOR, 1, 0)
        );
    }

    #[test]
    fn linux64_entry_is_long_mode_with_identity_paging() {
        let entry = BootEntry::Linux64 {
            entry: 0x100_0200,
            zero_page: 0x7000,
        };
        let regs = boot_regs(entry);
        assert_eq!(
            (regs.rip, regs.rsi, regs.rsp),
            (0x100_0200, 0x7000, BOOT_STACK_POINTER)
        );
        let sregs = boot_sregs(kvm_sregs::default(), entry);
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.selector, sregs.cs.l), (CODE64_SELECTOR, 1));
        assert_eq!(sregs.ds.selector, DATA_SELECTOR);
    }

    #[test]
    fn identity_map_covers_ram_and_the_mmio_gap() {
        let mem = crate::memory::create_guest_memory(64 << 20).expect("mem");
        write_boot_tables(&mem).expect("tables");
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).expect("read");
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let last: u64 = mem
            .read_obj(GuestAddress(PDE_START + 511 * 8))
            .expect("read");
        assert_eq!(last, (511 << 21) | 0x83);
        // The MMIO gap (boot timer, APIC) is mapped too: 0xd000_0000 is in the fourth GiB.
        let gap: u64 = mem
            .read_obj(GuestAddress(PDE_START + 3 * 0x1000 + 128 * 8))
            .expect("read");
        assert_eq!(gap, 0xd000_0000 | 0x83);
        let gdt: u64 = mem.read_obj(GuestAddress(GDT_START + 16)).expect("read");
        assert_eq!(gdt, BOOT_GDT[2]);
    }

    #[test]
    fn lint_modes_are_extint_and_nmi() {
        let mut state = kvm_lapic_state::default();
        set_lapic_reg(&mut state, APIC_LVT0, 0x0001_0700);
        configure_lint(&mut state);
        assert_eq!(lapic_reg(&state, APIC_LVT0), 0x0001_0700);
        assert_eq!((lapic_reg(&state, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }
}
