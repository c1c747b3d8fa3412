//! pack -> inspect -> unpack round trips through a local dir store.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flist_fetcher::meta::Reader;
use flist_fetcher::tree::Tree;
use flist_fetcher::{inspect, pack, unpack, PackOptions, UnpackOptions};
use std::collections::HashSet;
use std::path::Path;

fn pack_opts(stores: &[String]) -> PackOptions {
    PackOptions {
        stores: stores.to_vec(),
        tags: vec![
            ("version".into(), "v1".into()),
            ("description".into(), "sample tree".into()),
            ("author".into(), "zvm tests".into()),
            ("custom".into(), "value".into()),
        ],
        jobs: 3,
        ..PackOptions::default()
    }
}

fn dir_url(p: &Path) -> String {
    format!("dir://{}", p.display())
}

#[test]
fn round_trip_flat_dir_store() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sample_tree(tmp.path());
    let store = tmp.path().join("store");
    let fl = tmp.path().join("out.fl");
    let stats = pack(&src, &fl, &pack_opts(&[dir_url(&store)])).unwrap();
    assert!(stats.files >= 12, "{stats:?}");
    assert_eq!(stats.symlinks, 4);

    // flat layout: every object at store/<hex>, named by the hash of its content
    let objects = store_objects(&store);
    assert_eq!(objects.len() as u64, stats.unique_blocks);
    for o in &objects {
        assert_eq!(
            o.parent().unwrap(),
            store,
            "object not in the flat layout: {}",
            o.display()
        );
        let data = std::fs::read(o).unwrap();
        let name = o.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            flist_fetcher::block::to_hex(&flist_fetcher::block::hash(&data)),
            name
        );
    }

    let summary = inspect(&fl).unwrap();
    assert_eq!(summary.files, stats.files);
    assert_eq!(summary.total_size, stats.bytes);
    assert_eq!(summary.routes.len(), 1);
    assert_eq!(summary.routes[0].url, dir_url(&store));
    assert_eq!((summary.routes[0].start, summary.routes[0].end), (0, 255));
    assert!(summary
        .tags
        .contains(&("author".into(), "zvm tests".into())));
    assert!(summary.to_string().contains("sample tree"));

    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    let ustats = unpack(&fl, &out, &UnpackOptions::new(&cache)).unwrap();
    assert_eq!(ustats.files, stats.files);
    assert_eq!(ustats.fetched, stats.unique_blocks);
    assert_eq!(ustats.skipped, 0);
    assert_same_tree(&src, &out);

    // no temporary files anywhere
    assert!(find_names(&out, ".flist-tmp").is_empty());
    assert!(find_names(&cache, ".tmp").is_empty());

    // second unpack: warm cache, nothing fetched, even with the store gone
    force_remove(&store);
    let out2 = tmp.path().join("out2");
    let s2 = unpack(&fl, &out2, &UnpackOptions::new(&cache)).unwrap();
    assert_eq!(s2.fetched, 0);
    assert_same_tree(&src, &out2);
    force_remove(&out);
    force_remove(&out2);
    force_remove(&src);
}

#[test]
fn flist_rows_match_rfs_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sample_tree(tmp.path());
    let fl = tmp.path().join("out.fl");
    pack(&src, &fl, &pack_opts(&[dir_url(&tmp.path().join("store"))])).unwrap();
    let c = rusqlite::Connection::open(&fl).unwrap();
    // root row
    let (parent, name, mode): (i64, String, u32) = c
        .query_row(
            "SELECT parent, name, mode FROM inode WHERE ino = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((parent, name.as_str()), (0, "/"));
    assert_eq!(mode & libc::S_IFMT, libc::S_IFDIR);
    // ids and keys are 32-byte blobs
    let bad: i64 = c
        .query_row(
            "SELECT count(*) FROM block WHERE typeof(id) != 'blob' OR length(id) != 32 OR typeof(key) != 'blob' OR length(key) != 32",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(bad, 0);
    // the schema's indexes exist
    let idx: HashSet<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for i in ["parents", "names", "block_ino"] {
        assert!(idx.contains(i), "missing index {i}: {idx:?}");
    }
    // symlink target in extra; gid column kept separate from uid
    let target: Vec<u8> = c
        .query_row(
            "SELECT data FROM extra JOIN inode USING (ino) WHERE name = 'link-abs'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(target, b"/etc/passwd");
    if is_root() {
        let (uid, gid): (u32, u32) = c
            .query_row("SELECT uid, gid FROM inode WHERE name = 'one'", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((uid, gid), (1234, 5678));
    }
    // plain rollback journal, nothing next to the flist
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    drop(c);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".fl"))
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    force_remove(&src);
}

#[test]
fn identical_blocks_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    let unit = noise(BLOCK, 9);
    let mut data = Vec::new();
    for _ in 0..3 {
        data.extend_from_slice(&unit); // three identical blocks
    }
    data.extend_from_slice(b"tail");
    std::fs::write(src.join("a"), &data).unwrap();
    std::fs::write(src.join("d/b"), &data).unwrap(); // same file again
    std::fs::write(src.join("c"), &unit).unwrap(); // same as one block
    let store = tmp.path().join("store");
    let fl = tmp.path().join("x.fl");
    let stats = pack(&src, &fl, &pack_opts(&[dir_url(&store)])).unwrap();
    assert_eq!(stats.blocks, 4 + 4 + 1);
    assert_eq!(stats.unique_blocks, 2);
    assert_eq!(store_objects(&store).len(), 2);
    let reader = Reader::open(&fl).unwrap();
    let tree = Tree::load(&reader).unwrap();
    let a = tree.entries.iter().find(|e| e.inode.name == "a").unwrap();
    let blocks = tree.blocks_of(a.inode.ino);
    assert_eq!(blocks.len(), 4);
    assert_eq!(blocks[0], blocks[1]);
    assert_eq!(blocks[1], blocks[2]);
    assert_ne!(blocks[2], blocks[3]);

    // packing again into the same store adds nothing
    pack(
        &src,
        &tmp.path().join("y.fl"),
        &pack_opts(&[dir_url(&store)]),
    )
    .unwrap();
    assert_eq!(store_objects(&store).len(), 2);

    let out = tmp.path().join("out");
    let u = unpack(&fl, &out, &UnpackOptions::new(&tmp.path().join("cache"))).unwrap();
    assert_eq!(u.fetched, 2);
    assert_eq!(std::fs::read(out.join("d/b")).unwrap(), data);
}

