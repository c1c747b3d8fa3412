//! Loading the guest kernel, initrd and command line, and writing the boot information
//! structure the chosen boot protocol expects (PVH start info or the Linux zero page).

use crate::arch::regs::BootEntry;
use crate::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::memory::GuestMemoryMmap;
use crate::memory::{e820_map, low_ram_end, E820Entry};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::{elf::PvhBootCapability, BzImage, Elf, KernelLoader};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use vm_memory::{ByteValued, Bytes, GuestAddress};

/// Errors loading what the guest boots.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel or initrd could not be opened or read.
    #[error("cannot read {what} '{path}': {source}")]
    Read {
        /// "kernel" or "initrd".
        what: &'static str,
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Neither ELF nor bzImage.
    #[error("kernel '{0}' is not a kernel: neither an ELF vmlinux nor a bzImage (no ELF magic, no 'HdrS' boot header)")]
    NotAKernel(String),
    /// linux-loader refused the image.
    #[error("kernel '{path}' could not be loaded as {format}: {reason}")]
    BadImage {
        /// File.
        path: String,
        /// "ELF vmlinux" or "bzImage".
        format: &'static str,
        /// linux-loader's message.
        reason: String,
    },
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error("initrd of {size} bytes does not fit in guest memory above the kernel (end {kernel_end:#x}, RAM ends {ram_end:#x}); give the VM more memory")]
    InitrdTooLarge {
        /// Initrd size.
        size: u64,
        /// End of the kernel image.
        kernel_end: u64,
        /// End of low RAM.
        ram_end: u64,
    },
    /// The command line was refused.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// Writing boot structures failed.
    #[error("cannot write {what} into guest memory: {source}")]
    Memory {
        /// Which structure.
        what: &'static str,
        /// Cause.
        source: vm_memory::GuestMemoryError,
    },
}

/// What a loaded kernel looks like to the rest of the build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// ELF with a PVH entry note.
    ElfPvh {
        /// PVH entry.
        entry: u64,
    },
    /// ELF without PVH note: 64-bit entry at `e_entry`.
    Elf64 {
        /// Entry.
        entry: u64,
    },
    /// bzImage: 64-bit entry at load address + 0x200.
    BzImage {
        /// The image's setup header.
        header: SetupHeader,
        /// Entry.
        entry: u64,
    },
}

/// A copy of the bzImage setup header (kept opaque; linux-loader's type is not `Eq`).
#[derive(Debug, Clone, Copy)]
pub struct SetupHeader(pub setup_header);

impl PartialEq for SetupHeader {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_slice() == other.0.as_slice()
    }
}
impl Eq for SetupHeader {}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    /// Format and entry.
    pub kind: KernelKind,
    /// First guest address past the kernel image.
    pub end: u64,
}

/// An initrd in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    /// Guest address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

fn read_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> LoaderError + 'a {
    move |source| LoaderError::Read {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Loads the kernel at `path` into `mem`, detecting ELF (PVH or 64-bit entry) or bzImage.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let mut file = File::open(path).map_err(read_err("kernel", path))?;
    let mut head = [0u8; 0x206];
    let n = read_up_to(&mut file, &mut head).map_err(read_err("kernel", path))?;
    file.seek(SeekFrom::Start(0))
        .map_err(read_err("kernel", path))?;
    let shown = path.display().to_string();
    let bad = |format, e: linux_loader::loader::Error| LoaderError::BadImage {
        path: shown.clone(),
        format,
        reason: e.to_string(),
    };
    if n >= 4 && head[..4] == *b"\x7fELF" {
        let res = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| bad("ELF vmlinux", e))?;
        let kind = match res.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(entry) => KernelKind::ElfPvh { entry: entry.0 },
            _ => KernelKind::Elf64 {
                entry: res.kernel_load.0,
            },
        };
        return Ok(LoadedKernel {
            kind,
            end: res.kernel_end,
        });
    }
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        let res = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| bad("bzImage", e))?;
        let header = res.setup_header.ok_or_else(|| LoaderError::BadImage {
            path: path.display().to_string(),
            format: "bzImage",
            reason: "no setup header".into(),
        })?;
        let entry = res.kernel_load.0 + 0x200;
        return Ok(LoadedKernel {
            kind: KernelKind::BzImage {
                header: SetupHeader(header),
                entry,
            },
            end: res.kernel_end,
        });
    }
    Err(LoaderError::NotAKernel(path.display().to_string()))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Where an initrd of `size` bytes goes: page aligned at the top of low RAM (and below
/// `max_addr`), above the kernel's end.
pub fn initrd_address(size: u64, kernel_end: u64, ram_end: u64, max_addr: u64) -> Option<u64> {
    let top = ram_end.min(max_addr.saturating_add(1));
    let addr = top.checked_sub(size)? & !0xfff;
    (addr >= kernel_end).then_some(addr)
}

/// Loads the initrd at `path` at the top of low RAM.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
    mem_size: u64,
) -> Result<LoadedInitrd, LoaderError> {
    let data = std::fs::read(path).map_err(read_err("initrd", path))?;
    let size = data.len() as u64;
    let max_addr = match kernel.kind {
        KernelKind::BzImage { header, .. } if header.0.initrd_addr_max != 0 => {
            u64::from(header.0.initrd_addr_max)
        }
        _ => u64::MAX,
    };
    let ram_end = low_ram_end(mem_size);
    let addr =
        initrd_address(size, kernel.end, ram_end, max_addr).ok_or(LoaderError::InitrdTooLarge {
            size,
            kernel_end: kernel.end,
            ram_end,
        })?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|source| LoaderError::Memory {
            what: "initrd",
            source,
        })?;
    Ok(LoadedInitrd { addr, size })
}

