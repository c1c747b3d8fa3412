//! Throughput benchmarks run inside the guest by `zvm-bench`.
//!
//! - `blk-bench DEV SIZE_MIB`: sequential O_DIRECT write of SIZE_MIB in 1 MiB blocks plus
//!   fsync, sequential O_DIRECT read of the same range, then 4 KiB O_DIRECT random reads
//!   (at most [`RAND_READS`] or [`RAND_BUDGET`]); prints
//!   `BLK seq_write_mib_s=.. seq_read_mib_s=.. rand_read_iops=..`.
//! - `tcp-bench send|recv IP:PORT SIZE_MIB`: connects to IP:PORT and sends (or receives)
//!   SIZE_MIB; prints `NET dir=send|recv bytes=.. secs=.. mib_s=..`. `send` waits for the
//!   peer to close after it has read everything, so the time covers delivery.

use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
/// Random 4 KiB reads at most.
pub const RAND_READS: u32 = 2000;
/// Time budget of the random reads.
pub const RAND_BUDGET: Duration = Duration::from_secs(5);

/// A heap buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> io::Result<Aligned> {
        let layout = std::alloc::Layout::from_size_align(len, 4096).map_err(io::Error::other)?;
        // SAFETY: non-zero size layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::other("out of memory"));
        }
        Ok(Aligned { ptr, layout })
    }

    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: we own `layout.size()` initialised bytes at `ptr`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn open_direct(dev: &str, write: bool) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(|e| io::Error::new(e.kind(), format!("open {dev}: {e}")))
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64().max(1e-9)
}

/// Runs the block benchmark on `dev`.
pub fn blk_bench(dev: &str, size_mib: usize) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = Aligned::new(MIB)?;
    for (i, b) in buf.slice().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let file = open_direct(dev, true)?;
    let start = Instant::now();
    for i in 0..size_mib {
        file.write_all_at(buf.slice(), (i * MIB) as u64)?;
    }
    file.sync_all()?;
    let write = start.elapsed();
    drop(file);

    let file = open_direct(dev, false)?;
    let start = Instant::now();
    for i in 0..size_mib {
        file.read_exact_at(buf.slice(), (i * MIB) as u64)?;
    }
    let read = start.elapsed();

    let mut small = Aligned::new(4096)?;
    let blocks = (size_mib * MIB / 4096).max(1) as u64;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let start = Instant::now();
    let mut done = 0u32;
    while done < RAND_READS && start.elapsed() < RAND_BUDGET {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        file.read_exact_at(small.slice(), ((state >> 33) % blocks) * 4096)?;
        done += 1;
    }
    let rand = start.elapsed();
    println!(
        "BLK seq_write_mib_s={:.2} seq_read_mib_s={:.2} rand_read_iops={:.1} size_mib={size_mib} rand_reads={done}",
        mib_s(size_mib * MIB, write),
        mib_s(size_mib * MIB, read),
        f64::from(done) / rand.as_secs_f64().max(1e-9)
    );
    io::stdout().flush()
}

/// Runs the TCP benchmark: `send` (guest to host) or `recv` (host to guest).
pub fn tcp_bench(dir: &str, addr: &str, size_mib: usize) -> io::Result<()> {
    let total = size_mib * MIB;
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut buf = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut moved = 0usize;
    match dir {
        "send" => {
            while moved < total {
                let n = buf.len().min(total - moved);
                stream.write_all(&buf[..n])?;
                moved += n;
            }
            stream.shutdown(std::net::Shutdown::Write)?;
            // The peer closes once it has read everything.
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest)?;
        }
        "recv" => loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            moved += n;
        },
        other => return Err(io::Error::other(format!("unknown direction '{other}' (send or recv)"))),
    }
    let secs = start.elapsed();
    println!("NET dir={dir} bytes={moved} secs={:.3} mib_s={:.2}", secs.as_secs_f64(), mib_s(moved, secs));
    io::stdout().flush()
}
