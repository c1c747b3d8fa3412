//! Host sides for the virtio targets: a disk in memory and a network backend that hands
//! the device frames and takes what it sends, so no target touches the host.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vmm::devices::virtio::block::{BlockBackend, GuestIoVec};
use vmm::devices::virtio::net::{NetBackend, MAX_BUFFER_LEN};

/// A disk in memory that may fail every access.
pub struct MemDisk {
    data: Vec<u8>,
    fail: bool,
}

impl MemDisk {
    /// A disk of `sectors` 512-byte sectors; with `fail`, every access fails.
    pub fn new(sectors: usize, fail: bool) -> Self {
        MemDisk {
            data: vec![0x5a; sectors * 512],
            fail,
        }
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?;
        if self.fail || end > self.data.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(start..end)
    }
}

impl BlockBackend for MemDisk {
    fn read_vectored_at(&mut self, offset: u64, bufs: &[GuestIoVec]) -> io::Result<()> {
        let mut at = offset;
        for b in bufs {
            let range = self.range(at, b.len())?;
            // SAFETY: the device built the vector over mapped guest memory.
            unsafe {
                std::ptr::copy_nonoverlapping(self.data[range].as_ptr(), b.as_ptr(), b.len())
            };
            at += b.len() as u64;
        }
        Ok(())
    }

    fn write_vectored_at(&mut self, offset: u64, bufs: &[GuestIoVec]) -> io::Result<()> {
        let mut at = offset;
        for b in bufs {
            let range = self.range(at, b.len())?;
            // SAFETY: the device built the vector over mapped guest memory.
            unsafe {
                std::ptr::copy_nonoverlapping(b.as_ptr(), self.data[range].as_mut_ptr(), b.len())
            };
            at += b.len() as u64;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.fail {
            return Err(io::Error::other("failing disk"));
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        self.data.len() as u64
    }
}

/// Frames waiting for the guest; what the guest sends is checked and dropped.
pub struct Frames(pub VecDeque<Vec<u8>>);

impl Frames {
    /// `count` frames of the lengths `len(i)` gives (cut to the device's buffer).
    pub fn new(count: u8, mut len: impl FnMut() -> u32) -> Self {
        let frames = (0..count)
            .map(|i| vec![i; len() as usize % (MAX_BUFFER_LEN + 1)])
            .collect();
        Frames(frames)
    }
}

impl NetBackend for Frames {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self.0.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        assert!(frame.len() <= MAX_BUFFER_LEN, "a TX frame over the limit");
        Ok(())
    }
}

/// One queue of a multiqueue tap: frames as [`Frames`], attached and detached by the
/// device (TUNSETQUEUE), and, like a real tap queue, failing every read and write with
/// EBADFD while detached. With `refuse`, attaching and detaching fail.
pub struct TapQueue {
    frames: Frames,
    attached: Arc<AtomicBool>,
    refuse: bool,
}

impl TapQueue {
    /// A queue over `frames`, attached; `attached` tells the target whether it still is.
    pub fn new(frames: Frames, refuse: bool) -> (Self, Arc<AtomicBool>) {
        let attached = Arc::new(AtomicBool::new(true));
        let queue = TapQueue {
            frames,
            attached: Arc::clone(&attached),
            refuse,
        };
        (queue, attached)
    }

    fn check_attached(&self) -> io::Result<()> {
        if self.attached.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(77)) // EBADFD
        }
    }
}

impl NetBackend for TapQueue {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check_attached()?;
        self.frames.read_frame(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.check_attached()?;
        self.frames.write_frame(frame)
    }

    fn set_queue_enabled(&mut self, enabled: bool) -> io::Result<()> {
        if self.refuse {
            return Err(io::Error::from_raw_os_error(22)); // EINVAL
        }
        self.attached.store(enabled, Ordering::Relaxed);
        Ok(())
    }
}
