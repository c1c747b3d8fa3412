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
//! Both are measured on a daemon with VM templates on (a template directory of the run's
//! own, the template made once beforehand by `zvm template prepare` and timed apart) and on
//! one with `ZVM_TEMPLATES=off`, alternating which goes first; the daemon passes its
//! environment to the `zvm run --flist` processes it starts. How each deployment's VM
//! started (restored or booted) is read from its console log.
//!
//! The peer, in the same run: the plain guest-init boot (the `boot` benchmark's guest) to
//! its userspace marker under QEMU `-M microvm` and under zvm: what booting a VM costs
//! before any deployment work.

use crate::boot::{prepare_guest, BootConfig, INIT_MARKER, USERSPACE_MARKER};
use crate::deploy_node::Node;
use crate::error::{io_err, BenchError, Result};
use crate::measure::{fmt_opt, median, ms, ratio, run_watched, Watch};
use crate::templates::{self, vm_start, GuestFiles, TemplateBuild, Templates, VmStart};
use crate::vmms::{Launcher, Vmm};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How often the deployment is polled.
pub const POLL: Duration = Duration::from_millis(100);
/// Printed by the workload once it runs.
pub const MARKER: &str = "ZVM-DEPLOY-MARKER";
/// The goal for deploy -> output with templates, ms.
pub const GOAL_TEMPLATES_MS: f64 = 3000.0;

/// Settings of the deploy benchmark.
#[derive(Debug, Clone)]
pub struct DeployConfig {
    /// Runs (each: cold and warm deploy with templates and without, plain boot under QEMU
    /// and zvm).
    pub runs: usize,
    /// Guest kernel and init (default: the build scripts).
    pub guest: BootConfig,
    /// Static guest agent (default: guest/build.sh's output).
    pub agent: Option<PathBuf>,
    /// busybox-static for the container's root file system.
    pub busybox: PathBuf,
    /// Time limit of one deployment, boot or template build.
    pub timeout: Duration,
    /// Each deployment has a network interface and a data disk ([`deployment`]); the
    /// template of that shape is made by a first deployment, timed apart.
    pub nic_disk: bool,
}

/// How one deployment's VM started.
#[derive(Debug, Clone)]
pub struct DeployStart {
    /// The deployment's name.
    pub name: String,
    /// Whether its daemon had templates on.
    pub templates: bool,
    /// What its console log says.
    pub start: VmStart,
}

/// Medians and every figure of a run of the benchmark, ms.
#[derive(Debug, Clone, Default)]
pub struct DeployReport {
    /// Cold-cache deploy to output without templates, per run.
    pub cold: Vec<Option<f64>>,
    /// Warm-cache deploy to output without templates, per run.
    pub warm: Vec<Option<f64>>,
    /// Cold-cache deploy to output with templates, per run.
    pub templates_cold: Vec<Option<f64>>,
    /// Warm-cache deploy to output with templates, per run.
    pub templates_warm: Vec<Option<f64>>,
    /// Plain boot to userspace under QEMU, per run.
    pub qemu_plain: Vec<Option<f64>>,
    /// Plain boot to userspace under zvm, per run.
    pub zvm_plain: Vec<Option<f64>>,
    /// How every deployment's VM started.
    pub starts: Vec<DeployStart>,
    /// The one-time template build.
    pub template: Option<TemplateBuild>,
    /// The templates in the run's template directory at the end.
    pub templates_after: Vec<String>,
    /// Runs that did not reach their marker.
    pub failures: usize,
}

fn med(values: &[Option<f64>]) -> Option<f64> {
    median(&values.iter().flatten().copied().collect::<Vec<_>>())
}

/// Medians of the deployments, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeployMedians {
    /// Cold cache, no templates.
    pub cold: Option<f64>,
    /// Warm cache, no templates.
    pub warm: Option<f64>,
    /// Cold cache, templates.
    pub templates_cold: Option<f64>,
    /// Warm cache, templates.
    pub templates_warm: Option<f64>,
    /// Plain boot under QEMU.
    pub qemu: Option<f64>,
    /// Plain boot under zvm.
    pub zvm: Option<f64>,
}

impl DeployReport {
    /// The medians.
    pub fn medians(&self) -> DeployMedians {
        DeployMedians {
            cold: med(&self.cold),
            warm: med(&self.warm),
            templates_cold: med(&self.templates_cold),
            templates_warm: med(&self.templates_warm),
            qemu: med(&self.qemu_plain),
            zvm: med(&self.zvm_plain),
        }
    }

