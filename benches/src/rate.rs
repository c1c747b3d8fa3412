//! VM creation rate: how many VMs a host starts per second, zvm against QEMU `-M microvm`.
//!
//! Each VM is the `overhead` benchmark's tiny PVH guest (it writes `!` to COM1 and asks
//! the i8042 for a reset): a whole VM lifecycle — process start, VM and device set-up,
//! loading, the first guest instruction, the exit and teardown — with no guest kernel in
//! it, so the figure is the VMM's own. `--vms` VMs are started through a pool of
//! `--parallel` workers (each starts its next VM as soon as its last one has printed `!`
//! and been reaped); the batch's wall time gives VMs per second. The VMMs take turns batch
//! by batch (zvm first in odd runs, QEMU first in even ones).

use crate::error::{io_err, Result};
use crate::measure::{fmt_opt, median, ms, ratio, run_watched, Watch};
use crate::overhead::{pvh_elf, GUEST_CODE, LOAD_ADDR};
use crate::vmms::{order, GuestSpec, Launcher, Vmm};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Settings of the rate benchmark.
#[derive(Debug, Clone)]
pub struct RateConfig {
    /// Batches per VMM.
    pub runs: usize,
    /// VMs per batch.
    pub vms: usize,
    /// VMs starting or running at the same time.
    pub parallel: usize,
    /// Time limit of one VM.
    pub timeout: Duration,
}

/// One batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Which VMM.
    pub vmm: Vmm,
    /// 1-based run number.
    pub run: usize,
    /// Wall time of the batch.
    pub wall: Duration,
    /// Spawn to `!` of each VM that printed it.
    pub first_output: Vec<Duration>,
    /// VMs that did not print `!`.
    pub failures: usize,
}

impl Batch {
    /// VMs per second (every VM of the batch counted, failed ones too).
    pub fn rate(&self, vms: usize) -> f64 {
        vms as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Results.
#[derive(Debug, Clone)]
pub struct RateReport {
    /// VMs per batch.
    pub vms: usize,
    /// Workers.
    pub parallel: usize,
    /// Every batch.
    pub batches: Vec<Batch>,
}

impl RateReport {
    /// Median VMs per second of `vmm`.
    pub fn rate(&self, vmm: Vmm) -> Option<f64> {
        median(
            &self
                .batches
                .iter()
                .filter(|b| b.vmm == vmm)
                .map(|b| b.rate(self.vms))
                .collect::<Vec<_>>(),
        )
    }

    /// Median spawn-to-`!` of `vmm` over all its VMs, ms.
    pub fn first_output_ms(&self, vmm: Vmm) -> Option<f64> {
        median(
            &self
                .batches
                .iter()
                .filter(|b| b.vmm == vmm)
                .flat_map(|b| b.first_output.iter().map(|d| ms(*d)))
                .collect::<Vec<_>>(),
        )
    }

    /// VMs that missed their marker.
    pub fn failures(&self) -> usize {
        self.batches.iter().map(|b| b.failures).sum()
    }

    /// The results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let batches: Vec<_> = self
            .batches
            .iter()
            .map(|b| serde_json::json!({"vmm": b.vmm.name(), "run": b.run, "wall_ms": ms(b.wall), "vms_per_s": b.rate(self.vms), "failures": b.failures}))
            .collect();
        let (z, q) = (self.rate(Vmm::Zvm), self.rate(Vmm::Qemu));
        serde_json::json!({
            "vms": self.vms, "parallel": self.parallel, "batches": batches,
            "median_vms_per_s": {"zvm": z, "qemu": q},
            "ratio_zvm_qemu": ratio(z, q),
            "median_first_output_ms": {"zvm": self.first_output_ms(Vmm::Zvm), "qemu": self.first_output_ms(Vmm::Qemu)},
            "failures": self.failures(),
        })
    }
}

/// Starts `cfg.vms` VMs of `vmm` through `cfg.parallel` workers.
fn batch(
    launcher: &Launcher,
    guest: &GuestSpec,
    vmm: Vmm,
    run: usize,
    cfg: &RateConfig,
) -> Result<Batch> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new((Vec::new(), 0usize));
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..cfg.parallel.max(1))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while next.fetch_add(1, Ordering::Relaxed) < cfg.vms {
                        let watch = Watch {
                            markers: &["!"],
                            sample_at: None,
                            timeout: cfg.timeout,
                        };
                        let out = run_watched(&mut launcher.command(vmm, guest), &watch, |_| ())?;
                        let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
                        match out.marks.first().copied().flatten() {
                            Some(d) => r.0.push(d),
                            None => {
                                r.1 += 1;
                                eprintln!(
                                    "warning: {} VM without '!'; {}",
                                    vmm.name(),
                                    out.tail(5)
                                );
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap_or(Ok(()))?;
        }
        Ok(())
    })?;
    let wall = start.elapsed();
    let (first_output, failures) = results.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(Batch {
        vmm,
        run,
        wall,
        first_output,
        failures,
    })
}

