//! Every KVM counter of the device benchmarks, broken down: per MiB moved, per second
//! while the device worked, and per second of an idle window the guest spends asleep
//! before its I/O. The idle rate is what the guest costs the host with nothing to do
//! (timer ticks, housekeeping); what a counter adds above it while data moves is what the
//! I/O (device and guest stack) costs. zvm and QEMU side by side, from the same run.
//! Beside KVM's counters go the guest's own interrupt counts per source ([`guest_irqs`]),
//! named `irq ...`.

use crate::devices::PhaseRun;
use crate::guest_irqs::{self, DUMP};
use crate::measure::{fmt_opt, median, ratio};
use std::collections::{BTreeMap, BTreeSet};

/// Markers around the idle window.
pub const IDLE_MARKERS: [&str; 2] = ["IDLE-START", "IDLE-END"];
/// Markers around the I/O.
pub const IO_MARKERS: [&str; 2] = ["BENCH-START", "BENCH-END"];
/// Marker after the last dump of the guest's interrupt counts.
pub const IRQS_END: &str = "IRQS-END";
/// Length of the idle window, seconds.
pub const IDLE_SECS: u32 = 10;

/// The start of the guest script: a dump of its interrupt counts, the idle window (the
/// markers around a sleep) and a second dump.
pub fn idle_script() -> String {
    format!(
        "{DUMP}\necho {}\nsleep {IDLE_SECS}\necho {}\n{DUMP}\n",
        IDLE_MARKERS[0], IDLE_MARKERS[1]
    )
}

/// The end of the guest script, after the I/O: the last dump and [`IRQS_END`].
pub fn closing_script() -> String {
    format!("{DUMP}\necho {IRQS_END}\n")
}

/// Counter name to a rate.
pub type Rates = BTreeMap<String, f64>;

/// One run's counters as rates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CounterRates {
    /// Growth while the device worked, per MiB moved.
    pub per_mib: Rates,
    /// Growth while the device worked, per second.
    pub io_per_s: Rates,
    /// Growth in the idle window, per second.
    pub idle_per_s: Rates,
}

fn scaled(growth: Option<Rates>, by: f64) -> Rates {
    growth
        .filter(|_| by > 0.0)
        .map(|g| g.into_iter().map(|(k, v)| (k, v / by)).collect())
        .unwrap_or_default()
}

impl CounterRates {
    /// The rates of `phase`: markers `idle` bound the idle window, markers `io` the I/O,
    /// which moved `mib` MiB.
    /// The guest's interrupt counts are taken from the dumps [`idle_script`] and
    /// [`closing_script`] print around [`IDLE_MARKERS`] and [`IO_MARKERS`].
    pub fn of(phase: &PhaseRun, idle: (usize, usize), io: (usize, usize), mib: f64) -> Self {
        let mut io_growth = phase.kvm_growth(io.0, io.1);
        let mut idle_growth = phase.kvm_growth(idle.0, idle.1);
        let lines = &phase.out.lines;
        let dumps = (
            guest_irqs::dump_between(lines, None, IDLE_MARKERS[0]),
            guest_irqs::dump_between(lines, Some(IDLE_MARKERS[1]), IO_MARKERS[0]),
            guest_irqs::dump_between(lines, Some(IO_MARKERS[1]), IRQS_END),
        );
        if let (Some(d0), Some(d1), Some(d2)) = dumps {
            if let Some(g) = idle_growth.as_mut() {
                g.extend(guest_irqs::growth(&d0, &d1));
            }
            if let Some(g) = io_growth.as_mut() {
                g.extend(guest_irqs::growth(&d1, &d2));
            }
        }
        let io_secs = phase.secs_between(io.0, io.1).unwrap_or(0.0);
        let idle_secs = phase.secs_between(idle.0, idle.1).unwrap_or(0.0);
        CounterRates {
            per_mib: scaled(io_growth.clone(), mib),
            io_per_s: scaled(io_growth, io_secs),
            idle_per_s: scaled(idle_growth, idle_secs),
        }
    }

    /// Per MiB above what the idle rate would have given over the I/O window's time:
    /// the part of `name` the I/O added.
    fn above_idle_per_mib(&self, name: &str) -> Option<f64> {
        let (per_mib, io, idle) = (
            *self.per_mib.get(name)?,
            *self.io_per_s.get(name)?,
            *self.idle_per_s.get(name)?,
        );
        // per_mib / io = seconds per MiB.
        (io > 0.0).then(|| per_mib - idle * per_mib / io)
    }
}

/// The medians, per counter, of each VMM's runs.
#[derive(Debug, Clone, Default)]
pub struct Breakdown {
    /// VMM label to its median rates, in the order given.
    pub vmms: Vec<(String, CounterRates)>,
}

fn median_of(runs: &[&CounterRates], pick: fn(&CounterRates) -> &Rates) -> Rates {
    let names: BTreeSet<&String> = runs.iter().flat_map(|r| pick(r).keys()).collect();
    names
        .into_iter()
        .filter_map(|n| {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|r| pick(r).get(n).copied())
                .collect();
            Some((n.clone(), median(&values)?))
        })
        .collect()
}

impl Breakdown {
    /// Medians of `runs` (VMM label, rates) for each label of `labels`.
    pub fn of(runs: &[(&str, &CounterRates)], labels: &[&str]) -> Self {
        let vmms = labels
            .iter()
            .map(|label| {
                let mine: Vec<&CounterRates> = runs
                    .iter()
                    .filter(|(l, _)| l == label)
                    .map(|(_, r)| *r)
                    .collect();
                let rates = CounterRates {
                    per_mib: median_of(&mine, |r| &r.per_mib),
                    io_per_s: median_of(&mine, |r| &r.io_per_s),
                    idle_per_s: median_of(&mine, |r| &r.idle_per_s),
                };
                (label.to_string(), rates)
            })
            .collect();
        Breakdown { vmms }
    }

