//! virtio-net: an Ethernet interface for the guest, backed by a host tap device.
//!
//! Two queues: receive (0) and transmit (1). Every buffer starts with the 12-byte
//! `virtio_net_hdr_v1`; the tap is opened with the same header size, so headers (checksum
//! and segmentation offload requests) pass through unchanged in both directions.
//!
//! Frames move between the tap and guest memory without a copy in the VMM: a TX chain's
//! buffers go to the tap with one `writev` ([`tx`]), and a frame from the tap is read with
//! one `readv` straight into the guest's RX buffers ([`rx`]). With
//! VIRTIO_NET_F_MRG_RXBUF a frame may span several RX chains (`num_buffers` in its header
//! says how many), so the driver posts small buffers instead of 64 KiB ones. A frame that
//! cannot be placed yet (too few buffers posted, or the rate limiter says wait) is held in
//! the device, which stops reading the tap until it is delivered. Optional rate limiters
//! throttle either direction; a throttled direction resumes when its limiter's timer fires.
//!
//! The device has the VMM loop poll the tap and its timers directly
//! ([`VirtioDevice::host_fds`]); the tap only while it can take a frame. Nothing from the guest is trusted: every
//! descriptor is checked against guest memory before the host touches it, bad chains are
//! logged and returned with length 0, and sizes are bounded by [`MAX_BUFFER_LEN`].

pub mod iov;
mod rx;
pub mod tap;
mod tx;

