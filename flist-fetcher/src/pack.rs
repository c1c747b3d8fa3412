//! `pack`: turn a directory tree into an flist plus blocks in the stores.

use crate::block::{self, Block, Hash, BLOCK_SIZE};
use crate::meta::{self, Inode, Writer};
use crate::parallel;
use crate::store::{self, Router};
use std::collections::{HashSet, VecDeque};
use std::fs::{File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use tracing::{debug, info};

/// Errors while packing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No store was given.
    #[error("no store given: pack needs at least one --store")]
    NoStore,
    /// A store URL or spec is invalid, or a store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Writing the flist failed.
    #[error(transparent)]
    Meta(#[from] meta::Error),
    /// The source is not a directory.
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    /// Reading the source tree failed.
    #[error("{path}: {source}")]
    Io {
        /// file or directory involved
        path: PathBuf,
        /// underlying error
        #[source]
        source: std::io::Error,
    },
    /// A file name is not valid UTF-8 (the flist `name` column is text).
    #[error("{0}: file name is not valid UTF-8")]
    NonUtf8Name(PathBuf),
    /// A file changed size while it was being packed.
    #[error("{0}: file changed while packing")]
    FileChanged(PathBuf),
    /// Encoding a block failed.
    #[error("{path}: block {index}: {source}")]
    Block {
        /// file
        path: PathBuf,
        /// block index in the file
        index: usize,
        /// underlying error
        #[source]
        source: block::Error,
    },
    /// Uploading a block failed.
    #[error("{path}: block {index}: upload failed: {source}")]
    Upload {
        /// file
        path: PathBuf,
        /// block index in the file
        index: usize,
        /// underlying error
        #[source]
        source: Box<store::Error>,
    },
    /// A tag is malformed.
    #[error("invalid tag `{0}`: expected KEY=VALUE with a non-empty key")]
    InvalidTag(String),
}

/// Options for [`pack`].
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Store specs, `[xx-xx=]URL` (at least one).
    pub stores: Vec<String>,
    /// Tags to record (`version`, `description`, `author`, or custom keys).
    pub tags: Vec<(String, String)>,
    /// Remove passwords from the store URLs recorded in the flist (default true).
    pub strip_password: bool,
    /// Number of worker threads.
    pub jobs: usize,
    /// Show a progress bar when stderr is a terminal.
    pub progress: bool,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            stores: Vec::new(),
            tags: Vec::new(),
            strip_password: true,
            jobs: parallel::default_pack_jobs(),
            progress: false,
        }
    }
}

/// What [`pack`] produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Regular files.
    pub files: u64,
    /// Directories, including the root.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Devices, fifos and sockets.
    pub specials: u64,
    /// Bytes of regular-file content.
    pub bytes: u64,
    /// Block references written.
    pub blocks: u64,
    /// Distinct blocks among them.
    pub unique_blocks: u64,
}

/// Parses `KEY=VALUE`.
pub fn parse_tag(s: &str) -> Result<(String, String), Error> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(Error::InvalidTag(s.to_string())),
    }
}

struct FileJob {
    ino: u64,
    path: PathBuf,
    size: u64,
    first_unit: usize,
}

fn inode_of(meta: &Metadata, parent: u64, name: String, data: Option<Vec<u8>>) -> Inode {
    Inode {
        ino: 0,
        parent,
        name,
        size: meta.size(),
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode(),
        rdev: meta.rdev(),
        ctime: meta.ctime(),
        mtime: meta.mtime(),
        data,
    }
}

