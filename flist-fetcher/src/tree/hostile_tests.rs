//! Crafted `.fl` databases: what an attacker can put in SQLite beyond what rfs writes.
//! Each must end within its deadline with a clear error, and never grow without bound.

use super::*;
use std::path::Path;
use std::time::{Duration, Instant};

const DIR: u32 = libc::S_IFDIR | 0o755;
const FILE: u32 = libc::S_IFREG | 0o644;

/// A database with rfs's tables, but `inode` as `inode_table` declares it (so a test can
/// drop the primary key or add generated columns), and `rows` inserted into it.
fn crafted(dir: &Path, inode_table: &str, rows: &[String]) -> PathBuf {
    let path = dir.join("crafted.fl");
    let conn = rusqlite::Connection::open(&path).expect("create");
    let mut sql = format!(
        "{inode_table};
         CREATE TABLE extra (ino INTEGER, data VARCHAR(4096));
         CREATE TABLE block (ino INTEGER, id VARCHAR(32), key VARCHAR(32));
         CREATE TABLE tag (key VARCHAR(10) PRIMARY KEY, value VARCHAR(255));
         CREATE TABLE route (start integer, end integer, url VARCHAR(2048));"
    );
    for row in rows {
        sql.push_str(row);
        sql.push(';');
    }
    conn.execute_batch(&sql).expect("fill");
    path
}

const PLAIN_INODE: &str = "CREATE TABLE inode (ino INTEGER, parent INTEGER, name VARCHAR(255), \
     size INTEGER, uid INTEGER, gid INTEGER, mode INTEGER, rdev INTEGER, ctime INTEGER, \
     mtime INTEGER)";

fn row(ino: u64, parent: u64, name: &str, size: i64, mode: u32) -> String {
    format!("INSERT INTO inode VALUES ({ino}, {parent}, '{name}', {size}, 0, 0, {mode}, 0, 0, 0)")
}

fn load(path: &Path) -> Result<Tree, Error> {
    Tree::load(&Reader::open(path)?)
}

#[test]
fn repeated_inode_numbers_cannot_multiply_the_tree() {
    // Two rows per level with the same number: followed as a tree, 40 levels would be
    // 2^40 entries.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rows = vec![row(1, 0, "/", 0, DIR)];
    for level in 0..40u64 {
        rows.push(row(level + 2, level + 1, "a", 0, DIR));
        rows.push(row(level + 2, level + 1, "b", 0, DIR));
    }
    let start = Instant::now();
    let r = load(&crafted(dir.path(), PLAIN_INODE, &rows));
    assert!(matches!(r, Err(Error::DuplicateInode(2))), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // The same through `extra`: two data rows for one inode repeat it in the join.
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = [
        row(1, 0, "/", 0, DIR),
        row(2, 1, "l", 0, libc::S_IFLNK | 0o777),
        "INSERT INTO extra VALUES (2, 'a')".to_string(),
        "INSERT INTO extra VALUES (2, 'b')".to_string(),
    ];
    let r = load(&crafted(dir.path(), PLAIN_INODE, &rows));
    assert!(matches!(r, Err(Error::DuplicateInode(2))), "{r:?}");
}

#[test]
fn a_generated_column_cannot_make_sqlite_build_huge_values() {
    // Every name computed as 500 MB of 'x': refused at SQLite's value limit (1 MiB).
    let dir = tempfile::tempdir().expect("tempdir");
    let table = "CREATE TABLE inode (ino INTEGER PRIMARY KEY, parent INTEGER, \
         name TEXT GENERATED ALWAYS AS (printf('%.*c', 500000000, 'x')) VIRTUAL, \
         size INTEGER, uid INTEGER, gid INTEGER, mode INTEGER, rdev INTEGER, \
         ctime INTEGER, mtime INTEGER)";
    let rows = [
        "INSERT INTO inode (ino, parent, size, uid, gid, mode, rdev, ctime, mtime) \
         VALUES (1, 0, 0, 0, 0, 16877, 0, 0, 0)"
            .to_string(),
    ];
    let path = crafted(dir.path(), table, &rows);
    let start = Instant::now();
    // SQLite gives up on the value (an error, or no value); it never hands over 500 MB.
    match load(&path) {
        Ok(tree) => assert!(tree
            .entries
            .iter()
            .all(|e| e.inode.name.len() <= crate::meta::reader::MAX_VALUE_LEN as usize)),
        Err(e) => assert!(e.to_string().contains("too big"), "{e}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn absurd_sizes_are_refused_without_overflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = [
        row(1, 0, "/", 0, DIR),
        row(2, 1, "big", i64::MAX, FILE),
        row(3, 1, "big2", i64::MAX, FILE),
    ];
    let r = load(&crafted(dir.path(), PLAIN_INODE, &rows));
    assert!(
        matches!(r, Err(Error::SizeBeyondBlocks { blocks: 0, .. })),
        "{r:?}"
    );
    // A negative size is not a size.
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = [row(1, 0, "/", 0, DIR), row(2, 1, "neg", -5, FILE)];
    let r = load(&crafted(dir.path(), PLAIN_INODE, &rows));
    let text = r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(text.contains("negative size"), "{text}");
}

#[test]
fn sqlite_work_is_bounded_in_time() {
    let conn = rusqlite::Connection::open_in_memory().expect("memory db");
    crate::meta::reader::harden_for_tests(&conn, Duration::from_millis(200));
    let start = Instant::now();
    let r: rusqlite::Result<i64> = conn.query_row(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
        [],
        |r| r.get(0),
    );
    assert!(r.is_err(), "an endless query was interrupted: {r:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
}
