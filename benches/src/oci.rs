//! OCI runtime lifecycle: `create`, `start`, wait until `state` reports the container
//! stopped, `delete`, for a container running `/bin/true` (busybox-static), under `zvm-runc`
//! (every container a micro-VM) and runc (Debian's `runc` package) in the same run,
//! alternating. Both runtimes are driven only through their command lines, the same way.

use crate::error::{io_err, BenchError, Result};
use crate::measure::{fmt_opt, median, ms, ratio};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kata Containers' published boot-to-workload time, the bound the issue sets for
/// create + start.
pub const KATA_BOOT_TO_WORKLOAD_MS: f64 = 390.0;
/// The issue's goal for zvm-runc's total over runc's.
pub const GOAL_RATIO: f64 = 3.0;

/// Settings of the OCI benchmark.
#[derive(Debug, Clone)]
pub struct OciConfig {
    /// Runs per runtime.
    pub runs: usize,
    /// The zvm-runc binary.
    pub zvm_runc: PathBuf,
    /// The runc binary.
    pub runc: PathBuf,
    /// zvm-runc backend (`vm`; `host-process` is the test double, for checking the harness).
    pub backend: String,
    /// Time limit of one command or of the wait.
    pub timeout: Duration,
    /// busybox-static, copied into the bundle's rootfs.
    pub busybox: PathBuf,
}

/// Which runtime a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// zvm-runc.
    Zvm,
    /// runc.
    Runc,
}

impl Runtime {
    fn name(self) -> &'static str {
        match self {
            Runtime::Zvm => "zvm-runc",
            Runtime::Runc => "runc",
        }
    }
}

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
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// All runs.
#[derive(Debug, Clone)]
pub struct OciReport {
    /// Every run, in order.
    pub runs: Vec<OciRun>,
    /// Runs that failed.
    pub failures: usize,
    /// zvm-runc backend.
    pub backend: String,
}

type Pick = fn(&Phases) -> Option<Duration>;
const PHASES: [(&str, Pick); 6] = [
    ("create", |p| p.create),
    ("start", |p| p.start),
    ("wait", |p| p.wait),
    ("delete", |p| p.delete),
    ("create + start", |p| Some(p.create? + p.start?)),
    ("total", Phases::total),
];

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

    /// The results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let med = |rt| -> serde_json::Value {
            PHASES
                .iter()
                .map(|(name, pick)| (name.to_string(), serde_json::json!(self.median(rt, *pick))))
                .collect()
        };
        serde_json::json!({
            "backend": self.backend,
            "median_ms": {"zvm-runc": med(Runtime::Zvm), "runc": med(Runtime::Runc)},
            "ratio_total": ratio(self.median(Runtime::Zvm, Phases::total), self.median(Runtime::Runc, Phases::total)),
            "failures": self.failures,
            "runs": self.runs.iter().map(|r| serde_json::json!({
                "runtime": r.runtime.name(),
                "run": r.run,
                "create_ms": r.phases.create.map(ms),
                "start_ms": r.phases.start.map(ms),
                "wait_ms": r.phases.wait.map(ms),
                "delete_ms": r.phases.delete.map(ms),
                "error": r.error,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The config.json both runtimes run: runc's default spec with `/bin/true`, no terminal.
pub fn bench_config() -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/true"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        }
    })
}

/// Writes the bundle: rootfs with busybox as /bin/busybox, /bin/true and /bin/sh.
fn make_bundle(busybox: &Path, dir: &Path) -> Result<PathBuf> {
    let bundle = dir.join("oci-bundle");
    let bin = bundle.join("rootfs/bin");
    for d in [
        bin.clone(),
        bundle.join("rootfs/proc"),
        bundle.join("rootfs/dev"),
    ] {
        std::fs::create_dir_all(&d).map_err(io_err("create", &d))?;
    }
    std::fs::copy(busybox, bin.join("busybox")).map_err(io_err("copy", busybox))?;
    for name in ["true", "sh"] {
        let link = bin.join(name);
        std::os::unix::fs::symlink("busybox", &link).map_err(io_err("link", &link))?;
    }
    let config = bundle.join("config.json");
    std::fs::write(&config, bench_config().to_string()).map_err(io_err("write", &config))?;
    Ok(bundle)
}

/// Runs one runtime command with stdio on files (a created container inherits them);
/// kills it after `timeout`.
fn command(
    bin: &Path,
    env: &[(&str, &str)],
    root: &Path,
    args: &[&str],
    log: &Path,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => {
                return Err(format!(
                    "{} {} failed ({s}): {}",
                    bin.display(),
                    args.join(" "),
                    tail(log)
                ))
            }
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} {} timed out", bin.display(), args.join(" ")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// The `status` of a runtime's `state` output.
pub fn status_of(state_json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(state_json).ok()?;
    v.get("status")?.as_str().map(String::from)
}

/// Runs `state id` and returns the status.
fn state_status(
    bin: &Path,
    env: &[(&str, &str)],
    root: &Path,
    id: &str,
) -> std::result::Result<String, String> {
    let out = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(["state", id])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} state {id} failed: {}",
            bin.display(),
            err.trim()
        ));
    }
    status_of(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| "state printed no status".to_string())
}

