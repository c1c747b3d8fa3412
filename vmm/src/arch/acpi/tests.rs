use super::*;

fn machine(vcpus: u8, virtio: usize) -> AcpiMachine {
    AcpiMachine {
        vcpus,
        serial: true,
        i8042: true,
        virtio: (0..virtio)
            .map(|i| MmioDevice {
                addr: layout::VIRTIO_MMIO_START + 0x1000 * i as u64,
                len: 0x1000,
                irq: layout::IRQ_DEVICE_BASE + i as u32,
            })
            .collect(),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn sums_to_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[test]
fn tables_link_up_and_checksum() {
    let tables = build_tables(&machine(2, 3));
    let find = |sig: &[u8]| {
        tables
            .iter()
            .find(|(_, b)| b.starts_with(sig))
            .unwrap_or_else(|| panic!("no {sig:?} table"))
    };
    let (rsdp_at, rsdp) = find(b"RSD PTR ");
    assert_eq!(*rsdp_at, layout::ACPI_START);
    assert!(sums_to_zero(&rsdp[..20]), "RSDP v1 checksum");
    assert!(sums_to_zero(rsdp), "RSDP extended checksum");
    let (xsdt_at, xsdt) = find(b"XSDT");
    assert_eq!(u64_at(rsdp, 24), *xsdt_at);
    for (_, table) in &tables[1..] {
        assert_eq!(u32_at(table, 4) as usize, table.len(), "length field");
        assert!(sums_to_zero(table), "checksum of {:?}", &table[..4]);
    }
    let (fadt_at, fadt) = find(b"FACP");
    let (madt_at, madt) = find(b"APIC");
    let (dsdt_at, _) = find(b"DSDT");
    assert_eq!([u64_at(xsdt, 36), u64_at(xsdt, 44)], [*fadt_at, *madt_at]);
    // FADT: X_DSDT at 140, flags at 112, sleep control/status GAS at 244/256.
    assert_eq!(u64_at(fadt, 140), *dsdt_at);
    let flags = u32_at(fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "hardware-reduced ACPI");
    assert_ne!(flags & (1 << 4), 0, "control-method power button");
    assert_eq!(fadt[244], 1, "sleep control in I/O space");
    assert_eq!(u64_at(fadt, 248), u64::from(layout::ACPI_PM_PORT));
    assert_eq!(u64_at(fadt, 260), u64::from(layout::ACPI_PM_PORT) + 1);
    assert_eq!(u64_at(fadt, 120), u64::from(layout::ACPI_PM_PORT) + 2);
    assert_eq!(fadt[128], pm::RESET_VALUE);
    // MADT: the local APIC address, two enabled CPUs, then the IOAPIC.
    assert_eq!(u32_at(madt, 36), layout::APIC_START as u32);
    let entries = &madt[44..];
    assert_eq!(entries.len(), 8 + 8 + 12);
    assert_eq!(&entries[..4], &[0, 8, 0, 0]);
    assert_eq!(&entries[8..12], &[0, 8, 1, 1]);
    assert_eq!(u32_at(entries, 4) & 1, 1, "CPU 0 enabled");
    assert_eq!(
        &entries[16..19],
        &[1, 12, 3],
        "IOAPIC id 3, as in the MP table"
    );
    assert_eq!(u32_at(entries, 20), layout::IOAPIC_START as u32);
    assert!(tables
        .iter()
        .all(|(at, b)| at + b.len() as u64 <= layout::HIMEM_START));
}

#[test]
fn the_dsdt_names_every_device_and_the_soft_off_state() {
    let tables = build_tables(&machine(1, 4));
    let dsdt = &tables
        .iter()
        .find(|(_, b)| b.starts_with(b"DSDT"))
        .expect("DSDT")
        .1;
    assert_eq!(count(dsdt, b"LNRO0005\0"), 4);
    for name in [
        &b"V000"[..],
        b"V003",
        b"COM1",
        b"PS2K",
        b"GED_",
        b"_EVT",
        b"_S5_",
    ] {
        assert_eq!(count(dsdt, name), 1, "{}", String::from_utf8_lossy(name));
    }
    // The button, and the GED's Notify(\_SB_.PWRB, 0x80).
    assert_eq!(count(dsdt, b"PWRB"), 2);
    let notify = [&[0x86u8, b'\\', 0x2e][..], b"_SB_PWRB", &[0x0a, 0x80]].concat();
    assert_eq!(count(dsdt, &notify), 1);
    assert_eq!(count(dsdt, b"ACPI0013\0"), 1);
    // Each virtio slot's Memory32Fixed descriptor: 0x86, length 9, read-write, base, size.
    for i in 0..4u32 {
        let mut desc = vec![0x86, 9, 0, 1];
        desc.extend_from_slice(&(layout::VIRTIO_MMIO_START as u32 + 0x1000 * i).to_le_bytes());
        desc.extend_from_slice(&0x1000u32.to_le_bytes());
        assert_eq!(count(dsdt, &desc), 1, "slot {i}");
    }
    // The GED's interrupt: extended IRQ descriptor, consumer, edge, active high, GSI 23.
    let mut ged_irq = vec![0x89, 6, 0, 0b0011, 1];
    ged_irq.extend_from_slice(&layout::GED_IRQ.to_le_bytes());
    assert_eq!(count(dsdt, &ged_irq), 1);
}

#[test]
fn tables_for_the_most_devices_fit_below_one_mib() {
    let slots = (layout::IRQ_MAX - layout::IRQ_DEVICE_BASE + 1) as usize;
    let mem = crate::memory::create_guest_memory(2 << 20).expect("memory");
    let rsdp = write_acpi_tables(&mem, &machine(crate::arch::mptable::MAX_CPUS, slots))
        .expect("tables fit");
    let mut sig = [0u8; 8];
    mem.read_slice(&mut sig, GuestAddress(rsdp)).expect("read");
    assert_eq!(&sig, b"RSD PTR ");
}
