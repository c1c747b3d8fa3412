//! `oci-runtime` image: hostile layers (paths with `..`, absolute paths, escaping symlinks and
//! hard links) never write outside the root; hard links, modes, owners, times and devices.
#![allow(clippy::unwrap_used)]

mod image_common;

use image_common::{is_root, read, unpack, Layout, Tar};
use serde_json::json;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Unpacks a one-layer image made of `tar`; returns the error text and the outside directory,
/// which must stay empty.
fn unpack_hostile(tar: Vec<u8>) -> (String, tempfile::TempDir, tempfile::TempDir) {
    let t = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("img"));
    let layer = l.layer_tar(&tar);
    l.simple(json!({"Cmd": ["/x"]}), &[layer]);
    let e = unpack(&l.dir, None, &t.path().join("a/b/bundle"))
        .unwrap_err()
        .to_string();
    (e, t, outside)
}

#[test]
fn path_traversal_is_refused() {
    let (e, t, _) = unpack_hostile(Tar::new().file("../../../x", b"pwned").finish());
    assert!(
        e.contains("`..` in path") && e.contains("refusing to unpack outside"),
        "{e}"
    );
    assert!(!t.path().join("x").exists() && !t.path().join("a/x").exists());

    let (e, _, _) = unpack_hostile(Tar::new().file("/abs-escape", b"pwned").finish());
    assert!(e.contains("absolute path"), "{e}");
    assert!(!Path::new("/abs-escape").exists());

    // A symlink pointing above the root, then a write through it.
    let (e, t, _) = unpack_hostile(
        Tar::new()
            .symlink("esc", "../../../../..")
            .file("esc/x", b"pwned")
            .finish(),
    );
    assert!(
        e.contains("symlink target `../../../../..` leads outside"),
        "{e}"
    );
    assert!(!t.path().join("x").exists());
    let (e, _, _) = unpack_hostile(
        Tar::new()
            .dir("d/", 0o755)
            .symlink("d/up", "../..")
            .finish(),
    );
    assert!(e.contains("leads outside"), "{e}");

    // A hard link to a file outside.
    let (e, _, _) = unpack_hostile(Tar::new().hardlink("h", "../../../../etc/passwd").finish());
    assert!(e.contains("`..` in path"), "{e}");
    let (e, _, _) = unpack_hostile(Tar::new().hardlink("h", "/etc/passwd").finish());
    assert!(e.contains("absolute path"), "{e}");
}

