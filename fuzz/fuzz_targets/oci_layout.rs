//! An OCI image layout's documents (bytes anyone may have made): `index.json`, a manifest, an
//! image configuration and a nested index, read, chosen and unpacked as `zvm oci unpack`
//! does, into a fresh root with small limits.
//!
//! The input is split at 0xff bytes (never in UTF-8 JSON) into up to four parts: index.json,
//! manifest, config, nested index. Each but index.json is stored as a blob under its real
//! digest, and in each, placeholders name the others (a fuzzer cannot forge sha256): `@C`/`@c`
//! the config's digest/size, `@L`/`@l` those of a small valid layer (gzip tar with an
//! /etc/passwd), `@M`/`@m` the manifest's, `@I`/`@i` the nested index's.
#![no_main]

use oci_runtime::image::{self, layer, layout::Layout, ImageRef};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Stores `data` as a blob; returns its digest.
fn blob(dir: &Path, data: &[u8]) -> String {
    let h = hex(data);
    std::fs::write(dir.join("blobs/sha256").join(&h), data).unwrap();
    format!("sha256:{h}")
}

fn fill(text: &[u8], subs: &[(&str, String)]) -> Vec<u8> {
    let mut out = String::from_utf8_lossy(text).into_owned();
    for (k, v) in subs {
        out = out.replace(k, v);
    }
    out.into_bytes()
}

fn layer_blob() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let passwd = b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n";
    let mut h = tar::Header::new_ustar();
    h.set_path("etc/passwd").unwrap();
    h.set_size(passwd.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &passwd[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&tar).unwrap();
    e.finish().unwrap()
}

fn scratch() -> Option<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::Builder::new().prefix("zvm-fuzz").tempdir_in(shm) {
            return Some(t);
        }
    }
    tempfile::tempdir().ok()
}

static LAYER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some(t) = scratch() else {
        return;
    };
    let dir = t.path().join("img");
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut parts = data.split(|&b| b == 0xff);
    let index = parts.next().unwrap_or_default();
    let manifest = parts.next().unwrap_or_default();
    let config = parts.next().unwrap_or_default();
    let nested = parts.next().unwrap_or_default();

    let layer = LAYER.get_or_init(layer_blob);
    let mut subs = vec![
        ("@L", blob(&dir, layer)),
        ("@l", layer.len().to_string()),
    ];
    let config = fill(config, &subs);
    subs.push(("@C", blob(&dir, &config)));
    subs.push(("@c", config.len().to_string()));
    let manifest = fill(manifest, &subs);
    subs.push(("@M", blob(&dir, &manifest)));
    subs.push(("@m", manifest.len().to_string()));
    let nested = fill(nested, &subs);
    subs.push(("@I", blob(&dir, &nested)));
    subs.push(("@i", nested.len().to_string()));
    std::fs::write(dir.join("index.json"), fill(index, &subs)).unwrap();

    if let Ok(l) = Layout::open(&dir) {
        let _ = l.tags();
        let _ = l.image(Some("latest"));
    }
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let opts = layer::ApplyOptions {
        chown: false,
        mknod: false,
        limits: layer::Limits {
            max_bytes: 16 << 20,
            max_entries: 10_000,
            reserve: 0,
        },
    };
    let r = ImageRef { dir, tag: None };
    if let Ok(u) = image::unpack_rootfs(&r, &root, opts) {
        let spec =
            image::spec::runtime_spec(image::spec::default_spec(), &u.process, u.annotations);
        assert!(spec.process().is_some());
    }
});
