//! The snapshot benchmark's results: the runs, their medians and ratios against the
//! goals, the printed summary and the JSON.

use crate::measure::{fmt_opt, median, ms, ratio};
use crate::vmms::Vmm;
use std::time::Duration;

/// Goal: restore request -> vCPUs running, ms.
pub const GOAL_RESTORE_MS: f64 = 5.0;
/// Goal: cold boot at least this many times slower than restore -> answer.
pub const GOAL_SPEEDUP: f64 = 100.0;
/// Goal: the clones' Pss at most this many times one VM's.
pub const GOAL_PSS_RATIO: f64 = 2.0;

/// One timed restore.
#[derive(Debug, Clone, Copy, Default)]
pub struct Restore {
    /// The PUT /snapshot/load round trip (resume_vm=true).
    pub load: Option<Duration>,
    /// zvm's own "snapshot loaded in" figure, ms.
    pub load_logged_ms: Option<f64>,
    /// Load request -> the guest's answer over vsock.
    pub answer: Option<Duration>,
    /// Connections accepted after the load that the guest then reset (before the answer).
    pub broken: u32,
}

/// One cold boot of a peer.
#[derive(Debug, Clone, Copy)]
pub struct ColdBoot {
    /// Which VMM.
    pub vmm: Vmm,
    /// Spawn -> the userspace marker.
    pub userspace: Option<Duration>,
    /// Spawn -> the guest's answer over vsock (zvm only: QEMU has no vsock here).
    pub answer: Option<Duration>,
}

/// Results of the snapshot benchmark.
#[derive(Debug, Clone, Default)]
pub struct SnapshotReport {
    /// The base VM's InstanceStart -> answer.
    pub base_boot: Option<Duration>,
    /// Full snapshot round trips.
    pub full: Vec<Duration>,
    /// Memory file size, apparent and allocated, and the state file's size (bytes).
    pub sizes: (u64, u64, u64),
    /// The diff snapshot's round trip.
    pub diff: Option<Duration>,
    /// Pages zvm reported writing for the diff.
    pub diff_pages_written: Option<u64>,
    /// Pages of the memory file the diff changed.
    pub diff_pages_changed: Option<u64>,
    /// The timed restores.
    pub restores: Vec<Restore>,
    /// Clones that answered, and their Pss and Rss sums (KiB).
    pub clones: (usize, Option<u64>, Option<u64>),
    /// Cold VMs that answered, their Pss sum and the median Pss of one (KiB).
    pub cold: (usize, Option<u64>, Option<f64>),
    /// The peers' cold boots.
    pub boots: Vec<ColdBoot>,
    /// Runs that failed.
    pub failures: usize,
}

/// The figures the summary and the JSON show.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    /// Median load round trip, ms.
    pub load_ms: Option<f64>,
    /// Median restore -> answer, ms.
    pub answer_ms: Option<f64>,
    /// Median zvm cold boot spawn -> answer, ms.
    pub zvm_boot_answer_ms: Option<f64>,
    /// Median zvm cold boot spawn -> userspace, ms.
    pub zvm_boot_ms: Option<f64>,
    /// Median QEMU cold boot spawn -> userspace, ms.
    pub qemu_boot_ms: Option<f64>,
    /// Median full snapshot, ms.
    pub full_ms: Option<f64>,
    /// Clones' Pss over one cold VM's.
    pub pss_ratio: Option<f64>,
}

impl SnapshotReport {
    /// The medians and ratios.
    pub fn figures(&self) -> Figures {
        let restores = |f: &dyn Fn(&Restore) -> Option<Duration>| {
            median(
                &self
                    .restores
                    .iter()
                    .filter_map(|r| f(r).map(ms))
                    .collect::<Vec<_>>(),
            )
        };
        let boots = |vmm: Vmm, f: &dyn Fn(&ColdBoot) -> Option<Duration>| {
            median(
                &self
                    .boots
                    .iter()
                    .filter(|b| b.vmm == vmm)
                    .filter_map(|b| f(b).map(ms))
                    .collect::<Vec<_>>(),
            )
        };
        Figures {
            load_ms: restores(&|r| r.load),
            answer_ms: restores(&|r| r.answer),
            zvm_boot_answer_ms: boots(Vmm::Zvm, &|b| b.answer),
            zvm_boot_ms: boots(Vmm::Zvm, &|b| b.userspace),
            qemu_boot_ms: boots(Vmm::Qemu, &|b| b.userspace),
            full_ms: median(&self.full.iter().copied().map(ms).collect::<Vec<_>>()),
            pss_ratio: ratio(self.clones.1.map(|v| v as f64), self.cold.2),
        }
    }

