//! Block throughput: the guest writes and reads its virtio-blk disk (a raw sparse image)
//! with O_DIRECT, measured inside the guest, under zvm and QEMU `-M microvm`; plus the
//! VMM process's host CPU time per MiB moved.

use crate::devices::{self, field, parse_fields, DeviceConfig, Devices, PhaseRun};
use crate::error::Result;
use crate::measure::{fmt_opt, median, ratio};
use crate::netns::NetNs;
use crate::vmms::{order, Launcher, Vmm};
use std::path::Path;

/// Markers around the measured part of the guest script.
const MARKERS: [&str; 2] = ["BENCH-START", "BENCH-END"];

/// The guest's result line, parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlkResult {
    /// Sequential 1 MiB O_DIRECT writes plus fsync, MiB/s.
    pub seq_write_mib_s: f64,
    /// Sequential 1 MiB O_DIRECT reads, MiB/s.
    pub seq_read_mib_s: f64,
    /// 4 KiB O_DIRECT random reads per second.
    pub rand_read_iops: f64,
    /// Number of random reads done.
    pub rand_reads: f64,
}

/// Parses `BLK seq_write_mib_s=.. seq_read_mib_s=.. rand_read_iops=.. [rand_reads=..]`.
pub fn parse_blk(line: &str) -> Option<BlkResult> {
    let f = parse_fields(line, "BLK")?;
    Some(BlkResult {
        seq_write_mib_s: field(&f, "seq_write_mib_s")?,
        seq_read_mib_s: field(&f, "seq_read_mib_s")?,
        rand_read_iops: field(&f, "rand_read_iops")?,
        rand_reads: field(&f, "rand_reads").unwrap_or(0.0),
    })
}

/// The guest script.
pub fn script(size_mib: u64) -> String {
    format!(
        "echo {}\nzvm-vsock-tool blk-bench /dev/vda {size_mib}\necho {}\n",
        MARKERS[0], MARKERS[1]
    )
}

/// One run.
#[derive(Debug, Clone)]
pub struct BlockRun {
    /// Which VMM.
    pub vmm: Vmm,
    /// 1-based run.
    pub run: usize,
    /// The guest's figures.
    pub result: Option<BlkResult>,
    /// The VMM's CPU time (user + system, all threads) between the markers, ms per MiB moved.
    pub cpu_ms_per_mib: Option<f64>,
    /// KVM's vCPU exits between the markers, per MiB moved.
    pub exits_per_mib: Option<f64>,
    /// Interrupts KVM injected between the markers, per MiB moved.
    pub irqs_per_mib: Option<f64>,
}

/// Medians of one VMM.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockMedians {
    /// MiB/s.
    pub seq_write: Option<f64>,
    /// MiB/s.
    pub seq_read: Option<f64>,
    /// IOPS.
    pub rand_iops: Option<f64>,
    /// Host CPU ms per MiB.
    pub cpu_ms_per_mib: Option<f64>,
    /// vCPU exits per MiB.
    pub exits_per_mib: Option<f64>,
    /// Injected interrupts per MiB.
    pub irqs_per_mib: Option<f64>,
}

impl BlockMedians {
    fn of(runs: &[BlockRun], vmm: Vmm) -> Self {
        let pick = |f: &dyn Fn(&BlockRun) -> Option<f64>| {
            median(
                &runs
                    .iter()
                    .filter(|r| r.vmm == vmm)
                    .filter_map(f)
                    .collect::<Vec<_>>(),
            )
        };
        BlockMedians {
            seq_write: pick(&|r| r.result.map(|b| b.seq_write_mib_s)),
            seq_read: pick(&|r| r.result.map(|b| b.seq_read_mib_s)),
            rand_iops: pick(&|r| r.result.map(|b| b.rand_read_iops)),
            cpu_ms_per_mib: pick(&|r| r.cpu_ms_per_mib),
            exits_per_mib: pick(&|r| r.exits_per_mib),
            irqs_per_mib: pick(&|r| r.irqs_per_mib),
        }
    }

