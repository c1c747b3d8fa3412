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

use oci_runtime::sandbox::template::TemplateShape;
use oci_runtime::sandbox::{VmSize, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};

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
    /// The most the cache's unpacked flist trees (the roots over virtio-fs) take, e.g.
    /// 20G; trees no VM uses are evicted, least recently used first (default:
    /// $ZVM_TREE_CACHE_SIZE, else 20 GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_tree_cache_size)]
    pub tree_cache_size: Option<u64>,
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
    /// Make templates in the background when the node starts, so that no deployment of
    /// their shapes waits for a kernel boot: those of `--prepare-shape`, else the default
    /// deployment's (1 vCPU, 256 MiB, the share flavour of a root over virtio-fs, no
    /// interface, no data disk).
    #[arg(long)]
    pub prepare_template: bool,
    /// A deployment shape `--prepare-template` makes the template of:
    /// `[cpus=N][,memory=MIB][,nics=N][,disks=N][,share=on|off]` (defaults 1, 256, 0, 0,
    /// on: the share flavour serves a root over virtio-fs or volumes; off only for an
    /// ext4 root without volumes). nics counts the deployment's interfaces, disks its
    /// data disks. Repeatable; made in order.
    #[arg(long = "prepare-shape", value_name = "SHAPE", value_parser = parse_shape)]
    pub prepare_shapes: Vec<TemplateShape>,
}

/// The template shape of a node deployment with no options: 1 vCPU, 256 MiB, its root over
/// virtio-fs (the share flavour), no interface, no data disk.
pub fn default_deployment_shape() -> TemplateShape {
    TemplateShape {
        share: true,
        ..TemplateShape::plain(VmSize {
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
        })
    }
}

/// Parses `--tree-cache-size` (at least 1 MiB).
fn parse_tree_cache_size(text: &str) -> Result<u64, String> {
    crate::flist_vm::tree_cache::parse_limit(text).map_err(|e| e.to_string())
}