    /// The results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let f = self.figures();
        let restores: Vec<_> = self
            .restores
            .iter()
            .map(|r| serde_json::json!({"load_ms": r.load.map(ms), "load_logged_ms": r.load_logged_ms, "answer_ms": r.answer.map(ms), "reset_connections": r.broken}))
            .collect();
        let boots: Vec<_> = self
            .boots
            .iter()
            .map(|b| serde_json::json!({"vmm": b.vmm.name(), "userspace_ms": b.userspace.map(ms), "answer_ms": b.answer.map(ms)}))
            .collect();
        serde_json::json!({
            "base_boot_answer_ms": self.base_boot.map(ms),
            "full_snapshot_ms": self.full.iter().copied().map(ms).collect::<Vec<_>>(),
            "memory_file_bytes": self.sizes.0, "memory_file_allocated_bytes": self.sizes.1, "state_file_bytes": self.sizes.2,
            "diff_snapshot_ms": self.diff.map(ms), "diff_pages_written": self.diff_pages_written,
            "diff_pages_changed": self.diff_pages_changed,
            "restores": restores,
            "clones": {"count": self.clones.0, "pss_kib": self.clones.1, "rss_kib": self.clones.2},
            "cold_vms": {"count": self.cold.0, "pss_kib": self.cold.1, "one_vm_pss_kib": self.cold.2},
            "cold_boots": boots,
            "median": {
                "restore_to_running_ms": f.load_ms, "restore_to_answer_ms": f.answer_ms, "full_snapshot_ms": f.full_ms,
                "zvm_cold_boot_to_answer_ms": f.zvm_boot_answer_ms, "zvm_cold_boot_to_userspace_ms": f.zvm_boot_ms,
                "qemu_cold_boot_to_userspace_ms": f.qemu_boot_ms,
            },
            "ratio_cold_boot_to_restore_answer": ratio(f.zvm_boot_answer_ms, f.answer_ms),
            "ratio_qemu_boot_to_restore_answer": ratio(f.qemu_boot_ms, f.answer_ms),
            "ratio_zvm_qemu_boot": ratio(f.zvm_boot_ms, f.qemu_boot_ms),
            "ratio_clones_pss_to_one_vm": f.pss_ratio,
            "failures": self.failures,
        })
    }
}

fn goal(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "n/a",
    }
}

