//! Node image boot: process start to the node daemon being ready (`zos: node ready` on
//! the console, printed by the image's reporter once `GET /health` answered), on a blank
//! disk (first boot: mkfs.ext4 and a new identity) and on the same disk again (later
//! boot), beside the plain guest-init boot to userspace under the same zvm in the same
//! run, the peer the ratios are taken against.

use crate::boot::{
    initramfs_entries, kernel_and_init, path_from_script, repo_root, CMDLINE, INIT_MARKER,
    USERSPACE_MARKER,
};
use crate::error::{io_err, BenchError, Result};
use crate::measure::{fmt_opt, median, ms, ratio, run_watched, Ending, Watch};
use crate::vmms::{zvm_args, GuestSpec, Launcher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// zvm-init has read its services.
pub const SERVICES_MARKER: &str = "zvm-init: 3 services from /etc/zinit";
/// The storage service printed the node id (disk ready, identity loaded).
pub const IDENTITY_MARKER: &str = "zos: node id ";
/// The daemon answered /health and /capacity: the measured end point.
pub const READY_MARKER: &str = "zos: node ready";
/// The node powers off after its report in zos.runmode=test (not timed; lets the disk
/// be unmounted cleanly before the next boot).
pub const OFF_MARKER: &str = "zvm-init: all services stopped";
/// Guest memory of both kinds of boot, MiB.
pub const NODE_MEM_MIB: u64 = 512;
/// The blank cache disk, MiB (sparse).
pub const DISK_MIB: u64 = 256;

/// Settings of the node benchmark.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Runs (each: first boot, later boot, plain boot).
    pub runs: usize,
    /// Guest kernel (default: guest-kernel/build.sh).
    pub kernel: Option<PathBuf>,
    /// Guest init for the plain boot (default: guest/build.sh).
    pub init: Option<PathBuf>,
    /// Static zvm for the image (default: zos-boot/build.sh).
    pub static_zvm: Option<PathBuf>,
    /// Time limit of one boot.
    pub timeout: Duration,
}

/// One kind of boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Node image on a blank disk.
    First,
    /// Node image on the disk of the first boot.
    Later,
    /// The plain guest init (peer).
    Plain,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::First => "node-first",
            Kind::Later => "node-later",
            Kind::Plain => "plain",
        }
    }
}

/// One measured boot: spawn to /init, to the services read (node only), to the node id
/// (node only), to ready (node: `zos: node ready`; plain: the userspace marker).
#[derive(Debug, Clone)]
pub struct NodeRun {
    /// Which boot.
    pub kind: Kind,
    /// 1-based run number.
    pub run: usize,
    /// Marker times.
    pub init: Option<Duration>,
    /// Services read.
    pub services: Option<Duration>,
    /// Node id printed.
    pub identity: Option<Duration>,
    /// Ready.
    pub ready: Option<Duration>,
    /// How it ended.
    pub ending: Ending,
}

/// Results.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// Every run.
    pub runs: Vec<NodeRun>,
    /// Runs that missed a marker.
    pub failures: usize,
}

impl NodeReport {
    /// Median spawn-to-ready of `kind`, ms.
    pub fn ready_ms(&self, kind: Kind) -> Option<f64> {
        median(
            &self
                .runs
                .iter()
                .filter(|r| r.kind == kind)
                .filter_map(|r| r.ready.map(ms))
                .collect::<Vec<_>>(),
        )
    }

    /// The results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let runs: Vec<_> = self
            .runs
            .iter()
            .map(|r| {
                serde_json::json!({"kind": r.kind.name(), "run": r.run, "init_ms": r.init.map(ms), "services_ms": r.services.map(ms),
                    "node_id_ms": r.identity.map(ms), "ready_ms": r.ready.map(ms), "ending": format!("{:?}", r.ending)})
            })
            .collect();
        let (first, later, plain) = (
            self.ready_ms(Kind::First),
            self.ready_ms(Kind::Later),
            self.ready_ms(Kind::Plain),
        );
        serde_json::json!({
            "runs": runs,
            "median_ready_ms": {"node_first_boot": first, "node_later_boot": later, "plain_userspace": plain},
            "ratio_to_plain": {"node_first_boot": ratio(first, plain), "node_later_boot": ratio(later, plain)},
            "failures": self.failures,
        })
    }
}

