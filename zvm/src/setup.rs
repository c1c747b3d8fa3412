//! `zvm setup`: installs zvm as a tool, with what it needs beside it (as Firecracker and
//! Kata ship their kernels and agents), so that an installed zvm runs containers without a
//! checkout.
//!
//! Layout, for `--prefix PREFIX` (default `/usr/local`):
//!
//! ```text
//! PREFIX/lib/zvm/zvm              this zvm
//! PREFIX/lib/zvm/zvm-vmm          the lean VMM executable beside it, when built
//! PREFIX/lib/zvm/zvm-runc         the zvm-runc beside it
//! PREFIX/lib/zvm/vmlinux          the guest kernel
//! PREFIX/lib/zvm/zvm-oci-agent    the static guest agent (PID 1 of container VMs)
//! PREFIX/lib/zvm/zvm-guest-init   the static demo/test init, and zvm-init (the node
//! PREFIX/lib/zvm/zvm-init         image's service manager), when built beside the agent
//! PREFIX/lib/zvm/virtiofsd        the virtio-fs daemon `--fs` runs, when zvm finds one
//! PREFIX/bin/zvm -> ../lib/zvm/zvm
//! PREFIX/bin/zvm-runc -> ../lib/zvm/zvm-runc
//! ```
//!
//! The kernel and the agent are then found next to the running program
//! ([`oci_runtime::sandbox::GuestArtifacts::locate`]; `/proc/self/exe` resolves the links).
//! Files are copied to a temporary name and renamed into place, so a running zvm can be
//! replaced; running setup again upgrades in place.

use clap::Args;
use oci_runtime::sandbox::{GuestArtifacts, AGENT_BINARY, INSTALL_DIR, KERNEL_FILE};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The zvm-runc binary's name.
const RUNC_BINARY: &str = "zvm-runc";
/// Static guest programs installed when they sit beside the agent (guest/build.sh puts
/// them there).
const OPTIONAL_GUEST_PROGRAMS: [&str; 2] = ["zvm-guest-init", "zvm-init"];

/// Flags of `zvm setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Install under this prefix: the files go to PREFIX/lib/zvm, links to PREFIX/bin.
    #[arg(long, value_name = "PREFIX", default_value = "/usr/local")]
    prefix: PathBuf,
    /// The guest kernel to install (default: the one this zvm finds: $ZVM_KERNEL, beside
    /// it, the newest cached build; else `zvm kernel path` builds it).
    #[arg(long, value_name = "VMLINUX")]
    kernel: Option<PathBuf>,
    /// The static guest agent to install (default: the one this zvm finds: $ZVM_OCI_AGENT,
    /// beside it, a checkout's guest/build.sh output); the other guest programs are taken
    /// from beside it.
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// The zvm-runc to install (default: the one beside this zvm).
    #[arg(long, value_name = "PATH")]
    runc: Option<PathBuf>,
}

/// Errors of `zvm setup`.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Something to install was not found.
    #[error("no {what} to install: {detail}")]
    Missing {
        /// What.
        what: &'static str,
        /// Where it was looked for, and how to get it.
        detail: String,
    },
    /// A guest program is not statically linked (it runs in a guest without libraries).
    #[error("{0} is not a static executable (guest/build.sh builds the static one)")]
    NotStatic(PathBuf),
    /// A file operation failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SetupError + 'a {
    move |source| SetupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// One file to install: its source and its name in `lib/zvm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Where it comes from.
    pub source: PathBuf,
    /// Its file name in the install directory.
    pub name: &'static str,
    /// Executable (0755) or not (0644).
    pub executable: bool,
}

/// Where an install goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `PREFIX/lib/zvm`.
    pub lib: PathBuf,
    /// `PREFIX/bin`.
    pub bin: PathBuf,
}

impl Layout {
    /// The layout under `prefix`.
    pub fn new(prefix: &Path) -> Layout {
        Layout {
            lib: prefix.join(INSTALL_DIR),
            bin: prefix.join("bin"),
        }
    }

    /// Copies `items` into `lib` and links `zvm` and `zvm-runc` from `bin`; returns one
    /// line per file for the user.
    pub fn install(&self, items: &[Item]) -> Result<Vec<String>, SetupError> {
        std::fs::create_dir_all(&self.lib).map_err(io("create", &self.lib))?;
        std::fs::create_dir_all(&self.bin).map_err(io("create", &self.bin))?;
        let mut report = Vec::new();
        for item in items {
            let dest = self.lib.join(item.name);
            let mode = if item.executable { 0o755 } else { 0o644 };
            copy_into_place(&item.source, &dest, mode)?;
            report.push(format!("{} <- {}", dest.display(), item.source.display()));
        }
        for name in ["zvm", RUNC_BINARY] {
            let link = self.bin.join(name);
            let target = Path::new("..").join(INSTALL_DIR).join(name);
            link_into_place(&target, &link)?;
            report.push(format!("{} -> {}", link.display(), target.display()));
        }
        Ok(report)
    }
}

