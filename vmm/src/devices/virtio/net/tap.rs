//! A Linux tap device as the backend of virtio-net.
//!
//! The tap is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a 12-byte vnet header
//! (TUNSETVNETHDRSZ), so every frame read or written carries the same
//! `virtio_net_hdr_v1` the guest uses: the device passes headers through untouched.
//! If the named interface does not exist and the process may create it, TUNSETIFF creates
//! it for as long as the descriptor stays open. The descriptor is non-blocking.
//!
//! A multiqueue interface ([`Tap::open_queues`]) is opened once per queue with
//! IFF_MULTI_QUEUE: each descriptor is one queue the kernel steers flows to, and
//! TUNSETQUEUE detaches the queues the guest does not use (and attaches them again). A tap
//! made beforehand must have been made multiqueue (`ip tuntap add ... multi_queue`) for
//! this, and single-queue for one queue: the kernel refuses a mismatch.

use super::iov::FrameBufs;
use super::{NetBackend, VNET_HDR_LEN};
use super::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
};
use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Longest interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

const TUNSETIFF: u64 = 0x4004_54ca;
/// TUNSETOFFLOAD: which offloads the reader (zvm, for the guest) accepts.
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
/// TUNSETQUEUE: attaches or detaches one queue of a multiqueue tap.
pub const TUNSETQUEUE: u64 = 0x4004_54d9;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
const TUN_F_UFO: u32 = 0x10;

