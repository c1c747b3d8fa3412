//! The jail's cost on VM start: spawn -> first guest output of the tiny guest under
//! `zvm run` and `zvm run --jail on`, interleaved in the same run (issue #16). The
//! difference is what splitting the process, the cgroup, the namespaces, the new root and
//! the privilege drop add before the guest's first instruction.

use crate::error::Result;
use crate::measure::{fmt_opt, median, ms, run_watched, Watch};
use crate::vmms::{GuestSpec, Launcher, Vmm};
use std::time::Duration;

/// The medians of one jail-cost measurement, ms.
#[derive(Debug, Clone, Default)]
pub struct JailCost {
    /// `zvm run`.
    pub unjailed_ms: Option<f64>,
    /// `zvm run --jail on`.
    pub jailed_ms: Option<f64>,
    /// Why it was not measured (the host cannot make jails).
    pub skipped: Option<String>,
}

impl JailCost {
    /// The results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "median_ms": {"unjailed": self.unjailed_ms, "jailed": self.jailed_ms},
            "jail_cost_ms": self.jailed_ms.zip(self.unjailed_ms).map(|(j, u)| j - u),
            "skipped": self.skipped,
        })
    }
}

/// Runs `guest` under zvm `runs` times each way, alternating, and prints the medians.
pub fn run(
    launcher: &Launcher,
    guest: &GuestSpec,
    runs: usize,
    timeout: Duration,
) -> Result<JailCost> {
    println!();
    println!(
        "== jail cost: spawn -> first guest output, zvm run vs zvm run --jail on, {runs} runs each"
    );
    if let Err(e) = jail::check_host() {
        println!("   skipped: {e}");
        return Ok(JailCost {
            skipped: Some(e.to_string()),
            ..JailCost::default()
        });
    }
    let (mut unjailed, mut jailed) = (Vec::new(), Vec::new());
    for i in 0..runs {
        for with_jail in [i % 2 == 0, i % 2 != 0] {
            let mut cmd = launcher.command(Vmm::Zvm, guest);
            if with_jail {
                cmd.args(["--jail", "on"]);
            }
            let watch = Watch {
                markers: &["!"],
                sample_at: None,
                timeout,
            };
            let out = run_watched(&mut cmd, &watch, |_| ())?;
            match out.marks.first().copied().flatten() {
                Some(t) if with_jail => jailed.push(ms(t)),
                Some(t) => unjailed.push(ms(t)),
                None => eprintln!(
                    "warning: run {} ({}): no '!' on the console; {}",
                    i + 1,
                    if with_jail { "jailed" } else { "unjailed" },
                    out.tail(10)
                ),
            }
        }
    }
    let cost = JailCost {
        unjailed_ms: median(&unjailed),
        jailed_ms: median(&jailed),
        skipped: None,
    };
    println!(
        "{:<26}  {:>10}  {:>10}  {:>10}",
        "median", "unjailed", "jailed", "jail cost"
    );
    println!(
        "{:<26}  {:>10}  {:>10}  {:>10}",
        "spawn -> first output, ms",
        fmt_opt(cost.unjailed_ms, 2),
        fmt_opt(cost.jailed_ms, 2),
        fmt_opt(cost.jailed_ms.zip(cost.unjailed_ms).map(|(j, u)| j - u), 2)
    );
    Ok(cost)
}
