//! Boot latency: process start to the kernel starting `/init`, and to the guest's init
//! printing that userspace was reached, for zvm and QEMU `-M microvm` booting the same
//! kernel, initramfs and command line; plus the VMM's own memory at the `/init` moment.

use crate::error::{BenchError, Result};
use crate::measure::{fmt_opt, median, ms, ratio, run_watched, Ending, Watch};
use crate::smaps::{self, VmmMemory};
use crate::vmms::{order, GuestSpec, Launcher, Vmm};
use initramfs::Entry;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The kernel's line when it starts the init process: marker (a).
pub const INIT_MARKER: &str = "Run /init as init process";
/// The guest init's first line: marker (b).
pub const USERSPACE_MARKER: &str = "zvm-guest: userspace reached";
/// The kernel command line (zvm adds its PVM arguments itself; QEMU gets them explicitly).
pub const CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// Guest memory, MiB.
pub const GUEST_MEM_MIB: u64 = 256;
/// Goal: zvm's boot time at most this fraction of QEMU's.
pub const GOAL_BOOT_RATIO: f64 = 0.7;
/// Goal: zvm's own RSS at most this many KiB (3 MiB).
pub const GOAL_RSS_KIB: f64 = 3072.0;

/// Settings of the boot benchmark.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// Runs per VMM.
    pub runs: usize,
    /// vCPUs.
    pub cpus: u32,
    /// Kernel to boot; `None` builds (or reuses) the project's guest kernel.
    pub kernel: Option<PathBuf>,
    /// Guest init binary; `None` builds it with guest/build.sh.
    pub init: Option<PathBuf>,
    /// Time limit of one run.
    pub timeout: Duration,
}

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Runs a build script that prints a file's path on its last stdout line; its stderr
/// (progress) goes to ours.
pub fn path_from_script(script: &Path) -> Result<PathBuf> {
    let failed = |reason: String| BenchError::Script {
        script: script.to_path_buf(),
        reason,
    };
    let out = Command::new("bash")
        .arg(script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(format!("exited with {}", out.status)));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let path = PathBuf::from(last);
    if !path.is_file() {
        return Err(failed(format!("its last line {last:?} is not a file")));
    }
    Ok(path)
}

/// The initramfs entries: the guest init as /init, the directories it mounts on, and
/// /dev/console (the shape of tests/support `base_entries`).
pub fn initramfs_entries(init: Vec<u8>) -> Vec<Entry> {
    let mut entries: Vec<Entry> = ["dev", "proc", "sys", "tmp"]
        .iter()
        .map(|d| Entry::Dir {
            path: (*d).into(),
            mode: 0o755,
        })
        .collect();
    entries.push(Entry::CharDev {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    entries.push(Entry::File {
        path: "init".into(),
        mode: 0o755,
        data: init,
    });
    entries
}

/// The given kernel and guest init, or the project's own (built on first use by
/// `guest-kernel/build.sh` and `guest/build.sh`).
pub fn kernel_and_init(
    kernel: Option<&PathBuf>,
    init: Option<&PathBuf>,
) -> Result<(PathBuf, PathBuf)> {
    let root = repo_root();
    let kernel = match kernel {
        Some(k) => k.clone(),
        None => path_from_script(&root.join("guest-kernel/build.sh"))?,
    };
    let init = match init {
        Some(i) => i.clone(),
        None => path_from_script(&root.join("guest/build.sh"))?,
    };
    Ok((kernel, init))
}

/// Builds or finds the kernel and writes the uncompressed initramfs into `dir`.
pub fn prepare_guest(cfg: &BootConfig, dir: &Path) -> Result<GuestSpec> {
    let (kernel, init) = kernel_and_init(cfg.kernel.as_ref(), cfg.init.as_ref())?;
    let init_bytes = std::fs::read(&init).map_err(crate::error::io_err("read", &init))?;
    let image = initramfs::pack_uncompressed(&initramfs_entries(init_bytes))?;
    let initrd = dir.join("bench-initramfs.cpio");
    std::fs::write(&initrd, image).map_err(crate::error::io_err("write", &initrd))?;
    Ok(GuestSpec {
        kernel,
        initrd: Some(initrd),
        cmdline: CMDLINE.into(),
        cpus: cfg.cpus,
        mem_mib: GUEST_MEM_MIB,
    })
}

/// One measured boot.
#[derive(Debug, Clone)]
pub struct BootRun {
    /// Which VMM.
    pub vmm: Vmm,
    /// 1-based run number.
    pub run: usize,
    /// Spawn to marker (a).
    pub init: Option<Duration>,
    /// Spawn to marker (b).
    pub userspace: Option<Duration>,
    /// The VMM's memory when (a) appeared.
    pub memory: Option<VmmMemory>,
    /// How the process ended.
    pub ending: Ending,
}

/// Medians of one VMM's runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Medians {
    /// Spawn to (a), ms.
    pub init_ms: Option<f64>,
    /// Spawn to (b), ms.
    pub userspace_ms: Option<f64>,
    /// VMM RSS without guest RAM, KiB.
    pub rss_kib: Option<f64>,
    /// Its private part, KiB.
    pub private_kib: Option<f64>,
}

impl Medians {
    /// Medians over the runs of `vmm`.
    pub fn of(runs: &[BootRun], vmm: Vmm) -> Medians {
        let pick = |f: &dyn Fn(&BootRun) -> Option<f64>| {
            median(
                &runs
                    .iter()
                    .filter(|r| r.vmm == vmm)
                    .filter_map(f)
                    .collect::<Vec<_>>(),
            )
        };
        Medians {
            init_ms: pick(&|r| r.init.map(ms)),
            userspace_ms: pick(&|r| r.userspace.map(ms)),
            rss_kib: pick(&|r| r.memory.map(|m| m.rss_kib as f64)),
            private_kib: pick(&|r| r.memory.map(|m| m.private_kib as f64)),
        }
    }
}

/// Results of the boot benchmark.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// Every run, in the order they ran.
    pub runs: Vec<BootRun>,
    /// zvm's medians.
    pub zvm: Medians,
    /// QEMU's medians.
    pub qemu: Medians,
    /// Runs that missed a marker.
    pub failures: usize,
}

