//! Helpers of the hostile-image tests: raw tar headers, streamed bombs, a deadline, and a
//! test area whose outside must stay untouched.

use super::{Layout, Tar};
use oci_runtime::image::{self, layer, ImageRef};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Each case must end within this.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// A raw tar header: any name length, type, size and numbers (bypassing the builder's checks).
pub fn header(name: &[u8], kind: u8, size: u64) -> [u8; 512] {
    let mut h = tar::Header::new_gnu();
    let n = name.len().min(99);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    *h.as_bytes()
}

/// Re-computes a raw header's checksum after its fields were changed by hand.
pub fn cksum(mut b: [u8; 512]) -> [u8; 512] {
    let h = tar::Header::from_byte_slice(&b).clone();
    let mut h = h;
    h.set_cksum();
    b.copy_from_slice(h.as_bytes());
    b
}

/// A gzip stream of `head`, then `zeros` zero bytes, without holding them in memory.
pub fn gzip_with_zeros(head: &[u8], zeros: u64) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(head).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        e.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    e.finish().unwrap()
}

/// Runs `f` (an unpack), checks it ended within the deadline, and returns its error text.
pub fn timed<T: std::fmt::Debug, E: std::fmt::Display>(f: impl FnOnce() -> Result<T, E>) -> String {
    let start = Instant::now();
    let r = f();
    assert!(start.elapsed() < DEADLINE, "took {:?}", start.elapsed());
    match r {
        Ok(v) => panic!("accepted: {v:?}"),
        Err(e) => e.to_string(),
    }
}

/// A test area: a layout, a root to unpack into and an outside directory that must stay empty.
pub struct Case {
    pub t: tempfile::TempDir,
    pub l: Layout,
}

impl Case {
    pub fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::fs::create_dir_all(t.path().join("root")).unwrap();
        let l = Layout::new(&t.path().join("img"));
        Self { t, l }
    }

    pub fn root(&self) -> std::path::PathBuf {
        self.t.path().join("root")
    }

    /// Unpacks the layout's image into the root with `limits`.
    pub fn unpack(&self, limits: layer::Limits) -> Result<image::Unpacked, image::Error> {
        let opts = layer::ApplyOptions {
            limits,
            ..layer::ApplyOptions::for_current_user()
        };
        let r = ImageRef {
            dir: self.l.dir.clone(),
            tag: None,
        };
        image::unpack_rootfs(&r, &self.root(), opts)
    }

    /// A one-layer image of `blob` with media type `media`; the unpack's error text.
    pub fn layer_error(&self, media: &str, blob: &[u8], limits: layer::Limits) -> String {
        let d = self.l.blob(media, blob);
        self.l.simple(json!({"Cmd": ["/x"]}), &[d]);
        timed(|| self.unpack(limits))
    }

    /// Nothing outside the target was touched, and a good image still unpacks in this process.
    pub fn still_fine(&self) {
        assert_eq!(
            std::fs::read_dir(self.t.path().join("outside"))
                .unwrap()
                .count(),
            0
        );
        let names: Vec<_> = std::fs::read_dir(self.t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        for n in names {
            assert!(
                ["outside", "root", "img", "good"].contains(&n.as_str()),
                "{n}"
            );
        }
        let good = Layout::new(&self.t.path().join("good"));
        let layer = good.layer_gzip(&Tar::new().file("etc/hostname", b"ok\n").finish());
        good.simple(json!({"Cmd": ["/bin/true"]}), &[layer]);
        let bundle = tempfile::tempdir().unwrap();
        let u = super::unpack(&good.dir, None, &bundle.path().join("b")).unwrap();
        assert_eq!(u.stats.files, 1);
        std::fs::remove_dir_all(&good.dir).unwrap();
    }
}

pub fn limits(max_bytes: u64, max_entries: u64) -> layer::Limits {
    layer::Limits {
        max_bytes,
        max_entries,
        ..layer::Limits::DEFAULT
    }
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: valid path string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}
