//! `oci-runtime` image: hostile images as an attacker who publishes one would make them.
//! Decompression bombs, oversized tar extension headers, too many entries or layers, deep and
//! long paths, absurd header numbers, link tricks, nested indexes, lying descriptors, deeply
//! nested JSON, oversized configs and special files where files are read: each ends quickly
//! with a clear error, writes nothing outside its target, and leaves the process able to
//! unpack a good image afterwards.
#![allow(clippy::unwrap_used)]

mod image_common;

use image_common::hostile::{cksum, gzip_with_zeros, header, limits, mkfifo, timed, Case};
use image_common::{gzip, zstd, Tar, LAYER_GZIP, LAYER_TAR, LAYER_ZSTD};
use oci_runtime::image::{self, layer, layout, user};
use serde_json::{json, Value};

#[test]
fn decompression_bombs_stop_before_the_disk_fills() {
    // 64 MiB of zeros in one file, a few tens of KiB compressed, against an 8 MiB budget:
    // refused at the entry's header, before a byte of it is written.
    let c = Case::new();
    let gz = gzip_with_zeros(&header(b"bomb", b'0', 64 << 20), 64 << 20);
    assert!(gz.len() < 1 << 20);
    let e = c.layer_error(LAYER_GZIP, &gz, limits(8 << 20, 1000));
    assert!(
        e.contains("entry `bomb` of 67108864 bytes goes beyond the limit"),
        "{e}"
    );
    assert!(!c.root().join("bomb").exists());
    c.still_fine();

    // The same through zstd, split over many small files: stopped once the budget is spent.
    let c = Case::new();
    let mut t = Tar::new();
    let data = vec![0u8; 1 << 20];
    for i in 0..32 {
        t.file(&format!("f{i}"), &data);
    }
    let e = c.layer_error(LAYER_ZSTD, &zstd(&t.finish()), limits(8 << 20, 1000));
    assert!(e.contains("goes beyond the limit of 8388608 bytes"), "{e}");
    let written = std::fs::read_dir(c.root()).unwrap().count();
    assert!(written <= 8, "{written} files written");
    c.still_fine();

    // The budget holds for the image, not per layer: three layers of 4 MiB against 8 MiB.
    let c = Case::new();
    let layers: Vec<Value> = (0..3)
        .map(|i| {
            c.l.layer_gzip(
                &Tar::new()
                    .file(&format!("l{i}"), &vec![1u8; 4 << 20])
                    .finish(),
            )
        })
        .collect();
    c.l.simple(json!({"Cmd": ["/x"]}), &layers);
    let e = timed(|| c.unpack(limits(9 << 20, 1000)));
    assert!(e.starts_with("layer 3 ("), "{e}");
    c.still_fine();

    // Data the unpack would only skip (a "directory" claiming 1 TiB of contents) is charged too.
    let c = Case::new();
    let e = c.layer_error(
        LAYER_GZIP,
        &gzip(&header(b"d/", b'5', 1 << 40)),
        limits(8 << 20, 100),
    );
    assert!(e.contains("entry `d/` of 1099511627776 bytes"), "{e}");
    c.still_fine();

    // A file larger than the target file system's free space less the reserve: refused before
    // it is created.
    let c = Case::new();
    let tar = Tar::new().file("big", &[1u8; 4096]).finish();
    let no_room = layer::Limits {
        reserve: u64::MAX / 2,
        ..layer::Limits::DEFAULT
    };
    let e = c.layer_error(LAYER_TAR, &tar, no_room);
    assert!(e.contains("entry `big`: 4096 bytes do not fit"), "{e}");
    assert!(!c.root().join("big").exists());
    c.still_fine();
}

#[test]
fn oversized_tar_extension_headers_are_refused_unread() {
    // GNU long name, long link name, PAX local and global headers claiming 4 GiB: refused at
    // their header (the tar crate would read them whole into memory).
    for (kind, what) in [
        (b'L', "GNU long name of 4294967296 bytes"),
        (b'K', "GNU long link name of 4294967296 bytes"),
        (b'x', "PAX extended header of 4294967296 bytes"),
        (b'g', "PAX global header of 4294967296 bytes"),
    ] {
        let c = Case::new();
        let gz = gzip_with_zeros(&header(b"././@LongLink", kind, 4 << 30), 1 << 20);
        let e = c.layer_error(LAYER_GZIP, &gz, layer::Limits::DEFAULT);
        assert!(
            e.contains(what) && e.contains("goes beyond the limit"),
            "{e}"
        );
        c.still_fine();
    }
    // A PAX size record that disagrees with nothing but is absurd: charged like any size.
    let c = Case::new();
    let rec = b"29 size=99999999999999999999\n";
    let mut tar = header(b"pax", b'x', rec.len() as u64).to_vec();
    tar.extend_from_slice(rec);
    tar.resize(1024, 0);
    tar.extend_from_slice(&header(b"f", b'0', 0));
    tar.resize(2560, 0);
    let e = c.layer_error(LAYER_TAR, &tar, layer::Limits::DEFAULT);
    assert!(
        e.contains("not a number") || e.contains("goes beyond"),
        "{e}"
    );
    c.still_fine();
}

