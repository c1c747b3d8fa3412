//! The x86_64 guest physical memory layout zvm uses.
//!
//! ```text
//! 0x0000_0500  GDT                      0x0000_9000  PML4, PDPT, 4 PDs (identity map, 4 GiB)
//! 0x0000_6000  PVH start info, modlist  0x0002_0000  kernel command line
//! 0x0000_7000  zero page / PVH memmap   0x0009_fc00  MP table (EBDA), up to 1 MiB reserved
//!                                       0x000e_0000  ACPI tables (RSDP first), up to 1 MiB
//! 0x0010_0000  high memory: kernel, then RAM up to the MMIO gap, initrd at its top
//! 0xc000_0000  MMIO gap (devices, IOAPIC, LAPIC) up to 4 GiB; RAM continues above 4 GiB
//! ```

/// Global descriptor table.
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty, limit 0): the kernel loads its own.
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map entries.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux zero page (`boot_params`) for the 64-bit boot protocol.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level 4 page table.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (512 x 2 MiB pages each), up to 0xf000.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line the x86 kernel accepts (COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// The ACPI tables: the RSDP here (where guests also search for it), the others after it.
pub const ACPI_START: u64 = 0xe_0000;
/// First byte of high memory, where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// The boot-timer device's MMIO page.
pub const BOOT_TIMER_START: u64 = 0xd000_0000;
/// First address handed out to virtio-mmio devices.
pub const VIRTIO_MMIO_START: u64 = 0xd000_1000;
/// IOAPIC base address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's three-page TSS region for real-mode emulation (Intel).
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// KVM's identity-map page for real-mode emulation (Intel); just below the TSS.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
/// First IRQ handed out to devices beyond the legacy ones.
pub const IRQ_DEVICE_BASE: u32 = 5;
/// Last IRQ handed out to devices.
pub const IRQ_MAX: u32 = 22;
/// The ACPI Generic Event Device's IRQ (the power button): the IOAPIC's last pin.
pub const GED_IRQ: u32 = 23;
/// The IOAPIC's last pin.
pub const IOAPIC_LAST_PIN: u32 = 23;
/// The ACPI sleep control, sleep status and reset registers (hardware-reduced ACPI).
pub const ACPI_PM_PORT: u16 = 0x600;
/// COM1's I/O ports and IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's IRQ line.
pub const COM1_IRQ: u32 = 4;
/// i8042 controller ports (data 0x60 through command/status 0x64).
pub const I8042_PORT: u16 = 0x60;
