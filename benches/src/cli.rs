//! `zvm-bench`'s command line: the benchmarks and their options.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Boot-latency and VMM-overhead benchmarks of zvm against QEMU -M microvm.
#[derive(Debug, Parser)]
#[command(name = "zvm-bench", version, about)]
pub struct Cli {
    #[command(subcommand)]
    /// The benchmark to run.
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Boot the guest kernel and init under zvm and QEMU: time to /init, to userspace,
    /// and the VMM's RSS without guest RAM.
    Boot(BootArgs),
    /// Time from process start to the first guest instruction's output (tiny PVH guest).
    Overhead(OverheadArgs),
    /// VM creation rate: tiny-guest VMs started per second through a pool of workers.
    Rate(RateArgs),
    /// What the VMM process keeps resident without guest RAM while a tiny guest idles.
    Footprint(OverheadArgs),
    /// Sequential and random O_DIRECT I/O on a virtio-blk disk, measured in the guest.
    Block(BlockArgs),
    /// TCP throughput both ways over virtio-net on a tap, measured in the guest.
    Net(NetArgs),
    /// Node image boot (zvm node image) to the node daemon being ready, first and later
    /// boot, beside the plain guest-init boot.
    Node(NodeArgs),
    /// Node daemon: deploy of a container flist to its output, cold and warm flist cache,
    /// with VM templates and without, beside the plain boot under QEMU and zvm.
    Deploy(DeployArgs),
    /// Containers' files over virtio-fs against virtio-blk under zvm-runc: create with the
    /// root over virtio-fs against the ext4 copy, and sequential I/O in the guest.
    OciFs(OciFsArgs),
    /// OCI runtime lifecycle (create + start + wait + delete of /bin/true) under zvm-runc
    /// with VM templates, zvm-runc without, and runc, same run; then checkpoint + restore of
    /// a running container under zvm-runc.
    Oci(OciArgs),
    /// `zvm --api-sock`: spawn to the first API answer (and its CPU time), and
    /// InstanceStart to the guest marker beside `zvm run`'s spawn to the marker.
    Api(ApiArgs),
    /// Snapshots: restore -> vCPUs running and -> the guest answering over vsock, full and
    /// diff snapshot creation, the memory of clones against cold-booted VMs, and the cold
    /// boot under zvm and QEMU as peers.
    Snapshot(SnapshotArgs),
    /// Run `boot`, `overhead`, `block`, `net` and `api`.
    All(AllArgs),
}

/// Which VMM binaries to run, and where to put results.
#[derive(Debug, Args)]
pub struct Common {
    /// The zvm binary (default: `zvm` next to this program, else target/release/zvm).
    #[arg(long)]
    pub zvm: Option<PathBuf>,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Guest options of the boot benchmark.
#[derive(Debug, Args)]
pub struct GuestArgs {
    /// Guest kernel (default: guest-kernel/build.sh, which builds or reuses it).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest init binary (default: guest/build.sh).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
}

/// `boot` options.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// Runs per VMM.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Time limit of one boot, seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub common: Common,
}

/// `overhead` options.
#[derive(Debug, Args)]
pub struct OverheadArgs {
    /// Runs per VMM.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Time limit of one run, seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    #[command(flatten)]
    pub common: Common,
}

/// `rate` options.
#[derive(Debug, Args)]
pub struct RateArgs {
    /// Batches per VMM.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// VMs per batch.
    #[arg(long, default_value_t = 40)]
    pub vms: usize,
    /// VMs started at the same time.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Time limit of one VM, seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    #[command(flatten)]
    pub common: Common,
}

/// `block` options.
#[derive(Debug, Args)]
pub struct BlockArgs {
    /// Runs per VMM.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// MiB written and read sequentially (the image is twice as large).
    #[arg(long, default_value_t = 64)]
    pub size_mib: u64,
    /// Time limit of one run (boot included), seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub common: Common,
}

