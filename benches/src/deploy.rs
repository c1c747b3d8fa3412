//! Deploy-to-workload-output latency of the node daemon (issue #8): `zvm node serve` on
//! the host with a fresh state directory; a container flist (a static busybox, packed into
//! a `dir://` store by `zvm flist pack`) is deployed through the daemon's API, and the
//! clock runs from just before `POST /deployments` until `GET /deployments/NAME` shows the
//! entrypoint's marker in the console tail (polled every [`POLL`]).
//!
//! - **cold**: a new daemon with an empty flist cache (the flist and its blocks are fetched
//!   from the store, verified and cached; the root disk is built);
//! - **warm**: the next deployment of the same flist on that daemon (blocks from the cache;
//!   its own root disk is built again, as every deployment has its own).
//!
//! The peer, in the same run: the plain guest-init boot (the `boot` benchmark's guest) to
//! its userspace marker under QEMU `-M microvm` and under zvm: what booting a VM costs
//! before any deployment work.

use crate::boot::{prepare_guest, BootConfig, INIT_MARKER, USERSPACE_MARKER};
use crate::error::{io_err, BenchError, Result};
use crate::measure::{fmt_opt, median, ms, ratio, run_watched, Watch};
use crate::vmms::{Launcher, Vmm};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often the deployment is polled.
pub const POLL: Duration = Duration::from_millis(100);
/// Printed by the workload once it runs.
pub const MARKER: &str = "ZVM-DEPLOY-MARKER";

/// Settings of the deploy benchmark.
#[derive(Debug, Clone)]
pub struct DeployConfig {
    /// Runs (each: cold deploy, warm deploy, plain boot under QEMU and zvm).
    pub runs: usize,
    /// Guest kernel and init (default: the build scripts).
    pub guest: BootConfig,
    /// busybox-static for the container's root file system.
    pub busybox: PathBuf,
    /// Time limit of one deployment or boot.
    pub timeout: Duration,
}

/// Medians and every figure of a run of the benchmark, ms.
#[derive(Debug, Clone, Default)]
pub struct DeployReport {
    /// Cold-cache deploy to output, per run.
    pub cold: Vec<Option<f64>>,
    /// Warm-cache deploy to output, per run.
    pub warm: Vec<Option<f64>>,
    /// Plain boot to userspace under QEMU, per run.
    pub qemu_plain: Vec<Option<f64>>,
    /// Plain boot to userspace under zvm, per run.
    pub zvm_plain: Vec<Option<f64>>,
    /// Runs that did not reach their marker.
    pub failures: usize,
}

fn med(values: &[Option<f64>]) -> Option<f64> {
    median(&values.iter().flatten().copied().collect::<Vec<_>>())
}

impl DeployReport {
    /// Medians: (cold, warm, qemu plain, zvm plain).
    pub fn medians(&self) -> (Option<f64>, Option<f64>, Option<f64>, Option<f64>) {
        (
            med(&self.cold),
            med(&self.warm),
            med(&self.qemu_plain),
            med(&self.zvm_plain),
        )
    }

    /// The results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let (cold, warm, qemu, zvm) = self.medians();
        serde_json::json!({
            "runs": {"cold_ms": self.cold, "warm_ms": self.warm, "qemu_plain_ms": self.qemu_plain, "zvm_plain_ms": self.zvm_plain},
            "median_ms": {"deploy_cold": cold, "deploy_warm": warm, "qemu_plain_boot": qemu, "zvm_plain_boot": zvm},
            "ratio_to_qemu_plain_boot": {"deploy_cold": ratio(cold, qemu), "deploy_warm": ratio(warm, qemu), "zvm_plain_boot": ratio(zvm, qemu)},
            "failures": self.failures,
        })
    }
}

/// The workload's spec: 1 vCPU, 256 MiB, prints the marker and its name, then idles.
pub fn deployment(name: &str, flist: &Path) -> String {
    serde_json::json!({
        "name": name,
        "flist": flist.display().to_string(),
        "compute": {"cpu": 1, "memory": "256M"},
        "entrypoint": format!("/bin/sh -c 'echo {MARKER}-$NAME; exec sleep 100000'"),
        "env": {"NAME": name},
    })
    .to_string()
}

/// Whether a `GET /deployments/NAME` answer shows `name`'s marker.
pub fn shows_marker(body: &[u8], name: &str) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| {
        v["console_tail"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("{MARKER}-{name}")))
    })
}

