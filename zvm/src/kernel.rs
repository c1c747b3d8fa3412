//! `zvm kernel ...`: the project's guest kernel, built from Debian's linux-source.
//!
//! The build script, config fragment and patch are compiled into zvm, so the command
//! works from any directory; the kernel is cached by the hash of those inputs.

use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

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
    let dir = tempfile_dir()?;
    let written = [
        ("build.sh", BUILD_SCRIPT),
        ("zvm-guest.config", CONFIG),
        ("zvm-pvm-workarounds.patch", PATCH),
    ]
    .iter()
    .try_for_each(|(name, text)| std::fs::write(dir.join(name), text));
    let output = written.and_then(|()| {
        std::process::Command::new("bash")
            .arg(dir.join("build.sh"))
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output()
    });
    let _ = std::fs::remove_dir_all(&dir);
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

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("zvm-kernel-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