/// Runs the batches and prints the results.
pub fn run(launcher: &Launcher, cfg: &RateConfig, dir: &Path) -> Result<RateReport> {
    let kernel = dir.join("pvh-tiny.elf");
    std::fs::write(&kernel, pvh_elf(&GUEST_CODE, LOAD_ADDR)).map_err(io_err("write", &kernel))?;
    let guest = GuestSpec {
        kernel,
        initrd: None,
        cmdline: "console=ttyS0".into(),
        cpus: 1,
        mem_mib: 128,
    };
    println!(
        "== VM creation rate: {} VMs per batch, {} at a time, {} batch(es) per VMM",
        cfg.vms, cfg.parallel, cfg.runs
    );
    println!(
        "   guest: the tiny PVH guest (prints '!', resets), 1 vCPU, 128 MiB; QEMU -cpu {}",
        launcher.qemu_cpu()
    );
    println!(
        "{:>4}  {:<5}  {:>10}  {:>9}  {:>16}",
        "run", "vmm", "wall ms", "VMs/s", "median ->! ms"
    );
    let mut batches = Vec::new();
    for i in 0..cfg.runs {
        for vmm in order(i) {
            let b = batch(launcher, &guest, vmm, i + 1, cfg)?;
            let med = median(&b.first_output.iter().map(|d| ms(*d)).collect::<Vec<_>>());
            println!(
                "{:>4}  {:<5}  {:>10.0}  {:>9.1}  {:>16}",
                i + 1,
                vmm.name(),
                ms(b.wall),
                b.rate(cfg.vms),
                fmt_opt(med, 2)
            );
            batches.push(b);
        }
    }
    let report = RateReport {
        vms: cfg.vms,
        parallel: cfg.parallel,
        batches,
    };
    let (z, q) = (report.rate(Vmm::Zvm), report.rate(Vmm::Qemu));
    println!();
    println!(
        "{:<32}  {:>9}  {:>9}  {:>9}",
        "median", "zvm", "qemu", "zvm/qemu"
    );
    println!(
        "{:<32}  {:>9}  {:>9}  {:>9}",
        "VMs per second",
        fmt_opt(z, 1),
        fmt_opt(q, 1),
        fmt_opt(ratio(z, q), 2)
    );
    let (zf, qf) = (
        report.first_output_ms(Vmm::Zvm),
        report.first_output_ms(Vmm::Qemu),
    );
    println!(
        "{:<32}  {:>9}  {:>9}  {:>9}",
        "spawn -> first output, ms",
        fmt_opt(zf, 2),
        fmt_opt(qf, 2),
        fmt_opt(ratio(zf, qf), 3)
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_medians_and_ratio() {
        let b = |vmm, wall_ms, outs: &[u64]| Batch {
            vmm,
            run: 1,
            wall: Duration::from_millis(wall_ms),
            first_output: outs.iter().map(|m| Duration::from_millis(*m)).collect(),
            failures: 0,
        };
        let report = RateReport {
            vms: 10,
            parallel: 2,
            batches: vec![b(Vmm::Zvm, 500, &[4, 6]), b(Vmm::Qemu, 2000, &[50, 52])],
        };
        assert_eq!(report.rate(Vmm::Zvm), Some(20.0));
        assert_eq!(report.rate(Vmm::Qemu), Some(5.0));
        let json = report.to_json();
        assert_eq!(json["ratio_zvm_qemu"], 4.0);
        assert_eq!(json["median_first_output_ms"]["zvm"], 5.0);
        assert_eq!(json["failures"], 0);
    }
}