/// Copies `source` to `dest` through a temporary file beside it, renamed over `dest` (a
/// running program can be replaced). Nothing to do when both are the same file.
fn copy_into_place(source: &Path, dest: &Path, mode: u32) -> Result<(), SetupError> {
    if same_file(source, dest) {
        return Ok(());
    }
    let tmp = temp_beside(dest);
    let copied = std::fs::copy(source, &tmp)
        .map_err(io("copy", source))
        .and_then(|_| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                .map_err(io("set the mode of", &tmp))
        })
        .and_then(|()| std::fs::rename(&tmp, dest).map_err(io("install", dest)));
    if copied.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    copied
}

/// Makes `link` a symbolic link to `target` (replacing what is there).
fn link_into_place(target: &Path, link: &Path) -> Result<(), SetupError> {
    let tmp = temp_beside(link);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io("link", &tmp))?;
    std::fs::rename(&tmp, link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("install the link", link)(e)
    })
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.setup-{}", std::process::id()))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn is_static(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| initramfs::is_static_elf(&bytes) == Ok(true))
}

fn existing(what: &'static str, path: PathBuf, hint: &str) -> Result<PathBuf, SetupError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(SetupError::Missing {
            what,
            detail: format!("{} does not exist{hint}", path.display()),
        })
    }
}

/// What to install: `zvm` (this program), `runc`, `kernel`, `agent` and the optional
/// guest programs found beside the agent. The agent and the guest programs must be
/// static executables.
pub fn items(
    zvm: PathBuf,
    runc: PathBuf,
    kernel: PathBuf,
    agent: PathBuf,
) -> Result<Vec<Item>, SetupError> {
    let runc = existing(
        "zvm-runc",
        runc,
        " (build it: cargo build --release -p oci-runtime --bin zvm-runc; or give --runc)",
    )?;
    let kernel = existing("guest kernel", kernel, "")?;
    let agent = existing("guest agent", agent, " (guest/build.sh builds it)")?;
    if !is_static(&agent) {
        return Err(SetupError::NotStatic(agent));
    }
    let item = |source: PathBuf, name, executable| Item {
        source,
        name,
        executable,
    };
    // zvm run hands plain VMs to the zvm-vmm beside it (crate::vmm_exec).
    let lean_vmm = zvm.with_file_name(crate::vmm_exec::VMM_BINARY);
    let mut items = vec![
        item(zvm, "zvm", true),
        item(runc, RUNC_BINARY, true),
        item(kernel, KERNEL_FILE, false),
        item(agent.clone(), AGENT_BINARY, true),
    ];
    if lean_vmm.is_file() {
        items.push(item(lean_vmm, crate::vmm_exec::VMM_BINARY, true));
    }
    for name in OPTIONAL_GUEST_PROGRAMS {
        let path = agent.with_file_name(name);
        if path.is_file() && is_static(&path) {
            items.push(item(path, name, true));
        }
    }
    Ok(items)
}

/// The sources for `args`, found as described on [`SetupArgs`].
fn sources(args: &SetupArgs) -> Result<Vec<Item>, SetupError> {
    let zvm = std::env::current_exe().map_err(io("find", Path::new("/proc/self/exe")))?;
    let runc = args
        .runc
        .clone()
        .unwrap_or_else(|| zvm.with_file_name(RUNC_BINARY));
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => match GuestArtifacts::locate_kernel() {
            Ok(k) => k,
            Err(_) => {
                eprintln!("zvm: no guest kernel found; building it (`zvm kernel path`)");
                crate::kernel::build_path().map_err(|e| SetupError::Missing {
                    what: "guest kernel",
                    detail: format!("building it failed: {e}; give --kernel"),
                })?
            }
        },
    };
    let agent = match &args.agent {
        Some(a) => a.clone(),
        None => GuestArtifacts::locate_agent().map_err(|e| SetupError::Missing {
            what: "guest agent",
            detail: format!("{e}; or give --agent"),
        })?,
    };
    let mut items = items(zvm, runc, kernel, agent)?;
    // virtiofsd (--fs), when this machine has one: an installed zvm finds it beside itself.
    if let Ok(virtiofsd) = crate::virtiofs::find_virtiofsd(None) {
        items.push(Item {
            source: virtiofsd,
            name: "virtiofsd",
            executable: true,
        });
    }
    Ok(items)
}

