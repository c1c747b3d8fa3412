//! The node's cache/state disk: formatted as ext4 on first boot (only when it is blank),
//! mounted at `/var/cache/zos`, reused on later boots.

use super::ImageError;
use std::io::Read;
use std::path::Path;
use std::process::Command;

/// Offset of the ext2/3/4 superblock magic (superblock at 1024, magic at +56).
const EXT_MAGIC_OFFSET: u64 = 1080;
/// The ext2/3/4 magic, little-endian on disk.
const EXT_MAGIC: u16 = 0xEF53;
/// How much of a disk must be zero for it to count as blank.
const BLANK_PROBE: usize = 64 * 1024;

/// What is on a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskContent {
    /// An ext2/3/4 file system.
    Ext4,
    /// Nothing: the first 64 KiB are zero.
    Blank,
    /// Something else (a partition table, another file system): never formatted.
    Unknown,
}

/// Looks at the start of `disk`.
pub fn probe(disk: &Path) -> Result<DiskContent, ImageError> {
    let io = |what: &str| {
        let what = format!("{what} {}", disk.display());
        move |source| ImageError::Io { what, source }
    };
    let mut file = std::fs::File::open(disk).map_err(io("open"))?;
    let mut head = vec![0u8; BLANK_PROBE];
    let mut filled = 0;
    while filled < head.len() {
        let n = file.read(&mut head[filled..]).map_err(io("read"))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(classify(&head[..filled]))
}

/// Classifies the first bytes of a disk (see [`probe`]).
pub fn classify(head: &[u8]) -> DiskContent {
    let at = EXT_MAGIC_OFFSET as usize;
    if head.len() >= at + 2 && u16::from_le_bytes([head[at], head[at + 1]]) == EXT_MAGIC {
        return DiskContent::Ext4;
    }
    if head.len() >= at + 2 && head.iter().all(|b| *b == 0) {
        return DiskContent::Blank;
    }
    DiskContent::Unknown
}

/// Label of the node's cache/state disk.
pub const CACHE_LABEL: &str = "zos-cache";

/// Formats `disk` (a device or a sparse file) as ext4 labelled `label` with `mkfs`
/// (mkfs.ext4).
pub fn format(mkfs: &Path, disk: &Path, label: &str) -> Result<(), ImageError> {
    // Lazy inode-table and journal initialisation keep the first boot short.
    let out = Command::new(mkfs)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            label,
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(disk)
        .output()
        .map_err(|source| ImageError::Io {
            what: format!("run {}", mkfs.display()),
            source,
        })?;
    if !out.status.success() {
        return Err(ImageError::Disk(format!(
            "{} {} failed ({}): {}",
            mkfs.display(),
            disk.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // Make sure the superblock really is there now.
    if probe(disk)? != DiskContent::Ext4 {
        return Err(ImageError::Disk(format!(
            "{} left no ext4 superblock on {}",
            mkfs.display(),
            disk.display()
        )));
    }
    Ok(())
}

/// Mounts the ext4 `disk` at `target` (created if needed).
pub fn mount_ext4(disk: &Path, target: &Path) -> Result<(), ImageError> {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(target).map_err(|source| ImageError::Io {
        what: format!("create {}", target.display()),
        source,
    })?;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| ImageError::Disk(format!("bad path {}", p.display())))
    };
    let (src, dst) = (c(disk)?, c(target)?);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            c"ext4".as_ptr(),
            libc::MS_NOATIME,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ImageError::Disk(format!(
            "mount {} on {}: {}",
            disk.display(),
            target.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn write_at(file: &mut std::fs::File, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(bytes)
    }

    #[test]
    fn classifies_blank_ext4_and_other() {
        let mut head = vec![0u8; BLANK_PROBE];
        assert_eq!(classify(&head), DiskContent::Blank);
        head[1080] = 0x53;
        head[1081] = 0xEF;
        assert_eq!(classify(&head), DiskContent::Ext4);
        let mut other = vec![0u8; BLANK_PROBE];
        other[510] = 0x55;
        other[511] = 0xAA; // an MBR
        assert_eq!(classify(&other), DiskContent::Unknown);
        assert_eq!(
            classify(&[0u8; 100]),
            DiskContent::Unknown,
            "too small to be a disk"
        );
    }

    #[test]
    fn probe_reads_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(256 << 20).unwrap();
        assert_eq!(probe(&path).unwrap(), DiskContent::Blank);
        write_at(&mut f, EXT_MAGIC_OFFSET, &EXT_MAGIC.to_le_bytes()).unwrap();
        assert_eq!(probe(&path).unwrap(), DiskContent::Ext4);
        assert!(probe(&dir.path().join("missing"))
            .unwrap_err()
            .to_string()
            .contains("open"));
    }

    #[test]
    fn formats_a_blank_file_with_mkfs_ext4() {
        let mkfs = ["/sbin/mke2fs", "/usr/sbin/mke2fs"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists());
        let Some(mkfs) = mkfs else {
            eprintln!("skipped: no mke2fs on this host (apt-get install e2fsprogs)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        format(mkfs, &path, CACHE_LABEL).unwrap();
        assert_eq!(probe(&path).unwrap(), DiskContent::Ext4);
        let e = format(Path::new("/nonexistent/mkfs"), &path, CACHE_LABEL)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/mkfs"), "{e}");
    }
}