#[test]
fn too_many_entries_and_layers() {
    let c = Case::new();
    let mut t = Tar::new();
    for i in 0..2000 {
        t.file(&format!("e{i}"), b"");
    }
    let e = c.layer_error(LAYER_TAR, &t.finish(), limits(1 << 30, 500));
    assert!(
        e.contains("entry 501 of the image goes beyond the limit of 500 entries"),
        "{e}"
    );
    c.still_fine();

    // Thousands of files, then the same opaque whiteout repeated: each would list them all.
    let c = Case::new();
    let mut t = Tar::new();
    for i in 0..2000 {
        t.file(&format!("d/e{i}"), b"");
    }
    for _ in 0..10_000 {
        t.file("d/.wh..wh..opq", b"");
    }
    let d = c.l.layer_gzip(&t.finish());
    c.l.simple(json!({}), &[d]);
    let start = std::time::Instant::now();
    let u = c.unpack(layer::Limits::DEFAULT).unwrap();
    assert!(start.elapsed() < image_common::hostile::DEADLINE);
    assert_eq!((u.stats.files, u.stats.whiteouts), (2000, 10_000));
    c.still_fine();

    // A manifest listing thousands of layers (all the same small blob).
    let c = Case::new();
    let one = c.l.layer_tar(&Tar::new().file("f", b"x").finish());
    let layers = vec![one; layout::MAX_LAYERS + 1];
    c.l.simple(json!({}), &layers);
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(e.contains("lists 1025 layers; at most 1024"), "{e}");
    c.still_fine();
}

#[test]
fn long_paths_and_deep_nesting() {
    // A 5000-byte name through a GNU long name header.
    let c = Case::new();
    let name = "d/".repeat(2500);
    let mut tar = header(b"././@LongLink", b'L', name.len() as u64).to_vec();
    tar.extend_from_slice(name.as_bytes());
    tar.resize(512 + name.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&header(b"x", b'5', 0));
    tar.extend_from_slice(&[0u8; 1024]);
    let e = c.layer_error(LAYER_TAR, &tar, layer::Limits::DEFAULT);
    assert!(e.contains("path longer than 4096 bytes"), "{e}");
    assert!(e.len() < 1000, "error text of {} bytes", e.len());
    c.still_fine();

    // 300 directories deep, within PATH_MAX.
    let c = Case::new();
    let deep = "a/".repeat(300);
    let mut tar = header(b"././@LongLink", b'L', deep.len() as u64).to_vec();
    tar.extend_from_slice(deep.as_bytes());
    tar.resize(512 + deep.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&header(b"x", b'5', 0));
    tar.extend_from_slice(&[0u8; 1024]);
    let e = c.layer_error(LAYER_TAR, &tar, layer::Limits::DEFAULT);
    assert!(e.contains("nested more than 128 deep"), "{e}");
    c.still_fine();

    // The same depth reached through symlinks that each add 100 levels.
    let c = Case::new();
    let hundred = "b/".repeat(100);
    let mut t = Tar::new();
    t.dir("s0/", 0o755);
    let mut tar = t.finish();
    tar.truncate(tar.len() - 1024);
    for i in 0..4 {
        // s{i+1} -> s{i}/b/b/.../b (a long target: through a long link header)
        let target = format!("s{i}/{hundred}");
        let mut h = header(b"././@LongLink", b'K', target.len() as u64).to_vec();
        h.extend_from_slice(target.as_bytes());
        h.resize(512 + target.len().div_ceil(512) * 512, 0);
        tar.extend(h);
        tar.extend(header(format!("s{}", i + 1).as_bytes(), b'2', 0));
    }
    tar.extend(header(b"s4/x", b'0', 0));
    tar.extend([0u8; 1024]);
    let e = c.layer_error(LAYER_TAR, &tar, layer::Limits::DEFAULT);
    assert!(e.contains("nested more than 128 deep"), "{e}");
    c.still_fine();
}