/// `net` options.
#[derive(Debug, Args)]
pub struct NetArgs {
    /// Runs per VMM.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// MiB sent each way.
    #[arg(long, default_value_t = 32)]
    pub size_mib: u64,
    /// Time limit of one run (boot included), seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Compare these numbers of virtio-net queue pairs (e.g. `1,2`), each VMM booted once
    /// per entry in every run, with `--cpus` vCPUs and `--streams` TCP streams each way.
    #[arg(long, value_name = "LIST", value_parser = crate::net_mq::parse_pairs)]
    pub queue_pairs: Option<std::vec::Vec<u16>>,
    /// TCP streams each way at once, with `--queue-pairs` (stream k on vCPU k mod cpus).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub common: Common,
}

/// `node` options.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Runs (each: first boot, later boot, plain boot).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Time limit of one boot, seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Static zvm for the image (default: zos-boot/build.sh).
    #[arg(long)]
    pub static_zvm: Option<PathBuf>,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub common: Common,
}

/// `deploy` options.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Runs (each: cold and warm deploy with templates and without, plain boot under QEMU
    /// and zvm).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Static guest agent of the container VMs (default: guest/build.sh's zvm-oci-agent).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Time limit of one deployment or boot, seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// busybox-static for the container's root file system.
    #[arg(long, default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    /// Give each deployment a network interface (on a node network in a network namespace
    /// of the daemon's own) and a 64 MiB data disk: the template shape with both.
    #[arg(long)]
    pub nic_disk: bool,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub common: Common,
}

/// `api` options.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Runs that only time the API's start-up.
    #[arg(long, default_value_t = 20)]
    pub ready_runs: usize,
    /// Boots per mode (API-driven and `zvm run`).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Time limit of one boot, seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub common: Common,
}

/// `snapshot` options.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Restores timed one after the other (each in a new zvm process).
    #[arg(long, default_value_t = 10)]
    pub restores: usize,
    /// Clones of one snapshot running at once for the memory figure.
    #[arg(long, default_value_t = 10)]
    pub clones: usize,
    /// Cold-booted VMs running at once for the memory figure (0 skips them; they boot as
    /// many at a time as the host has CPUs, which takes long on PVM hosts).
    #[arg(long, default_value_t = 10)]
    pub cold_vms: usize,
    /// Cold boots per VMM (zvm and QEMU microvm), the peers.
    #[arg(long, default_value_t = 1)]
    pub boot_runs: usize,
    /// Time limit of one boot, seconds (each cold VM and each peer boot).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Guest kernel (default: guest-kernel/build.sh).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest init binary (default: guest/build.sh); zvm-vsock-tool is taken from beside it.
    #[arg(long)]
    pub init: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

/// `all` options.
#[derive(Debug, Args)]
pub struct AllArgs {
    /// Boot runs per VMM.
    #[arg(long, default_value_t = 3)]
    pub boot_runs: usize,
    /// Time limit of one boot, seconds.
    #[arg(long, default_value_t = 600)]
    pub boot_timeout: u64,
    /// Overhead runs per VMM.
    #[arg(long, default_value_t = 10)]
    pub overhead_runs: usize,
    /// Time limit of one overhead run, seconds.
    #[arg(long, default_value_t = 60)]
    pub overhead_timeout: u64,
    /// Block and network runs per VMM.
    #[arg(long, default_value_t = 1)]
    pub device_runs: usize,
    /// Time limit of one block or network run, seconds.
    #[arg(long, default_value_t = 600)]
    pub device_timeout: u64,
    /// MiB of sequential block I/O.
    #[arg(long, default_value_t = 64)]
    pub block_size_mib: u64,
    /// MiB of TCP each way.
    #[arg(long, default_value_t = 32)]
    pub net_size_mib: u64,
    /// API start-up runs.
    #[arg(long, default_value_t = 20)]
    pub api_ready_runs: usize,
    /// API-driven boots (and as many `zvm run` boots).
    #[arg(long, default_value_t = 1)]
    pub api_runs: usize,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub common: Common,
}