    fn get(&self, label: &str) -> Option<&CounterRates> {
        self.vmms.iter().find(|(l, _)| l == label).map(|(_, r)| r)
    }

    /// Counters some VMM saw grow (in either window), and those none did.
    fn names(&self) -> (Vec<String>, Vec<String>) {
        let all: BTreeSet<&String> = self
            .vmms
            .iter()
            .flat_map(|(_, r)| r.per_mib.keys().chain(r.idle_per_s.keys()))
            .collect();
        all.into_iter().cloned().partition(|n| {
            self.vmms.iter().any(|(_, r)| {
                r.per_mib.get(n).is_some_and(|v| *v > 0.0)
                    || r.idle_per_s.get(n).is_some_and(|v| *v > 0.0)
            })
        })
    }

    /// Prints the table of `subject` against `peer`.
    pub fn print(&self, subject: &str, peer: &str) {
        let (Some(s), Some(p)) = (self.get(subject), self.get(peer)) else {
            return;
        };
        let (grown, zero) = self.names();
        println!();
        println!("KVM counters, {subject} vs {peer} (medians; idle: {IDLE_SECS} s asleep before the I/O)");
        println!(
            "{:<34}  {:>9} {:>9} {:>6}  {:>8} {:>8}  {:>8} {:>8}  {:>9} {:>9}",
            "counter", "per MiB", "", "ratio", "idle/s", "", "I/O /s", "", "+idle/MiB", ""
        );
        println!(
            "{:<34}  {:>9} {:>9} {:>6}  {:>8} {:>8}  {:>8} {:>8}  {:>9} {:>9}",
            "", subject, peer, "", subject, peer, subject, peer, subject, peer
        );
        for n in &grown {
            let g = |r: &Rates| r.get(n).copied();
            println!(
                "{:<34}  {:>9} {:>9} {:>6}  {:>8} {:>8}  {:>8} {:>8}  {:>9} {:>9}",
                n,
                fmt_opt(g(&s.per_mib), 1),
                fmt_opt(g(&p.per_mib), 1),
                fmt_opt(ratio(g(&s.per_mib), g(&p.per_mib)), 2),
                fmt_opt(g(&s.idle_per_s), 1),
                fmt_opt(g(&p.idle_per_s), 1),
                fmt_opt(g(&s.io_per_s), 1),
                fmt_opt(g(&p.io_per_s), 1),
                fmt_opt(s.above_idle_per_mib(n), 1),
                fmt_opt(p.above_idle_per_mib(n), 1),
            );
        }
        if !zero.is_empty() {
            println!("(no growth in either window: {})", zero.join(", "));
        }
        println!("+idle/MiB: per MiB above the idle rate over the I/O window's time");
    }

    /// As JSON: per VMM, the three rate maps.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.vmms
                .iter()
                .map(|(l, r)| {
                    (
                        l.clone(),
                        serde_json::json!({"per_mib": r.per_mib, "io_per_s": r.io_per_s,
                            "idle_per_s": r.idle_per_s}),
                    )
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(per_mib: f64, io: f64, idle: f64) -> CounterRates {
        let one = |v: f64| Rates::from([("exits".to_string(), v)]);
        CounterRates {
            per_mib: one(per_mib),
            io_per_s: one(io),
            idle_per_s: one(idle),
        }
    }

    #[test]
    fn above_idle_takes_out_what_the_idle_rate_gives_in_the_same_time() {
        // 100 exits/MiB at 1000/s: 0.1 s per MiB, of which idle (200/s) gives 20.
        let r = rates(100.0, 1000.0, 200.0);
        assert_eq!(r.above_idle_per_mib("exits"), Some(80.0));
        assert_eq!(r.above_idle_per_mib("halt_exits"), None);
        assert_eq!(rates(0.0, 0.0, 5.0).above_idle_per_mib("exits"), None);
    }

    #[test]
    fn medians_per_label_and_counter() {
        let (a, b, c) = (
            rates(1.0, 10.0, 0.0),
            rates(3.0, 30.0, 2.0),
            rates(7.0, 1.0, 1.0),
        );
        let d = Breakdown::of(&[("zvm", &a), ("qemu", &c), ("zvm", &b)], &["zvm", "qemu"]);
        let zvm = d.get("zvm").expect("zvm");
        assert_eq!(zvm.per_mib.get("exits"), Some(&2.0));
        assert_eq!(zvm.io_per_s.get("exits"), Some(&20.0));
        assert_eq!(
            d.get("qemu").and_then(|q| q.per_mib.get("exits")),
            Some(&7.0)
        );
        assert_eq!(d.names(), (vec!["exits".to_string()], vec![]));
        let json = d.to_json();
        assert_eq!(json["qemu"]["idle_per_s"]["exits"], 1.0);
    }

    #[test]
    fn idle_script_sleeps_between_its_markers() {
        let s = idle_script();
        assert_eq!(
            s,
            "cat /proc/interrupts\necho IDLE-START\nsleep 10\necho IDLE-END\ncat /proc/interrupts\n"
        );
        assert_eq!(closing_script(), "cat /proc/interrupts\necho IRQS-END\n");
        assert_eq!(
            scaled(Some(Rates::from([("x".into(), 4.0)])), 2.0).get("x"),
            Some(&2.0)
        );
        assert!(scaled(Some(Rates::new()), 0.0).is_empty());
    }
}
