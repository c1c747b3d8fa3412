//! `zvm`: run micro-VMs from the command line.

mod api;
mod container_log;
mod container_run;
mod container_share;
mod container_vm;
mod kernel;
mod output_file;
mod restore;
mod run;
mod run_outcome;
mod setup;
mod specs;
mod template;
mod vm_jail;
mod vmm_exec;

// What zvm shares with zvm-vmm.
use vm_runner::{handover, private_tmp, run_metrics, stop_signals, terminal, virtiofs, vm_end};

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
    /// Serve Firecracker's REST API on this Unix socket and run one VM, configured through
    /// it (`PUT /boot-source`, `/machine-config`, `/drives/{id}`, ..., `PUT /actions`).
    #[arg(long, value_name = "PATH")]
    api_sock: Option<std::path::PathBuf>,
    /// Configure the VM from a Firecracker-style JSON file and boot it at once (or, with a
    /// `snapshot-load` section, restore it from a snapshot).
    #[arg(long, value_name = "FILE")]
    config_file: Option<std::path::PathBuf>,
    /// With --config-file: serve no API.
    #[arg(long, requires = "config_file", conflicts_with = "api_sock")]
    no_api: bool,
    /// Instance id reported by `GET /`.
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    /// In API/config-file mode: seccomp filters on zvm's threads (on, or off to debug).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    seccomp_level: String,
    /// In API/config-file mode: run jailed with DIR as the VMM's root, as Firecracker's
    /// jailer does: --api-sock, --config-file and every path in requests are inside DIR;
    /// taps must belong to the jail's uid (README: "Jail and threat model"). Needs root.
    #[arg(long, value_name = "DIR")]
    jail_root: Option<std::path::PathBuf>,
    /// With --jail-root: the uids (and gids) jails take theirs from, one per VM.
    #[arg(
        long,
        value_name = "FIRST:COUNT",
        env = jail::JailConfig::IDS_ENV,
        default_value = "900000:65536",
        requires = "jail_root"
    )]
    jail_ids: jail::IdRange,
    /// With --jail-root: the most guest memory (MiB) and vCPUs the jail's cgroup allows for.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 2048,
        requires = "jail_root"
    )]
    jail_memory_mib: u64,
    /// With --jail-root: the vCPUs the jail's cgroup gives CPU time for (plus one).
    #[arg(long, value_name = "N", default_value_t = 2, requires = "jail_root")]
    jail_cpus: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a kernel in a micro-VM (or restore one from a snapshot with --restore),
    /// console on this terminal (or a file).
    ///
    /// The VM ends when the guest powers off or reboots (exit code 0), or when it
    /// triple-faults or KVM fails (an error with the vCPU registers, exit code 1).
    /// Bad arguments, and a snapshot that is refused, exit with code 2.
    Run(Box<run::RunArgs>),
    /// Report this host's KVM: flavour, API version, capabilities, and whether a stock
    /// guest kernel is expected to reach userspace.
    Doctor,
    /// Install zvm: this zvm and the zvm-runc beside it, the guest kernel and the static
    /// guest programs into PREFIX/lib/zvm, linked from PREFIX/bin; an installed zvm finds
    /// its kernel and agent there, without a checkout.
    Setup(setup::SetupArgs),
    /// The project's guest kernel.
    Kernel {
        #[command(subcommand)]
        command: kernel::KernelCommand,
    },
    /// Content-addressed image lists (ThreeFold rfs `.fl` format): pack, inspect, unpack,
    /// make a disk image.
    Flist {
        #[command(subcommand)]
        command: FlistCommand,
    },
    /// The node: the daemon that runs deployments of micro-VMs from flists.
    Node {
        #[command(subcommand)]
        command: zos_boot::cli::NodeCommand,
    },
    /// Send one request to a running zvm's API socket and print the answer: the status
    /// on standard error, the body on standard output; exit 1 on a 4xx/5xx answer.
    Api(api::client::ApiArgs),
    /// OCI containers, each in its own micro-VM, with runc's command line (also installed
    /// as `zvm-runc`): create, start, state, kill, delete, run, exec, ps, list, spec, features.
    Oci(oci_runtime::cli::OciArgs),
    /// The VM templates container VMs are restored from instead of booting a kernel
    /// (`ZVM_TEMPLATES=off` turns them off; `ZVM_TEMPLATE_DIR`, `ZVM_TEMPLATE_MAX`).
    Template {
        #[command(subcommand)]
        command: template::TemplateCommand,
    },
    /// Pack a directory into a newc cpio initramfs, gzip-compressed unless --uncompressed.
    Initramfs {
        /// Directory whose contents become the root of the initramfs.
        dir: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Store the archive uncompressed: a larger file, but the guest kernel has nothing
        /// to inflate at boot (where guest kernel code is emulated, tens of seconds per boot).
        #[arg(long)]
        uncompressed: bool,
    },
}

/// `zvm flist ...`: flist-fetcher's commands, plus `from-oci` which needs oci-runtime (and
/// flist-fetcher must not depend on it).
#[derive(Debug, Subcommand)]
enum FlistCommand {
    #[command(flatten)]
    Fetcher(flist_fetcher::cli::FlistCommand),
    /// Make an flist from an OCI image layout; the image's entrypoint, env, cwd and user go
    /// into the flist as /.zvm/image-config.json.
    FromOci(oci_runtime::image::cli::FromOciArgs),
}

fn run_flist(command: FlistCommand) -> Result<(), String> {
    match command {
        FlistCommand::Fetcher(c) => flist_fetcher::cli::run(c).map_err(|e| e.to_string()),
        FlistCommand::FromOci(a) => {
            oci_runtime::image::cli::run_from_oci(&a).map_err(|e| e.to_string())
        }
    }
}