fn medians_json(m: &Medians) -> serde_json::Value {
    serde_json::json!({"init_ms": m.init_ms, "userspace_ms": m.userspace_ms, "vmm_rss_kib": m.rss_kib, "vmm_private_kib": m.private_kib})
}

impl BootReport {
    /// The results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let runs: Vec<serde_json::Value> = self
            .runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "vmm": r.vmm.name(), "run": r.run,
                    "init_ms": r.init.map(ms), "userspace_ms": r.userspace.map(ms),
                    "vmm_rss_kib": r.memory.map(|m| m.rss_kib), "vmm_private_kib": r.memory.map(|m| m.private_kib),
                    "guest_rss_kib": r.memory.map(|m| m.guest_rss_kib), "ending": format!("{:?}", r.ending),
                })
            })
            .collect();
        serde_json::json!({
            "runs": runs,
            "median": {"zvm": medians_json(&self.zvm), "qemu": medians_json(&self.qemu)},
            "ratio_zvm_qemu": {
                "init": ratio(self.zvm.init_ms, self.qemu.init_ms),
                "userspace": ratio(self.zvm.userspace_ms, self.qemu.userspace_ms),
                "vmm_rss": ratio(self.zvm.rss_kib, self.qemu.rss_kib),
            },
            "failures": self.failures,
        })
    }
}

fn ending_text(e: Ending) -> String {
    match e {
        Ending::Exited(Some(c)) => format!("exit {c}"),
        Ending::Exited(None) => "signalled".into(),
        Ending::Killed => "killed".into(),
        Ending::TimedOut => "TIMEOUT".into(),
    }
}

fn print_run(r: &BootRun) {
    let mem = |f: fn(&VmmMemory) -> u64| {
        r.memory
            .as_ref()
            .map_or_else(|| "-".to_string(), |m| f(m).to_string())
    };
    println!(
        "{:>4}  {:<5}  {:>11}  {:>11}  {:>9}  {:>9}  {:>9}  {}",
        r.run,
        r.vmm.name(),
        fmt_opt(r.init.map(ms), 1),
        fmt_opt(r.userspace.map(ms), 1),
        mem(|m| m.rss_kib),
        mem(|m| m.private_kib),
        mem(|m| m.guest_rss_kib),
        ending_text(r.ending)
    );
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "n/a",
    }
}

fn print_summary(report: &BootReport) {
    let (z, q) = (&report.zvm, &report.qemu);
    let init_ratio = ratio(z.init_ms, q.init_ms);
    let user_ratio = ratio(z.userspace_ms, q.userspace_ms);
    println!();
    println!(
        "{:<28}  {:>11}  {:>11}  {:>9}  goal",
        "median", "zvm", "qemu", "zvm/qemu"
    );
    let row = |name: &str, a: Option<f64>, b: Option<f64>, d: usize, goal: String| {
        println!(
            "{name:<28}  {:>11}  {:>11}  {:>9}  {goal}",
            fmt_opt(a, d),
            fmt_opt(b, d),
            fmt_opt(ratio(a, b), 3)
        );
    };
    let ratio_goal = |r: Option<f64>| {
        format!(
            "ratio <= {GOAL_BOOT_RATIO}: {}",
            verdict(r.map(|r| r <= GOAL_BOOT_RATIO))
        )
    };
    row(
        "(a) spawn -> /init, ms",
        z.init_ms,
        q.init_ms,
        1,
        ratio_goal(init_ratio),
    );
    row(
        "(b) spawn -> userspace, ms",
        z.userspace_ms,
        q.userspace_ms,
        1,
        ratio_goal(user_ratio),
    );
    let rss_goal = format!(
        "zvm <= {GOAL_RSS_KIB} KiB (3 MiB): {}",
        verdict(z.rss_kib.map(|v| v <= GOAL_RSS_KIB))
    );
    row("VMM RSS at (a), KiB", z.rss_kib, q.rss_kib, 0, rss_goal);
    row(
        "  of which private, KiB",
        z.private_kib,
        q.private_kib,
        0,
        String::new(),
    );
}