#[test]
fn absolute_symlinks_resolve_inside_the_root() {
    // An absolute symlink is legal (it means a path in the container); writing through it lands
    // inside the root filesystem, never on the host path it names.
    let outside = tempfile::tempdir().unwrap();
    let host = outside.path().to_str().unwrap().to_string();
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("img"));
    let l1 = l.layer_tar(
        &Tar::new()
            .symlink("host", &host)
            .symlink("lib", "usr/lib")
            .dir("usr/", 0o755)
            .dir("usr/lib/", 0o755)
            .finish(),
    );
    let l2 = l.layer_tar(
        &Tar::new()
            .file("host/pwned", b"inside")
            .file("lib/libc.so", b"elf")
            .finish(),
    );
    l.simple(json!({"Cmd": ["/x"]}), &[l1, l2]);
    let bundle = t.path().join("bundle");
    unpack(&l.dir, None, &bundle).unwrap();
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing written on the host"
    );
    let r = bundle.join("rootfs");
    assert_eq!(
        read(&r.join(host.trim_start_matches('/')).join("pwned")),
        "inside"
    );
    assert_eq!(read(&r.join("usr/lib/libc.so")), "elf");
    assert!(std::fs::symlink_metadata(r.join("lib"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn hard_links_share_the_inode() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("img"));
    let l1 = l.layer_tar(
        &Tar::new()
            .dir("bin/", 0o755)
            .file_with("bin/busybox", b"#!bb", 0o755, 0, 0, 1_600_000_000)
            .hardlink("bin/sh", "bin/busybox")
            .finish(),
    );
    let l2 = l.layer_gzip(&Tar::new().hardlink("bin/ls", "./bin/busybox").finish());
    let l3 = l.layer_tar(&Tar::new().hardlink("bin/dangling", "bin/nothing").finish());
    l.simple(json!({"Cmd": ["/bin/sh"]}), &[l1.clone(), l2.clone()]);
    let bundle = t.path().join("bundle");
    let u = unpack(&l.dir, None, &bundle).unwrap();
    let r = bundle.join("rootfs");
    let ino = std::fs::metadata(r.join("bin/busybox")).unwrap().ino();
    for name in ["bin/sh", "bin/ls"] {
        let m = std::fs::metadata(r.join(name)).unwrap();
        assert_eq!(m.ino(), ino, "{name}");
        assert_eq!(m.nlink(), 3);
    }
    assert_eq!(u.stats.hardlinks, 2);
    l.simple(json!({"Cmd": ["/bin/sh"]}), &[l1, l2, l3]);
    let e = unpack(&l.dir, None, &t.path().join("b2"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hard link to `bin/nothing`: target does not exist"),
        "{e}"
    );
}

#[test]
fn modes_owners_times_and_devices() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("img"));
    let layer = l.layer_tar(
        &Tar::new()
            .dir("d/", 0o711)
            .file_with("d/suid", b"x", 0o4755, 1234, 5678, 1_500_000_000)
            .file_with("ro", b"y", 0o400, 0, 0, 1_400_000_000)
            .device("dev-null", tar::EntryType::Char, 1, 3)
            .device("fifo", tar::EntryType::Fifo, 0, 0)
            .finish(),
    );
    l.simple(json!({"Cmd": ["/x"]}), &[layer]);
    let bundle = t.path().join("bundle");
    let u = unpack(&l.dir, None, &bundle).unwrap();
    let r = bundle.join("rootfs");
    let m = std::fs::metadata(r.join("d/suid")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4755);
    assert_eq!(m.mtime(), 1_500_000_000);
    let d = std::fs::metadata(r.join("d")).unwrap();
    assert_eq!(d.mode() & 0o7777, 0o711);
    assert_eq!(
        d.mtime(),
        1_600_000_000,
        "directory times are set after their contents"
    );
    assert_eq!(
        std::fs::metadata(r.join("ro")).unwrap().mode() & 0o7777,
        0o400
    );
    assert!(std::fs::symlink_metadata(r.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    if is_root() {
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        let dev = std::fs::symlink_metadata(r.join("dev-null")).unwrap();
        assert!(dev.file_type().is_char_device());
        assert_eq!(dev.rdev(), libc::makedev(1, 3));
        assert_eq!(u.stats.skipped, 0);
    } else {
        println!("not root: owners and device nodes are not checked (they need root)");
        assert!(!r.join("dev-null").exists());
        assert_eq!(u.stats.skipped, 1);
    }
}

#[test]
fn without_root_devices_are_skipped_and_owners_left() {
    // What an unprivileged caller gets (decided by ApplyOptions::for_current_user()).
    let t = tempfile::tempdir().unwrap();
    let root = oci_runtime::image::fs::RootDir::open(t.path()).unwrap();
    let tar = Tar::new()
        .device("null", tar::EntryType::Char, 1, 3)
        .device("sda", tar::EntryType::Block, 8, 0)
        .device("pipe", tar::EntryType::Fifo, 0, 0)
        .file_with("owned", b"x", 0o644, 4321, 4321, 1_600_000_000)
        .finish();
    let opts = oci_runtime::image::layer::ApplyOptions {
        limits: Default::default(),
        chown: false,
        mknod: false,
    };
    let s = oci_runtime::image::layer::apply(
        &root,
        &tar[..],
        oci_runtime::image::layer::Compression::None,
        opts,
    )
    .unwrap();
    assert_eq!((s.skipped, s.specials, s.files), (2, 1, 1));
    assert!(!t.path().join("null").exists() && !t.path().join("sda").exists());
    assert!(std::fs::symlink_metadata(t.path().join("pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    // SAFETY: no preconditions.
    let me = unsafe { libc::geteuid() };
    assert_eq!(std::fs::metadata(t.path().join("owned")).unwrap().uid(), me);
}
