//! API start-up and API-driven boot: how soon `zvm --api-sock` answers its first request
//! (and the CPU time it used to get there), and InstanceStart to the guest's userspace
//! marker, beside `zvm run`'s spawn to the same marker, booting the same guest.
//!
//! Readiness: the clock starts just before `spawn()`; the benchmark connects to the socket
//! every 100 µs and sends `GET /` until an answer arrives. At that moment it reads the
//! process's CPU time twice: user+sys from `/proc/PID/stat` (clock ticks, usually 10 ms)
//! and its CPU time from the kernel's process CPU clock (`clock_getcpuclockid`, ns).
//! Firecracker's published bound for its API start-up is 8 ms of CPU time.

use crate::boot::{prepare_guest, BootConfig, USERSPACE_MARKER};
use crate::error::{BenchError, Result};
use crate::measure::{fmt_opt, median, ms, ratio, run_watched, LineScanner, Watch};
use crate::vmms::{GuestSpec, Launcher, Vmm};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Firecracker's published bound on the CPU time to an answering API socket, ms.
pub const FIRECRACKER_CPU_BOUND_MS: f64 = 8.0;
/// Longest wait for the socket to answer.
const READY_LIMIT: Duration = Duration::from_secs(10);

/// Settings of the API benchmark.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Readiness-only runs (spawn, first answer, kill).
    pub ready_runs: usize,
    /// Boots per mode (`--api-sock` and `zvm run`).
    pub boot: BootConfig,
}

/// One readiness measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    /// Spawn to the first answer.
    pub ready: Option<Duration>,
    /// CPU time (user+sys, /proc/PID/stat) then, ms.
    pub cpu_stat_ms: Option<f64>,
    /// CPU time (process CPU clock) then, ms.
    pub cpu_clock_ms: Option<f64>,
}

/// One boot in each mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootPair {
    /// API mode: InstanceStart to the marker.
    pub start_to_marker: Option<Duration>,
    /// API mode: spawn to the marker (configuration requests included).
    pub api_spawn_to_marker: Option<Duration>,
    /// `zvm run`: spawn to the marker.
    pub run_spawn_to_marker: Option<Duration>,
}

/// Results of the API benchmark.
#[derive(Debug, Clone, Default)]
pub struct ApiReport {
    /// Readiness runs (the boot runs' readiness included).
    pub ready: Vec<Ready>,
    /// Boots.
    pub boots: Vec<BootPair>,
    /// Runs that did not reach their marker or answer.
    pub failures: usize,
}

/// Medians of the report.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiMedians {
    /// Spawn to the first answer, ms.
    pub ready_ms: Option<f64>,
    /// CPU time then (stat), ms.
    pub cpu_stat_ms: Option<f64>,
    /// CPU time then (process CPU clock), ms.
    pub cpu_clock_ms: Option<f64>,
    /// InstanceStart to the marker, ms.
    pub start_to_marker_ms: Option<f64>,
    /// API mode spawn to the marker, ms.
    pub api_spawn_to_marker_ms: Option<f64>,
    /// `zvm run` spawn to the marker, ms.
    pub run_spawn_to_marker_ms: Option<f64>,
}

impl ApiReport {
    /// The medians.
    pub fn medians(&self) -> ApiMedians {
        let r = |f: &dyn Fn(&Ready) -> Option<f64>| {
            median(&self.ready.iter().filter_map(f).collect::<Vec<_>>())
        };
        let b = |f: &dyn Fn(&BootPair) -> Option<Duration>| {
            median(
                &self
                    .boots
                    .iter()
                    .filter_map(|x| f(x).map(ms))
                    .collect::<Vec<_>>(),
            )
        };
        ApiMedians {
            ready_ms: r(&|x| x.ready.map(ms)),
            cpu_stat_ms: r(&|x| x.cpu_stat_ms),
            cpu_clock_ms: r(&|x| x.cpu_clock_ms),
            start_to_marker_ms: b(&|x| x.start_to_marker),
            api_spawn_to_marker_ms: b(&|x| x.api_spawn_to_marker),
            run_spawn_to_marker_ms: b(&|x| x.run_spawn_to_marker),
        }
    }