/// `zvm run`'s command line alone: what [`Cli`] parses when the first argument is `run`,
/// without building every other subcommand's parser (OCI, flist, node, ...). Building
/// those cost about a tenth of a plain VM's whole life in CPU time (benches/README.md,
/// "VM creation rate"), paid before zvm hands the VM to zvm-vmm.
#[derive(Debug, Parser)]
#[command(name = "zvm", version, about, long_about = None)]
struct RunCli {
    /// Log level for zvm's own messages (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "info", env = "ZVM_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: RunCommand,
}

#[derive(Debug, Subcommand)]
enum RunCommand {
    /// Boot a kernel in a micro-VM (see `zvm run --help`).
    Run(Box<run::RunArgs>),
}

/// Parses `args` (the program name first) as [`RunCli`] when they are a `zvm run` command
/// line [`Cli`] would take the same way: the first argument `run`, and no environment
/// variable that only [`Cli`] reads (`ZVM_JAIL_IDS`, which it checks whatever the
/// command). None otherwise, and on any error, help or version request, so that [`Cli`]
/// answers those with its own words.
fn parse_run_only<I, T>(args: I, jail_ids_env: bool) -> Option<RunCli>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    if jail_ids_env || args.get(1).map(|a| a.as_os_str()) != Some("run".as_ref()) {
        return None;
    }
    RunCli::try_parse_from(args).ok()
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    let jail_ids_env = std::env::var_os(jail::JailConfig::IDS_ENV).is_some();
    if let Some(cli) = parse_run_only(std::env::args_os(), jail_ids_env) {
        let logging = api::logger::Logging::init(&cli.log_level);
        let RunCommand::Run(args) = cli.command;
        return run::run(*args, process_start, &logging);
    }
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
    if let Some(Command::Oci(args)) = &cli.command {
        if args.is_internal() {
            // The sandbox and the exec relay: their stderr is the container's; they log to
            // its sandbox.log themselves.
            return oci_runtime::cli::run(
                args.clone(),
                "zvm oci",
                oci_runtime::cli::self_launcher(&["oci", "__sandbox"]),
            );
        }
    }
    let logging = api::logger::Logging::init(&cli.log_level);
    let Some(command) = cli.command else {
        if cli.api_sock.is_none() && cli.config_file.is_none() {
            eprintln!(
                "zvm: give a command (see zvm --help), or --api-sock PATH / --config-file FILE"
            );
            return ExitCode::from(2);
        }
        let job = handover::ApiJob {
            api_sock: cli.api_sock,
            config_file: cli.config_file,
            id: cli.id,
            seccomp: cli.seccomp_level == "on",
        };
        let jail = cli.jail_root.as_deref().map(|dir| api::ApiJail {
            dir,
            ids: cli.jail_ids,
            memory_mib: cli.jail_memory_mib,
            cpus: cli.jail_cpus,
        });
        return api::run(job, jail, logging, process_start);
    };
    match command {
        Command::Run(args) => run::run(*args, process_start, &logging),
        Command::Setup(args) => setup::run(&args),
        Command::Doctor => {
            print!("{}", vmm::host::HostReport::probe().render());
            ExitCode::SUCCESS
        }
        Command::Kernel { command } => kernel::run(command),
        Command::Flist { command } => match run_flist(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zvm: {e}");
                ExitCode::from(1)
            }
        },
        Command::Node { command } => zos_boot::cli::run(command),
        Command::Api(args) => api::client::run(args),
        Command::Oci(args) => oci_runtime::cli::run(
            args,
            "zvm oci",
            oci_runtime::cli::self_launcher(&["oci", "__sandbox"]),
        ),
        Command::Template { command } => template::run(command),
        Command::Initramfs {
            dir,
            output,
            uncompressed,
        } => match initramfs::pack_dir(
            &dir,
            &output,
            if uncompressed {
                initramfs::Packing::Plain
            } else {
                initramfs::Packing::Gzip
            },
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zvm: {e}");
                ExitCode::from(2)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(args: &[&str]) -> Option<String> {
        let cli = Cli::try_parse_from(args).ok()?;
        match cli.command? {
            Command::Run(a) => Some(format!("{} {a:?}", cli.log_level)),
            _ => None,
        }
    }

    fn fast(args: &[&str]) -> Option<String> {
        let cli = parse_run_only(args, false)?;
        let RunCommand::Run(a) = cli.command;
        Some(format!("{} {a:?}", cli.log_level))
    }

    #[test]
    fn run_only_parses_as_the_whole_command_line_does() {
        for args in [
            &["zvm", "run", "--kernel", "k.elf"][..],
            &[
                "zvm",
                "run",
                "--kernel",
                "k",
                "--cmdline",
                "console=ttyS0",
                "--cpus",
                "2",
                "--memory",
                "128M",
                "--console",
                "stdio",
                "--log-level",
                "debug",
            ],
            &["zvm", "run", "--restore", "snap", "--mem", "mem"],
        ] {
            let expected = full(args);
            assert!(expected.is_some(), "{args:?}");
            assert_eq!(fast(args), expected, "{args:?}");
        }
    }

    #[test]
    fn everything_else_goes_to_the_whole_command_line() {
        for args in [
            &["zvm", "run", "--help"][..],
            &["zvm", "run", "--no-such-flag"],
            &["zvm", "run", "--cpus", "many", "--kernel", "k"],
            &["zvm", "--log-level", "debug", "run", "--kernel", "k"],
            &["zvm", "--version"],
            &["zvm", "doctor"],
            &["zvm"],
        ] {
            assert!(fast(args).is_none(), "{args:?}");
        }
        // ZVM_JAIL_IDS is checked by the whole command line only.
        assert!(parse_run_only(["zvm", "run", "--kernel", "k"], true).is_none());
    }
}