/// Builds the command line from `args`, checking the kernel's length limit.
pub fn build_cmdline(args: &str) -> Result<Cmdline, LoaderError> {
    let mut cmdline =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| LoaderError::Cmdline(e.to_string()))?;
    if !args.trim().is_empty() {
        cmdline
            .insert_str(args.trim())
            .map_err(|e| LoaderError::Cmdline(e.to_string()))?;
    }
    Ok(cmdline)
}

/// Writes the command line at [`CMDLINE_START`]; returns its length without the NUL.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<usize, LoaderError> {
    let text = cmdline
        .as_cstring()
        .map_err(|e| LoaderError::Cmdline(e.to_string()))?;
    let bytes = text.as_bytes_with_nul();
    mem.write_slice(bytes, GuestAddress(CMDLINE_START))
        .map_err(|source| LoaderError::Memory {
            what: "command line",
            source,
        })?;
    Ok(bytes.len() - 1)
}

/// `hvm_start_info` (PVH ABI, version 1).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PvhStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}
// SAFETY: plain old data, no padding beyond the explicit `reserved` field.
unsafe impl ByteValued for PvhStartInfo {}

/// `hvm_modlist_entry`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PvhModule {
    paddr: u64,
    size: u64,
    cmdline_paddr: u64,
    reserved: u64,
}
// SAFETY: plain old data without padding.
unsafe impl ByteValued for PvhModule {}

/// `hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PvhMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}
// SAFETY: plain old data without padding.
unsafe impl ByteValued for PvhMemmapEntry {}

const PVH_MAGIC: u32 = 0x336e_c578;

/// Writes the boot information for `kernel` and returns how to enter it; `rsdp` is the
/// address of the ACPI tables' root pointer.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    initrd: Option<LoadedInitrd>,
    cmdline_len: usize,
    mem_size: u64,
    rsdp: u64,
) -> Result<BootEntry, LoaderError> {
    let map = e820_map(mem_size);
    let write = |what, result: Result<(), vm_memory::GuestMemoryError>| {
        result.map_err(|source| LoaderError::Memory { what, source })
    };
    match kernel.kind {
        KernelKind::ElfPvh { entry } => {
            for (i, e) in map.iter().enumerate() {
                let entry = PvhMemmapEntry {
                    addr: e.addr,
                    size: e.size,
                    kind: e.kind,
                    reserved: 0,
                };
                let at = PVH_MEMMAP_START + (i * std::mem::size_of::<PvhMemmapEntry>()) as u64;
                write("PVH memory map", mem.write_obj(entry, GuestAddress(at)))?;
            }
            let mut info = PvhStartInfo {
                magic: PVH_MAGIC,
                version: 1,
                cmdline_paddr: CMDLINE_START,
                memmap_paddr: PVH_MEMMAP_START,
                memmap_entries: map.len() as u32,
                rsdp_paddr: rsdp,
                ..Default::default()
            };
            if let Some(initrd) = initrd {
                let module = PvhModule {
                    paddr: initrd.addr,
                    size: initrd.size,
                    ..Default::default()
                };
                write(
                    "PVH module list",
                    mem.write_obj(module, GuestAddress(PVH_MODLIST_START)),
                )?;
                info.nr_modules = 1;
                info.modlist_paddr = PVH_MODLIST_START;
            }
            write(
                "PVH start info",
                mem.write_obj(info, GuestAddress(PVH_INFO_START)),
            )?;
            Ok(BootEntry::Pvh {
                entry,
                start_info: PVH_INFO_START,
            })
        }
        KernelKind::Elf64 { entry } | KernelKind::BzImage { entry, .. } => {
            let mut params = boot_params::default();
            if let KernelKind::BzImage { header, .. } = kernel.kind {
                params.hdr = header.0;
            } else {
                params.hdr.boot_flag = 0xaa55;
                params.hdr.header = 0x5372_6448;
                params.hdr.kernel_alignment = 0x100_0000;
            }
            params.hdr.type_of_loader = 0xff;
            params.acpi_rsdp_addr = rsdp;
            params.hdr.cmd_line_ptr = CMDLINE_START as u32;
            params.hdr.cmdline_size = cmdline_len as u32;
            if let Some(initrd) = initrd {
                params.hdr.ramdisk_image = initrd.addr as u32;
                params.hdr.ramdisk_size = initrd.size as u32;
            }
            fill_e820(&mut params, &map);
            write(
                "zero page",
                mem.write_obj(params, GuestAddress(ZERO_PAGE_START)),
            )?;
            Ok(BootEntry::Linux64 {
                entry,
                zero_page: ZERO_PAGE_START,
            })
        }
    }
}