    /// The results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let m = self.medians();
        let ready: Vec<_> = self
            .ready
            .iter()
            .map(|r| serde_json::json!({"ready_ms": r.ready.map(ms), "cpu_stat_ms": r.cpu_stat_ms, "cpu_clock_ms": r.cpu_clock_ms}))
            .collect();
        let boots: Vec<_> = self
            .boots
            .iter()
            .map(|b| {
                serde_json::json!({
                    "api_start_to_marker_ms": b.start_to_marker.map(ms),
                    "api_spawn_to_marker_ms": b.api_spawn_to_marker.map(ms),
                    "run_spawn_to_marker_ms": b.run_spawn_to_marker.map(ms),
                })
            })
            .collect();
        serde_json::json!({
            "ready": ready,
            "boots": boots,
            "median": {
                "ready_ms": m.ready_ms, "cpu_stat_ms": m.cpu_stat_ms, "cpu_clock_ms": m.cpu_clock_ms,
                "api_start_to_marker_ms": m.start_to_marker_ms, "api_spawn_to_marker_ms": m.api_spawn_to_marker_ms,
                "run_spawn_to_marker_ms": m.run_spawn_to_marker_ms,
            },
            "ratio_api_start_to_marker_vs_run": ratio(m.start_to_marker_ms, m.run_spawn_to_marker_ms),
            "ratio_api_spawn_to_marker_vs_run": ratio(m.api_spawn_to_marker_ms, m.run_spawn_to_marker_ms),
            "failures": self.failures,
        })
    }
}

fn api_err(what: String) -> BenchError {
    BenchError::Spawn {
        program: "zvm --api-sock".into(),
        source: std::io::Error::other(what),
    }
}

/// CPU time of `pid` so far from /proc/PID/stat (utime + stime), ms.
pub fn cpu_stat_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&stat).map(|ticks| ticks as f64 * 1000.0 / clock_ticks_per_second())
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line; the command name may hold
/// spaces and parentheses, so fields are counted after its last ')'.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// CPU time `pid` has used so far, all its threads (live and ended), ms: the kernel's
/// process CPU clock (`clock_getcpuclockid` + `clock_gettime`), nanosecond-accurate where
/// `/proc/PID/stat` counts whole ticks and `/proc/PID/task/*/schedstat` reads zero on
/// kernels built or booted without scheduler statistics.
pub fn cpu_clock_ms(pid: u32) -> Option<f64> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid out-pointer for the call's duration.
    if unsafe { libc::clock_getcpuclockid(pid, &mut clock) } != 0 {
        return None;
    }
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid out-pointer; an invalid clock id is reported through the result.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return None;
    }
    Some(now.tv_sec as f64 * 1e3 + now.tv_nsec as f64 / 1e6)
}

