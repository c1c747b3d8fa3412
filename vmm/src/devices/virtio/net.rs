//! virtio-net: an Ethernet interface for the guest, backed by a host tap device.
//!
//! Two queues: receive (0) and transmit (1); with multiqueue ([`Net::with_pairs`], opt-in),
//! one receive and transmit queue per pair (2k, 2k + 1) over one tap queue each, and a
//! control queue after them ([`ctrl`]). Every buffer starts with the 12-byte
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

mod ctrl;
pub mod iov;
mod rx;
pub mod tap;
mod tx;

pub use ctrl::NetState;

use super::mmio::VirtioDeviceState;
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
/// VIRTIO_NET_F_CTRL_VQ: the device has a control queue.
pub const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
/// VIRTIO_NET_F_MQ: several queue pairs, chosen through the control queue.
pub const VIRTIO_NET_F_MQ: u64 = 1 << 22;
/// Most queue pairs a device may have.
pub const MAX_QUEUE_PAIRS: u16 = 8;
/// Link status bit: up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Length of `virtio_net_hdr_v1`.
pub const VNET_HDR_LEN: usize = 12;
/// Largest header plus frame either direction moves (64 KiB GSO frame, Ethernet and VLAN
/// headers, vnet header), as in Firecracker.
pub const MAX_BUFFER_LEN: usize = 65562;
/// Receive queue index (of the first pair; pair k's is 2k).
pub const RX_QUEUE: usize = 0;
/// Transmit queue index (of the first pair; pair k's is 2k + 1).
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
/// Pair k > 0 polls its tap queue with token `TOKEN_TAP_PAIRS + k`.
const TOKEN_TAP_PAIRS: u32 = 2;

