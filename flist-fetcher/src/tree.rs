//! The validated file tree of an flist.
//!
//! [`Tree::load`] reads every inode and block row and refuses metadata that
//! could make an unpack write outside its target: names that are empty, `.`,
//! `..`, contain `/` or NUL; entries whose parent is not a directory (for
//! example a child of a symlink, which would be written through the link);
//! duplicate names in one directory; and inodes not reachable from the root
//! (cycles, orphans).

use crate::block::{Block, MAX_PLAIN_LEN};
use crate::meta::{self, Inode, Reader, ROOT_INO};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use tracing::warn;

/// Errors in the flist's tree structure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the flist failed.
    #[error(transparent)]
    Meta(#[from] meta::Error),
    /// There is no root inode (ino 1) or it is not a directory.
    #[error("flist has no root directory (inode 1): {0}")]
    BadRoot(String),
    /// An entry name could escape its directory or is not a valid file name.
    #[error("inode {ino}: unsafe name {name:?}: {reason}")]
    BadName {
        /// inode number
        ino: u64,
        /// the name as stored
        name: String,
        /// why it is refused
        reason: &'static str,
    },
    /// An entry's parent is not a directory (e.g. a symlink): writing it would
    /// go through the link.
    #[error("{path}: parent is a {kind}, not a directory (refusing to write through it)")]
    ParentNotDir {
        /// path of the parent
        path: PathBuf,
        /// what the parent is
        kind: &'static str,
    },
    /// Two entries share a name in one directory.
    #[error("{0}: duplicate entry")]
    Duplicate(PathBuf),
    /// An inode's mode has no known file type.
    #[error("{path}: unknown file type in mode {mode:#o}")]
    UnknownType {
        /// entry path
        path: PathBuf,
        /// the raw mode
        mode: u32,
    },
    /// Inodes that cannot be reached from the root (orphans or cycles).
    #[error("{count} inode(s) not reachable from the root, e.g. inode {example}")]
    Unreachable {
        /// how many
        count: usize,
        /// one of them
        example: u64,
    },
    /// Two rows (in `inode`, or through `extra`) share an inode number; followed as a
    /// tree, such rows can multiply the entries level by level.
    #[error("inode {0} appears more than once")]
    DuplicateInode(u64),
    /// A regular file claims more bytes than its blocks can hold.
    #[error("{path}: size {size} is more than its {blocks} block(s) can hold")]
    SizeBeyondBlocks {
        /// entry path
        path: PathBuf,
        /// the recorded size
        size: u64,
        /// how many blocks it has
        blocks: u64,
    },
    /// A symlink has no usable target.
    #[error("{path}: symlink {reason}")]
    BadSymlink {
        /// entry path
        path: PathBuf,
        /// what is wrong
        reason: &'static str,
    },
}

/// The type of an entry, from the `S_IFMT` bits of its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl Kind {
    /// The type encoded in a raw `st_mode`.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            _ => return None,
        })
    }

    /// Human-readable name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "regular file",
            Kind::Symlink => "symlink",
            Kind::CharDev => "character device",
            Kind::BlockDev => "block device",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        }
    }

    /// One-letter code as in `ls -l`.
    pub fn letter(self) -> char {
        match self {
            Kind::Dir => 'd',
            Kind::File => '-',
            Kind::Symlink => 'l',
            Kind::CharDev => 'c',
            Kind::BlockDev => 'b',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
        }
    }
}

/// One validated entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The inode row.
    pub inode: Inode,
    /// Its type.
    pub kind: Kind,
    /// Path relative to the root (empty for the root itself).
    pub path: PathBuf,
    /// Index of the parent entry in [`Tree::entries`] (`None` for the root).
    pub parent: Option<usize>,
}

/// All entries of an flist in breadth-first order (root first, parents before children).
#[derive(Debug, Clone)]
pub struct Tree {
    /// Entries, root first.
    pub entries: Vec<Entry>,
    /// Block lists of regular files, keyed by inode.
    pub blocks: HashMap<u64, Vec<Block>>,
}

