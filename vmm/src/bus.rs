//! Address-range buses that route VM exits to devices.
//!
//! The vCPU loop hands every port-I/O or MMIO exit to a [`Bus`]; the bus finds the device
//! whose [`BusRange`] holds the address and calls it with the offset inside that range.
//! The vCPU loop therefore knows no port numbers or device addresses.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

/// A device that answers reads and writes inside its bus range.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from the start of the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Marker for the port-I/O address space.
#[derive(Debug, Clone, Copy)]
pub struct PortIo;
/// Marker for the MMIO address space.
#[derive(Debug, Clone, Copy)]
pub struct Mmio;

/// A half-open address range `[base, base + len)` on a bus of address space `S`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusRange<S> {
    /// First address.
    pub base: u64,
    /// Length in bytes (non-zero).
    pub len: u64,
    space: PhantomData<S>,
}

impl<S> BusRange<S> {
    /// A range of `len` bytes from `base`.
    pub fn new(base: u64, len: u64) -> Self {
        BusRange {
            base,
            len,
            space: PhantomData,
        }
    }

    /// The last address inside the range, saturating at `u64::MAX`.
    pub fn last(&self) -> u64 {
        self.base.saturating_add(self.len.saturating_sub(1))
    }

    /// Whether `addr` lies inside the range.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr <= self.last()
    }

    fn overlaps(&self, other: &Self) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }
}

/// Errors inserting a device on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a device already on the bus.
    #[error("bus range {new_base:#x}+{new_len:#x} overlaps {old_base:#x}+{old_len:#x}")]
    Overlap {
        /// New range start.
        new_base: u64,
        /// New range length.
        new_len: u64,
        /// Existing range start.
        old_base: u64,
        /// Existing range length.
        old_len: u64,
    },
    /// A range of length zero.
    #[error("bus range at {0:#x} has length zero")]
    Empty(u64),
}

/// A shared device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A bus of address space `S` (port I/O or MMIO).
pub struct Bus<S> {
    devices: BTreeMap<u64, (BusRange<S>, SharedDevice)>,
}

impl<S> std::fmt::Debug for Bus<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.devices.values().map(|(r, _)| (r.base, r.len)))
            .finish()
    }
}

impl<S> Default for Bus<S> {
    fn default() -> Self {
        Bus {
            devices: BTreeMap::new(),
        }
    }
}

/// The port-I/O bus.
pub type PioBus = Bus<PortIo>;
/// The MMIO bus.
pub type MmioBus = Bus<Mmio>;

impl<S> Bus<S> {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` on the bus at `range`, refusing overlaps.
    pub fn insert(&mut self, range: BusRange<S>, device: SharedDevice) -> Result<(), BusError> {
        if range.len == 0 {
            return Err(BusError::Empty(range.base));
        }
        let neighbours = [
            self.devices.range(..=range.base).next_back(),
            self.devices.range(range.base..).next(),
        ];
        for (existing, _) in neighbours.into_iter().flatten().map(|(_, d)| d) {
            if existing.overlaps(&range) {
                return Err(BusError::Overlap {
                    new_base: range.base,
                    new_len: range.len,
                    old_base: existing.base,
                    old_len: existing.len,
                });
            }
        }
        self.devices.insert(range.base, (range, device));
        Ok(())
    }

    /// The device holding `addr` and the offset of `addr` inside its range.
    fn resolve(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (_, (range, device)) = self.devices.range(..=addr).next_back()?;
        range.contains(addr).then(|| (addr - range.base, device))
    }

    /// Dispatches a read; returns false (and fills `data` with 0xff) when no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a device's state stays usable even
/// if another vCPU thread panicked while holding it.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn device() -> (Arc<Mutex<Recorder>>, SharedDevice) {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let shared: SharedDevice = dev.clone();
        (dev, shared)
    }

    #[test]
    fn dispatches_with_offset_inside_range() {
        let mut bus = PioBus::new();
        let (rec, shared) = device();
        bus.insert(BusRange::new(0x3f8, 8), shared).expect("insert");
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f8, b"a"));
        assert_eq!(rec.lock().expect("lock").writes, vec![(0, vec![b'a'])]);
    }

    #[test]
    fn unclaimed_addresses_read_all_ones() {
        let mut bus = MmioBus::new();
        let (_, shared) = device();
        bus.insert(BusRange::new(0x1000, 0x100), shared)
            .expect("insert");
        let mut data = [0u8; 4];
        assert!(!bus.read(0x1100, &mut data));
        assert_eq!(data, [0xff; 4]);
        assert!(!bus.read(0xfff, &mut data));
        assert!(!bus.write(0x2000, &[1]));
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = PioBus::new();
        bus.insert(BusRange::new(0x60, 5), device().1)
            .expect("first");
        for (base, len) in [(0x60, 1), (0x5f, 2), (0x64, 10), (0x50, 0x100)] {
            let err = bus
                .insert(BusRange::new(base, len), device().1)
                .expect_err("overlap");
            assert!(
                matches!(err, BusError::Overlap { old_base: 0x60, .. }),
                "{base:#x}+{len}"
            );
        }
        bus.insert(BusRange::new(0x65, 1), device().1)
            .expect("adjacent range is fine");
        bus.insert(BusRange::new(0x5f, 1), device().1)
            .expect("adjacent below is fine");
        assert_eq!(
            bus.insert(BusRange::new(0x70, 0), device().1),
            Err(BusError::Empty(0x70))
        );
    }

    #[test]
    fn range_at_top_of_address_space_does_not_overflow() {
        let mut bus = MmioBus::new();
        bus.insert(BusRange::new(u64::MAX - 1, 16), device().1)
            .expect("insert");
        let mut data = [0u8; 1];
        assert!(bus.read(u64::MAX, &mut data));
    }
}