/// Polls `sock` with `GET /` until it answers; returns the time since `start` and the
/// process's CPU time at that moment.
fn wait_ready(child: &mut Child, sock: &Path, start: Instant) -> Result<Ready> {
    let deadline = start + READY_LIMIT;
    loop {
        if let Ok(response) =
            api_server::client::request(sock, "GET", "/", None, Duration::from_secs(5))
        {
            let at = start.elapsed();
            let pid = child.id();
            let ready = Ready {
                ready: Some(at),
                cpu_stat_ms: cpu_stat_ms(pid),
                cpu_clock_ms: cpu_clock_ms(pid),
            };
            if response.status != 200 {
                return Err(api_err(format!("GET / answered {}", response.status)));
            }
            return Ok(ready);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(api_err(format!("exited ({status}) before answering")));
        }
        if Instant::now() > deadline {
            return Err(api_err(format!(
                "no answer on {} within {READY_LIMIT:?}",
                sock.display()
            )));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn spawn_api(zvm: &Path, sock: &Path, stdout: Stdio) -> Result<Child> {
    let _ = std::fs::remove_file(sock);
    Command::new(zvm)
        .args([
            "--api-sock".as_ref(),
            sock.as_os_str(),
            "--id".as_ref(),
            "bench".as_ref(),
        ])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            program: zvm.display().to_string(),
            source,
        })
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One readiness-only run.
fn ready_run(zvm: &Path, sock: &Path) -> Result<Ready> {
    let start = Instant::now();
    let mut child = spawn_api(zvm, sock, Stdio::null())?;
    let ready = wait_ready(&mut child, sock, start);
    stop(&mut child);
    ready
}

fn put(sock: &Path, path: &str, body: &serde_json::Value) -> Result<()> {
    let response = api_server::client::request(
        sock,
        "PUT",
        path,
        Some(body.to_string().as_bytes()),
        Duration::from_secs(30),
    )
    .map_err(|e| api_err(e.to_string()))?;
    if response.is_error() {
        return Err(api_err(format!(
            "PUT {path} answered {}: {}",
            response.status,
            response.text()
        )));
    }
    Ok(())
}

/// What one API-driven boot measured.
struct ApiBoot {
    ready: Ready,
    start_to_marker: Option<Duration>,
    spawn_to_marker: Option<Duration>,
    /// The last console lines, to show when the marker never came.
    tail: String,
}

/// One boot driven through the API: readiness, configuration, InstanceStart, marker.
fn api_boot(zvm: &Path, sock: &Path, guest: &GuestSpec, timeout: Duration) -> Result<ApiBoot> {
    let start = Instant::now();
    let mut child = spawn_api(zvm, sock, Stdio::piped())?;
    let Some(mut out) = child.stdout.take() else {
        stop(&mut child);
        return Err(api_err("no stdout pipe".into()));
    };
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut scanner = LineScanner::new(&[USERSPACE_MARKER]);
        let mut lines: Vec<String> = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            let (done, found) = scanner.feed(&buf[..n]);
            if !found.is_empty() {
                let _ = tx.send(Instant::now());
            }
            lines.extend(done);
        }
        lines.extend(scanner.rest());
        lines[lines.len().saturating_sub(15)..].join("\n")
    });
    let result = (|| {
        let ready = wait_ready(&mut child, sock, start)?;
        let mut boot =
            serde_json::json!({"kernel_image_path": guest.kernel, "boot_args": guest.cmdline});
        if let Some(initrd) = &guest.initrd {
            boot["initrd_path"] = serde_json::json!(initrd);
        }
        put(sock, "/boot-source", &boot)?;
        put(
            sock,
            "/machine-config",
            &serde_json::json!({"vcpu_count": guest.cpus, "mem_size_mib": guest.mem_mib}),
        )?;
        let started = Instant::now();
        put(
            sock,
            "/actions",
            &serde_json::json!({"action_type": "InstanceStart"}),
        )?;
        let marker = rx.recv_timeout(timeout).ok();
        Ok((
            ready,
            marker.map(|at| at - started),
            marker.map(|at| at - start),
        ))
    })();
    stop(&mut child);
    let tail = reader.join().unwrap_or_default();
    let _ = std::fs::remove_file(sock);
    result.map(|(ready, start_to_marker, spawn_to_marker)| ApiBoot {
        ready,
        start_to_marker,
        spawn_to_marker,
        tail,
    })
}

fn print_summary(report: &ApiReport) {
    let m = report.medians();
    println!();
    println!(
        "{:<44}  {:>14}  {:>12}  {:>8}  note",
        "median", "zvm --api-sock", "zvm run", "api/run"
    );
    let row = |name: &str, a: Option<f64>, b: Option<f64>, d: usize, note: &str| {
        println!(
            "{name:<44}  {:>14}  {:>12}  {:>8}  {note}",
            fmt_opt(a, d),
            fmt_opt(b, d),
            fmt_opt(ratio(a, b), 3)
        );
    };
    row("spawn -> API answers GET /, ms", m.ready_ms, None, 2, "");
    let verdict = match m.cpu_clock_ms {
        Some(v) if v <= FIRECRACKER_CPU_BOUND_MS => "within Firecracker's 8 ms",
        Some(_) => "ABOVE Firecracker's 8 ms",
        None => "",
    };
    row(
        "  CPU then (process CPU clock), ms",
        m.cpu_clock_ms,
        None,
        2,
        verdict,
    );
    row(
        "  CPU then (/proc/PID/stat user+sys), ms",
        m.cpu_stat_ms,
        None,
        1,
        "clock-tick resolution",
    );
    row(
        "InstanceStart | spawn (run) -> marker, ms",
        m.start_to_marker_ms,
        m.run_spawn_to_marker_ms,
        1,
        "",
    );
    row(
        "spawn -> marker (API: config included), ms",
        m.api_spawn_to_marker_ms,
        m.run_spawn_to_marker_ms,
        1,
        "",
    );
}

