//! VM creation rate: how many VMs a host starts per second, zvm against QEMU `-M microvm`.
//!
//! Each VM is the `overhead` benchmark's tiny PVH guest (it writes `!` to COM1 and asks
//! the i8042 for a reset): a whole VM lifecycle — process start, VM and device set-up,
//! loading, the first guest instruction, the exit and teardown — with no guest kernel in
//! it, so the figure is the VMM's own. `--vms` VMs are started through a pool of
//! `--parallel` workers (each starts its next VM as soon as its last one has printed `!`
//! and been reaped); the batch's wall time gives VMs per second. The VMMs take turns batch
//! by batch (zvm first in odd runs, QEMU first in even ones).
//!
//! Wall-clock VMs per second moves with the host's load (QEMU's more than zvm's: it spends
//! more CPU per VM), so each batch also reports the host CPU time its VMs used: the
//! reaped children's user + system time (`getrusage(RUSAGE_CHILDREN)` before and after the
//! batch; the VMs are this process's only children while it runs), per VM. That figure
//! hardly depends on what else the host runs.

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
    /// Host CPU time (user + system) of the batch's VM processes; None if unreadable.
    pub cpu: Option<CpuTime>,
}

impl Batch {
    /// VMs per second (every VM of the batch counted, failed ones too).
    pub fn rate(&self, vms: usize) -> f64 {
        vms as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Host CPU time per VM, ms.
    pub fn cpu_ms_per_vm(&self, vms: usize) -> Option<f64> {
        self.cpu.map(|c| ms(c.total()) / vms.max(1) as f64)
    }
}

/// User and system CPU time, as `getrusage` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTime {
    /// User time (guest time included: KVM counts it as the vCPU thread's user time).
    pub user: Duration,
    /// System time.
    pub system: Duration,
}

impl CpuTime {
    /// From a `struct rusage`'s `ru_utime` and `ru_stime`.
    pub fn from_rusage(usage: &libc::rusage) -> Self {
        CpuTime {
            user: timeval(usage.ru_utime),
            system: timeval(usage.ru_stime),
        }
    }

    /// The CPU time of this process's reaped children (and theirs) so far.
    pub fn children() -> Option<Self> {
        // SAFETY: getrusage fills the zeroed struct we own.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, writable rusage.
        if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
            return None;
        }
        Some(Self::from_rusage(&usage))
    }

    /// What was spent since `earlier` (saturating: never negative).
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }

    /// User + system.
    pub fn total(self) -> Duration {
        self.user + self.system
    }
}

