//! The messages carried in frames.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{ProtocolError, Result, PROTOCOL_VERSION};

/// First frame each way: who is speaking and which protocol version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// Free-form name of the sender (e.g. `"zvm-oci-agent 0.1.0"`), for error messages.
    pub name: String,
}

impl Hello {
    /// Our hello, with [`PROTOCOL_VERSION`].
    pub fn new(name: &str) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            name: name.to_owned(),
        }
    }

    /// Refuses a peer whose version differs from ours.
    pub fn check(&self) -> Result<()> {
        if self.version == PROTOCOL_VERSION {
            Ok(())
        } else {
            Err(ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: self.version,
                peer: self.name.clone(),
            })
        }
    }
}

/// A request from the host; answered by exactly one [`AgentMessage::Response`] with the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the host; echoed in the response.
    pub id: u64,
    /// What to do.
    pub body: RequestBody,
}

/// Where the agent mounts the container's virtio-fs share (see [`RequestBody::Create`]).
pub const SHARE_MOUNT: &str = "/run/zvm/share";

/// Where the container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rootfs {
    /// A block device the agent mounts (read-write: a read-only root is made read-only
    /// once its mount points exist, as runc does).
    BlockDevice {
        /// Device path in the guest, e.g. `/dev/vda`.
        device: String,
        /// Filesystem type, e.g. `ext4`.
        fstype: String,
    },
    /// An existing directory: host tests, or a directory of the container's virtio-fs
    /// share (under [`SHARE_MOUNT`], mounted first).
    Directory {
        /// Absolute path of the directory.
        path: String,
    },
}

/// The operations the host asks of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestBody {
    /// Sets the container up to "created": its process is forked into its namespaces, configured
    /// and waits for [`RequestBody::Start`]. Answer: [`ResponseBody::Created`].
    Create {
        /// The bundle's config.json.
        spec: Box<oci_spec::runtime::Spec>,
        /// The root filesystem.
        rootfs: Rootfs,
        /// Give the process a pty (its output arrives as stream `init`, fd 1).
        terminal: bool,
        /// The tag of the container's virtio-fs share, which the agent mounts on
        /// [`SHARE_MOUNT`] before anything else: the host puts the sources of the spec's
        /// bind mounts there (and their `source` names them under [`SHARE_MOUNT`]), and
        /// the root file system when it comes over virtio-fs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        share: Option<String>,
    },
    /// Releases the created process: it execs `spec.process.args`. Answer: [`ResponseBody::Done`].
    Start,
    /// Runs a second process in the container's namespaces and cgroup; its output and exit
    /// arrive as events on stream `exec_id`. Answer: [`ResponseBody::Started`].
    Exec {
        /// Stream name of the new process (unique, not `"init"`).
        exec_id: String,
        /// What to run.
        process: Box<oci_spec::runtime::Process>,
    },
    /// Sends `signal` to the process of `stream` (`"init"` or an exec id); with `all`, to every
    /// process of the container. Answer: [`ResponseBody::Done`].
    Signal {
        /// `"init"` or an exec id.
        stream: String,
        /// Signal number.
        signal: i32,
        /// Signal all the container's processes.
        all: bool,
    },
    /// Writes to the stdin of a stream's process. Answer: [`ResponseBody::Done`].
    Stdin {
        /// `"init"` or an exec id.
        stream: String,
        /// The bytes.
        data: Bytes,
    },
    /// Closes the stdin of a stream's process. Answer: [`ResponseBody::Done`].
    CloseStdin {
        /// `"init"` or an exec id.
        stream: String,
    },
    /// Resizes a stream's pty. Answer: [`ResponseBody::Done`].
    ResizeTerminal {
        /// `"init"` or an exec id.
        stream: String,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Answer: [`ResponseBody::State`].
    State,
    /// Answer: [`ResponseBody::Pids`].
    Ps,
    /// Syncs, unmounts and powers the VM off (a host-process agent just exits). Answer:
    /// [`ResponseBody::Done`], sent before the power-off.
    Shutdown,
    /// Writes everything the guest holds for its file systems out (`sync(2)`): data the
    /// container wrote to shares (virtio-fs) and disks has reached the host once the answer
    /// comes, so the host may then stop the VM at once instead of waiting for it to power
    /// off. A host-process agent (tests) changes nothing system-wide. Answer:
    /// [`ResponseBody::Done`], sent after the sync. Added without a new version: an older
    /// agent answers it with a "bad request" error, and the host then falls back to
    /// [`RequestBody::Shutdown`] and a grace period.
    Sync,
    /// Makes a VM restored from a snapshot its own: mixes `entropy` into the kernel's pool
    /// (credited) and reseeds the kernel's CRNG, sets the wall clock, and sets the host name
    /// when given. Valid with or without a container; the host sends it right after a restore,
    /// before anything else. Answer: [`ResponseBody::Done`].
    ///
    /// The agent refuses entropy outside [`REFRESH_ENTROPY_MIN`](crate::REFRESH_ENTROPY_MIN)..=
    /// [`REFRESH_ENTROPY_MAX`](crate::REFRESH_ENTROPY_MAX)
    /// bytes, a zero clock, and a host name that is empty, longer than 64 bytes or contains
    /// NUL or `/`, before changing anything. A host-process agent (tests) checks the request
    /// the same way but changes nothing system-wide.
    Refresh {
        /// Random bytes from the host's OS RNG (all of their bits are credited).
        entropy: Bytes,
        /// The host's `CLOCK_REALTIME`: nanoseconds since the Unix epoch.
        realtime_ns: u64,
        /// The VM's new host name, if it changes.
        #[serde(default)]
        hostname: Option<String>,
    },
    /// Gives a VM restored from a template its own network: each named interface gets its
    /// MAC (set while it is down), its address and is brought up; the gateway, when given,
    /// becomes the default route. The host sends it after [`RequestBody::Refresh`], before
    /// Create. Both ends refuse a request [`crate::network::check`] refuses, before
    /// changing anything. Answer: [`ResponseBody::Done`].
    Network {
        /// The interfaces to configure.
        interfaces: Vec<crate::network::NetInterface>,
    },
}