#[test]
fn absurd_header_numbers() {
    // uid beyond 32 bits (base-256 encoded).
    let c = Case::new();
    let mut h = tar::Header::from_byte_slice(&header(b"f", b'0', 0)).clone();
    h.as_gnu_mut().unwrap().uid = [0x80, 0, 0, 0x10, 0, 0, 0, 0];
    let mut tar = cksum(*h.as_bytes()).to_vec();
    tar.extend([0u8; 1024]);
    let e = c.layer_error(LAYER_TAR, &tar, layer::Limits::DEFAULT);
    assert!(e.contains("uid out of range"), "{e}");
    c.still_fine();

    // A size field that overflows u64 (base-256, all ones).
    let c = Case::new();
    let mut b = header(b"f", b'0', 0);
    b[124..136].copy_from_slice(&[0xff; 12]);
    let mut tar = cksum(b).to_vec();
    tar.extend([0u8; 1024]);
    let e = c.layer_error(LAYER_TAR, &tar, layer::Limits::DEFAULT);
    assert!(
        e.contains("reading layer") || e.contains("goes beyond"),
        "{e}"
    );
    c.still_fine();

    // Modes with every bit set, times far in the future and before the epoch: accepted,
    // mode bits limited to 07777.
    let c = Case::new();
    let tar = Tar::new()
        .file_with("m", b"x", 0o7777777, 0, 0, 1 << 40)
        .file_with("n", b"y", 0o644, 0, 0, 0)
        .finish();
    let d = c.l.layer_tar(&tar);
    c.l.simple(json!({}), &[d]);
    c.unpack(layer::Limits::DEFAULT).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(c.root().join("m")).unwrap().mode() & 0o7777,
        0o7777
    );
    c.still_fine();
}

#[test]
fn link_tricks() {
    // A hard link to a file a whiteout removed, in the same layer: no target, clear error.
    let c = Case::new();
    let l1 = c.l.layer_tar(&Tar::new().file("secret", b"s").finish());
    let l2 = c.l.layer_tar(
        &Tar::new()
            .file(".wh.secret", b"")
            .hardlink("h", "secret")
            .finish(),
    );
    c.l.simple(json!({}), &[l1, l2]);
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(
        e.contains("hard link to `secret`: target does not exist"),
        "{e}"
    );
    c.still_fine();

    // A hard link to a symlink that points outside links the symlink itself, and a whiteout of
    // one hard link leaves the other name and the file intact.
    let c = Case::new();
    let outside = c.t.path().join("outside");
    let l1 = c.l.layer_tar(
        &Tar::new()
            .symlink("out", outside.to_str().unwrap())
            .hardlink("out2", "out")
            .file("f", b"data")
            .hardlink("g", "f")
            .finish(),
    );
    let l2 = c.l.layer_tar(
        &Tar::new()
            .file(".wh.f", b"")
            .file("out2/x", b"pwn")
            .finish(),
    );
    c.l.simple(json!({}), &[l1, l2]);
    c.unpack(layer::Limits::DEFAULT).unwrap();
    assert!(std::fs::symlink_metadata(c.root().join("out2"))
        .unwrap()
        .is_symlink());
    assert!(!c.root().join("f").exists());
    assert_eq!(std::fs::read(c.root().join("g")).unwrap(), b"data");
    // `out2/x` was written inside the root, at the path the symlink names there.
    let inside = c.root().join(outside.strip_prefix("/").unwrap()).join("x");
    assert_eq!(std::fs::read(inside).unwrap(), b"pwn");
    c.still_fine();

    // Symlink loops and chains longer than 40 hops: ELOOP, not a hang.
    let c = Case::new();
    let mut t = Tar::new();
    t.symlink("a", "b").symlink("b", "a").file("a/x", b"");
    let e = c.layer_error(LAYER_TAR, &t.finish(), layer::Limits::DEFAULT);
    assert!(
        e.contains("resolving parent directory") && e.contains("symbolic links"),
        "{e}"
    );
    c.still_fine();
    let c = Case::new();
    let mut t = Tar::new();
    t.dir("d/", 0o755);
    for i in 0..60 {
        let target = if i == 0 {
            "d".to_string()
        } else {
            format!("c{}", i - 1)
        };
        t.symlink(&format!("c{i}"), &target);
    }
    t.file("c59/x", b"");
    let e = c.layer_error(LAYER_TAR, &t.finish(), layer::Limits::DEFAULT);
    assert!(e.contains("symbolic links"), "{e}");
    c.still_fine();
}

