//! ACPI tables for guests that have ACPI: which CPUs and interrupt controllers exist
//! (MADT), how the machine powers off and resets (a hardware-reduced FADT with sleep
//! control, sleep status and reset registers), and where each device is (a DSDT naming
//! COM1, the i8042, every virtio-mmio slot, and a power button behind a Generic Event
//! Device). Guests without ACPI ignore them and keep using the MP table and the command
//! line's `virtio_mmio.device=` parameters.
//!
//! The tables are built with rust-vmm's `acpi_tables` crate and written from
//! [`layout::ACPI_START`] (the RSDP first, where Linux also scans for it) up to the end of
//! the first MiB, which the memory map leaves out of RAM.

use crate::layout;
use crate::memory::GuestMemoryMmap;
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

/// Errors writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit below 1 MiB.
    #[error("the ACPI tables need {needed} bytes, only {room} fit below 1 MiB")]
    TooLarge {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        room: u64,
    },
    /// Guest memory write failed.
    #[error("cannot write the ACPI tables: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

const OEM_ID: [u8; 6] = *b"ZVM   ";
const OEM_TABLE_ID: [u8; 8] = *b"ZVMMICRO";
const OEM_REVISION: u32 = 1;

/// Offsets of the power-management registers from [`layout::ACPI_PM_PORT`].
pub mod pm {
    /// Sleep control register (write `SLP_TYP << 2 | SLP_EN`).
    pub const SLEEP_CONTROL: u64 = 0;
    /// Sleep status register.
    pub const SLEEP_STATUS: u64 = 1;
    /// Reset register.
    pub const RESET: u64 = 2;
    /// Number of ports.
    pub const LEN: u64 = 3;
    /// The value that resets the machine when written to [`RESET`].
    pub const RESET_VALUE: u8 = 0x0f;
    /// The sleep type the DSDT's `_S5` package names (soft off).
    pub const S5_SLEEP_TYPE: u8 = 5;
    /// SLP_EN: the sleep control register's "enter the sleep state" bit.
    pub const SLEEP_ENABLE: u8 = 1 << 5;
}

/// FADT IA-PC boot architecture flags: an 8042 exists, no VGA, no MSI.
const BOOT_ARCH_8042: u16 = 1 << 1;
const BOOT_ARCH_NO_VGA: u16 = 1 << 2;
const BOOT_ARCH_NO_MSI: u16 = 1 << 3;

/// The notification value that means "power button pressed" (ACPI 5.6.6).
const NOTIFY_POWER_BUTTON: u8 = 0x80;

/// A virtio-mmio device the DSDT describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Base of its register page.
    pub addr: u64,
    /// Length of its register page.
    pub len: u32,
    /// Its IRQ.
    pub irq: u32,
}

/// What the tables describe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcpiMachine {
    /// Number of vCPUs (APIC IDs 0..n).
    pub vcpus: u8,
    /// COM1 is attached.
    pub serial: bool,
    /// The i8042 is attached.
    pub i8042: bool,
    /// The virtio-mmio devices, in slot order.
    pub virtio: Vec<MmioDevice>,
}

fn gas_port(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// An exclusive, edge-triggered, active-high interrupt consumed by the device (how zvm's
/// irqfds deliver).
fn edge_irq(irq: u32) -> aml::Interrupt {
    aml::Interrupt::new(true, true, false, false, irq)
}

/// A `ResourceTemplate` of `items`, encoded.
fn resources(items: &[&dyn Aml]) -> RawAml {
    RawAml(table_bytes(&aml::ResourceTemplate::new(items.to_vec())))
}

/// The DSDT's AML: the devices under `\_SB` and the `_S5` sleep state.
fn dsdt_body(machine: &AcpiMachine) -> Vec<u8> {
    let mut devices: Vec<RawAml> = Vec::new();
    let mut push = |device: &dyn Aml| devices.push(RawAml(table_bytes(device)));
    if machine.serial {
        let port = layout::COM1_PORT;
        let crs = resources(&[&aml::IO::new(port, port, 1, 8), &edge_irq(layout::COM1_IRQ)]);
        push(&aml::Device::new(
            "COM1".into(),
            vec![
                &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
                &aml::Name::new("_UID".into(), &aml::ZERO),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        ));
    }
    if machine.i8042 {
        let port = layout::I8042_PORT;
        let crs = resources(&[
            &aml::IO::new(port, port, 1, 1),
            &aml::IO::new(port + 4, port + 4, 1, 1),
            &edge_irq(crate::devices::i8042::KBD_IRQ),
        ]);
        push(&aml::Device::new(
            "PS2K".into(),
            vec![
                &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        ));
    }
    for (index, dev) in machine.virtio.iter().enumerate() {
        let crs = resources(&[
            &aml::Memory32Fixed::new(true, dev.addr as u32, dev.len),
            &edge_irq(dev.irq),
        ]);
        let uid = index as u32;
        push(&aml::Device::new(
            format!("V{index:03X}").as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        ));
    }
    push(&aml::Device::new(
        "PWRB".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
        ],
    ));
    let ged_crs = resources(&[&edge_irq(layout::GED_IRQ)]);
    let button = aml::Path::new("\\_SB_.PWRB");
    let notify = aml::Notify::new(&button, &NOTIFY_POWER_BUTTON);
    push(&aml::Device::new(
        "GED_".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &ged_crs),
            &aml::Method::new("_EVT".into(), 1, true, vec![&notify]),
        ],
    ));
    let children: Vec<&dyn Aml> = devices.iter().map(|d| d as &dyn Aml).collect();
    let mut body = Vec::new();
    aml::Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut body);
    let s5 = pm::S5_SLEEP_TYPE;
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&s5, &s5, &aml::ZERO, &aml::ZERO]),
    )
    .to_aml_bytes(&mut body);
    body
}