/// Lifecycle state of the container in the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    /// Forked and configured, waiting for Start.
    Created,
    /// Started and not yet exited.
    Running,
    /// The init process has exited.
    Stopped,
}

impl fmt::Display for ContainerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Stopped => "stopped",
        })
    }
}

/// Successful answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseBody {
    /// Done; nothing to report.
    Done,
    /// Answer to Create: the container's init process (guest pid).
    Created {
        /// Guest pid of the init process.
        pid: i32,
    },
    /// Answer to Exec: the new process (guest pid).
    Started {
        /// Guest pid of the exec'd process.
        pid: i32,
    },
    /// Answer to State: what a host that (re)connects needs to know about the container. The
    /// events it missed while away follow its Hello (see [`Event`]).
    State {
        /// Lifecycle state.
        status: ContainerStatus,
        /// Guest pid of the init process, while it exists.
        pid: Option<i32>,
        /// How the init process ended, once stopped.
        exit: Option<ExitStatus>,
        /// Guest pid the init process had, also once it has ended (absent from agents older
        /// than this field).
        #[serde(default)]
        init_pid: Option<i32>,
        /// Exec ids whose process is still running, so a host knows which streams will still
        /// send events.
        #[serde(default)]
        execs: Vec<String>,
    },
    /// Answer to Ps: guest pids of the container's processes.
    Pids {
        /// The pids.
        pids: Vec<i32>,
    },
}

/// Everything the agent sends after its hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMessage {
    /// The answer to request `id`: a body, or an error message.
    Response {
        /// The request's id.
        id: u64,
        /// The outcome.
        result: std::result::Result<ResponseBody, String>,
    },
    /// Something happened in the container.
    Event(Event),
}

/// Unsolicited news from the agent.
///
/// While no host is connected, the agent keeps every `Exited` event and the newest 1 MiB of
/// `Output` events (older ones are dropped); the next host gets them, in order, right after
/// the Hellos.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A process wrote to stdout (fd 1) or stderr (fd 2); a pty's output is fd 1.
    Output {
        /// `"init"` or an exec id.
        stream: String,
        /// 1 or 2.
        fd: u8,
        /// The bytes.
        data: Bytes,
    },
    /// A process ended. Sent after the last Output of that stream.
    Exited {
        /// `"init"` or an exec id.
        stream: String,
        /// How it ended.
        status: ExitStatus,
    },
}

/// How a process ended: exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, when the process exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed the process.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// A normal exit with `code`.
    pub fn exited(code: i32) -> Self {
        Self {
            code: Some(code),
            signal: None,
        }
    }

    /// Death by `signal`.
    pub fn signaled(signal: i32) -> Self {
        Self {
            code: None,
            signal: Some(signal),
        }
    }

    /// The status a shell reports: the exit code, or 128 + signal (255 when neither is known).
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 255,
        }
    }
}

/// Raw bytes, serialised as a standard base64 string.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({:?})", String::from_utf8_lossy(&self.0))
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Self(v.to_vec())
    }
}

impl From<&str> for Bytes {
    fn from(v: &str) -> Self {
        Self(v.as_bytes().to_vec())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Bytes)
            .map_err(serde::de::Error::custom)
    }
}
