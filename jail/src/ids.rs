//! Per-VM user and group ids: one id of a configured range per live jail, held by an
//! exclusive lock on a file named after it, so two jails never share an id and the id of
//! a jail whose supervisor died is free again at once.

use crate::JailError;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::str::FromStr;

/// The ids jails take their uid and gid from: `first`, `first + 1`, ... (`count` of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdRange {
    /// The first id.
    pub first: u32,
    /// How many ids.
    pub count: u32,
}

impl IdRange {
    /// zvm's default: 65536 ids from 900000, away from the usual subordinate ranges
    /// (100000 and up, 65536 per user) and from system and login users.
    pub const DEFAULT: IdRange = IdRange {
        first: 900_000,
        count: 65_536,
    };
}

impl Default for IdRange {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FromStr for IdRange {
    type Err = String;

    /// `FIRST:COUNT`, e.g. `900000:65536`; never id 0 and never past `u32::MAX - 1`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (first, count) = text
            .split_once(':')
            .ok_or_else(|| format!("invalid id range '{text}': expected FIRST:COUNT"))?;
        let first: u32 = first
            .trim()
            .parse()
            .map_err(|_| format!("invalid first id in '{text}'"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("invalid id count in '{text}'"))?;
        if first == 0 || count == 0 {
            return Err(format!(
                "id range '{text}' must start above 0 and not be empty"
            ));
        }
        if u64::from(first) + u64::from(count) > u64::from(u32::MAX) {
            return Err(format!("id range '{text}' passes the largest id"));
        }
        Ok(IdRange { first, count })
    }
}

/// An id held for one jail's life (its supervisor keeps the lock).
#[derive(Debug)]
pub struct IdLease {
    id: u32,
    _lock: File,
}

impl IdLease {
    /// The uid (and gid) of the jail.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Takes a free id of `range`, its lock file in `dir` (made, mode 0700, if missing).
    /// The search starts at an offset taken from the process id, so jails started together
    /// seldom try the same ids.
    pub fn claim(range: IdRange, dir: &Path) -> Result<IdLease, JailError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(JailError::io(format!("make {}", dir.display())))?;
        let start = std::process::id() % range.count;
        for step in 0..range.count {
            let id = range.first + (start + step) % range.count;
            let path = dir.join(id.to_string());
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(JailError::io(format!("open {}", path.display())))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(IdLease { id, _lock: file });
            }
        }
        Err(JailError::Unavailable(format!(
            "every id of {}:{} is in use by a running jail",
            range.first, range.count
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_bad_ones_are_refused() {
        assert_eq!(
            "900000:16".parse::<IdRange>().unwrap(),
            IdRange {
                first: 900_000,
                count: 16
            }
        );
        for bad in ["", "5", "0:10", "10:0", "x:1", "4294967290:100", "-1:2"] {
            assert!(bad.parse::<IdRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn two_leases_never_share_an_id_and_a_dropped_one_is_free_again() {
        let dir = tempfile::tempdir().unwrap();
        let range = IdRange {
            first: 5000,
            count: 2,
        };
        let a = IdLease::claim(range, dir.path()).unwrap();
        let b = IdLease::claim(range, dir.path()).unwrap();
        assert_ne!(a.id(), b.id());
        assert!(matches!(
            IdLease::claim(range, dir.path()),
            Err(JailError::Unavailable(_))
        ));
        let freed = a.id();
        drop(a);
        assert_eq!(IdLease::claim(range, dir.path()).unwrap().id(), freed);
    }
}
