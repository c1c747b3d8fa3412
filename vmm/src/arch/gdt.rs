//! The boot GDT and the KVM segment descriptors derived from it.
//!
//! One table serves both boot protocols: PVH enters in 32-bit protected mode with
//! `CS = 0x08`, the 64-bit Linux boot protocol enters in long mode with `__BOOT_CS = 0x10`;
//! both use `__BOOT_DS = 0x18`.

use kvm_bindings::kvm_segment;

/// 32-bit flat code segment (PVH entry).
pub const CODE32_SELECTOR: u16 = 0x08;
/// 64-bit code segment (`__BOOT_CS`).
pub const CODE64_SELECTOR: u16 = 0x10;
/// Flat data segment (`__BOOT_DS`).
pub const DATA_SELECTOR: u16 = 0x18;
/// Task state segment.
pub const TSS_SELECTOR: u16 = 0x20;

/// Builds a GDT entry from flags (access byte in bits 0-7, flags nibble in bits 12-15),
/// base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT, indexed by selector / 8.
pub const BOOT_GDT: [u64; 5] = [
    0,                             // null
    gdt_entry(0xc09b, 0, 0xfffff), // 0x08: code, 32-bit, 4 GiB
    gdt_entry(0xa09b, 0, 0xfffff), // 0x10: code, 64-bit
    gdt_entry(0xc093, 0, 0xfffff), // 0x18: data, 4 GiB
    gdt_entry(0x808b, 0, 0xfffff), // 0x20: TSS, busy
];

/// Decodes a GDT entry into the segment KVM expects for `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The segment for `selector` in [`BOOT_GDT`].
pub fn boot_segment(selector: u16) -> kvm_segment {
    segment_from_gdt(BOOT_GDT[usize::from(selector >> 3)], selector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_to_flat_segments() {
        let code64 = boot_segment(CODE64_SELECTOR);
        assert_eq!((code64.base, code64.limit), (0, 0xffff_ffff));
        assert_eq!(
            (code64.l, code64.db, code64.type_, code64.s, code64.present),
            (1, 0, 0xb, 1, 1)
        );
        let code32 = boot_segment(CODE32_SELECTOR);
        assert_eq!((code32.l, code32.db, code32.g), (0, 1, 1));
        let data = boot_segment(DATA_SELECTOR);
        assert_eq!((data.type_, data.db, data.limit), (3, 1, 0xffff_ffff));
        let tss = boot_segment(TSS_SELECTOR);
        assert_eq!((tss.type_, tss.s, tss.present), (0xb, 0, 1));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(0x4093, 0x1234_5678, 0xabcde);
        let s = segment_from_gdt(e, 0x18);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde, "byte granular limit is kept as is");
    }
}
