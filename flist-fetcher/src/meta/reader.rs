//! Reading and validating an existing `.fl` file.

use super::{sql, Error, Inode, Route};
use crate::block::{Block, HASH_LEN};
use rusqlite::config::DbConfig;
use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, Row};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest string or blob SQLite may make while reading an flist (names are at most
/// 255 bytes, symlink targets 4 KiB; a crafted schema could otherwise have SQLite build
/// values of up to 1 GB, e.g. in a generated column).
pub const MAX_VALUE_LEN: i32 = 1 << 20;
/// How long SQLite may work for one reader, all its queries together; a crafted database
/// that keeps it busy longer is refused.
pub const MAX_READ_TIME: Duration = Duration::from_secs(300);

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
        return Err(corrupt(format!(
            "file is only {len} bytes (truncated or empty)"
        )));
    }
    if &header[..16] != b"SQLite format 3\0" {
        return Err(corrupt("not an SQLite database".into()));
    }
    let raw = u32::from(u16::from_be_bytes([header[16], header[17]]));
    let page_size = if raw == 1 { 65536 } else { raw };
    let be32 =
        |o: usize| u32::from_be_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
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

/// SQLite's settings for a database anyone may have made: defensive mode, no trust in the
/// schema (no functions with side effects in views, triggers or generated columns), values
/// of at most [`MAX_VALUE_LEN`], nothing attached, and an interrupt once `budget` is spent.
fn harden(conn: &Connection, budget: Duration) -> rusqlite::Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_LEN)?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    let deadline = Instant::now() + budget;
    conn.progress_handler(10_000, Some(move || Instant::now() > deadline));
    Ok(())
}

/// [`harden`] for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn harden_for_tests(conn: &Connection, budget: Duration) {
    harden(conn, budget).expect("harden");
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
        harden(&conn, MAX_READ_TIME).map_err(sql(path))?;
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
            let byte = |v: i64| {
                u8::try_from(v).map_err(|_| self.corrupt(format!("route bound {v} is not a byte")))
            };
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
                    [
                        int(r, 0)?,
                        int(r, 1)?,
                        int(r, 3)?,
                        int(r, 4)?,
                        int(r, 5)?,
                        int(r, 6)?,
                        int(r, 7)?,
                    ],
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
                u64::try_from(v)
                    .map_err(|_| self.corrupt(format!("inode {ino}: negative {what} {v}")))
            };
            let u32_of = |v: i64, what: &str| {
                u32::try_from(v)
                    .map_err(|_| self.corrupt(format!("inode {ino}: {what} {v} out of range")))
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
            let ino = u64::try_from(ino)
                .map_err(|_| self.corrupt(format!("block row with inode {ino}")))?;
            let hash = |v: Option<Vec<u8>>, what: &str| -> Result<[u8; HASH_LEN], Error> {
                let v = v.unwrap_or_default();
                v.as_slice().try_into().map_err(|_| {
                    self.corrupt(format!(
                        "inode {ino}: block {what} is {} bytes, expected {HASH_LEN}",
                        v.len()
                    ))
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
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8(t.to_vec()).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        }),
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
