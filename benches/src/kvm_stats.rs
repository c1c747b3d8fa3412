//! KVM's own per-vCPU counters (`exits`, `irq_injections`, ...) of a running VMM, summed
//! over its vCPUs, as each VMM reports them: zvm in its metrics lines (`zvm run --metrics
//! FILE`, a line written on SIGUSR1), QEMU through QMP `query-stats`. Only the process
//! that owns a VM can read its counters, so each VMM is asked. They count what a device
//! design costs the host, however slowly the guest runs, so zvm and QEMU compare fairly.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Counter name to total over the vCPUs.
pub type KvmCounters = BTreeMap<String, u64>;

/// How to ask a VMM for its counters.
#[derive(Debug, Clone)]
pub enum KvmProbe {
    /// zvm started with `--metrics FILE`: SIGUSR1 makes it write a line.
    Zvm {
        /// The metrics file.
        metrics: PathBuf,
    },
    /// QEMU started with `-qmp unix:SOCKET,server=on,wait=off`.
    Qemu {
        /// The QMP socket.
        qmp: PathBuf,
    },
}

/// The `kvm` object of a zvm metrics line.
pub fn parse_zvm_line(line: &str) -> Option<KvmCounters> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let kvm = v.get("kvm")?.as_object()?;
    let counters: KvmCounters = kvm
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .collect();
    (!counters.is_empty()).then_some(counters)
}

/// The vCPU counters of a QMP `query-stats` answer (`{"return": [{"provider": "kvm",
/// "stats": [{"name": .., "value": ..}]}, ...]}`, one entry per vCPU), summed; histogram
/// values (lists) are left out.
pub fn parse_qmp_stats(answer: &serde_json::Value) -> Option<KvmCounters> {
    let mut sums = KvmCounters::new();
    for vcpu in answer.get("return")?.as_array()? {
        if vcpu.get("provider").and_then(|p| p.as_str()) != Some("kvm") {
            continue;
        }
        for stat in vcpu.get("stats")?.as_array()? {
            let (Some(name), Some(value)) = (
                stat.get("name").and_then(|n| n.as_str()),
                stat.get("value").and_then(|v| v.as_u64()),
            ) else {
                continue;
            };
            *sums.entry(name.to_string()).or_default() += value;
        }
    }
    (!sums.is_empty()).then_some(sums)
}

fn last_line(path: &Path) -> (usize, Option<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    (lines.len(), lines.last().map(|l| l.to_string()))
}

fn zvm_counters(pid: u32, metrics: &Path) -> Option<KvmCounters> {
    let (before, _) = last_line(metrics);
    // SAFETY: sending a signal to the child we spawned.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        if let (n, Some(line)) = last_line(metrics) {
            if n > before {
                return parse_zvm_line(&line);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn qmp_counters(socket: &Path) -> Option<KvmCounters> {
    let stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).ok()?; // the greeting
    let mut ask = |command: &str| -> Option<serde_json::Value> {
        writer.write_all(command.as_bytes()).ok()?;
        loop {
            line.clear();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&line).ok()?;
            // Asynchronous events come in between; the answer has "return" or "error".
            if v.get("return").is_some() || v.get("error").is_some() {
                return Some(v);
            }
        }
    };
    ask("{\"execute\":\"qmp_capabilities\"}\n")?;
    let answer = ask("{\"execute\":\"query-stats\",\"arguments\":{\"target\":\"vcpu\"}}\n")?;
    parse_qmp_stats(&answer)
}

impl KvmProbe {
    /// The counters of the VMM process `pid` now, if it could tell.
    pub fn sample(&self, pid: u32) -> Option<KvmCounters> {
        match self {
            KvmProbe::Zvm { metrics } => zvm_counters(pid, metrics),
            KvmProbe::Qemu { qmp } => qmp_counters(qmp),
        }
    }

    /// The arguments that make the VMM answer this probe.
    pub fn vmm_args(&self) -> Vec<String> {
        match self {
            KvmProbe::Zvm { metrics } => {
                vec!["--metrics".into(), metrics.display().to_string()]
            }
            KvmProbe::Qemu { qmp } => vec![
                "-qmp".into(),
                format!("unix:{},server=on,wait=off", qmp.display()),
            ],
        }
    }
}

/// How much `name` grew between two samples.
pub fn grew(a: &Option<KvmCounters>, b: &Option<KvmCounters>, name: &str) -> Option<f64> {
    let (a, b) = (a.as_ref()?.get(name)?, b.as_ref()?.get(name)?);
    Some(b.saturating_sub(*a) as f64)
}

/// How much every counter both samples have grew between them.
pub fn growth(a: &Option<KvmCounters>, b: &Option<KvmCounters>) -> Option<BTreeMap<String, f64>> {
    let (a, b) = (a.as_ref()?, b.as_ref()?);
    Some(
        b.iter()
            .filter_map(|(name, after)| {
                let before = a.get(name)?;
                Some((name.clone(), after.saturating_sub(*before) as f64))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zvm_only_exits() -> KvmCounters {
        KvmCounters::from([("exits".to_string(), 1)])
    }

    #[test]
    fn zvm_lines_and_qmp_answers_give_the_same_shape() {
        let zvm =
            parse_zvm_line(r#"{"vcpu":{"exit_hlt":1},"kvm":{"exits":10,"irq_injections":4}}"#)
                .expect("zvm");
        assert_eq!(zvm.get("exits"), Some(&10));
        assert_eq!(parse_zvm_line(r#"{"kvm":{}}"#), None);
        assert_eq!(parse_zvm_line("not json"), None);
        let qmp: serde_json::Value = serde_json::from_str(
            r#"{"return":[
              {"provider":"kvm","qom-path":"/machine/unattached/device[0]",
               "stats":[{"name":"exits","value":7},{"name":"halt_wait_hist","value":[1,2]}]},
              {"provider":"kvm","qom-path":"/machine/unattached/device[1]",
               "stats":[{"name":"exits","value":5},{"name":"irq_injections","value":3}]}]}"#,
        )
        .expect("json");
        let q = parse_qmp_stats(&qmp).expect("qmp");
        assert_eq!(q.get("exits"), Some(&12));
        assert_eq!(q.get("irq_injections"), Some(&3));
        assert!(!q.contains_key("halt_wait_hist"));
        assert_eq!(
            grew(&Some(zvm.clone()), &Some(q.clone()), "exits"),
            Some(2.0)
        );
        assert_eq!(grew(&Some(zvm.clone()), &None, "exits"), None);
        let g = growth(&Some(zvm), &Some(q)).expect("growth");
        assert_eq!(g.get("exits"), Some(&2.0));
        assert_eq!(
            g.get("irq_injections"),
            Some(&0.0),
            "a counter never shrinks"
        );
        assert_eq!(growth(&None, &Some(zvm_only_exits())), None);
    }
}
