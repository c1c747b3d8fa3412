//! VMM overhead: process start to the guest's first instruction.
//!
//! The "kernel" is a tiny ELF64 image written here: one `PT_LOAD` segment with a few
//! bytes of 32-bit code at physical 0x10_0000, and a `PT_NOTE` segment with the Xen
//! `XEN_ELFNOTE_PHYS32_ENTRY` note that marks a PVH entry point. zvm (through
//! linux-loader's ELF loader) and QEMU (`-kernel` with an ELF, through its firmware) both
//! enter it in 32-bit protected mode. The code writes `!` and a newline to COM1 and asks
//! the i8042 for a reset, so the time from spawn to `!` on the VMM's stdout is the VMM's
//! own start-up: process start, VM and device setup, loading, firmware (QEMU), first
//! instruction, and one trapped port write.

use crate::error::{io_err, Result};
use crate::measure::{fmt_opt, median, ms, ratio, run_watched, Watch};
use crate::vmms::{order, GuestSpec, Launcher, Vmm};
use std::path::Path;
use std::time::Duration;

/// Guest physical address of the code, and its entry point.
pub const LOAD_ADDR: u32 = 0x10_0000;
/// `XEN_ELFNOTE_PHYS32_ENTRY`.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Where the code sits in the file (page aligned, as `p_offset % p_align == p_vaddr % p_align`).
const CODE_OFFSET: usize = 0x1000;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const PHNUM: usize = 2;
/// The note follows the program headers.
const NOTE_OFFSET: usize = EHDR_SIZE + PHNUM * PHDR_SIZE;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_X86_64: u16 = 62;

/// The guest code, for 32-bit protected mode:
///
/// ```text
/// 66 ba f8 03   mov dx, 0x3f8
/// b0 21         mov al, '!'
/// ee            out dx, al
/// b0 0a         mov al, 0x0a
/// ee            out dx, al
/// b0 fe         mov al, 0xfe
/// e6 64         out 0x64, al     ; i8042 reset: zvm ends the VM
/// f4            hlt
/// eb fd         jmp $-1          ; back to the hlt
/// ```
pub const GUEST_CODE: [u8; 17] = [
    0x66, 0xba, 0xf8, 0x03, 0xb0, b'!', 0xee, 0xb0, 0x0a, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb,
    0xfd,
];

/// The PVH note: `n_namesz`, `n_descsz`, `n_type`, "Xen\0", then the entry as a 64-bit
/// value. linux-loader reads the first 4 bytes of the descriptor (it needs at least 4);
/// QEMU reads a whole `size_t` for 64-bit ELFs, as Linux's own note (`_ASM_PTR`) is.
fn pvh_note(entry: u32) -> Vec<u8> {
    let mut note = Vec::with_capacity(24);
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&8u32.to_le_bytes());
    note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&u64::from(entry).to_le_bytes());
    note
}

fn phdr(
    out: &mut Vec<u8>,
    p_type: u32,
    flags: u32,
    offset: usize,
    addr: u64,
    size: usize,
    align: u64,
) {
    out.extend_from_slice(&p_type.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(offset as u64).to_le_bytes());
    out.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
    out.extend_from_slice(&addr.to_le_bytes()); // p_paddr
    out.extend_from_slice(&(size as u64).to_le_bytes()); // p_filesz
    out.extend_from_slice(&(size as u64).to_le_bytes()); // p_memsz
    out.extend_from_slice(&align.to_le_bytes());
}

/// An ELF64 executable that loads `code` at `entry` and names `entry` as its PVH entry.
pub fn pvh_elf(code: &[u8], entry: u32) -> Vec<u8> {
    let note = pvh_note(entry);
    let mut elf = Vec::with_capacity(CODE_OFFSET + code.len());
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, System V ABI, padding.
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&EM_X86_64.to_le_bytes());
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&u64::from(entry).to_le_bytes()); // e_entry
    elf.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    elf.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    elf.extend_from_slice(&(PHNUM as u16).to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    phdr(
        &mut elf,
        PT_LOAD,
        0x5,
        CODE_OFFSET,
        u64::from(entry),
        code.len(),
        0x1000,
    ); // R+X
    phdr(&mut elf, PT_NOTE, 0x4, NOTE_OFFSET, 0, note.len(), 4);
    elf.extend_from_slice(&note);
    elf.resize(CODE_OFFSET, 0);
    elf.extend_from_slice(code);
    elf
}

