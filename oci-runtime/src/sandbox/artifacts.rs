//! Finding the guest kernel and the guest agent binary.
//!
//! An installed zvm (`zvm setup --prefix PREFIX`) keeps them in `PREFIX/lib/zvm/` beside its
//! own binaries ([`INSTALL_DIR`]); `PREFIX/bin/zvm` and `PREFIX/bin/zvm-runc` are links there.
//! A checkout finds them in its build outputs instead.

use super::SandboxError;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Environment variable naming the guest kernel (an uncompressed vmlinux).
pub const KERNEL_ENV: &str = "ZVM_KERNEL";
/// Environment variable naming the static guest agent binary.
pub const AGENT_ENV: &str = "ZVM_OCI_AGENT";
/// File name of the kernel looked for next to the executable.
pub const KERNEL_FILE: &str = "vmlinux";
/// File name of the agent looked for next to the executable and in the build outputs.
pub const AGENT_BINARY: &str = "zvm-oci-agent";
/// Where an install keeps the binaries, the kernel and the guest programs, relative to its
/// prefix (the links in `PREFIX/bin` point here; copies in `PREFIX/bin` look here too).
pub const INSTALL_DIR: &str = "lib/zvm";

/// The guest-side files a container VM boots from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestArtifacts {
    /// Guest kernel (ELF vmlinux or bzImage).
    pub kernel: PathBuf,
    /// Static `zvm-oci-agent` binary (becomes `/init`).
    pub agent: PathBuf,
}

/// Where [`GuestArtifacts::locate`] looks (separated out for tests).
#[derive(Debug, Default)]
struct Search {
    kernel_env: Option<OsString>,
    agent_env: Option<OsString>,
    exe_dir: Option<PathBuf>,
    /// `<exe_dir>/../lib/zvm`: an install's files when the executable is a copy in `bin/`.
    install_dir: Option<PathBuf>,
    /// `<cache>/kernel`, holding `<key>/vmlinux` built by guest-kernel/build.sh.
    kernel_cache: Option<PathBuf>,
    /// Directories the build puts the static agent in.
    agent_builds: Vec<PathBuf>,
}

impl GuestArtifacts {
    /// Finds the kernel and the agent: `$ZVM_KERNEL` / `$ZVM_OCI_AGENT` when set (and then
    /// nothing else), otherwise `vmlinux` / `zvm-oci-agent` next to the running executable
    /// (symbolic links resolved: an installed `bin/zvm` links into `lib/zvm/`), otherwise in
    /// `../lib/zvm/` from it (an install whose `bin/` holds copies), otherwise the build
    /// outputs of a checkout (the newest kernel guest-kernel/build.sh cached under
    /// `$ZVM_CACHE_DIR`, `$XDG_CACHE_HOME/zvm` or `~/.cache/zvm`; the agent that
    /// guest/build.sh built in this source tree).
    pub fn locate() -> Result<Self, SandboxError> {
        Self::search().locate()
    }

    /// Finds only the kernel (as [`Self::locate`] does).
    pub fn locate_kernel() -> Result<PathBuf, SandboxError> {
        Self::search().kernel()
    }

    fn search() -> Search {
        // Linux's /proc/self/exe: links already resolved.
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf));
        let install_dir = exe_dir
            .as_deref()
            .and_then(Path::parent)
            .map(|prefix| prefix.join(INSTALL_DIR));
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf);
        let triple = "x86_64-unknown-linux-gnu/release";
        Search {
            kernel_env: std::env::var_os(KERNEL_ENV),
            agent_env: std::env::var_os(AGENT_ENV),
            exe_dir,
            install_dir,
            kernel_cache: cache_root().map(|c| c.join("kernel")),
            agent_builds: repo
                .map(|r| {
                    vec![
                        r.join("guest/target").join(triple),
                        r.join("target").join(triple),
                    ]
                })
                .unwrap_or_default(),
        }
    }

    /// Finds only the agent (as [`Self::locate`] does).
    pub fn locate_agent() -> Result<PathBuf, SandboxError> {
        Self::search().agent()
    }

    /// Checks that both files exist and are non-empty regular files.
    pub fn check(&self) -> Result<(), SandboxError> {
        check_file(&self.kernel).map_err(|detail| {
            missing(
                "kernel",
                KERNEL_ENV,
                format!("{}: {detail}", self.kernel.display()),
            )
        })?;
        check_file(&self.agent).map_err(|detail| {
            missing(
                "agent",
                AGENT_ENV,
                format!("{}: {detail}", self.agent.display()),
            )
        })?;
        Ok(())
    }
}