use super::{
    read_config_bytes, ActiveQueues, Interrupt, VirtioDevice, VirtioError, TYPE_NET,
    VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;
use crate::metrics::NetMetrics;
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use virtio_queue::Queue;
use vm_memory::GuestMemoryError;

/// VIRTIO_NET_F_CSUM: the device takes frames with partial checksums.
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// VIRTIO_NET_F_GUEST_CSUM: the driver takes frames with partial checksums.
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// VIRTIO_NET_F_MAC: the config space holds the MAC address.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// VIRTIO_NET_F_GUEST_TSO4: the driver takes TCPv4 GSO frames.
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
/// VIRTIO_NET_F_GUEST_TSO6: the driver takes TCPv6 GSO frames.
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
/// VIRTIO_NET_F_GUEST_UFO: the driver takes UFO frames (not offered).
pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
/// VIRTIO_NET_F_HOST_TSO4: the device takes TCPv4 GSO frames.
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
/// VIRTIO_NET_F_HOST_TSO6: the device takes TCPv6 GSO frames.
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
/// VIRTIO_NET_F_MRG_RXBUF: a received frame may span several RX chains.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
/// VIRTIO_NET_F_STATUS: the config space holds the link status.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// Link status bit: up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Length of `virtio_net_hdr_v1`.
pub const VNET_HDR_LEN: usize = 12;
/// Largest header plus frame either direction moves (64 KiB GSO frame, Ethernet and VLAN
/// headers, vnet header), as in Firecracker.
pub const MAX_BUFFER_LEN: usize = 65562;
/// Receive queue index.
pub const RX_QUEUE: usize = 0;
/// Transmit queue index.
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most frames one event moves per direction before returning to the event loop.
const MAX_FRAMES_PER_EVENT: usize = 2 * QUEUE_SIZE as usize;
/// Config space: mac[6], status u16, max_virtqueue_pairs u16.
const CONFIG_BYTES: usize = 10;

const TOKEN_TAP: u32 = 0;
const TOKEN_RX_TIMER: u32 = 1;
const TOKEN_TX_TIMER: u32 = 2;

/// Errors creating a network device, or handling one of its chains (logged).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap could not be opened.
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    /// A rate limiter could not be made.
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
    /// A MAC address that does not parse.
    #[error("invalid MAC address '{0}': use six hex bytes like 02:00:00:00:00:01")]
    BadMac(String),
    /// A device-writable buffer in a TX chain, or a device-readable one in an RX chain.
    #[error("a {0} chain has a descriptor in the wrong direction")]
    WrongDirection(&'static str),
    /// The chain was cut short: a descriptor loop, or an invalid next index.
    #[error("the descriptor chain does not end (loop or invalid next descriptor)")]
    Unterminated,
    /// A TX chain shorter than the vnet header.
    #[error("the TX chain has {0} bytes, less than the {VNET_HDR_LEN}-byte header")]
    ShortFrame(usize),
    /// A chain larger than [`MAX_BUFFER_LEN`].
    #[error("the TX chain exceeds {MAX_BUFFER_LEN} bytes")]
    TooLarge,
    /// A chain split into more pieces than one vectored system call takes.
    #[error("the chain has more than {} pieces", iov::MAX_IOVECS)]
    TooManyPieces,
    /// An RX chain too small for the frame (or, with mergeable buffers, for a header).
    #[error("the RX chain holds {room} bytes; the frame needs {need}")]
    NoRoom {
        /// Bytes the chain holds.
        room: usize,
        /// Bytes of header and frame.
        need: usize,
    },
    /// A buffer outside guest memory.
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// Where frames go to and come from.
pub trait NetBackend: Send {
    /// Reads one frame (with its vnet header) into `buf`; `WouldBlock` when there is none.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame (with its vnet header).
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Reads one frame scattered over `bufs` (guest buffers, then perhaps a host tail),
    /// as `readv` does; `WouldBlock` when there is none. A frame longer than `bufs` is cut.
    /// The default goes through a buffer and [`Self::read_frame`]; the tap reads directly.
    fn read_frame_into(&mut self, bufs: &mut iov::FrameBufs<'_>) -> io::Result<usize> {
        let mut frame = vec![0u8; bufs.len()];
        let n = self.read_frame(&mut frame)?;
        Ok(bufs.copy_in(&frame[..n.min(frame.len())]))
    }
    /// Writes one frame gathered from `bufs`, as `writev` does. The default gathers it into
    /// a buffer for [`Self::write_frame`]; the tap writes directly.
    fn write_frame_from(&mut self, bufs: &iov::FrameBufs<'_>) -> io::Result<()> {
        self.write_frame(&bufs.to_vec())
    }
    /// Tells the backend which guest features were accepted (offloads).
    fn set_offload(&mut self, _acked: u64) -> io::Result<()> {
        Ok(())
    }
    /// An fd that is readable when [`Self::read_frame`] has a frame.
    fn poll_fd(&self) -> Option<RawFd> {
        None
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::BadMac(text.to_string());
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// A virtio-net device.
pub struct Net {
    id: String,
    backend: Box<dyn NetBackend>,
    features: u64,
    acked: u64,
    config: [u8; CONFIG_BYTES],
    active: Option<ActiveQueues>,
    /// Receive-side state: the held frame and the chains being filled.
    rx: rx::RxState,
    /// The pieces of the TX chain being sent (kept to reuse the allocation).
    tx_segs: Vec<tx::Segment>,
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
    /// Whether the VMM loop should poll the backend fd for frames.
    watching_backend: bool,
    /// Activation happened (on a vCPU thread): offloads and polling are set up on the
    /// VMM thread, at the first event after it.
    setup_pending: bool,
    metrics: Arc<NetMetrics>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Net({}, active={})", self.id, self.active.is_some())
    }
}

impl Net {
    /// A device for interface `id` over `backend`; `mac` goes into the config space.
    pub fn new(
        id: &str,
        backend: Box<dyn NetBackend>,
        mac: Option<[u8; 6]>,
        rx_limit: Option<&RateLimiterConfig>,
        tx_limit: Option<&RateLimiterConfig>,
    ) -> Result<Self, NetError> {
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_GUEST_CSUM
            | VIRTIO_NET_F_GUEST_TSO4
            | VIRTIO_NET_F_GUEST_TSO6
            | VIRTIO_NET_F_HOST_TSO4
            | VIRTIO_NET_F_HOST_TSO6
            | VIRTIO_NET_F_MRG_RXBUF
            | VIRTIO_NET_F_STATUS;
        let mut config = [0u8; CONFIG_BYTES];
        if let Some(mac) = mac {
            features |= VIRTIO_NET_F_MAC;
            config[..6].copy_from_slice(&mac);
        }
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        let rx_limiter = rx_limit.map(RateLimiter::new).transpose()?;
        let tx_limiter = tx_limit.map(RateLimiter::new).transpose()?;
        Ok(Net {
            id: id.to_string(),
            backend,
            features,
            acked: 0,
            config,
            active: None,
            rx: rx::RxState::new(),
            tx_segs: Vec::new(),
            rx_limiter,
            tx_limiter,
            watching_backend: false,
            setup_pending: false,
            metrics: Arc::default(),
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// Whether a received frame waits for a guest buffer.
    pub fn rx_deferred(&self) -> bool {
        self.rx.holds_frame()
    }

    /// Starts or stops having the backend polled for frames (the VMM loop picks the
    /// change up after the event being handled, see [`VirtioDevice::host_fds`]).
    fn watch_backend(&mut self, on: bool) {
        self.watching_backend = on;
    }

    /// Finishes an activation (on the VMM thread, whose seccomp filter allows the calls):
    /// sets the tap offloads and starts polling it; after a reset, stops polling it.
    fn sync_backend(&mut self) {
        if self.active.is_none() {
            self.watch_backend(false);
            return;
        }
        if std::mem::take(&mut self.setup_pending) {
            if let Err(e) = self.backend.set_offload(self.acked) {
                tracing::warn!("virtio-net {}: cannot set tap offloads: {e}", self.id);
            }
            self.watch_backend(true);
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features;
    }

    fn config_len(&self) -> usize {
        CONFIG_BYTES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), VirtioError> {
        self.active = Some(ActiveQueues::new(mem, queues, interrupt, 2)?);
        self.setup_pending = true;
        tracing::debug!(
            "virtio-net {} activated, features {:#x}",
            self.id,
            self.acked
        );
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        self.sync_backend();
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => tracing::warn!(
                "virtio-net {}: notification for queue {index}, which does not exist",
                self.id
            ),
        }
    }

    fn host_fds(&self, fds: &mut Vec<(RawFd, u32)>) {
        if self.watching_backend {
            fds.extend(self.backend.poll_fd().map(|fd| (fd, TOKEN_TAP)));
        }
        for (limiter, token) in [
            (&self.rx_limiter, TOKEN_RX_TIMER),
            (&self.tx_limiter, TOKEN_TX_TIMER),
        ] {
            fds.extend(limiter.as_ref().map(|l| (l.timer_fd(), token)));
        }
    }

    fn process_host_fd(&mut self, token: u32) {
        self.sync_backend();
        match token {
            TOKEN_TAP => self.process_rx(),
            TOKEN_RX_TIMER if self.rx_limiter.as_mut().is_some_and(RateLimiter::on_timer) => {
                self.process_rx()
            }
            TOKEN_TX_TIMER if self.tx_limiter.as_mut().is_some_and(RateLimiter::on_timer) => {
                self.process_tx()
            }
            _ => {}
        }
    }

    fn active_queues(&self) -> Option<&ActiveQueues> {
        self.active.as_ref()
    }

    fn reset(&mut self) {
        // Runs on a vCPU thread: the tap stops being polled at the next event.
        self.setup_pending = false;
        self.active = None;
        self.rx.clear();
        self.acked = 0;
    }
}

#[cfg(test)]
mod restore_tests;
#[cfg(test)]
mod rx_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tx_tests;