    fn to_json(self) -> serde_json::Value {
        serde_json::json!({"seq_write_mib_s": self.seq_write, "seq_read_mib_s": self.seq_read,
            "rand_read_iops": self.rand_iops, "host_cpu_ms_per_mib": self.cpu_ms_per_mib,
            "exits_per_mib": self.exits_per_mib, "irqs_per_mib": self.irqs_per_mib})
    }
}

/// Results of the block benchmark.
#[derive(Debug, Clone)]
pub struct BlockReport {
    /// Every run.
    pub runs: Vec<BlockRun>,
    /// zvm medians.
    pub zvm: BlockMedians,
    /// QEMU medians.
    pub qemu: BlockMedians,
    /// Runs without a result.
    pub failures: usize,
}

impl BlockReport {
    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let runs: Vec<_> = self
            .runs
            .iter()
            .map(|r| serde_json::json!({"vmm": r.vmm.name(), "run": r.run,
                "seq_write_mib_s": r.result.map(|b| b.seq_write_mib_s), "seq_read_mib_s": r.result.map(|b| b.seq_read_mib_s),
                "rand_read_iops": r.result.map(|b| b.rand_read_iops), "host_cpu_ms_per_mib": r.cpu_ms_per_mib,
                "exits_per_mib": r.exits_per_mib, "irqs_per_mib": r.irqs_per_mib}))
            .collect();
        let (z, q) = (self.zvm, self.qemu);
        serde_json::json!({"runs": runs, "median": {"zvm": z.to_json(), "qemu": q.to_json()},
            "ratio_zvm_qemu": {"seq_write": ratio(z.seq_write, q.seq_write), "seq_read": ratio(z.seq_read, q.seq_read),
                "rand_read_iops": ratio(z.rand_iops, q.rand_iops), "host_cpu_per_mib": ratio(z.cpu_ms_per_mib, q.cpu_ms_per_mib),
                "exits_per_mib": ratio(z.exits_per_mib, q.exits_per_mib), "irqs_per_mib": ratio(z.irqs_per_mib, q.irqs_per_mib)},
            "failures": self.failures})
    }
}

fn print_summary(r: &BlockReport) {
    let (z, q) = (r.zvm, r.qemu);
    println!();
    println!(
        "{:<30}  {:>10}  {:>10}  {:>9}  goal",
        "median", "zvm", "qemu", "zvm/qemu"
    );
    let row = |name: &str, a: Option<f64>, b: Option<f64>, goal: &str| {
        println!(
            "{name:<30}  {:>10}  {:>10}  {:>9}  {goal}",
            fmt_opt(a, 1),
            fmt_opt(b, 1),
            fmt_opt(ratio(a, b), 3)
        );
    };
    row("seq write, MiB/s", z.seq_write, q.seq_write, ">= 1.0");
    row("seq read, MiB/s", z.seq_read, q.seq_read, ">= 1.0");
    row(
        "4 KiB random read, IOPS",
        z.rand_iops,
        q.rand_iops,
        ">= 1.0",
    );
    row(
        "host CPU, ms per MiB",
        z.cpu_ms_per_mib,
        q.cpu_ms_per_mib,
        "<= 1.0",
    );
    row(
        "KVM exits per MiB",
        z.exits_per_mib,
        q.exits_per_mib,
        "<= 0.5",
    );
    row(
        "KVM interrupts per MiB",
        z.irqs_per_mib,
        q.irqs_per_mib,
        "<= 0.5",
    );
}