fn missing(what: &'static str, env: &'static str, detail: String) -> SandboxError {
    SandboxError::MissingArtifact { what, env, detail }
}

/// zvm's cache directory: `$ZVM_CACHE_DIR`, `$XDG_CACHE_HOME/zvm` or `~/.cache/zvm`.
pub(crate) fn cache_root() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ZVM_CACHE_DIR") {
        return Some(dir.into());
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(Path::new(&dir).join("zvm"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/zvm"))
}

fn is_static(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| initramfs::is_static_elf(&bytes) == Ok(true))
}

fn check_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() == 0 {
        return Err("empty file".into());
    }
    Ok(())
}

impl Search {
    fn locate(&self) -> Result<GuestArtifacts, SandboxError> {
        let kernel = self.kernel()?;
        let agent = self.agent()?;
        Ok(GuestArtifacts { kernel, agent })
    }

    fn kernel(&self) -> Result<PathBuf, SandboxError> {
        if let Some(path) = &self.kernel_env {
            let path = PathBuf::from(path);
            check_file(&path).map_err(|e| {
                missing(
                    "kernel",
                    KERNEL_ENV,
                    format!("{KERNEL_ENV}={}: {e}", path.display()),
                )
            })?;
            return Ok(path);
        }
        let mut looked = Vec::new();
        for dir in self.exe_dir.iter().chain(&self.install_dir) {
            let path = dir.join(KERNEL_FILE);
            if check_file(&path).is_ok() {
                return Ok(path);
            }
            looked.push(path.display().to_string());
        }
        if let Some(cache) = &self.kernel_cache {
            if let Some(path) = newest_cached_kernel(cache) {
                return Ok(path);
            }
            looked.push(format!("{}/*/{KERNEL_FILE}", cache.display()));
        }
        Err(missing(
            "kernel",
            KERNEL_ENV,
            format!(
                "looked in {} (`zvm setup` installs one, `zvm kernel path` builds one)",
                looked.join(", ")
            ),
        ))
    }

    fn agent(&self) -> Result<PathBuf, SandboxError> {
        if let Some(path) = &self.agent_env {
            let path = PathBuf::from(path);
            check_file(&path).map_err(|e| {
                missing(
                    "agent",
                    AGENT_ENV,
                    format!("{AGENT_ENV}={}: {e}", path.display()),
                )
            })?;
            return Ok(path);
        }
        let mut looked = Vec::new();
        let dirs = self.exe_dir.iter().chain(&self.install_dir);
        for dir in dirs.chain(&self.agent_builds) {
            let path = dir.join(AGENT_BINARY);
            // The agent runs as the guest's PID 1 with no shared libraries: skip a
            // dynamically linked build (cargo's host build lands next to zvm in target/).
            if check_file(&path).is_ok() && is_static(&path) {
                return Ok(path);
            }
            looked.push(path.display().to_string());
        }
        Err(missing(
            "agent",
            AGENT_ENV,
            format!(
                "looked for {} (`zvm setup` installs it, guest/build.sh builds it)",
                looked.join(", ")
            ),
        ))
    }
}