/// Runs `zvm setup`.
pub fn run(args: &SetupArgs) -> ExitCode {
    let layout = Layout::new(&args.prefix);
    match sources(args).and_then(|items| layout.install(&items)) {
        Ok(lines) => {
            lines.iter().for_each(|l| eprintln!("zvm: {l}"));
            eprintln!(
                "zvm: installed in {}; run {}",
                layout.lib.display(),
                layout.bin.join("zvm").display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zvm setup: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A minimal 64-bit ELF with one program header: PT_INTERP (dynamic) or PT_LOAD.
    fn elf(path: &Path, dynamic: bool) {
        let mut bytes = vec![0u8; 64 + 56];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[32..40].copy_from_slice(&64u64.to_le_bytes());
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
        bytes[56..58].copy_from_slice(&1u16.to_le_bytes());
        let p_type: u32 = if dynamic { 3 } else { 1 };
        bytes[64..68].copy_from_slice(&p_type.to_le_bytes());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn file(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn the_install_puts_everything_in_lib_zvm_and_links_bin() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        file(&src.join("zvm"), "zvm v1");
        file(&src.join("zvm-runc"), "runc v1");
        file(&src.join("zvm-vmm"), "vmm v1");
        file(&src.join("k/vmlinux"), "kernel");
        elf(&src.join("guest/zvm-oci-agent"), false);
        elf(&src.join("guest/zvm-guest-init"), false);
        // A dynamically linked zvm-init is not a guest program: left out.
        elf(&src.join("guest/zvm-init"), true);
        let items = items(
            src.join("zvm"),
            src.join("zvm-runc"),
            src.join("k/vmlinux"),
            src.join("guest/zvm-oci-agent"),
        )
        .unwrap();
        let names: Vec<&str> = items.iter().map(|i| i.name).collect();
        assert_eq!(
            names,
            [
                "zvm",
                "zvm-runc",
                "vmlinux",
                "zvm-oci-agent",
                "zvm-vmm",
                "zvm-guest-init"
            ]
        );

        let prefix = dir.path().join("prefix");
        let layout = Layout::new(&prefix);
        assert_eq!(layout.lib, prefix.join("lib/zvm"));
        let report = layout.install(&items).unwrap();
        assert_eq!(report.len(), items.len() + 2, "{report:?}");
        let lib = prefix.join("lib/zvm");
        assert_eq!(std::fs::read_to_string(lib.join("zvm")).unwrap(), "zvm v1");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&lib.join("zvm-runc")), 0o755);
        assert_eq!(mode(&lib.join("vmlinux")), 0o644);
        for name in ["zvm", "zvm-runc"] {
            let link = prefix.join("bin").join(name);
            assert_eq!(
                std::fs::read_link(&link).unwrap(),
                Path::new("../lib/zvm").join(name)
            );
            assert_eq!(
                std::fs::canonicalize(&link).unwrap(),
                std::fs::canonicalize(lib.join(name)).unwrap()
            );
        }
        // What an installed zvm looks for beside itself is there.
        assert!(lib.join(KERNEL_FILE).is_file() && is_static(&lib.join(AGENT_BINARY)));

        // Again, over the first install (an upgrade), and from the installed copy itself.
        file(&src.join("zvm"), "zvm v2");
        layout.install(&items).unwrap();
        assert_eq!(std::fs::read_to_string(lib.join("zvm")).unwrap(), "zvm v2");
        let installed = [Item {
            source: lib.join("zvm"),
            name: "zvm",
            executable: true,
        }];
        layout.install(&installed).unwrap();
        assert_eq!(std::fs::read_to_string(lib.join("zvm")).unwrap(), "zvm v2");
        let leftovers: Vec<_> = std::fs::read_dir(&lib)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn missing_or_dynamic_pieces_are_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        file(&d.join("zvm"), "zvm");
        file(&d.join("vmlinux"), "k");
        elf(&d.join("agent"), true);
        let err = items(
            d.join("zvm"),
            d.join("nope"),
            d.join("vmlinux"),
            d.join("agent"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("no zvm-runc to install") && err.contains("--bin zvm-runc"),
            "{err}"
        );
        file(&d.join("zvm-runc"), "r");
        let err = items(
            d.join("zvm"),
            d.join("zvm-runc"),
            d.join("vmlinux"),
            d.join("agent"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a static executable"), "{err}");
        let err = items(
            d.join("zvm"),
            d.join("zvm-runc"),
            d.join("k2"),
            d.join("agent"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("no guest kernel to install"), "{err}");
    }
}
