//! Local, content-addressed block cache: `<cache>/ab/cd/<hex id>` holds the ciphertext.
//!
//! Entries are written to a temporary file, verified, and renamed into place,
//! so a crash never leaves a partial entry under a final name. Every read
//! re-verifies `BLAKE2b(ct) == id`; an entry that fails (truncated, corrupt)
//! is removed and refetched from the stores, never trusted.

use crate::block::{self, to_hex, Block, Hash};
use crate::store::{self, Router};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use tracing::{debug, warn};

/// Errors of the block cache.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Local I/O error in the cache directory.
    #[error("cache {path}: {source}")]
    Io {
        /// file or directory involved
        path: PathBuf,
        /// underlying error
        #[source]
        source: std::io::Error,
    },
    /// No store could deliver the block.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The block failed verification or decoding.
    #[error(transparent)]
    Block(#[from] block::Error),
}

/// A block cache rooted at a directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (creating if needed) the cache at `root`.
    pub fn new(root: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(root).map_err(|source| Error::Io {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    /// Path of the entry for `id`.
    pub fn path(&self, id: &Hash) -> PathBuf {
        let hex = to_hex(id);
        self.root.join(&hex[0..2]).join(&hex[2..4]).join(hex)
    }

    /// Whether an entry exists (it is still verified when read).
    pub fn contains(&self, id: &Hash) -> bool {
        self.path(id).is_file()
    }

    /// Reads and verifies a local entry; a corrupt entry is removed and reported as missing.
    fn read_local(&self, id: &Hash) -> Result<Option<Vec<u8>>, Error> {
        let path = self.path(id);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { path, source }),
        };
        if let Err(e) = block::verify_id(id, &data) {
            warn!(path = %path.display(), "discarding corrupt cache entry: {e}");
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => return Err(Error::Io { path, source }),
            }
            return Ok(None);
        }
        Ok(Some(data))
    }

    /// Stores a ciphertext under `id` after verifying it.
    pub fn put(&self, id: &Hash, ct: &[u8]) -> Result<(), Error> {
        block::verify_id(id, ct)?;
        self.write_entry(id, ct)
    }

    /// Writes an entry already verified by the caller (temp file + rename).
    fn write_entry(&self, id: &Hash, ct: &[u8]) -> Result<(), Error> {
        let path = self.path(id);
        let dir = path.parent().unwrap_or(&self.root);
        let io = |source| Error::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(io)?;
        tmp.write_all(ct).map_err(io)?;
        tmp.persist(&path).map_err(|e| Error::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Returns the verified ciphertext of `id`, from the cache or else from the stores.
    pub fn fetch(&self, router: &Router, id: &Hash) -> Result<Vec<u8>, Error> {
        if let Some(ct) = self.read_local(id)? {
            return Ok(ct);
        }
        debug!(id = %to_hex(id), "cache miss");
        let ct = router.get(id)?; // verified by the router
        self.write_entry(id, &ct)?;
        Ok(ct)
    }

    /// Makes sure `id` is cached, fetching it if absent (does not re-verify present entries).
    pub fn ensure(&self, router: &Router, id: &Hash) -> Result<(), Error> {
        if self.contains(id) {
            return Ok(());
        }
        let ct = router.get(id)?; // verified by the router
        self.write_entry(id, &ct)
    }

    /// Returns the verified plaintext of `block`.
    pub fn read_block(&self, router: &Router, block: &Block) -> Result<Vec<u8>, Error> {
        let ct = self.fetch(router, &block.id)?;
        Ok(block::decrypt_verified(block, &ct)?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::dir::{DirStore, Layout};
    use crate::store::Store;
    use std::sync::Arc;

    #[test]
    fn refetches_corrupt_and_partial_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(DirStore::new(&tmp.path().join("store"), Layout::Flat));
        let mut router = Router::new();
        router.add(0, 255, store.clone());
        let plain = b"cached block".repeat(100);
        let (block, ct) = block::encrypt(&plain).unwrap();
        store.set(&block.id, &ct).unwrap();

        let cache = Cache::new(&tmp.path().join("cache")).unwrap();
        assert!(!cache.contains(&block.id));
        assert_eq!(cache.read_block(&router, &block).unwrap(), plain);
        let path = cache.path(&block.id);
        assert!(path.starts_with(tmp.path().join("cache").join(&block.hex_id()[..2])));
        assert_eq!(std::fs::read(&path).unwrap(), ct);

        // truncated entry: detected and refetched
        std::fs::write(&path, &ct[..ct.len() / 2]).unwrap();
        assert_eq!(cache.read_block(&router, &block).unwrap(), plain);
        assert_eq!(std::fs::read(&path).unwrap(), ct);

        // flipped byte: detected and refetched
        let mut bad = ct.clone();
        bad[3] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(cache.read_block(&router, &block).unwrap(), plain);

        // put refuses data that does not match the id
        assert!(matches!(cache.put(&block.id, &bad), Err(Error::Block(_))));
    }
}