/// Prints the summary table; `clones_wanted` is the clone count asked for.
pub fn print_summary(r: &SnapshotReport, clones_wanted: usize) {
    let f = r.figures();
    let mib = |kib: Option<f64>| fmt_opt(kib.map(|k| k / 1024.0), 1);
    println!();
    println!("{:<52}  {:>12}  goal", "median", "value");
    let row = |name: &str, value: String, goal: String| println!("{name:<52}  {value:>12}  {goal}");
    row(
        "restore request -> vCPUs running (load RTT), ms",
        fmt_opt(f.load_ms, 2),
        format!(
            "<= {GOAL_RESTORE_MS} ms: {}",
            goal(f.load_ms.map(|v| v <= GOAL_RESTORE_MS))
        ),
    );
    let broken: u32 = r.restores.iter().map(|x| x.broken).sum();
    row(
        "restore request -> guest answers over vsock, ms",
        fmt_opt(f.answer_ms, 1),
        format!(
            "{broken} connection(s) accepted, then reset by the guest, in {} restores",
            r.restores.len()
        ),
    );
    row(
        "zvm cold boot: spawn -> answers over vsock, ms",
        fmt_opt(f.zvm_boot_answer_ms, 0),
        String::new(),
    );
    let speedup = ratio(f.zvm_boot_answer_ms, f.answer_ms);
    row(
        "  cold boot / restore (to the answer)",
        fmt_opt(speedup, 0),
        format!(
            ">= {GOAL_SPEEDUP}: {}",
            goal(speedup.map(|v| v >= GOAL_SPEEDUP))
        ),
    );
    row(
        "zvm cold boot: spawn -> userspace, ms",
        fmt_opt(f.zvm_boot_ms, 0),
        String::new(),
    );
    row(
        "QEMU microvm cold boot: spawn -> userspace, ms",
        fmt_opt(f.qemu_boot_ms, 0),
        format!(
            "zvm/QEMU {}",
            fmt_opt(ratio(f.zvm_boot_ms, f.qemu_boot_ms), 3)
        ),
    );
    row(
        "  QEMU cold boot / zvm restore (to the answer)",
        fmt_opt(ratio(f.qemu_boot_ms, f.answer_ms), 0),
        String::new(),
    );
    let (apparent, allocated, state) = r.sizes;
    row(
        "full snapshot create (256 MiB guest), ms",
        fmt_opt(f.full_ms, 1),
        String::new(),
    );
    row(
        "  memory file apparent / allocated, MiB",
        format!("{} / {}", apparent >> 20, allocated >> 20),
        format!("state file {state} bytes"),
    );
    row(
        "diff snapshot after a small change, ms",
        fmt_opt(r.diff.map(ms), 1),
        String::new(),
    );
    let pages = format!(
        "{} / {}",
        r.diff_pages_written.map_or("-".into(), |v| v.to_string()),
        r.diff_pages_changed.map_or("-".into(), |v| v.to_string())
    );
    row(
        "  pages written (zvm's log) / pages changed",
        pages,
        String::new(),
    );
    row(
        &format!("{} clones of one snapshot: sum of Pss, MiB", r.clones.0),
        mib(r.clones.1.map(|v| v as f64)),
        format!("Rss sum {} MiB", mib(r.clones.2.map(|v| v as f64))),
    );
    row(
        &format!("{} cold-booted VMs: sum of Pss, MiB", r.cold.0),
        mib(r.cold.1.map(|v| v as f64)),
        format!("one VM {} MiB", mib(r.cold.2)),
    );
    if r.cold.0 > 0 && r.cold.0 != clones_wanted {
        let scaled = r.cold.2.map(|one| one * clones_wanted as f64);
        row(
            &format!(
                "  {} cold VMs estimated (one VM x {})",
                clones_wanted, clones_wanted
            ),
            mib(scaled),
            String::new(),
        );
    }
    row(
        "clones' Pss / one cold VM's",
        fmt_opt(f.pss_ratio, 2),
        format!(
            "<= {GOAL_PSS_RATIO}: {}",
            goal(f.pss_ratio.map(|v| v <= GOAL_PSS_RATIO))
        ),
    );
    let per_clone = r.cold.2.map(|one| one * r.clones.0 as f64);
    row(
        "clones' Pss / as many cold VMs'",
        fmt_opt(ratio(r.clones.1.map(|v| v as f64), per_clone), 3),
        String::new(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_take_medians_and_ratios() {
        let r = SnapshotReport {
            restores: vec![
                Restore {
                    load: Some(Duration::from_millis(4)),
                    load_logged_ms: None,
                    answer: Some(Duration::from_millis(100)),
                    broken: 0,
                },
                Restore {
                    load: Some(Duration::from_millis(6)),
                    load_logged_ms: None,
                    answer: Some(Duration::from_millis(300)),
                    broken: 1,
                },
            ],
            boots: vec![ColdBoot {
                vmm: Vmm::Zvm,
                userspace: Some(Duration::from_secs(50)),
                answer: Some(Duration::from_secs(60)),
            }],
            clones: (10, Some(100_000), Some(400_000)),
            cold: (1, Some(60_000), Some(60_000.0)),
            ..Default::default()
        };
        let f = r.figures();
        assert_eq!((f.load_ms, f.answer_ms), (Some(5.0), Some(200.0)));
        assert_eq!(ratio(f.zvm_boot_answer_ms, f.answer_ms), Some(300.0));
        assert!((f.pss_ratio.unwrap_or_default() - 100.0 / 60.0).abs() < 1e-9);
        assert_eq!(r.to_json()["ratio_cold_boot_to_restore_answer"], 300.0);
    }
}
