//! Private temporary paths for what zvm makes under the temporary directory (often as root):
//! the kernel build directory of `zvm kernel path`, the unpack directory and the console log
//! of `zvm run --flist`.
//!
//! Each gets an unpredictable name (a prefix and random characters, not the process id) and
//! is created exclusively: `mkdir`, or `open` with `O_CREAT | O_EXCL`, neither of which
//! follows a symbolic link, so a file or link another user planted at a name is never used
//! or followed (the next random name is tried instead). Directories are their owner's alone
//! (mode 0700), files too (0600).

use std::fs::{File, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A fresh private directory (0700) under the temporary directory (`TMPDIR`, else `/tmp`),
/// named `<prefix><random>`; removed with everything in it when the [`TempDir`] is dropped.
pub fn dir(prefix: &str) -> std::io::Result<TempDir> {
    dir_in(&std::env::temp_dir(), prefix)
}

/// Like [`dir`], under `parent`.
pub fn dir_in(parent: &Path, prefix: &str) -> std::io::Result<TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(Permissions::from_mode(0o700))
        .tempdir_in(parent)
}

/// A fresh private file (0600) under `parent`, named `<prefix><random><suffix>`, that stays
/// when the process ends (the caller removes it); the open file and its path.
pub fn kept_file_in(parent: &Path, prefix: &str, suffix: &str) -> std::io::Result<(File, PathBuf)> {
    tempfile::Builder::new()
        .prefix(prefix)
        .suffix(suffix)
        .permissions(Permissions::from_mode(0o600))
        .tempfile_in(parent)?
        .keep()
        .map_err(|e| e.error)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A parent directory with, at `name` (the predictable name zvm used to take), a
    /// symbolic link to a directory of the "victim" and a link to a file of theirs, or a
    /// plain file.
    struct Planted {
        parent: tempfile::TempDir,
        victim: tempfile::TempDir,
    }

    fn plant(name: &str, kind: &str) -> Planted {
        let planted = Planted {
            parent: tempfile::tempdir().unwrap(),
            victim: tempfile::tempdir().unwrap(),
        };
        let at = planted.parent.path().join(name);
        let secret = planted.victim.path().join("secret");
        std::fs::write(&secret, "keep me").unwrap();
        match kind {
            "dir-link" => std::os::unix::fs::symlink(planted.victim.path(), &at).unwrap(),
            "file-link" => std::os::unix::fs::symlink(&secret, &at).unwrap(),
            _ => std::fs::write(&at, "planted").unwrap(),
        }
        planted
    }

    impl Planted {
        /// Nothing planted was followed or changed.
        fn untouched(&self, name: &str, kind: &str) {
            let at = self.parent.path().join(name);
            let meta = std::fs::symlink_metadata(&at).unwrap();
            assert_eq!(meta.file_type().is_symlink(), kind != "file", "{kind}");
            let victim: Vec<_> = std::fs::read_dir(self.victim.path()).unwrap().collect();
            assert_eq!(victim.len(), 1, "nothing added to the victim's directory");
            let secret = self.victim.path().join("secret");
            assert_eq!(std::fs::read_to_string(secret).unwrap(), "keep me");
            if kind == "file" {
                assert_eq!(std::fs::read_to_string(&at).unwrap(), "planted");
            }
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_private_dir_never_takes_a_planted_name_and_goes_when_dropped() {
        let pid = std::process::id();
        // The names `zvm kernel path` and `zvm run --flist` used to take.
        for (prefix, old) in [
            ("zvm-kernel-", format!("zvm-kernel-{pid}")),
            ("zvm-flist-", format!("zvm-flist-{pid}")),
        ] {
            for kind in ["dir-link", "file-link", "file"] {
                let planted = plant(&old, kind);
                let dir = dir_in(planted.parent.path(), prefix).unwrap();
                let path = dir.path().to_path_buf();
                assert_eq!(path.parent(), Some(planted.parent.path()));
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                assert!(name.starts_with(prefix) && name != old, "{name}");
                let meta = std::fs::symlink_metadata(&path).unwrap();
                assert!(meta.is_dir() && !meta.file_type().is_symlink());
                assert_eq!(mode(&path), 0o700, "{name}");
                std::fs::write(path.join("build.sh"), "echo hi").unwrap();
                planted.untouched(&old, kind);
                drop(dir);
                assert!(!path.exists(), "removed when dropped");
                planted.untouched(&old, kind);
            }
        }
    }

    #[test]
    fn a_kept_file_never_takes_a_planted_name_and_stays() {
        let old = format!("zvm-flist-{}.log", std::process::id());
        for kind in ["dir-link", "file-link", "file"] {
            let planted = plant(&old, kind);
            let (mut file, path) =
                kept_file_in(planted.parent.path(), "zvm-flist-", ".log").unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.starts_with("zvm-flist-") && name.ends_with(".log"),
                "{name}"
            );
            assert_ne!(name, old);
            assert_eq!(path.parent(), Some(planted.parent.path()));
            assert_eq!(mode(&path), 0o600, "{name}");
            file.write_all(b"console").unwrap();
            drop(file);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "console");
            planted.untouched(&old, kind);
        }
    }

    #[test]
    fn dir_is_made_under_the_temporary_directory() {
        let dir = dir("zvm-test-").unwrap();
        assert!(dir.path().starts_with(std::env::temp_dir()));
        assert_eq!(mode(dir.path()), 0o700);
    }
}
