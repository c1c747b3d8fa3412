//! `zvm`: run micro-VMs from the command line.

mod kernel;
mod run;
mod specs;
mod terminal;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// zvm runs Linux micro-VMs on KVM: a kernel, an initramfs and a command line in, a
/// booted guest on your terminal out.
#[derive(Debug, Parser)]
#[command(name = "zvm", version, about, long_about = None)]
struct Cli {
    /// Log level for zvm's own messages (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "info", env = "ZVM_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a kernel in a micro-VM, console on this terminal (or a file).
    ///
    /// The VM ends when the guest powers off or reboots (exit code 0), or when it
    /// triple-faults or KVM fails (an error with the vCPU registers, exit code 1).
    /// Bad arguments exit with code 2.
    Run(run::RunArgs),
    /// Report this host's KVM: flavour, API version, capabilities, and whether a stock
    /// guest kernel is expected to reach userspace.
    Doctor,
    /// The project's guest kernel.
    Kernel {
        #[command(subcommand)]
        command: kernel::KernelCommand,
    },
    /// Content-addressed image lists (ThreeFold rfs `.fl` format): pack, inspect, unpack,
    /// make a disk image.
    Flist {
        #[command(subcommand)]
        command: flist_fetcher::cli::FlistCommand,
    },
    /// Pack a directory into a gzip-compressed newc cpio initramfs.
    Initramfs {
        /// Directory whose contents become the root of the initramfs.
        dir: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
    match cli.command {
        Command::Run(args) => run::run(args, process_start),
        Command::Doctor => {
            print!("{}", vmm::host::HostReport::probe().render());
            ExitCode::SUCCESS
        }
        Command::Kernel { command } => kernel::run(command),
        Command::Flist { command } => match flist_fetcher::cli::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zvm: {e}");
                ExitCode::from(1)
            }
        },
        Command::Initramfs { dir, output } => match initramfs::pack_dir(&dir, &output) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zvm: {e}");
                ExitCode::from(2)
            }
        },
    }
}