/// The most recently built `<cache>/<key>/vmlinux`.
fn newest_cached_kernel(cache: &Path) -> Option<PathBuf> {
    std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(KERNEL_FILE))
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            (meta.is_file() && meta.len() > 0).then_some((meta.modified().ok()?, p))
        })
        .max_by_key(|(time, _)| *time)
        .map(|(_, p)| p)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn env_paths_win_and_a_bad_one_names_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let (k, a) = (dir.path().join("k"), dir.path().join("a"));
        file(&k);
        file(&a);
        file(&dir.path().join("exe/vmlinux"));
        let search = Search {
            kernel_env: Some(k.clone().into()),
            agent_env: Some(a.clone().into()),
            exe_dir: Some(dir.path().join("exe")),
            ..Default::default()
        };
        assert_eq!(
            search.locate().unwrap(),
            GuestArtifacts {
                kernel: k,
                agent: a
            }
        );

        let search = Search {
            kernel_env: Some("/nonexistent/vmlinux".into()),
            ..Default::default()
        };
        let err = search.locate().unwrap_err().to_string();
        assert!(
            err.contains("ZVM_KERNEL=/nonexistent/vmlinux")
                && err.ends_with("set ZVM_KERNEL to its path"),
            "{err}"
        );
        let search = Search {
            kernel_env: Some(dir.path().into()),
            ..Default::default()
        };
        assert!(search
            .locate()
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
    }

    /// Writes a minimal 64-bit ELF header with one program header: PT_INTERP (a dynamically
    /// linked program) or PT_LOAD (a static one).
    fn elf(path: &Path, dynamic: bool) {
        let mut bytes = vec![0u8; 64 + 56];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2; // 64-bit
        bytes[5] = 1; // little-endian
        bytes[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        bytes[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let p_type: u32 = if dynamic { 3 } else { 1 };
        bytes[64..68].copy_from_slice(&p_type.to_le_bytes());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn files_next_to_the_executable_then_build_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("bin");
        let cache = dir.path().join("cache/kernel");
        let build = dir.path().join("guest/target");
        let mut search = Search {
            exe_dir: Some(exe.clone()),
            kernel_cache: Some(cache.clone()),
            agent_builds: vec![build.clone()],
            ..Default::default()
        };

        let err = search.locate().unwrap_err().to_string();
        assert!(
            err.starts_with("no guest kernel found") && err.contains("set ZVM_KERNEL"),
            "{err}"
        );
        file(&cache.join("old/vmlinux"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        file(&cache.join("new/vmlinux"));
        std::fs::create_dir_all(cache.join("build.partial")).unwrap();
        let err = search.locate().unwrap_err().to_string();
        assert!(
            err.starts_with("no guest agent found") && err.contains("set ZVM_OCI_AGENT"),
            "{err}"
        );
        elf(&build.join(AGENT_BINARY), false);
        let found = search.locate().unwrap();
        assert_eq!(
            found,
            GuestArtifacts {
                kernel: cache.join("new/vmlinux"),
                agent: build.join(AGENT_BINARY)
            }
        );

        file(&exe.join(KERNEL_FILE));
        // A dynamically linked agent next to the executable (cargo's host build) is skipped.
        elf(&exe.join(AGENT_BINARY), true);
        assert_eq!(search.locate().unwrap().agent, build.join(AGENT_BINARY));
        elf(&exe.join(AGENT_BINARY), false);
        search.agent_env = None;
        assert_eq!(
            search.locate().unwrap(),
            GuestArtifacts {
                kernel: exe.join(KERNEL_FILE),
                agent: exe.join(AGENT_BINARY)
            }
        );
    }

    #[test]
    fn an_install_comes_before_the_build_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("prefix");
        let lib = prefix.join(INSTALL_DIR);
        let cache = dir.path().join("cache/kernel");
        let build = dir.path().join("guest/target");
        file(&cache.join("k1/vmlinux"));
        elf(&build.join(AGENT_BINARY), false);
        // A copy of zvm in PREFIX/bin: its files are in PREFIX/lib/zvm.
        let search = Search {
            exe_dir: Some(prefix.join("bin")),
            install_dir: Some(lib.clone()),
            kernel_cache: Some(cache.clone()),
            agent_builds: vec![build.clone()],
            ..Default::default()
        };
        assert_eq!(search.locate().unwrap().kernel, cache.join("k1/vmlinux"));
        file(&lib.join(KERNEL_FILE));
        elf(&lib.join(AGENT_BINARY), false);
        assert_eq!(
            search.locate().unwrap(),
            GuestArtifacts {
                kernel: lib.join(KERNEL_FILE),
                agent: lib.join(AGENT_BINARY)
            }
        );
        // zvm run through the PREFIX/bin link: the executable is PREFIX/lib/zvm/zvm.
        let search = Search {
            exe_dir: Some(lib.clone()),
            install_dir: Some(dir.path().join(INSTALL_DIR)),
            kernel_cache: Some(cache),
            agent_builds: vec![build],
            ..Default::default()
        };
        assert_eq!(search.kernel().unwrap(), lib.join(KERNEL_FILE));
        assert_eq!(search.agent().unwrap(), lib.join(AGENT_BINARY));
        let err = Search::default().kernel().unwrap_err().to_string();
        assert!(err.contains("`zvm setup` installs one"), "{err}");
    }

    #[test]
    fn check_reports_missing_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let a = GuestArtifacts {
            kernel: empty.clone(),
            agent: empty,
        };
        let err = a.check().unwrap_err().to_string();
        assert!(
            err.contains("empty file") && err.contains("ZVM_KERNEL"),
            "{err}"
        );
        let k = dir.path().join("k");
        file(&k);
        let a = GuestArtifacts {
            kernel: k,
            agent: dir.path().join("missing"),
        };
        let err = a.check().unwrap_err().to_string();
        assert!(
            err.starts_with("no guest agent found") && err.contains("ZVM_OCI_AGENT"),
            "{err}"
        );
    }
}
