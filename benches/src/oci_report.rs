//! The OCI lifecycle benchmark's figures: per-run phase times of each runtime, their
//! medians, the ratios between runtimes, the goals, and the JSON.

use crate::measure::{fmt_opt, median, ms, ratio};
use crate::oci_checkpoint::CheckpointReport;
use crate::templates::{TemplateBuild, VmStart};
use std::time::Duration;

/// Kata Containers' published boot-to-workload time, the bound the issue sets for
/// create + start.
pub const KATA_BOOT_TO_WORKLOAD_MS: f64 = 390.0;
/// The goal for zvm-runc's total over runc's.
pub const GOAL_RATIO: f64 = 3.0;
/// The goal for create + start + wait + delete with templates, ms.
pub const GOAL_TEMPLATE_TOTAL_MS: f64 = 2000.0;

/// Which runtime (and zvm-runc setting) a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// zvm-runc, container VMs restored from a template.
    ZvmTemplates,
    /// zvm-runc with `ZVM_TEMPLATES=off`: every container VM boots its kernel.
    ZvmBoot,
    /// runc.
    Runc,
}

impl Runtime {
    /// Key in the JSON and in container ids.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::ZvmTemplates => "zvm-runc-templates",
            Runtime::ZvmBoot => "zvm-runc-no-templates",
            Runtime::Runc => "runc",
        }
    }

    /// Column title.
    pub fn label(self) -> &'static str {
        match self {
            Runtime::ZvmTemplates => "zvm-runc, templates",
            Runtime::ZvmBoot => "zvm-runc, no templates",
            Runtime::Runc => "runc",
        }
    }
}

/// The ratios reported: (numerator, denominator, JSON key, column title).
pub const PAIRS: [(Runtime, Runtime, &str, &str); 3] = [
    (
        Runtime::ZvmTemplates,
        Runtime::ZvmBoot,
        "templates_to_no_templates",
        "templates / no templates",
    ),
    (
        Runtime::ZvmTemplates,
        Runtime::Runc,
        "templates_to_runc",
        "templates / runc",
    ),
    (
        Runtime::ZvmBoot,
        Runtime::Runc,
        "no_templates_to_runc",
        "no templates / runc",
    ),
];

/// Phase times of one run (`None` when the run failed before the phase ended).
#[derive(Debug, Clone, Default)]
pub struct Phases {
    /// `create` command.
    pub create: Option<Duration>,
    /// `start` command.
    pub start: Option<Duration>,
    /// From `start` returning to `state` reporting `stopped` (polled every 5 ms).
    pub wait: Option<Duration>,
    /// `delete` command.
    pub delete: Option<Duration>,
}

impl Phases {
    /// create + start + wait + delete, when all happened.
    pub fn total(&self) -> Option<Duration> {
        Some(self.create? + self.start? + self.wait? + self.delete?)
    }
}

/// One run of one runtime.
#[derive(Debug, Clone)]
pub struct OciRun {
    /// Runtime.
    pub runtime: Runtime,
    /// 1-based run number.
    pub run: usize,
    /// Times.
    pub phases: Phases,
    /// How zvm-runc's VM started (from its sandbox.log); `None` for runc.
    pub vm_start: Option<VmStart>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// All runs.
#[derive(Debug, Clone)]
pub struct OciReport {
    /// Every run, in order.
    pub runs: Vec<OciRun>,
    /// Runs that failed (lifecycle and checkpoint).
    pub failures: usize,
    /// zvm-runc backend.
    pub backend: String,
    /// The runtimes measured, in column order.
    pub runtimes: Vec<Runtime>,
    /// The one-time template build, when templates were measured.
    pub template: Option<TemplateBuild>,
    /// The checkpoint + restore section, when it ran.
    pub checkpoint: Option<CheckpointReport>,
}

/// Picks one figure out of a run's phases.
pub type Pick = fn(&Phases) -> Option<Duration>;
/// The phases reported, in order.
pub const PHASES: [(&str, Pick); 6] = [
    ("create", |p| p.create),
    ("start", |p| p.start),
    ("wait", |p| p.wait),
    ("delete", |p| p.delete),
    ("create + start", |p| Some(p.create? + p.start?)),
    ("total", Phases::total),
];

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "not met",
        None => "no data",
    }
}

