use super::bus::{GsiRouter, IoapicDevice, LevelLine};
use super::*;
use crate::bus::BusDevice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fn select(ioapic: &mut Ioapic, index: u32) {
    assert!(!ioapic.write(IOREGSEL_OFFSET, &index.to_le_bytes()));
}

fn read_reg(ioapic: &mut Ioapic, index: u32) -> u32 {
    select(ioapic, index);
    let mut data = [0u8; 4];
    ioapic.read(IOWIN_OFFSET, &mut data);
    u32::from_le_bytes(data)
}

/// Writes register `index`; returns whether the routes changed.
fn write_reg(ioapic: &mut Ioapic, index: u32, value: u32) -> bool {
    select(ioapic, index);
    ioapic.write(IOWIN_OFFSET, &value.to_le_bytes())
}

/// Programs pin `pin` with a full 64-bit entry (high half first, as Linux does).
fn program(ioapic: &mut Ioapic, pin: u32, entry: u64) -> bool {
    let high = write_reg(ioapic, 0x10 + 2 * pin + 1, (entry >> 32) as u32);
    let low = write_reg(ioapic, 0x10 + 2 * pin, entry as u32);
    high || low
}

#[test]
fn id_version_and_arbitration_registers() {
    let mut ioapic = Ioapic::new(3);
    assert_eq!(read_reg(&mut ioapic, 0), 3 << 24);
    assert_eq!(
        read_reg(&mut ioapic, 1),
        0x0017_0011,
        "24 entries, version 0x11"
    );
    assert_eq!(read_reg(&mut ioapic, 2), 3 << 24);
    write_reg(&mut ioapic, 0, 0xffff_ffff);
    assert_eq!(
        read_reg(&mut ioapic, 0),
        0x0f00_0000,
        "only the id bits stick"
    );
    write_reg(&mut ioapic, 1, 0);
    assert_eq!(
        read_reg(&mut ioapic, 1),
        0x0017_0011,
        "version is read-only"
    );
    // IOREGSEL reads back what was selected.
    select(&mut ioapic, 0x21);
    let mut data = [0u8; 4];
    ioapic.read(IOREGSEL_OFFSET, &mut data);
    assert_eq!(u32::from_le_bytes(data), 0x21);
}

#[test]
fn pins_start_masked_without_routes() {
    let mut ioapic = Ioapic::new(1);
    for pin in 0..NUM_PINS as u32 {
        assert_eq!(read_reg(&mut ioapic, 0x10 + 2 * pin), 1 << 16);
        assert_eq!(read_reg(&mut ioapic, 0x11 + 2 * pin), 0);
    }
    assert_eq!(ioapic.routes().count(), 0);
}

#[test]
fn entries_decode_to_msi_messages() {
    // Physical destination 2, fixed delivery, vector 0x31, edge.
    assert_eq!(msi_of_entry(0x0200_0000_0000_0031), (0xfee0_2000, 0x31));
    // Logical destination 0x0f, lowest priority (1), vector 0x40.
    assert_eq!(msi_of_entry(0x0f00_0000_0000_0940), (0xfee0_f004, 0x140));
    // Level-triggered, NMI delivery (4): trigger and assert bits in the data.
    assert_eq!(
        msi_of_entry(0x0100_0000_0000_c422),
        (0xfee0_1000, 0x422 | 1 << 15 | 1 << 14)
    );
    // Polarity and the mask do not show in the message.
    assert_eq!(msi_of_entry(0x0000_0000_0001_2050), (0xfee0_0000, 0x50));
}

#[test]
fn unmasking_and_masking_change_the_route_table() {
    let mut ioapic = Ioapic::new(1);
    assert!(program(&mut ioapic, 4, 0x0100_0000_0000_0024));
    assert!(program(&mut ioapic, 9, 0x0000_0000_0000_0830));
    let routes: Vec<MsiRoute> = ioapic.routes().collect();
    assert_eq!(
        routes,
        vec![
            MsiRoute {
                gsi: 4,
                address: 0xfee0_1000,
                data: 0x24
            },
            MsiRoute {
                gsi: 9,
                address: 0xfee0_0004,
                data: 0x30
            },
        ]
    );
    // Writing the same entry again changes nothing.
    assert!(!program(&mut ioapic, 4, 0x0100_0000_0000_0024));
    // Masking pin 4 drops its route; changing a masked entry's vector is no route change.
    assert!(write_reg(&mut ioapic, 0x18, 0x0001_0024));
    assert!(!write_reg(&mut ioapic, 0x18, 0x0001_0025));
    assert_eq!(ioapic.routes().map(|r| r.gsi).collect::<Vec<_>>(), vec![9]);
}

