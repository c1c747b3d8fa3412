//! `oci-runtime` image: OCI image layouts built here (tar, gzip and zstd layers, JSON
//! documents, sha256 digests) unpacked into bundles: layer order, whiteouts, tags,
//! platforms, blob verification and bad layouts.
#![allow(clippy::unwrap_used)]

mod image_common;

use image_common::{for_platform, read, tagged, unpack, Layout, Tar};
use oci_runtime::image::{self, layer, layout, ImageRef};
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[test]
fn layers_apply_in_order_with_whiteouts_and_opaque_dirs() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("img"));
    let base = Tar::new()
        .dir("etc/", 0o755)
        .file("etc/motd", b"base motd\n")
        .dir("a/", 0o755)
        .file("a/keep", b"keep")
        .file("a/gone", b"gone")
        .dir("a/gonedir/", 0o755)
        .file("a/gonedir/inner", b"x")
        .dir("opq/", 0o755)
        .file("opq/old", b"old")
        .dir("opq/sub/", 0o755)
        .file("opq/sub/old2", b"old2")
        .file("replaced", b"a file first")
        .finish();
    let mid = Tar::new()
        .file("a/.wh.gone", b"")
        .file("a/.wh.gonedir", b"")
        .file("opq/sub/new2", b"new2") // written before the marker: stays
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new", b"new")
        .file("etc/motd", b"mid motd\n")
        .file("a/.wh.never-existed", b"")
        .file("nodir/deep/file", b"parents made on the way")
        .finish();
    let top = Tar::new()
        .dir("replaced/", 0o750)
        .file("replaced/inside", b"now a dir")
        .file("a/gone", b"back again")
        .symlink("motd-link", "/etc/motd")
        .finish();
    let layers = [l.layer_tar(&base), l.layer_gzip(&mid), l.layer_zstd(&top)];
    l.simple(json!({"Cmd": ["/bin/sh"]}), &layers);

    let bundle = t.path().join("bundle");
    let u = unpack(&l.dir, None, &bundle).unwrap();
    let r = bundle.join("rootfs");
    assert_eq!(read(&r.join("etc/motd")), "mid motd\n");
    assert_eq!(read(&r.join("a/keep")), "keep");
    assert_eq!(read(&r.join("a/gone")), "back again");
    assert!(!r.join("a/gonedir").exists());
    assert!(
        !r.join("opq/old").exists(),
        "opaque dir keeps nothing from below"
    );
    assert!(
        !r.join("opq/sub/old2").exists(),
        "opaque dir keeps nothing from below, however deep"
    );
    assert_eq!(read(&r.join("opq/sub/new2")), "new2");
    assert_eq!(read(&r.join("opq/new")), "new");
    assert!(!r.join("opq/.wh..wh..opq").exists());
    assert!(!r.join("a/.wh.gone").exists());
    assert_eq!(read(&r.join("nodir/deep/file")), "parents made on the way");
    assert_eq!(read(&r.join("replaced/inside")), "now a dir");
    assert_eq!(
        std::fs::metadata(r.join("replaced")).unwrap().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        std::fs::read_link(r.join("motd-link")).unwrap(),
        Path::new("/etc/motd")
    );
    assert_eq!(u.stats.whiteouts, 4);
    assert_eq!(u.image.manifest.layers().len(), 3);
}

fn two_tag_layout(dir: &Path) -> Layout {
    let l = Layout::new(dir);
    let mut descs = Vec::new();
    for v in ["v1", "v2"] {
        let layer = l.layer_gzip(&Tar::new().file("version", v.as_bytes()).finish());
        let c = l.config(json!({"Cmd": ["/bin/true"]}), std::slice::from_ref(&layer));
        let m = l.manifest(&c, &[layer], json!({}));
        descs.push(tagged(&m, v));
    }
    l.index(&descs);
    l
}