/// Builds the node image into `dir` with `zvm node image`.
fn build_image(launcher: &Launcher, kernel: &Path, static_zvm: &Path, dir: &Path) -> Result<()> {
    let out = Command::new(&launcher.zvm)
        .args(["node", "image", "-o"])
        .arg(dir)
        .arg("--kernel")
        .arg(kernel)
        .arg("--zvm")
        .arg(static_zvm)
        .arg("--init")
        .arg(static_zvm.with_file_name("zvm-init"))
        // Uncompressed: where the guest kernel is emulated, inflate dominates boot.
        .arg("--uncompressed")
        .output()
        .map_err(|source| BenchError::Spawn {
            program: launcher.zvm.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(BenchError::Script {
            script: launcher.zvm.clone(),
            reason: format!(
                "zvm node image: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

fn blank_disk(path: &Path) -> Result<()> {
    let file = std::fs::File::create(path).map_err(io_err("create", path))?;
    file.set_len(DISK_MIB << 20).map_err(io_err("size", path))
}

fn print_run(r: &NodeRun) {
    let f = |d: Option<Duration>| fmt_opt(d.map(ms), 0);
    println!(
        "{:>4}  {:<10}  {:>9}  {:>9}  {:>9}  {:>9}  {:?}",
        r.run,
        r.kind.name(),
        f(r.init),
        f(r.services),
        f(r.identity),
        f(r.ready),
        r.ending
    );
}

/// Builds the image, boots it (first and later boot) and the plain guest, `cfg.runs`
/// times, and prints the results.
pub fn run(launcher: &Launcher, cfg: &NodeConfig, dir: &Path) -> Result<NodeReport> {
    let (kernel, init) = kernel_and_init(cfg.kernel.as_ref(), cfg.init.as_ref())?;
    let static_zvm = match &cfg.static_zvm {
        Some(p) => p.clone(),
        None => path_from_script(&repo_root().join("zos-boot/build.sh"))?,
    };
    let image = dir.join("node-image");
    build_image(launcher, &kernel, &static_zvm, &image)?;
    let node = GuestSpec {
        kernel: image.join("vmlinux"),
        initrd: Some(image.join("initramfs.cpio")),
        cmdline: format!("{CMDLINE} zos.runmode=test"),
        cpus: 1,
        mem_mib: NODE_MEM_MIB,
    };
    let plain_initrd = dir.join("plain-initramfs.cpio");
    let init_bytes = std::fs::read(&init).map_err(io_err("read", &init))?;
    std::fs::write(
        &plain_initrd,
        initramfs::pack_uncompressed(&initramfs_entries(init_bytes))?,
    )
    .map_err(io_err("write", &plain_initrd))?;
    let plain = GuestSpec {
        kernel: kernel.clone(),
        initrd: Some(plain_initrd),
        cmdline: CMDLINE.into(),
        cpus: 1,
        mem_mib: NODE_MEM_MIB,
    };

    println!("== Node image boot: {} run(s) of (first boot on a blank {DISK_MIB} MiB disk, later boot on it, plain boot), 1 vCPU, {NODE_MEM_MIB} MiB", cfg.runs);
    println!(
        "   image {} (zvm node image); plain = guest init {}",
        image.display(),
        init.display()
    );
    println!("   ready = {READY_MARKER:?} (node) or {USERSPACE_MARKER:?} (plain); services = {SERVICES_MARKER:?}; id = {IDENTITY_MARKER:?}");
    println!(
        "{:>4}  {:<10}  {:>9}  {:>9}  {:>9}  {:>9}  end",
        "run", "boot", "/init ms", "svc ms", "id ms", "ready ms"
    );
    let mut runs = Vec::new();
    let mut failures = 0;
    for i in 0..cfg.runs {
        let disk = dir.join(format!("node-disk-{i}.img"));
        blank_disk(&disk)?;
        // Alternate the plain boot's position so host noise favours neither side.
        let kinds = if i % 2 == 0 {
            [Kind::First, Kind::Later, Kind::Plain]
        } else {
            [Kind::Plain, Kind::First, Kind::Later]
        };
        for kind in kinds {
            let (guest, markers): (&GuestSpec, &[&str]) = match kind {
                Kind::Plain => (&plain, &[INIT_MARKER, USERSPACE_MARKER]),
                _ => (
                    &node,
                    &[
                        INIT_MARKER,
                        SERVICES_MARKER,
                        IDENTITY_MARKER,
                        READY_MARKER,
                        OFF_MARKER,
                    ],
                ),
            };
            let mut cmd = Command::new(&launcher.zvm);
            cmd.args(zvm_args(guest));
            if kind != Kind::Plain {
                cmd.arg("--disk").arg(format!("path={}", disk.display()));
            }
            let watch = Watch {
                markers,
                sample_at: None,
                timeout: cfg.timeout,
            };
            let out = run_watched(&mut cmd, &watch, |_| ())?;
            let r = match kind {
                Kind::Plain => NodeRun {
                    kind,
                    run: i + 1,
                    init: out.marks[0],
                    services: None,
                    identity: None,
                    ready: out.marks[1],
                    ending: out.ending,
                },
                _ => NodeRun {
                    kind,
                    run: i + 1,
                    init: out.marks[0],
                    services: out.marks[1],
                    identity: out.marks[2],
                    ready: out.marks[3],
                    ending: out.ending,
                },
            };
            if out.marks.iter().any(Option::is_none) {
                failures += 1;
                eprintln!(
                    "warning: {} run {} missed a marker; {}",
                    kind.name(),
                    i + 1,
                    out.tail(20)
                );
            }
            print_run(&r);
            runs.push(r);
        }
    }
    let report = NodeReport { runs, failures };
    let plain = report.ready_ms(Kind::Plain);
    println!();
    println!("{:<40}  {:>9}  {:>14}", "median", "ms", "ratio to plain");
    for (name, kind) in [
        ("node first boot: spawn -> node ready", Kind::First),
        ("node later boot: spawn -> node ready", Kind::Later),
        ("plain: spawn -> userspace", Kind::Plain),
    ] {
        let v = report.ready_ms(kind);
        println!(
            "{name:<40}  {:>9}  {:>14}",
            fmt_opt(v, 0),
            fmt_opt(ratio(v, plain), 2)
        );
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        let r = |kind, ready| NodeRun {
            kind,
            run: 1,
            init: None,
            services: None,
            identity: None,
            ready: Some(Duration::from_millis(ready)),
            ending: Ending::Killed,
        };
        let report = NodeReport {
            runs: vec![
                r(Kind::First, 90_000),
                r(Kind::Later, 80_000),
                r(Kind::Plain, 40_000),
                r(Kind::First, 110_000),
            ],
            failures: 0,
        };
        assert_eq!(report.ready_ms(Kind::First), Some(100_000.0));
        let json = report.to_json();
        assert_eq!(
            json["ratio_to_plain"]["node_first_boot"],
            serde_json::json!(2.5)
        );
        assert_eq!(
            json["ratio_to_plain"]["node_later_boot"],
            serde_json::json!(2.0)
        );
        assert_eq!(json["runs"].as_array().unwrap().len(), 4);
    }
}
