//! Bad input gives one clear error and never a half-written or escaping file.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flist_fetcher::meta::{Inode, Route, Writer};
use flist_fetcher::{
    inspect, pack, pack::Error as PackError, store, unpack, unpack::Error as UnpackError,
};
use flist_fetcher::{PackOptions, UnpackOptions};
use std::path::{Path, PathBuf};

struct Fixture {
    tmp: tempfile::TempDir,
    fl: PathBuf,
    store: PathBuf,
}

/// A small tree: `d/big` (3 blocks) and `small`, packed into a flat dir store.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/big"), noise(2 * BLOCK + 100, 5)).unwrap();
    std::fs::write(src.join("small"), b"small file").unwrap();
    let store = tmp.path().join("store");
    let fl = tmp.path().join("t.fl");
    let opts = PackOptions {
        stores: vec![format!("dir://{}", store.display())],
        jobs: 2,
        ..PackOptions::default()
    };
    pack(&src, &fl, &opts).unwrap();
    Fixture { tmp, fl, store }
}

fn blocks_of(fl: &Path, name: &str) -> Vec<[u8; 32]> {
    let c = rusqlite::Connection::open(fl).unwrap();
    let mut st = c
        .prepare(
            "SELECT id FROM block JOIN inode USING (ino) WHERE inode.name = ? ORDER BY block.rowid",
        )
        .unwrap();
    st.query_map([name], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|v| v.unwrap().try_into().unwrap())
        .collect()
}

fn hex(id: &[u8; 32]) -> String {
    flist_fetcher::block::to_hex(id)
}

fn assert_no_leftovers(dir: &Path) {
    let tmps = find_names(dir, ".flist-tmp");
    assert!(tmps.is_empty(), "temporary files left: {tmps:?}");
}

#[test]
fn truncated_flist() {
    let f = fixture();
    let data = std::fs::read(&f.fl).unwrap();
    for len in [data.len() / 2, 4096, 50, 0] {
        std::fs::write(&f.fl, &data[..len]).unwrap();
        let e = inspect(&f.fl).unwrap_err();
        assert!(e.to_string().contains("not a valid flist"), "{len}: {e}");
        let target = f.tmp.path().join("t");
        let e = unpack(&f.fl, &target, &UnpackOptions::new(&f.tmp.path().join("c"))).unwrap_err();
        assert!(matches!(e, UnpackError::Meta(_)), "{e}");
        assert!(!target.exists(), "nothing is created for a bad flist");
    }
    let e = inspect(&f.tmp.path().join("missing.fl")).unwrap_err();
    assert!(e.to_string().contains("missing.fl"), "{e}");
}

