//! The protocol between zvm's OCI runtime (host) and its guest agent (`zvm-oci-agent`).
//!
//! One connection (vsock inside a VM, a Unix socket in host tests) carries everything:
//! requests from the host, responses and events from the agent, multiplexed by stream name
//! (`"init"` for the container's process, an exec id for a second process).
//!
//! Wire format: each frame is a `u32` big-endian length followed by that many bytes of JSON
//! ([`write_frame`], [`read_frame`], or [`FrameDecoder`] for readers driven by `poll`).
//! Frames are at most [`MAX_FRAME_LEN`] bytes; a larger length is refused before anything is
//! allocated. The first frame each way is a [`Hello`]; a peer speaking another
//! [`PROTOCOL_VERSION`] is refused with [`ProtocolError::VersionMismatch`] ([`handshake`]).

mod frame;
mod messages;
pub mod network;

pub use frame::{encode_frame, read_frame, write_frame, FrameDecoder};
pub use messages::{
    AgentMessage, Bytes, ContainerStatus, Event, ExitStatus, Hello, Request, RequestBody,
    ResponseBody, Rootfs, SHARE_MOUNT,
};

/// Re-export of the OCI runtime-spec types the messages carry.
pub use oci_spec;

use std::io::{Read, Write};

/// Version of this protocol; both ends must speak the same one.
///
/// 2: [`RequestBody::Refresh`]. [`RequestBody::Network`] came later without a new
/// version: an agent without it answers it with a "bad request" error, and only clones of
/// a template (whose agent is this build's) are sent one. [`RequestBody::Sync`] too: the
/// host falls back to a power-off with a grace period when an agent refuses it.
pub const PROTOCOL_VERSION: u32 = 2;

/// Fewest entropy bytes a [`RequestBody::Refresh`] may carry: 256 bits, what Linux needs to
/// call its CRNG initialised, so the forced reseed always takes.
pub const REFRESH_ENTROPY_MIN: usize = 32;

/// Most entropy bytes a [`RequestBody::Refresh`] may carry (the host sends 64).
pub const REFRESH_ENTROPY_MAX: usize = 512;

/// Largest frame payload (JSON bytes) either end accepts: 8 MiB.
pub const MAX_FRAME_LEN: u32 = 8 << 20;

/// vsock port the agent listens on inside the VM. The host reaches it through zvm's vsock Unix
/// socket by writing `CONNECT 1024\n` and reading `OK <port>\n`.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Stream name of the container's init process (the one `Create`/`Start` run).
pub const INIT_STREAM: &str = "init";

/// File-descriptor number of stdout in [`Event::Output`].
pub const FD_STDOUT: u8 = 1;
/// File-descriptor number of stderr in [`Event::Output`].
pub const FD_STDERR: u8 = 2;

/// Errors of framing and handshake.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Reading or writing the connection failed.
    #[error("agent connection I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection cleanly between two frames.
    #[error("agent connection closed by the peer")]
    Closed,
    /// A frame announced (or would need) more than [`MAX_FRAME_LEN`] bytes.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Announced or encoded length.
        len: u64,
        /// The limit, [`MAX_FRAME_LEN`].
        max: u32,
    },
    /// The connection ended in the middle of a frame.
    #[error("connection ended mid-frame: got {got} of {expected} bytes")]
    Truncated {
        /// Bytes the frame (header or payload) needed.
        expected: usize,
        /// Bytes that arrived before the end.
        got: usize,
    },
    /// A frame's JSON could not be encoded or decoded as the expected message.
    #[error("bad frame JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: we speak {ours}, peer {peer:?} speaks {theirs}")]
    VersionMismatch {
        /// [`PROTOCOL_VERSION`].
        ours: u32,
        /// The version in the peer's [`Hello`].
        theirs: u32,
        /// The peer's name from its [`Hello`].
        peer: String,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, ProtocolError>;

/// Sends our [`Hello`] (named `name`), then reads the peer's and checks its version.
///
/// Both ends may call this at the same time: a hello is a few dozen bytes, far less than any
/// socket buffer, so neither write blocks.
pub fn handshake<S: Read + Write>(stream: &mut S, name: &str) -> Result<Hello> {
    write_frame(stream, &Hello::new(name))?;
    let theirs: Hello = read_frame(stream)?;
    theirs.check()?;
    Ok(theirs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
