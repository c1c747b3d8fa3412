//! `zvm node ...`: the node's commands (clap), embeddable in zvm's CLI.

use crate::bytesize::ByteSize;
use crate::node::network::NetworkDef;
use crate::node::restart::RestartLimits;
use crate::node::{self, Listeners, NodeConfig, ProcessRunner};
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Node commands.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run the node daemon: deployments of micro-VMs from flists, over an HTTP JSON API.
    Serve(ServeArgs),
    /// Build the node boot image: DIR/vmlinux and DIR/initramfs.cpio.gz (see zos-boot/README.md).
    Image(crate::image::cli::ImageArgs),
    /// (In the node image) format the cache disk on first boot, mount it, load or create
    /// the node identity and print `zos: node id <hex>`.
    Prepare(crate::image::cli::PrepareArgs),
    /// (In the node image) run `zvm node serve` with the kernel command line's zos.api.
    Launch(crate::image::cli::LaunchArgs),
    /// Print the daemon's /health and /capacity, then `zos: node ready` (powers the node
    /// off in zos.runmode=test); `--check` only checks /health.
    Report(crate::image::cli::ReportArgs),
}

/// Flags of `zvm node serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// State directory: deployments, VM files and disks, flist cache.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Serve the API on this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    /// Also serve the API on TCP (loopback unless --allow-remote).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Bearer token TCP clients must send (required with --allow-remote).
    #[arg(long, env = "ZVM_NODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Allow a --listen address other than loopback.
    #[arg(long)]
    pub allow_remote: bool,
    /// A network the node serves: NAME=A.B.C.D/PREFIX (a bridge; guests get addresses
    /// from it, the first address is their gateway). Repeatable.
    #[arg(long = "network", value_name = "NAME=CIDR", value_parser = parse_network)]
    pub networks: Vec<NetworkDef>,
    /// The guest kernel for container flists (default: $ZVM_KERNEL, or the project's build).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Flist cache directory (default: <state-dir>/cache).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Memory kept for the node itself, e.g. 1G (default: a tenth of the host, >= 256M).
    #[arg(long, value_parser = parse_size)]
    pub reserved_memory: Option<ByteSize>,
    /// Seconds a VM gets between SIGTERM and SIGKILL when its deployment is deleted; its
    /// guest is asked to power off (the ACPI power button) and gets all but one of them.
    #[arg(long, default_value_t = 10)]
    pub stop_grace: u64,
    /// A file holding this node's id (the node image's `node.pub`), shown by `GET /health`.
    #[arg(long, value_name = "PATH")]
    pub node_id_file: Option<PathBuf>,
    /// Container deployments start from VM templates kept in <state-dir>/templates (unless
    /// $ZVM_TEMPLATE_DIR says otherwise); `off` boots every deployment's kernel.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub templates: String,
    /// Make the template of the default container VM (1 vCPU, 256 MiB) in the background
    /// when the node starts, so that no deployment of that size waits for a kernel boot.
    #[arg(long)]
    pub prepare_template: bool,
}

/// The node id in `path`: one word of hex digits.
fn read_node_id(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("node id file {}: {e}", path.display()))?;
    let id = text.trim();
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "node id file {}: not a hex node id",
            path.display()
        ));
    }
    Ok(id.to_string())
}

fn parse_network(s: &str) -> Result<NetworkDef, String> {
    NetworkDef::parse(s).map_err(|e| e.to_string())
}

fn parse_size(s: &str) -> Result<ByteSize, String> {
    ByteSize::parse(s).map_err(|e| e.to_string())
}