/// Runs the benchmark: readiness runs, then boots in both modes, interleaved.
pub fn run(launcher: &Launcher, cfg: &ApiConfig, dir: &Path) -> Result<ApiReport> {
    let sock: PathBuf = dir.join("bench-api.sock");
    let mut report = ApiReport::default();
    println!(
        "== API start-up: {} readiness runs; API-driven boot vs zvm run: {} boot(s) each",
        cfg.ready_runs, cfg.boot.runs
    );
    println!(
        "   zvm {}; marker {USERSPACE_MARKER:?}",
        launcher.zvm.display()
    );
    for i in 0..cfg.ready_runs {
        match ready_run(&launcher.zvm, &sock) {
            Ok(r) => report.ready.push(r),
            Err(e) => {
                report.failures += 1;
                eprintln!("warning: readiness run {}: {e}", i + 1);
            }
        }
    }
    if cfg.boot.runs > 0 {
        let guest = prepare_guest(&cfg.boot, dir)?;
        println!(
            "   kernel {}; cmdline {:?}",
            guest.kernel.display(),
            guest.cmdline
        );
        println!(
            "{:>4}  {:>12}  {:>16}  {:>16}  {:>16}",
            "run", "ready ms", "api start->mark", "api spawn->mark", "run spawn->mark"
        );
        for i in 0..cfg.boot.runs {
            let mut pair = BootPair::default();
            match api_boot(&launcher.zvm, &sock, &guest, cfg.boot.timeout) {
                Ok(boot) => {
                    if boot.start_to_marker.is_none() {
                        eprintln!(
                            "warning: API boot {} missed the marker; console tail:\n{}",
                            i + 1,
                            boot.tail
                        );
                    }
                    report.ready.push(boot.ready);
                    pair.start_to_marker = boot.start_to_marker;
                    pair.api_spawn_to_marker = boot.spawn_to_marker;
                }
                Err(e) => eprintln!("warning: API boot {}: {e}", i + 1),
            }
            let watch = Watch {
                markers: &[USERSPACE_MARKER],
                sample_at: None,
                timeout: cfg.boot.timeout,
            };
            let out = run_watched(&mut launcher.command(Vmm::Zvm, &guest), &watch, |_| ())?;
            pair.run_spawn_to_marker = out.marks[0];
            if out.marks[0].is_none() {
                eprintln!(
                    "warning: zvm run {} missed the marker; {}",
                    i + 1,
                    out.tail(15)
                );
            }
            if pair.start_to_marker.is_none() || pair.run_spawn_to_marker.is_none() {
                report.failures += 1;
            }
            let ready = report.ready.last().and_then(|r| r.ready.map(ms));
            println!(
                "{:>4}  {:>12}  {:>16}  {:>16}  {:>16}",
                i + 1,
                fmt_opt(ready, 2),
                fmt_opt(pair.start_to_marker.map(ms), 1),
                fmt_opt(pair.api_spawn_to_marker.map(ms), 1),
                fmt_opt(pair.run_spawn_to_marker.map(ms), 1)
            );
            report.boots.push(pair);
        }
    }
    print_summary(&report);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_fields_are_found_after_the_command_name() {
        let stat =
            "1234 (zvm (api) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 7 3 0 0 20 0 2 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(10));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn this_process_has_cpu_time() {
        let pid = std::process::id();
        assert!(cpu_stat_ms(pid).is_some());
        assert!(cpu_clock_ms(pid).is_some_and(|ms| ms > 0.0));
        assert_eq!(cpu_clock_ms(u32::MAX), None);
    }

    #[test]
    fn medians_and_ratios() {
        let report = ApiReport {
            ready: vec![
                Ready {
                    ready: Some(Duration::from_millis(4)),
                    cpu_stat_ms: Some(0.0),
                    cpu_clock_ms: Some(3.0),
                },
                Ready {
                    ready: Some(Duration::from_millis(6)),
                    cpu_stat_ms: Some(10.0),
                    cpu_clock_ms: Some(5.0),
                },
            ],
            boots: vec![BootPair {
                start_to_marker: Some(Duration::from_millis(900)),
                api_spawn_to_marker: Some(Duration::from_millis(1000)),
                run_spawn_to_marker: Some(Duration::from_millis(1000)),
            }],
            failures: 0,
        };
        let m = report.medians();
        assert_eq!((m.ready_ms, m.cpu_clock_ms), (Some(5.0), Some(4.0)));
        let json = report.to_json();
        assert_eq!(json["ratio_api_start_to_marker_vs_run"], 0.9);
        assert_eq!(json["median"]["run_spawn_to_marker_ms"], 1000.0);
    }
}
