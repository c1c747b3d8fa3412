//! `zvm kernel ...`: the project's guest kernel, built from Debian's linux-source.
//!
//! The build script, config fragment and patch are compiled into zvm, so the command
//! works from any directory; the kernel is cached by the hash of those inputs.

use clap::Subcommand;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tempfile::TempDir;

const BUILD_SCRIPT: &str = include_str!("../../guest-kernel/build.sh");
const CONFIG: &str = include_str!("../../guest-kernel/zvm-guest.config");
const PATCH: &str = include_str!("../../guest-kernel/zvm-pvm-workarounds.patch");

/// Guest kernel commands.
#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Build the guest kernel if it is not cached, then print the vmlinux path as the
    /// last line (a first build takes minutes; progress goes to stderr).
    Path,
}

/// Runs a kernel subcommand.
pub fn run(command: KernelCommand) -> ExitCode {
    match command {
        KernelCommand::Path => match build_path() {
            Ok(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("zvm: cannot build the guest kernel: {e}");
                ExitCode::from(1)
            }
        },
    }
}

/// Builds the guest kernel if it is not cached (progress on standard error) and returns
/// the path of its vmlinux.
pub fn build_path() -> std::io::Result<PathBuf> {
    let dir = stage_build_files(&std::env::temp_dir())?;
    let output = std::process::Command::new("bash")
        .arg(dir.path().join("build.sh"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output();
    drop(dir);
    let output = output?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "guest-kernel/build.sh failed ({})",
            output.status
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .filter(|p| p.is_file())
        .ok_or_else(|| std::io::Error::other("guest-kernel/build.sh printed no kernel path"))
}

/// Writes the build script and its inputs into a fresh private directory under `parent`
/// (see [`crate::private_tmp`]: run as root, a predictable name would let another user
/// plant the script root runs), removed when the returned [`TempDir`] is dropped.
fn stage_build_files(parent: &Path) -> std::io::Result<TempDir> {
    let dir = crate::private_tmp::dir_in(parent, "zvm-kernel-")?;
    for (name, text) in [
        ("build.sh", BUILD_SCRIPT),
        ("zvm-guest.config", CONFIG),
        ("zvm-pvm-workarounds.patch", PATCH),
    ] {
        File::options()
            .write(true)
            .create_new(true)
            .open(dir.path().join(name))?
            .write_all(text.as_bytes())?;
    }
    Ok(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_build_files_go_to_a_private_directory_not_a_planted_one() {
        let parent = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        // What zvm used to take: `<tmp>/zvm-kernel-<pid>`, here a link to another's directory.
        let old = parent
            .path()
            .join(format!("zvm-kernel-{}", std::process::id()));
        std::os::unix::fs::symlink(victim.path(), &old).unwrap();
        let staged = stage_build_files(parent.path()).unwrap();
        let dir = staged.path().to_path_buf();
        assert_ne!(dir, old);
        assert_eq!(dir.parent(), Some(parent.path()));
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert!(meta.is_dir(), "a real directory, not a link");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        let script = std::fs::read_to_string(dir.join("build.sh")).unwrap();
        assert_eq!(script, BUILD_SCRIPT);
        assert!(dir.join("zvm-guest.config").is_file());
        assert!(dir.join("zvm-pvm-workarounds.patch").is_file());
        assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 0);
        drop(staged);
        assert!(!dir.exists(), "removed after the build");
        assert!(std::fs::symlink_metadata(&old)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