/// One create/start/wait/delete cycle; the phases that completed even on error.
fn cycle(
    bin: &Path,
    env: &[(&str, &str)],
    root: &Path,
    bundle: &Path,
    id: &str,
    dir: &Path,
    timeout: Duration,
) -> (Phases, Option<String>) {
    let mut p = Phases::default();
    let log = dir.join(format!("{id}.log"));
    let pid_file = dir.join(format!("{id}.pid"));
    let (b, pf) = (
        bundle.to_string_lossy().into_owned(),
        pid_file.to_string_lossy().into_owned(),
    );
    let run = |args: &[&str]| command(bin, env, root, args, &log, timeout);
    let result = (|| {
        let t = Instant::now();
        run(&["create", "--bundle", &b, "--pid-file", &pf, id])?;
        p.create = Some(t.elapsed());
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .map_err(|e| e.to_string())?
            .trim()
            .parse()
            .map_err(|e| format!("pid file: {e}"))?;
        let t = Instant::now();
        run(&["start", id])?;
        p.start = Some(t.elapsed());
        let t = Instant::now();
        if pid <= 0 {
            return Err(format!("pid file holds {pid}"));
        }
        while state_status(bin, env, root, id)? != "stopped" {
            if t.elapsed() > timeout {
                return Err(format!(
                    "container {id} (pid {pid}) not stopped after {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        p.wait = Some(t.elapsed());
        let t = Instant::now();
        run(&["delete", id])?;
        p.delete = Some(t.elapsed());
        Ok(())
    })();
    match result {
        Ok(()) => (p, None),
        Err(e) => {
            let _ = command(bin, env, root, &["delete", "--force", id], &log, timeout);
            (p, Some(e))
        }
    }
}

fn print_run(r: &OciRun) {
    let f = |d: Option<Duration>| fmt_opt(d.map(ms), 1);
    let p = &r.phases;
    println!(
        "run {:>2} {:<8}  create {:>10} ms  start {:>8} ms  wait {:>8} ms  delete {:>8} ms  total {:>10} ms{}",
        r.run,
        r.runtime.name(),
        f(p.create),
        f(p.start),
        f(p.wait),
        f(p.delete),
        f(p.total()),
        r.error.as_ref().map(|e| format!("  FAILED: {e}")).unwrap_or_default()
    );
}

/// Runs the benchmark: `cfg.runs` cycles per runtime, alternating which goes first.
pub fn run(cfg: &OciConfig, dir: &Path) -> Result<OciReport> {
    for (what, path) in [
        ("zvm-runc binary", &cfg.zvm_runc),
        ("busybox-static", &cfg.busybox),
    ] {
        if !path.is_file() {
            return Err(BenchError::Missing {
                what,
                path: path.clone(),
                hint: "; see benches/README.md".into(),
            });
        }
    }
    let version = Command::new(&cfg.runc).arg("--version").output();
    let runc_version = match version {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        _ => {
            return Err(BenchError::Missing {
                what: "runc",
                path: cfg.runc.clone(),
                hint: "; install Debian's runc (scripts/install-deps.sh)".into(),
            })
        }
    };
    let bundle = make_bundle(&cfg.busybox, dir)?;
    let (zroot, rroot) = (dir.join("zvm-runc-root"), dir.join("runc-root"));
    let zenv: Vec<(&str, &str)> = vec![("ZVM_RUNC_BACKEND", cfg.backend.as_str())];
    println!("== OCI lifecycle: create + start + wait + delete of /bin/true (busybox-static), {} run(s) each", cfg.runs);
    println!(
        "   zvm-runc: {} (backend {}); runc: {} ({runc_version})",
        cfg.zvm_runc.display(),
        cfg.backend,
        cfg.runc.display()
    );
    let mut runs = Vec::new();
    for i in 1..=cfg.runs {
        let order = if i % 2 == 1 {
            [Runtime::Zvm, Runtime::Runc]
        } else {
            [Runtime::Runc, Runtime::Zvm]
        };
        for rt in order {
            let id = format!("bench-{}-{}-{i}", std::process::id(), rt.name());
            let (phases, error) = match rt {
                Runtime::Zvm => cycle(&cfg.zvm_runc, &zenv, &zroot, &bundle, &id, dir, cfg.timeout),
                Runtime::Runc => cycle(&cfg.runc, &[], &rroot, &bundle, &id, dir, cfg.timeout),
            };
            let r = OciRun {
                runtime: rt,
                run: i,
                phases,
                error,
            };
            print_run(&r);
            runs.push(r);
        }
    }
    let failures = runs.iter().filter(|r| r.error.is_some()).count();
    let report = OciReport {
        runs,
        failures,
        backend: cfg.backend.clone(),
    };
    print_summary(&report);
    Ok(report)
}

fn print_summary(report: &OciReport) {
    println!();
    println!(
        "| median | zvm-runc ({}) | runc | zvm-runc/runc |",
        report.backend
    );
    println!("|---|---|---|---|");
    for (name, pick) in PHASES {
        let (z, r) = (
            report.median(Runtime::Zvm, pick),
            report.median(Runtime::Runc, pick),
        );
        println!(
            "| {name} | {} ms | {} ms | {} |",
            fmt_opt(z, 1),
            fmt_opt(r, 1),
            fmt_opt(ratio(z, r), 2)
        );
    }
    if report.backend != "vm" {
        println!(
            "(backend {}: the test double without a VM; the goals apply to the vm backend)",
            report.backend
        );
        return;
    }
    let total = ratio(
        report.median(Runtime::Zvm, Phases::total),
        report.median(Runtime::Runc, Phases::total),
    );
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "not met",
        None => "no data",
    };
    println!(
        "goal zvm-runc/runc total <= {GOAL_RATIO}: {}",
        verdict(total.map(|t| t <= GOAL_RATIO))
    );
    let started = report.median(Runtime::Zvm, |p| Some(p.create? + p.start?));
    println!(
        "goal create + start below Kata's published {KATA_BOOT_TO_WORKLOAD_MS} ms boot-to-workload: {}",
        verdict(started.map(|s| s < KATA_BOOT_TO_WORKLOAD_MS))
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_config_runs_true_without_a_terminal() {
        let c = bench_config();
        assert_eq!(c["process"]["args"][0], "/bin/true");
        assert_eq!(c["process"]["terminal"], false);
        assert_eq!(c["root"]["path"], "rootfs");
    }

    #[test]
    fn phases_total_and_medians() {
        let p = |c: u64| Phases {
            create: Some(Duration::from_millis(c)),
            start: Some(Duration::from_millis(1)),
            wait: Some(Duration::from_millis(1)),
            delete: Some(Duration::from_millis(1)),
        };
        let run = |rt, c| OciRun {
            runtime: rt,
            run: 1,
            phases: p(c),
            error: None,
        };
        let report = OciReport {
            runs: vec![
                run(Runtime::Zvm, 10),
                run(Runtime::Zvm, 30),
                run(Runtime::Runc, 2),
                run(Runtime::Runc, 4),
            ],
            failures: 0,
            backend: "vm".into(),
        };
        assert_eq!(report.median(Runtime::Zvm, Phases::total), Some(23.0));
        assert_eq!(report.median(Runtime::Runc, Phases::total), Some(6.0));
        assert_eq!(Phases::default().total(), None);
        let j = report.to_json();
        assert_eq!(j["median_ms"]["runc"]["create"], 3.0);
        assert!((j["ratio_total"].as_f64().unwrap() - 23.0 / 6.0).abs() < 1e-9);
    }

    #[test]
    fn status_from_state_json() {
        assert_eq!(
            status_of(r#"{"id":"x","status":"stopped","pid":0}"#).as_deref(),
            Some("stopped")
        );
        assert_eq!(status_of("{}"), None);
        assert_eq!(status_of("garbage"), None);
    }
}
