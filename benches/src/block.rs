//! Block throughput: the guest writes and reads its virtio-blk disk (a raw sparse image)
//! with O_DIRECT, measured inside the guest, under zvm (its Sync and its Async I/O engine)
//! and QEMU `-M microvm`; plus the VMM process's host CPU time per MiB moved.

use crate::devices::{self, field, parse_fields, DeviceConfig, Devices, PhaseRun};
use crate::error::Result;
use crate::kvm_breakdown::{
    closing_script, idle_script, Breakdown, CounterRates, IDLE_MARKERS, IO_MARKERS, IRQS_END,
};
use crate::measure::{fmt_opt, median, ratio};
use crate::netns::NetNs;
use crate::vmms::{order, Launcher, Vmm};
use std::path::Path;

/// Markers around the idle window and the measured part of the guest script, and after
/// the guest's last interrupt counts.
const MARKERS: [&str; 5] = [
    IDLE_MARKERS[0],
    IDLE_MARKERS[1],
    IO_MARKERS[0],
    IO_MARKERS[1],
    IRQS_END,
];
/// The idle window's and the I/O's markers (indexes into [`MARKERS`]).
const IDLE: (usize, usize) = (0, 1);
const IO: (usize, usize) = (2, 3);

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

/// The guest script: the idle window, then the measurement.
pub fn script(size_mib: u64) -> String {
    format!(
        "{}echo {}\nzvm-vsock-tool blk-bench /dev/vda {size_mib}\necho {}\n{}",
        idle_script(),
        MARKERS[IO.0],
        MARKERS[IO.1],
        closing_script()
    )
}

/// What one run measures: zvm with one of its I/O engines, or QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// zvm, `io_engine` Sync (requests served on the VMM thread).
    ZvmSync,
    /// zvm, `io_engine` Async (io_uring, or a worker thread).
    ZvmAsync,
    /// QEMU microvm.
    Qemu,
}

impl Variant {
    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Variant::ZvmSync => "zvm",
            Variant::ZvmAsync => "zvm-async",
            Variant::Qemu => "qemu",
        }
    }

    fn vmm(self) -> Vmm {
        match self {
            Variant::Qemu => Vmm::Qemu,
            _ => Vmm::Zvm,
        }
    }
}

/// The variants of run `run` (0-based), the VMMs alternating as [`order`] has them.
fn variants(run: usize) -> Vec<Variant> {
    order(run)
        .into_iter()
        .flat_map(|vmm| match vmm {
            Vmm::Zvm => vec![Variant::ZvmSync, Variant::ZvmAsync],
            Vmm::Qemu => vec![Variant::Qemu],
        })
        .collect()
}

