//! `inspect`: summarize an flist (tags, routes, counts, sizes) and list its tree.

use crate::meta::{self, Reader, Route};
use crate::tree::{self, Kind, Tree};
use std::collections::HashSet;
use std::fmt;
use std::path::Path;

/// Errors while inspecting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flist could not be read.
    #[error(transparent)]
    Meta(#[from] meta::Error),
    /// The flist's tree is inconsistent.
    #[error(transparent)]
    Tree(#[from] tree::Error),
}

/// Summary of an flist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tags, sorted by key.
    pub tags: Vec<(String, String)>,
    /// Routes as recorded.
    pub routes: Vec<Route>,
    /// Regular files.
    pub files: u64,
    /// Directories (including the root).
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Devices, fifos and sockets.
    pub specials: u64,
    /// Total size of regular files in bytes.
    pub total_size: u64,
    /// Block references.
    pub blocks: u64,
    /// Distinct blocks.
    pub unique_blocks: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "tags:")?;
        if self.tags.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for (k, v) in &self.tags {
            writeln!(f, "  {k} = {v}")?;
        }
        writeln!(f, "routes:")?;
        if self.routes.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for r in &self.routes {
            let url = crate::store::strip_password(&r.url);
            writeln!(f, "  {:02x}-{:02x} {url}", r.start, r.end)?;
        }
        writeln!(f, "files:       {}", self.files)?;
        writeln!(f, "directories: {}", self.dirs)?;
        writeln!(f, "symlinks:    {}", self.symlinks)?;
        writeln!(f, "special:     {}", self.specials)?;
        writeln!(
            f,
            "total size:  {} ({})",
            self.total_size,
            human(self.total_size)
        )?;
        write!(
            f,
            "blocks:      {} ({} unique)",
            self.blocks, self.unique_blocks
        )
    }
}

/// `1.5 MiB`-style size.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Summarizes an already loaded flist.
pub fn summarize(reader: &Reader, tree: &Tree) -> Result<Summary, Error> {
    let mut s = Summary {
        tags: reader.tags()?,
        routes: reader.routes()?,
        ..Summary::default()
    };
    let mut unique = HashSet::new();
    for e in &tree.entries {
        match e.kind {
            Kind::Dir => s.dirs += 1,
            Kind::File => {
                s.files += 1;
                s.total_size = s.total_size.saturating_add(e.inode.size);
                for b in tree.blocks_of(e.inode.ino) {
                    s.blocks += 1;
                    unique.insert(b.id);
                }
            }
            Kind::Symlink => s.symlinks += 1,
            _ => s.specials += 1,
        }
    }
    s.unique_blocks = unique.len() as u64;
    Ok(s)
}

/// Opens, validates and summarizes the flist at `path`.
pub fn inspect(path: &Path) -> Result<Summary, Error> {
    let reader = Reader::open(path)?;
    let tree = Tree::load(&reader)?;
    summarize(&reader, &tree)
}

/// `ls -l`-style permission string, e.g. `drwxr-xr-x`.
pub fn mode_string(kind: Kind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(kind.letter());
    for (shift, special, special_char) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (mode & special != 0, x) {
            (true, true) => special_char,
            (true, false) => special_char.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// One line per entry: mode, uid:gid, size, path (and link target).
pub fn tree_lines(tree: &Tree) -> Vec<String> {
    tree.entries
        .iter()
        .map(|e| {
            let n = &e.inode;
            let path = if e.parent.is_none() {
                "/".to_string()
            } else {
                format!("/{}", e.path.display())
            };
            let extra = match (e.kind, &n.data) {
                (Kind::Symlink, Some(t)) => format!(" -> {}", String::from_utf8_lossy(t)),
                (Kind::CharDev | Kind::BlockDev, _) => {
                    format!(" [{}:{}]", libc::major(n.rdev), libc::minor(n.rdev))
                }
                _ => String::new(),
            };
            format!(
                "{} {:>5}:{:<5} {:>12} {path}{extra}",
                mode_string(e.kind, n.mode),
                n.uid,
                n.gid,
                n.size
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(mode_string(Kind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(Kind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(Kind::File, 0o2644), "-rw-r-Sr--");
        assert_eq!(mode_string(Kind::Dir, 0o1777), "drwxrwxrwt");
    }

    #[test]
    fn sizes() {
        assert_eq!(human(10), "10 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