/// Settings of the overhead benchmark.
#[derive(Debug, Clone)]
pub struct OverheadConfig {
    /// Runs per VMM.
    pub runs: usize,
    /// Time limit of one run.
    pub timeout: Duration,
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct OverheadRun {
    /// Which VMM.
    pub vmm: Vmm,
    /// 1-based run number.
    pub run: usize,
    /// Spawn to `!`, if it came.
    pub first_output: Option<Duration>,
}

/// Results of the overhead benchmark.
#[derive(Debug, Clone)]
pub struct OverheadReport {
    /// Every run, in the order they ran.
    pub runs: Vec<OverheadRun>,
    /// Median spawn-to-`!` of zvm, ms.
    pub zvm_ms: Option<f64>,
    /// Median spawn-to-`!` of QEMU, ms.
    pub qemu_ms: Option<f64>,
    /// Runs that did not print `!`.
    pub failures: usize,
    /// The jail's cost on the same start, zvm jailed against zvm unjailed.
    pub jail: crate::jail_cost::JailCost,
}

impl OverheadReport {
    /// The results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let runs: Vec<serde_json::Value> = self
            .runs
            .iter()
            .map(|r| serde_json::json!({"vmm": r.vmm.name(), "run": r.run, "first_output_ms": r.first_output.map(ms)}))
            .collect();
        serde_json::json!({
            "runs": runs,
            "median_ms": {"zvm": self.zvm_ms, "qemu": self.qemu_ms},
            "ratio_zvm_qemu": ratio(self.zvm_ms, self.qemu_ms),
            "failures": self.failures,
            "jail": self.jail.to_json(),
        })
    }
}

fn medians(runs: &[OverheadRun], vmm: Vmm) -> Option<f64> {
    let values: Vec<f64> = runs
        .iter()
        .filter(|r| r.vmm == vmm)
        .filter_map(|r| r.first_output.map(ms))
        .collect();
    median(&values)
}

