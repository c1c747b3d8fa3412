//! Guest memory in snapshots: the memory file is the RAM regions back to back (guest
//! physical address = file offset below the MMIO gap). A full snapshot writes every page
//! that is not all zeroes into a new file (zero pages stay holes, so the file is sparse);
//! a diff snapshot writes only the pages written since the previous snapshot, in place,
//! into the base file.

use super::SnapshotError;
use crate::memory::GuestMemoryMmap;
use kvm_ioctls::VmFd;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// The page size dirty tracking works in.
pub const PAGE_SIZE: usize = 4096;

/// What a memory write wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Pages written.
    pub pages: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Total bytes of guest RAM, the size a memory file must have.
pub fn memory_bytes(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// A region's bytes, for reading while the VM is paused.
fn region_bytes(region: &crate::memory::GuestRegionMmap) -> &[u8] {
    // SAFETY: the mapping is `region.len()` bytes long and lives as long as `region`;
    // the VM is paused and its VMM loop idle, so nothing writes it while it is read.
    unsafe { std::slice::from_raw_parts(region.as_ptr(), region.size()) }
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes runs of pages `[first, end)` of `bytes` at `file_base` in `file`.
fn write_pages(
    file: &File,
    bytes: &[u8],
    first: usize,
    end: usize,
    file_base: u64,
    path: &Path,
) -> Result<(), SnapshotError> {
    let (from, to) = (first * PAGE_SIZE, (end * PAGE_SIZE).min(bytes.len()));
    file.write_all_at(&bytes[from..to], file_base + from as u64)
        .map_err(io_err("write guest memory to", path))
}

/// Which pages of an anonymous mapping at `addr` (`pages` pages) were ever touched
/// (present or swapped out, per /proc/self/pagemap); the others read as zeroes and need
/// not be read at all, which would fault each one in. None if pagemap cannot be read.
fn touched_pages(addr: *const u8, pages: usize) -> Option<Vec<bool>> {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let mut raw = vec![0u8; pages * 8];
    let offset = (addr as u64 / PAGE_SIZE as u64) * 8;
    pagemap.read_exact_at(&mut raw, offset).ok()?;
    let touched = raw.chunks_exact(8).map(|e| {
        let entry = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
        entry & (PRESENT | SWAPPED) != 0
    });
    Some(touched.collect())
}

/// Writes all of guest memory into a new file at `path` (atomically replacing whatever
/// is there), leaving all-zero pages as holes. Pages of anonymous memory the guest never
/// touched are not even read.
pub fn write_full(mem: &GuestMemoryMmap, path: &Path) -> Result<Written, SnapshotError> {
    let tmp = super::file::temporary_beside(path);
    let result = (|| {
        let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        file.set_len(memory_bytes(mem))
            .map_err(io_err("size", &tmp))?;
        let mut written = Written::default();
        let mut file_base = 0u64;
        for region in mem.iter() {
            let bytes = region_bytes(region);
            let pages = bytes.len().div_ceil(PAGE_SIZE);
            // A file-backed region (a restored VM) reads its untouched pages from the file.
            let touched = match region.file_offset() {
                None => touched_pages(bytes.as_ptr(), pages),
                Some(_) => None,
            };
            let mut run_start = None;
            for page in 0..=pages {
                let zero = page == pages
                    || touched.as_ref().is_some_and(|t| !t[page])
                    || bytes[page * PAGE_SIZE..((page + 1) * PAGE_SIZE).min(bytes.len())]
                        .iter()
                        .all(|&b| b == 0);
                match (zero, run_start) {
                    (false, None) => run_start = Some(page),
                    (true, Some(first)) => {
                        write_pages(&file, bytes, first, page, file_base, &tmp)?;
                        written.pages += (page - first) as u64;
                        run_start = None;
                    }
                    _ => {}
                }
            }
            file_base += region.len();
        }
        written.bytes = written.pages * PAGE_SIZE as u64;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err("rename into", path))?;
        Ok(written)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The pages written since the last call, per region (one bit per page, in `u64` words):
/// what KVM logged for the guest or'ed with what zvm's devices wrote. Both logs restart.
pub fn take_dirty_pages(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<Vec<Vec<u64>>, SnapshotError> {
    let mut all = Vec::new();
    for (slot, region) in mem.iter().enumerate() {
        let len = usize::try_from(region.len()).unwrap_or(usize::MAX);
        let mut dirty = vm.get_dirty_log(slot as u32, len).map_err(|source| {
            crate::arch::state::StateError::Kvm {
                what: "read the dirty page log",
                source,
            }
        })?;
        let ours = std::ops::Deref::deref(region).bitmap().get_and_reset();
        for (word, extra) in dirty.iter_mut().zip(ours) {
            *word |= extra;
        }
        all.push(dirty);
    }
    Ok(all)
}

/// Opens the memory file a diff snapshot updates in place, for writing. It must exist and
/// hold `size` bytes (the VM's guest memory): it is the base an earlier full snapshot
/// wrote. A missing file is not created (all holes, it would pass for a base of zeroes),
/// nor is one of another size resized; both are refused before anything is written.
pub fn open_diff_base(path: &Path, size: u64) -> Result<File, SnapshotError> {
    let bad = |reason: String| SnapshotError::BadMemoryFile {
        path: path.to_path_buf(),
        reason,
    };
    const BASE: &str = "a diff snapshot updates the memory file of an earlier full \
                        snapshot of this VM";
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(format!(
                "does not exist; {BASE}: take a full snapshot first"
            )))
        }
        Err(e) => return Err(bad(format!("cannot open: {e}"))),
    };
    let meta = file
        .metadata()
        .map_err(|e| bad(format!("cannot inspect: {e}")))?;
    if !meta.is_file() {
        return Err(bad(format!("not a regular file; {BASE}")));
    }
    if meta.len() != size {
        return Err(bad(format!(
            "{} bytes, but the VM has {size} bytes of guest memory; {BASE}",
            meta.len()
        )));
    }
    Ok(file)
}

/// Writes the pages `dirty` marks into `file`, the base memory file at `path` (opened with
/// [`open_diff_base`]), leaving every other page as it is there.
pub fn write_diff(
    mem: &GuestMemoryMmap,
    dirty: &[Vec<u64>],
    file: &File,
    path: &Path,
) -> Result<Written, SnapshotError> {
    let mut written = Written::default();
    let mut file_base = 0u64;
    for (region, bits) in mem.iter().zip(dirty) {
        let bytes = region_bytes(region);
        let pages = bytes.len().div_ceil(PAGE_SIZE);
        let is_dirty = |page: usize| {
            bits.get(page / 64)
                .is_some_and(|w| w & (1 << (page % 64)) != 0)
        };
        let mut page = 0;
        while page < pages {
            if !is_dirty(page) {
                page += 1;
                continue;
            }
            let first = page;
            while page < pages && is_dirty(page) {
                page += 1;
            }
            write_pages(file, bytes, first, page, file_base, path)?;
            written.pages += (page - first) as u64;
        }
        file_base += region.len();
    }
    written.bytes = written.pages * PAGE_SIZE as u64;
    file.sync_all().map_err(io_err("sync", path))?;
    Ok(written)
}

/// Opens a memory file for a restore of `size` bytes of guest RAM; a shorter file is
/// refused (a page beyond its end would kill the VM when touched).
pub fn open_memory_file(path: &Path, size: u64) -> Result<File, SnapshotError> {
    let bad = |reason: String| SnapshotError::BadMemoryFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| bad(format!("cannot inspect: {e}")))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() != size {
        return Err(bad(format!("{} bytes, but the snapshot's guest has {size} bytes of memory (truncated or not its file)", meta.len())));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn full_writes_nonzero_pages_and_diff_only_dirty_ones() {
        let dir = tempfile::tempdir().expect("dir");
        let mem = crate::memory::create_guest_memory(4 << 20).expect("mem");
        mem.write_obj(0x1122_3344u32, GuestAddress(0x2000))
            .expect("write");
        mem.write_obj(0x55u8, GuestAddress(0x30_0fff))
            .expect("write");
        let path = dir.path().join("mem");
        let w = write_full(&mem, &path).expect("full");
        assert_eq!(w.pages, 2, "two non-zero pages");
        let file = open_memory_file(&path, 4 << 20).expect("open");
        let mut b = [0u8; 4];
        file.read_exact_at(&mut b, 0x2000).expect("read");
        assert_eq!(u32::from_le_bytes(b), 0x1122_3344);
        assert!(open_memory_file(&path, 8 << 20).is_err(), "size must match");
        // A diff of one page marked dirty (as a device write marks it).
        mem.write_obj(0xaau8, GuestAddress(0x10_0000))
            .expect("write");
        let ours = std::ops::Deref::deref(mem.iter().next().expect("region"))
            .bitmap()
            .get_and_reset();
        assert!(ours.iter().map(|w| w.count_ones()).sum::<u32>() >= 1);
        let mut only = vec![0u64; ours.len()];
        only[0x100 / 64] |= 1 << (0x100 % 64);
        let base = open_diff_base(&path, 4 << 20).expect("base");
        let w = write_diff(&mem, &[only], &base, &path).expect("diff");
        assert_eq!(w.pages, 1);
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, 0x10_0000).expect("read");
        assert_eq!(byte, [0xaa]);
        file.read_exact_at(&mut b, 0x2000).expect("read");
        assert_eq!(u32::from_le_bytes(b), 0x1122_3344, "other pages kept");
        assert!(matches!(
            open_memory_file(&dir.path().join("none"), 1),
            Err(SnapshotError::BadMemoryFile { .. })
        ));
    }

    #[test]
    fn a_diff_needs_an_existing_base_of_the_guest_memory_size() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("missing");
        let err = open_diff_base(&missing, 4 << 20).expect_err("missing");
        assert!(
            matches!(err, SnapshotError::BadMemoryFile { .. }) && err.is_bad_input(),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("does not exist") && text.contains("full snapshot first"),
            "{text}"
        );
        assert!(!missing.exists(), "no file was created");

        let short = dir.path().join("short");
        std::fs::write(&short, vec![7u8; 8192]).expect("file");
        let err = open_diff_base(&short, 4 << 20).expect_err("wrong size");
        assert!(
            err.to_string()
                .contains("8192 bytes, but the VM has 4194304 bytes of guest memory"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&short).expect("file"),
            vec![7u8; 8192],
            "the file was left alone"
        );
        let err = open_diff_base(dir.path(), 4 << 20).expect_err("a directory");
        assert!(matches!(err, SnapshotError::BadMemoryFile { .. }), "{err}");
    }
}
