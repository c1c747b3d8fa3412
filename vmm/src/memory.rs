//! Guest memory: regions around the x86 MMIO gap and the e820 map that describes them.

use crate::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of the guest RAM failed.
    #[error("cannot allocate {size_mib} MiB of guest memory: {source}")]
    Allocate {
        /// Requested size.
        size_mib: u64,
        /// Cause.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Guest RAM type in the e820 map.
pub const E820_RAM: u32 = 1;
/// Reserved type in the e820 map.
pub const E820_RESERVED: u32 = 2;

/// One e820 map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820_RAM or E820_RESERVED.
    pub kind: u32,
}

/// The guest RAM regions (start, length) for `size` bytes of memory: one region below the
/// MMIO gap and, for guests larger than the gap start, a second one from 4 GiB.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// Allocates guest memory of `size` bytes laid out by [`ram_regions`].
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(size)
        .into_iter()
        .map(|(start, len)| (start, len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate {
        size_mib: size >> 20,
        source,
    })
}

/// The e820 map the guest is told about: low RAM up to the EBDA, then high RAM from 1 MiB
/// (the BIOS area in between holds the MP table and stays out of the map), then RAM above
/// 4 GiB when the guest is large enough.
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry { addr: 0, size: EBDA_START, kind: E820_RAM }];
    for (start, len) in ram_regions(size) {
        let (addr, len) = if start.0 == 0 {
            (HIMEM_START, len.saturating_sub(HIMEM_START))
        } else {
            (start.0, len)
        };
        if len > 0 {
            map.push(E820Entry { addr, size: len, kind: E820_RAM });
        }
    }
    map
}

/// The highest usable address + 1 of the RAM below the MMIO gap.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region_below_the_gap() {
        let regions = ram_regions(256 << 20);
        assert_eq!(regions, vec![(GuestAddress(0), 256 << 20)]);
        assert_eq!(low_ram_end(256 << 20), 256 << 20);
    }

    #[test]
    fn large_guest_is_split_around_the_mmio_gap() {
        let size = 4u64 << 30;
        let regions = ram_regions(size);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(regions[1], (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START));
        let total: u64 = regions.iter().map(|r| r.1).sum();
        assert_eq!(total, size, "no guest memory is lost to the gap");
    }

    #[test]
    fn e820_skips_the_bios_area_and_the_gap() {
        let map = e820_map(4u64 << 30);
        assert_eq!(map[0], E820Entry { addr: 0, size: EBDA_START, kind: E820_RAM });
        assert_eq!(map[1].addr, HIMEM_START);
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
        assert_eq!(map[2].addr, MMIO_GAP_END);
        for entry in &map {
            let end = entry.addr + entry.size;
            assert!(end <= MMIO_GAP_START || entry.addr >= MMIO_GAP_END, "{entry:?} overlaps the gap");
        }
    }

    #[test]
    fn guest_memory_is_allocated_and_writable() {
        use vm_memory::Bytes;
        let mem = create_guest_memory(64 << 20).expect("64 MiB");
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).expect("write");
        let back: u32 = mem.read_obj(GuestAddress(0x1000)).expect("read");
        assert_eq!(back, 0xdead_beef);
    }
}
