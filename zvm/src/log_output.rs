//! The pieces of zvm's log output that both executables write with: zvm's logger
//! (`api::logger`) and zvm-vmm's lean one (`lean_log`).

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