#[test]
fn sparse_files_are_bounded_and_correct() {
    // A GNU sparse file: "abc" at offset 4096 of an 8192-byte file.
    let sparse = |real: u64, off: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_path("s").unwrap();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(512);
        let g = h.as_gnu_mut().unwrap();
        g.sparse[0].set_offset(off);
        g.sparse[0].set_length(512);
        g.realsize = *b"00000000000\0";
        let r = format!("{real:011o}");
        if r.len() == 11 {
            g.realsize[..11].copy_from_slice(r.as_bytes());
        } else {
            g.realsize = [0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            g.realsize[4..].copy_from_slice(&real.to_be_bytes());
        }
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        let mut data = [0u8; 512];
        data[..3].copy_from_slice(b"abc");
        tar.extend(data);
        tar.extend([0u8; 1024]);
        tar
    };
    let c = Case::new();
    let d = c.l.layer_tar(&sparse(8192, 4096));
    c.l.simple(json!({}), &[d]);
    c.unpack(layer::Limits::DEFAULT).unwrap();
    let got = std::fs::read(c.root().join("s")).unwrap();
    assert_eq!(got.len(), 8192);
    assert_eq!(&got[4096..4099], b"abc");
    assert!(got[..4096].iter().all(|&b| b == 0));
    c.still_fine();

    // 1 TiB of holes around 512 stored bytes: charged at its full size, refused at once.
    let c = Case::new();
    let e = c.layer_error(LAYER_TAR, &sparse(1 << 40, 1 << 39), limits(64 << 20, 100));
    assert!(
        e.contains("entry `s` of 1099511627776 bytes goes beyond"),
        "{e}"
    );
    assert!(!c.root().join("s").exists());
    c.still_fine();

    // A map that claims more than the file holds.
    let c = Case::new();
    let e = c.layer_error(LAYER_TAR, &sparse(100, 4096), layer::Limits::DEFAULT);
    assert!(
        e.contains("GNU sparse map out of order or beyond the file"),
        "{e}"
    );
    c.still_fine();
}

/// Writes `index.json` verbatim.
fn raw_index(c: &Case, text: &[u8]) {
    std::fs::write(c.l.dir.join("index.json"), text).unwrap();
}

