//! Guest buffers as host iovecs: a frame moves between the tap and guest memory with one
//! `readv` or `writev` over the guest's own buffers, with no copy in the VMM.
//!
//! [`FrameBufs`] borrows guest memory for as long as it lives, so the iovecs it hands the
//! kernel stay mapped; it takes only ranges that guest memory holds whole. Guest memory is
//! shared with the guest, which may change it at any time, so it is never viewed as a Rust
//! slice: the kernel reads and writes it, and test doubles copy through volatile accesses.
//! Writes by the kernel bypass vm-memory's dirty tracking, so the device marks what a read
//! wrote ([`FrameBufs::mark_written`]) for diff snapshots.

use super::NetError;
use crate::memory::GuestMemoryMmap;
use std::marker::PhantomData;
use vm_memory::bitmap::{AtomicBitmap, Bitmap, BS};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryError, VolatileSlice};

/// Most iovecs one frame uses (Linux's UIO_MAXIOV).
pub const MAX_IOVECS: usize = 1024;

/// A piece of guest memory as vm-memory maps it, with its dirty bitmap.
type GuestSlice<'a> = VolatileSlice<'a, BS<'a, AtomicBitmap>>;

/// The buffers of one frame: pieces of guest memory, in order, then perhaps a host buffer
/// for what the guest's buffers cannot take.
pub struct FrameBufs<'a> {
    iovs: Vec<libc::iovec>,
    guest: Vec<GuestSlice<'a>>,
    guest_len: usize,
    host_len: usize,
    _host: PhantomData<&'a mut [u8]>,
}

impl std::fmt::Debug for FrameBufs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FrameBufs({} pieces, {} guest bytes, {} host bytes)",
            self.iovs.len(),
            self.guest_len,
            self.host_len
        )
    }
}

impl<'a> FrameBufs<'a> {
    /// No buffers yet.
    pub fn new() -> Self {
        FrameBufs {
            iovs: Vec::new(),
            guest: Vec::new(),
            guest_len: 0,
            host_len: 0,
            _host: PhantomData,
        }
    }

    /// Appends `len` bytes of guest memory at `addr` (one iovec per memory region the range
    /// crosses). Fails, adding nothing, when guest memory does not hold the whole range or
    /// the frame would need more than [`MAX_IOVECS`] pieces.
    pub fn push_guest(
        &mut self,
        mem: &'a GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
    ) -> Result<(), NetError> {
        debug_assert_eq!(self.host_len, 0, "guest pieces come before the host tail");
        if len == 0 {
            return Ok(());
        }
        if !GuestMemoryBackend::check_range(mem, addr, len) {
            return Err(NetError::Memory(GuestMemoryError::InvalidGuestAddress(
                addr,
            )));
        }
        let (iovs, guest) = (self.iovs.len(), self.guest.len());
        for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
            let slice = match slice {
                Ok(slice) => slice,
                Err(e) => {
                    self.iovs.truncate(iovs);
                    self.guest.truncate(guest);
                    return Err(e.into());
                }
            };
            if self.iovs.len() >= MAX_IOVECS {
                self.iovs.truncate(iovs);
                self.guest.truncate(guest);
                return Err(NetError::TooManyPieces);
            }
            self.iovs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
            self.guest.push(slice);
        }
        self.guest_len += len;
        Ok(())
    }

    /// Appends a host buffer after the guest pieces, for the part of a frame they cannot
    /// take (at most one; ignored when the iovecs are used up).
    pub fn push_host(&mut self, buf: &'a mut [u8]) {
        if buf.is_empty() || self.host_len > 0 || self.iovs.len() >= MAX_IOVECS {
            return;
        }
        self.iovs.push(libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        });
        self.host_len = buf.len();
    }

    /// Bytes in guest memory.
    pub fn guest_len(&self) -> usize {
        self.guest_len
    }

    /// Bytes in all.
    pub fn len(&self) -> usize {
        self.guest_len + self.host_len
    }

    /// Whether there is no room at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The iovecs, for `readv` and `writev`: valid while `self` lives.
    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iovs
    }

    /// Marks the first `n` bytes written (after a read by the kernel): the guest pages
    /// they hit become dirty for the next diff snapshot.
    pub fn mark_written(&self, n: usize) {
        let mut left = n;
        for slice in &self.guest {
            if left == 0 {
                break;
            }
            let k = left.min(slice.len());
            slice.bitmap().mark_dirty(0, k);
            left -= k;
        }
    }

    /// Copies `data` in order over the buffers (for backends that are not file
    /// descriptors); returns the bytes copied, cut to [`Self::len`].
    pub fn copy_in(&mut self, data: &[u8]) -> usize {
        let mut done = 0;
        for slice in &self.guest {
            if done == data.len() {
                return done;
            }
            let k = slice.len().min(data.len() - done);
            slice.copy_from(&data[done..done + k]);
            done += k;
        }
        if let Some(iov) = self.iovs.last().filter(|_| self.host_len > 0) {
            let k = self.host_len.min(data.len() - done);
            // SAFETY: the last iovec is the host buffer `push_host` borrowed mutably for
            // 'a, `host_len` bytes long; `data` is a different allocation.
            unsafe {
                std::ptr::copy_nonoverlapping(data[done..].as_ptr(), iov.iov_base.cast::<u8>(), k)
            };
            done += k;
        }
        done
    }

    /// The guest pieces' bytes, gathered (for backends that are not file descriptors).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.guest_len];
        let mut done = 0;
        for slice in &self.guest {
            done += slice.copy_to(&mut out[done..]);
        }
        out.truncate(done);
        out
    }
}

impl Default for FrameBufs<'_> {
    fn default() -> Self {
        Self::new()
    }
}