#[test]
fn tag_selects_the_manifest() {
    let t = tempfile::tempdir().unwrap();
    let l = two_tag_layout(&t.path().join("img"));
    unpack(&l.dir, Some("v2"), &t.path().join("b2")).unwrap();
    assert_eq!(read(&t.path().join("b2/rootfs/version")), "v2");
    // DIR:TAG through the parser.
    let r = ImageRef::parse(&format!("{}:v1", l.dir.display()));
    image::unpack_bundle(&r, &t.path().join("b1")).unwrap();
    assert_eq!(read(&t.path().join("b1/rootfs/version")), "v1");

    let e = unpack(&l.dir, Some("v3"), &t.path().join("b3"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no image tagged `v3`") && e.contains("v1, v2"),
        "{e}"
    );
    assert!(
        !t.path().join("b3").exists(),
        "a failed unpack leaves no bundle behind"
    );
    let e = unpack(&l.dir, None, &t.path().join("b4"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds 2 images") && e.contains("DIR:TAG"), "{e}");
}

#[test]
fn nested_index_and_platform_choice() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("img"));
    let mut per_arch = Vec::new();
    for arch in ["arm64", "amd64", "s390x"] {
        let layer = l.layer_tar(&Tar::new().file("arch", arch.as_bytes()).finish());
        let c = l.config_for(
            arch,
            json!({"Cmd": ["/bin/true"]}),
            std::slice::from_ref(&layer),
        );
        let m = l.manifest(&c, &[layer], json!({}));
        per_arch.push(for_platform(&m, "linux", arch));
    }
    let nested = l.nested_index(&per_arch);
    l.index(&[tagged(&nested, "multi")]);
    unpack(&l.dir, Some("multi"), &t.path().join("b")).unwrap();
    assert_eq!(read(&t.path().join("b/rootfs/arch")), layout::host_arch());

    // Multi-platform directly in index.json too.
    l.index(&per_arch);
    unpack(&l.dir, None, &t.path().join("b2")).unwrap();
    assert_eq!(read(&t.path().join("b2/rootfs/arch")), layout::host_arch());

    // No manifest for this host.
    let only_arm = l.nested_index(&per_arch[..1]);
    l.index(&[only_arm]);
    let e = unpack(&l.dir, None, &t.path().join("b3"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no image for linux/") && e.contains("linux/arm64"),
        "{e}"
    );

    // Indexes nested too deep are refused (a digest cannot name itself, so a chain).
    let mut inner = per_arch[1].clone();
    for _ in 0..10 {
        inner = for_platform(&l.nested_index(&[inner]), "linux", layout::host_arch());
    }
    l.index(&[inner]);
    let e = unpack(&l.dir, None, &t.path().join("b4"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nested more than"), "{e}");
}

#[test]
fn blobs_are_verified_before_use() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("img"));
    let layer = l.layer_gzip(&Tar::new().file("f", b"content").finish());
    l.simple(json!({"Cmd": ["/f"]}), std::slice::from_ref(&layer));
    let blob = l.blob_path(&layer);
    let good = std::fs::read(&blob).unwrap();

    // Same size, one byte flipped.
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&blob, &bad).unwrap();
    let bundle = t.path().join("b");
    let e = unpack(&l.dir, None, &bundle).unwrap_err();
    assert!(
        matches!(
            e,
            image::Error::Layout(layout::Error::DigestMismatch { .. })
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("corrupt or was tampered with"),
        "{e}"
    );
    assert!(!bundle.exists());

    // Different size.
    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(&blob, &longer).unwrap();
    let e = unpack(&l.dir, None, &bundle).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "size is {} bytes, the descriptor says {}",
            good.len() + 1,
            good.len()
        )),
        "{e}"
    );

    // Missing.
    std::fs::remove_file(&blob).unwrap();
    let e = unpack(&l.dir, None, &bundle).unwrap_err();
    assert!(
        matches!(e, image::Error::Layout(layout::Error::MissingBlob { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("is missing"), "{e}");

    // A tampered manifest is caught too.
    std::fs::write(&blob, &good).unwrap();
    let index: Value = serde_json::from_str(&read(&l.dir.join("index.json"))).unwrap();
    let manifest = l.blob_path(&index["manifests"][0]);
    let mut m = std::fs::read(&manifest).unwrap();
    m[0] = b' ';
    std::fs::write(&manifest, &m).unwrap();
    let e = unpack(&l.dir, None, &bundle).unwrap_err();
    assert!(
        matches!(
            e,
            image::Error::Layout(layout::Error::DigestMismatch { .. })
        ),
        "{e}"
    );

    // A FIFO in place of a blob is an error, not a hang.
    std::fs::remove_file(&manifest).unwrap();
    let c = std::ffi::CString::new(manifest.to_str().unwrap()).unwrap();
    // SAFETY: valid path string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let e = unpack(&l.dir, None, &bundle).unwrap_err().to_string();
    assert!(
        e.contains("not a regular file") || e.contains("size is"),
        "{e}"
    );
}

#[test]
fn corrupt_layer_streams_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("img"));
    let tar = Tar::new().file("f", &[7u8; 100_000]).finish();
    let gz = image_common::gzip(&tar);
    // Truncated gzip with a matching digest: verification passes, decompression fails.
    let layer = l.blob(image_common::LAYER_GZIP, &gz[..gz.len() / 2]);
    l.simple(json!({"Cmd": ["/f"]}), &[layer]);
    let e = unpack(&l.dir, None, &t.path().join("b"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("layer 1 (sha256:"), "{e}");
    // Not compressed at all although the media type says zstd.
    let l2 = Layout::new(&t.path().join("img2"));
    let layer = l2.blob(image_common::LAYER_ZSTD, &tar);
    l2.simple(json!({"Cmd": ["/f"]}), &[layer]);
    let e = unpack(&l2.dir, None, &t.path().join("b2"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 1"), "{e}");
    // An unknown layer type.
    let l3 = Layout::new(&t.path().join("img3"));
    let layer = l3.blob("application/vnd.oci.image.layer.v1.tar+bzip2", &tar);
    l3.simple(json!({"Cmd": ["/f"]}), &[layer]);
    let e = unpack(&l3.dir, None, &t.path().join("b3"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unsupported media type") && e.contains("bzip2"),
        "{e}"
    );
}

#[test]
fn bundle_must_be_empty_and_layouts_valid() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("img"));
    let layer = l.layer_tar(&Tar::new().file("x", b"").finish());
    l.simple(json!({"Cmd": ["/x"]}), &[layer]);
    let bundle = t.path().join("b");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("precious"), b"keep me").unwrap();
    let e = unpack(&l.dir, None, &bundle).unwrap_err().to_string();
    assert!(e.contains("exists and is not empty"), "{e}");
    assert_eq!(read(&bundle.join("precious")), "keep me");

    // An existing empty directory is fine and stays after a failure.
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    unpack(&l.dir, None, &empty).unwrap();
    assert!(empty.join("config.json").is_file());

    let e = unpack(&t.path().join("nope"), None, &t.path().join("b3"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an OCI image layout"), "{e}");
    std::fs::write(
        l.dir.join("index.json"),
        b"{\"schemaVersion\": 2, \"manifests\": []}",
    )
    .unwrap();
    let e = unpack(&l.dir, None, &t.path().join("b4"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("lists no manifests"), "{e}");
    std::fs::write(l.dir.join("index.json"), b"[1,2").unwrap();
    let e = unpack(&l.dir, None, &t.path().join("b5"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a valid image index"), "{e}");
}

#[test]
fn layer_module_counts_entries() {
    // Directly through the layer API: a plain tar into an existing root.
    let t = tempfile::tempdir().unwrap();
    let root = image::fs::RootDir::open(t.path()).unwrap();
    let tar = Tar::new()
        .dir("a/", 0o755)
        .file("a/b", b"12345")
        .symlink("c", "a/b")
        .finish();
    let opts = layer::ApplyOptions {
        limits: Default::default(),
        chown: false,
        mknod: false,
    };
    let s = layer::apply(&root, &tar[..], layer::Compression::None, opts).unwrap();
    assert_eq!((s.files, s.dirs, s.symlinks, s.bytes), (1, 1, 1, 5));
    assert_eq!(read(&t.path().join("c")), "12345");
}