/// `oci` options.
#[derive(Debug, Args)]
pub struct OciArgs {
    /// Runs per runtime (with the VM backend each zvm-runc run without templates boots a VM).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Checkpoint + restore runs of a running container under zvm-runc with templates
    /// (0: none).
    #[arg(long, default_value_t = 3)]
    pub checkpoint_runs: usize,
    /// The zvm-runc binary (default: beside this program, else target/release/zvm-runc).
    #[arg(long)]
    pub zvm_runc: Option<PathBuf>,
    /// The zvm binary, for `zvm template prepare` (default: beside this program, else
    /// target/release/zvm).
    #[arg(long)]
    pub zvm: Option<PathBuf>,
    /// The runc binary.
    #[arg(long, default_value = "runc")]
    pub runc: PathBuf,
    /// zvm-runc backend: vm, or host-process (a test double that runs the container on the
    /// host without isolation, to check the harness; only in a zvm-runc built with
    /// `cargo build -p oci-runtime --features test-backend`).
    #[arg(long, default_value = "vm")]
    pub backend: String,
    /// busybox-static for the rootfs.
    #[arg(long, default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    /// Guest kernel of the container VMs (default: guest-kernel/build.sh).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Static guest agent (default: guest/build.sh's zvm-oci-agent).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Time limit of one command or wait, seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Options of the virtio-fs container benchmark.
#[derive(Debug, Args)]
pub struct OciFsArgs {
    /// Counted creates per root kind (after one that makes its template).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// MiB of files in the container's rootfs for the create test.
    #[arg(long, default_value_t = 200)]
    pub size_mib: u64,
    /// MiB written and read in the guest for the throughput test (64 MiB took over 5
    /// minutes per device in this project's emulated PVM guests).
    #[arg(long, default_value_t = 8)]
    pub io_mib: u64,
    /// The zvm-runc binary (default: beside this program, else target/release/zvm-runc).
    #[arg(long)]
    pub zvm_runc: Option<PathBuf>,
    /// busybox-static for the rootfs.
    #[arg(long, default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    /// Guest kernel of the container VMs (default: guest-kernel/build.sh).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Static guest agent (default: guest/build.sh's zvm-oci-agent).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Time limit of one command, seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_has_the_documented_defaults() {
        Cli::command().debug_assert();
        let cli = Cli::parse_from(["zvm-bench", "boot"]);
        let Cmd::Boot(a) = cli.command else {
            panic!("boot expected")
        };
        assert_eq!((a.runs, a.timeout, a.guest.cpus), (3, 600, 1));
        let cli = Cli::parse_from(["zvm-bench", "overhead"]);
        let Cmd::Overhead(a) = cli.command else {
            panic!("overhead expected")
        };
        assert_eq!(a.runs, 10);
        let cli = Cli::parse_from(["zvm-bench", "block"]);
        let Cmd::Block(a) = cli.command else {
            panic!("block expected")
        };
        assert_eq!((a.runs, a.size_mib), (1, 64));
        let cli = Cli::parse_from(["zvm-bench", "net"]);
        let Cmd::Net(a) = cli.command else {
            panic!("net expected")
        };
        assert_eq!((a.runs, a.size_mib), (1, 32));
        let cli = Cli::parse_from(["zvm-bench", "api"]);
        let Cmd::Api(a) = cli.command else {
            panic!("api expected")
        };
        assert_eq!((a.ready_runs, a.runs, a.timeout), (20, 1, 600));
        let cli = Cli::parse_from(["zvm-bench", "snapshot", "--cold-vms", "2"]);
        let Cmd::Snapshot(a) = cli.command else {
            panic!("snapshot expected")
        };
        assert_eq!(
            (a.restores, a.clones, a.cold_vms, a.boot_runs, a.timeout),
            (10, 10, 2, 1, 600)
        );
        let cli = Cli::parse_from(["zvm-bench", "oci", "--runs", "1", "--checkpoint-runs", "0"]);
        let Cmd::Oci(a) = cli.command else {
            panic!("oci expected")
        };
        assert_eq!((a.runs, a.checkpoint_runs, a.timeout), (1, 0, 600));
        assert_eq!(a.backend, "vm");
        let cli = Cli::parse_from(["zvm-bench", "oci"]);
        let Cmd::Oci(a) = cli.command else {
            panic!("oci expected")
        };
        assert_eq!((a.runs, a.checkpoint_runs), (20, 3));
        let cli = Cli::parse_from(["zvm-bench", "deploy"]);
        let Cmd::Deploy(a) = cli.command else {
            panic!("deploy expected")
        };
        assert_eq!((a.runs, a.timeout, a.agent), (1, 900, None));
    }
}
