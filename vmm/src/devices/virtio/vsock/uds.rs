//! The vsock device's Unix socket paths, whatever their length.
//!
//! `sockaddr_un` holds at most 107 bytes of path, but a VMM's work directory (a node's
//! state directory, a container bundle) can be deeper than that. For such a `uds_path`
//! the device keeps its directory open and names its sockets through
//! `/proc/self/fd/<dir fd>/<name>`, which is short and resolves to the same file: the
//! listener at `uds_path` and the guest-initiated `<uds_path>_<port>` sockets work at any
//! depth, and no caller has to move them elsewhere. Host clients at such a path need the
//! same trick (or a shorter path to the same directory) to connect.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Longest path that fits `sockaddr_un.sun_path` with its NUL.
pub const SUN_PATH_MAX: usize = 107;
/// Longest suffix the device appends to `uds_path`: `_` and a 32-bit port.
const MAX_PORT_SUFFIX: usize = 11;

/// A socket path of the device and how to hand it to bind(2)/connect(2).
#[derive(Debug)]
pub struct UdsPath {
    /// The path as configured.
    path: PathBuf,
    /// For a path too long for `sun_path`: its directory, held open, and the file name.
    via_dir: Option<(File, OsString)>,
}

impl UdsPath {
    /// Resolves `path`: its directory is opened now (before any seccomp filter) when the
    /// path, with the longest port suffix, would not fit `sun_path`.
    pub fn new(path: &Path) -> io::Result<UdsPath> {
        if path.as_os_str().len() + MAX_PORT_SUFFIX <= SUN_PATH_MAX {
            return Ok(UdsPath {
                path: path.to_path_buf(),
                via_dir: None,
            });
        }
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => (dir, name.to_os_string()),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a file path",
                ))
            }
        };
        let dir = if dir.as_os_str().is_empty() {
            File::open(".")?
        } else {
            File::open(dir)?
        };
        let uds = UdsPath {
            path: path.to_path_buf(),
            via_dir: Some((dir, name)),
        };
        if uds.address(&format!("_{}", u32::MAX)).as_os_str().len() > SUN_PATH_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("its file name is longer than a Unix socket path allows ({SUN_PATH_MAX} bytes with /proc/self/fd/N/)"),
            ));
        }
        Ok(uds)
    }

    /// The path as configured.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The address of `<path><suffix>` for bind/connect: the path itself when it fits,
    /// else through the open directory (valid while `self` lives).
    pub fn address(&self, suffix: &str) -> PathBuf {
        let mut full = self.path.clone().into_os_string();
        full.push(suffix);
        match &self.via_dir {
            Some((dir, name)) if full.len() > SUN_PATH_MAX => {
                let mut short = OsString::from(format!("/proc/self/fd/{}/", dir.as_raw_fd()));
                short.push(name);
                short.push(suffix);
                PathBuf::from(short)
            }
            _ => PathBuf::from(full),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_paths_are_used_as_they_are() {
        let uds = UdsPath::new(Path::new("/run/vm/v.sock")).expect("short");
        assert_eq!(uds.address(""), Path::new("/run/vm/v.sock"));
        assert_eq!(uds.address("_52"), Path::new("/run/vm/v.sock_52"));
        assert!(uds.via_dir.is_none(), "no directory opened");
    }

    #[test]
    fn long_paths_go_through_their_open_directory() {
        let tmp = tempfile::tempdir().expect("tmp");
        let deep = tmp.path().join("d".repeat(120));
        std::fs::create_dir(&deep).expect("mkdir");
        let uds = UdsPath::new(&deep.join("v.sock")).expect("long");
        assert_eq!(uds.path(), deep.join("v.sock"));
        for suffix in ["", "_1024", "_4294967295"] {
            let addr = uds.address(suffix);
            let text = addr.to_string_lossy().into_owned();
            assert!(text.starts_with("/proc/self/fd/"), "{text}");
            assert!(text.ends_with(&format!("/v.sock{suffix}")), "{text}");
            assert!(addr.as_os_str().len() <= SUN_PATH_MAX, "{text}");
        }
        // The address names the same directory.
        std::fs::write(deep.join("marker"), b"x").expect("write");
        let dir_addr = uds.address("").with_file_name("marker");
        assert_eq!(std::fs::read(dir_addr).expect("read through /proc"), b"x");
    }

    #[test]
    fn unusable_long_paths_are_errors() {
        let tmp = tempfile::tempdir().expect("tmp");
        let missing = tmp.path().join("m".repeat(120)).join("v.sock");
        assert!(UdsPath::new(&missing).is_err(), "directory missing");
        let long_name = tmp.path().join("n".repeat(100));
        let err = UdsPath::new(&long_name).expect_err("name too long");
        assert!(err.to_string().contains("file name is longer"), "{err}");
    }
}
