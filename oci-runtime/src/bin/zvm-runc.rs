//! `zvm-runc`: the OCI runtime command line (runc's), every container in its own micro-VM.

use clap::Parser;
use std::process::ExitCode;

/// An OCI runtime with runc's command line that runs every container in its own zvm
/// micro-VM.
#[derive(Debug, Parser)]
#[command(name = "zvm-runc", disable_version_flag = true, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: oci_runtime::cli::OciArgs,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    oci_runtime::cli::run(
        cli.args,
        "zvm-runc",
        oci_runtime::cli::self_launcher(&["__sandbox"]),
    )
}
