//! The `.fl` file: a plain SQLite database, byte-compatible with rfs.
//!
//! [`Writer`] builds a new flist in a temporary file next to the destination
//! and renames it into place on [`Writer::finish`], so a half-written flist
//! never carries the final name. [`Reader`] opens an existing flist read-only
//! and checks it (header, integrity, tables) before handing out rows.

use std::path::{Path, PathBuf};

/// The rfs schema (threefoldtech/rfs `schema/schema.sql`), statement for statement.
pub const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS inode (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER,
    name VARCHAR(255),
    size INTEGER,
    uid INTEGER,
    gid INTEGER,
    mode INTEGER,
    rdev INTEGER,
    ctime INTEGER,
    mtime INTEGER
);
CREATE INDEX IF NOT EXISTS parents ON inode (parent);
CREATE INDEX IF NOT EXISTS names ON inode (name);
CREATE TABLE IF NOT EXISTS extra (
    ino INTEGER PRIMARY KEY,
    data VARCHAR(4096)
);
CREATE TABLE IF NOT EXISTS block (
    ino INTEGER,
    id VARCHAR(32),
    key VARCHAR(32)
);
CREATE INDEX IF NOT EXISTS block_ino ON block (ino);
CREATE TABLE IF NOT EXISTS tag (
    key VARCHAR(10) PRIMARY KEY,
    value VARCHAR(255)
);
CREATE TABLE IF NOT EXISTS route (
    start integer,
    end integer,
    url VARCHAR(2048)
);
";

/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// Errors reading or writing an `.fl` file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Filesystem error around the flist file.
    #[error("{path}: {source}")]
    Io {
        /// flist path
        path: PathBuf,
        /// underlying error
        #[source]
        source: std::io::Error,
    },
    /// The file is not a usable flist (truncated, not SQLite, missing tables, bad rows).
    #[error("{path}: not a valid flist: {reason}")]
    Corrupt {
        /// flist path
        path: PathBuf,
        /// what is wrong
        reason: String,
    },
    /// SQLite reported an error.
    #[error("{path}: sqlite: {source}")]
    Sqlite {
        /// flist path
        path: PathBuf,
        /// underlying error
        #[source]
        source: rusqlite::Error,
    },
}

/// One row of the `inode` table joined with its `extra` data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inode {
    /// Inode number (1 is the root).
    pub ino: u64,
    /// Parent inode number (0 for the root).
    pub parent: u64,
    /// Entry name (`/` for the root).
    pub name: String,
    /// Size in bytes (regular files).
    pub size: u64,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id (read from the gid column, unlike rfs).
    pub gid: u32,
    /// Raw `st_mode` (type and permission bits).
    pub mode: u32,
    /// Device number for character/block devices.
    pub rdev: u64,
    /// Change time (seconds since the epoch).
    pub ctime: i64,
    /// Modification time (seconds since the epoch).
    pub mtime: i64,
    /// Extra data: the symlink target.
    pub data: Option<Vec<u8>>,
}

/// One row of the `route` table: objects whose id starts with a byte in
/// `start..=end` live in the store at `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// First id byte (inclusive).
    pub start: u8,
    /// Last id byte (inclusive).
    pub end: u8,
    /// Store URL.
    pub url: String,
}

pub(crate) fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |source| Error::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) mod reader;
mod writer;

pub use reader::Reader;
pub use writer::Writer;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::block::Block;
    use rusqlite::Connection;

    fn sample(dir: &Path) -> PathBuf {
        let path = dir.join("t.fl");
        let w = Writer::create(&path).unwrap();
        let root = w
            .inode(&Inode {
                name: "/".into(),
                mode: libc::S_IFDIR | 0o755,
                ..Inode::default()
            })
            .unwrap();
        assert_eq!(root, ROOT_INO);
        let f = w
            .inode(&Inode {
                parent: root,
                name: "f".into(),
                uid: 5,
                gid: 7,
                mode: libc::S_IFREG | 0o644,
                ..Inode::default()
            })
            .unwrap();
        w.inode(&Inode {
            parent: root,
            name: "l".into(),
            mode: libc::S_IFLNK | 0o777,
            data: Some(b"f".to_vec()),
            ..Inode::default()
        })
        .unwrap();
        w.block(
            f,
            &Block {
                id: [1; 32],
                key: [2; 32],
            },
        )
        .unwrap();
        w.block(
            f,
            &Block {
                id: [3; 32],
                key: [4; 32],
            },
        )
        .unwrap();
        w.route(&Route {
            start: 0,
            end: 255,
            url: "dir:///x".into(),
        })
        .unwrap();
        w.tag("version", "v1").unwrap();
        w.finish().unwrap();
        path
    }

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let r = Reader::open(&path).unwrap();
        let nodes = r.inodes().unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!((nodes[1].uid, nodes[1].gid), (5, 7));
        assert_eq!(nodes[2].data.as_deref(), Some(&b"f"[..]));
        let blocks = r.all_blocks().unwrap();
        assert_eq!(blocks[&2][0].id, [1; 32]);
        assert_eq!(blocks[&2][1].key, [4; 32]);
        assert_eq!(r.tags().unwrap(), vec![("version".into(), "v1".into())]);
        assert_eq!(r.routes().unwrap()[0].url, "dir:///x");
        // only the final file remains
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn truncated_and_garbage_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let data = std::fs::read(&path).unwrap();
        std::fs::write(&path, &data[..data.len() / 2]).unwrap();
        assert!(matches!(Reader::open(&path), Err(Error::Corrupt { .. })));
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(Reader::open(&path), Err(Error::Corrupt { .. })));
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        assert!(matches!(Reader::open(&path), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::create(&dir.path().join("x.fl")).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn reads_wal_mode_flist() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        {
            let c = Connection::open(&path).unwrap();
            let mode: String = c
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
        }
        let r = Reader::open(&path).unwrap();
        assert_eq!(r.inodes().unwrap().len(), 3);
    }
}