/// Writes the tiny kernel into `dir`, runs both VMMs interleaved and prints the results.
pub fn run(launcher: &Launcher, cfg: &OverheadConfig, dir: &Path) -> Result<OverheadReport> {
    let kernel = dir.join("pvh-tiny.elf");
    std::fs::write(&kernel, pvh_elf(&GUEST_CODE, LOAD_ADDR)).map_err(io_err("write", &kernel))?;
    let guest = GuestSpec {
        kernel,
        initrd: None,
        cmdline: "console=ttyS0".into(),
        cpus: 1,
        mem_mib: 256,
    };
    println!(
        "== VMM overhead: spawn -> first guest output ('!' on COM1), {} runs each",
        cfg.runs
    );
    println!(
        "   guest: {}-byte PVH ELF at {LOAD_ADDR:#x}, 1 vCPU, 256 MiB; QEMU -cpu {}",
        GUEST_CODE.len(),
        launcher.qemu_cpu()
    );
    println!("{:>4}  {:<5}  {:>12}", "run", "vmm", "spawn->! ms");
    let mut runs = Vec::new();
    let mut failures = 0;
    for i in 0..cfg.runs {
        for vmm in order(i) {
            let watch = Watch {
                markers: &["!"],
                sample_at: None,
                timeout: cfg.timeout,
            };
            let out = run_watched(&mut launcher.command(vmm, &guest), &watch, |_| ())?;
            let first_output = out.marks.first().copied().flatten();
            if first_output.is_none() {
                failures += 1;
                eprintln!(
                    "warning: {} run {}: no '!' on the console; {}",
                    vmm.name(),
                    i + 1,
                    out.tail(10)
                );
            }
            println!(
                "{:>4}  {:<5}  {:>12}",
                i + 1,
                vmm.name(),
                fmt_opt(first_output.map(ms), 2)
            );
            runs.push(OverheadRun {
                vmm,
                run: i + 1,
                first_output,
            });
        }
    }
    let mut report = OverheadReport {
        zvm_ms: medians(&runs, Vmm::Zvm),
        qemu_ms: medians(&runs, Vmm::Qemu),
        runs,
        failures,
        jail: Default::default(),
    };
    println!();
    println!(
        "{:<26}  {:>10}  {:>10}  {:>9}",
        "median", "zvm", "qemu", "zvm/qemu"
    );
    println!(
        "{:<26}  {:>10}  {:>10}  {:>9}",
        "spawn -> first output, ms",
        fmt_opt(report.zvm_ms, 2),
        fmt_opt(report.qemu_ms, 2),
        fmt_opt(ratio(report.zvm_ms, report.qemu_ms), 3)
    );
    report.jail = crate::jail_cost::run(launcher, &guest, cfg.runs, cfg.timeout)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(v)
    }

    #[test]
    fn elf_header_fields() {
        let elf = pvh_elf(&GUEST_CODE, LOAD_ADDR);
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!((elf[4], elf[5], elf[6]), (2, 1, 1)); // 64-bit, little endian, version 1
        assert_eq!(u16_at(&elf, 16), 2); // ET_EXEC
        assert_eq!(u16_at(&elf, 18), EM_X86_64);
        assert_eq!(u64_at(&elf, 24), u64::from(LOAD_ADDR)); // e_entry
        assert_eq!(u64_at(&elf, 32), 64); // e_phoff, past the header as linux-loader requires
        assert_eq!(u16_at(&elf, 52), 64); // e_ehsize
        assert_eq!(u16_at(&elf, 54), 56); // e_phentsize == sizeof(Elf64_Phdr)
        assert_eq!(u16_at(&elf, 56), 2); // e_phnum
        assert_eq!(elf.len(), CODE_OFFSET + GUEST_CODE.len());
    }

    #[test]
    fn load_segment_puts_the_code_at_the_entry() {
        let elf = pvh_elf(&GUEST_CODE, LOAD_ADDR);
        let ph = 64;
        assert_eq!(u32_at(&elf, ph), PT_LOAD);
        let offset = u64_at(&elf, ph + 8) as usize;
        assert_eq!(u64_at(&elf, ph + 16), u64::from(LOAD_ADDR)); // p_vaddr
        assert_eq!(u64_at(&elf, ph + 24), u64::from(LOAD_ADDR)); // p_paddr
        let filesz = u64_at(&elf, ph + 32) as usize;
        assert_eq!(&elf[offset..offset + filesz], &GUEST_CODE);
        assert_eq!(
            offset as u64 % u64_at(&elf, ph + 48),
            u64::from(LOAD_ADDR) % u64_at(&elf, ph + 48)
        );
    }

    #[test]
    fn note_segment_holds_the_pvh_entry() {
        let elf = pvh_elf(&GUEST_CODE, LOAD_ADDR);
        let ph = 64 + 56;
        assert_eq!(u32_at(&elf, ph), PT_NOTE);
        let off = u64_at(&elf, ph + 8) as usize;
        let filesz = u64_at(&elf, ph + 32) as usize;
        assert_eq!(u64_at(&elf, ph + 48), 4); // p_align: QEMU aligns name and desc by it
                                              // As linux-loader parses it: n_namesz 4, n_type 18, name "Xen\0", desc >= 4 bytes.
        let (namesz, descsz, ntype) = (
            u32_at(&elf, off),
            u32_at(&elf, off + 4),
            u32_at(&elf, off + 8),
        );
        assert_eq!((namesz, ntype), (4, XEN_ELFNOTE_PHYS32_ENTRY));
        assert!(descsz >= 4);
        assert_eq!(&elf[off + 12..off + 16], b"Xen\0");
        assert_eq!(u32_at(&elf, off + 16), LOAD_ADDR);
        // As QEMU reads it for 64-bit ELFs: a whole size_t.
        assert_eq!(u64_at(&elf, off + 16), u64::from(LOAD_ADDR));
        assert_eq!(filesz, 12 + 4 + descsz as usize);
        assert!(off + filesz <= CODE_OFFSET);
    }

    #[test]
    fn guest_code_writes_the_marker_then_resets() {
        assert_eq!(&GUEST_CODE[..4], &[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
        assert_eq!(&GUEST_CODE[4..7], &[0xb0, b'!', 0xee]);
        assert_eq!(&GUEST_CODE[12..14], &[0xe6, 0x64]);
        // jmp rel8 -3 from its own end lands on the hlt before it.
        let jmp_end = GUEST_CODE.len() as i32;
        assert_eq!(GUEST_CODE[GUEST_CODE.len() - 3], 0xf4);
        assert_eq!(
            jmp_end + i32::from(GUEST_CODE[GUEST_CODE.len() - 1] as i8),
            jmp_end - 3
        );
    }
}
