//! Guest memory: regions around the x86 MMIO gap and the e820 map that describes them.
//!
//! Every region carries a dirty bitmap that vm-memory sets when zvm itself (a device)
//! writes guest memory; KVM's dirty log covers what the guest writes. Together they tell
//! a diff snapshot which pages changed.

use crate::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};
use std::fs::File;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::{MmapRegionBuilder, NewBitmap};
use vm_memory::{FileOffset, GuestAddress};

/// Guest memory as zvm maps it: regions with a dirty bitmap each.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;
/// One region of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<AtomicBitmap>;

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
    /// Shareable (memfd) guest memory could not be made.
    #[error("cannot make {size_mib} MiB of shareable guest memory: {reason}")]
    Memfd {
        /// Requested size.
        size_mib: u64,
        /// Cause.
        reason: String,
    },
    /// A memory file could not be mapped.
    #[error("cannot map {size_mib} MiB of guest memory from its file: {reason}")]
    MapFile {
        /// Requested size.
        size_mib: u64,
        /// Cause.
        reason: String,
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

/// Maps guest memory of `size` bytes from `file` privately: each page is read from the
/// file when first touched and copied when first written, so processes mapping the same
/// file share the pages none of them wrote. The regions of [`ram_regions`] lie back to
/// back in the file; the caller checks that the file is long enough.
pub fn guest_memory_from_file(file: &File, size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let err = |reason: String| MemoryError::MapFile {
        size_mib: size >> 20,
        reason,
    };
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_regions(size) {
        let len_usize = usize::try_from(len).map_err(|_| err("region too large".into()))?;
        let file = file.try_clone().map_err(|e| err(e.to_string()))?;
        let mapping =
            MmapRegionBuilder::new_with_bitmap(len_usize, AtomicBitmap::with_len(len_usize))
                .with_file_offset(FileOffset::new(file, offset))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .build()
                .map_err(|e| err(e.to_string()))?;
        regions.push(
            GuestRegionMmap::new(mapping, start).ok_or_else(|| err("region overflows".into()))?,
        );
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| err(e.to_string()))
}

/// Allocates guest memory of `size` bytes laid out by [`ram_regions`] in one memfd, mapped
/// shared: a vhost-user backend (virtiofsd) maps the same pages through the descriptor
/// and offset of each region's [`vm_memory::GuestMemoryRegion::file_offset`]. Only VMs
/// with such a device get it; the regions lie back to back in the memfd, as in a memory
/// file.
pub fn create_shared_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let file = new_memfd(size)?;
    map_shared(&file, size)
}

/// Shareable guest memory (as [`create_shared_guest_memory`]) filled from a snapshot's
/// memory `file`: a restored VM with a vhost-user device cannot map the file privately
/// (its backend would not see the guest's writes), so the file is copied into a memfd.
/// Only the file's data extents are copied (SEEK_DATA/SEEK_HOLE; a snapshot's memory file
/// leaves zero pages as holes), straight into the shared mapping, so the time and the
/// memory it takes follow the pages the guest had written, not its size. A file system
/// without hole reporting makes the whole file one extent.
pub fn shared_guest_memory_from_file(
    file: &File,
    size: u64,
) -> Result<GuestMemoryMmap, MemoryError> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let err = |reason: String| MemoryError::MapFile {
        size_mib: size >> 20,
        reason,
    };
    let file_len = file.metadata().map_err(|e| err(e.to_string()))?.len();
    if file_len < size {
        return Err(err(format!("it holds {file_len} bytes, not {size}")));
    }
    let memfd = new_memfd(size)?;
    let mem = map_shared(&memfd, size)?;
    let mut file_base = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let region_ptr = region.as_ptr();
        for (start, end) in data_extents(file, file_base, file_base + len)
            .map_err(|e| err(format!("cannot find its data: {e}")))?
        {
            let from = usize::try_from(start - file_base).map_err(|e| err(e.to_string()))?;
            let count = usize::try_from(end - start).map_err(|e| err(e.to_string()))?;
            // SAFETY: `from + count <= len`, the region's mapping length; nothing else uses
            // the new memory yet.
            let dst = unsafe { std::slice::from_raw_parts_mut(region_ptr.add(from), count) };
            std::os::unix::fs::FileExt::read_exact_at(file, dst, start)
                .map_err(|e| err(format!("cannot copy it into shared memory: {e}")))?;
        }
        file_base += len;
    }
    Ok(mem)
}

