//! `dir:///path` store: one file per object.
//!
//! rfs 2.0.x keeps objects flat (`path/<hex>`); newer rfs writes
//! `path/<hex[0..2]>/<hex>` and reads both. This store reads both layouts and
//! writes the flat one unless the URL asks for `?layout=nested`.

use super::url::StoreUrl;
use super::{strip_password, Error, Store};
use crate::block::{self, to_hex, Hash};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

/// Where a [`DirStore`] writes objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `path/<hex>` (rfs 2.0.x; the default).
    Flat,
    /// `path/<hex[0..2]>/<hex>` (newer rfs).
    Nested,
}

/// A store in a local directory.
#[derive(Debug)]
pub struct DirStore {
    url: String,
    name: String,
    root: PathBuf,
    layout: Layout,
}

impl DirStore {
    /// Opens `dir://PATH[?layout=flat|nested]`.
    pub fn from_url(url: &str, parsed: &StoreUrl) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: strip_password(url),
            reason: reason.to_string(),
        };
        if parsed.path.is_empty() {
            return Err(invalid("dir:// needs a path, e.g. dir:///var/lib/store"));
        }
        let layout = match parsed.query.as_deref() {
            None | Some("") | Some("layout=flat") => Layout::Flat,
            Some("layout=nested") => Layout::Nested,
            Some(_) => return Err(invalid("the only option is ?layout=flat or ?layout=nested")),
        };
        let mut store = DirStore::new(Path::new(&parsed.path), layout);
        store.url = url.to_string();
        Ok(store)
    }

    /// A store rooted at `root` writing with `layout`.
    pub fn new(root: &Path, layout: Layout) -> Self {
        let url = format!("dir://{}", root.display());
        DirStore {
            name: url.clone(),
            url,
            root: root.to_path_buf(),
            layout,
        }
    }

    /// Path of an object in the given layout.
    pub fn object_path(&self, id: &Hash, layout: Layout) -> PathBuf {
        let hex = to_hex(id);
        match layout {
            Layout::Flat => self.root.join(hex),
            Layout::Nested => self.root.join(&hex[..2]).join(hex),
        }
    }

    fn candidates(&self, id: &Hash) -> [PathBuf; 2] {
        match self.layout {
            Layout::Flat => [
                self.object_path(id, Layout::Flat),
                self.object_path(id, Layout::Nested),
            ],
            Layout::Nested => [
                self.object_path(id, Layout::Nested),
                self.object_path(id, Layout::Flat),
            ],
        }
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            store: self.name.clone(),
            source,
        }
    }
}

impl Store for DirStore {
    fn get(&self, id: &Hash) -> Result<Vec<u8>, Error> {
        for path in self.candidates(id) {
            match std::fs::read(&path) {
                Ok(data) => return Ok(data),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io(e)),
            }
        }
        Err(Error::NotFound {
            store: self.name.clone(),
            id: to_hex(id),
        })
    }

    fn set(&self, id: &Hash, data: &[u8]) -> Result<(), Error> {
        // Skip objects already present and intact (a corrupt copy is replaced).
        for path in self.candidates(id) {
            if let Ok(existing) = std::fs::read(&path) {
                if block::verify_id(id, &existing).is_ok() {
                    return Ok(());
                }
            }
        }
        let path = self.object_path(id, self.layout);
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(|e| self.io(e))?;
        tmp.write_all(data).map_err(|e| self.io(e))?;
        tmp.persist(&path).map_err(|e| self.io(e.error))?;
        Ok(())
    }

    fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flat_write_reads_both_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path(), Layout::Flat);
        let data = b"abc".to_vec();
        let id = block::hash(&data);
        store.set(&id, &data).unwrap();
        assert!(store.object_path(&id, Layout::Flat).is_file());
        assert_eq!(store.get(&id).unwrap(), data);

        // an object only present in the nested layout is still found
        let data2 = b"nested".to_vec();
        let id2 = block::hash(&data2);
        let nested = store.object_path(&id2, Layout::Nested);
        std::fs::create_dir_all(nested.parent().unwrap()).unwrap();
        std::fs::write(&nested, &data2).unwrap();
        assert_eq!(store.get(&id2).unwrap(), data2);
        assert!(matches!(store.get(&[9; 32]), Err(Error::NotFound { .. })));
    }

    #[test]
    fn nested_layout_and_repair() {
        let dir = tempfile::tempdir().unwrap();
        let parsed =
            StoreUrl::parse(&format!("dir://{}?layout=nested", dir.path().display())).unwrap();
        let store = DirStore::from_url("x", &parsed).unwrap();
        let data = b"xyz".to_vec();
        let id = block::hash(&data);
        let path = store.object_path(&id, Layout::Nested);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"corrupt").unwrap();
        store.set(&id, &data).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn bad_options() {
        let parsed = StoreUrl::parse("dir:///x?layout=weird").unwrap();
        assert!(DirStore::from_url("dir:///x?layout=weird", &parsed).is_err());
        let parsed = StoreUrl::parse("dir://").unwrap();
        assert!(DirStore::from_url("dir://", &parsed).is_err());
    }
}
