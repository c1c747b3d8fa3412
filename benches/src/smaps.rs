//! A VMM's own memory, from `/proc/PID/smaps`, with the guest RAM left out.
//!
//! Guest RAM is an anonymous mapping at least as large as the guest memory (zvm's
//! `GuestMemoryMmap` region; QEMU's RAM block). Every other mapping counts as the VMM's:
//! its code and libraries (resident pages of shared libraries included, as `ps` shows
//! them), heap, thread stacks, ROM images and device buffers.

use crate::error::{io_err, Result};

/// One mapping of `/proc/PID/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// The pathname column: a file, `[heap]`, `[stack]`, `[anon:name]`, or empty.
    pub path: String,
    /// `Rss:` in KiB.
    pub rss_kib: u64,
    /// `Private_Clean:` plus `Private_Dirty:` in KiB.
    pub private_kib: u64,
}

impl Mapping {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether this looks like the guest RAM of a VM with `guest_bytes` of memory: an
    /// anonymous (or memfd) mapping of at least that size.
    pub fn is_guest_ram(&self, guest_bytes: u64) -> bool {
        let anonymous = self.path.is_empty()
            || self.path.starts_with("[anon")
            || self.path.starts_with("/memfd:");
        anonymous && self.size() >= guest_bytes
    }
}

/// The VMM's memory at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmmMemory {
    /// Resident memory of every mapping except the guest RAM, in KiB.
    pub rss_kib: u64,
    /// The private part of it (not shared with other processes), in KiB.
    pub private_kib: u64,
    /// Resident guest RAM (left out of the two figures above), in KiB.
    pub guest_rss_kib: u64,
    /// How many mappings were taken for guest RAM.
    pub guest_mappings: usize,
}

fn parse_header(line: &str) -> Option<Mapping> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    // perms, offset, dev, inode, then the pathname (which may contain spaces).
    let perms = fields.next()?;
    if perms.len() != 4 {
        return None;
    }
    for _ in 0..3 {
        fields.next()?;
    }
    let path = fields.collect::<Vec<_>>().join(" ");
    Some(Mapping {
        start,
        end,
        path,
        rss_kib: 0,
        private_kib: 0,
    })
}

fn kib_field(line: &str, name: &str) -> Option<u64> {
    let rest = line.strip_prefix(name)?.strip_prefix(':')?;
    let mut parts = rest.split_whitespace();
    let value = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(value)
}

/// Parses the text of `/proc/PID/smaps`.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if let Some(m) = parse_header(line) {
            maps.push(m);
            continue;
        }
        let Some(current) = maps.last_mut() else {
            continue;
        };
        if let Some(v) = kib_field(line, "Rss") {
            current.rss_kib = v;
        } else if let Some(v) =
            kib_field(line, "Private_Clean").or_else(|| kib_field(line, "Private_Dirty"))
        {
            current.private_kib += v;
        }
    }
    maps
}

/// Sums the VMM's memory over `maps`, leaving out guest RAM of `guest_bytes`.
pub fn vmm_memory(maps: &[Mapping], guest_bytes: u64) -> VmmMemory {
    let mut total = VmmMemory::default();
    for m in maps {
        if m.is_guest_ram(guest_bytes) {
            total.guest_rss_kib += m.rss_kib;
            total.guest_mappings += 1;
        } else {
            total.rss_kib += m.rss_kib;
            total.private_kib += m.private_kib;
        }
    }
    total
}

/// Reads `/proc/<pid>/smaps` and sums the VMM's memory.
pub fn sample(pid: u32, guest_bytes: u64) -> Result<VmmMemory> {
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
    Ok(vmm_memory(&parse_smaps(&text), guest_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0a2c000 r-xp 00000000 08:01 1234                       /usr/bin/zvm
Size:                176 kB
KernelPageSize:        4 kB
Rss:                 120 kB
Pss:                 120 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:       100 kB
Private_Dirty:        20 kB
VmFlags: rd ex mr mw me dw sd
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                  40 kB
Shared_Clean:          0 kB
Private_Clean:         0 kB
Private_Dirty:        40 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0 
Size:             262144 kB
Rss:               65536 kB
Private_Dirty:     65536 kB
7f0010000000-7f0010200000 rw-p 00000000 00:00 0 
Size:               2048 kB
Rss:                  16 kB
Private_Dirty:        16 kB
7f0020000000-7f0020100000 r--p 00000000 08:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1024 kB
Rss:                 800 kB
Shared_Clean:        800 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
";

    #[test]
    fn parses_headers_paths_and_sizes() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[0].path, "/usr/bin/zvm");
        assert_eq!((maps[0].rss_kib, maps[0].private_kib), (120, 120));
        assert_eq!(maps[1].path, "[heap]");
        assert_eq!(maps[2].path, "");
        assert_eq!(maps[2].size(), 256 << 20);
        assert_eq!(maps[4].private_kib, 0);
    }

    #[test]
    fn guest_ram_is_left_out() {
        let mem = vmm_memory(&parse_smaps(SMAPS), 256 << 20);
        assert_eq!(mem.guest_mappings, 1);
        assert_eq!(mem.guest_rss_kib, 65536);
        assert_eq!(mem.rss_kib, 120 + 40 + 16 + 800);
        assert_eq!(mem.private_kib, 120 + 40 + 16);
    }

    #[test]
    fn large_file_mappings_are_not_guest_ram() {
        let m = Mapping {
            start: 0,
            end: 1 << 30,
            path: "/usr/lib/big.so".into(),
            rss_kib: 1,
            private_kib: 0,
        };
        assert!(!m.is_guest_ram(256 << 20));
        let memfd = Mapping {
            path: "/memfd:guest (deleted)".into(),
            ..m.clone()
        };
        assert!(memfd.is_guest_ram(256 << 20));
        let small = Mapping {
            end: 1 << 20,
            path: String::new(),
            ..m
        };
        assert!(!small.is_guest_ram(256 << 20));
    }

    #[test]
    fn own_smaps_parse() -> Result<()> {
        let mem = sample(std::process::id(), u64::MAX)?;
        assert!(mem.rss_kib > 0);
        assert_eq!(mem.guest_mappings, 0);
        Ok(())
    }
}
