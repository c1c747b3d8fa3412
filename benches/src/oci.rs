//! OCI runtime lifecycle: `create`, `start`, wait until `state` reports the container
//! stopped, `delete`, for a container running `/bin/true` (busybox-static), in the same
//! run and alternating: zvm-runc with VM templates (a template directory of the run's own,
//! the template made once beforehand by `zvm template prepare`, timed apart), zvm-runc with
//! `ZVM_TEMPLATES=off` (every container VM boots its kernel) and runc (Debian's `runc`
//! package). All are driven only through their command lines, the same way. Then, unless
//! turned off, checkpoint + restore of a running container (see [`crate::oci_checkpoint`]).

use crate::error::{io_err, BenchError, Result};
use crate::oci_checkpoint::{self, LOOP_SCRIPT};
use crate::oci_cmd::RuntimeCli;
use crate::oci_report::{print_run, print_summary, OciReport, OciRun, Phases, Runtime};
use crate::templates::{self, vm_start, GuestFiles, Templates};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Settings of the OCI benchmark.
#[derive(Debug, Clone)]
pub struct OciConfig {
    /// Runs per runtime.
    pub runs: usize,
    /// The zvm-runc binary.
    pub zvm_runc: PathBuf,
    /// The zvm binary (`zvm template prepare`); needed with the `vm` backend.
    pub zvm: Option<PathBuf>,
    /// The runc binary.
    pub runc: PathBuf,
    /// zvm-runc backend (`vm`; `host-process` is the test double, for checking the harness:
    /// no VM and no isolation, so neither templates nor checkpoints; only a zvm-runc built
    /// with oci-runtime's `test-backend` feature has it).
    pub backend: String,
    /// Time limit of one command or of the wait.
    pub timeout: Duration,
    /// busybox-static, copied into the bundle's rootfs.
    pub busybox: PathBuf,
    /// Guest kernel (default: guest-kernel/build.sh).
    pub kernel: Option<PathBuf>,
    /// Static guest agent (default: guest/build.sh's output).
    pub agent: Option<PathBuf>,
    /// Checkpoint + restore runs (0: none).
    pub checkpoint_runs: usize,
}

/// The config.json both runtimes run: runc's default spec with `args`, no terminal.
pub fn bench_config(args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
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

/// Writes the bundle `dir/name` running `args`: rootfs with busybox as /bin/busybox,
/// /bin/true, /bin/sh and /bin/sleep.
fn make_bundle(busybox: &Path, dir: &Path, name: &str, args: &[&str]) -> Result<PathBuf> {
    let bundle = dir.join(name);
    let bin = bundle.join("rootfs/bin");
    for d in [
        bin.clone(),
        bundle.join("rootfs/proc"),
        bundle.join("rootfs/dev"),
    ] {
        std::fs::create_dir_all(&d).map_err(io_err("create", &d))?;
    }
    std::fs::copy(busybox, bin.join("busybox")).map_err(io_err("copy", busybox))?;
    for name in ["true", "sh", "sleep"] {
        let link = bin.join(name);
        std::os::unix::fs::symlink("busybox", &link).map_err(io_err("link", &link))?;
    }
    let config = bundle.join("config.json");
    std::fs::write(&config, bench_config(args).to_string()).map_err(io_err("write", &config))?;
    Ok(bundle)
}

/// One create/start/wait/delete cycle; the phases that completed even on error, and (for
/// zvm-runc) how its VM started, from `sandbox.log`.
fn cycle(
    cli: &RuntimeCli,
    bundle: &Path,
    id: &str,
    dir: &Path,
    zvm: bool,
) -> (Phases, Option<templates::VmStart>, Option<String>) {
    let mut p = Phases::default();
    let log = dir.join(format!("{id}.log"));
    let pid_file = dir.join(format!("{id}.pid"));
    let (b, pf) = (
        bundle.to_string_lossy().into_owned(),
        pid_file.to_string_lossy().into_owned(),
    );
    let sandbox_log = cli.container_dir(id).join("sandbox.log");
    let started =
        || zvm.then(|| vm_start(&std::fs::read_to_string(&sandbox_log).unwrap_or_default()));
    let mut how = None;
    let result = (|| {
        let t = Instant::now();
        cli.run(&["create", "--bundle", &b, "--pid-file", &pf, id], &log)?;
        p.create = Some(t.elapsed());
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .map_err(|e| e.to_string())?
            .trim()
            .parse()
            .map_err(|e| format!("pid file: {e}"))?;
        let t = Instant::now();
        cli.run(&["start", id], &log)?;
        p.start = Some(t.elapsed());
        if pid <= 0 {
            return Err(format!("pid file holds {pid}"));
        }
        p.wait = Some(cli.wait_status(id, "stopped")?);
        how = started();
        let t = Instant::now();
        cli.run(&["delete", id], &log)?;
        p.delete = Some(t.elapsed());
        Ok(())
    })();
    match result {
        Ok(()) => (p, how, None),
        Err(e) => {
            let how = how.or_else(started);
            let _ = cli.run(&["delete", "--force", id], &log);
            (p, how, Some(e))
        }
    }
}

fn runc_version(runc: &Path) -> Result<String> {
    match Command::new(runc).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()),
        _ => Err(BenchError::Missing {
            what: "runc",
            path: runc.to_path_buf(),
            hint: "; install Debian's runc (scripts/install-deps.sh)".into(),
        }),
    }
}