    /// Deployments with templates on whose VM booted a kernel.
    pub fn templated_boots(&self) -> usize {
        self.starts
            .iter()
            .filter(|s| s.templates && s.start.booted())
            .count()
    }

    /// The results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let m = self.medians();
        let goal = |v: Option<f64>| v.map(|v| v <= GOAL_TEMPLATES_MS);
        serde_json::json!({
            "runs": {"cold_ms": self.cold, "warm_ms": self.warm, "templates_cold_ms": self.templates_cold, "templates_warm_ms": self.templates_warm, "qemu_plain_ms": self.qemu_plain, "zvm_plain_ms": self.zvm_plain},
            "median_ms": {"deploy_cold": m.cold, "deploy_warm": m.warm, "deploy_cold_templates": m.templates_cold, "deploy_warm_templates": m.templates_warm, "qemu_plain_boot": m.qemu, "zvm_plain_boot": m.zvm},
            "ratio_to_qemu_plain_boot": {"deploy_cold": ratio(m.cold, m.qemu), "deploy_warm": ratio(m.warm, m.qemu), "deploy_cold_templates": ratio(m.templates_cold, m.qemu), "deploy_warm_templates": ratio(m.templates_warm, m.qemu), "zvm_plain_boot": ratio(m.zvm, m.qemu)},
            "ratio_templates_to_no_templates": {"cold": ratio(m.templates_cold, m.cold), "warm": ratio(m.templates_warm, m.warm)},
            "goal_templates_ms": GOAL_TEMPLATES_MS,
            "goal_templates_met": {"cold": goal(m.templates_cold), "warm": goal(m.templates_warm)},
            "template_build": self.template.as_ref().map(TemplateBuild::to_json),
            "templates_after": self.templates_after,
            "vm_starts": self.starts.iter().map(|s| serde_json::json!({"deployment": s.name, "templates": s.templates, "vm_start": s.start.describe()})).collect::<Vec<_>>(),
            "templated_boots": self.templated_boots(),
            "failures": self.failures,
        })
    }
}

/// The node network of `--nic-disk` deployments.
pub const NODE_NETWORK: &str = "bench=10.78.0.0/24";

/// The workload's spec: 1 vCPU, 256 MiB, prints the marker and its name, then idles; with
/// `nic_disk`, an interface on [`NODE_NETWORK`] and a 64 MiB data disk on `/data`.
pub fn deployment(name: &str, flist: &Path, nic_disk: bool) -> String {
    let mut spec = serde_json::json!({
        "name": name,
        "flist": flist.display().to_string(),
        "compute": {"cpu": 1, "memory": "256M"},
        "entrypoint": format!("/bin/sh -c 'echo {MARKER}-$NAME; exec sleep 100000'"),
        "env": {"NAME": name},
    });
    if nic_disk {
        spec["disks"] = serde_json::json!([{"name": "data", "size": "64M", "mountpoint": "/data"}]);
        spec["network"] = serde_json::json!({"interfaces": [{"network": "bench"}]});
    }
    spec.to_string()
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

/// What every deployment of a run shares.
struct Setup<'a> {
    zvm: &'a Path,
    files: &'a GuestFiles,
    flist: &'a Path,
    dir: &'a Path,
    cfg: &'a DeployConfig,
}

/// Cold and warm deployment on a new daemon with `mode`; (cold, warm) ms.
fn deploy_pair(
    setup: &Setup<'_>,
    mode: &Templates,
    run: usize,
    report: &mut DeployReport,
) -> Result<(Option<f64>, Option<f64>)> {
    let Setup {
        zvm,
        files,
        flist,
        dir,
        cfg,
    } = *setup;
    let on = matches!(mode, Templates::On(_));
    let tag = if on { "tmpl" } else { "boot" };
    let node_dir = dir.join(format!("node-{run}-{tag}"));
    std::fs::create_dir_all(&node_dir).map_err(io_err("create", &node_dir))?;
    let node = Node::start(
        zvm,
        &files.kernel,
        &node_dir,
        &mode.env(files),
        cfg.nic_disk,
    )?;
    let mut deploy = |name: String| {
        let result = node.deploy_to_output(&name, flist, cfg.timeout);
        let start = vm_start(&node.console(&name));
        let _ = node.request("DELETE", &format!("/deployments/{name}"), None);
        let figure = match result {
            Ok(d) => Some(ms(d)),
            Err(e) => {
                eprintln!("warning: deployment {name}: {e}");
                report.failures += 1;
                None
            }
        };
        println!(
            "     {name:<10} templates {:<3}  {:>9} ms  VM {}",
            if on { "on" } else { "off" },
            fmt_opt(figure, 0),
            start.describe()
        );
        report.starts.push(DeployStart {
            name,
            templates: on,
            start,
        });
        figure
    };
    let cold = deploy(format!("{tag}cold{run}"));
    let warm = deploy(format!("{tag}warm{run}"));
    Ok((cold, warm))
}