/// Packs `busybox` as a root file system into `dir/store` and returns the flist's path.
fn pack_flist(zvm: &Path, busybox: &Path, dir: &Path) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).map_err(io_err("create", &bin))?;
    std::fs::copy(busybox, bin.join("busybox")).map_err(io_err("copy", busybox))?;
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .map_err(io_err("link", bin.join(applet)))?;
    }
    let flist = dir.join("bench.fl");
    let out = Command::new(zvm)
        .args(["flist", "pack", "-s"])
        .arg(format!("dir://{}", dir.join("store").display()))
        .arg("-o")
        .arg(&flist)
        .arg(&rootfs)
        .output()
        .map_err(|source| BenchError::Spawn {
            program: zvm.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(script_err(
            zvm,
            format!(
                "zvm flist pack: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(flist)
}

fn script_err(zvm: &Path, reason: String) -> BenchError {
    BenchError::Script {
        script: zvm.to_path_buf(),
        reason,
    }
}

/// A `zvm node serve` with its own state directory, killed (with its VMs) on drop.
struct Node {
    child: Child,
    sock: PathBuf,
    state: PathBuf,
}

impl Node {
    fn start(zvm: &Path, kernel: &Path, dir: &Path) -> Result<Node> {
        let (state, sock, log) = (
            dir.join("state"),
            dir.join("node.sock"),
            dir.join("node.log"),
        );
        let log = std::fs::File::create(&log).map_err(io_err("create", &log))?;
        let log2 = log.try_clone().map_err(io_err("clone", dir))?;
        let child = Command::new(zvm)
            .args(["node", "serve", "--stop-grace", "2", "--state-dir"])
            .arg(&state)
            .arg("--api-sock")
            .arg(&sock)
            .arg("--kernel")
            .arg(kernel)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| BenchError::Spawn {
                program: zvm.display().to_string(),
                source,
            })?;
        let node = Node { child, sock, state };
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.request("GET", "/health", None).is_err() {
            if Instant::now() > deadline {
                return Err(script_err(
                    zvm,
                    "zvm node serve did not answer /health within 30 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(node)
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::result::Result<api_server::client::Response, String> {
        api_server::client::request(
            &self.sock,
            method,
            path,
            body.map(str::as_bytes),
            Duration::from_secs(30),
        )
        .map_err(|e| e.to_string())
    }

    /// Deploys `name` and waits for its marker; the time from the request to the marker.
    fn deploy_to_output(
        &self,
        name: &str,
        flist: &Path,
        timeout: Duration,
    ) -> std::result::Result<Duration, String> {
        let start = Instant::now();
        let answer = self.request("POST", "/deployments", Some(&deployment(name, flist)))?;
        if !(200..300).contains(&answer.status) {
            return Err(format!(
                "POST /deployments answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
        }
        let path = format!("/deployments/{name}");
        loop {
            let answer = self.request("GET", &path, None)?;
            if shows_marker(&answer.body, name) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "no marker within {timeout:?}; last answer: {}",
                    String::from_utf8_lossy(&answer.body)
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The VMs are deleted through the API first; they outlive a killed daemon.
        if let Ok(list) = self.request("GET", "/deployments", None) {
            let names: Vec<String> = serde_json::from_slice::<serde_json::Value>(&list.body)
                .ok()
                .and_then(|v| {
                    v["deployments"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|d| d["name"].as_str().map(str::to_string))
                            .collect()
                    })
                })
                .unwrap_or_default();
            for name in names {
                let _ = self.request("DELETE", &format!("/deployments/{name}"), None);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// Runs the benchmark and prints the results.
pub fn run(launcher: &Launcher, cfg: &DeployConfig, dir: &Path) -> Result<DeployReport> {
    if !cfg.busybox.is_file() {
        return Err(BenchError::Missing {
            what: "busybox-static",
            path: cfg.busybox.clone(),
            hint: "; apt-get install busybox-static".into(),
        });
    }
    let plain = prepare_guest(&cfg.guest, dir)?;
    let flist = pack_flist(&launcher.zvm, &cfg.busybox, dir)?;
    println!("== Deploy to workload output: {} run(s) of (cold-cache deploy, warm-cache deploy, plain boot under QEMU and zvm)", cfg.runs);
    println!("   flist {} (busybox, dir:// store); workload 1 vCPU, 256 MiB; plain = {} + guest init, {} MiB", flist.display(), plain.kernel.display(), plain.mem_mib);
    println!(
        "{:>4}  {:>12}  {:>12}  {:>14}  {:>13}",
        "run", "cold ms", "warm ms", "qemu plain ms", "zvm plain ms"
    );
    let mut report = DeployReport::default();
    for i in 0..cfg.runs {
        let node_dir = dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&node_dir).map_err(io_err("create", &node_dir))?;
        let node = Node::start(&launcher.zvm, &plain.kernel, &node_dir)?;
        let mut failures = 0;
        let mut deploy = |name: &str| match node.deploy_to_output(name, &flist, cfg.timeout) {
            Ok(d) => {
                let _ = node.request("DELETE", &format!("/deployments/{name}"), None);
                Some(ms(d))
            }
            Err(e) => {
                eprintln!("warning: deployment {name}: {e}");
                failures += 1;
                None
            }
        };
        let cold = deploy(&format!("cold{i}"));
        let warm = deploy(&format!("warm{i}"));
        report.failures += failures;
        drop(node);
        let mut plain_boot = |vmm: Vmm| -> Result<Option<f64>> {
            let mut cmd = launcher.command(vmm, &plain);
            let watch = Watch {
                markers: &[INIT_MARKER, USERSPACE_MARKER],
                sample_at: None,
                timeout: cfg.timeout,
            };
            let out = run_watched(&mut cmd, &watch, |_| ())?;
            if out.marks[1].is_none() {
                eprintln!(
                    "warning: {} plain boot missed its marker; {}",
                    vmm.name(),
                    out.tail(20)
                );
                report.failures += 1;
            }
            Ok(out.marks[1].map(ms))
        };
        let qemu = plain_boot(Vmm::Qemu)?;
        let zvm = plain_boot(Vmm::Zvm)?;
        println!(
            "{:>4}  {:>12}  {:>12}  {:>14}  {:>13}",
            i + 1,
            fmt_opt(cold, 0),
            fmt_opt(warm, 0),
            fmt_opt(qemu, 0),
            fmt_opt(zvm, 0)
        );
        report.cold.push(cold);
        report.warm.push(warm);
        report.qemu_plain.push(qemu);
        report.zvm_plain.push(zvm);
    }
    let (cold, warm, qemu, zvm) = report.medians();
    println!();
    println!(
        "{:<44}  {:>9}  {:>19}",
        "median", "ms", "ratio to QEMU plain"
    );
    for (name, v) in [
        ("deploy -> output, cold flist cache", cold),
        ("deploy -> output, warm flist cache", warm),
        ("plain boot -> userspace, QEMU microvm", qemu),
        ("plain boot -> userspace, zvm", zvm),
    ] {
        println!(
            "{name:<44}  {:>9}  {:>19}",
            fmt_opt(v, 0),
            fmt_opt(ratio(v, qemu), 2)
        );
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_prints_its_marker_and_the_answer_is_recognised() {
        let spec: serde_json::Value =
            serde_json::from_str(&deployment("cold0", Path::new("/b/bench.fl"))).unwrap();
        assert_eq!(spec["flist"], "/b/bench.fl");
        assert_eq!(spec["env"]["NAME"], "cold0");
        assert!(spec["entrypoint"]
            .as_str()
            .unwrap()
            .contains("echo ZVM-DEPLOY-MARKER-$NAME"));
        let body =
            serde_json::json!({"console_tail": "boot\nZVM-DEPLOY-MARKER-cold0\n"}).to_string();
        assert!(shows_marker(body.as_bytes(), "cold0"));
        assert!(!shows_marker(body.as_bytes(), "warm0"));
        assert!(!shows_marker(b"not json", "cold0"));
    }

    #[test]
    fn medians_and_ratios() {
        let report = DeployReport {
            cold: vec![Some(90.0), Some(110.0)],
            warm: vec![Some(80.0), None],
            qemu_plain: vec![Some(40.0), Some(40.0)],
            zvm_plain: vec![Some(30.0)],
            failures: 1,
        };
        let json = report.to_json();
        assert_eq!(json["median_ms"]["deploy_cold"], 100.0);
        assert_eq!(json["ratio_to_qemu_plain_boot"]["deploy_cold"], 2.5);
        assert_eq!(json["ratio_to_qemu_plain_boot"]["deploy_warm"], 2.0);
        assert_eq!(json["ratio_to_qemu_plain_boot"]["zvm_plain_boot"], 0.75);
    }
}
