//! Packs a directory tree into a gzip-compressed `newc` cpio archive, the format Linux
//! unpacks as an initramfs. Used by zvm's tests, benchmarks and demo to build guest images.

use flate2::write::GzEncoder;
use flate2::Compression;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors packing an archive.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A file could not be read.
    #[error("cannot read '{path}': {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The archive could not be written.
    #[error("cannot write the archive: {0}")]
    Write(#[from] io::Error),
    /// A name that cannot go into a cpio archive.
    #[error("'{0}' has a name that is not valid UTF-8")]
    BadName(PathBuf),
}

/// One entry to put in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with `mode` permission bits.
    Dir {
        /// Path inside the archive, without a leading slash.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Path inside the archive.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Path inside the archive.
        path: String,
        /// Link target.
        target: String,
    },
    /// A character device node.
    CharDev {
        /// Path inside the archive.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// A `newc` cpio writer.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
}

impl<W: Write> CpioWriter<W> {
    /// Writes to `out`.
    pub fn new(out: W) -> Self {
        CpioWriter { out, ino: 1 }
    }

    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) -> io::Result<()> {
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            size as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            namesize as u32,
            0,
        ];
        self.ino += 1;
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + namesize)
    }

    fn pad(&mut self, written: usize) -> io::Result<()> {
        let padding = (4 - written % 4) % 4;
        self.out.write_all(&[0u8; 3][..padding])
    }

    /// Appends one entry.
    pub fn add(&mut self, entry: &Entry) -> io::Result<()> {
        match entry {
            Entry::Dir { path, mode } => self.header(path, S_IFDIR | (mode & 0o7777), 0, (0, 0)),
            Entry::File { path, mode, data } => {
                self.header(path, S_IFREG | (mode & 0o7777), data.len(), (0, 0))?;
                self.out.write_all(data)?;
                self.pad(data.len())
            }
            Entry::Symlink { path, target } => {
                self.header(path, S_IFLNK | 0o777, target.len(), (0, 0))?;
                self.out.write_all(target.as_bytes())?;
                self.pad(target.len())
            }
            Entry::CharDev {
                path,
                mode,
                major,
                minor,
            } => self.header(path, S_IFCHR | (mode & 0o7777), 0, (*major, *minor)),
        }
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        Ok(self.out)
    }
}

/// The entries for every file, directory and symlink under `root`, sorted, parents first.
pub fn entries_from_dir(root: &Path) -> Result<Vec<Entry>, InitramfsError> {
    let mut entries = Vec::new();
    walk(root, root, &mut entries)?;
    Ok(entries)
}

fn read(path: &Path) -> impl Fn(io::Error) -> InitramfsError + '_ {
    move |source| InitramfsError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn walk(root: &Path, dir: &Path, entries: &mut Vec<Entry>) -> Result<(), InitramfsError> {
    let mut children: Vec<_> = fs::read_dir(dir)
        .map_err(read(dir))?
        .collect::<Result<_, _>>()
        .map_err(read(dir))?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let path = child.path();
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let name = rel
            .to_str()
            .ok_or_else(|| InitramfsError::BadName(path.clone()))?
            .to_string();
        let meta = fs::symlink_metadata(&path).map_err(read(&path))?;
        let mode = meta.permissions().mode();
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(read(&path))?;
            let target = target
                .to_str()
                .ok_or_else(|| InitramfsError::BadName(path.clone()))?
                .to_string();
            entries.push(Entry::Symlink { path: name, target });
        } else if meta.is_dir() {
            entries.push(Entry::Dir { path: name, mode });
            walk(root, &path, entries)?;
        } else if meta.is_file() {
            let data = fs::read(&path).map_err(read(&path))?;
            entries.push(Entry::File {
                path: name,
                mode,
                data,
            });
        } else if std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()) {
            let rdev = meta.rdev();
            let (major, minor) = (libc_major(rdev), libc_minor(rdev));
            entries.push(Entry::CharDev {
                path: name,
                mode,
                major,
                minor,
            });
        }
    }
    Ok(())
}

fn libc_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32
}

fn libc_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32
}

/// Packs `entries` into a gzip-compressed newc archive.
pub fn pack(entries: &[Entry]) -> Result<Vec<u8>, InitramfsError> {
    let mut cpio = CpioWriter::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for entry in entries {
        cpio.add(entry)?;
    }
    Ok(cpio.finish()?.finish()?)
}

