//! `zvm flist from-oci`: an image layout built here, packed into an flist in a dir store,
//! unpacked again with flist-fetcher and compared with the image's own unpacked tree.
#![allow(clippy::unwrap_used)]

mod image_common;

use image_common::{is_root, Layout, Tar};
use oci_runtime::image::flist::{self, FromOciOptions, ImageRunConfig, IMAGE_CONFIG_PATH};
use oci_runtime::image::{self, layer::ApplyOptions, ImageRef};
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Everything about a tree that must survive the trip: type, mode, size, content or link
/// target, and owners when running as root.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let owner = if is_root() {
                format!(" {}:{}", m.uid(), m.gid())
            } else {
                String::new()
            };
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}{owner}", m.mode() & 0o7777)
            } else if m.is_file() {
                let data = std::fs::read(&p).unwrap();
                format!(
                    "file {:o} {} {}{owner}",
                    m.mode() & 0o7777,
                    data.len(),
                    image_common::sha256_hex(&data)
                )
            } else {
                format!("special {:o}", m.mode())
            };
            out.insert(rel, what);
        }
    }
    out
}

#[test]
fn from_oci_round_trips_through_an_flist() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("img"));
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let l1 = l.layer_gzip(
        &Tar::new()
            .dir("bin/", 0o755)
            .file_with(
                "bin/app",
                b"#!/bin/sh\necho hi\n",
                0o755,
                0,
                0,
                1_600_000_000,
            )
            .dir("etc/", 0o755)
            .file(
                "etc/passwd",
                b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            )
            .dir("data/", 0o750)
            .file_with("data/big.bin", &big, 0o640, 1000, 1000, 1_600_000_000)
            .file("data/old", b"old")
            .finish(),
    );
    let l2 = l.layer_zstd(
        &Tar::new()
            .file("data/.wh.old", b"")
            .symlink("bin/run", "app")
            .hardlink("bin/app2", "bin/app")
            .device("fifo", tar::EntryType::Fifo, 0, 0)
            .finish(),
    );
    let layers = [l1, l2];
    l.simple(
        json!({"Entrypoint": ["/bin/run"], "Cmd": ["serve"], "Env": ["A=b"], "WorkingDir": "/data", "User": "app"}),
        &layers,
    );

    // The reference: the image unpacked directly.
    let reference = t.path().join("reference");
    std::fs::create_dir(&reference).unwrap();
    let image_ref = ImageRef {
        dir: l.dir.clone(),
        tag: Some("latest".into()),
    };
    image::unpack_rootfs(&image_ref, &reference, ApplyOptions::for_current_user()).unwrap();

    let store = t.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let out = t.path().join("out.fl");
    let opts = FromOciOptions {
        pack: flist_fetcher::PackOptions {
            stores: vec![format!("dir://{}", store.display())],
            tags: vec![("version".into(), "1".into())],
            ..Default::default()
        },
        tmp_dir: Some(t.path().to_owned()),
    };
    let stats = flist::from_oci(&image_ref, &out, &opts).unwrap();
    assert_eq!(stats.config.process.args, ["/bin/run", "serve"]);
    assert!(stats.pack.bytes as usize > big.len());
    // The temporary root is gone.
    assert!(std::fs::read_dir(t.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("zvm-from-oci-")));

    let back = t.path().join("back");
    let uopts = flist_fetcher::UnpackOptions::new(&t.path().join("cache"));
    flist_fetcher::unpack(&out, &back, &uopts).unwrap();

    let mut want = snapshot(&reference);
    let got = snapshot(&back);
    let cfg_entries: Vec<_> = got
        .keys()
        .filter(|k| k.starts_with(".zvm"))
        .cloned()
        .collect();
    assert_eq!(cfg_entries, [".zvm", IMAGE_CONFIG_PATH]);
    for k in cfg_entries {
        want.insert(k.clone(), got[&k].clone());
    }
    assert_eq!(got, want);

    let cfg = ImageRunConfig::read(&back).unwrap().unwrap();
    assert_eq!(cfg, stats.config);
    assert_eq!(cfg.process.cwd, "/data");
    assert_eq!(cfg.process.env, [image::spec::DEFAULT_PATH, "A=b"]);
    assert_eq!((cfg.process.uid, cfg.process.gid), (1000, 1000));
    assert_eq!(cfg.image_config["Entrypoint"], json!(["/bin/run"]));
    assert!(cfg.manifest_digest.starts_with("sha256:"));
    assert!(ImageRunConfig::read(&reference).unwrap().is_none());
}

#[test]
fn from_oci_reports_bad_images_and_stores() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("img"));
    let layer = l.layer_tar(&Tar::new().file("x", b"x").finish());
    l.simple(json!({"Cmd": ["/x"]}), std::slice::from_ref(&layer));
    let out = t.path().join("out.fl");
    let opts = |stores: Vec<String>| FromOciOptions {
        pack: flist_fetcher::PackOptions {
            stores,
            ..Default::default()
        },
        tmp_dir: Some(t.path().to_owned()),
    };
    let r = ImageRef {
        dir: l.dir.clone(),
        tag: Some("nope".into()),
    };
    let e = flist::from_oci(
        &r,
        &out,
        &opts(vec![format!("dir://{}", t.path().display())]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("no image tagged `nope`"), "{e}");
    let r = ImageRef {
        dir: l.dir.clone(),
        tag: None,
    };
    let e = flist::from_oci(&r, &out, &opts(vec!["bogus://x".into()])).unwrap_err();
    assert!(matches!(e, flist::Error::Pack(_)), "{e}");
    assert!(std::fs::read_dir(t.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("zvm-from-oci-")));
}
