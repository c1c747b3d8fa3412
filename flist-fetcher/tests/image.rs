//! `image`: an ext4 image built from an flist passes e2fsck and holds the files.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flist_fetcher::image::{image, parse_size, Error as ImageError, ImageOptions};
use flist_fetcher::{pack, PackOptions, UnpackOptions};
use std::path::Path;
use std::process::Command;

/// An e2fsprogs tool, also when /usr/sbin is not on PATH (non-root users).
fn tool(name: &str) -> Command {
    for dir in ["/usr/sbin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Command::new(p);
        }
    }
    Command::new(name)
}

fn debugfs(img: &Path, request: &str) -> Vec<u8> {
    let out = tool("debugfs")
        .arg("-R")
        .arg(request)
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs) is needed");
    assert!(
        out.status.success(),
        "debugfs {request}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn ext4_image_from_flist() {
    let tmp = tempfile::tempdir().unwrap();
    let src = sample_tree(tmp.path());
    let fl = tmp.path().join("rootfs.fl");
    let opts = PackOptions {
        stores: vec![format!("dir://{}", tmp.path().join("store").display())],
        jobs: 2,
        ..PackOptions::default()
    };
    pack(&src, &fl, &opts).unwrap();
    let img = tmp.path().join("disk.img");
    let iopts = ImageOptions {
        size: parse_size("64M").unwrap(),
        label: "rootfs".into(),
        unpack: UnpackOptions::new(&tmp.path().join("cache")),
    };
    image(&fl, &img, &iopts).unwrap();
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);

    let fsck = tool("e2fsck")
        .args(["-f", "-n"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );

    assert_eq!(
        debugfs(&img, "cat /a/big"),
        std::fs::read(src.join("a/big")).unwrap()
    );
    assert_eq!(
        debugfs(&img, "cat /block+1"),
        std::fs::read(src.join("block+1")).unwrap()
    );
    let stat = String::from_utf8_lossy(&debugfs(&img, "stat /setuid")).to_string();
    assert!(stat.contains("Mode:  04755"), "{stat}");
    let link = String::from_utf8_lossy(&debugfs(&img, "stat /link-abs")).to_string();
    assert!(link.contains("/etc/passwd"), "{link}");
    if is_root() {
        let one = String::from_utf8_lossy(&debugfs(&img, "stat /one")).to_string();
        assert!(
            one.contains("User:  1234") && one.contains("Group:  5678"),
            "{one}"
        );
    }
    // the staging directory is gone, only the image remains next to it
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "leftovers: {names:?}");

    // too small an image is refused up front
    let small = ImageOptions {
        size: 1 << 20,
        ..iopts
    };
    let e = image(&fl, &tmp.path().join("small.img"), &small).unwrap_err();
    assert!(matches!(e, ImageError::TooSmall { .. }), "{e}");
    assert!(!tmp.path().join("small.img").exists());
    force_remove(&src);
}
