//! An image layer (tar bytes anyone may have made), applied to a fresh root as `zvm oci
//! unpack` does, then the image's user looked up in it. The root holds two symlinks that lead
//! to a sibling directory (`esc` -> `../outside`, `abs` -> its absolute path); after the
//! apply, that directory must still be empty and nothing else may exist beside the root.
//!
//! The first byte chooses how the rest is fed: bit 0 set wraps it in gzip first (so the tar
//! parser runs behind the decompressor), bits 1-2 = 1 or 2 hand the raw bytes to the gzip or
//! zstd decoder as they are.
#![no_main]

use oci_runtime::image::{fs::RootDir, layer, user};
use std::io::Write;

fn scratch() -> Option<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::Builder::new().prefix("zvm-fuzz").tempdir_in(shm) {
            return Some(t);
        }
    }
    tempfile::tempdir().ok()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some(t) = scratch() else {
        return;
    };
    let root = t.path().join("root");
    let outside = t.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink("../outside", root.join("esc")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();

    let (bytes, compression) = match (mode & 1, (mode >> 1) & 3) {
        (1, _) => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(rest).unwrap();
            (e.finish().unwrap(), layer::Compression::Gzip)
        }
        (_, 1) => (rest.to_vec(), layer::Compression::Gzip),
        (_, 2) => (rest.to_vec(), layer::Compression::Zstd),
        _ => (rest.to_vec(), layer::Compression::None),
    };
    let opts = layer::ApplyOptions {
        chown: false,
        mknod: false,
        limits: layer::Limits {
            max_bytes: 64 << 20,
            max_entries: 10_000,
            reserve: 0,
        },
    };
    let dir = RootDir::open(&root).unwrap();
    if layer::apply(&dir, &bytes[..], compression, opts).is_ok() {
        let _ = user::resolve(&dir, "app:app");
        let _ = user::resolve(&dir, "");
    }

    let escaped: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert!(escaped.is_empty(), "written outside the root: {escaped:?}");
    let mut beside: Vec<String> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    beside.sort();
    assert_eq!(beside, ["outside", "root"], "written beside the root");
});