#[test]
fn unknown_store_scheme() {
    let f = fixture();
    let out = f.tmp.path().join("o.fl");
    let opts = PackOptions {
        stores: vec!["s3://bucket/blocks".into()],
        ..PackOptions::default()
    };
    let e = pack(&f.tmp.path().join("src"), &out, &opts).unwrap_err();
    assert!(
        matches!(e, PackError::Store(store::Error::UnknownScheme { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("unknown store scheme `s3`"), "{e}");
    assert!(!out.exists());

    let bad = f.tmp.path().join("bad.fl");
    std::fs::copy(&f.fl, &bad).unwrap();
    let c = rusqlite::Connection::open(&bad).unwrap();
    c.execute("UPDATE route SET url = 'ftp://example.org/x'", [])
        .unwrap();
    drop(c);
    let e = unpack(
        &bad,
        &f.tmp.path().join("t"),
        &UnpackOptions::new(&f.tmp.path().join("c")),
    )
    .unwrap_err();
    assert!(
        matches!(e, UnpackError::Store(store::Error::UnknownScheme { .. })),
        "{e}"
    );

    let e = pack(
        &f.tmp.path().join("src"),
        &out,
        &PackOptions {
            stores: vec![],
            ..PackOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, PackError::NoStore), "{e}");
}

#[test]
fn unreachable_store() {
    let f = fixture();
    let port = closed_port();
    let out = f.tmp.path().join("o.fl");
    let opts = PackOptions {
        stores: vec![format!("zdb://127.0.0.1:{port}/ns")],
        ..PackOptions::default()
    };
    let e = pack(&f.tmp.path().join("src"), &out, &opts).unwrap_err();
    assert!(e.to_string().contains("unreachable"), "{e}");
    assert!(!out.exists(), "no flist is published when upload fails");
    let leftovers: Vec<_> = std::fs::read_dir(f.tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("o.fl"))
        .collect();
    assert!(leftovers.is_empty());

    let bad = f.tmp.path().join("bad.fl");
    std::fs::copy(&f.fl, &bad).unwrap();
    let c = rusqlite::Connection::open(&bad).unwrap();
    c.execute(
        "UPDATE route SET url = ?",
        [format!("http://127.0.0.1:{port}/blocks")],
    )
    .unwrap();
    drop(c);
    let target = f.tmp.path().join("t");
    let e = unpack(&bad, &target, &UnpackOptions::new(&f.tmp.path().join("c"))).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, UnpackError::Block { .. }), "{msg}");
    assert!(
        msg.contains("unreachable") && msg.contains(&format!("127.0.0.1:{port}")),
        "{msg}"
    );
    assert!(
        msg.contains("d/big") || msg.contains("small"),
        "names the file: {msg}"
    );
}

#[test]
fn corrupt_block_in_store() {
    let f = fixture();
    let ids = blocks_of(&f.fl, "big");
    let obj = f.store.join(hex(&ids[1]));
    let mut data = std::fs::read(&obj).unwrap();
    data[10] ^= 0xff;
    std::fs::write(&obj, &data).unwrap();
    let target = f.tmp.path().join("t");
    let cache = f.tmp.path().join("c");
    let e = unpack(&f.fl, &target, &UnpackOptions::new(&cache)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, UnpackError::Block { index: 1, .. }), "{msg}");
    assert!(msg.contains("d/big") && msg.contains("block 1"), "{msg}");
    assert!(msg.contains("corrupt"), "{msg}");
    assert!(!target.join("d/big").exists());
    assert!(!cache
        .join(&hex(&ids[1])[..2])
        .join(&hex(&ids[1])[2..4])
        .join(hex(&ids[1]))
        .exists());
    assert_no_leftovers(&target);

    // a missing object is a clear not-found error
    std::fs::remove_file(&obj).unwrap();
    let target2 = f.tmp.path().join("t2");
    let e = unpack(&f.fl, &target2, &UnpackOptions::new(&cache)).unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
}

#[test]
fn corrupt_cache_entry_is_refetched() {
    let f = fixture();
    let cache = f.tmp.path().join("c");
    let t1 = f.tmp.path().join("t1");
    unpack(&f.fl, &t1, &UnpackOptions::new(&cache)).unwrap();
    let ids = blocks_of(&f.fl, "big");
    let entry = |id: &[u8; 32]| {
        let h = hex(id);
        cache.join(&h[..2]).join(&h[2..4]).join(&h)
    };
    // truncate one entry, flip a byte in another
    let good0 = std::fs::read(entry(&ids[0])).unwrap();
    std::fs::write(entry(&ids[0]), &good0[..good0.len() / 3]).unwrap();
    let mut b = std::fs::read(entry(&ids[2])).unwrap();
    b[0] ^= 1;
    std::fs::write(entry(&ids[2]), &b).unwrap();
    let t2 = f.tmp.path().join("t2");
    unpack(&f.fl, &t2, &UnpackOptions::new(&cache)).unwrap();
    assert_eq!(
        std::fs::read(t2.join("d/big")).unwrap(),
        noise(2 * BLOCK + 100, 5)
    );
    assert_eq!(
        std::fs::read(entry(&ids[0])).unwrap(),
        good0,
        "entry repaired"
    );
}