/// Parses a `--prepare-shape` (see [`ServeArgs::prepare_shapes`]).
pub fn parse_shape(spec: &str) -> Result<TemplateShape, String> {
    let mut shape = default_deployment_shape();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not key=value"))?;
        let number = |max: u64| -> Result<u64, String> {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{key} must be a number up to {max}, not '{value}'"))
        };
        match key {
            "cpus" => shape.size.vcpus = number(u64::from(u8::MAX))?.max(1) as u8,
            "memory" => shape.size.memory_mib = number(1 << 20)?,
            "nics" => shape.nics = number(TemplateShape::NICS_MAX as u64)? as usize,
            "disks" => shape.data_disks = number(TemplateShape::DATA_DISKS_MAX as u64)? as usize,
            "share" => {
                shape.share = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("share must be on or off, not '{value}'")),
                }
            }
            other => {
                return Err(format!(
                    "unknown key '{other}' (use cpus, memory, nics, disks, share)"
                ))
            }
        }
    }
    Ok(shape)
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
    // The deployments' `zvm run` processes inherit the template and tree cache settings;
    // set before any thread starts.
    if let Some(size) = args.tree_cache_size {
        std::env::set_var(crate::flist_vm::tree_cache::LIMIT_ENV, size.to_string());
    }
    if args.templates == "off" {
        std::env::set_var(oci_runtime::sandbox::template::TEMPLATES_ENV, "off");
    } else if std::env::var_os(oci_runtime::sandbox::template::TEMPLATE_DIR_ENV).is_none() {
        std::env::set_var(
            oci_runtime::sandbox::template::TEMPLATE_DIR_ENV,
            state_dir.join("templates"),
        );
    }
    if args.prepare_template && args.templates == "on" {
        let shapes = if args.prepare_shapes.is_empty() {
            vec![default_deployment_shape()]
        } else {
            args.prepare_shapes.clone()
        };
        prepare_templates(args.kernel.clone(), shapes);
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

/// Makes the templates of `shapes` one after the other on a thread of its own; says how
/// each went.
fn prepare_templates(kernel: Option<PathBuf>, shapes: Vec<TemplateShape>) {
    use oci_runtime::sandbox::template::{prepare_template_shape, TemplateSettings};
    use oci_runtime::sandbox::GuestArtifacts;
    let spawned = std::thread::Builder::new()
        .name("zvm_template".into())
        .spawn(move || {
            let artifacts = match kernel {
                Some(kernel) => {
                    GuestArtifacts::locate_agent().map(|agent| GuestArtifacts { kernel, agent })
                }
                None => GuestArtifacts::locate(),
            };
            let artifacts = match artifacts {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("zvm: no template prepared: {e}");
                    return;
                }
            };
            let cache = TemplateSettings::from_env().cache();
            for shape in shapes {
                match prepare_template_shape(&cache, &artifacts, &shape) {
                    Ok((id, Some(took))) => {
                        eprintln!("zvm: template {id} made in {:.1} s", took.as_secs_f64())
                    }
                    Ok((id, None)) => eprintln!("zvm: template {id} is ready"),
                    Err(e) => eprintln!("zvm: no template prepared for {shape:?}: {e}"),
                }
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

    #[derive(Debug, clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn prepare_shapes_parse_into_template_shapes() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            Serve::try_parse_from(
                ["serve", "--state-dir", "/s", "--api-sock", "/s/api.sock"]
                    .iter()
                    .chain(extra),
            )
            .map(|s| s.args.prepare_shapes)
        };
        assert!(parse(&[]).unwrap().is_empty());
        let shapes = parse(&[
            "--prepare-shape",
            "nics=1,disks=2",
            "--prepare-shape",
            "cpus=2,memory=512,share=off",
        ])
        .unwrap();
        let first = TemplateShape {
            nics: 1,
            data_disks: 2,
            ..default_deployment_shape()
        };
        assert_eq!(shapes[0], first);
        assert_eq!(
            shapes[1],
            TemplateShape::plain(VmSize {
                vcpus: 2,
                memory_mib: 512
            })
        );
        assert_eq!(parse_shape("").unwrap(), default_deployment_shape());
        for bad in [
            "nics=9",
            "disks=9",
            "nics=-1",
            "memory=lots",
            "share=maybe",
            "gpus=1",
            "nics",
        ] {
            assert!(parse_shape(bad).is_err(), "{bad}");
            assert!(parse(&["--prepare-shape", bad]).is_err(), "{bad}");
        }
    }

    /// The key the node's default shape asks for is the one a default deployment's VM (its
    /// root over virtio-fs: the container's share) looks up; with `nics=1,disks=1`, the one
    /// of a deployment with an interface and a data disk.
    #[test]
    fn prepared_shapes_have_the_keys_deployments_look_up() {
        use oci_runtime::sandbox::template::{shape_key, ContainerVm, TemplateCache};
        use oci_runtime::sandbox::GuestArtifacts;
        let dir = tempfile::tempdir().unwrap();
        let (kernel, agent) = (dir.path().join("vmlinux"), dir.path().join("agent"));
        std::fs::write(&kernel, b"kernel").unwrap();
        std::fs::write(&agent, b"agent").unwrap();
        let artifacts = GuestArtifacts { kernel, agent };
        let cache = TemplateCache::new(dir.path().join("templates"), 4);
        let files = oci_runtime::sandbox::VmFiles {
            kernel: &artifacts.kernel,
            agent_image: Path::new("/v/agent.ext4"),
            rootfs_image: Path::new("/v/rootfs.ext4"),
            console_log: Path::new("/v/console.log"),
            vsock: Path::new("/v/vsock.sock"),
        };
        let size = default_deployment_shape().size;
        let mut r = oci_runtime::sandbox::vm_resources(size, files, false);
        r.fs.push(oci_runtime::sandbox::share::fs_device(Path::new(
            "/v/fs.sock",
        )));
        let key_of = |r: &vmm::VmResources| {
            ContainerVm::from_resources(r, &artifacts)
                .unwrap()
                .key(&cache)
                .unwrap()
        };
        let prepared = shape_key(&cache, &artifacts, &default_deployment_shape()).unwrap();
        assert_eq!(prepared, key_of(&r));
        r.net.push(vmm::resources::NetConfig {
            iface_id: "eth0".into(),
            host_dev_name: "zvmdep0".into(),
            guest_mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            queue_pairs: 1,
        });
        r.drives.push(vmm::resources::DriveConfig {
            drive_id: "data".into(),
            path_on_host: "/v/disks/data.img".into(),
            is_root_device: false,
            is_read_only: false,
            rate_limiter: None,
            io_engine: Default::default(),
        });
        let args = format!(
            "{} ip=10.20.0.5::10.20.0.1:255.255.255.0::eth0:off zvm.mount.data=/data",
            r.boot_args()
        );
        r.boot_source.boot_args = Some(args);
        let shape = parse_shape("nics=1,disks=1").unwrap();
        let prepared = shape_key(&cache, &artifacts, &shape).unwrap();
        assert_eq!(prepared, key_of(&r));
    }

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
