//! virtio-blk: a disk image (or block device) on the host as `/dev/vdX` in the guest.
//!
//! One request queue; requests are served synchronously with pread/pwrite/fsync on the
//! thread that handles the queue notification (the VMM loop). Read-only disks advertise
//! VIRTIO_BLK_F_RO and the host refuses writes whatever the guest negotiated.

pub mod request;

use super::{
    notify, read_config_bytes, ActiveQueues, Interrupt, VirtioDevice, VirtioError, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;
use crate::metrics::BlockMetrics;
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};
use request::{Disk, MAX_DATA_BYTES, MAX_DESCRIPTORS, SECTOR_SIZE};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

/// VIRTIO_BLK_F_SIZE_MAX: config `size_max` bounds each data segment.
pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
/// VIRTIO_BLK_F_SEG_MAX: config `seg_max` bounds the data segments per request.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// VIRTIO_BLK_F_RO: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// VIRTIO_BLK_F_BLK_SIZE: config `blk_size` is the logical block size.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// VIRTIO_BLK_F_FLUSH: the device handles VIRTIO_BLK_T_FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest data segment the driver may use (`size_max`): one page.
pub const SIZE_MAX: u32 = 4096;
/// Data segments per request (`seg_max`): a request with its header and status
/// descriptors fits the queue, and `SEG_MAX * SIZE_MAX` fits [`MAX_DATA_BYTES`].
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Logical block size reported to the guest.
pub const BLK_SIZE: u32 = SECTOR_SIZE as u32;

const _: () = assert!(SEG_MAX as u64 * SIZE_MAX as u64 <= MAX_DATA_BYTES);
const _: () = assert!(SEG_MAX as usize + 2 <= MAX_DESCRIPTORS);

/// Length of the configuration space zvm fills: capacity, size_max, seg_max, geometry, blk_size.
const CONFIG_BYTES: usize = 24;

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened or sized.
    #[error("cannot open disk '{path}': {source}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The rate limiter could not be made.
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
}

/// Where a virtio-blk device's sectors live.
pub trait BlockBackend: Send {
    /// Fills `buf` from byte `offset`; a short read is an error.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at byte `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes earlier writes durable.
    fn flush(&mut self) -> io::Result<()>;
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Whether the backend holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A disk image file or host block device, accessed with pread/pwrite/fsync.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    len: u64,
}

impl FileBackend {
    /// Opens `path` for reading, and for writing unless `read_only`.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(err)?;
        // Seeking to the end sizes block devices as well as files.
        let len = file.seek(SeekFrom::End(0)).map_err(err)?;
        Ok(FileBackend { file, len })
    }
}

impl BlockBackend for FileBackend {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// A virtio-blk device.
#[derive(Debug)]
pub struct Block {
    disk: Disk,
    features: u64,
    active: Option<ActiveQueues>,
    rate_limiter: Option<RateLimiter>,
}

impl Block {
    /// A device serving `backend`; `id` (the drive id) is what GET_ID returns, cut to 20 bytes.
    pub fn new(backend: Box<dyn BlockBackend>, read_only: bool, id: &str) -> Self {
        let disk = Disk::new(backend, read_only, id);
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_SIZE_MAX
            | VIRTIO_BLK_F_BLK_SIZE;
        if read_only {
            features |= VIRTIO_BLK_F_RO;
        }
        Block {
            disk,
            features,
            active: None,
            rate_limiter: None,
        }
    }

    /// Limits the device's bandwidth and request rate: requests wait on the queue while
    /// the limiter is short of tokens, and are served when its timer fires.
    pub fn with_rate_limiter(mut self, config: &RateLimiterConfig) -> Result<Self, BlockError> {
        self.rate_limiter = Some(RateLimiter::new(config)?);
        Ok(self)
    }