impl OciReport {
    /// Median of a phase over the successful runs of `rt`, ms.
    pub fn median(&self, rt: Runtime, pick: Pick) -> Option<f64> {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.runtime == rt)
            .filter_map(|r| pick(&r.phases))
            .map(ms)
            .collect();
        median(&v)
    }

    /// zvm-runc's default setting among those measured: templates, else no templates.
    pub fn default_zvm(&self) -> Runtime {
        if self.runtimes.contains(&Runtime::ZvmTemplates) {
            Runtime::ZvmTemplates
        } else {
            Runtime::ZvmBoot
        }
    }

    /// The ratio pairs whose both runtimes were measured.
    fn pairs(&self) -> impl Iterator<Item = &(Runtime, Runtime, &'static str, &'static str)> {
        PAIRS
            .iter()
            .filter(|(a, b, _, _)| self.runtimes.contains(a) && self.runtimes.contains(b))
    }

    /// Whether the templates' median total is within [`GOAL_TEMPLATE_TOTAL_MS`].
    pub fn template_goal(&self) -> Option<bool> {
        self.median(Runtime::ZvmTemplates, Phases::total)
            .map(|t| t <= GOAL_TEMPLATE_TOTAL_MS)
    }

    /// The results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let med = |rt| -> serde_json::Value {
            PHASES
                .iter()
                .map(|(name, pick)| (name.to_string(), serde_json::json!(self.median(rt, *pick))))
                .collect()
        };
        let medians: serde_json::Map<String, serde_json::Value> = self
            .runtimes
            .iter()
            .map(|rt| (rt.name().to_string(), med(*rt)))
            .collect();
        let ratios: serde_json::Map<String, serde_json::Value> = self
            .pairs()
            .map(|(a, b, key, _)| {
                let per_phase: serde_json::Value = PHASES
                    .iter()
                    .map(|(name, pick)| {
                        let r = ratio(self.median(*a, *pick), self.median(*b, *pick));
                        (name.to_string(), serde_json::json!(r))
                    })
                    .collect();
                (key.to_string(), per_phase)
            })
            .collect();
        serde_json::json!({
            "backend": self.backend,
            "template_build": self.template.as_ref().map(TemplateBuild::to_json),
            "median_ms": medians,
            "ratios": ratios,
            "ratio_total": ratio(self.median(self.default_zvm(), Phases::total), self.median(Runtime::Runc, Phases::total)),
            "goal_total_with_templates_ms": GOAL_TEMPLATE_TOTAL_MS,
            "goal_total_with_templates_met": self.template_goal(),
            "checkpoint": self.checkpoint.as_ref().map(CheckpointReport::to_json),
            "failures": self.failures,
            "runs": self.runs.iter().map(|r| serde_json::json!({
                "runtime": r.runtime.name(),
                "run": r.run,
                "create_ms": r.phases.create.map(ms),
                "start_ms": r.phases.start.map(ms),
                "wait_ms": r.phases.wait.map(ms),
                "delete_ms": r.phases.delete.map(ms),
                "vm_start": r.vm_start.as_ref().map(VmStart::describe),
                "error": r.error,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Prints one run's line.
pub fn print_run(r: &OciRun) {
    let f = |d: Option<Duration>| fmt_opt(d.map(ms), 1);
    let p = &r.phases;
    let booted = match &r.vm_start {
        Some(VmStart::Restored(_)) => "  (restored)",
        Some(VmStart::Booted(_)) => "  (booted)",
        _ => "",
    };
    println!(
        "run {:>2} {:<22}  create {:>9} ms  start {:>8} ms  wait {:>8} ms  delete {:>8} ms  total {:>9} ms{booted}{}",
        r.run,
        r.runtime.label(),
        f(p.create),
        f(p.start),
        f(p.wait),
        f(p.delete),
        f(p.total()),
        r.error.as_ref().map(|e| format!("  FAILED: {e}")).unwrap_or_default()
    );
}

/// Prints the medians, the ratios and the goals.
pub fn print_summary(report: &OciReport) {
    println!();
    if let Some(t) = &report.template {
        println!("{}", t.describe());
    }
    let mut head = String::from("| median |");
    for rt in &report.runtimes {
        head.push_str(&format!(" {} |", rt.label()));
    }
    for (_, _, _, title) in report.pairs() {
        head.push_str(&format!(" {title} |"));
    }
    println!("{head}");
    println!(
        "|---|{}",
        "---|".repeat(report.runtimes.len() + report.pairs().count())
    );
    for (name, pick) in PHASES {
        let mut row = format!("| {name} |");
        for rt in &report.runtimes {
            row.push_str(&format!(" {} ms |", fmt_opt(report.median(*rt, pick), 1)));
        }
        for (a, b, _, _) in report.pairs() {
            let r = ratio(report.median(*a, pick), report.median(*b, pick));
            row.push_str(&format!(" {} |", fmt_opt(r, 2)));
        }
        println!("{row}");
    }
    let booted = report
        .runs
        .iter()
        .filter(|r| r.runtime == Runtime::ZvmTemplates)
        .filter(|r| r.vm_start.as_ref().is_some_and(VmStart::booted))
        .count();
    if booted > 0 {
        println!("WARNING: {booted} run(s) with templates booted a kernel (see their sandbox.log)");
    }
    if report.backend != "vm" {
        println!(
            "(backend {}: the test double without a VM; the goals apply to the vm backend)",
            report.backend
        );
        return;
    }
    if report.runtimes.contains(&Runtime::ZvmTemplates) {
        println!(
            "goal create + start + wait + delete <= {GOAL_TEMPLATE_TOTAL_MS} ms with templates: {} ({} ms)",
            verdict(report.template_goal()),
            fmt_opt(report.median(Runtime::ZvmTemplates, Phases::total), 1)
        );
    }
    let zvm = report.default_zvm();
    let total = ratio(
        report.median(zvm, Phases::total),
        report.median(Runtime::Runc, Phases::total),
    );
    println!(
        "goal {}/runc total <= {GOAL_RATIO}: {}",
        zvm.label(),
        verdict(total.map(|t| t <= GOAL_RATIO))
    );
    let started = report.median(zvm, |p| Some(p.create? + p.start?));
    println!(
        "goal {} create + start below Kata's published {KATA_BOOT_TO_WORKLOAD_MS} ms boot-to-workload: {}",
        zvm.label(),
        verdict(started.map(|s| s < KATA_BOOT_TO_WORKLOAD_MS))
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(rt: Runtime, create: u64) -> OciRun {
        OciRun {
            runtime: rt,
            run: 1,
            phases: Phases {
                create: Some(Duration::from_millis(create)),
                start: Some(Duration::from_millis(1)),
                wait: Some(Duration::from_millis(1)),
                delete: Some(Duration::from_millis(1)),
            },
            vm_start: None,
            error: None,
        }
    }

    fn report(runtimes: Vec<Runtime>, runs: Vec<OciRun>) -> OciReport {
        OciReport {
            runs,
            failures: 0,
            backend: "vm".into(),
            runtimes,
            template: None,
            checkpoint: None,
        }
    }

    #[test]
    fn phases_total_and_medians() {
        let r = report(
            vec![Runtime::ZvmBoot, Runtime::Runc],
            vec![
                run(Runtime::ZvmBoot, 10),
                run(Runtime::ZvmBoot, 30),
                run(Runtime::Runc, 2),
                run(Runtime::Runc, 4),
            ],
        );
        assert_eq!(r.median(Runtime::ZvmBoot, Phases::total), Some(23.0));
        assert_eq!(r.median(Runtime::Runc, Phases::total), Some(6.0));
        assert_eq!(r.median(Runtime::ZvmTemplates, Phases::total), None);
        assert_eq!(Phases::default().total(), None);
        let j = r.to_json();
        assert_eq!(j["median_ms"]["runc"]["create"], 3.0);
        assert!((j["ratio_total"].as_f64().unwrap() - 23.0 / 6.0).abs() < 1e-9);
        // Only the pair both of whose runtimes ran.
        assert!(j["ratios"].get("no_templates_to_runc").is_some());
        assert!(j["ratios"].get("templates_to_runc").is_none());
        assert!(j["goal_total_with_templates_met"].is_null());
    }

    #[test]
    fn three_runtimes_give_three_ratios_and_the_template_goal() {
        let mut with_start = run(Runtime::ZvmTemplates, 997);
        with_start.vm_start = Some(VmStart::Restored("t1".into()));
        let r = report(
            vec![Runtime::ZvmTemplates, Runtime::ZvmBoot, Runtime::Runc],
            vec![
                with_start,
                run(Runtime::ZvmBoot, 59_997),
                run(Runtime::Runc, 37),
            ],
        );
        let j = r.to_json();
        assert_eq!(j["median_ms"]["zvm-runc-templates"]["total"], 1000.0);
        assert_eq!(
            j["ratios"]["templates_to_no_templates"]["total"],
            1000.0 / 60_000.0
        );
        assert_eq!(j["ratios"]["templates_to_runc"]["total"], 25.0);
        assert_eq!(j["ratios"]["no_templates_to_runc"]["total"], 1500.0);
        assert_eq!(j["ratio_total"], 25.0);
        assert_eq!(j["goal_total_with_templates_met"], true);
        assert_eq!(j["runs"][0]["vm_start"], "restored from template t1");
        assert_eq!(r.template_goal(), Some(true));
    }
}