/// The runtimes measured, each with how to drive it.
type Clis = Vec<(Runtime, RuntimeCli)>;

/// The runtimes to measure and how to drive each; with the `vm` backend, the template
/// made for the run.
fn runtimes(cfg: &OciConfig, dir: &Path) -> Result<(Clis, Option<templates::TemplateBuild>)> {
    let backend = ("ZVM_RUNC_BACKEND".to_string(), cfg.backend.clone());
    let cli = |rt: Runtime, bin: &Path, env: Vec<(String, String)>| {
        let root = dir.join(format!("{}-root", rt.name()));
        (
            rt,
            RuntimeCli {
                bin: bin.to_path_buf(),
                env,
                root,
                timeout: cfg.timeout,
            },
        )
    };
    let runc = cli(Runtime::Runc, &cfg.runc, Vec::new());
    if cfg.backend != "vm" {
        let zvm = cli(Runtime::ZvmBoot, &cfg.zvm_runc, vec![backend]);
        return Ok((vec![zvm, runc], None));
    }
    let zvm = cfg.zvm.as_deref().ok_or_else(|| BenchError::Missing {
        what: "zvm binary",
        path: PathBuf::from("zvm"),
        hint: "; pass --zvm".into(),
    })?;
    let files = GuestFiles::find(cfg.kernel.as_deref(), cfg.agent.as_deref(), dir)?;
    let with = |t: &Templates| {
        let mut env = t.env(&files);
        env.push(backend.clone());
        env
    };
    let on = with(&Templates::On(dir.join("templates")));
    println!(
        "   guest: {} and {} (copies); making the run's template ({})...",
        files.kernel.display(),
        files.agent.display(),
        dir.join("templates").display()
    );
    let build = templates::prepare(zvm, &[], &on, dir, cfg.timeout)?;
    println!("   {}", build.describe());
    let list = vec![
        cli(Runtime::ZvmTemplates, &cfg.zvm_runc, on),
        cli(Runtime::ZvmBoot, &cfg.zvm_runc, with(&Templates::Off)),
        runc,
    ];
    Ok((list, Some(build)))
}

/// Runs the benchmark: `cfg.runs` cycles per runtime, rotating which goes first; then the
/// checkpoint section.
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
    let runc_version = runc_version(&cfg.runc)?;
    let bundle = make_bundle(&cfg.busybox, dir, "oci-bundle", &["/bin/true"])?;
    println!("== OCI lifecycle: create + start + wait + delete of /bin/true (busybox-static), {} run(s) each", cfg.runs);
    println!(
        "   zvm-runc: {} (backend {}); runc: {} ({runc_version})",
        cfg.zvm_runc.display(),
        cfg.backend,
        cfg.runc.display()
    );
    let (clis, template) = runtimes(cfg, dir)?;
    let mut runs = Vec::new();
    for i in 1..=cfg.runs {
        let mut order: Vec<&(Runtime, RuntimeCli)> = clis.iter().collect();
        order.rotate_left((i - 1) % clis.len());
        for (rt, cli) in order {
            let id = format!("bench-{}-{}-{i}", std::process::id(), rt.name());
            let zvm = *rt != Runtime::Runc && cfg.backend == "vm";
            let (phases, vm_start, error) = cycle(cli, &bundle, &id, dir, zvm);
            let r = OciRun {
                runtime: *rt,
                run: i,
                phases,
                vm_start,
                error,
            };
            print_run(&r);
            runs.push(r);
        }
    }
    let mut report = OciReport {
        failures: runs.iter().filter(|r| r.error.is_some()).count(),
        runs,
        backend: cfg.backend.clone(),
        runtimes: clis.iter().map(|(rt, _)| *rt).collect(),
        template,
        checkpoint: None,
    };
    print_summary(&report);
    let with_templates = clis.iter().find(|(rt, _)| *rt == Runtime::ZvmTemplates);
    if let (Some((_, cli)), true) = (with_templates, cfg.checkpoint_runs > 0) {
        let args = ["/bin/sh", "-c", LOOP_SCRIPT];
        let loop_bundle = make_bundle(&cfg.busybox, dir, "oci-bundle-loop", &args)?;
        let ck = oci_checkpoint::run(cli, &loop_bundle, dir, cfg.checkpoint_runs);
        report.failures += ck.failures();
        report.checkpoint = Some(ck);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_configs_run_their_args_without_a_terminal() {
        let c = bench_config(&["/bin/true"]);
        assert_eq!(c["process"]["args"][0], "/bin/true");
        assert_eq!(c["process"]["terminal"], false);
        assert_eq!(c["root"]["path"], "rootfs");
        let c = bench_config(&["/bin/sh", "-c", LOOP_SCRIPT]);
        assert_eq!(c["process"]["args"][2], LOOP_SCRIPT);
    }

    #[test]
    fn bundles_hold_busybox_and_its_links() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let fake = dir.path().join("busybox");
        std::fs::write(&fake, b"#!").unwrap_or_else(|e| panic!("{e}"));
        let b = make_bundle(&fake, dir.path(), "b", &["/bin/sh", "-c", LOOP_SCRIPT])
            .unwrap_or_else(|e| panic!("{e}"));
        for link in ["true", "sh", "sleep"] {
            let target = std::fs::read_link(b.join("rootfs/bin").join(link));
            assert_eq!(target.ok(), Some(PathBuf::from("busybox")));
        }
        assert!(b.join("config.json").is_file());
    }
}
