//! A jail for a VMM process, made before the VM processes any guest byte.
//!
//! [`enter`] runs in a single-threaded process and splits it in two:
//!
//! - the **supervisor** (the caller's process, still root, in the host's namespaces) puts
//!   the other half in a cgroup with cpu, memory and pids limits, forwards the signals it
//!   gets to it, waits for it, removes the cgroup and returns its exit status; it never
//!   touches guest data;
//! - the **jailed** half (PID 1 of a new PID namespace) builds the VM while still root,
//!   opening what the VM needs (KVM, disks, taps, sockets) by their host paths, then calls
//!   [`Jailed::lock_down`] before any guest instruction runs and before any other thread
//!   starts: new mount, IPC, UTS (and network) namespaces; `pivot_root` into a fresh tmpfs
//!   that holds only the paths exposed to it (bind mounts at their own paths: the VM's
//!   sockets, `/dev/null`, `/dev/urandom`); descriptors of directories pointed at
//!   `/dev/null`; resource limits; every capability dropped, a per-VM unprivileged uid and
//!   gid ([`IdLease`]), no_new_privs, and death with its supervisor.
//!
//! Everything else the VM uses reaches it as a descriptor opened before the lock-down, so
//! the jail's root holds no kernel, disk or device the VM does not need to open again.

mod cgroup;
mod handover;
mod ids;
pub mod inspect;
mod lockdown;
mod supervise;

pub use cgroup::{Cgroup, CgroupLimits, Hierarchy};
pub use handover::JailedHandover;
pub use ids::{IdLease, IdRange};
pub use lockdown::Jailed;
pub use supervise::{enter, FORWARDED_SIGNALS};

use std::path::PathBuf;

/// What a jail is made of.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// A short name: the jail's host name, and in its messages.
    pub name: String,
    /// Where the jails keep their id locks and mount points (`/run/zvm/jail`).
    pub state_dir: PathBuf,
    /// The ids a jail's uid and gid come from.
    pub ids: IdRange,
    /// Paths visible in the jail, at their own paths.
    pub exposed: Vec<Exposed>,
    /// Paths chowned to the jail's uid and gid at lock-down (sockets its clients made).
    pub owned: Vec<PathBuf>,
    /// A network namespace of its own (nothing but loopback): where every tap is already
    /// open, the VMM needs no host network.
    pub new_network: bool,
    /// cgroup limits.
    pub cgroup: CgroupLimits,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_FSIZE: the largest file the VMM may write (a snapshot's memory, a disk).
    pub file_size: u64,
    /// A host directory as the jail's root (made the jail's uid's), instead of a fresh
    /// tmpfs: for VMMs that open paths only later (API mode), as Firecracker's jailer's
    /// chroot directory.
    pub root_dir: Option<PathBuf>,
    /// Device nodes of KVM and TUN made in the jail's `/dev`, the jail's uid's, for VMMs
    /// that open them only later.
    pub kvm_devices: bool,
}

impl JailConfig {
    /// The default place of jails' state.
    pub const STATE_DIR: &'static str = "/run/zvm/jail";
    /// The environment variable that moves jails' state elsewhere (tests, hosts whose
    /// `/run` is not writable).
    pub const STATE_DIR_ENV: &'static str = "ZVM_JAIL_DIR";
    /// The environment variable holding the id range jails take their uids from,
    /// `FIRST:COUNT` (default [`IdRange::DEFAULT`]).
    pub const IDS_ENV: &'static str = "ZVM_JAIL_IDS";

    /// Jails' state directory: [`Self::STATE_DIR_ENV`]'s value, else [`Self::STATE_DIR`].
    pub fn state_dir_from_env() -> PathBuf {
        std::env::var_os(Self::STATE_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| Self::STATE_DIR.into())
    }
}

/// A host path made visible in the jail at the same path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exposed {
    /// The path (a file, directory, socket or device node).
    pub path: PathBuf,
    /// Whether the jail may write there (else it is mounted read-only).
    pub writable: bool,
}

impl Exposed {
    /// `path`, read-only.
    pub fn read_only(path: impl Into<PathBuf>) -> Exposed {
        Exposed {
            path: path.into(),
            writable: false,
        }
    }

    /// `path`, writable.
    pub fn writable(path: impl Into<PathBuf>) -> Exposed {
        Exposed {
            path: path.into(),
            writable: true,
        }
    }
}

/// The two halves [`enter`] returns in.
#[derive(Debug)]
pub enum Side {
    /// The supervisor, once the jailed half has ended: its exit status as a shell would
    /// give it (128 + the signal when killed).
    Supervisor(i32),
    /// The jailed half: build the VM, then [`Jailed::lock_down`].
    Jailed(Box<Jailed>),
}

/// Errors making a jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The host cannot give a jail (not root, no namespaces, no cgroup controller, no free
    /// id): never answered by running unjailed.
    #[error("cannot jail the VMM: {0}")]
    Unavailable(String),
    /// A step of making the jail failed.
    #[error("jail: cannot {what}: {source}")]
    Io {
        /// The step.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl JailError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
        let what = what.into();
        move |source| JailError::Io { what, source }
    }

    pub(crate) fn last_os(what: impl Into<String>) -> JailError {
        JailError::Io {
            what: what.into(),
            source: std::io::Error::last_os_error(),
        }
    }
}

/// Whether this process may make jails (root with CAP_SYS_ADMIN), and why not.
pub fn check_host() -> Result<(), JailError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::Unavailable(
            "it needs root (namespaces, pivot_root, cgroups, a uid of its own)".into(),
        ));
    }
    Hierarchy::detect().map(|_| ())
}
