//! The control queue of a multiqueue device (VIRTIO_NET_F_CTRL_VQ), and the device state a
//! snapshot keeps of it.
//!
//! A command is a chain: a device-readable header (`class`, `command`) and data, then a
//! device-writable status byte the device sets to VIRTIO_NET_OK or VIRTIO_NET_ERR. zvm
//! answers one command, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (how many queue pairs the driver
//! uses, 1 to `max_virtqueue_pairs`); every other class or command, and a malformed one,
//! gets VIRTIO_NET_ERR. A chain the device cannot answer (no status byte, a descriptor
//! loop, a buffer outside guest memory) goes back with length 0. The control queue sits
//! after the pairs' queues: at 2 * pairs with VIRTIO_NET_F_MQ, at 2 without (virtio 1.2,
//! 5.1.2).

use super::{Net, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ};
use crate::devices::virtio::mmio::VirtioDeviceState;
use crate::memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryBackend};

/// Size of the control queue.
pub(super) const CTRL_QUEUE_SIZE: u16 = 64;
/// Class of the multiqueue commands.
pub const VIRTIO_NET_CTRL_MQ: u8 = 4;
/// Command: set the number of queue pairs in use (data: le16).
pub const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
/// Status: the command was carried out.
pub const VIRTIO_NET_OK: u8 = 0;
/// Status: the command was refused.
pub const VIRTIO_NET_ERR: u8 = 1;
/// Device-readable bytes of a command zvm looks at (header and data); longer commands
/// are refused without reading the rest.
const MAX_COMMAND_LEN: usize = 64;

/// What a snapshot keeps of a multiqueue device: its pairs and how many the driver uses
/// (single-queue devices keep nothing, as before multiqueue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// Queue pairs the device has.
    pub queue_pairs: u16,
    /// Queue pairs the driver chose (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET).
    pub active_pairs: u16,
}

/// A command read from a control chain.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET with its count.
    PairsSet(u16),
    /// Anything else (the reason, logged).
    Refused(String),
}

/// Reads a control chain: the command and where its status byte goes. `None` when it
/// has no place for the status (or cannot be read): it is returned unanswered.
fn parse_command(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<(Command, vm_memory::GuestAddress), String> {
    let mut input = [0u8; MAX_COMMAND_LEN];
    let mut len = 0usize;
    let mut status = None;
    let mut more = false;
    for desc in chain {
        more = desc.has_next();
        let n = desc.len() as usize;
        if !GuestMemoryBackend::check_range(mem, desc.addr(), n.max(1)) {
            return Err(format!(
                "buffer at {:#x} outside guest memory",
                desc.addr().0
            ));
        }
        if desc.is_write_only() {
            if n > 0 && status.is_none() {
                status = Some(desc.addr());
            }
            continue;
        }
        if status.is_some() {
            return Err("a device-readable buffer after the status byte".into());
        }
        let take = n.min(MAX_COMMAND_LEN.saturating_sub(len));
        if take > 0 {
            mem.read_slice(&mut input[len..len + take], desc.addr())
                .map_err(|e| e.to_string())?;
        }
        len = len.saturating_add(n);
    }
    if more {
        return Err("the chain does not end (loop or invalid next descriptor)".into());
    }
    let status = status.ok_or("no device-writable status byte")?;
    let command = match (len, input[0], input[1]) {
        (4, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) => {
            Command::PairsSet(u16::from_le_bytes([input[2], input[3]]))
        }
        (_, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) => {
            Command::Refused(format!("VQ_PAIRS_SET with {len} bytes, not 4"))
        }
        _ if len < 2 => Command::Refused(format!("a {len}-byte command")),
        (_, class, cmd) => Command::Refused(format!("class {class} command {cmd}")),
    };
    Ok((command, status))
}

impl Net {
    /// The control queue's index, once the driver accepted it.
    pub(super) fn ctrl_queue(&self) -> Option<usize> {
        if self.acked & VIRTIO_NET_F_CTRL_VQ == 0 {
            return None;
        }
        Some(if self.acked & VIRTIO_NET_F_MQ != 0 {
            2 * self.pairs.len()
        } else {
            2
        })
    }

    /// Answers the commands on the control queue (queue `index`).
    pub(super) fn process_ctrl(&mut self, index: usize) {
        let mq = self.acked & VIRTIO_NET_F_MQ != 0;
        let max = self.pairs.len();
        let id = self.id.clone();
        let mut chosen = None;
        let Some(active) = &mut self.active else {
            return;
        };
        active.drain(index, |mem, chain| {
            let (command, status_at) = match parse_command(mem, chain) {
                Ok(parsed) => parsed,
                Err(e) => {
                    tracing::warn!("virtio-net {id}: control chain unanswered: {e}");
                    return 0;
                }
            };
            let status = match command {
                Command::PairsSet(n) if mq && (1..=max).contains(&usize::from(n)) => {
                    chosen = Some(usize::from(n));
                    VIRTIO_NET_OK
                }
                Command::PairsSet(n) => {
                    tracing::warn!(
                        "virtio-net {id}: refusing {n} queue pairs (has {max}, multiqueue {})",
                        if mq { "accepted" } else { "not accepted" }
                    );
                    VIRTIO_NET_ERR
                }
                Command::Refused(what) => {
                    tracing::debug!("virtio-net {id}: control command refused: {what}");
                    VIRTIO_NET_ERR
                }
            };
            match mem.write_obj(status, status_at) {
                Ok(()) => 1,
                Err(e) => {
                    tracing::warn!("virtio-net {id}: cannot write a control status: {e}");
                    0
                }
            }
        });
        if let Some(n) = chosen {
            tracing::debug!("virtio-net {}: the driver uses {n} queue pairs", self.id);
            self.use_pairs(n);
        }
    }
}

/// The device's own snapshot state: only a multiqueue device has one.
pub(super) fn save_state(net: &Net) -> Option<VirtioDeviceState> {
    (net.pairs.len() > 1).then_some(VirtioDeviceState::Net(NetState {
        queue_pairs: net.pairs.len() as u16,
        active_pairs: net.active_pairs as u16,
    }))
}

/// Takes a snapshot's state back (before the transport re-activates the device).
pub(super) fn restore_state(net: &mut Net, state: &VirtioDeviceState) -> Result<(), String> {
    let VirtioDeviceState::Net(state) = state else {
        return Err("a network device, but the snapshot has another device's state".into());
    };
    let (pairs, active) = (
        usize::from(state.queue_pairs),
        usize::from(state.active_pairs),
    );
    if pairs != net.pairs.len() {
        return Err(format!(
            "the snapshot's network device has {pairs} queue pairs, this one {}",
            net.pairs.len()
        ));
    }
    if !(1..=pairs).contains(&active) {
        return Err(format!("{active} of {pairs} queue pairs in use"));
    }
    net.active_pairs = active;
    Ok(())
}
