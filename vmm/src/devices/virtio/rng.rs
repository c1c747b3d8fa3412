//! virtio-rng: an entropy source for the guest (`/dev/hwrng`), fed by the host's getrandom(2).
//!
//! One request queue of device-writable buffers; each is filled with random bytes, up to
//! [`MAX_BYTES_PER_REQUEST`] per chain so that a guest cannot make one notification cost
//! unbounded work.

use super::{ActiveQueues, Interrupt, VirtioDevice, VirtioError, TYPE_RNG, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemoryMmap;
use crate::metrics::RngMetrics;
use std::io;
use std::sync::Arc;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use vm_memory::Bytes;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most random bytes one descriptor chain receives.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;

const CHUNK: usize = 4096;

/// A virtio entropy device.
#[derive(Debug, Default)]
pub struct Rng {
    active: Option<ActiveQueues>,
    metrics: Arc<RngMetrics>,
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Self {
        Self::default()
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<RngMetrics> {
        self.metrics.clone()
    }
}

/// Fills `buf` from getrandom(2) (the urandom source: never blocks once the host booted).
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe the unfilled, writable part of `buf`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match n {
            n if n > 0 => filled += n as usize,
            0 => return Err(io::Error::other("getrandom returned no bytes")),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Fills the device-writable buffers of `chain` with random bytes, up to
/// [`MAX_BYTES_PER_REQUEST`]; returns how many bytes were written. Device-readable
/// descriptors are skipped; a buffer outside guest memory ends the request.
pub fn fill_chain<I: IntoIterator<Item = Descriptor>>(mem: &GuestMemoryMmap, chain: I) -> u32 {
    let mut written: u32 = 0;
    let mut buf = [0u8; CHUNK];
    for desc in chain {
        if !desc.is_write_only() {
            tracing::debug!("virtio-rng: skipping a device-readable descriptor");
            continue;
        }
        let want = desc.len().min(MAX_BYTES_PER_REQUEST - written);
        let mut done: u32 = 0;
        while done < want {
            let n = ((want - done) as usize).min(CHUNK);
            if let Err(e) = getrandom(&mut buf[..n]) {
                tracing::error!("virtio-rng: getrandom failed: {e}");
                return written;
            }
            let Some(addr) = desc.addr().0.checked_add(u64::from(done)) else {
                return written;
            };
            if let Err(e) = mem.write_slice(&buf[..n], vm_memory::GuestAddress(addr)) {
                tracing::warn!("virtio-rng: buffer outside guest memory: {e}");
                return written;
            }
            done += n as u32;
            written += n as u32;
        }
        if written == MAX_BYTES_PER_REQUEST {
            break;
        }
    }
    written
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn config_len(&self) -> usize {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), VirtioError> {
        self.active = Some(ActiveQueues::new(mem, queues, interrupt, 1)?);
        tracing::debug!("virtio-rng activated");
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        let metrics = &self.metrics;
        if let Some(active) = &mut self.active {
            active.drain(index, |mem, chain| {
                let n = fill_chain(mem, chain);
                metrics.requests.inc();
                metrics.bytes.add(u64::from(n));
                n
            });
        }
    }

    fn active_queues(&self) -> Option<&ActiveQueues> {
        self.active.as_ref()
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::*;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    fn guest(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).expect("read");
        buf
    }

    #[test]
    fn fills_writable_buffers_and_skips_readable_ones() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
        let chain = build_chain(
            &mock,
            &[
                desc(DATA, 64, F_WRITE),
                desc(DATA + 0x100, 16, 0),
                desc(DATA + 0x200, 5000, F_WRITE),
            ],
        );
        assert_eq!(fill_chain(&mem, chain), 5064);
        assert_ne!(guest(&mem, DATA, 64), vec![0; 64]);
        assert_eq!(
            guest(&mem, DATA + 0x100, 16),
            vec![0; 16],
            "readable buffer untouched"
        );
        assert_ne!(
            guest(&mem, DATA + 5000 + 0x200 - 64, 64),
            vec![0; 64],
            "the tail of the second chunk is filled"
        );
    }

    #[test]
    fn requests_are_capped_and_bad_buffers_end_them() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
        let chain = build_chain(
            &mock,
            &[
                desc(DATA, 0x10_0000, F_WRITE),
                desc(DATA + 0x20_0000, 64, F_WRITE),
            ],
        );
        assert_eq!(fill_chain(&mem, chain), MAX_BYTES_PER_REQUEST);
        assert_eq!(
            guest(&mem, DATA + 0x20_0000, 64),
            vec![0; 64],
            "nothing past the cap"
        );
        let chain = build_chain(
            &mock,
            &[desc(MEM_SIZE - 16, 64, F_WRITE), desc(DATA, 64, F_WRITE)],
        );
        assert_eq!(
            fill_chain(&mem, chain),
            0,
            "a buffer running off guest memory ends the request"
        );
        let chain = build_chain(&mock, &[desc(u64::MAX - 8, 4096 * 3, F_WRITE)]);
        assert_eq!(fill_chain(&mem, chain), 0, "wrapping addresses are refused");
    }

    #[test]
    fn device_serves_its_queue() {
        let mem = memory();
        let mock = MockSplitQueue::new(&mem, MOCK_QUEUE_SIZE);
        mock.add_desc_chains(
            &[linked(DATA, 32, F_WRITE, 0), linked(DATA + 0x100, 8, 0, 0)],
            0,
        )
        .expect("chains");
        let mut rng = Rng::new();
        assert_eq!(rng.device_type(), TYPE_RNG);
        assert_eq!(rng.features(), VIRTIO_F_VERSION_1);
        let irq = Interrupt::new().expect("irq");
        rng.activate(mem.clone(), vec![ready_queue(&mock)], irq.clone())
            .expect("activate");
        rng.process_queue(0);
        assert_eq!(used_idx(&mem, &mock), 2);
        assert_eq!(used_entry(&mem, &mock, 0), (0, 32));
        assert_eq!(
            used_entry(&mem, &mock, 1),
            (1, 0),
            "a chain with no writable buffer is returned empty"
        );
        assert_eq!(
            (rng.metrics().requests.get(), rng.metrics().bytes.get()),
            (2, 32)
        );
        assert_eq!(irq.eventfd().read().expect("interrupt"), 1);
    }
}
