//! `zvm-bench`: boot latency and VMM overhead of zvm against QEMU `-M microvm`.
//!
//! `boot` boots the project's guest kernel and init under both VMMs, interleaved, and
//! times the console; `overhead` boots a 17-byte PVH "kernel" to time the VMMs' own
//! start-up; `block` and `net` measure virtio-blk and virtio-net throughput inside the
//! guest and the VMM's host CPU per MiB; `api` times `zvm --api-sock` start-up and an
//! API-driven boot against `zvm run`; `snapshot` times snapshot creation and restore and
//! the memory of clones; `all` runs them all (but `snapshot`). See benches/README.md.

mod api;
mod block;
mod boot;
mod deploy;
mod devices;
mod error;
mod measure;
mod net;
mod netns;
mod node;
mod oci;
mod overhead;
mod rate;
mod smaps;
mod snapshot;
mod snapshot_report;
mod snapshot_vm;
mod vmms;

use clap::{Args, Parser, Subcommand};
use error::{io_err, BenchError, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use vmms::Launcher;

/// Boot-latency and VMM-overhead benchmarks of zvm against QEMU -M microvm.
#[derive(Debug, Parser)]
#[command(name = "zvm-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Boot the guest kernel and init under zvm and QEMU: time to /init, to userspace,
    /// and the VMM's RSS without guest RAM.
    Boot(BootArgs),
    /// Time from process start to the first guest instruction's output (tiny PVH guest).
    Overhead(OverheadArgs),
    /// VM creation rate: tiny-guest VMs started per second through a pool of workers.
    Rate(RateArgs),
    /// Sequential and random O_DIRECT I/O on a virtio-blk disk, measured in the guest.
    Block(BlockArgs),
    /// TCP throughput both ways over virtio-net on a tap, measured in the guest.
    Net(NetArgs),
    /// Node image boot (zvm node image) to the node daemon being ready, first and later
    /// boot, beside the plain guest-init boot.
    Node(NodeArgs),
    /// Node daemon: deploy of a container flist to its output, cold and warm flist cache,
    /// beside the plain boot under QEMU and zvm.
    Deploy(DeployArgs),
    /// OCI runtime lifecycle (create + start + wait + delete of /bin/true) under zvm-runc
    /// and runc, same run.
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
struct Common {
    /// The zvm binary (default: `zvm` next to this program, else target/release/zvm).
    #[arg(long)]
    zvm: Option<PathBuf>,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Guest options of the boot benchmark.
#[derive(Debug, Args)]
struct GuestArgs {
    /// Guest kernel (default: guest-kernel/build.sh, which builds or reuses it).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest init binary (default: guest/build.sh).
    #[arg(long)]
    init: Option<PathBuf>,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
}

#[derive(Debug, Args)]
struct BootArgs {
    /// Runs per VMM.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Time limit of one boot, seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct OverheadArgs {
    /// Runs per VMM.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Time limit of one run, seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct RateArgs {
    /// Batches per VMM.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// VMs per batch.
    #[arg(long, default_value_t = 40)]
    vms: usize,
    /// VMs started at the same time.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Time limit of one VM, seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct BlockArgs {
    /// Runs per VMM.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// MiB written and read sequentially (the image is twice as large).
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
    /// Time limit of one run (boot included), seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct NetArgs {
    /// Runs per VMM.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// MiB sent each way.
    #[arg(long, default_value_t = 32)]
    size_mib: u64,
    /// Time limit of one run (boot included), seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// Runs (each: first boot, later boot, plain boot).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Time limit of one boot, seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Static zvm for the image (default: zos-boot/build.sh).
    #[arg(long)]
    static_zvm: Option<PathBuf>,
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct DeployArgs {
    /// Runs (each: cold deploy, warm deploy, plain boot under QEMU and zvm).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Time limit of one deployment or boot, seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// busybox-static for the container's root file system.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct ApiArgs {
    /// Runs that only time the API's start-up.
    #[arg(long, default_value_t = 20)]
    ready_runs: usize,
    /// Boots per mode (API-driven and `zvm run`).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Time limit of one boot, seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct SnapshotArgs {
    /// Restores timed one after the other (each in a new zvm process).
    #[arg(long, default_value_t = 10)]
    restores: usize,
    /// Clones of one snapshot running at once for the memory figure.
    #[arg(long, default_value_t = 10)]
    clones: usize,
    /// Cold-booted VMs running at once for the memory figure (0 skips them; they boot as
    /// many at a time as the host has CPUs, which takes long on PVM hosts).
    #[arg(long, default_value_t = 10)]
    cold_vms: usize,
    /// Cold boots per VMM (zvm and QEMU microvm), the peers.
    #[arg(long, default_value_t = 1)]
    boot_runs: usize,
    /// Time limit of one boot, seconds (each cold VM and each peer boot).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Guest kernel (default: guest-kernel/build.sh).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest init binary (default: guest/build.sh); zvm-vsock-tool is taken from beside it.
    #[arg(long)]
    init: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct AllArgs {
    /// Boot runs per VMM.
    #[arg(long, default_value_t = 3)]
    boot_runs: usize,
    /// Time limit of one boot, seconds.
    #[arg(long, default_value_t = 600)]
    boot_timeout: u64,
    /// Overhead runs per VMM.
    #[arg(long, default_value_t = 10)]
    overhead_runs: usize,
    /// Time limit of one overhead run, seconds.
    #[arg(long, default_value_t = 60)]
    overhead_timeout: u64,
    /// Block and network runs per VMM.
    #[arg(long, default_value_t = 1)]
    device_runs: usize,
    /// Time limit of one block or network run, seconds.
    #[arg(long, default_value_t = 600)]
    device_timeout: u64,
    /// MiB of sequential block I/O.
    #[arg(long, default_value_t = 64)]
    block_size_mib: u64,
    /// MiB of TCP each way.
    #[arg(long, default_value_t = 32)]
    net_size_mib: u64,
    /// API start-up runs.
    #[arg(long, default_value_t = 20)]
    api_ready_runs: usize,
    /// API-driven boots (and as many `zvm run` boots).
    #[arg(long, default_value_t = 1)]
    api_runs: usize,
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct OciArgs {
    /// Runs per runtime (with the VM backend each zvm-runc run boots a VM).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The zvm-runc binary (default: beside this program, else target/release/zvm-runc).
    #[arg(long)]
    zvm_runc: Option<PathBuf>,
    /// The runc binary.
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    /// zvm-runc backend: vm, or host-process (the test double: no VM, to check the harness).
    #[arg(long, default_value = "vm")]
    backend: String,
    /// busybox-static for the rootfs.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Time limit of one command or wait, seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Finds zvm-runc: the one given, else beside this program, else target/release/zvm-runc.
fn find_zvm_runc(given: Option<&Path>) -> PathBuf {
    if let Some(path) = given {
        return path.to_path_buf();
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("zvm-runc")));
    beside
        .filter(|p| p.is_file())
        .unwrap_or_else(|| boot::repo_root().join("target/release/zvm-runc"))
}

/// Finds the zvm binary: the one given, else `zvm` beside this program (same target
/// directory), else the workspace's target/release/zvm.
fn find_zvm(given: Option<&Path>) -> Result<PathBuf> {
    let hint = "; build it with `cargo build --release -p zvm` or pass --zvm".to_string();
    if let Some(path) = given {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(BenchError::Missing {
                what: "zvm binary",
                path: path.to_path_buf(),
                hint,
            })
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("zvm")));
    let in_repo = boot::repo_root().join("target/release/zvm");
    beside
        .into_iter()
        .chain([in_repo.clone()])
        .find(|p| p.is_file())
        .ok_or(BenchError::Missing {
            what: "zvm binary",
            path: in_repo,
            hint,
        })
}

fn launcher(common: &Common) -> Result<Launcher> {
    Ok(Launcher {
        zvm: find_zvm(common.zvm.as_deref())?,
        qemu: common.qemu.clone(),
        pvm: vmms::is_pvm_host(),
    })
}

fn boot_config(runs: usize, timeout: u64, guest: &GuestArgs) -> boot::BootConfig {
    boot::BootConfig {
        runs,
        cpus: guest.cpus,
        kernel: guest.kernel.clone(),
        init: guest.init.clone(),
        timeout: Duration::from_secs(timeout),
    }
}

fn device_config(runs: usize, timeout: u64, guest: &GuestArgs) -> devices::DeviceConfig {
    devices::DeviceConfig {
        runs,
        kernel: guest.kernel.clone(),
        init: guest.init.clone(),
        timeout: Duration::from_secs(timeout),
    }
}

fn write_json(path: Option<&Path>, value: &serde_json::Value) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value)?;
        std::fs::write(path, text + "\n").map_err(io_err("write", path))?;
        println!("results written to {}", path.display());
    }
    Ok(())
}

fn scratch() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("zvm-bench-")
        .tempdir()
        .map_err(io_err("create", std::env::temp_dir()))
}