/// The data extents `(start, end)` of `file` within `start..end` (holes left out).
pub fn data_extents(file: &File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: lseek on our own descriptor; the result is checked. (Reads use pread, so
        // moving the file position harms nothing.)
        let at = unsafe { libc::lseek(fd, offset, whence) };
        if at < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no data (or hole) at or after the offset.
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(at as u64))
    };
    let mut extents = Vec::new();
    let mut at = start;
    while at < end {
        let data = match seek(at, libc::SEEK_DATA) {
            Ok(Some(data)) => data,
            Ok(None) => break,
            // No hole reporting here: all of it is data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && extents.is_empty() => {
                return Ok(vec![(start, end)])
            }
            Err(e) => return Err(e),
        };
        if data >= end {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        if hole <= data {
            break;
        }
        extents.push((data, hole));
        at = hole;
    }
    Ok(extents)
}

/// A memfd of `size` bytes (holes: pages cost memory once written).
fn new_memfd(size: u64) -> Result<File, MemoryError> {
    let err = |reason: String| MemoryError::Memfd {
        size_mib: size >> 20,
        reason,
    };
    // SAFETY: a constant NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"zvm-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: `fd` is a new descriptor owned by nobody else.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(size).map_err(|e| err(e.to_string()))?;
    Ok(file)
}

/// Maps the regions of [`ram_regions`] from `file` (back to back) shared.
fn map_shared(file: &File, size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let err = |reason: String| MemoryError::Memfd {
        size_mib: size >> 20,
        reason,
    };
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_regions(size) {
        let len_usize = usize::try_from(len).map_err(|_| err("region too large".into()))?;
        let file = file.try_clone().map_err(|e| err(e.to_string()))?;
        let mapping =
            MmapRegionBuilder::new_with_bitmap(len_usize, AtomicBitmap::with_len(len_usize))
                .with_file_offset(FileOffset::new(file, offset))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
                .build()
                .map_err(|e| err(e.to_string()))?;
        regions.push(
            GuestRegionMmap::new(mapping, start).ok_or_else(|| err("region overflows".into()))?,
        );
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| err(e.to_string()))
}