#[test]
fn read_only_and_reserved_bits_are_not_written() {
    let mut ioapic = Ioapic::new(1);
    // Delivery status (12), remote IRR (14) and reserved bits 17-31 and 32-55.
    write_reg(&mut ioapic, 0x10, 0xffff_ffff);
    assert_eq!(read_reg(&mut ioapic, 0x10), 0x0001_afff);
    write_reg(&mut ioapic, 0x11, 0xffff_ffff);
    assert_eq!(read_reg(&mut ioapic, 0x11), 0xff00_0000);
}

#[test]
fn hostile_accesses_never_panic() {
    let mut ioapic = Ioapic::new(1);
    // Every register index, including ones past the last entry.
    for index in 0..=0xffu32 {
        select(&mut ioapic, index);
        let mut data = [0u8; 4];
        ioapic.read(IOWIN_OFFSET, &mut data);
        if !(0x10..0x40).contains(&index) && index != 0 {
            assert!(!ioapic.write(IOWIN_OFFSET, &[0xff; 4]), "{index:#x}");
        }
    }
    // IOREGSEL keeps 8 bits: 0x110 selects 0x10.
    select(&mut ioapic, 0x110);
    let mut data = [0u8; 4];
    ioapic.read(IOREGSEL_OFFSET, &mut data);
    assert_eq!(u32::from_le_bytes(data), 0x10);
    // Odd sizes and offsets: short, long and empty accesses, anywhere in the page.
    for offset in [0, 1, 3, 0x10, 0x13, 0x20, 0x40, 0xfff, u64::MAX] {
        for len in [0, 1, 2, 3, 4, 8] {
            let mut data = vec![0xaau8; len];
            ioapic.read(offset, &mut data);
            ioapic.write(offset, &data);
        }
    }
    assert_eq!(ioapic.entry(NUM_PINS), None);
    ioapic.mark_delivered(usize::MAX);
    assert_eq!(ioapic.end_of_interrupt(0), 0);
    assert_eq!(
        ioapic.entry(23).map(|e| e & !WRITABLE & !REMOTE_IRR),
        Some(0)
    );
}

#[test]
fn level_triggered_pins_track_remote_irr_until_eoi() {
    let mut ioapic = Ioapic::new(1);
    // Pin 5: level, vector 0x41, unmasked; pin 6: edge, same vector; pin 7: level,
    // vector 0x41, masked.
    program(&mut ioapic, 5, 0x8041);
    program(&mut ioapic, 6, 0x0041);
    program(&mut ioapic, 7, 0x1_8041);
    ioapic.mark_delivered(5);
    ioapic.mark_delivered(6);
    ioapic.mark_delivered(7);
    assert_eq!(read_reg(&mut ioapic, 0x1a) & 1 << 14, 1 << 14, "level pin");
    assert_eq!(read_reg(&mut ioapic, 0x1c) & 1 << 14, 0, "edge pin");
    assert_eq!(read_reg(&mut ioapic, 0x1e) & 1 << 14, 0, "masked pin");
    assert_eq!(ioapic.end_of_interrupt(0x42), 0, "another vector");
    assert_eq!(ioapic.end_of_interrupt(0x41), 1 << 5);
    assert_eq!(read_reg(&mut ioapic, 0x1a) & 1 << 14, 0);
    // Switching a pin to edge clears its remote IRR (what Linux does to clear it).
    ioapic.mark_delivered(5);
    write_reg(&mut ioapic, 0x1a, 0x0041);
    assert_eq!(read_reg(&mut ioapic, 0x1a) & 1 << 14, 0);
}