/// Makes the template of the `--nic-disk` shape with a first deployment on a daemon of its
/// own (its VM makes the template, then is a clone of it), timed apart.
fn shape_template(
    zvm: &Path,
    files: &GuestFiles,
    flist: &Path,
    dir: &Path,
    cfg: &DeployConfig,
    on: &Templates,
) -> Result<()> {
    let node_dir = dir.join("node-shape");
    std::fs::create_dir_all(&node_dir).map_err(io_err("create", &node_dir))?;
    let node = Node::start(zvm, &files.kernel, &node_dir, &on.env(files), true)?;
    let result = node.deploy_to_output("shape", flist, cfg.timeout);
    let start = vm_start(&node.console("shape"));
    match result {
        Ok(d) => println!(
            "   the interface-and-disk template made by a first deployment: {:.0} ms to its output, VM {}",
            ms(d),
            start.describe()
        ),
        Err(e) => eprintln!("warning: the first interface-and-disk deployment: {e}"),
    }
    Ok(())
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
    let files = GuestFiles::find(Some(&plain.kernel), cfg.agent.as_deref(), dir)?;
    let flist = pack_flist(&launcher.zvm, &cfg.busybox, dir)?;
    println!("== Deploy to workload output: {} run(s) of (cold- and warm-cache deploy with templates and without, plain boot under QEMU and zvm)", cfg.runs);
    println!("   flist {} (busybox, dir:// store); workload 1 vCPU, 256 MiB; plain = {} + guest init, {} MiB", flist.display(), plain.kernel.display(), plain.mem_mib);
    let on = Templates::On(dir.join("templates"));
    println!(
        "   guest: {} and {} (copies); making the run's template ({})...",
        files.kernel.display(),
        files.agent.display(),
        dir.join("templates").display()
    );
    let mut report = DeployReport {
        // Deployments' roots come over virtio-fs: their template is the share flavour.
        template: Some(templates::prepare(
            &launcher.zvm,
            &["--share"],
            &on.env(&files),
            dir,
            cfg.timeout,
        )?),
        ..DeployReport::default()
    };
    if let Some(t) = &report.template {
        println!("   {}", t.describe());
    }
    if cfg.nic_disk {
        shape_template(&launcher.zvm, &files, &flist, dir, cfg, &on)?;
    }
    let setup = Setup {
        zvm: &launcher.zvm,
        files: &files,
        flist: &flist,
        dir,
        cfg,
    };
    for i in 0..cfg.runs {
        println!("run {}", i + 1);
        let modes = [on.clone(), Templates::Off];
        let order: Vec<&Templates> = if i % 2 == 0 {
            modes.iter().collect()
        } else {
            modes.iter().rev().collect()
        };
        for mode in order {
            let (cold, warm) = deploy_pair(&setup, mode, i, &mut report)?;
            let (c, w) = if matches!(mode, Templates::On(_)) {
                (&mut report.templates_cold, &mut report.templates_warm)
            } else {
                (&mut report.cold, &mut report.warm)
            };
            c.push(cold);
            w.push(warm);
        }
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
            "     plain boot -> userspace: QEMU {} ms, zvm {} ms",
            fmt_opt(qemu, 0),
            fmt_opt(zvm, 0)
        );
        report.qemu_plain.push(qemu);
        report.zvm_plain.push(zvm);
    }
    report.templates_after = templates::list(&launcher.zvm, &on.env(&files));
    print_summary(&report);
    Ok(report)
}