/// Prepares the guest in `dir`, boots it under both VMMs interleaved and prints the results.
pub fn run(launcher: &Launcher, cfg: &BootConfig, dir: &Path) -> Result<BootReport> {
    let guest = prepare_guest(cfg, dir)?;
    let mem_bytes = guest.mem_bytes();
    println!(
        "== Boot latency: {} runs each, {} vCPU(s), {GUEST_MEM_MIB} MiB",
        cfg.runs, cfg.cpus
    );
    println!("   kernel {}", guest.kernel.display());
    println!(
        "   cmdline {CMDLINE:?}{}",
        if launcher.pvm {
            " + zvm's PVM arguments (both VMMs)"
        } else {
            ""
        }
    );
    println!(
        "   zvm {}; qemu {} -cpu {}",
        launcher.zvm.display(),
        launcher.qemu.display(),
        launcher.qemu_cpu()
    );
    println!(
        "   (a) = {INIT_MARKER:?}, (b) = {USERSPACE_MARKER:?}, RSS = VMM without guest RAM at (a)"
    );
    println!(
        "{:>4}  {:<5}  {:>11}  {:>11}  {:>9}  {:>9}  {:>9}  end",
        "run", "vmm", "(a) ms", "(b) ms", "RSS KiB", "priv KiB", "guest KiB"
    );
    let mut runs = Vec::new();
    let mut failures = 0;
    for i in 0..cfg.runs {
        for vmm in order(i) {
            let watch = Watch {
                markers: &[INIT_MARKER, USERSPACE_MARKER],
                sample_at: Some(0),
                timeout: cfg.timeout,
            };
            let out = run_watched(&mut launcher.command(vmm, &guest), &watch, |pid| {
                smaps::sample(pid, mem_bytes)
            })?;
            let memory = match out.sample {
                Some(Ok(m)) => Some(m),
                Some(Err(ref e)) => {
                    eprintln!(
                        "warning: {} run {}: no memory sample: {e}",
                        vmm.name(),
                        i + 1
                    );
                    None
                }
                None => None,
            };
            let r = BootRun {
                vmm,
                run: i + 1,
                init: out.marks[0],
                userspace: out.marks[1],
                memory,
                ending: out.ending,
            };
            if r.init.is_none() || r.userspace.is_none() {
                failures += 1;
                eprintln!(
                    "warning: {} run {} missed a marker; {}",
                    vmm.name(),
                    i + 1,
                    out.tail(15)
                );
            }
            print_run(&r);
            runs.push(r);
        }
    }
    let report = BootReport {
        zvm: Medians::of(&runs, Vmm::Zvm),
        qemu: Medians::of(&runs, Vmm::Qemu),
        runs,
        failures,
    };
    print_summary(&report);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(vmm: Vmm, init: u64, rss: u64) -> BootRun {
        BootRun {
            vmm,
            run: 1,
            init: Some(Duration::from_millis(init)),
            userspace: Some(Duration::from_millis(init + 100)),
            memory: Some(VmmMemory {
                rss_kib: rss,
                private_kib: rss / 2,
                guest_rss_kib: 0,
                guest_mappings: 1,
            }),
            ending: Ending::Killed,
        }
    }

    #[test]
    fn medians_are_per_vmm() {
        let runs = [
            run(Vmm::Zvm, 100, 2000),
            run(Vmm::Qemu, 300, 20000),
            run(Vmm::Zvm, 300, 4000),
            run(Vmm::Zvm, 200, 3000),
        ];
        let z = Medians::of(&runs, Vmm::Zvm);
        assert_eq!(z.init_ms, Some(200.0));
        assert_eq!(z.userspace_ms, Some(300.0));
        assert_eq!(z.rss_kib, Some(3000.0));
        let q = Medians::of(&runs, Vmm::Qemu);
        assert_eq!(q.private_kib, Some(10000.0));
    }

    #[test]
    fn initramfs_has_init_console_and_mount_points() {
        let entries = initramfs_entries(vec![1, 2, 3]);
        assert!(entries.contains(&Entry::CharDev {
            path: "dev/console".into(),
            mode: 0o600,
            major: 5,
            minor: 1
        }));
        assert!(entries
            .iter()
            .any(|e| matches!(e, Entry::File { path, mode: 0o755, .. } if path == "init")));
        for d in ["dev", "proc", "sys", "tmp"] {
            assert!(entries.contains(&Entry::Dir {
                path: d.into(),
                mode: 0o755
            }));
        }
    }
}
