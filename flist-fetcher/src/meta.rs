//! The `.fl` file: a plain SQLite database, byte-compatible with rfs.
//!
//! [`Writer`] builds a new flist in a temporary file next to the destination
//! and renames it into place on [`Writer::finish`], so a half-written flist
//! never carries the final name. [`Reader`] opens an existing flist read-only
//! and checks it (header, integrity, tables) before handing out rows.

use crate::block::{Block, HASH_LEN};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, Row};
use std::collections::HashMap;
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

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |source| Error::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a new flist into a temporary file and renames it into place on success.
pub struct Writer {
    conn: Option<Connection>,
    tmp: PathBuf,
    path: PathBuf,
}

impl Writer {
    /// Starts a new flist that will be published at `path`.
    pub fn create(path: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "output path has no file name",
            ))
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        let tmp = dir.join(tmp_name);
        let conn = Connection::open_with_flags(
            &tmp,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql(path))?;
        let writer = Writer {
            conn: Some(conn),
            tmp,
            path: path.to_path_buf(),
        };
        let conn = writer.conn()?;
        // The temporary file is thrown away on failure, so no journal is needed.
        conn.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
            .map_err(sql(path))?;
        conn.execute_batch(SCHEMA).map_err(sql(path))?;
        conn.execute_batch("BEGIN").map_err(sql(path))?;
        Ok(writer)
    }

    /// The temporary file the flist is built in.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    fn conn(&self) -> Result<&Connection, Error> {
        self.conn.as_ref().ok_or_else(|| Error::Corrupt {
            path: self.path.clone(),
            reason: "writer already closed".into(),
        })
    }

    /// Inserts an inode (and its extra data) and returns its inode number.
    pub fn inode(&self, node: &Inode) -> Result<u64, Error> {
        let conn = self.conn()?;
        let e = sql(&self.path);
        let to_i64 = |v: u64, what: &str| {
            i64::try_from(v).map_err(|_| Error::Corrupt {
                path: self.path.clone(),
                reason: format!("{what} {v} does not fit in an INTEGER"),
            })
        };
        let (parent, size, rdev) = (
            to_i64(node.parent, "parent")?,
            to_i64(node.size, "size")?,
            // dev_t is unsigned; SQLite INTEGER is signed: store the same 64 bits
            node.rdev as i64,
        );
        conn.prepare_cached(
            "INSERT INTO inode (parent, name, size, uid, gid, mode, rdev, ctime, mtime) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .and_then(|mut st| {
            st.execute(params![
                parent, node.name, size, node.uid, node.gid, node.mode, rdev, node.ctime,
                node.mtime,
            ])
        })
        .map_err(&e)?;
        let ino = conn.last_insert_rowid();
        if let Some(data) = &node.data {
            conn.prepare_cached("INSERT INTO extra (ino, data) VALUES (?, ?)")
                .and_then(|mut st| st.execute(params![ino, data]))
                .map_err(&e)?;
        }
        u64::try_from(ino).map_err(|_| Error::Corrupt {
            path: self.path.clone(),
            reason: format!("negative rowid {ino}"),
        })
    }

    /// Appends a block to a file's block list (call in file order).
    pub fn block(&self, ino: u64, block: &Block) -> Result<(), Error> {
        let ino = i64::try_from(ino).map_err(|_| Error::Corrupt {
            path: self.path.clone(),
            reason: format!("inode {ino} out of range"),
        })?;
        self.conn()?
            .prepare_cached("INSERT INTO block (ino, id, key) VALUES (?, ?, ?)")
            .and_then(|mut st| st.execute(params![ino, &block.id[..], &block.key[..]]))
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Adds a route.
    pub fn route(&self, route: &Route) -> Result<(), Error> {
        self.conn()?
            .execute(
                "INSERT INTO route (start, end, url) VALUES (?, ?, ?)",
                params![route.start, route.end, route.url],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Sets a tag (a later value for the same key replaces an earlier one).
    pub fn tag(&self, key: &str, value: &str) -> Result<(), Error> {
        self.conn()?
            .execute(
                "INSERT OR REPLACE INTO tag (key, value) VALUES (?, ?)",
                params![key, value],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Commits, switches the file to the ordinary rollback journal mode, and
    /// renames it to its final name.
    pub fn finish(mut self) -> Result<(), Error> {
        let conn = self.conn.take().ok_or_else(|| Error::Corrupt {
            path: self.path.clone(),
            reason: "writer already closed".into(),
        })?;
        let e = sql(&self.path);
        conn.execute_batch("COMMIT").map_err(&e)?;
        conn.execute_batch("PRAGMA journal_mode = DELETE;")
            .map_err(&e)?;
        conn.close().map_err(|(_, err)| e(err))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn);
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Read-only access to an existing flist.
pub struct Reader {
    conn: Connection,
    path: PathBuf,
}

/// Escapes a path for use in an SQLite `file:` URI.
fn uri_path(path: &Path) -> Result<String, String> {
    let abs = std::path::absolute(path).map_err(|e| e.to_string())?;
    let s = abs
        .to_str()
        .ok_or_else(|| "path is not valid UTF-8".to_string())?;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// Checks the SQLite header: magic, and that the file holds every page the header promises.
fn check_header(path: &Path) -> Result<(), Error> {
    use std::io::Read;
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let mut header = [0u8; 100];
    if len < 100 || file.read_exact(&mut header).is_err() {
        return Err(corrupt(format!("file is only {len} bytes (truncated or empty)")));
    }
    if &header[..16] != b"SQLite format 3\0" {
        return Err(corrupt("not an SQLite database".into()));
    }
    let raw = u32::from(u16::from_be_bytes([header[16], header[17]]));
    let page_size = if raw == 1 { 65536 } else { raw };
    let be32 = |o: usize| u32::from_be_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
    let pages = be32(28);
    // The in-header size is valid when the version-valid-for counter matches.
    if pages != 0 && be32(92) == be32(24) {
        let want = u64::from(pages) * u64::from(page_size);
        if len < want {
            return Err(corrupt(format!(
                "truncated: header promises {want} bytes, file has {len}"
            )));
        }
    }
    Ok(())
}

impl Reader {
    /// Opens and validates an flist.
    pub fn open(path: &Path) -> Result<Self, Error> {
        check_header(path)?;
        let corrupt = |reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let uri = uri_path(path).map_err(corrupt)?;
        // immutable=1: never create -wal/-shm/-journal files next to the flist,
        // and read rfs flists left in WAL mode.
        let conn = Connection::open_with_flags(
            format!("file:{uri}?mode=ro&immutable=1"),
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql(path))?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| corrupt(e.to_string()))?;
        if check != "ok" {
            return Err(corrupt(format!("integrity check: {check}")));
        }
        for table in ["inode", "extra", "block", "tag", "route"] {
            let n: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                    [table],
                    |r| r.get(0),
                )
                .map_err(|e| corrupt(e.to_string()))?;
            if n == 0 {
                return Err(corrupt(format!("missing table `{table}`")));
            }
        }
        Ok(Reader {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Path this reader was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    /// All tags, sorted by key.
    pub fn tags(&self) -> Result<Vec<(String, String)>, Error> {
        let mut st = self
            .conn
            .prepare("SELECT key, value FROM tag ORDER BY key")
            .map_err(sql(&self.path))?;
        let rows = st
            .query_map([], |r| Ok((text(r, 0)?, text(r, 1)?)))
            .map_err(sql(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sql(&self.path))
    }

    /// All routes, in table order.
    pub fn routes(&self) -> Result<Vec<Route>, Error> {
        let mut st = self
            .conn
            .prepare("SELECT start, end, url FROM route ORDER BY rowid")
            .map_err(sql(&self.path))?;
        let rows = st
            .query_map([], |r| Ok((int(r, 0)?, int(r, 1)?, text(r, 2)?)))
            .map_err(sql(&self.path))?;
        let mut out = Vec::new();
        for row in rows {
            let (start, end, url) = row.map_err(sql(&self.path))?;
            let byte = |v: i64| u8::try_from(v).map_err(|_| self.corrupt(format!("route bound {v} is not a byte")));
            out.push(Route {
                start: byte(start)?,
                end: byte(end)?,
                url,
            });
        }
        Ok(out)
    }

    /// All inodes joined with their extra data, ordered by inode number.
    pub fn inodes(&self) -> Result<Vec<Inode>, Error> {
        let mut st = self
            .conn
            .prepare(
                "SELECT inode.ino, parent, name, size, uid, gid, mode, rdev, ctime, mtime, extra.data \
                 FROM inode LEFT JOIN extra ON inode.ino = extra.ino ORDER BY inode.ino",
            )
            .map_err(sql(&self.path))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    [int(r, 0)?, int(r, 1)?, int(r, 3)?, int(r, 4)?, int(r, 5)?, int(r, 6)?, int(r, 7)?],
                    text(r, 2)?,
                    [int(r, 8)?, int(r, 9)?],
                    bytes(r, 10)?,
                ))
            })
            .map_err(sql(&self.path))?;
        let mut out = Vec::new();
        for row in rows {
            let ([ino, parent, size, uid, gid, mode, rdev], name, [ctime, mtime], data) =
                row.map_err(sql(&self.path))?;
            let u64_of = |v: i64, what: &str| {
                u64::try_from(v).map_err(|_| self.corrupt(format!("inode {ino}: negative {what} {v}")))
            };
            let u32_of = |v: i64, what: &str| {
                u32::try_from(v).map_err(|_| self.corrupt(format!("inode {ino}: {what} {v} out of range")))
            };
            out.push(Inode {
                ino: u64_of(ino, "ino")?,
                parent: u64_of(parent, "parent")?,
                name,
                size: u64_of(size, "size")?,
                uid: u32_of(uid, "uid")?,
                gid: u32_of(gid, "gid")?,
                mode: u32_of(mode, "mode")?,
                // rdev is an unsigned dev_t stored in a signed column
                rdev: rdev as u64,
                ctime,
                mtime,
                data,
            });
        }
        Ok(out)
    }

    /// Every block list, keyed by inode, each in file order.
    pub fn all_blocks(&self) -> Result<HashMap<u64, Vec<Block>>, Error> {
        let mut st = self
            .conn
            .prepare("SELECT ino, id, key FROM block ORDER BY rowid")
            .map_err(sql(&self.path))?;
        let rows = st
            .query_map([], |r| Ok((int(r, 0)?, bytes(r, 1)?, bytes(r, 2)?)))
            .map_err(sql(&self.path))?;
        let mut out: HashMap<u64, Vec<Block>> = HashMap::new();
        for row in rows {
            let (ino, id, key) = row.map_err(sql(&self.path))?;
            let ino = u64::try_from(ino).map_err(|_| self.corrupt(format!("block row with inode {ino}")))?;
            let hash = |v: Option<Vec<u8>>, what: &str| -> Result<[u8; HASH_LEN], Error> {
                let v = v.unwrap_or_default();
                v.as_slice().try_into().map_err(|_| {
                    self.corrupt(format!("inode {ino}: block {what} is {} bytes, expected {HASH_LEN}", v.len()))
                })
            };
            let block = Block {
                id: hash(id, "id")?,
                key: hash(key, "key")?,
            };
            out.entry(ino).or_default().push(block);
        }
        Ok(out)
    }
}

/// Reads an INTEGER column; NULL reads as 0.
fn int(r: &Row<'_>, i: usize) -> rusqlite::Result<i64> {
    match r.get_ref(i)? {
        ValueRef::Null => Ok(0),
        ValueRef::Integer(v) => Ok(v),
        other => Err(rusqlite::Error::InvalidColumnType(
            i,
            format!("column {i}"),
            other.data_type(),
        )),
    }
}

/// Reads a TEXT (or BLOB holding UTF-8) column; NULL reads as "".
fn text(r: &Row<'_>, i: usize) -> rusqlite::Result<String> {
    match r.get_ref(i)? {
        ValueRef::Null => Ok(String::new()),
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8(t.to_vec())
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))),
        other => Err(rusqlite::Error::InvalidColumnType(
            i,
            format!("column {i}"),
            other.data_type(),
        )),
    }
}

/// Reads a BLOB (or TEXT) column as bytes; NULL reads as `None`.
fn bytes(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<Vec<u8>>> {
    match r.get_ref(i)? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(t) | ValueRef::Blob(t) => Ok(Some(t.to_vec())),
        other => Err(rusqlite::Error::InvalidColumnType(
            i,
            format!("column {i}"),
            other.data_type(),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        w.block(f, &Block { id: [1; 32], key: [2; 32] }).unwrap();
        w.block(f, &Block { id: [3; 32], key: [4; 32] }).unwrap();
        w.route(&Route { start: 0, end: 255, url: "dir:///x".into() }).unwrap();
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
            let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).unwrap();
            assert_eq!(mode, "wal");
        }
        let r = Reader::open(&path).unwrap();
        assert_eq!(r.inodes().unwrap().len(), 3);
    }
}