/// The e820 map the guest is told about: low RAM up to the EBDA, then high RAM from 1 MiB
/// (the BIOS area in between holds the MP table and stays out of the map), then RAM above
/// 4 GiB when the guest is large enough.
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    for (start, len) in ram_regions(size) {
        let (addr, len) = if start.0 == 0 {
            (HIMEM_START, len.saturating_sub(HIMEM_START))
        } else {
            (start.0, len)
        };
        if len > 0 {
            map.push(E820Entry {
                addr,
                size: len,
                kind: E820_RAM,
            });
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
        assert_eq!(
            regions[1],
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START)
        );
        let total: u64 = regions.iter().map(|r| r.1).sum();
        assert_eq!(total, size, "no guest memory is lost to the gap");
    }

    #[test]
    fn e820_skips_the_bios_area_and_the_gap() {
        let map = e820_map(4u64 << 30);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].addr, HIMEM_START);
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
        assert_eq!(map[2].addr, MMIO_GAP_END);
        for entry in &map {
            let end = entry.addr + entry.size;
            assert!(
                end <= MMIO_GAP_START || entry.addr >= MMIO_GAP_END,
                "{entry:?} overlaps the gap"
            );
        }
    }

    #[test]
    fn file_backed_memory_is_private_and_tracks_writes() {
        use vm_memory::{Bytes, GuestMemoryBackend};
        let file = tempfile::tempfile().expect("file");
        let size = 8u64 << 20;
        file.set_len(size).expect("size");
        std::os::unix::fs::FileExt::write_all_at(&file, &[7u8; 4], 0x3000).expect("write");
        let mem = guest_memory_from_file(&file, size).expect("map");
        let v: u32 = mem.read_obj(GuestAddress(0x3000)).expect("read");
        assert_eq!(v, 0x0707_0707, "pages come from the file");
        mem.write_obj(1u32, GuestAddress(0x3000)).expect("write");
        let mut back = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut back, 0x3000).expect("read");
        assert_eq!(back, [7; 4], "writes stay private");
        let region = mem.iter().next().expect("region");
        let bitmap = std::ops::Deref::deref(region).bitmap();
        assert!(bitmap.is_addr_set(0x3000), "zvm's writes are tracked");
        assert!(!bitmap.is_addr_set(0x5000));
    }

    #[test]
    fn shared_memory_is_a_memfd_the_backend_sees() {
        use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
        let mem = create_shared_guest_memory(8 << 20).expect("memfd memory");
        mem.write_obj(0x1234_5678u32, GuestAddress(0x2000))
            .expect("write");
        let region = mem.iter().next().expect("region");
        let fo = region.file_offset().expect("file backed");
        let mut back = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(fo.file(), &mut back, fo.start() + 0x2000)
            .expect("read the memfd");
        assert_eq!(
            u32::from_le_bytes(back),
            0x1234_5678,
            "writes reach the memfd"
        );
    }

    #[test]
    fn shared_memory_from_a_snapshot_file_is_a_copy() {
        use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
        let file = tempfile::tempfile().expect("file");
        let size = 8u64 << 20;
        file.set_len(size).expect("size");
        std::os::unix::fs::FileExt::write_all_at(&file, &[9u8; 4], 0x7000).expect("write");
        let mem = shared_guest_memory_from_file(&file, size).expect("copy");
        let v: u32 = mem.read_obj(GuestAddress(0x7000)).expect("read");
        assert_eq!(v, 0x0909_0909);
        mem.write_obj(1u32, GuestAddress(0x7000)).expect("write");
        let mut back = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut back, 0x7000).expect("read");
        assert_eq!(back, [9; 4], "the snapshot file is left alone");
        let region = mem.iter().next().expect("region");
        assert!(region.file_offset().is_some(), "shareable");
        let short = tempfile::tempfile().expect("file");
        short.set_len(4096).expect("size");
        assert!(shared_guest_memory_from_file(&short, size).is_err());
    }

    #[test]
    fn only_the_data_of_a_sparse_memory_file_is_copied() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
        let file = tempfile::tempfile().expect("file");
        let size = 16u64 << 20;
        file.set_len(size).expect("size");
        let pattern: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 251) as u8 + 1).collect();
        file.write_all_at(&pattern[..4096], 0x7000).expect("write");
        file.write_all_at(&pattern, 0x50_0000).expect("write");
        file.sync_all().expect("sync");
        let extents = data_extents(&file, 0, size).expect("extents");
        let data: u64 = extents.iter().map(|(a, b)| b - a).sum();
        assert!(
            extents.len() <= 2 && data <= 1 << 20,
            "the file reports its holes: {extents:x?}"
        );
        let mem = shared_guest_memory_from_file(&file, size).expect("copy");
        let mut back = vec![0u8; pattern.len()];
        mem.read_slice(&mut back, GuestAddress(0x50_0000))
            .expect("read");
        assert_eq!(back, pattern, "contents equal");
        let page: u32 = mem.read_obj(GuestAddress(0x7000)).expect("read");
        assert_eq!(page.to_le_bytes(), pattern[..4]);
        let region = mem.iter().next().expect("region");
        let memfd = region.file_offset().expect("memfd").file();
        let resident = memfd.metadata().expect("memfd").blocks() * 512;
        assert_eq!(resident, data, "only the data extents were copied");
        assert_eq!(
            data_extents(memfd, 0, size).expect("memfd extents"),
            extents,
            "the memfd has the file's data where the file has it"
        );
        let zero: u64 = mem.read_obj(GuestAddress(0x20_0000)).expect("read");
        assert_eq!(zero, 0, "holes read as zeroes");
    }

    #[test]
    fn guest_memory_is_allocated_and_writable() {
        use vm_memory::Bytes;
        let mem = create_guest_memory(64 << 20).expect("64 MiB");
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .expect("write");
        let back: u32 = mem.read_obj(GuestAddress(0x1000)).expect("read");
        assert_eq!(back, 0xdead_beef);
    }
}
