//! Reading an OCI image layout directory: `oci-layout`, `index.json` and verified blobs.

use super::layer::Compression;
use oci_spec::image::{
    Descriptor, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest, MediaType,
};
use sha2::{Sha256, Sha512};
use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use tracing::{debug, warn};

mod blobio;
use blobio::{hash, read_small, read_up_to};

/// Annotation naming a manifest in `index.json` (the tag).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's export names the full image reference here.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// JSON documents (index, manifest, config) larger than this are refused.
const MAX_JSON: u64 = 4 << 20;
/// Manifests listing more layers than this are refused.
pub const MAX_LAYERS: usize = 1024;
/// Nested indexes deeper than this are refused (a loop, or nonsense).
const MAX_DEPTH: usize = 8;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Errors reading an image layout.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory is not an OCI image layout.
    #[error("{dir}: not an OCI image layout: {reason}")]
    NotALayout {
        /// the directory
        dir: PathBuf,
        /// what is missing or wrong
        reason: String,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// the file
        path: PathBuf,
        /// underlying error
        #[source]
        source: io::Error,
    },
    /// A JSON document does not parse as what it should be.
    #[error("{what} is not a valid {kind}: {reason}")]
    BadJson {
        /// where it came from (file or digest)
        what: String,
        /// the expected document
        kind: &'static str,
        /// parser message
        reason: String,
    },
    /// A blob named by a descriptor is not in `blobs/`.
    #[error("blob {digest} is missing (expected at {path})")]
    MissingBlob {
        /// its digest
        digest: String,
        /// where it should be
        path: PathBuf,
    },
    /// A blob's size differs from its descriptor's.
    #[error("blob {digest}: size is {actual} bytes, the descriptor says {expected}")]
    SizeMismatch {
        /// its digest
        digest: String,
        /// descriptor size
        expected: u64,
        /// file size
        actual: u64,
    },
    /// A blob's content does not hash to its digest.
    #[error("blob {digest}: content has digest {algorithm}:{actual}; the blob is corrupt or was tampered with")]
    DigestMismatch {
        /// the expected digest
        digest: String,
        /// the algorithm
        algorithm: String,
        /// what the content hashes to
        actual: String,
    },
    /// A digest algorithm this runtime does not verify.
    #[error("blob {0}: unsupported digest algorithm (sha256 and sha512 are)")]
    UnsupportedDigest(String),
    /// A JSON blob is implausibly large.
    #[error("blob {digest}: {size} bytes is too large for an {kind}")]
    TooLarge {
        /// its digest
        digest: String,
        /// its size
        size: u64,
        /// the expected document
        kind: &'static str,
    },
    /// No manifest in `index.json` carries the tag.
    #[error("no image tagged `{tag}` in the layout (tags: {})", list(.available))]
    TagNotFound {
        /// the tag asked for
        tag: String,
        /// tags that exist
        available: Vec<String>,
    },
    /// Several manifests and no way to choose.
    #[error("the layout holds {count} images (tags: {}); choose one with DIR:TAG", list(.available))]
    Ambiguous {
        /// how many
        count: usize,
        /// their tags
        available: Vec<String>,
    },
    /// An index without a manifest for this platform.
    #[error("no image for {wanted} (platforms: {})", list(.available))]
    NoPlatform {
        /// the platform wanted
        wanted: String,
        /// platforms offered
        available: Vec<String>,
    },
    /// `index.json` (or a nested index) lists nothing.
    #[error("the image index lists no manifests")]
    Empty,
    /// Indexes nested too deeply.
    #[error("image indexes nested more than {MAX_DEPTH} deep")]
    TooDeep,
    /// A manifest with more layers than [`MAX_LAYERS`].
    #[error("the manifest lists {0} layers; at most {MAX_LAYERS} are accepted")]
    TooManyLayers(usize),
    /// A descriptor of a type that cannot be used here.
    #[error("{what}: unsupported media type `{media_type}`")]
    UnsupportedMediaType {
        /// what the descriptor was for
        what: &'static str,
        /// its media type
        media_type: String,
    },
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// An image chosen from a layout: its manifest and configuration, both verified.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest's descriptor (from `index.json` or a nested index).
    pub descriptor: Descriptor,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The image configuration.
    pub config: ImageConfiguration,
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Opens `dir`, checking its `oci-layout` file and that `blobs/` exists.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let not = |reason: String| Error::NotALayout {
            dir: dir.to_owned(),
            reason,
        };
        if !dir.is_dir() {
            return Err(not("no such directory".into()));
        }
        let marker = dir.join("oci-layout");
        let text = read_small(&marker, MAX_JSON).map_err(|e| not(format!("oci-layout: {e}")))?;
        let layout: oci_spec::image::OciLayout =
            serde_json::from_slice(&text).map_err(|e| not(format!("oci-layout: {e}")))?;
        let version = layout.image_layout_version();
        if !version.starts_with("1.") {
            return Err(not(format!(
                "imageLayoutVersion {version} (1.x is supported)"
            )));
        }
        if !dir.join("blobs").is_dir() {
            return Err(not("no blobs/ directory".into()));
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The layout's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Parses `index.json`.
    pub fn index(&self) -> Result<ImageIndex, Error> {
        let path = self.dir.join("index.json");
        let text = read_small(&path, MAX_JSON).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        parse(&text, &path.display().to_string(), "image index")
    }

    /// Tags in `index.json`.
    pub fn tags(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .index()?
            .manifests()
            .iter()
            .filter_map(|d| tag_of(d).map(str::to_owned))
            .collect())
    }

    /// Path of the blob named by `d` (not checked).
    pub fn blob_path(&self, d: &Descriptor) -> PathBuf {
        // The digest parser admits only [a-z0-9+._-] before ':' and [a-zA-Z0-9=_-] after, and
        // the sha2 family are lowercase hex: no '/', so this stays inside blobs/.
        self.dir
            .join("blobs")
            .join(d.digest().algorithm().as_ref())
            .join(d.digest().digest())
    }

    /// Opens the blob named by `d` after checking its size and digest; the file is positioned at
    /// its start.
    pub fn open_blob(&self, d: &Descriptor) -> Result<File, Error> {
        let digest = d.digest().to_string();
        let path = self.blob_path(d);
        let io_err = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let mut file = match blobio::open_regular(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::MissingBlob { digest, path })
            }
            Err(e) => return Err(io_err(e)),
        };
        let meta = file.metadata().map_err(io_err)?;
        if meta.len() != d.size() {
            return Err(Error::SizeMismatch {
                digest,
                expected: d.size(),
                actual: meta.len(),
            });
        }
        let algorithm = d.digest().algorithm();
        let actual = match algorithm {
            DigestAlgorithm::Sha256 => hash::<Sha256>(&mut file),
            DigestAlgorithm::Sha512 => hash::<Sha512>(&mut file),
            _ => return Err(Error::UnsupportedDigest(digest)),
        }
        .map_err(io_err)?;
        if actual.1 != d.size() {
            return Err(Error::SizeMismatch {
                digest,
                expected: d.size(),
                actual: actual.1,
            });
        }
        if actual.0 != d.digest().digest() {
            return Err(Error::DigestMismatch {
                digest,
                algorithm: algorithm.to_string(),
                actual: actual.0,
            });
        }
        file.rewind().map_err(io_err)?;
        Ok(file)
    }

    /// Reads a verified JSON blob and parses it.
    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        d: &Descriptor,
        kind: &'static str,
    ) -> Result<T, Error> {
        if d.size() > MAX_JSON {
            return Err(Error::TooLarge {
                digest: d.digest().to_string(),
                size: d.size(),
                kind,
            });
        }
        let mut text = Vec::new();
        let path = self.blob_path(d);
        self.open_blob(d)?
            .read_to_end(&mut text)
            .map_err(|source| Error::Io { path, source })?;
        parse(&text, d.digest().as_ref(), kind)
    }

    /// Chooses the image: the manifest tagged `tag`, or the only one; nested indexes are followed
    /// and, where several platforms are offered, the host's (linux/amd64 here) is taken.
    pub fn image(&self, tag: Option<&str>) -> Result<Image, Error> {
        let index = self.index()?;
        let all: Vec<Descriptor> = index.manifests().clone();
        let tags: Vec<String> = all
            .iter()
            .filter_map(|d| tag_of(d).map(str::to_owned))
            .collect();
        let candidates: Vec<Descriptor> = match tag {
            Some(t) => {
                let c: Vec<Descriptor> = all
                    .into_iter()
                    .filter(|d| tag_of(d) == Some(t) || annotation(d, CONTAINERD_NAME) == Some(t))
                    .collect();
                if c.is_empty() {
                    return Err(Error::TagNotFound {
                        tag: t.to_string(),
                        available: tags,
                    });
                }
                c
            }
            None => all,
        };
        let descriptor = self.choose(candidates, 0, tags)?;
        let manifest: ImageManifest = self.read_json(&descriptor, "image manifest")?;
        if manifest.layers().len() > MAX_LAYERS {
            return Err(Error::TooManyLayers(manifest.layers().len()));
        }
        let config_d = manifest.config();
        match config_d.media_type() {
            MediaType::ImageConfig => {}
            MediaType::Other(m) if m == DOCKER_CONFIG => {}
            other => {
                return Err(Error::UnsupportedMediaType {
                    what: "image config (this manifest is not a container image)",
                    media_type: other.to_string(),
                })
            }
        }
        let config: ImageConfiguration = self.read_json(config_d, "image configuration")?;
        let (os, arch) = (config.os().to_string(), config.architecture().to_string());
        if os != "linux" || arch != host_arch() {
            warn!(
                "image is for {os}/{arch}, this host is linux/{}",
                host_arch()
            );
        }
        Ok(Image {
            descriptor,
            manifest,
            config,
        })
    }

    /// Narrows `candidates` to one manifest descriptor, following indexes.
    fn choose(
        &self,
        candidates: Vec<Descriptor>,
        depth: usize,
        tags: Vec<String>,
    ) -> Result<Descriptor, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        let chosen = match candidates.len() {
            0 => return Err(Error::Empty),
            1 => candidates.into_iter().next().ok_or(Error::Empty)?,
            n => {
                let with_platform = candidates.iter().any(|d| d.platform().is_some());
                if !with_platform {
                    return Err(Error::Ambiguous {
                        count: n,
                        available: tags,
                    });
                }
                pick_platform(candidates)?
            }
        };
        if is_index(chosen.media_type()) {
            debug!("following index {}", chosen.digest());
            let nested: ImageIndex = self.read_json(&chosen, "image index")?;
            let list = nested.manifests().clone();
            if list.len() == 1 && list.iter().all(|d| d.platform().is_none()) {
                return self.choose(list, depth + 1, Vec::new());
            }
            let one = pick_platform(list)?;
            return self.choose(vec![one], depth + 1, Vec::new());
        }
        if !is_manifest(chosen.media_type()) {
            return Err(Error::UnsupportedMediaType {
                what: "manifest",
                media_type: chosen.media_type().to_string(),
            });
        }
        Ok(chosen)
    }
}

