//! The pieces of zvm's log output that both executables write with: zvm's logger
//! (zvm's `api::logger`) and zvm-vmm's lean one ([`crate::lean_log`]); and what a `PUT /logger`
//! request needs checked and opened, whichever logger takes it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use tracing::Level;

/// Opens a log or metrics destination for appending without blocking: a regular file is
/// created if missing; a named pipe is opened read-write so that opening never waits for a
/// reader, and a full pipe drops lines instead of stalling zvm.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// The terminal colour of a line's level.
pub fn level_colour(level: Level) -> &'static str {
    match level {
        Level::ERROR => "\x1b[31m",
        Level::WARN => "\x1b[33m",
        Level::INFO => "\x1b[32m",
        Level::DEBUG => "\x1b[34m",
        Level::TRACE => "\x1b[35m",
    }
}

/// Errors configuring the log (`PUT /logger`).
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The log file or pipe could not be opened.
    #[error("cannot open log file {path}: {source}")]
    Open {
        /// The path given.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// A module name or level the filter does not take.
    #[error("invalid log filter '{filter}': {reason}")]
    Filter {
        /// The filter built from the request.
        filter: String,
        /// Why it was refused.
        reason: String,
    },
}

/// The level's name in a filter (`warn` for Firecracker's `Warning`).
pub fn level_name(level: api_server::model::LogLevel) -> &'static str {
    use api_server::model::LogLevel;
    match level {
        LogLevel::Error => "error",
        LogLevel::Warning => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
        LogLevel::Off => "off",
    }
}

/// Checks that `module` looks like a Rust module path (`crate::module::...`), the only
/// module filter `PUT /logger` takes.
pub fn check_module_path(module: &str) -> Result<(), LoggerError> {
    let is_path = !module.is_empty()
        && module.split("::").all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if is_path {
        Ok(())
    } else {
        Err(LoggerError::Filter {
            filter: module.to_string(),
            reason: "a module is a Rust path such as vmm::devices".into(),
        })
    }
}

/// Opens the log destination a `PUT /logger` request names, if any.
pub fn open_log_path(path: Option<&String>) -> Result<Option<File>, LoggerError> {
    path.map(|path| {
        open_append(Path::new(path)).map_err(|source| LoggerError::Open {
            path: path.clone(),
            source,
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn module_paths_and_level_names() {
        assert!(check_module_path("vmm::devices::i8042").is_ok());
        assert!(check_module_path("api_server").is_ok());
        for bad in ["", "a b", "vmm::", "::vmm", "vmm=debug", "a,b"] {
            assert!(check_module_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(level_name(api_server::model::LogLevel::Warning), "warn");
    }

    #[test]
    fn destinations_open_without_blocking() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("log");
        let mut f = open_append(&file).expect("created");
        f.write_all(b"one\n").expect("write");
        let mut f = open_append(&file).expect("reopened");
        f.write_all(b"two\n").expect("write");
        assert_eq!(
            std::fs::read_to_string(&file).expect("read"),
            "one\ntwo\n",
            "appended"
        );
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().expect("utf8")).expect("cstr");
        // SAFETY: mkfifo on a path in our temporary directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut pipe = open_append(&fifo).expect("a pipe without a reader opens at once");
        pipe.write_all(b"line\n").expect("buffered in the pipe");
        let bad = "/nonexistent/dir/log".to_string();
        let e = open_log_path(Some(&bad)).expect_err("no such dir");
        assert!(e.to_string().contains("/nonexistent/dir/log"), "{e}");
    }
}