/// Runs the block benchmark with `size_mib` MiB of sequential I/O.
pub fn run(
    launcher: &Launcher,
    cfg: &DeviceConfig,
    size_mib: u64,
    dir: &Path,
) -> Result<BlockReport> {
    let guest = devices::prepare(cfg, &script(size_mib), dir, "block-initramfs.cpio")?;
    let ns = NetNs::create("blk")?;
    let image = dir.join("block.img");
    println!(
        "== Block throughput: {} run(s) each, {size_mib} MiB sequential, 4 KiB random reads (guest-measured, O_DIRECT)",
        cfg.runs
    );
    println!(
        "   image {} ({} MiB sparse, raw); zvm --disk path=..; qemu virtio-blk-device cache=none aio=threads",
        image.display(),
        size_mib * 2
    );
    println!(
        "{:>4}  {:<5}  {:>10}  {:>10}  {:>9}  {:>11}  {:>10}  {:>9}  end",
        "run", "vmm", "write MB/s", "read MB/s", "rand IOPS", "CPU ms/MiB", "exits/MiB", "irqs/MiB"
    );
    let mut runs = Vec::new();
    let mut failures = 0;
    for i in 0..cfg.runs {
        for vmm in order(i) {
            devices::sparse_image(&image, size_mib * 2)?;
            let dev = Devices {
                disk: Some(&image),
                net: false,
            };
            let probe = devices::kvm_probe(vmm, dir, i);
            let phase = PhaseRun::run(
                &mut devices::command(launcher, vmm, &guest, dev, &ns, &probe),
                &MARKERS,
                cfg.timeout,
                &probe,
            )?;
            let result = phase.line("BLK ").and_then(parse_blk);
            let moved =
                result.map(|b| 2.0 * size_mib as f64 + b.rand_reads * 4096.0 / f64::from(1 << 20));
            let per_mib = |v: Option<f64>| match (v, moved) {
                (Some(v), Some(m)) if m > 0.0 => Some(v / m),
                _ => None,
            };
            let cpu_ms_per_mib = per_mib(phase.cpu_between(0, 1).map(|c| c * 1000.0));
            let exits_per_mib = per_mib(phase.kvm_between(0, 1, "exits"));
            let irqs_per_mib = per_mib(phase.kvm_between(0, 1, "irq_injections"));
            if result.is_none() || !phase.complete() {
                failures += 1;
                eprintln!(
                    "warning: {} run {} gave no BLK line; {}",
                    vmm.name(),
                    i + 1,
                    phase.out.tail(20)
                );
            }
            let r = BlockRun {
                vmm,
                run: i + 1,
                result,
                cpu_ms_per_mib,
                exits_per_mib,
                irqs_per_mib,
            };
            println!(
                "{:>4}  {:<5}  {:>10}  {:>10}  {:>9}  {:>11}  {:>10}  {:>9}  {:?}",
                r.run,
                vmm.name(),
                fmt_opt(result.map(|b| b.seq_write_mib_s), 1),
                fmt_opt(result.map(|b| b.seq_read_mib_s), 1),
                fmt_opt(result.map(|b| b.rand_read_iops), 0),
                fmt_opt(cpu_ms_per_mib, 2),
                fmt_opt(exits_per_mib, 1),
                fmt_opt(irqs_per_mib, 1),
                phase.ending()
            );
            runs.push(r);
        }
    }
    drop(ns);
    let report = BlockReport {
        zvm: BlockMedians::of(&runs, Vmm::Zvm),
        qemu: BlockMedians::of(&runs, Vmm::Qemu),
        runs,
        failures,
    };
    print_summary(&report);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_guest_line() {
        let line = "BLK seq_write_mib_s=101.50 seq_read_mib_s=230.00 rand_read_iops=1500.5 size_mib=64 rand_reads=2000";
        let r = parse_blk(line).expect("parsed");
        assert_eq!(
            r,
            BlkResult {
                seq_write_mib_s: 101.5,
                seq_read_mib_s: 230.0,
                rand_read_iops: 1500.5,
                rand_reads: 2000.0
            }
        );
        assert!(parse_blk("BLK seq_write_mib_s=1").is_none());
        assert!(parse_blk("NET mib_s=1").is_none());
    }

    #[test]
    fn script_runs_the_tool_between_markers() {
        let s = script(64);
        assert!(s.contains("blk-bench /dev/vda 64"));
        assert!(s.starts_with("echo BENCH-START") && s.trim_end().ends_with("echo BENCH-END"));
    }
}