/// One run.
#[derive(Debug, Clone)]
pub struct BlockRun {
    /// What ran.
    pub variant: Variant,
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
    /// Every KVM counter, per MiB and per second (I/O and idle).
    pub counters: CounterRates,
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
    fn of(runs: &[BlockRun], variant: Variant) -> Self {
        let pick = |f: &dyn Fn(&BlockRun) -> Option<f64>| {
            median(
                &runs
                    .iter()
                    .filter(|r| r.variant == variant)
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
    /// zvm medians (Sync engine).
    pub zvm: BlockMedians,
    /// zvm medians (Async engine).
    pub zvm_async: BlockMedians,
    /// QEMU medians.
    pub qemu: BlockMedians,
    /// Runs without a result.
    pub failures: usize,
    /// Every KVM counter, medians per variant.
    pub breakdown: Breakdown,
}

impl BlockReport {
    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let runs: Vec<_> = self
            .runs
            .iter()
            .map(|r| serde_json::json!({"vmm": r.variant.name(), "run": r.run,
                "seq_write_mib_s": r.result.map(|b| b.seq_write_mib_s), "seq_read_mib_s": r.result.map(|b| b.seq_read_mib_s),
                "rand_read_iops": r.result.map(|b| b.rand_read_iops), "host_cpu_ms_per_mib": r.cpu_ms_per_mib,
                "exits_per_mib": r.exits_per_mib, "irqs_per_mib": r.irqs_per_mib}))
            .collect();
        let (z, a, q) = (self.zvm, self.zvm_async, self.qemu);
        let ratios = |z: BlockMedians| {
            serde_json::json!({"seq_write": ratio(z.seq_write, q.seq_write), "seq_read": ratio(z.seq_read, q.seq_read),
                "rand_read_iops": ratio(z.rand_iops, q.rand_iops), "host_cpu_per_mib": ratio(z.cpu_ms_per_mib, q.cpu_ms_per_mib),
                "exits_per_mib": ratio(z.exits_per_mib, q.exits_per_mib), "irqs_per_mib": ratio(z.irqs_per_mib, q.irqs_per_mib)})
        };
        serde_json::json!({"runs": runs,
            "median": {"zvm": z.to_json(), "zvm_async": a.to_json(), "qemu": q.to_json()},
            "ratio_zvm_qemu": ratios(z), "ratio_zvm_async_qemu": ratios(a),
            "kvm_counters": self.breakdown.to_json(), "failures": self.failures})
    }
}

fn print_summary(r: &BlockReport) {
    let (z, a, q) = (r.zvm, r.zvm_async, r.qemu);
    println!();
    println!(
        "{:<26}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  goal",
        "median", "zvm sync", "zvm async", "qemu", "sync/qemu", "async/qemu"
    );
    let row = |name: &str, f: &dyn Fn(BlockMedians) -> Option<f64>, goal: &str| {
        println!(
            "{name:<26}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {goal}",
            fmt_opt(f(z), 1),
            fmt_opt(f(a), 1),
            fmt_opt(f(q), 1),
            fmt_opt(ratio(f(z), f(q)), 3),
            fmt_opt(ratio(f(a), f(q)), 3)
        );
    };
    row("seq write, MiB/s", &|m| m.seq_write, ">= 1.0");
    row("seq read, MiB/s", &|m| m.seq_read, ">= 1.0");
    row("4 KiB random read, IOPS", &|m| m.rand_iops, ">= 1.0");
    row("host CPU, ms per MiB", &|m| m.cpu_ms_per_mib, "<= 1.0");
    row("KVM exits per MiB", &|m| m.exits_per_mib, "<= 0.5");
    row("KVM interrupts per MiB", &|m| m.irqs_per_mib, "<= 0.5");
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
        "   image {} ({} MiB sparse, raw); zvm --disk path=.. (and ..,io=async); qemu virtio-blk-device cache=none aio=threads",
        image.display(),
        size_mib * 2
    );
    println!(
        "{:>4}  {:<9}  {:>10}  {:>10}  {:>9}  {:>11}  {:>10}  {:>9}  end",
        "run", "vmm", "write MB/s", "read MB/s", "rand IOPS", "CPU ms/MiB", "exits/MiB", "irqs/MiB"
    );
    let mut runs = Vec::new();
    let mut failures = 0;
    for i in 0..cfg.runs {
        for variant in variants(i) {
            let vmm = variant.vmm();
            devices::sparse_image(&image, size_mib * 2)?;
            let dev = Devices {
                disk: (variant != Variant::ZvmAsync).then_some(image.as_path()),
                net: false,
            };
            let probe = devices::kvm_probe(vmm, dir, i);
            let mut command = devices::command(launcher, vmm, &guest, dev, &ns, &probe);
            if variant == Variant::ZvmAsync {
                command.args([
                    "--disk".to_string(),
                    format!("path={},io=async", image.display()),
                ]);
            }
            let phase = PhaseRun::run(&mut command, &MARKERS, cfg.timeout, &probe)?;
            let result = phase.line("BLK ").and_then(parse_blk);
            let moved =
                result.map(|b| 2.0 * size_mib as f64 + b.rand_reads * 4096.0 / f64::from(1 << 20));
            let per_mib = |v: Option<f64>| match (v, moved) {
                (Some(v), Some(m)) if m > 0.0 => Some(v / m),
                _ => None,
            };
            let cpu_ms_per_mib = per_mib(phase.cpu_between(IO.0, IO.1).map(|c| c * 1000.0));
            let exits_per_mib = per_mib(phase.kvm_between(IO.0, IO.1, "exits"));
            let irqs_per_mib = per_mib(phase.kvm_between(IO.0, IO.1, "irq_injections"));
            let counters = CounterRates::of(&phase, IDLE, IO, moved.unwrap_or(0.0));
            if result.is_none() || !phase.complete() {
                failures += 1;
                eprintln!(
                    "warning: {} run {} gave no BLK line; {}",
                    variant.name(),
                    i + 1,
                    phase.out.tail(20)
                );
            }
            let r = BlockRun {
                variant,
                run: i + 1,
                result,
                cpu_ms_per_mib,
                exits_per_mib,
                irqs_per_mib,
                counters,
            };
            println!(
                "{:>4}  {:<9}  {:>10}  {:>10}  {:>9}  {:>11}  {:>10}  {:>9}  {:?}",
                r.run,
                variant.name(),
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
    let labelled: Vec<(&str, &CounterRates)> = runs
        .iter()
        .map(|r| (r.variant.name(), &r.counters))
        .collect();
    let names = [Variant::ZvmSync, Variant::ZvmAsync, Variant::Qemu].map(Variant::name);
    let breakdown = Breakdown::of(&labelled, &names);
    let report = BlockReport {
        zvm: BlockMedians::of(&runs, Variant::ZvmSync),
        zvm_async: BlockMedians::of(&runs, Variant::ZvmAsync),
        qemu: BlockMedians::of(&runs, Variant::Qemu),
        runs,
        failures,
        breakdown,
    };
    print_summary(&report);
    report.breakdown.print(names[0], names[2]);
    report.breakdown.print(names[1], names[2]);
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
    fn each_run_measures_both_zvm_engines_and_qemu() {
        assert_eq!(
            variants(0),
            [Variant::ZvmSync, Variant::ZvmAsync, Variant::Qemu]
        );
        assert_eq!(
            variants(1),
            [Variant::Qemu, Variant::ZvmSync, Variant::ZvmAsync]
        );
        assert_eq!(Variant::ZvmAsync.name(), "zvm-async");
    }

    #[test]
    fn script_runs_the_tool_between_markers() {
        let s = script(64);
        assert!(s.contains("echo BENCH-START\nzvm-vsock-tool blk-bench /dev/vda 64\n"));
        assert!(s.starts_with(&idle_script()) && s.ends_with(&closing_script()));
    }
}
