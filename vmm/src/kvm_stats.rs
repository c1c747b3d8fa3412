//! KVM's own counters of each vCPU (`KVM_GET_STATS_FD`): exits, I/O and MMIO exits,
//! injected interrupts, halts, emulated instructions, ... They count what a device design
//! costs the host, independently of how fast the guest runs, so they compare designs
//! fairly (and compare zvm with QEMU, which reports the same through `query-stats`).
//!
//! Only the process that owns the VM can open a vCPU's stats fd, so the VMM reports them
//! itself: [`KvmStats`] keeps one fd per vCPU and sums the cumulative counters over the
//! vCPUs, under the kernel's names.
//!
//! The fd's layout (Linux `Documentation/virt/kvm/api.rst`, 4.133): a header (flags,
//! name size, number of descriptors, offsets of the id, descriptors and data), the
//! descriptors (flags, exponent, size, offset, bucket size, name), then the data, `size`
//! u64 values per statistic at its offset.

use serde_json::{Map, Value};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// KVM_GET_STATS_FD: `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: u64 = 0xaece;
/// Size of the header.
const HEADER_SIZE: usize = 24;
/// Size of a descriptor before its name.
const DESC_SIZE: usize = 16;
/// The statistic type in a descriptor's flags.
const TYPE_MASK: u32 = 0xf;
/// A counter that only grows.
const TYPE_CUMULATIVE: u32 = 0;
/// Bounds on what a stats fd may describe (a few hundred statistics exist today).
const MAX_DESCRIPTORS: u32 = 4096;
const MAX_NAME: u32 = 256;
const MAX_DATA: u64 = 1 << 20;

/// One cumulative, single-value statistic: its name and where its value is in the data.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counter {
    name: String,
    offset: u64,
}

/// One vCPU's stats fd, its layout read once.
#[derive(Debug)]
pub struct VcpuStats {
    file: File,
    data_offset: u64,
    data_len: u64,
    counters: Vec<Counter>,
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_ne_bytes(word)
}

impl VcpuStats {
    /// Opens the stats fd of the vCPU `vcpu_fd` (a KVM vCPU descriptor).
    pub fn open(vcpu_fd: &impl AsRawFd) -> io::Result<Self> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new descriptor.
        let fd = unsafe { libc::ioctl(vcpu_fd.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor owned by nobody else.
        Self::from_file(unsafe { File::from_raw_fd(fd) })
    }

    /// Reads the layout of a stats file.
    pub fn from_file(file: File) -> io::Result<Self> {
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0)?;
        let name_size = u32_at(&header, 4);
        let num_desc = u32_at(&header, 8);
        let desc_offset = u64::from(u32_at(&header, 16));
        let data_offset = u64::from(u32_at(&header, 20));
        if name_size > MAX_NAME || num_desc > MAX_DESCRIPTORS {
            return Err(bad(format!(
                "KVM stats: {num_desc} descriptors with {name_size}-byte names"
            )));
        }
        let desc_len = DESC_SIZE + name_size as usize;
        let mut descs = vec![0u8; desc_len * num_desc as usize];
        file.read_exact_at(&mut descs, desc_offset)?;
        let mut counters = Vec::new();
        let mut data_len = 0u64;
        for desc in descs.chunks_exact(desc_len) {
            let flags = u32_at(desc, 0);
            let size = u64::from(u16::from_ne_bytes([desc[6], desc[7]]));
            let offset = u64::from(u32_at(desc, 8));
            let end = offset.saturating_add(size.saturating_mul(8));
            if end > MAX_DATA {
                return Err(bad(format!("KVM stats: data up to byte {end}")));
            }
            data_len = data_len.max(end);
            if flags & TYPE_MASK != TYPE_CUMULATIVE || size != 1 {
                continue;
            }
            let name = &desc[DESC_SIZE..];
            let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
            let name = String::from_utf8_lossy(&name[..len]).into_owned();
            if !name.is_empty() {
                counters.push(Counter { name, offset });
            }
        }
        Ok(VcpuStats {
            file,
            data_offset,
            data_len,
            counters,
        })
    }

    /// The cumulative counters now, by name.
    pub fn read(&self) -> io::Result<Vec<(&str, u64)>> {
        let mut data = vec![0u8; self.data_len as usize];
        self.file.read_exact_at(&mut data, self.data_offset)?;
        Ok(self
            .counters
            .iter()
            .map(|c| {
                let at = c.offset as usize;
                let mut word = [0u8; 8];
                word.copy_from_slice(&data[at..at + 8]);
                (c.name.as_str(), u64::from_ne_bytes(word))
            })
            .collect())
    }
}

/// The stats fds of a VM's vCPUs.
#[derive(Debug, Default)]
pub struct KvmStats {
    vcpus: Mutex<Vec<VcpuStats>>,
}

impl KvmStats {
    /// Adds a vCPU's stats.
    pub fn add(&self, vcpu: VcpuStats) {
        self.vcpus
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(vcpu);
    }

    /// Number of vCPUs reporting.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Each cumulative counter summed over the vCPUs, by the kernel's name (empty when
    /// no vCPU has a stats fd; a vCPU whose read fails is left out).
    pub fn totals(&self) -> Map<String, Value> {
        let mut totals: Map<String, Value> = Map::new();
        for vcpu in self.vcpus.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let values = match vcpu.read() {
                Ok(values) => values,
                Err(e) => {
                    tracing::debug!("cannot read a vCPU's KVM stats: {e}");
                    continue;
                }
            };
            for (name, value) in values {
                let sum = totals
                    .get(name)
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
                    .saturating_add(value);
                totals.insert(name.to_string(), Value::from(sum));
            }
        }
        totals
    }
}

#[cfg(test)]
mod tests;
