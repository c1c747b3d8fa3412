//! `zvm-bench`: boot latency and VMM overhead of zvm against QEMU `-M microvm`.
//!
//! `boot` boots the project's guest kernel and init under both VMMs, interleaved, and
//! times the console; `overhead` boots a 17-byte PVH "kernel" to time the VMMs' own
//! start-up; `block` and `net` measure virtio-blk and virtio-net throughput inside the
//! guest and the VMM's host CPU per MiB; `api` times `zvm --api-sock` start-up and an
//! API-driven boot against `zvm run`; `snapshot` times snapshot creation and restore and
//! the memory of clones; `oci` times the container lifecycle under zvm-runc (VM templates
//! on and off) and runc, and checkpoint + restore; `node` and `deploy` time the node image
//! and deployments (templates on and off); `all` runs `boot`, `overhead`, `block`, `net`
//! and `api`. See benches/README.md.

mod api;
mod block;
mod boot;
mod cli;
mod deploy;
mod deploy_node;
mod devices;
mod error;
mod footprint;
mod footprint_api;
mod guest_irqs;
mod jail_cost;
mod kvm_breakdown;
mod kvm_stats;
mod measure;
mod net;
mod net_mq;
mod netns;
mod node;
mod oci;
mod oci_checkpoint;
mod oci_cmd;
mod oci_fs;
mod oci_report;
mod overhead;
mod rate;
mod smaps;
mod snapshot;
mod snapshot_report;
mod snapshot_vm;
mod templates;
mod vmms;

use clap::Parser;
use cli::{Cli, Cmd, Common, GuestArgs};
use error::{io_err, BenchError, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use vmms::Launcher;

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
        Cmd::Footprint(a) => {
            let report = footprint::run(
                &launcher(&a.common)?,
                a.runs,
                Duration::from_secs(a.timeout),
                dir.path(),
            )?;
            write_json(
                a.common.json.as_deref(),
                &serde_json::json!({"footprint": report.to_json()}),
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
        Cmd::Net(a) if a.queue_pairs.is_some() => {
            let mq = net_mq::MqConfig {
                pairs: a.queue_pairs.clone().unwrap_or_default(),
                cpus: a.guest.cpus,
                streams: a.streams,
            };
            let report = net_mq::run(
                &launcher(&a.common)?,
                &device_config(a.runs, a.timeout, &a.guest),
                &mq,
                a.size_mib,
                dir.path(),
            )?;
            write_json(
                a.common.json.as_deref(),
                &serde_json::json!({"net_mq": report.to_json()}),
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
                zvm: if a.backend == "vm" {
                    Some(find_zvm(a.zvm.as_deref())?)
                } else {
                    None
                },
                runc: a.runc.clone(),
                backend: a.backend.clone(),
                timeout: Duration::from_secs(a.timeout),
                busybox: a.busybox.clone(),
                kernel: a.kernel.clone(),
                agent: a.agent.clone(),
                checkpoint_runs: a.checkpoint_runs,
            };
            let report = oci::run(&cfg, dir.path())?;
            write_json(
                a.json.as_deref(),
                &serde_json::json!({"oci": report.to_json()}),
            )?;
            Ok(report.failures)
        }
        Cmd::OciFs(a) => {
            let cfg = oci_fs::OciFsConfig {
                runs: a.runs,
                size_mib: a.size_mib,
                io_mib: a.io_mib,
                zvm_runc: find_zvm_runc(a.zvm_runc.as_deref()),
                busybox: a.busybox.clone(),
                kernel: a.kernel.clone(),
                agent: a.agent.clone(),
                timeout: Duration::from_secs(a.timeout),
            };
            let report = oci_fs::run(&cfg, dir.path())?;
            write_json(
                a.json.as_deref(),
                &serde_json::json!({"oci_fs": report.to_json()}),
            )?;
            Ok(report.errors.len())
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
                agent: a.agent.clone(),
                busybox: a.busybox.clone(),
                timeout: Duration::from_secs(a.timeout),
                nic_disk: a.nic_disk,
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
