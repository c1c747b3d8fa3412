//! Where a virtio-blk device's sectors live, and the guest buffers that move to and from
//! them without a copy in between.
//!
//! A request's data is handed to a backend as [`GuestIoVec`]s: pointers into guest memory
//! (built and bounds-checked by the request parser), so a file backend reads and writes
//! guest memory directly with `preadv`/`pwritev` (or io_uring's READV/WRITEV over the same
//! vectors) and no bounce buffer.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The image could not be opened or sized.
    #[error("cannot open disk '{path}': {source}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

/// One piece of guest memory a request moves data to or from: an `iovec` into a mapped
/// guest memory region, checked to lie within it when it was built.
#[derive(Debug, Clone, Copy)]
#[repr(transparent)]
pub struct GuestIoVec(libc::iovec);

// SAFETY: a GuestIoVec points into guest memory, which stays mapped for as long as the
// device that built it keeps its `GuestMemoryMmap` (the device pins it while requests are
// in flight); nothing in the host aliases it as a Rust reference.
unsafe impl Send for GuestIoVec {}

impl GuestIoVec {
    /// # Safety
    /// `ptr..ptr + len` must be mapped guest memory that stays mapped while the vector is
    /// used.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        GuestIoVec(libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.iov_len
    }

    /// Whether the vector is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iov_len == 0
    }

    /// Start of the buffer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.0.iov_base.cast()
    }

    /// Drops the first `n` bytes (at most its length).
    pub fn advance(&mut self, n: usize) {
        let n = n.min(self.0.iov_len);
        // SAFETY: advancing within the same buffer.
        self.0.iov_base = unsafe { self.0.iov_base.cast::<u8>().add(n) }.cast();
        self.0.iov_len -= n;
    }

    /// The vectors as `libc::iovec`s, for vectored system calls and io_uring.
    pub fn as_iovecs(vecs: &[GuestIoVec]) -> &[libc::iovec] {
        // SAFETY: GuestIoVec is a transparent wrapper around libc::iovec.
        unsafe { std::slice::from_raw_parts(vecs.as_ptr().cast(), vecs.len()) }
    }
}

/// Total length of `vecs`.
pub fn total_len(vecs: &[GuestIoVec]) -> u64 {
    vecs.iter().map(|v| v.len() as u64).sum()
}

/// Where a virtio-blk device's sectors live.
pub trait BlockBackend: Send {
    /// Fills `bufs` from byte `offset`; a short read is an error.
    fn read_vectored_at(&mut self, offset: u64, bufs: &[GuestIoVec]) -> io::Result<()>;
    /// Writes all of `bufs` at byte `offset`.
    fn write_vectored_at(&mut self, offset: u64, bufs: &[GuestIoVec]) -> io::Result<()>;
    /// Makes earlier writes durable.
    fn flush(&mut self) -> io::Result<()>;
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Whether the backend holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The file descriptor behind the backend, for io_uring; backends without one are
    /// served by a worker thread when the asynchronous engine is asked for.
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
}

/// A disk image file or host block device, accessed with preadv/pwritev/fsync.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    len: u64,
}

