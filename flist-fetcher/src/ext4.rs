//! ext4 file systems made from a directory tree by `mkfs.ext4 -d` (e2fsprogs).
//!
//! One way to make them for every caller (flist images, container root disks, the OCI
//! agent's boot disk): the image is written under a temporary name beside its final one,
//! as a sparse file of the requested size, and renamed into place only once `mkfs.ext4`
//! succeeded, so a failure never leaves a half-made image (or removes a good one) at the
//! final path.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors making an ext4 image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `mkfs.ext4` is not installed.
    #[error("mkfs.ext4 not found: install e2fsprogs")]
    MkfsMissing,
    /// `mkfs.ext4` failed.
    #[error("mkfs.ext4 could not make {image} from {dir} ({status}): {stderr}")]
    Mkfs {
        /// The image asked for.
        image: PathBuf,
        /// The directory it was to hold.
        dir: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on standard error.
        stderr: String,
    },
    /// The image file could not be made, sized, run or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// How the file system is made, beyond its content and size.
#[derive(Debug, Clone)]
pub struct Ext4Options {
    /// Volume label (`-L`), at most 16 bytes.
    pub label: Option<String>,
    /// Owner of the root directory (`-E root_owner=UID:GID`); mkfs's default is the caller.
    pub root_owner: Option<(u32, u32)>,
    /// Whether the file system has a journal (off for images only ever mounted read-only).
    pub journal: bool,
    /// Write the inode tables now rather than leave it to the kernel at first mount:
    /// a slower mkfs, but no background work in a guest whose kernel may be slow.
    pub eager_inode_tables: bool,
}

impl Default for Ext4Options {
    fn default() -> Self {
        Ext4Options {
            label: None,
            root_owner: None,
            journal: true,
            eager_inode_tables: false,
        }
    }
}

/// Finds `mkfs.ext4` on `PATH` or in the sbin directories (not always on a user's `PATH`).
pub fn find_mkfs() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("mkfs.ext4"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push("/usr/sbin/mkfs.ext4".into());
    candidates.push("/sbin/mkfs.ext4".into());
    candidates.into_iter().find(|p| p.is_file())
}

/// The arguments of `mkfs.ext4` for `opts`, before `-d DIR IMAGE`.
fn mkfs_args(opts: &Ext4Options) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-q".into(), "-F".into(), "-t".into(), "ext4".into()];
    if let Some(label) = &opts.label {
        args.extend(["-L".into(), label.into()]);
    }
    if !opts.journal {
        args.extend(["-O".into(), "^has_journal".into()]);
    }
    let mut extended = Vec::new();
    if let Some((uid, gid)) = opts.root_owner {
        extended.push(format!("root_owner={uid}:{gid}"));
    }
    if opts.eager_inode_tables {
        extended.push("lazy_itable_init=0".to_string());
    }
    if !extended.is_empty() {
        args.extend(["-E".into(), extended.join(",").into()]);
    }
    args
}

/// The temporary name an image is made under: `.NAME.tmp-PID` in the same directory.
fn temporary_path(image: &Path) -> Result<PathBuf, Error> {
    let name = image.file_name().ok_or_else(|| Error::Io {
        path: image.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
    })?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp-{}", std::process::id()));
    Ok(image.with_file_name(tmp))
}

/// Makes `image` (replacing it on success) a `size`-byte ext4 file system holding a copy
/// of the tree `dir`. The file is sparse: only what mkfs writes takes space.
pub fn make_from_dir(dir: &Path, image: &Path, size: u64, opts: &Ext4Options) -> Result<(), Error> {
    let mkfs = find_mkfs().ok_or(Error::MkfsMissing)?;
    let tmp = temporary_path(image)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let made = (|| {
        let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.set_len(size).map_err(io(&tmp))?;
        drop(file);
        let out = Command::new(&mkfs)
            .args(mkfs_args(opts))
            .arg("-d")
            .arg(dir)
            .arg(&tmp)
            .output()
            .map_err(io(&mkfs))?;
        if !out.status.success() {
            return Err(Error::Mkfs {
                image: image.to_path_buf(),
                dir: dir.to_path_buf(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        std::fs::rename(&tmp, image).map_err(io(image))
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn debugfs(image: &Path, request: &str) -> String {
        let out = Command::new("debugfs")
            .args(["-R", request])
            .arg(image)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn have_mkfs() -> bool {
        let found = find_mkfs().is_some();
        if !found {
            eprintln!("skipping: mkfs.ext4 is not installed (apt-get install e2fsprogs)");
        }
        found
    }

    #[test]
    fn arguments_follow_the_options() {
        let words = |o: &Ext4Options| -> Vec<String> {
            mkfs_args(o)
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(words(&Ext4Options::default()), ["-q", "-F", "-t", "ext4"]);
        let all = Ext4Options {
            label: Some("rootfs".into()),
            root_owner: Some((1000, 100)),
            journal: false,
            eager_inode_tables: true,
        };
        assert_eq!(
            words(&all),
            [
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                "rootfs",
                "-O",
                "^has_journal",
                "-E",
                "root_owner=1000:100,lazy_itable_init=0"
            ]
        );
    }

    #[test]
    fn image_holds_the_tree_and_replaces_the_old_one() {
        if !have_mkfs() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), b"box\n").unwrap();
        let image = dir.path().join("root.ext4");
        std::fs::write(&image, b"stale").unwrap();
        let opts = Ext4Options {
            label: Some("rootfs".into()),
            journal: false,
            ..Default::default()
        };
        make_from_dir(&tree, &image, 8 << 20, &opts).unwrap();
        assert_eq!(std::fs::metadata(&image).unwrap().len(), 8 << 20);
        assert_eq!(debugfs(&image, "cat /etc/hostname"), "box\n");
        let features = debugfs(&image, "stats");
        assert!(
            features.contains("Filesystem volume name:   rootfs"),
            "{features}"
        );
        assert!(!debugfs(&image, "features").contains("has_journal"));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 2, "no temporary file left: {left:?}");
    }

    #[test]
    fn a_failed_mkfs_keeps_the_old_image_and_leaves_no_temporary_file() {
        if !have_mkfs() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("root.ext4");
        std::fs::write(&image, b"good").unwrap();
        // A missing source directory makes mkfs.ext4 fail.
        let err = make_from_dir(
            &dir.path().join("missing"),
            &image,
            8 << 20,
            &Ext4Options::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Mkfs { .. }), "{err}");
        assert!(
            err.to_string().starts_with("mkfs.ext4 could not make"),
            "{err}"
        );
        assert_eq!(std::fs::read(&image).unwrap(), b"good");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A size too small for a file system is refused the same way.
        let tree = tempfile::tempdir().unwrap();
        let err = make_from_dir(tree.path(), &image, 4096, &Ext4Options::default()).unwrap_err();
        assert!(matches!(err, Error::Mkfs { .. }), "{err}");
        // No file name at all.
        let err = make_from_dir(
            tree.path(),
            Path::new("/"),
            8 << 20,
            &Ext4Options::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no file name"), "{err}");
    }
}