fn check_name(ino: u64, name: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::BadName {
            ino,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name == "." || name == ".." {
        return bad("relative component");
    }
    if name.contains('/') {
        return bad("contains '/' (absolute or multi-component path)");
    }
    if name.contains('\0') {
        return bad("contains NUL");
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    Ok(())
}

impl Tree {
    /// Owner (uid, gid) of the tree's root directory.
    pub fn root_owner(&self) -> Option<(u32, u32)> {
        self.entries.first().map(|e| (e.inode.uid, e.inode.gid))
    }

    /// Reads and validates the tree of an open flist.
    pub fn load(reader: &Reader) -> Result<Tree, Error> {
        let inodes = reader.inodes()?;
        let mut seen = HashSet::with_capacity(inodes.len());
        if let Some(dup) = inodes.iter().find(|n| !seen.insert(n.ino)) {
            return Err(Error::DuplicateInode(dup.ino));
        }
        drop(seen);
        let mut blocks = reader.all_blocks()?;
        let mut children: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut root = None;
        for (i, node) in inodes.iter().enumerate() {
            if node.ino == ROOT_INO {
                root = Some(i);
            } else {
                children.entry(node.parent).or_default().push(i);
            }
        }
        let root = root.ok_or_else(|| Error::BadRoot("missing".into()))?;
        let root_node = &inodes[root];
        if Kind::from_mode(root_node.mode) != Some(Kind::Dir) {
            return Err(Error::BadRoot(format!(
                "mode {:#o} is not a directory",
                root_node.mode
            )));
        }
        let mut entries = vec![Entry {
            inode: root_node.clone(),
            kind: Kind::Dir,
            path: PathBuf::new(),
            parent: None,
        }];
        let mut next = 0;
        while next < entries.len() {
            let (ino, kind, path) = {
                let e = &entries[next];
                (e.inode.ino, e.kind, e.path.clone())
            };
            if let Some(kids) = children.get(&ino) {
                if kind != Kind::Dir {
                    return Err(Error::ParentNotDir {
                        path,
                        kind: kind.name(),
                    });
                }
                let mut seen = HashSet::new();
                for &k in kids {
                    let node = &inodes[k];
                    check_name(node.ino, &node.name)?;
                    let child_path = path.join(&node.name);
                    if !seen.insert(node.name.as_str()) {
                        return Err(Error::Duplicate(child_path));
                    }
                    let child_kind =
                        Kind::from_mode(node.mode).ok_or_else(|| Error::UnknownType {
                            path: child_path.clone(),
                            mode: node.mode,
                        })?;
                    if child_kind == Kind::Symlink {
                        match node.data.as_deref() {
                            None | Some([]) => {
                                return Err(Error::BadSymlink {
                                    path: child_path,
                                    reason: "has no target",
                                })
                            }
                            Some(t) if t.contains(&0) => {
                                return Err(Error::BadSymlink {
                                    path: child_path,
                                    reason: "target contains NUL",
                                })
                            }
                            Some(_) => {}
                        }
                    }
                    entries.push(Entry {
                        inode: node.clone(),
                        kind: child_kind,
                        path: child_path,
                        parent: Some(next),
                    });
                }
            }
            next += 1;
        }
        if entries.len() != inodes.len() {
            let reached: HashSet<u64> = entries.iter().map(|e| e.inode.ino).collect();
            let example = inodes
                .iter()
                .map(|n| n.ino)
                .find(|i| !reached.contains(i))
                .unwrap_or_default();
            return Err(Error::Unreachable {
                count: inodes.len() - entries.len(),
                example,
            });
        }
        let files: HashSet<u64> = entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| e.inode.ino)
            .collect();
        blocks.retain(|ino, _| {
            let keep = files.contains(ino);
            if !keep {
                warn!(
                    ino,
                    "ignoring blocks of an inode that is not a regular file"
                );
            }
            keep
        });
        for e in entries.iter().filter(|e| e.kind == Kind::File) {
            let count = blocks.get(&e.inode.ino).map_or(0, Vec::len) as u64;
            if e.inode.size > count.saturating_mul(MAX_PLAIN_LEN as u64) {
                return Err(Error::SizeBeyondBlocks {
                    path: e.path.clone(),
                    size: e.inode.size,
                    blocks: count,
                });
            }
        }
        Ok(Tree { entries, blocks })
    }

    /// The sum of every entry's recorded size (saturating: sizes come from the flist).
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.inode.size))
    }

    /// Block list of a regular file (empty for files without content).
    pub fn blocks_of(&self, ino: u64) -> &[Block] {
        self.blocks.get(&ino).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod hostile_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::meta::Writer;

    fn node(parent: u64, name: &str, mode: u32) -> Inode {
        Inode {
            parent,
            name: name.into(),
            mode,
            ..Inode::default()
        }
    }

    fn build(nodes: &[Inode]) -> Result<Tree, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.fl");
        let w = Writer::create(&path).unwrap();
        for n in nodes {
            w.inode(n).unwrap();
        }
        w.finish().unwrap();
        Tree::load(&Reader::open(&path).unwrap())
    }

    const D: u32 = libc::S_IFDIR | 0o755;
    const F: u32 = libc::S_IFREG | 0o644;

    #[test]
    fn good_tree() {
        let t = build(&[node(0, "/", D), node(1, "a", D), node(2, "f", F)]).unwrap();
        assert_eq!(t.entries.len(), 3);
        assert_eq!(t.entries[2].path, PathBuf::from("a/f"));
    }

    #[test]
    fn rejects_unsafe_names() {
        for name in ["..", ".", "a/b", "/etc", ""] {
            let r = build(&[node(0, "/", D), node(1, name, F)]);
            assert!(matches!(r, Err(Error::BadName { .. })), "{name:?}: {r:?}");
        }
    }

    #[test]
    fn rejects_write_through_symlink() {
        let mut link = node(1, "l", libc::S_IFLNK | 0o777);
        link.data = Some(b"/etc".to_vec());
        let r = build(&[node(0, "/", D), link, node(2, "passwd", F)]);
        assert!(matches!(r, Err(Error::ParentNotDir { .. })), "{r:?}");
    }

    #[test]
    fn rejects_duplicates_orphans_and_bad_root() {
        let r = build(&[node(0, "/", D), node(1, "x", D), node(1, "x", F)]);
        assert!(matches!(r, Err(Error::Duplicate(_))), "{r:?}");
        let r = build(&[node(0, "/", D), node(7, "x", F)]);
        assert!(matches!(r, Err(Error::Unreachable { .. })), "{r:?}");
        let r = build(&[node(0, "/", F)]);
        assert!(matches!(r, Err(Error::BadRoot(_))), "{r:?}");
        let r = build(&[node(0, "/", D), node(1, "l", libc::S_IFLNK | 0o777)]);
        assert!(matches!(r, Err(Error::BadSymlink { .. })), "{r:?}");
        let r = build(&[node(0, "/", D), node(1, "w", 0o644)]);
        assert!(matches!(r, Err(Error::UnknownType { .. })), "{r:?}");
    }
}