impl FileBackend {
    /// Opens `path` for reading, and for writing unless `read_only`.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BackendError> {
        let err = |source| BackendError::Open {
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

/// Which way [`vectored_at`] moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// preadv/pwritev of all of `bufs` at `offset`, resuming after short transfers; a read
/// that reaches the end of the file early is an error.
fn vectored_at(fd: RawFd, dir: Direction, offset: u64, bufs: &[GuestIoVec]) -> io::Result<()> {
    let mut vecs: Vec<libc::iovec> = GuestIoVec::as_iovecs(bufs)
        .iter()
        .filter(|v| v.iov_len > 0)
        .copied()
        .collect();
    let mut first = 0usize;
    let mut offset = offset;
    while first < vecs.len() {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        let rest = &vecs[first..];
        let count = rest.len().min(1024) as libc::c_int;
        // SAFETY: every iovec points into mapped guest memory (GuestIoVec's contract).
        let n = unsafe {
            match dir {
                Direction::Read => libc::preadv(fd, rest.as_ptr(), count, off),
                Direction::Write => libc::pwritev(fd, rest.as_ptr(), count, off),
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the disk image ended before the request did",
            ));
        }
        let mut done = n as usize;
        offset += done as u64;
        while done > 0 && first < vecs.len() {
            let v = &mut vecs[first];
            if done >= v.iov_len {
                done -= v.iov_len;
                first += 1;
            } else {
                // SAFETY: advancing within the same buffer.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(done) }.cast();
                v.iov_len -= done;
                done = 0;
            }
        }
    }
    Ok(())
}

/// preadv of all of `bufs` from `fd` at `offset` (short reads resumed; EOF is an error).
pub fn preadv_all(fd: RawFd, offset: u64, bufs: &[GuestIoVec]) -> io::Result<()> {
    vectored_at(fd, Direction::Read, offset, bufs)
}

/// pwritev of all of `bufs` to `fd` at `offset` (short writes resumed).
pub fn pwritev_all(fd: RawFd, offset: u64, bufs: &[GuestIoVec]) -> io::Result<()> {
    vectored_at(fd, Direction::Write, offset, bufs)
}

impl BlockBackend for FileBackend {
    fn read_vectored_at(&mut self, offset: u64, bufs: &[GuestIoVec]) -> io::Result<()> {
        preadv_all(self.file.as_raw_fd(), offset, bufs)
    }

    fn write_vectored_at(&mut self, offset: u64, bufs: &[GuestIoVec]) -> io::Result<()> {
        pwritev_all(self.file.as_raw_fd(), offset, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}

/// No disk: every request fails (a placeholder while a device changes engines).
#[derive(Debug)]
pub(crate) struct NoBackend;

impl BlockBackend for NoBackend {
    fn read_vectored_at(&mut self, _: u64, _: &[GuestIoVec]) -> io::Result<()> {
        Err(io::Error::other("no disk"))
    }

    fn write_vectored_at(&mut self, _: u64, _: &[GuestIoVec]) -> io::Result<()> {
        Err(io::Error::other("no disk"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::other("no disk"))
    }

    fn len(&self) -> u64 {
        0
    }
}

/// A disk in memory, for tests: it can fail every request, or hold each one until the
/// test lets it go (a slow disk).
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct MemBackend {
    pub data: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    pub flushes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The writes that had reached `data` at each flush.
    pub writes_at_flush: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    pub writes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub fail: bool,
    /// Each request first takes a token from here (blocks until the test sends one).
    pub gate: Option<std::sync::Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>>,
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

    /// A slow copy of this disk: each request waits for a token from the returned sender.
    pub fn gated(mut self) -> (Self, std::sync::mpsc::Sender<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.gate = Some(std::sync::Arc::new(std::sync::Mutex::new(rx)));
        (self, tx)
    }

    pub fn bytes(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        self.data.lock().expect("data")[range].to_vec()
    }

    fn wait_gate(&self) {
        if let Some(gate) = &self.gate {
            let _ = gate.lock().expect("gate").recv();
        }
    }
}

#[cfg(test)]
impl BlockBackend for MemBackend {
    fn read_vectored_at(&mut self, offset: u64, bufs: &[GuestIoVec]) -> io::Result<()> {
        self.wait_gate();
        if self.fail {
            return Err(io::Error::other("injected failure"));
        }
        let data = self.data.lock().expect("data");
        let mut at = offset as usize;
        for b in bufs {
            let src = data
                .get(at..at + b.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            // SAFETY: the vector points into mapped test guest memory.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), b.as_ptr(), b.len()) };
            at += b.len();
        }
        Ok(())
    }

    fn write_vectored_at(&mut self, offset: u64, bufs: &[GuestIoVec]) -> io::Result<()> {
        self.wait_gate();
        if self.fail {
            return Err(io::Error::other("injected failure"));
        }
        let mut data = self.data.lock().expect("data");
        let mut at = offset as usize;
        for b in bufs {
            let dst = data
                .get_mut(at..at + b.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            // SAFETY: the vector points into mapped test guest memory.
            unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), dst.as_mut_ptr(), b.len()) };
            at += b.len();
        }
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.wait_gate();
        let writes = self.writes.load(std::sync::atomic::Ordering::SeqCst);
        self.writes_at_flush.lock().expect("flushes").push(writes);
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.data.lock().expect("data").len() as u64
    }
}