/// The host fd token of pair `pair`'s tap queue.
fn tap_token(pair: usize) -> u32 {
    match pair {
        0 => TOKEN_TAP,
        k => TOKEN_TAP_PAIRS + k as u32,
    }
}

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
    /// A number of queue pairs the device cannot have.
    #[error("{0} queue pairs: a network interface has 1 to {MAX_QUEUE_PAIRS}")]
    BadQueuePairs(usize),
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
    /// Attaches (`true`) or detaches this queue of a multiqueue tap, so the host steers
    /// frames only to the queues the driver uses.
    fn set_queue_enabled(&mut self, _enabled: bool) -> io::Result<()> {
        Ok(())
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

/// One queue pair: its backend (a tap queue) and what its queues carry over batches.
struct Pair {
    backend: Box<dyn NetBackend>,
    /// Receive-side state: the held frame and the chains being filled.
    rx: rx::RxState,
    /// The pieces of the TX chain being sent (kept to reuse the allocation).
    tx_segs: Vec<tx::Segment>,
    /// Whether the VMM loop should poll the backend fd for frames.
    watching: bool,
    /// Whether the backend queue is attached (multiqueue taps only detach).
    attached: bool,
}

/// A virtio-net device.
pub struct Net {
    id: String,
    features: u64,
    acked: u64,
    config: [u8; CONFIG_BYTES],
    active: Option<ActiveQueues>,
    /// The queue pairs (one unless multiqueue), each over its own backend.
    pairs: Vec<Pair>,
    /// The pairs the driver uses (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET; 1 until it says).
    active_pairs: usize,
    /// Queue sizes: two per pair, then the control queue with multiqueue.
    queue_sizes: Vec<u16>,
    /// Limiters of the interface, shared by its pairs.
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
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
        Self::with_pairs(id, vec![backend], mac, rx_limit, tx_limit)
    }

    /// A device with one queue pair per backend (the queues of one multiqueue tap). With
    /// one backend it is [`Self::new`]'s device; with more it also offers
    /// VIRTIO_NET_F_MQ and VIRTIO_NET_F_CTRL_VQ and has a control queue.
    pub fn with_pairs(
        id: &str,
        backends: Vec<Box<dyn NetBackend>>,
        mac: Option<[u8; 6]>,
        rx_limit: Option<&RateLimiterConfig>,
        tx_limit: Option<&RateLimiterConfig>,
    ) -> Result<Self, NetError> {
        let count = backends.len();
        let pairs = u16::try_from(count)
            .ok()
            .filter(|n| (1..=MAX_QUEUE_PAIRS).contains(n))
            .ok_or(NetError::BadQueuePairs(count))?;
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
        config[8..10].copy_from_slice(&pairs.to_le_bytes());
        let mut queue_sizes = vec![QUEUE_SIZE; 2 * count];
        if count > 1 {
            features |= VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_MQ;
            queue_sizes.push(ctrl::CTRL_QUEUE_SIZE);
        }
        let rx_limiter = rx_limit.map(RateLimiter::new).transpose()?;
        let tx_limiter = tx_limit.map(RateLimiter::new).transpose()?;
        let pairs = backends
            .into_iter()
            .map(|backend| Pair {
                backend,
                rx: rx::RxState::new(),
                tx_segs: Vec::new(),
                watching: false,
                attached: true,
            })
            .collect();
        Ok(Net {
            id: id.to_string(),
            features,
            acked: 0,
            config,
            active: None,
            pairs,
            active_pairs: 1,
            queue_sizes,
            rx_limiter,
            tx_limiter,
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
        self.pairs.iter().any(|p| p.rx.holds_frame())
    }

    /// How many queue pairs the device has.
    pub fn queue_pairs(&self) -> usize {
        self.pairs.len()
    }

    /// How many queue pairs the driver uses.
    pub fn active_pairs(&self) -> usize {
        self.active_pairs
    }

    /// Finishes an activation (on the VMM thread, whose seccomp filter allows the calls):
    /// sets the tap offloads, attaches the tap queues of the pairs in use (detaching the
    /// others) and starts polling them; after a reset, stops polling and leaves only the
    /// first tap queue attached, so frames wait there (as for a driver without multiqueue)
    /// rather than in queues the next driver may never read.
    fn sync_backend(&mut self) {
        if self.active.is_none() {
            self.attach_pairs(1);
            for pair in &mut self.pairs {
                pair.watching = false;
            }
            return;
        }
        if std::mem::take(&mut self.setup_pending) {
            for pair in &mut self.pairs {
                if let Err(e) = pair.backend.set_offload(self.acked) {
                    tracing::warn!("virtio-net {}: cannot set tap offloads: {e}", self.id);
                }
            }
            self.use_pairs(self.active_pairs);
        }
    }

    /// Attaches the tap queues of the first `count` pairs and detaches the others' (a
    /// single-queue tap is left as it is).
    fn attach_pairs(&mut self, count: usize) {
        if self.pairs.len() < 2 {
            return;
        }
        for (k, pair) in self.pairs.iter_mut().enumerate() {
            let on = k < count;
            if pair.attached != on {
                match pair.backend.set_queue_enabled(on) {
                    Ok(()) => pair.attached = on,
                    Err(e) => tracing::warn!(
                        "virtio-net {}: cannot {} tap queue {k}: {e}",
                        self.id,
                        if on { "attach" } else { "detach" }
                    ),
                }
            }
        }
    }

    /// Serves the first `count` pairs from now on: their tap queues are attached and
    /// polled, the others' detached (a multiqueue tap then steers no frame to them) and
    /// their held frames dropped (the driver does not read their receive queues).
    fn use_pairs(&mut self, count: usize) {
        self.active_pairs = count;
        self.attach_pairs(count);
        for (k, pair) in self.pairs.iter_mut().enumerate() {
            let on = k < count;
            pair.watching = on;
            if !on && pair.rx.holds_frame() {
                pair.rx.clear();
                self.metrics.dropped.inc();
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
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
        let expected = self.queue_sizes.len();
        self.active = Some(ActiveQueues::new(mem, queues, interrupt, expected)?);
        self.setup_pending = true;
        if self.acked & VIRTIO_NET_F_MQ == 0 {
            // A driver without multiqueue uses the first pair only, whatever a restored
            // snapshot said (its queue 2 may be the control queue, not pair 1's receive).
            self.active_pairs = 1;
        }
        tracing::debug!(
            "virtio-net {} activated, features {:#x}, {} of {} queue pairs",
            self.id,
            self.acked,
            self.active_pairs,
            self.pairs.len()
        );
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        self.sync_backend();
        if Some(index) == self.ctrl_queue() {
            self.process_ctrl(index);
            return;
        }
        let pair = index / 2;
        match index % 2 {
            _ if pair >= self.pairs.len() => tracing::warn!(
                "virtio-net {}: notification for queue {index}, which does not exist",
                self.id
            ),
            // The driver reads only the receive queues of the pairs in use.
            0 if pair < self.active_pairs => self.process_rx(pair),
            0 => {}
            _ => self.process_tx(pair),
        }
    }

    fn host_fds(&self, fds: &mut Vec<(RawFd, u32)>) {
        for (k, pair) in self.pairs.iter().enumerate() {
            if pair.watching {
                fds.extend(pair.backend.poll_fd().map(|fd| (fd, tap_token(k))));
            }
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
        let pairs = self.active_pairs.min(self.pairs.len());
        match token {
            TOKEN_TAP => self.process_rx(0),
            TOKEN_RX_TIMER if self.rx_limiter.as_mut().is_some_and(RateLimiter::on_timer) => {
                (0..pairs).for_each(|k| self.process_rx(k))
            }
            TOKEN_TX_TIMER if self.tx_limiter.as_mut().is_some_and(RateLimiter::on_timer) => {
                (0..self.pairs.len()).for_each(|k| self.process_tx(k))
            }
            t if t > TOKEN_TAP_PAIRS && ((t - TOKEN_TAP_PAIRS) as usize) < pairs => {
                self.process_rx((t - TOKEN_TAP_PAIRS) as usize)
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
        for pair in &mut self.pairs {
            pair.rx.clear();
        }
        self.active_pairs = 1;
        self.acked = 0;
    }

    fn save_device_state(&self) -> Option<VirtioDeviceState> {
        ctrl::save_state(self)
    }

    fn restore_device_state(
        &mut self,
        state: &VirtioDeviceState,
        _mem: &GuestMemoryMmap,
    ) -> Result<(), String> {
        ctrl::restore_state(self, state)
    }
}

#[cfg(test)]
mod ctrl_tests;
#[cfg(test)]
mod restore_tests;
#[cfg(test)]
mod rx_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tx_tests;