#[test]
fn state_round_trips_and_bad_states_are_refused() {
    let mut ioapic = Ioapic::new(2);
    program(&mut ioapic, 3, 0x0100_0000_0000_8033);
    ioapic.mark_delivered(3);
    select(&mut ioapic, 0x17);
    let state = ioapic.save_state();
    let bytes = serde_json::to_vec(&state).expect("encode");
    let decoded: IoapicState = serde_json::from_slice(&bytes).expect("decode");
    let mut restored = Ioapic::new(0);
    restored.restore_state(&decoded).expect("restore");
    assert_eq!(restored, ioapic);

    let mut bad = state.clone();
    bad.version = 2;
    assert_eq!(restored.restore_state(&bad), Err(IoapicError::Version(2)));
    let mut bad = state.clone();
    bad.redirection.push(0);
    assert_eq!(restored.restore_state(&bad), Err(IoapicError::Entries(25)));
    // Reserved bits in a hostile state are dropped.
    let mut odd = state;
    odd.redirection[0] = u64::MAX;
    odd.ioregsel = u32::MAX;
    restored.restore_state(&odd).expect("restore");
    assert_eq!(restored.entry(0), Some(0xff00_0000_0001_efff));
}

/// Records every route table installed.
#[derive(Default)]
struct RecordingRouter(Mutex<Vec<Vec<MsiRoute>>>);

impl GsiRouter for RecordingRouter {
    fn set_msi_routes(&self, routes: &mut dyn Iterator<Item = MsiRoute>) -> Result<(), String> {
        self.0
            .lock()
            .map_err(|e| e.to_string())?
            .push(routes.collect());
        Ok(())
    }
}

fn bus_write(dev: &mut IoapicDevice, offset: u64, value: u32) {
    dev.write(offset, &value.to_le_bytes());
}

#[test]
fn the_bus_device_installs_all_routes_when_they_change() {
    let router = Arc::new(RecordingRouter::default());
    let mut dev = IoapicDevice::new(1, router.clone());
    bus_write(&mut dev, IOREGSEL_OFFSET, 0x10 + 2 * 4);
    bus_write(&mut dev, IOWIN_OFFSET, 0x24);
    bus_write(&mut dev, IOREGSEL_OFFSET, 0x10 + 2 * 23);
    bus_write(&mut dev, IOWIN_OFFSET, 0x25);
    // Rewriting the same value installs nothing.
    bus_write(&mut dev, IOWIN_OFFSET, 0x25);
    let tables = router.0.lock().expect("lock").clone();
    assert_eq!(tables.len(), 2);
    assert_eq!(tables[1].iter().map(|r| r.gsi).collect::<Vec<_>>(), [4, 23]);
    // A restore installs the restored routes.
    let state = dev.save_state();
    let mut other = IoapicDevice::new(1, router.clone());
    other.restore_state(&state).expect("restore");
    assert_eq!(router.0.lock().expect("lock").last(), tables.last());
}

#[test]
fn eoi_raises_a_level_line_again_only_while_asserted() {
    let router = Arc::new(RecordingRouter::default());
    let mut dev = IoapicDevice::new(1, router);
    let asserted = Arc::new(AtomicBool::new(true));
    let irqfd = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let flag = asserted.clone();
    dev.set_line(
        5,
        LevelLine::new(
            Box::new(move || flag.load(Ordering::SeqCst)),
            irqfd.try_clone().expect("clone"),
        ),
    );
    dev.set_line(
        99,
        LevelLine::new(Box::new(|| true), irqfd.try_clone().expect("clone")),
    );
    bus_write(&mut dev, IOREGSEL_OFFSET, 0x10 + 2 * 5);
    bus_write(&mut dev, IOWIN_OFFSET, 0x8041);
    dev.end_of_interrupt(0x41);
    assert_eq!(irqfd.read().expect("raised again"), 1);
    assert_eq!(dev.ioapic().entry(5).map(|e| e & 1 << 14), Some(1 << 14));
    asserted.store(false, Ordering::SeqCst);
    dev.end_of_interrupt(0x41);
    assert!(irqfd.read().is_err(), "not raised once deasserted");
    assert_eq!(dev.ioapic().entry(5).map(|e| e & 1 << 14), Some(0));
}