#[test]
fn nested_layout_and_sharded_routes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sample_tree(tmp.path());
    let low = tmp.path().join("low");
    let high = tmp.path().join("high");
    let fl = tmp.path().join("out.fl");
    let stores = vec![
        format!("00-7f=dir://{}?layout=nested", low.display()),
        format!("80-ff={}", dir_url(&high)),
    ];
    let stats = pack(&src, &fl, &pack_opts(&stores)).unwrap();
    let lo = store_objects(&low);
    let hi = store_objects(&high);
    assert_eq!((lo.len() + hi.len()) as u64, stats.unique_blocks);
    for o in &lo {
        let name = o.file_name().unwrap().to_str().unwrap();
        assert!(name.as_bytes()[0] <= b'7', "{name} routed to the low store");
        // nested layout: low/<hex[0..2]>/<hex>
        assert_eq!(
            o.parent().unwrap().file_name().unwrap().to_str().unwrap(),
            &name[..2]
        );
    }
    for o in &hi {
        let name = o.file_name().unwrap().to_str().unwrap();
        assert!(
            name.as_bytes()[0] >= b'8',
            "{name} routed to the high store"
        );
    }
    let routes = inspect(&fl).unwrap().routes;
    assert_eq!((routes[0].start, routes[0].end), (0x00, 0x7f));
    assert_eq!((routes[1].start, routes[1].end), (0x80, 0xff));
    let out = tmp.path().join("out");
    unpack(&fl, &out, &UnpackOptions::new(&tmp.path().join("cache"))).unwrap();
    assert_same_tree(&src, &out);
    force_remove(&out);
    force_remove(&src);
}

#[test]
fn replicated_stores_survive_losing_one() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), noise(3 * BLOCK, 4)).unwrap();
    let (s1, s2) = (tmp.path().join("s1"), tmp.path().join("s2"));
    let fl = tmp.path().join("out.fl");
    pack(&src, &fl, &pack_opts(&[dir_url(&s1), dir_url(&s2)])).unwrap();
    assert_eq!(store_objects(&s1).len(), 3);
    assert_eq!(store_objects(&s2).len(), 3);
    // lose one object in one replica and corrupt another in the other replica
    let o1 = store_objects(&s1);
    std::fs::remove_file(&o1[0]).unwrap();
    let o2 = store_objects(&s2);
    std::fs::write(&o2[1], b"garbage").unwrap();
    let out = tmp.path().join("out");
    unpack(&fl, &out, &UnpackOptions::new(&tmp.path().join("cache"))).unwrap();
    assert_eq!(std::fs::read(out.join("f")).unwrap(), noise(3 * BLOCK, 4));
}

#[test]
fn cli_commands_run() {
    use flist_fetcher::cli::{run, FlistCommand};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"hello").unwrap();
    let fl = tmp.path().join("cli.fl");
    run(FlistCommand::Pack {
        stores: vec![dir_url(&tmp.path().join("store"))],
        output: fl.clone(),
        tags: vec![("version".into(), "3".into())],
        no_strip_password: false,
        jobs: Some(2),
        dir: src.clone(),
    })
    .unwrap();
    run(FlistCommand::Inspect {
        flist: fl.clone(),
        tree: true,
    })
    .unwrap();
    let target = tmp.path().join("t");
    run(FlistCommand::Unpack {
        cache: tmp.path().join("cache"),
        fetch_jobs: 4,
        jobs: None,
        flist: fl.clone(),
        target: target.clone(),
    })
    .unwrap();
    assert_eq!(std::fs::read(target.join("d/f")).unwrap(), b"hello");
    let lines =
        flist_fetcher::inspect::tree_lines(&Tree::load(&Reader::open(&fl).unwrap()).unwrap());
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(" /d/f") && l.starts_with("-rw")),
        "{lines:?}"
    );
}
