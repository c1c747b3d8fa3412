//! Each store kind end to end: dir (see roundtrip.rs), http served by the test,
//! and zdb against a real redis-server.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flist_fetcher::meta::{Reader, Route};
use flist_fetcher::store;
use flist_fetcher::{inspect, pack, unpack, PackOptions, UnpackOptions};
use std::path::Path;
use std::sync::atomic::Ordering;

fn opts(stores: Vec<String>) -> PackOptions {
    PackOptions {
        stores,
        jobs: 3,
        ..PackOptions::default()
    }
}

/// Copies `fl` with its route table replaced by `routes`.
fn reroute(fl: &Path, out: &Path, routes: &[Route]) {
    std::fs::copy(fl, out).unwrap();
    let c = rusqlite::Connection::open(out).unwrap();
    c.execute("DELETE FROM route", []).unwrap();
    for r in routes {
        c.execute(
            "INSERT INTO route (start, end, url) VALUES (?, ?, ?)",
            rusqlite::params![r.start, r.end, r.url],
        )
        .unwrap();
    }
}

#[test]
fn http_store_serves_flat_and_nested() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sample_tree(tmp.path());
    let flat = tmp.path().join("flat");
    let fl = tmp.path().join("out.fl");
    let stats = pack(&src, &fl, &opts(vec![format!("dir://{}", flat.display())])).unwrap();

    // flat objects: every GET of base/ab/<hex> 404s and falls back to base/<hex>
    let server = serve_dir(flat.clone());
    let http_fl = tmp.path().join("http.fl");
    reroute(
        &fl,
        &http_fl,
        &[Route {
            start: 0,
            end: 255,
            url: format!("{}/", server.url),
        }],
    );
    let out = tmp.path().join("out");
    let u = unpack(
        &http_fl,
        &out,
        &UnpackOptions::new(&tmp.path().join("cache")),
    )
    .unwrap();
    assert_eq!(u.fetched, stats.unique_blocks);
    assert_same_tree(&src, &out);
    assert_eq!(
        server.not_found.load(Ordering::SeqCst) as u64,
        stats.unique_blocks
    );
    assert_eq!(
        server.requests.load(Ordering::SeqCst) as u64,
        2 * stats.unique_blocks
    );

    // nested objects: found at the first URL
    let nested = tmp.path().join("nested");
    pack(
        &src,
        &tmp.path().join("n.fl"),
        &opts(vec![format!("dir://{}?layout=nested", nested.display())]),
    )
    .unwrap();
    let server2 = serve_dir(nested);
    let fl2 = tmp.path().join("http2.fl");
    reroute(
        &fl,
        &fl2,
        &[Route {
            start: 0,
            end: 255,
            url: server2.url.clone(),
        }],
    );
    let out2 = tmp.path().join("out2");
    unpack(&fl2, &out2, &UnpackOptions::new(&tmp.path().join("cache2"))).unwrap();
    assert_same_tree(&src, &out2);
    assert_eq!(server2.not_found.load(Ordering::SeqCst), 0);

    // the http store is read-only
    let s = store::open(&server.url).unwrap();
    assert!(matches!(
        s.set(&[0; 32], b"x"),
        Err(store::Error::ReadOnly { .. })
    ));
    let e = pack(
        &src,
        &tmp.path().join("ro.fl"),
        &opts(vec![server.url.clone()]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    assert!(!tmp.path().join("ro.fl").exists());
    force_remove(&out);
    force_remove(&out2);
    force_remove(&src);
}

#[test]
fn zdb_store_against_redis() {
    let redis = Redis::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = sample_tree(tmp.path());
    let fl = tmp.path().join("zdb.fl");

    // namespace "1" (SELECT 1 on redis); the password is stripped from the route
    // (namespace "default" is never SELECTed, as with rfs, so the password is unused)
    let url_ns = format!("zdb://127.0.0.1:{}/1", redis.port);
    let url_pw = format!("zdb://user:s3cret@127.0.0.1:{}/default", redis.port);
    let stats = pack(
        &src,
        &fl,
        &opts(vec![format!("00-7f={url_ns}"), format!("80-ff={url_pw}")]),
    )
    .unwrap();
    let in_ns = redis.dbsize(1);
    let in_default = redis.dbsize(0);
    assert!(in_ns > 0 && in_default > 0, "{in_ns} {in_default}");
    assert_eq!((in_ns + in_default) as u64, stats.unique_blocks);

    let routes = inspect(&fl).unwrap().routes;
    assert_eq!(routes[0].url, url_ns);
    assert_eq!(
        routes[1].url,
        format!("zdb://user@127.0.0.1:{}/default", redis.port)
    );
    assert!(!std::fs::read(&fl)
        .unwrap()
        .windows(6)
        .any(|w| w == b"s3cret"));

    // keys are the raw 32-byte ids; a second pack finds them all present (EXISTS)
    let zdb = store::open(&url_ns).unwrap();
    let reader = Reader::open(&fl).unwrap();
    let some = reader
        .all_blocks()
        .unwrap()
        .into_values()
        .flatten()
        .find(|b| b.id[0] <= 0x7f)
        .unwrap();
    let ct = zdb.get(&some.id).unwrap();
    assert_eq!(flist_fetcher::block::hash(&ct), some.id);
    pack(
        &src,
        &tmp.path().join("again.fl"),
        &opts(vec![format!("00-7f={url_ns}"), format!("80-ff={url_pw}")]),
    )
    .unwrap();
    assert_eq!(redis.dbsize(1), in_ns);

    let out = tmp.path().join("out");
    let u = unpack(&fl, &out, &UnpackOptions::new(&tmp.path().join("cache"))).unwrap();
    assert_eq!(u.fetched, stats.unique_blocks);
    assert_same_tree(&src, &out);

    // keeping the password on request
    let keep = PackOptions {
        strip_password: false,
        ..opts(vec![url_pw.clone()])
    };
    let fl_keep = tmp.path().join("keep.fl");
    pack(&src, &fl_keep, &keep).unwrap();
    assert_eq!(inspect(&fl_keep).unwrap().routes[0].url, url_pw);
    force_remove(&out);
    force_remove(&src);
}

#[test]
fn zdb_store_missing_key_and_bad_namespace() {
    let redis = Redis::start();
    let s = store::open(&format!("zdb://127.0.0.1:{}/2", redis.port)).unwrap();
    assert!(matches!(
        s.get(&[7; 32]),
        Err(store::Error::NotFound { .. })
    ));
    s.set(&[7; 32], b"payload").unwrap();
    assert_eq!(s.get(&[7; 32]).unwrap(), b"payload");
    // redis has no namespace "nope": SELECT fails with a clear protocol error
    let bad = store::open(&format!("zdb://127.0.0.1:{}/nope", redis.port)).unwrap();
    let e = bad.get(&[7; 32]).unwrap_err();
    assert!(e.to_string().contains("SELECT"), "{e}");
}

#[test]
fn mixed_http_and_zdb_routes() {
    // one flist whose routes point at two different kinds of store
    let redis = Redis::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), noise(6 * BLOCK + 7, 11)).unwrap();
    let dir = tmp.path().join("dir");
    let zdb = format!("zdb://127.0.0.1:{}/3", redis.port);
    let fl = tmp.path().join("mix.fl");
    pack(
        &src,
        &fl,
        &opts(vec![
            format!("00-7f=dir://{}", dir.display()),
            format!("80-ff={zdb}"),
        ]),
    )
    .unwrap();
    let server = serve_dir(dir);
    let fl2 = tmp.path().join("mix2.fl");
    reroute(
        &fl,
        &fl2,
        &[
            Route {
                start: 0,
                end: 0x7f,
                url: server.url.clone(),
            },
            Route {
                start: 0x80,
                end: 0xff,
                url: zdb,
            },
        ],
    );
    let out = tmp.path().join("out");
    unpack(&fl2, &out, &UnpackOptions::new(&tmp.path().join("cache"))).unwrap();
    assert_eq!(
        std::fs::read(out.join("f")).unwrap(),
        noise(6 * BLOCK + 7, 11)
    );
}