/// AML already encoded (a device, kept while the scope around it is built).
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

fn table_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Every table, each with the guest address it goes to; the RSDP first.
pub fn build_tables(machine: &AcpiMachine) -> Vec<(u64, Vec<u8>)> {
    let align = |addr: u64| (addr + 15) & !15;
    let rsdp_at = layout::ACPI_START;
    let xsdt_at = align(rsdp_at + Rsdp::len() as u64);
    // The XSDT lists three tables: FADT, MADT (and the FADT points at the DSDT).
    let xsdt_len = 36 + 2 * 8;
    let fadt_at = align(xsdt_at + xsdt_len);
    let madt_at = align(fadt_at + acpi_tables::fadt::FADT::len() as u64);

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(layout::APIC_START as u32),
    );
    for cpu in 0..machine.vcpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    // The IOAPIC's id, as in the MP table: one past the CPUs' APIC ids.
    let ioapic_id = machine.vcpus.saturating_add(1);
    madt.add_structure(IoApic::new(ioapic_id, layout::IOAPIC_START as u32, 0));
    let madt = table_bytes(&madt);
    let dsdt_at = align(madt_at + madt.len() as u64);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_body(machine));
    let dsdt = dsdt.as_slice().to_vec();

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_at)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = (BOOT_ARCH_8042 | BOOT_ARCH_NO_VGA | BOOT_ARCH_NO_MSI).into();
    fadt.sleep_control_reg = gas_port(layout::ACPI_PM_PORT + pm::SLEEP_CONTROL as u16);
    fadt.sleep_status_reg = gas_port(layout::ACPI_PM_PORT + pm::SLEEP_STATUS as u16);
    fadt.reset_reg = gas_port(layout::ACPI_PM_PORT + pm::RESET as u16);
    fadt.reset_value = pm::RESET_VALUE;
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"ZVM\0\0\0\0\0").into();
    let fadt = table_bytes(&fadt.finalize());

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_at);
    xsdt.add_entry(madt_at);
    let xsdt = table_bytes(&xsdt);
    debug_assert_eq!(xsdt.len() as u64, xsdt_len);

    vec![
        (rsdp_at, table_bytes(&Rsdp::new(OEM_ID, xsdt_at))),
        (xsdt_at, xsdt),
        (fadt_at, fadt),
        (madt_at, madt),
        (dsdt_at, dsdt),
    ]
}

/// Writes the tables for `machine` into guest memory; returns the RSDP's address.
pub fn write_acpi_tables(mem: &GuestMemoryMmap, machine: &AcpiMachine) -> Result<u64, AcpiError> {
    let tables = build_tables(machine);
    let end = tables
        .iter()
        .map(|(at, bytes)| at + bytes.len() as u64)
        .max()
        .unwrap_or(layout::ACPI_START);
    if end > layout::HIMEM_START {
        return Err(AcpiError::TooLarge {
            needed: end - layout::ACPI_START,
            room: layout::HIMEM_START - layout::ACPI_START,
        });
    }
    for (at, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*at))?;
    }
    Ok(layout::ACPI_START)
}

#[cfg(test)]
mod tests;