/// Errors opening a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long or has a NUL byte.
    #[error("invalid tap name '{0}': 1 to {IFNAME_MAX} bytes, no NUL")]
    BadName(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(io::Error),
    /// A tun ioctl failed.
    #[error("tap '{name}': {what} failed: {source}")]
    Ioctl {
        /// The interface.
        name: String,
        /// Which ioctl.
        what: &'static str,
        /// Cause.
        source: io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (or, with CAP_NET_ADMIN, creates) the tap interface `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        Self::open_flags(name, 0)
    }

    /// Opens `count` queues of the tap interface `name` (creating it, multiqueue, when it
    /// does not exist and the process may): one queue is [`Self::open`]'s tap; more need a
    /// multiqueue interface. All are attached.
    pub fn open_queues(name: &str, count: usize) -> Result<Vec<Self>, TapError> {
        if count <= 1 {
            return Ok(vec![Self::open(name)?]);
        }
        let first = Self::open_flags(name, IFF_MULTI_QUEUE)?;
        // A `%d` pattern was resolved by the first open: the others join that interface.
        let actual = first.name.clone();
        let mut taps = vec![first];
        for _ in 1..count {
            taps.push(Self::open_flags(&actual, IFF_MULTI_QUEUE)?);
        }
        Ok(taps)
    }

    fn open_flags(name: &str, extra: libc::c_short) -> Result<Self, TapError> {
        if name.is_empty() || name.len() > IFNAME_MAX || name.bytes().any(|b| b == 0) {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | extra,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is (40 bytes).
        tap.ioctl(
            "TUNSETIFF",
            TUNSETIFF,
            &mut req as *mut IfReq as libc::c_ulong,
        )?;
        let mut hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int.
        tap.ioctl(
            "TUNSETVNETHDRSZ",
            TUNSETVNETHDRSZ,
            &mut hdr_len as *mut libc::c_int as libc::c_ulong,
        )?;
        // The kernel may have adjusted the name (e.g. a `%d` pattern).
        let actual = CStr::from_bytes_until_nul(&req.name)
            .ok()
            .and_then(|c| c.to_str().ok())
            .map(str::to_string);
        Ok(Tap {
            name: actual.unwrap_or(tap.name.clone()),
            ..tap
        })
    }

    /// A stand-in over any descriptor that reads and writes one frame per call (a datagram
    /// socket in tests), named `name`; nothing is configured on it.
    #[cfg(test)]
    pub(crate) fn from_file(file: File, name: &str) -> Self {
        Tap {
            file,
            name: name.to_string(),
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn ioctl(&self, what: &'static str, request: u64, arg: libc::c_ulong) -> Result<(), TapError> {
        // SAFETY: callers pass a request and an argument of the type it expects.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request as libc::Ioctl, arg) };
        if rc < 0 {
            return Err(TapError::Ioctl {
                name: self.name.clone(),
                what,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// The TUN_F_* offload flags matching the guest-side features the driver accepted: the
/// kernel may then hand zvm frames with partial checksums or GSO, which the guest takes.
pub fn offload_flags(acked: u64) -> u32 {
    let mut flags = 0;
    if acked & VIRTIO_NET_F_GUEST_CSUM != 0 {
        flags |= TUN_F_CSUM;
        if acked & VIRTIO_NET_F_GUEST_TSO4 != 0 {
            flags |= TUN_F_TSO4;
        }
        if acked & VIRTIO_NET_F_GUEST_TSO6 != 0 {
            flags |= TUN_F_TSO6;
        }
        if acked & VIRTIO_NET_F_GUEST_UFO != 0 {
            flags |= TUN_F_UFO;
        }
    }
    flags
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let n = self.file.write(frame)?;
        if n != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short tap write: {n} of {} bytes", frame.len()),
            ));
        }
        Ok(())
    }

    fn read_frame_into(&mut self, bufs: &mut FrameBufs<'_>) -> io::Result<usize> {
        let iovs = bufs.iovecs();
        // SAFETY: the iovecs describe memory `bufs` borrows (checked guest memory, a host
        // buffer) for as long as it lives, which outlasts the call.
        let n = unsafe {
            libc::readv(
                self.file.as_raw_fd(),
                iovs.as_ptr(),
                iovs.len() as libc::c_int,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn write_frame_from(&mut self, bufs: &FrameBufs<'_>) -> io::Result<()> {
        let iovs = bufs.iovecs();
        // SAFETY: as for `readv`; the kernel only reads the buffers.
        let n = unsafe {
            libc::writev(
                self.file.as_raw_fd(),
                iovs.as_ptr(),
                iovs.len() as libc::c_int,
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        if n != bufs.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short tap write: {n} of {} bytes", bufs.len()),
            ));
        }
        Ok(())
    }

    fn set_offload(&mut self, acked: u64) -> io::Result<()> {
        let flags = offload_flags(acked);
        self.ioctl("TUNSETOFFLOAD", TUNSETOFFLOAD, libc::c_ulong::from(flags))
            .map_err(|e| match e {
                TapError::Ioctl { source, .. } => source,
                other => io::Error::other(other.to_string()),
            })
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn set_queue_enabled(&mut self, enabled: bool) -> io::Result<()> {
        let mut req = IfReq {
            name: [0; 16],
            flags: if enabled {
                IFF_ATTACH_QUEUE
            } else {
                IFF_DETACH_QUEUE
            },
            _pad: [0; 22],
        };
        // SAFETY: TUNSETQUEUE reads an ifreq (its flags), which `req` is.
        self.ioctl(
            "TUNSETQUEUE",
            TUNSETQUEUE,
            &mut req as *mut IfReq as libc::c_ulong,
        )
        .map_err(|e| match e {
            TapError::Ioctl { source, .. } => source,
            other => io::Error::other(other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_opening() {
        assert!(matches!(Tap::open(""), Err(TapError::BadName(_))));
        assert!(matches!(
            Tap::open("a-name-of-16-chr"),
            Err(TapError::BadName(_))
        ));
        assert!(matches!(Tap::open("nul\0"), Err(TapError::BadName(_))));
    }

    #[test]
    fn offloads_follow_the_guest_features() {
        assert_eq!(offload_flags(0), 0);
        assert_eq!(
            offload_flags(VIRTIO_NET_F_GUEST_TSO4),
            0,
            "TSO needs checksum offload"
        );
        assert_eq!(offload_flags(VIRTIO_NET_F_GUEST_CSUM), TUN_F_CSUM);
        assert_eq!(
            offload_flags(
                VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6
            ),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        );
    }
}
