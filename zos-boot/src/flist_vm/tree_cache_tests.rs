#![allow(clippy::unwrap_used)]

use super::*;
use std::time::Duration;

/// A tree of one `bytes`-byte file.
fn unpack_bytes(bytes: usize) -> impl FnOnce(&Path) -> Result<(), String> {
    move |dir: &Path| {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("file"), vec![1u8; bytes]).map_err(|e| e.to_string())
    }
}

fn set_last_use(tree: &Path, secs_ago: u64) {
    let file = std::fs::File::options()
        .write(true)
        .open(beside(tree, ".lock"))
        .unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
        .unwrap();
}

#[test]
fn limits_parse_as_hostile_input() {
    assert_eq!(parse_limit("20G").unwrap(), 20 << 30);
    assert_eq!(parse_limit("1048576").unwrap(), 1 << 20);
    for bad in [
        "",
        "0",
        "1K",
        "-1",
        "lots",
        "99999999999999999999T",
        "1G\n2",
    ] {
        assert!(parse_limit(bad).is_err(), "{bad:?}");
    }
    let long = "x".repeat(10_000);
    assert!(parse_limit(&long).unwrap_err().to_string().len() < 300);
}

#[test]
fn a_tree_is_unpacked_once_and_sized() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("trees/aa");
    let lease = ensure_tree(&tree, 1000, 2, 1 << 30, unpack_bytes(1000)).unwrap();
    assert_eq!(lease.tree(), tree);
    assert!(tree.join("file").is_file());
    let size: u64 = std::fs::read_to_string(beside(&tree, ".size"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(size >= 1000, "{size}");
    // Present: not unpacked again.
    ensure_tree(&tree, 1000, 2, 1 << 30, |_: &Path| {
        Err("unpacked twice".to_string())
    })
    .unwrap();
    // A failed unpack leaves nothing behind.
    let other = dir.path().join("trees/bb");
    let err = ensure_tree(&other, 10, 1, 1 << 30, |d: &Path| {
        std::fs::create_dir_all(d).unwrap();
        Err("the store is down".to_string())
    })
    .unwrap_err();
    assert!(err.to_string().contains("the store is down"), "{err}");
    assert!(!other.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path().join("trees"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("staging"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn unused_trees_are_evicted_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let trees = dir.path().join("trees");
    let limit = 400 << 10;
    let [a, b, c] = ["a", "b", "c"].map(|n| trees.join(n));
    for (tree, ago) in [(&a, 30), (&b, 10), (&c, 20)] {
        drop(ensure_tree(tree, 100 << 10, 1, limit, unpack_bytes(100 << 10)).unwrap());
        set_last_use(tree, ago);
    }
    // A fourth of 100 KiB does not fit with three (plus their metadata): the oldest, a, goes.
    let d = trees.join("d");
    let _d = ensure_tree(&d, 100 << 10, 1, limit, unpack_bytes(100 << 10)).unwrap();
    assert!(!a.exists() && !beside(&a, ".lock").exists() && !beside(&a, ".size").exists());
    assert!(b.is_dir() && c.is_dir() && d.is_dir());
    // Then c (20 s ago) before b (10 s ago).
    let e = trees.join("e");
    let _e = ensure_tree(&e, 100 << 10, 1, limit, unpack_bytes(100 << 10)).unwrap();
    assert!(!c.exists() && b.is_dir());
}

#[test]
fn trees_in_use_are_kept_and_a_full_cache_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let trees = dir.path().join("trees");
    let limit = 300 << 10;
    let a = trees.join("a");
    let b = trees.join("b");
    let in_use = ensure_tree(&a, 100 << 10, 1, limit, unpack_bytes(100 << 10)).unwrap();
    set_last_use(&a, 60);
    let _b = ensure_tree(&b, 100 << 10, 1, limit, unpack_bytes(100 << 10)).unwrap();
    // Both in use: a third does not fit and nothing is evicted.
    let c = trees.join("c");
    let err = ensure_tree(&c, 150 << 10, 1, limit, unpack_bytes(150 << 10)).unwrap_err();
    assert!(matches!(err, TreeCacheError::Full { .. }), "{err}");
    assert!(err.to_string().contains("--tree-cache-size"), "{err}");
    assert!(a.is_dir() && b.is_dir() && !c.exists());
    // Larger than the whole cache: refused before anything is evicted or unpacked.
    let err = ensure_tree(&c, 1 << 30, 1, limit, unpack_bytes(1)).unwrap_err();
    assert!(matches!(err, TreeCacheError::TooLarge { .. }), "{err}");
    // a's VM ends: a (the least recently used) goes, b stays.
    drop(in_use);
    let _c = ensure_tree(&c, 150 << 10, 1, limit, unpack_bytes(150 << 10)).unwrap();
    assert!(!a.exists() && b.is_dir() && c.is_dir());
}

#[test]
fn a_vm_starting_during_an_eviction_never_gets_half_a_tree() {
    let dir = tempfile::tempdir().unwrap();
    let trees = dir.path().join("trees");
    let a = trees.join("a");
    drop(ensure_tree(&a, 10, 1, 1 << 30, unpack_bytes(10)).unwrap());
    // The evictor holds a's lock (as `evict` does while it renames the tree away).
    let lock_path = beside(&a, ".lock");
    let held = open_lock(&lock_path).unwrap();
    assert!(flock(&held, libc::LOCK_EX | libc::LOCK_NB));
    let starter = {
        let a = a.clone();
        std::thread::spawn(move || {
            // A VM of a starts: it waits for the eviction, then finds a gone and
            // unpacks it again, whole.
            let lease = ensure_tree(&a, 10, 1, 1 << 30, unpack_bytes(10)).unwrap();
            (lease, std::fs::read(a.join("file")).unwrap())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !starter.is_finished(),
        "the starter did not wait for the eviction"
    );
    // The evictor's steps, with the lock held.
    std::fs::rename(&a, trees.join(".a.evicting")).unwrap();
    std::fs::remove_file(beside(&a, ".size")).unwrap();
    std::fs::remove_file(&lock_path).unwrap();
    drop(held);
    // (The starter may have removed it first, as a leftover.)
    let _ = std::fs::remove_dir_all(trees.join(".a.evicting"));
    let (lease, content) = starter.join().unwrap();
    assert_eq!(content, vec![1u8; 10]);
    // Its lease is on the lock file now at the path: an eviction must skip a.
    assert!(!evict(&a));
    drop(lease);
    assert!(evict(&a));
    assert!(!a.exists());
}

#[test]
fn leftovers_of_a_dead_unpack_are_removed_and_old_trees_are_measured() {
    let dir = tempfile::tempdir().unwrap();
    let trees = dir.path().join("trees");
    std::fs::create_dir_all(trees.join(".x.staging/deep")).unwrap();
    std::fs::create_dir_all(trees.join(".y.evicting")).unwrap();
    // A tree an older zvm unpacked: no size, no lock file.
    std::fs::create_dir_all(trees.join("old")).unwrap();
    std::fs::write(trees.join("old/f"), vec![0u8; 50 << 10]).unwrap();
    let _n = ensure_tree(&trees.join("new"), 10, 1, 1 << 30, unpack_bytes(10)).unwrap();
    assert!(!trees.join(".x.staging").exists() && !trees.join(".y.evicting").exists());
    // Over a small limit, the old tree (never used through a lease) goes first.
    let _m = ensure_tree(
        &trees.join("more"),
        40 << 10,
        1,
        80 << 10,
        unpack_bytes(40 << 10),
    )
    .unwrap();
    assert!(!trees.join("old").exists());
    assert!(trees.join("new").is_dir());
}
