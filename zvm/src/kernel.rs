//! `zvm kernel ...`: the project's guest kernel, built from Debian's linux-source.
//!
//! The build script, config fragment and patch are compiled into zvm, so the command
//! works from any directory; the kernel is cached by the hash of those inputs.

use clap::Subcommand;
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
        KernelCommand::Path => match build() {
            Ok(code) => code,
            Err(e) => {
                eprintln!("zvm: cannot build the guest kernel: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn build() -> std::io::Result<ExitCode> {
    let dir = tempfile_dir()?;
    for (name, text) in [
        ("build.sh", BUILD_SCRIPT),
        ("zvm-guest.config", CONFIG),
        ("zvm-pvm-workarounds.patch", PATCH),
    ] {
        std::fs::write(dir.join(name), text)?;
    }
    let status = std::process::Command::new("bash")
        .arg(dir.join("build.sh"))
        .status();
    let _ = std::fs::remove_dir_all(&dir);
    let status = status?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("zvm-kernel-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