/// The descriptor's tag.
pub fn tag_of(d: &Descriptor) -> Option<&str> {
    annotation(d, REF_NAME)
}

fn annotation<'a>(d: &'a Descriptor, key: &str) -> Option<&'a str> {
    d.annotations().as_ref()?.get(key).map(String::as_str)
}

fn is_index(m: &MediaType) -> bool {
    matches!(m, MediaType::ImageIndex) || matches!(m, MediaType::Other(s) if s == DOCKER_LIST)
}

fn is_manifest(m: &MediaType) -> bool {
    matches!(m, MediaType::ImageManifest)
        || matches!(m, MediaType::Other(s) if s == DOCKER_MANIFEST)
}

/// This host's architecture as OCI (GOARCH) names it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn pick_platform(list: Vec<Descriptor>) -> Result<Descriptor, Error> {
    let wanted = format!("linux/{}", host_arch());
    let mut available = Vec::new();
    for d in &list {
        if let Some(p) = d.platform() {
            let name = format!("{}/{}", p.os(), p.architecture());
            if name == wanted {
                return Ok(d.clone());
            }
            available.push(name);
        }
    }
    Err(Error::NoPlatform { wanted, available })
}

/// How a layer descriptor's blob is compressed.
pub fn layer_compression(d: &Descriptor, blob: &mut File) -> Result<Compression, Error> {
    use MediaType as M;
    Ok(match d.media_type() {
        M::ImageLayer | M::ImageLayerNonDistributable => Compression::None,
        M::ImageLayerGzip | M::ImageLayerNonDistributableGzip => Compression::Gzip,
        M::ImageLayerZstd | M::ImageLayerNonDistributableZstd => Compression::Zstd,
        M::Other(m) if m.starts_with("application/vnd.docker.image.rootfs.") => {
            // Docker's types say gzip but are sometimes plain tar: look at the bytes.
            let mut head = [0u8; 4];
            let n = read_up_to(blob, &mut head).map_err(|source| Error::Io {
                path: PathBuf::from(d.digest().to_string()),
                source,
            })?;
            blob.rewind().map_err(|source| Error::Io {
                path: PathBuf::from(d.digest().to_string()),
                source,
            })?;
            Compression::sniff(&head[..n])
        }
        other => {
            return Err(Error::UnsupportedMediaType {
                what: "layer",
                media_type: other.to_string(),
            })
        }
    })
}

fn parse<T: serde::de::DeserializeOwned>(
    text: &[u8],
    what: &str,
    kind: &'static str,
) -> Result<T, Error> {
    serde_json::from_slice(text).map_err(|e| Error::BadJson {
        what: what.to_string(),
        kind,
        reason: e.to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_layouts() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(
            Layout::open(&t.path().join("x")),
            Err(Error::NotALayout { .. })
        ));
        assert!(matches!(
            Layout::open(t.path()),
            Err(Error::NotALayout { .. })
        ));
        std::fs::write(
            t.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"2.0.0"}"#,
        )
        .unwrap();
        let e = Layout::open(t.path()).unwrap_err().to_string();
        assert!(e.contains("imageLayoutVersion 2.0.0"), "{e}");
        std::fs::write(
            t.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        assert!(Layout::open(t.path())
            .unwrap_err()
            .to_string()
            .contains("blobs"));
        std::fs::create_dir(t.path().join("blobs")).unwrap();
        let l = Layout::open(t.path()).unwrap();
        assert!(matches!(l.index(), Err(Error::Io { .. })));
        std::fs::write(t.path().join("index.json"), "{nope").unwrap();
        assert!(matches!(l.index(), Err(Error::BadJson { .. })));
    }
}