/// A `timeval` as a duration (negative fields, which the kernel never reports, as zero).
fn timeval(tv: libc::timeval) -> Duration {
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u64::try_from(tv.tv_usec).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(micros)
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

    /// Median host CPU time per VM of `vmm`, ms.
    pub fn cpu_ms_per_vm(&self, vmm: Vmm) -> Option<f64> {
        median(
            &self
                .batches
                .iter()
                .filter(|b| b.vmm == vmm)
                .filter_map(|b| b.cpu_ms_per_vm(self.vms))
                .collect::<Vec<_>>(),
        )
    }

    /// The lowest ratio of zvm's VMs per second to QEMU's batch by batch within a run
    /// (each run has one batch of each): how far the worst run is from the goal.
    pub fn worst_run_ratio(&self) -> Option<f64> {
        let runs = self.batches.iter().map(|b| b.run).max()?;
        (1..=runs)
            .filter_map(|run| {
                let rate = |vmm| {
                    self.batches
                        .iter()
                        .find(|b| b.run == run && b.vmm == vmm)
                        .map(|b| b.rate(self.vms))
                };
                ratio(rate(Vmm::Zvm), rate(Vmm::Qemu))
            })
            .min_by(f64::total_cmp)
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
            .map(|b| serde_json::json!({"vmm": b.vmm.name(), "run": b.run, "wall_ms": ms(b.wall), "vms_per_s": b.rate(self.vms), "cpu_ms_per_vm": b.cpu_ms_per_vm(self.vms), "failures": b.failures}))
            .collect();
        let (z, q) = (self.rate(Vmm::Zvm), self.rate(Vmm::Qemu));
        let (zc, qc) = (self.cpu_ms_per_vm(Vmm::Zvm), self.cpu_ms_per_vm(Vmm::Qemu));
        serde_json::json!({
            "vms": self.vms, "parallel": self.parallel, "batches": batches,
            "median_vms_per_s": {"zvm": z, "qemu": q},
            "ratio_zvm_qemu": ratio(z, q),
            "worst_run_ratio_zvm_qemu": self.worst_run_ratio(),
            "median_cpu_ms_per_vm": {"zvm": zc, "qemu": qc},
            "cpu_ratio_qemu_zvm": ratio(qc, zc),
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
    let cpu_before = CpuTime::children();
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
    let cpu = CpuTime::children()
        .zip(cpu_before)
        .map(|(after, before)| after.since(before));
    let (first_output, failures) = results.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(Batch {
        vmm,
        run,
        wall,
        first_output,
        failures,
        cpu,
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
        "{:>4}  {:<5}  {:>10}  {:>9}  {:>16}  {:>10}",
        "run", "vmm", "wall ms", "VMs/s", "median ->! ms", "CPU ms/VM"
    );
    let mut batches = Vec::new();
    for i in 0..cfg.runs {
        for vmm in order(i) {
            let b = batch(launcher, &guest, vmm, i + 1, cfg)?;
            let med = median(&b.first_output.iter().map(|d| ms(*d)).collect::<Vec<_>>());
            println!(
                "{:>4}  {:<5}  {:>10.0}  {:>9.1}  {:>16}  {:>10}",
                i + 1,
                vmm.name(),
                ms(b.wall),
                b.rate(cfg.vms),
                fmt_opt(med, 2),
                fmt_opt(b.cpu_ms_per_vm(cfg.vms), 2)
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
    let (zc, qc) = (
        report.cpu_ms_per_vm(Vmm::Zvm),
        report.cpu_ms_per_vm(Vmm::Qemu),
    );
    println!(
        "{:<32}  {:>9}  {:>9}  {:>9}",
        "host CPU per VM, ms",
        fmt_opt(zc, 2),
        fmt_opt(qc, 2),
        fmt_opt(ratio(zc, qc), 3)
    );
    println!(
        "{:<32}  {:>9}  {:>9}  {:>9}",
        "VMs per CPU second",
        fmt_opt(zc.map(|c| 1000.0 / c), 1),
        fmt_opt(qc.map(|c| 1000.0 / c), 1),
        fmt_opt(ratio(qc, zc), 2)
    );
    println!(
        "worst run's zvm/qemu VMs per second: {}",
        fmt_opt(report.worst_run_ratio(), 2)
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
            cpu: None,
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
        assert!(json["median_cpu_ms_per_vm"]["zvm"].is_null());
    }

    fn batch_of(vmm: Vmm, run: usize, wall_ms: u64, cpu_ms: u64) -> Batch {
        Batch {
            vmm,
            run,
            wall: Duration::from_millis(wall_ms),
            first_output: Vec::new(),
            failures: 0,
            cpu: Some(CpuTime {
                user: Duration::from_millis(cpu_ms / 2),
                system: Duration::from_millis(cpu_ms - cpu_ms / 2),
            }),
        }
    }

    #[test]
    fn cpu_per_vm_and_worst_run() {
        let report = RateReport {
            vms: 10,
            parallel: 4,
            batches: vec![
                batch_of(Vmm::Zvm, 1, 100, 50),
                batch_of(Vmm::Qemu, 1, 800, 600),
                batch_of(Vmm::Qemu, 2, 500, 700),
                batch_of(Vmm::Zvm, 2, 125, 70),
            ],
        };
        // 5 and 7 ms per VM for zvm, 60 and 70 for QEMU.
        assert_eq!(report.cpu_ms_per_vm(Vmm::Zvm), Some(6.0));
        assert_eq!(report.cpu_ms_per_vm(Vmm::Qemu), Some(65.0));
        // Run 1: 100 against 12.5 VMs/s (8x); run 2: 80 against 20 (4x).
        assert_eq!(report.worst_run_ratio(), Some(4.0));
        let json = report.to_json();
        assert_eq!(json["batches"][0]["cpu_ms_per_vm"], 5.0);
        assert_eq!(json["cpu_ratio_qemu_zvm"], 65.0 / 6.0);
    }

    #[test]
    fn cpu_time_from_rusage_and_difference() {
        // SAFETY: rusage is plain data; all zeroes is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        usage.ru_utime = libc::timeval {
            tv_sec: 2,
            tv_usec: 250_000,
        };
        usage.ru_stime = libc::timeval {
            tv_sec: 0,
            tv_usec: 1_500,
        };
        let later = CpuTime::from_rusage(&usage);
        assert_eq!(later.user, Duration::from_micros(2_250_000));
        assert_eq!(later.system, Duration::from_micros(1_500));
        let earlier = CpuTime {
            user: Duration::from_secs(2),
            system: Duration::from_millis(2),
        };
        // The system time cannot go back: the difference saturates at zero.
        let spent = later.since(earlier);
        assert_eq!(spent.user, Duration::from_millis(250));
        assert_eq!(spent.system, Duration::ZERO);
        assert_eq!(spent.total(), Duration::from_millis(250));
    }

    #[test]
    fn reaped_children_count() {
        let before = CpuTime::children().expect("getrusage");
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
            .status()
            .expect("run sh");
        assert!(status.success());
        let spent = CpuTime::children().expect("getrusage").since(before);
        assert!(spent.total() > Duration::ZERO, "{spent:?}");
    }
}