/// Runs a node command.
pub fn run(cmd: NodeCommand) -> ExitCode {
    match cmd {
        NodeCommand::Serve(args) => serve(args),
        NodeCommand::Image(args) => crate::image::cli::image(args),
        NodeCommand::Prepare(args) => crate::image::cli::prepare(args),
        NodeCommand::Launch(args) => crate::image::cli::launch(args),
        NodeCommand::Report(args) => crate::image::cli::report(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let zvm = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("zvm: cannot find my own executable: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&args.state_dir) {
        eprintln!("zvm: state directory {}: {e}", args.state_dir.display());
        return ExitCode::from(2);
    }
    let state_dir = args
        .state_dir
        .canonicalize()
        .unwrap_or(args.state_dir.clone());
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("cache"));
    // The deployments' `zvm run` processes inherit the template settings; set before any
    // thread starts.
    if args.templates == "off" {
        std::env::set_var(oci_runtime::sandbox::template::TEMPLATES_ENV, "off");
    } else if std::env::var_os(oci_runtime::sandbox::template::TEMPLATE_DIR_ENV).is_none() {
        std::env::set_var(
            oci_runtime::sandbox::template::TEMPLATE_DIR_ENV,
            state_dir.join("templates"),
        );
    }
    if args.prepare_template && args.templates == "on" {
        prepare_default_template(args.kernel.clone());
    }
    let runner = ProcessRunner {
        zvm,
        cache_dir,
        kernel: args.kernel.clone(),
        networks: args.networks.clone(),
        shutdown_timeout: args.stop_grace.saturating_sub(1),
    };
    let node_id = match args.node_id_file.as_deref().map(read_node_id).transpose() {
        Ok(id) => id,
        Err(e) => {
            eprintln!("zvm: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = NodeConfig {
        node_id,
        state_dir,
        runner: Arc::new(runner),
        networks: args.networks.clone(),
        memory_total: None,
        memory_reserved: args.reserved_memory.map(|s| s.0),
        restart: RestartLimits::default(),
        stop_grace: Duration::from_secs(args.stop_grace),
    };
    let listeners = Listeners {
        api_sock: args.api_sock,
        tcp: args.listen,
        token: args.token,
        allow_remote: args.allow_remote,
    };
    if let Err(e) = listeners.check() {
        eprintln!("zvm: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zvm: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(node::serve(cfg, listeners)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zvm: {e}");
            ExitCode::from(1)
        }
    }
}

/// Makes the default container VM's template on a thread of its own; says how it went.
fn prepare_default_template(kernel: Option<PathBuf>) {
    use oci_runtime::sandbox::template::{prepare_template_flavour, TemplateSettings};
    use oci_runtime::sandbox::{GuestArtifacts, VmSize, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};
    let spawned = std::thread::Builder::new()
        .name("zvm_template".into())
        .spawn(move || {
            let artifacts = match kernel {
                Some(kernel) => {
                    GuestArtifacts::locate_agent().map(|agent| GuestArtifacts { kernel, agent })
                }
                None => GuestArtifacts::locate(),
            };
            let size = VmSize {
                vcpus: DEFAULT_VCPUS,
                memory_mib: DEFAULT_MEMORY_MIB,
            };
            let made = artifacts.map_err(|e| e.to_string()).and_then(|a| {
                // The flavour with a share: a container's root comes over virtio-fs
                // unless its deployment asks for ext4.
                prepare_template_flavour(&TemplateSettings::from_env().cache(), &a, size, true)
                    .map_err(|e| e.to_string())
            });
            match made {
                Ok((id, Some(took))) => {
                    eprintln!("zvm: template {id} made in {:.1} s", took.as_secs_f64())
                }
                Ok((id, None)) => eprintln!("zvm: template {id} is ready"),
                Err(e) => eprintln!("zvm: no template prepared: {e}"),
            }
        });
    if let Err(e) = spawned {
        eprintln!("zvm: cannot prepare a template: {e}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn node_id_files_hold_one_hex_word() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.pub");
        std::fs::write(&file, "ab12cd\n").unwrap();
        assert_eq!(read_node_id(&file).unwrap(), "ab12cd");
        for bad in ["", "not hex\n", "ab 12\n", &"a".repeat(129)] {
            std::fs::write(&file, bad).unwrap();
            let e = read_node_id(&file).unwrap_err();
            assert!(e.contains("not a hex node id"), "{bad:?}: {e}");
        }
        let e = read_node_id(&dir.path().join("missing")).unwrap_err();
        assert!(e.contains("node id file") && e.contains("missing"), "{e}");
    }
}
