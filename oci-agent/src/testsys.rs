//! A recording [`Sys`] double for unit tests: every call is logged as a line of text, and a
//! few knobs make calls fail or answer as a test needs.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use crate::sys::{FileKind, Sys};

/// The double: calls so far and the knobs.
#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) calls: Vec<String>,
    pub(crate) kinds: HashMap<PathBuf, FileKind>,
    pub(crate) executables: Vec<PathBuf>,
    pub(crate) pivot_einval: bool,
    pub(crate) mknod_eperm: bool,
    pub(crate) fail_on: Option<String>,
    /// What `block_size` answers, one value a call; 0 once they are used up.
    pub(crate) block_sizes: VecDeque<u64>,
}

impl Recorder {
    /// Logs `s`; fails with EACCES when it starts with `fail_on`.
    pub(crate) fn log(&mut self, s: String) -> io::Result<()> {
        let fail = self
            .fail_on
            .as_ref()
            .is_some_and(|f| s.starts_with(f.as_str()));
        self.calls.push(s);
        if fail {
            Err(io::Error::from_raw_os_error(libc::EACCES))
        } else {
            Ok(())
        }
    }
    /// Whether a call starting with `prefix` was made.
    pub(crate) fn has(&self, prefix: &str) -> bool {
        self.calls.iter().any(|c| c.starts_with(prefix))
    }
    /// Index of the first call starting with `prefix`.
    pub(crate) fn pos(&self, prefix: &str) -> usize {
        self.calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no call {prefix:?} in {:#?}", self.calls))
    }
}

fn d(p: &Path) -> String {
    p.display().to_string()
}

impl Sys for Recorder {
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> io::Result<()> {
        let src = source.map(d).unwrap_or_else(|| "-".into());
        self.log(format!(
            "mount {src} {} {} {flags:#x} {}",
            d(target),
            fstype.unwrap_or("-"),
            data.unwrap_or("-")
        ))
    }
    fn umount(&mut self, target: &Path, flags: i32) -> io::Result<()> {
        self.log(format!("umount {} {flags}", d(target)))
    }
    fn kind(&mut self, path: &Path) -> io::Result<Option<FileKind>> {
        Ok(self.kinds.get(path).copied())
    }
    fn resolve(&mut self, root: &Path, path: &Path) -> io::Result<PathBuf> {
        Ok(root.join(path.strip_prefix("/").unwrap_or(path)))
    }
    fn mkdir_all(&mut self, path: &Path) -> io::Result<()> {
        self.log(format!("mkdir {}", d(path)))
    }
    fn create_file(&mut self, path: &Path) -> io::Result<()> {
        self.log(format!("touch {}", d(path)))
    }
    fn mknod(&mut self, path: &Path, mode: u32, dev: u64) -> io::Result<()> {
        self.log(format!("mknod {} {mode:o} {dev}", d(path)))?;
        if self.mknod_eperm {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.log(format!("chown {} {uid} {gid}", d(path)))
    }
    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()> {
        self.log(format!("symlink {} {}", d(target), d(link)))
    }
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        self.log(format!("pivot_root {} {}", d(new_root), d(put_old)))?;
        if self.pivot_einval {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }
    fn chroot(&mut self, path: &Path) -> io::Result<()> {
        self.log(format!("chroot {}", d(path)))
    }
    fn chdir(&mut self, path: &Path) -> io::Result<()> {
        self.log(format!("chdir {}", d(path)))
    }
    fn write_file(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.log(format!(
            "write {} {}",
            d(path),
            String::from_utf8_lossy(data)
        ))
    }
    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        self.log(format!("sethostname {name}"))
    }
    fn setdomainname(&mut self, name: &str) -> io::Result<()> {
        self.log(format!("setdomainname {name}"))
    }
    fn unshare(&mut self, flags: i32) -> io::Result<()> {
        self.log(format!("unshare {flags:#x}"))
    }
    fn setns(&mut self, path: &Path, flag: i32) -> io::Result<()> {
        self.log(format!("setns {} {flag:#x}", d(path)))
    }
    fn setrlimit(&mut self, resource: u32, soft: u64, hard: u64) -> io::Result<()> {
        self.log(format!("setrlimit {resource} {soft} {hard}"))
    }
    fn umask(&mut self, mask: u32) {
        let _ = self.log(format!("umask {mask:o}"));
    }
    fn set_no_new_privs(&mut self) -> io::Result<()> {
        self.log("no_new_privs".into())
    }
    fn seccomp_filter(
        &mut self,
        program: &[seccompiler::sock_filter],
        flags: u32,
    ) -> io::Result<()> {
        self.log(format!(
            "seccomp {} instructions flags {flags}",
            program.len()
        ))
    }
    fn cap_drop_bound(&mut self, cap: u32) -> io::Result<()> {
        self.log(format!("capbset_drop {cap}"))
    }
    fn set_keep_caps(&mut self, keep: bool) -> io::Result<()> {
        self.log(format!("keepcaps {keep}"))
    }
    fn setgroups(&mut self, gids: &[u32]) -> io::Result<()> {
        self.log(format!("setgroups {gids:?}"))
    }
    fn setresgid(&mut self, gid: u32) -> io::Result<()> {
        self.log(format!("setresgid {gid}"))
    }
    fn setresuid(&mut self, uid: u32) -> io::Result<()> {
        self.log(format!("setresuid {uid}"))
    }
    fn capset(&mut self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
        self.log(format!(
            "capset {effective:#x} {permitted:#x} {inheritable:#x}"
        ))
    }
    fn cap_ambient_raise(&mut self, cap: u32) -> io::Result<()> {
        self.log(format!("ambient {cap}"))
    }
    fn is_executable(&mut self, path: &Path) -> bool {
        let _ = self.log(format!("access {}", d(path)));
        self.executables.iter().any(|e| e == path)
    }
    fn loopback_up(&mut self) -> io::Result<()> {
        self.log("lo up".into())
    }
    fn add_entropy(&mut self, data: &[u8]) -> io::Result<()> {
        self.log(format!("add_entropy {} bytes", data.len()))
    }
    fn reseed_crng(&mut self) -> io::Result<()> {
        self.log("reseed_crng".into())
    }
    fn set_realtime(&mut self, ns: u64) -> io::Result<()> {
        self.log(format!("set_realtime {ns}"))
    }
    fn block_size(&mut self, device: &Path) -> io::Result<u64> {
        self.log(format!("block_size {}", d(device)))?;
        Ok(self.block_sizes.pop_front().unwrap_or(0))
    }
}
