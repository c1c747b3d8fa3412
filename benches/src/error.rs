//! The benchmark's error type.

use std::path::PathBuf;

/// Everything that can stop a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A helper script (kernel or guest build) could not run or failed.
    #[error("{script} failed: {reason}")]
    Script {
        /// The script.
        script: PathBuf,
        /// What went wrong (exit status and stderr tail, or the I/O error).
        reason: String,
    },
    /// A file the benchmark needs is missing.
    #[error("{what} not found at {path}{hint}")]
    Missing {
        /// What the file is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it (starts with "; " when present).
        hint: String,
    },
    /// Reading or writing a file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A VMM process could not be started or waited for.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Packing the initramfs failed.
    #[error("cannot pack the initramfs: {0}")]
    Initramfs(#[from] initramfs::InitramfsError),
    /// Setting up the network namespace (or a socket in it) failed.
    #[error("{command} failed: {reason}")]
    Netns {
        /// The command or step.
        command: String,
        /// What went wrong.
        reason: String,
    },
    /// Writing the JSON results failed.
    #[error("cannot encode the results: {0}")]
    Json(#[from] serde_json::Error),
}

/// Shorthand for results of this crate.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Maps an I/O error on `path` to [`BenchError::Io`].
pub fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> BenchError {
    let path = path.into();
    move |source| BenchError::Io {
        action,
        path,
        source,
    }
}