/// Packs `source` into the flist `output`, uploading every block to the stores.
pub fn pack(source: &Path, output: &Path, opts: &PackOptions) -> Result<PackStats, Error> {
    if opts.stores.is_empty() {
        return Err(Error::NoStore);
    }
    let router = Router::from_specs(&opts.stores)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let root_meta = std::fs::metadata(source).map_err(io(source))?;
    if !root_meta.is_dir() {
        return Err(Error::NotADirectory(source.to_path_buf()));
    }
    let writer = Writer::create(output)?;
    for (k, v) in &opts.tags {
        if k.is_empty() {
            return Err(Error::InvalidTag(format!("{k}={v}")));
        }
        writer.tag(k, v)?;
    }
    for route in router.routes(opts.strip_password) {
        writer.route(&route)?;
    }
    // never pack our own output
    let skip: Vec<PathBuf> = [
        std::path::absolute(output).ok(),
        std::path::absolute(writer.tmp_path()).ok(),
    ]
    .into_iter()
    .flatten()
    .collect();

    let mut stats = PackStats::default();
    let mut files: Vec<FileJob> = Vec::new();
    let mut units = 0usize;
    let root = writer.inode(&inode_of(&root_meta, 0, "/".into(), None))?;
    stats.dirs += 1;
    let mut queue = VecDeque::from([(source.to_path_buf(), root)]);
    while let Some((dir, parent)) = queue.pop_front() {
        let mut entries = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io(&dir))?;
        entries.sort();
        for path in entries {
            if std::path::absolute(&path).is_ok_and(|p| skip.contains(&p)) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::NonUtf8Name(path.clone()))?
                .to_string();
            let ft = meta.file_type();
            let data = if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(io(&path))?;
                Some(target.as_os_str().as_bytes().to_vec())
            } else {
                None
            };
            let ino = writer.inode(&inode_of(&meta, parent, name, data))?;
            if ft.is_dir() {
                stats.dirs += 1;
                queue.push_back((path, ino));
            } else if ft.is_file() {
                stats.files += 1;
                stats.bytes += meta.size();
                let n = meta.size().div_ceil(BLOCK_SIZE as u64) as usize;
                files.push(FileJob {
                    ino,
                    path,
                    size: meta.size(),
                    first_unit: units,
                });
                units += n;
            } else if ft.is_symlink() {
                stats.symlinks += 1;
            } else {
                stats.specials += 1;
            }
        }
    }
    info!(
        files = stats.files,
        bytes = stats.bytes,
        "tree scanned, uploading blocks"
    );

    // One work unit per block, so large files are spread over all workers.
    let mut work: Vec<(usize, usize)> = Vec::with_capacity(units);
    for (fi, f) in files.iter().enumerate() {
        let n = f.size.div_ceil(BLOCK_SIZE as u64) as usize;
        work.extend((0..n).map(|b| (fi, b)));
    }
    let results: Vec<OnceLock<Block>> = (0..work.len()).map(|_| OnceLock::new()).collect();
    let uploaded: Mutex<HashSet<Hash>> = Mutex::new(HashSet::new());
    let bar = parallel::bytes_bar(opts.progress, stats.bytes, "packing");
    parallel::for_each(&work, opts.jobs, |unit, &(fi, bi)| -> Result<(), Error> {
        let f = &files[fi];
        let offset = bi as u64 * BLOCK_SIZE as u64;
        let len = (f.size - offset).min(BLOCK_SIZE as u64) as usize;
        let mut buf = vec![0u8; len];
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&f.path)
            .map_err(io(&f.path))?;
        file.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::FileChanged(f.path.clone())
            } else {
                Error::Io {
                    path: f.path.clone(),
                    source: e,
                }
            }
        })?;
        let (blk, ct) = block::encrypt(&buf).map_err(|source| Error::Block {
            path: f.path.clone(),
            index: bi,
            source,
        })?;
        let fresh = uploaded
            .lock()
            .map(|mut u| u.insert(blk.id))
            .unwrap_or(true);
        if fresh {
            router.set(&blk.id, &ct).map_err(|source| Error::Upload {
                path: f.path.clone(),
                index: bi,
                source: Box::new(source),
            })?;
        } else {
            debug!(id = %blk.hex_id(), "duplicate block");
        }
        let _ = results[unit].set(blk);
        bar.inc(len as u64);
        Ok(())
    })?;
    bar.finish_and_clear();

    let mut unique = HashSet::new();
    for f in &files {
        let n = f.size.div_ceil(BLOCK_SIZE as u64) as usize;
        for slot in &results[f.first_unit..f.first_unit + n] {
            let blk = slot
                .get()
                .ok_or_else(|| Error::FileChanged(f.path.clone()))?;
            writer.block(f.ino, blk)?;
            unique.insert(blk.id);
            stats.blocks += 1;
        }
    }
    stats.unique_blocks = unique.len() as u64;
    writer.finish()?;
    info!(?stats, output = %output.display(), "flist written");
    Ok(stats)
}