/// Runs the chosen benchmark; returns how many runs missed their markers.
fn execute(cli: Cli) -> Result<usize> {
    let dir = scratch()?;
    if vmms::is_pvm_host() {
        println!("host: KVM PVM (kvm_pvm loaded): guest kernel code is emulated, boots take about a minute");
    }
    match cli.command {
        Cmd::Boot(a) => {
            let report = boot::run(
                &launcher(&a.common)?,
                &boot_config(a.runs, a.timeout, &a.guest),
                dir.path(),
            )?;
            write_json(
                a.common.json.as_deref(),
                &serde_json::json!({"boot": report.to_json()}),
            )?;
            Ok(report.failures)
        }
        Cmd::Overhead(a) => {
            let cfg = overhead::OverheadConfig {
                runs: a.runs,
                timeout: Duration::from_secs(a.timeout),
            };
            let report = overhead::run(&launcher(&a.common)?, &cfg, dir.path())?;
            write_json(
                a.common.json.as_deref(),
                &serde_json::json!({"overhead": report.to_json()}),
            )?;
            Ok(report.failures)
        }
        Cmd::Rate(a) => {
            let cfg = rate::RateConfig {
                runs: a.runs,
                vms: a.vms,
                parallel: a.parallel,
                timeout: Duration::from_secs(a.timeout),
            };
            let report = rate::run(&launcher(&a.common)?, &cfg, dir.path())?;
            write_json(
                a.common.json.as_deref(),
                &serde_json::json!({"rate": report.to_json()}),
            )?;
            Ok(report.failures())
        }
        Cmd::Block(a) => {
            let report = block::run(
                &launcher(&a.common)?,
                &device_config(a.runs, a.timeout, &a.guest),
                a.size_mib,
                dir.path(),
            )?;
            write_json(
                a.common.json.as_deref(),
                &serde_json::json!({"block": report.to_json()}),
            )?;
            Ok(report.failures)
        }
        Cmd::Net(a) => {
            let report = net::run(
                &launcher(&a.common)?,
                &device_config(a.runs, a.timeout, &a.guest),
                a.size_mib,
                dir.path(),
            )?;
            write_json(
                a.common.json.as_deref(),
                &serde_json::json!({"net": report.to_json()}),
            )?;
            Ok(report.failures)
        }
        Cmd::Oci(a) => {
            let cfg = oci::OciConfig {
                runs: a.runs,
                zvm_runc: find_zvm_runc(a.zvm_runc.as_deref()),
                runc: a.runc.clone(),
                backend: a.backend.clone(),
                timeout: Duration::from_secs(a.timeout),
                busybox: a.busybox.clone(),
            };
            let report = oci::run(&cfg, dir.path())?;
            write_json(
                a.json.as_deref(),
                &serde_json::json!({"oci": report.to_json()}),
            )?;
            Ok(report.failures)
        }
        Cmd::Node(a) => {
            let cfg = node::NodeConfig {
                runs: a.runs,
                kernel: a.guest.kernel.clone(),
                init: a.guest.init.clone(),
                static_zvm: a.static_zvm.clone(),
                timeout: Duration::from_secs(a.timeout),
            };
            let report = node::run(&launcher(&a.common)?, &cfg, dir.path())?;
            write_json(
                a.common.json.as_deref(),
                &serde_json::json!({"node": report.to_json()}),
            )?;
            Ok(report.failures)
        }
        Cmd::Deploy(a) => {
            let cfg = deploy::DeployConfig {
                runs: a.runs,
                guest: boot_config(1, a.timeout, &a.guest),
                busybox: a.busybox.clone(),
                timeout: Duration::from_secs(a.timeout),
            };
            let report = deploy::run(&launcher(&a.common)?, &cfg, dir.path())?;
            write_json(
                a.common.json.as_deref(),
                &serde_json::json!({"deploy": report.to_json()}),
            )?;
            Ok(report.failures)
        }
        Cmd::Api(a) => {
            let cfg = api::ApiConfig {
                ready_runs: a.ready_runs,
                boot: boot_config(a.runs, a.timeout, &a.guest),
            };
            let report = api::run(&launcher(&a.common)?, &cfg, dir.path())?;
            write_json(
                a.common.json.as_deref(),
                &serde_json::json!({"api": report.to_json()}),
            )?;
            Ok(report.failures)
        }
        Cmd::Snapshot(a) => {
            let cfg = snapshot::SnapshotConfig {
                restores: a.restores,
                clones: a.clones,
                cold_vms: a.cold_vms,
                boot_runs: a.boot_runs,
                kernel: a.kernel.clone(),
                init: a.init.clone(),
                timeout: Duration::from_secs(a.timeout),
            };
            let report = snapshot::run(&launcher(&a.common)?, &cfg, dir.path())?;
            write_json(
                a.common.json.as_deref(),
                &serde_json::json!({"snapshot": report.to_json()}),
            )?;
            Ok(report.failures)
        }
        Cmd::All(a) => {
            let l = launcher(&a.common)?;
            let b = boot::run(
                &l,
                &boot_config(a.boot_runs, a.boot_timeout, &a.guest),
                dir.path(),
            )?;
            println!();
            let cfg = overhead::OverheadConfig {
                runs: a.overhead_runs,
                timeout: Duration::from_secs(a.overhead_timeout),
            };
            let o = overhead::run(&l, &cfg, dir.path())?;
            println!();
            let dc = device_config(a.device_runs, a.device_timeout, &a.guest);
            let k = block::run(&l, &dc, a.block_size_mib, dir.path())?;
            println!();
            let n = net::run(&l, &dc, a.net_size_mib, dir.path())?;
            println!();
            let ac = api::ApiConfig {
                ready_runs: a.api_ready_runs,
                boot: boot_config(a.api_runs, a.boot_timeout, &a.guest),
            };
            let p = api::run(&l, &ac, dir.path())?;
            let json = serde_json::json!({"boot": b.to_json(), "overhead": o.to_json(), "block": k.to_json(), "net": n.to_json(), "api": p.to_json()});
            write_json(a.common.json.as_deref(), &json)?;
            Ok(b.failures + o.failures + k.failures + n.failures + p.failures)
        }
    }
}

fn main() -> ExitCode {
    match execute(Cli::parse()) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(n) => {
            eprintln!("zvm-bench: {n} run(s) did not reach their markers (see the warnings above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("zvm-bench: {e}");
            ExitCode::FAILURE
        }
    }
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
    }
}
