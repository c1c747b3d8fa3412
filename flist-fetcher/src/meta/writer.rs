//! Building a new `.fl` file.

use super::{sql, Error, Inode, Route, SCHEMA};
use crate::block::Block;
use rusqlite::{params, Connection, OpenFlags};
use std::path::{Path, PathBuf};

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
        tmp_name.push(format!(
            ".tmp-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
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