    /// Serves requests one at a time while the rate limiter lets them through.
    fn process_limited(&mut self) {
        let (Some(active), Some(limiter)) = (&mut self.active, &mut self.rate_limiter) else {
            return;
        };
        let Some(queue) = active.queues.first_mut() else {
            return;
        };
        if !queue.ready() {
            return;
        }
        let mut used = 0;
        let mut throttled = false;
        for _ in 0..usize::from(QUEUE_SIZE) * 2 {
            let Some(chain) = queue.pop_descriptor_chain(&active.mem) else {
                break;
            };
            // The data bytes: everything but the 16-byte header and the status byte.
            let bytes = chain
                .clone()
                .map(|d| u64::from(d.len()))
                .sum::<u64>()
                .saturating_sub(17);
            if !limiter.consume_request(bytes) {
                queue.go_to_previous_position();
                self.disk.metrics.rate_limiter_throttled.inc();
                throttled = true;
                break;
            }
            let head = chain.head_index();
            let len = self.disk.handle(&active.mem, chain);
            match queue.add_used(&active.mem, head, len) {
                Ok(()) => used += 1,
                Err(e) => tracing::warn!("virtio-blk: cannot return descriptor {head}: {e}"),
            }
        }
        if used > 0 && queue.needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        // A throttled queue waits for the limiter's timer instead.
        if !throttled && notify::rearm(queue, &active.mem) {
            active.requeue.mark(0);
        }
    }

    /// A device serving the image at `path`.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let backend = FileBackend::open(path, read_only)?;
        Ok(Block::new(Box::new(backend), read_only, id))
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.disk.metrics.clone()
    }

    /// The disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    /// The configuration space, built on each read: the capacity is always the backing
    /// file's (the one attached now, whatever a snapshot saw), never a stored copy.
    fn config(&self) -> [u8; CONFIG_BYTES] {
        let mut config = [0u8; CONFIG_BYTES];
        config[0..8].copy_from_slice(&self.capacity().to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&BLK_SIZE.to_le_bytes());
        config
    }

    /// Whether the device refuses writes.
    pub fn read_only(&self) -> bool {
        self.disk.read_only
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config_len(&self) -> usize {
        CONFIG_BYTES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), VirtioError> {
        self.active = Some(ActiveQueues::new(mem, queues, interrupt, 1)?);
        tracing::debug!(
            "virtio-blk activated: {} sectors, read_only={}",
            self.capacity(),
            self.disk.read_only
        );
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        if self.rate_limiter.is_some() && index == 0 {
            self.process_limited();
            return;
        }
        let disk = &mut self.disk;
        if let Some(active) = &mut self.active {
            active.drain(index, |mem, chain| disk.handle(mem, chain));
        }
    }

    fn host_event_fd(&self) -> Option<std::os::fd::RawFd> {
        self.rate_limiter.as_ref().map(RateLimiter::timer_fd)
    }

    fn process_host_event(&mut self) {
        if self
            .rate_limiter
            .as_mut()
            .is_some_and(RateLimiter::on_timer)
        {
            self.process_limited();
        }
    }

    fn active_queues(&self) -> Option<&ActiveQueues> {
        self.active.as_ref()
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

/// A disk in memory, for tests.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct MemBackend {
    pub data: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    pub flushes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub fail: bool,
}

#[cfg(test)]
impl MemBackend {
    pub fn with_len(len: usize) -> Self {
        let data = (0..len).map(|i| (i / 512) as u8 ^ (i as u8)).collect();
        MemBackend {
            data: std::sync::Arc::new(std::sync::Mutex::new(data)),
            ..Default::default()
        }
    }

    pub fn bytes(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        self.data.lock().expect("data")[range].to_vec()
    }
}

#[cfg(test)]
impl BlockBackend for MemBackend {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.fail {
            return Err(io::Error::other("injected failure"));
        }
        let data = self.data.lock().expect("data");
        let start = offset as usize;
        buf.copy_from_slice(
            data.get(start..start + buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?,
        );
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.fail {
            return Err(io::Error::other("injected failure"));
        }
        let mut data = self.data.lock().expect("data");
        let start = offset as usize;
        data.get_mut(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?
            .copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.data.lock().expect("data").len() as u64
    }
}

#[cfg(test)]
mod tests;
