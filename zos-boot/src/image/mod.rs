//! The node boot image (issue #8): `zvm node image -o DIR` builds `DIR/vmlinux` and
//! `DIR/initramfs.cpio.gz` ([`build`]); inside the booted node, the service manager
//! (zvm-init, `service-manager/`) runs `zvm node prepare`, `launch` and `report`
//! ([`boot`]), configured by `zos.*` kernel command line settings ([`settings`]).

pub mod boot;
pub mod build;
pub mod cli;
pub mod disk;
pub mod identity;
pub mod settings;

use std::path::PathBuf;

/// Errors of the boot image and its boot-time services.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A build input is missing or unusable.
    #[error("{0}")]
    Input(String),
    /// A `zos.*` kernel command line setting is invalid.
    #[error("kernel command line setting {0}")]
    Setting(String),
    /// The cache disk could not be prepared.
    #[error("cache disk: {0}")]
    Disk(String),
    /// The node identity could not be loaded or created.
    #[error("node identity: {0}")]
    Identity(String),
    /// The node daemon's API answered something unusable.
    #[error("node API: {0}")]
    Http(String),
    /// The guest kernel could not be located or built.
    #[error("guest kernel: {0}")]
    Kernel(String),
    /// A required file was not found where it was looked for.
    #[error("{what} not found (looked at: {}); {hint}", looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        /// What was looked for.
        what: String,
        /// Where.
        looked: Vec<PathBuf>,
        /// How to get one.
        hint: String,
    },
}