#[test]
fn failure_mid_file_leaves_no_partial_file() {
    let f = fixture();
    let cache = f.tmp.path().join("c");
    unpack(&f.fl, &f.tmp.path().join("t1"), &UnpackOptions::new(&cache)).unwrap();
    // block 2 is now bad both in the cache and in the store: the write of d/big
    // fails after blocks 0 and 1 were written to its temporary file
    let ids = blocks_of(&f.fl, "big");
    let h = hex(&ids[2]);
    std::fs::write(cache.join(&h[..2]).join(&h[2..4]).join(&h), b"bad").unwrap();
    std::fs::write(f.store.join(&h), b"bad").unwrap();
    let target = f.tmp.path().join("t2");
    let e = unpack(&f.fl, &target, &UnpackOptions::new(&cache)).unwrap_err();
    assert!(matches!(e, UnpackError::Block { index: 2, .. }), "{e}");
    assert!(
        !target.join("d/big").exists(),
        "no half-written file under the final name"
    );
    assert_no_leftovers(&target);
}

#[test]
fn wrong_key_and_wrong_size_are_caught() {
    let f = fixture();
    let bad = f.tmp.path().join("key.fl");
    std::fs::copy(&f.fl, &bad).unwrap();
    let c = rusqlite::Connection::open(&bad).unwrap();
    c.execute(
        "UPDATE block SET key = zeroblob(32) WHERE rowid = (SELECT min(rowid) FROM block WHERE ino = (SELECT ino FROM inode WHERE name = 'small'))",
        [],
    )
    .unwrap();
    drop(c);
    let target = f.tmp.path().join("t");
    let e = unpack(&bad, &target, &UnpackOptions::new(&f.tmp.path().join("c"))).unwrap_err();
    assert!(
        e.to_string().contains("small") && e.to_string().contains("decryption failed"),
        "{e}"
    );
    assert!(!target.join("small").exists());

    let bad = f.tmp.path().join("size.fl");
    std::fs::copy(&f.fl, &bad).unwrap();
    let c = rusqlite::Connection::open(&bad).unwrap();
    c.execute("UPDATE inode SET size = 3 WHERE name = 'small'", [])
        .unwrap();
    drop(c);
    let target = f.tmp.path().join("t2");
    let e = unpack(&bad, &target, &UnpackOptions::new(&f.tmp.path().join("c"))).unwrap_err();
    assert!(
        matches!(e, UnpackError::SizeMismatch { expected: 3, .. }),
        "{e}"
    );
    assert!(!target.join("small").exists());
    assert_no_leftovers(&target);
}

fn node(parent: u64, name: &str, mode: u32, data: Option<&[u8]>) -> Inode {
    Inode {
        parent,
        name: name.into(),
        mode,
        data: data.map(<[u8]>::to_vec),
        ..Inode::default()
    }
}

/// Writes a hand-made flist (root + `nodes`) and tries to unpack it.
fn unpack_crafted(dir: &Path, nodes: &[Inode]) -> (UnpackError, PathBuf) {
    let fl = dir.join("evil.fl");
    let _ = std::fs::remove_file(&fl);
    let w = Writer::create(&fl).unwrap();
    w.inode(&node(0, "/", libc::S_IFDIR | 0o755, None)).unwrap();
    for n in nodes {
        w.inode(n).unwrap();
    }
    w.route(&Route {
        start: 0,
        end: 255,
        url: format!("dir://{}", dir.join("store").display()),
    })
    .unwrap();
    w.finish().unwrap();
    let target = dir.join("jail/target");
    let _ = std::fs::remove_dir_all(dir.join("jail"));
    let e = unpack(&fl, &target, &UnpackOptions::new(&dir.join("cache"))).unwrap_err();
    (e, target)
}