/// Packs `entries` into an uncompressed newc archive. Linux takes it as is; it boots
/// faster where the guest kernel's own code is slow (no inflate at boot).
pub fn pack_uncompressed(entries: &[Entry]) -> Result<Vec<u8>, InitramfsError> {
    let mut cpio = CpioWriter::new(Vec::new());
    for entry in entries {
        cpio.add(entry)?;
    }
    Ok(cpio.finish()?)
}

/// How an archive is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// gzip-compressed: a smaller file, inflated by the guest kernel at boot.
    Gzip,
    /// Uncompressed: larger, no inflate work at boot.
    Plain,
}

/// Packs the directory `root` into a newc archive at `out`, stored as `packing` says.
pub fn pack_dir(root: &Path, out: &Path, packing: Packing) -> Result<(), InitramfsError> {
    let entries = entries_from_dir(root)?;
    let bytes = match packing {
        Packing::Gzip => pack(&entries)?,
        Packing::Plain => pack_uncompressed(&entries)?,
    };
    fs::write(out, bytes)?;
    Ok(())
}

/// Whether an ELF file has no program interpreter (is statically linked), so it can run in
/// a guest that has no shared libraries. Errors say why the bytes are not a 64-bit
/// little-endian ELF file.
pub fn is_static_elf(bytes: &[u8]) -> Result<bool, String> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().map_err(|_| "short header")?) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = phoff
            .checked_add(i * phentsize)
            .ok_or("bad program headers")?;
        let p_type = bytes.get(at..at + 4).ok_or("truncated program headers")?;
        if u32::from_le_bytes([p_type[0], p_type[1], p_type[2], p_type[3]]) == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn unpacked(archive: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(archive)
            .read_to_end(&mut out)
            .expect("gunzip");
        out
    }

    #[test]
    fn header_fields_and_alignment_follow_newc() {
        let archive = pack(&[Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: b"abc".to_vec(),
        }])
        .expect("pack");
        let raw = unpacked(&archive);
        assert_eq!(&raw[..6], b"070701");
        let field = |i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&raw[6 + 8 * i..14 + 8 * i]).expect("hex"),
                16,
            )
            .expect("hex")
        };
        assert_eq!(field(1), S_IFREG | 0o755, "mode");
        assert_eq!(field(6), 3, "filesize");
        assert_eq!(field(11), 5, "namesize includes the NUL");
        // 110-byte header + "init\0" = 115, padded to 116; data at 116, padded to 120.
        assert_eq!(&raw[110..115], b"init\0");
        assert_eq!(&raw[116..119], b"abc");
        assert_eq!(&raw[120..126], b"070701", "next header is 4-byte aligned");
        assert!(raw.windows(10).any(|w| w == b"TRAILER!!!"));
        assert_eq!(raw.len() % 4, 0);
    }

    #[test]
    fn directory_tree_round_trips_through_cpio() {
        let dir = tempfile::tempdir().expect("dir");
        fs::create_dir(dir.path().join("bin")).expect("mkdir");
        fs::write(dir.path().join("bin/tool"), b"#!/bin/sh\n").expect("write");
        std::os::unix::fs::symlink("bin/tool", dir.path().join("init")).expect("symlink");
        let entries = entries_from_dir(dir.path()).expect("walk");
        assert_eq!(entries.len(), 3);
        assert!(matches!(&entries[0], Entry::Dir { path, .. } if path == "bin"));
        assert!(matches!(&entries[1], Entry::File { path, .. } if path == "bin/tool"));
        assert!(
            matches!(&entries[2], Entry::Symlink { path, target } if path == "init" && target == "bin/tool")
        );
        let out = dir.path().join("out.cpio.gz");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let plain = elsewhere.path().join("out.cpio");
        pack_dir(dir.path(), &plain, Packing::Plain).expect("pack");
        pack_dir(dir.path(), &out, Packing::Gzip).expect("pack");
        let gz = std::fs::read(&out).expect("read");
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut inflated)
            .expect("inflate");
        assert_eq!(std::fs::read(&plain).expect("read"), inflated);
        // Debian's cpio, when present, reads what we wrote.
        if Path::new("/usr/bin/cpio").exists() {
            let listing = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("gzip -dc {} | cpio -t 2>/dev/null", out.display()))
                .output()
                .expect("cpio");
            let text = String::from_utf8_lossy(&listing.stdout);
            assert_eq!(
                text.lines().collect::<Vec<_>>(),
                vec!["bin", "bin/tool", "init"]
            );
        }
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let err = entries_from_dir(Path::new("/nonexistent/dir")).expect_err("missing");
        assert!(
            err.to_string()
                .starts_with("cannot read '/nonexistent/dir'"),
            "{err}"
        );
    }
}