#[test]
fn hostile_indexes_and_descriptors() {
    // JSON nested 100000 deep: skipped without recursion (or refused at its first wrong token
    // in a typed field), not a stack overflow.
    let c = Case::new();
    let mut deep = "[".repeat(100_000);
    deep.push_str(&"]".repeat(100_000));
    // (In a field the parser skips: typed fields fail at their first wrong token.)
    raw_index(
        &c,
        format!(r#"{{"schemaVersion":2,"x":{deep},"manifests":[]}}"#).as_bytes(),
    );
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(e.contains("the image index lists no manifests"), "{e}");
    raw_index(
        &c,
        format!(r#"{{"schemaVersion":2,"manifests":{deep}}}"#).as_bytes(),
    );
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(e.contains("is not a valid image index"), "{e}");
    c.still_fine();

    // Indexes nested 20 deep.
    let c = Case::new();
    let layer = c.l.layer_tar(&Tar::new().file("f", b"x").finish());
    let mut d = c.l.manifest(
        &c.l.config(json!({}), std::slice::from_ref(&layer)),
        &[layer],
        json!({}),
    );
    for _ in 0..20 {
        d = c.l.nested_index(&[d]);
    }
    c.l.index(&[d]);
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(e.contains("nested more than 8 deep"), "{e}");
    c.still_fine();

    // Descriptor sizes: huge, negative, not a number.
    for (size, want) in [
        (
            "18446744073709551615",
            "bytes is too large for an image manifest",
        ),
        ("-1", "is not a valid image index"),
        ("1e30", "is not a valid image index"),
    ] {
        let c = Case::new();
        let m = c.l.simple(json!({}), &[]);
        let digest = m["digest"].as_str().unwrap();
        raw_index(
            &c,
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{digest}","size":{size}}}]}}"#,
                image_common::MANIFEST
            )
            .as_bytes(),
        );
        let e = timed(|| c.unpack(layer::Limits::DEFAULT));
        assert!(e.contains(want), "{size}: {e}");
        c.still_fine();
    }

    // Media types that lie: an index said to be a manifest, a layer said to be the config, a
    // zstd layer said to be gzip.
    let c = Case::new();
    let inner = c.l.simple(json!({}), &[]);
    let mut idx = c.l.nested_index(&[inner]);
    idx["mediaType"] = json!(image_common::MANIFEST);
    c.l.index(&[idx]);
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(e.contains("is not a valid image manifest"), "{e}");
    c.still_fine();
    let c = Case::new();
    let layer = c.l.layer_tar(&Tar::new().file("f", b"x").finish());
    let m =
        c.l.manifest(&layer, std::slice::from_ref(&layer), json!({}));
    c.l.index(&[m]);
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(e.contains("unsupported media type"), "{e}");
    c.still_fine();
    let c = Case::new();
    let mut d = c.l.layer_zstd(&Tar::new().file("f", b"x").finish());
    d["mediaType"] = json!(LAYER_GZIP);
    c.l.simple(json!({}), &[d]);
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(e.contains("reading layer"), "{e}");
    c.still_fine();
}

#[test]
fn oversized_configs() {
    // 300000 Env entries (about 3 MiB): more than a process can start with.
    let c = Case::new();
    let env: Vec<String> = (0..300_000).map(|i| format!("V{i}=1")).collect();
    c.l.simple(json!({"Env": env, "Cmd": ["/x"]}), &[]);
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(
        e.contains("Entrypoint, Cmd and Env hold 300001 strings"),
        "{e}"
    );
    c.still_fine();

    // A config blob above the JSON limit: refused from its descriptor, unread.
    let c = Case::new();
    let big = vec![b' '; 5 << 20];
    let cfg = c.l.blob(image_common::CONFIG, &big);
    let m = c.l.manifest(&cfg, &[], json!({}));
    c.l.index(&[m]);
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(e.contains("is too large for an image configuration"), "{e}");
    c.still_fine();
}

#[test]
fn special_files_where_files_are_read() {
    // The image's /etc/passwd as a FIFO, a device (as root) and larger than 8 MiB.
    let mut t = Tar::new();
    t.dir("etc/", 0o755);
    t.device("etc/passwd", tar::EntryType::Fifo, 0, 0);
    let c = Case::new();
    let layer = c.l.layer_tar(&t.finish());
    c.l.simple(json!({"User": "app"}), &[layer]);
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(e.contains("/etc/passwd: not a regular file"), "{e}");
    c.still_fine();
    if image_common::is_root() {
        // A character device (the host's watchdog, 10:130): never opened.
        let mut t = Tar::new();
        t.dir("etc/", 0o755);
        t.device("etc/passwd", tar::EntryType::Char, 10, 130);
        let c = Case::new();
        let layer = c.l.layer_tar(&t.finish());
        c.l.simple(json!({"User": "app"}), &[layer]);
        let e = timed(|| c.unpack(layer::Limits::DEFAULT));
        assert!(e.contains("/etc/passwd: not a regular file"), "{e}");
        c.still_fine();
    }
    let c = Case::new();
    let layer =
        c.l.layer_gzip(&Tar::new().file("etc/passwd", &vec![b'#'; 9 << 20]).finish());
    c.l.simple(json!({"User": "app"}), &[layer]);
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(e.contains("/etc/passwd: file too large"), "{e}");
    c.still_fine();
    // A symlink to /dev/zero resolves inside the image, where there is none.
    let c = Case::new();
    let r = image::fs::RootDir::open(&c.root()).unwrap();
    std::fs::create_dir(c.root().join("etc")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", c.root().join("etc/passwd")).unwrap();
    let e = timed(|| user::resolve(&r, "app"));
    assert!(
        e.contains("user `app` is not in the image's /etc/passwd"),
        "{e}"
    );

    // The layout's own files as FIFOs: oci-layout, index.json, a blob.
    let c = Case::new();
    c.l.simple(json!({}), &[]);
    std::fs::remove_file(c.l.dir.join("index.json")).unwrap();
    mkfifo(&c.l.dir.join("index.json"));
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(e.contains("index.json: not a regular file"), "{e}");
    std::fs::remove_file(c.l.dir.join("oci-layout")).unwrap();
    mkfifo(&c.l.dir.join("oci-layout"));
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(e.contains("oci-layout: not a regular file"), "{e}");
    std::fs::remove_file(c.l.dir.join("oci-layout")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", c.l.dir.join("oci-layout")).unwrap();
    let e = timed(|| c.unpack(layer::Limits::DEFAULT));
    assert!(e.contains("oci-layout: not a regular file"), "{e}");
    c.still_fine();
}