/// Prints the medians, the ratios, the goal and how the VMs started.
pub fn print_summary(report: &DeployReport) {
    let m = report.medians();
    println!();
    println!("| median | no templates | templates | templates / no templates | templates / QEMU plain boot |");
    println!("|---|---|---|---|---|");
    for (name, off, on) in [
        (
            "deploy -> output, cold flist cache",
            m.cold,
            m.templates_cold,
        ),
        (
            "deploy -> output, warm flist cache",
            m.warm,
            m.templates_warm,
        ),
    ] {
        println!(
            "| {name} | {} ms | {} ms | {} | {} |",
            fmt_opt(off, 0),
            fmt_opt(on, 0),
            fmt_opt(ratio(on, off), 3),
            fmt_opt(ratio(on, m.qemu), 3)
        );
    }
    println!(
        "plain boot -> userspace (peer): QEMU microvm {} ms, zvm {} ms ({} of QEMU's); deploys without templates / QEMU plain: cold {}, warm {}",
        fmt_opt(m.qemu, 0),
        fmt_opt(m.zvm, 0),
        fmt_opt(ratio(m.zvm, m.qemu), 2),
        fmt_opt(ratio(m.cold, m.qemu), 2),
        fmt_opt(ratio(m.warm, m.qemu), 2)
    );
    let verdict = |v: Option<f64>| match v.map(|v| v <= GOAL_TEMPLATES_MS) {
        Some(true) => "met",
        Some(false) => "not met",
        None => "no data",
    };
    println!(
        "goal deploy -> output <= {GOAL_TEMPLATES_MS} ms with templates: cold cache {} ({} ms), warm cache {} ({} ms)",
        verdict(m.templates_cold),
        fmt_opt(m.templates_cold, 0),
        verdict(m.templates_warm),
        fmt_opt(m.templates_warm, 0)
    );
    if let Some(t) = &report.template {
        println!("{}", t.describe());
    }
    println!(
        "templates in the run's directory afterwards: {}",
        if report.templates_after.is_empty() {
            "none".to_string()
        } else {
            report.templates_after.join(", ")
        }
    );
    let templated = report.starts.iter().filter(|s| s.templates).count();
    let booted = report.templated_boots();
    if booted > 0 {
        println!("NOTE: with templates on, {booted} of {templated} deployment(s) booted a kernel: `zvm run --flist` did not start them from a template");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_prints_its_marker_and_the_answer_is_recognised() {
        let spec: serde_json::Value =
            serde_json::from_str(&deployment("cold0", Path::new("/b/bench.fl"), false)).unwrap();
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
            templates_cold: vec![Some(5000.0), Some(3000.0)],
            templates_warm: vec![Some(2000.0)],
            qemu_plain: vec![Some(40.0), Some(40.0)],
            zvm_plain: vec![Some(30.0)],
            failures: 1,
            ..DeployReport::default()
        };
        let json = report.to_json();
        assert_eq!(json["median_ms"]["deploy_cold"], 100.0);
        assert_eq!(json["median_ms"]["deploy_cold_templates"], 4000.0);
        assert_eq!(json["ratio_to_qemu_plain_boot"]["deploy_cold"], 2.5);
        assert_eq!(json["ratio_to_qemu_plain_boot"]["deploy_warm"], 2.0);
        assert_eq!(json["ratio_to_qemu_plain_boot"]["zvm_plain_boot"], 0.75);
        assert_eq!(json["ratio_templates_to_no_templates"]["cold"], 40.0);
        assert_eq!(json["ratio_templates_to_no_templates"]["warm"], 25.0);
        assert_eq!(json["goal_templates_met"]["cold"], false);
        assert_eq!(json["goal_templates_met"]["warm"], true);
        assert!(json["template_build"].is_null());
    }

    #[test]
    fn deployments_with_templates_that_booted_are_counted() {
        let start = |name: &str, templates, start| DeployStart {
            name: name.into(),
            templates,
            start,
        };
        let report = DeployReport {
            starts: vec![
                start(
                    "tmplcold0",
                    true,
                    VmStart::Booted("Run /init as init process".into()),
                ),
                start("tmplwarm0", true, VmStart::Restored("t".into())),
                start("bootcold0", false, VmStart::Booted("Linux version".into())),
            ],
            template: Some(TemplateBuild {
                id: "t".into(),
                made_s: Some(90.0),
                wall_ms: 91_000.0,
            }),
            templates_after: vec!["t".into()],
            ..DeployReport::default()
        };
        assert_eq!(report.templated_boots(), 1);
        let json = report.to_json();
        assert_eq!(json["templated_boots"], 1);
        assert_eq!(json["vm_starts"][1]["vm_start"], "restored from template t");
        assert_eq!(json["template_build"]["made_s"], 90.0);
        assert_eq!(json["templates_after"][0], "t");
    }
}