#[test]
fn metadata_cannot_escape_target() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    const D: u32 = libc::S_IFDIR | 0o755;
    const F: u32 = libc::S_IFREG | 0o644;
    const L: u32 = libc::S_IFLNK | 0o777;
    let cases: Vec<(&str, Vec<Inode>)> = vec![
        (
            "dotdot",
            vec![node(1, "..", D, None), node(2, "escaped", F, None)],
        ),
        ("slash", vec![node(1, "../escaped", F, None)]),
        ("absolute", vec![node(1, "/tmp/escaped", F, None)]),
        ("dot", vec![node(1, ".", D, None)]),
        ("empty", vec![node(1, "", F, None)]),
        // a symlink to outside, then a child "through" it
        (
            "symlink parent",
            vec![node(1, "l", L, Some(b"../..")), node(2, "escaped", F, None)],
        ),
        // the same name twice: a symlink, then a directory with children
        (
            "shadowing",
            vec![
                node(1, "x", L, Some(b"../..")),
                node(1, "x", D, None),
                node(3, "escaped", F, None),
            ],
        ),
        ("cycle", vec![node(3, "a", D, None), node(2, "b", D, None)]),
    ];
    for (what, nodes) in cases {
        let (e, target) = unpack_crafted(dir, &nodes);
        assert!(matches!(e, UnpackError::Tree(_)), "{what}: {e}");
        assert!(!target.exists(), "{what}: nothing written");
        assert!(find_names(dir, "escaped").is_empty(), "{what}: escaped!");
    }
    // an absolute symlink target is fine: it is kept verbatim, never followed
    let fl = dir.join("ok.fl");
    let w = Writer::create(&fl).unwrap();
    w.inode(&node(0, "/", D, None)).unwrap();
    w.inode(&node(1, "etc-link", L, Some(b"/etc"))).unwrap();
    w.finish().unwrap();
    let target = dir.join("ok");
    unpack(&fl, &target, &UnpackOptions::new(&dir.join("cache"))).unwrap();
    assert_eq!(
        std::fs::read_link(target.join("etc-link")).unwrap(),
        PathBuf::from("/etc")
    );
}

#[test]
fn target_must_be_empty() {
    let f = fixture();
    let target = f.tmp.path().join("t");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("existing"), b"keep me").unwrap();
    let e = unpack(&f.fl, &target, &UnpackOptions::new(&f.tmp.path().join("c"))).unwrap_err();
    assert!(matches!(e, UnpackError::TargetNotEmpty(_)), "{e}");
    assert_eq!(std::fs::read(target.join("existing")).unwrap(), b"keep me");
    // an existing empty directory is fine
    let empty = f.tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    unpack(&f.fl, &empty, &UnpackOptions::new(&f.tmp.path().join("c"))).unwrap();
    assert_eq!(std::fs::read(empty.join("small")).unwrap(), b"small file");
}

#[test]
fn sizes_beyond_the_free_space_are_refused_before_anything_is_written() {
    // 'small' claims 16 TiB, backed by its one block repeated 262144 times (64 MiB each
    // at most): consistent as metadata, and cheap to fetch, so only the free space of the
    // target's file system stops it.
    let f = fixture();
    let bad = f.tmp.path().join("huge.fl");
    std::fs::copy(&f.fl, &bad).unwrap();
    let c = rusqlite::Connection::open(&bad).unwrap();
    c.execute_batch(
        "UPDATE inode SET size = 17592186044416 WHERE name = 'small';
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 262143)
         INSERT INTO block SELECT b.ino, b.id, b.key FROM block b, n
           WHERE b.rowid = (SELECT min(rowid) FROM block
                            WHERE ino = (SELECT ino FROM inode WHERE name = 'small'));",
    )
    .unwrap();
    drop(c);
    let target = f.tmp.path().join("t");
    let started = std::time::Instant::now();
    let e = unpack(&bad, &target, &UnpackOptions::new(&f.tmp.path().join("c"))).unwrap_err();
    assert!(matches!(e, UnpackError::NoRoom { .. }), "{e}");
    assert!(e.to_string().contains("free"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert!(!target.join("small").exists());
    assert_no_leftovers(&target);
}