fn fill_e820(params: &mut boot_params, map: &[E820Entry]) {
    let n = map.len().min(params.e820_table.len());
    for (slot, e) in params.e820_table.iter_mut().zip(map) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    params.e820_entries = n as u8;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem() -> GuestMemoryMmap {
        crate::memory::create_guest_memory(64 << 20).expect("mem")
    }

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        f.write_all(bytes).expect("write");
        f
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let f = file_with(&[0x42; 4096]);
        let err = load_kernel(&mem(), f.path()).expect_err("garbage");
        assert!(matches!(err, LoaderError::NotAKernel(_)), "{err}");
        assert!(err
            .to_string()
            .contains("neither an ELF vmlinux nor a bzImage"));
        let tiny = file_with(b"\x7f");
        assert!(matches!(
            load_kernel(&mem(), tiny.path()),
            Err(LoaderError::NotAKernel(_))
        ));
    }

    #[test]
    fn truncated_elf_and_bzimage_give_clear_errors() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        let f = file_with(&elf);
        let err = load_kernel(&mem(), f.path()).expect_err("truncated ELF");
        assert!(
            err.to_string()
                .contains("could not be loaded as ELF vmlinux"),
            "{err}"
        );
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let f = file_with(&bz);
        let err = load_kernel(&mem(), f.path()).expect_err("bad bzImage");
        assert!(
            err.to_string().contains("could not be loaded as bzImage"),
            "{err}"
        );
    }

    #[test]
    fn initrd_goes_page_aligned_at_the_top_above_the_kernel() {
        assert_eq!(
            initrd_address(0x1800, 0x200_0000, 0x400_0000, u64::MAX),
            Some(0x3ff_e000)
        );
        assert_eq!(
            initrd_address(0x1000, 0x200_0000, 0x400_0000, 0x37ff_ffff),
            Some(0x3ff_f000)
        );
        assert_eq!(
            initrd_address(0x1000, 0, 0x400_0000, 0x1_ffff),
            Some(0x1_f000)
        );
        assert_eq!(
            initrd_address(0x300_0000, 0x200_0000, 0x400_0000, u64::MAX),
            None
        );
        assert_eq!(initrd_address(u64::MAX, 0, 0x400_0000, u64::MAX), None);
    }

    #[test]
    fn cmdline_respects_the_kernel_limit() {
        let c = build_cmdline("console=ttyS0 panic=1").expect("ok");
        let m = mem();
        let len = write_cmdline(&m, &c).expect("write");
        assert_eq!(len, "console=ttyS0 panic=1".len());
        let mut back = vec![0u8; len + 1];
        m.read_slice(&mut back, GuestAddress(CMDLINE_START))
            .expect("read");
        assert_eq!(&back, b"console=ttyS0 panic=1\0");
        assert!(build_cmdline(&"a".repeat(CMDLINE_MAX_SIZE + 1)).is_err());
    }

    #[test]
    fn pvh_start_info_describes_memory_initrd_and_cmdline() {
        let m = mem();
        let kernel = LoadedKernel {
            kind: KernelKind::ElfPvh { entry: 0x100_0000 },
            end: 0x200_0000,
        };
        let initrd = LoadedInitrd {
            addr: 0x300_0000,
            size: 1234,
        };
        let entry =
            write_boot_info(&m, &kernel, Some(initrd), 10, 64 << 20, 0xe_0000).expect("write");
        assert_eq!(
            entry,
            BootEntry::Pvh {
                entry: 0x100_0000,
                start_info: PVH_INFO_START
            }
        );
        let info: PvhStartInfo = m.read_obj(GuestAddress(PVH_INFO_START)).expect("read");
        assert_eq!(
            (info.magic, info.version, info.nr_modules),
            (PVH_MAGIC, 1, 1)
        );
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.rsdp_paddr, 0xe_0000);
        let module: PvhModule = m.read_obj(GuestAddress(info.modlist_paddr)).expect("read");
        assert_eq!((module.paddr, module.size), (0x300_0000, 1234));
    }

    #[test]
    fn zero_page_for_elf64_entry() {
        let m = mem();
        let kernel = LoadedKernel {
            kind: KernelKind::Elf64 { entry: 0x100_0000 },
            end: 0x200_0000,
        };
        let entry = write_boot_info(&m, &kernel, None, 5, 64 << 20, 0xe_0000).expect("write");
        assert_eq!(
            entry,
            BootEntry::Linux64 {
                entry: 0x100_0000,
                zero_page: ZERO_PAGE_START
            }
        );
        let params: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).expect("read");
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!({ params.hdr.boot_flag }, 0xaa55);
        assert_eq!(params.e820_entries, 2);
    }
}
