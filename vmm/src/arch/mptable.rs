//! The Intel MultiProcessor Specification table: tells the guest about its CPUs, the
//! IOAPIC and how ISA IRQs are wired, so it can start application processors.

use crate::layout::{APIC_START, EBDA_START, IOAPIC_LAST_PIN, IOAPIC_START};
use crate::memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More CPUs than fit below 640 KiB.
    #[error("the MP table holds at most {max} CPUs, not {requested}")]
    TooManyCpus {
        /// Requested.
        requested: u8,
        /// Limit.
        max: u8,
    },
    /// Guest memory write failed.
    #[error("cannot write the MP table: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// The most CPUs the table describes (it must fit in the 1 KiB before 640 KiB).
pub const MAX_CPUS: u8 = 32;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_FLAG_ENABLED: u8 = 1;
const CPU_FLAG_BSP: u8 = 2;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// The MP configuration table (header and entries) for `cpus` CPUs, to be placed at `addr`.
fn config_table(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus + 1;
    let mut entries = Vec::new();
    for cpu in 0..cpus {
        let flags = CPU_FLAG_ENABLED | if cpu == 0 { CPU_FLAG_BSP } else { 0 };
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU and APIC present
        entries.extend_from_slice(&[0u8; 8]);
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for irq in 0..=IOAPIC_LAST_PIN as u8 {
        entries.extend_from_slice(&[3, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    entries.extend_from_slice(&[4, MP_IRQ_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);

    let count = u16::from(cpus) + 2 + (IOAPIC_LAST_PIN as u16 + 1) + 2;
    let length = 44 + entries.len();
    let mut table = Vec::with_capacity(length);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(length as u16).to_le_bytes());
    table.extend_from_slice(&[4, 0]); // spec 1.4, checksum placeholder
    table.extend_from_slice(b"ZVM     ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// The 16-byte MP floating pointer structure pointing at `table_addr`.
fn floating_pointer(table_addr: u32) -> [u8; 16] {
    let mut mpf = [0u8; 16];
    mpf[0..4].copy_from_slice(b"_MP_");
    mpf[4..8].copy_from_slice(&table_addr.to_le_bytes());
    mpf[8] = 1; // length in 16-byte units
    mpf[9] = 4; // spec 1.4
    mpf[10] = checksum(&mpf);
    mpf
}

/// Writes the floating pointer and the table for `cpus` CPUs at the start of the EBDA.
pub fn write_mptable(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus {
            requested: cpus,
            max: MAX_CPUS,
        });
    }
    let table_addr = EBDA_START + 16;
    mem.write_slice(
        &floating_pointer(table_addr as u32),
        GuestAddress(EBDA_START),
    )?;
    mem.write_slice(&config_table(cpus), GuestAddress(table_addr))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn structures_checksum_to_zero_and_fit_below_640k() {
        let table = config_table(MAX_CPUS);
        assert_eq!(sum(&table), 0);
        assert_eq!(
            u16::from_le_bytes([table[4], table[5]]) as usize,
            table.len()
        );
        assert!(
            EBDA_START + 16 + table.len() as u64 <= 0xa0000,
            "table overflows 640 KiB"
        );
        assert_eq!(sum(&floating_pointer(0x9fc10)), 0);
    }

    #[test]
    fn table_lists_every_cpu_with_one_bsp() {
        let table = config_table(3);
        let cpu_entries: Vec<&[u8]> = table[44..44 + 60].chunks(20).collect();
        assert!(cpu_entries.iter().all(|e| e[0] == 0));
        assert_eq!(
            cpu_entries.iter().map(|e| e[1]).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(
            cpu_entries
                .iter()
                .filter(|e| e[3] & CPU_FLAG_BSP != 0)
                .count(),
            1
        );
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 3 + 2 + 24 + 2);
    }

    #[test]
    fn written_table_is_found_at_the_ebda() {
        let mem = crate::memory::create_guest_memory(64 << 20).expect("mem");
        write_mptable(&mem, 2).expect("write");
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START))
            .expect("read");
        assert_eq!(&sig, b"_MP_");
        assert!(matches!(
            write_mptable(&mem, 0),
            Err(MptableError::TooManyCpus { .. })
        ));
        assert!(matches!(
            write_mptable(&mem, 33),
            Err(MptableError::TooManyCpus { .. })
        ));
    }
}
