//! VM processes the daemon does not hold a handle to: pid files, and the check that a
//! pid still names *our* process (its `/proc/<pid>/cmdline` carries the deployment's
//! marker and its start time matches), so a reused pid is never adopted or signalled.

use std::path::{Path, PathBuf};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// Reading or writing a pid file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What a pid file records.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PidRecord {
    /// The process id.
    pub pid: u32,
    /// Its start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot).
    pub start_time: u64,
    /// A string its command line contains.
    pub marker: String,
}

/// Start time of `pid` (clock ticks since boot), if it exists.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts with field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive and not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether `/proc/<pid>/cmdline` contains `marker` as one of its arguments (or part of one).
pub fn cmdline_has(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .any(|arg| String::from_utf8_lossy(arg).contains(marker))
        })
        .unwrap_or(false)
}

impl PidRecord {
    /// Records `pid` now (reads its start time).
    pub fn of(pid: u32, marker: &str) -> PidRecord {
        PidRecord {
            pid,
            start_time: start_time(pid).unwrap_or(0),
            marker: marker.to_string(),
        }
    }

    /// Whether the recorded process still runs: same pid, same start time, marker in its
    /// command line, not a zombie.
    pub fn is_running(&self) -> bool {
        alive(self.pid)
            && start_time(self.pid) == Some(self.start_time)
            && cmdline_has(self.pid, &self.marker)
    }

    /// Writes the record to `path` (atomically).
    pub fn save(&self, path: &Path) -> Result<(), ProcError> {
        let io = |source| ProcError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(self).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a record; `None` when absent, unreadable, not a regular file or implausibly
    /// large (a FIFO or a link to a device in its place must not block or flood the node).
    pub fn load(path: &Path) -> Option<PidRecord> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        const MAX: u64 = 64 << 10;
        if !std::fs::symlink_metadata(path).ok()?.is_file() {
            return None;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .ok()?;
        let mut bytes = Vec::new();
        file.take(MAX + 1).read_to_end(&mut bytes).ok()?;
        if bytes.len() as u64 > MAX {
            return None;
        }
        serde_json::from_slice(&bytes).ok()
    }
}

/// Sends `signal` to the recorded process if it is still ours.
pub fn signal(record: &PidRecord, signal: i32) -> bool {
    if !record.is_running() {
        return false;
    }
    let Ok(pid) = i32::try_from(record.pid) else {
        return false;
    };
    // SAFETY: kill(2) with a pid we just verified; no memory is involved.
    unsafe { libc::kill(pid, signal) == 0 }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_is_recognised_by_marker_and_start_time() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        // spawn() returns once exec has begun; the kernel sets the new command line a
        // moment later, so wait until /proc shows it.
        for _ in 0..200 {
            if cmdline_has(child.id(), "1000") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let rec = PidRecord::of(child.id(), "1000");
        assert!(rec.is_running());
        // Same pid, other marker: not ours (a reused pid).
        assert!(!PidRecord {
            marker: "zvm-node-x".into(),
            ..rec.clone()
        }
        .is_running());
        // Same pid and marker but another start time: a reused pid too.
        assert!(!PidRecord {
            start_time: rec.start_time + 1,
            ..rec.clone()
        }
        .is_running());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.pid");
        rec.save(&path).unwrap();
        assert_eq!(PidRecord::load(&path), Some(rec.clone()));
        assert!(signal(&rec, libc::SIGKILL));
        child.wait().unwrap();
        assert!(!rec.is_running());
        assert!(!signal(&rec, libc::SIGKILL));
        assert_eq!(PidRecord::load(&dir.path().join("absent")), None);
    }
}
