//! Builds OCI image layouts for the image tests: tar layers (plain, gzip, zstd), config,
//! manifest and index JSON, blobs named by their sha256.
#![allow(dead_code, clippy::unwrap_used)]

pub mod hostile;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tar stream built entry by entry; names are written verbatim (so tests can write `../x`).
pub struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Tar {
    fn default() -> Self {
        Self::new()
    }
}

impl Tar {
    pub fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        let bytes = name.as_bytes();
        assert!(bytes.len() < 100, "test names stay short");
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h
    }

    fn push(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.push(Self::header(name, tar::EntryType::Directory, mode, 0), b"")
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.file_with(name, data, 0o644, 0, 0, 1_600_000_000)
    }

    pub fn file_with(
        &mut self,
        name: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> &mut Self {
        let mut h = Self::header(name, tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.push(h, data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = Self::header(name, tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name_literal(target).unwrap();
        self.push(h, b"")
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = Self::header(name, tar::EntryType::Link, 0o644, 0);
        h.set_link_name_literal(target).unwrap();
        self.push(h, b"")
    }

    pub fn device(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut h = Self::header(name, kind, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.push(h, b"")
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// An image layout under construction.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn blob_path(&self, desc: &Value) -> PathBuf {
        let d = desc["digest"].as_str().unwrap();
        self.dir
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    }

    /// Stores `data` and returns its descriptor.
    pub fn blob(&self, media_type: &str, data: &[u8]) -> Value {
        let hex = sha256_hex(data);
        std::fs::write(self.dir.join("blobs/sha256").join(&hex), data).unwrap();
        json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len()})
    }

    pub fn layer_tar(&self, tar: &[u8]) -> Value {
        self.blob(LAYER_TAR, tar)
    }

    pub fn layer_gzip(&self, tar: &[u8]) -> Value {
        self.blob(LAYER_GZIP, &gzip(tar))
    }

    pub fn layer_zstd(&self, tar: &[u8]) -> Value {
        self.blob(LAYER_ZSTD, &zstd(tar))
    }

    /// Stores an image config whose `config` object is `config` and returns its descriptor.
    pub fn config(&self, config: Value, layers: &[Value]) -> Value {
        self.config_for("amd64", config, layers)
    }

    pub fn config_for(&self, arch: &str, config: Value, layers: &[Value]) -> Value {
        let diff_ids: Vec<Value> = layers.iter().map(|l| l["digest"].clone()).collect();
        let doc = json!({
            "architecture": arch,
            "os": "linux",
            "created": "2024-01-02T03:04:05Z",
            "author": "zvm tests",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        self.blob(CONFIG, &serde_json::to_vec(&doc).unwrap())
    }

    /// Stores a manifest and returns its descriptor.
    pub fn manifest(&self, config: &Value, layers: &[Value], annotations: Value) -> Value {
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config,
            "layers": layers,
            "annotations": annotations,
        });
        self.blob(MANIFEST, &serde_json::to_vec(&doc).unwrap())
    }

    /// Stores an image index (a nested one) and returns its descriptor.
    pub fn nested_index(&self, manifests: &[Value]) -> Value {
        let doc = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests});
        self.blob(INDEX, &serde_json::to_vec(&doc).unwrap())
    }

    /// Writes `index.json`.
    pub fn index(&self, manifests: &[Value]) {
        let doc = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&doc).unwrap(),
        )
        .unwrap();
    }

    /// A one-manifest image: config + layers, written as the only entry of `index.json`
    /// (tagged `latest`).
    pub fn simple(&self, config: Value, layers: &[Value]) -> Value {
        let c = self.config(config, layers);
        let m = self.manifest(&c, layers, json!({}));
        self.index(&[tagged(&m, "latest")]);
        m
    }
}

/// `desc` with a ref.name annotation.
pub fn tagged(desc: &Value, tag: &str) -> Value {
    let mut d = desc.clone();
    d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    d
}

/// `desc` with a platform.
pub fn for_platform(desc: &Value, os: &str, arch: &str) -> Value {
    let mut d = desc.clone();
    d["platform"] = json!({"os": os, "architecture": arch});
    d
}

/// Unpacks the image in `layout` (tagged `tag`) into a bundle at `bundle`.
pub fn unpack(
    layout: &Path,
    tag: Option<&str>,
    bundle: &Path,
) -> Result<oci_runtime::image::Unpacked, oci_runtime::image::Error> {
    let r = oci_runtime::image::ImageRef {
        dir: layout.to_owned(),
        tag: tag.map(str::to_owned),
    };
    oci_runtime::image::unpack_bundle(&r, bundle)
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

pub fn config_json(bundle: &Path) -> Value {
    serde_json::from_str(&read(&bundle.join("config.json"))).unwrap()
}
