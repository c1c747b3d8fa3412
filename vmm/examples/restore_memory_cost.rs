//! What restoring guest memory from a snapshot's memory file costs, mapped privately
//! (every VM without virtio-fs shares) or copied into a memfd (a VM with shares, whose
//! backend maps its memory), and how much of it becomes resident.
//!
//!     cargo run --release -p vmm --example restore_memory_cost -- MEMORY_FILE [ROUNDS]
//!
//! e.g. a container template's memory file (`~/.cache/zvm/templates/*/memory`). The file
//! is read from the page cache after the first round.

use std::time::{Duration, Instant};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: restore_memory_cost MEMORY_FILE [ROUNDS]")?;
    let rounds: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(10);
    let file = std::fs::File::open(&path)?;
    let size = file.metadata()?.len();
    let extents = vmm::memory::data_extents(&file, 0, size)?;
    let data: u64 = extents.iter().map(|(a, b)| b - a).sum();
    println!(
        "{path}: {} MiB of guest memory, {} data extents holding {:.1} MiB",
        size >> 20,
        extents.len(),
        data as f64 / f64::from(1 << 20)
    );
    let (mut private, mut shared, mut resident) = (Vec::new(), Vec::new(), 0);
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        let mem = vmm::memory::guest_memory_from_file(&file, size)?;
        private.push(t.elapsed());
        drop(mem);
        let t = Instant::now();
        let mem = vmm::memory::shared_guest_memory_from_file(&file, size)?;
        shared.push(t.elapsed());
        let memfd = mem
            .iter()
            .next()
            .and_then(|r| r.file_offset())
            .map(|fo| fo.file());
        if let Some(memfd) = memfd {
            resident = std::os::unix::fs::MetadataExt::blocks(&memfd.metadata()?) * 512;
        }
    }
    println!(
        "private copy-on-write mapping: {:.3} ms (median of {rounds}); memfd filled from the data extents: {:.1} ms, {:.1} MiB resident in the memfd",
        median(private).as_secs_f64() * 1e3,
        median(shared).as_secs_f64() * 1e3,
        resident as f64 / f64::from(1 << 20)
    );
    Ok(())
}
