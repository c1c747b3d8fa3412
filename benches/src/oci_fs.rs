//! Containers' files over virtio-fs against virtio-blk (issue #14), same run, under
//! zvm-runc with VM templates (a template directory of the run's own; the first container
//! of each kind makes its template and is not counted):
//!
//! - `create` of a container whose bundle rootfs holds `size_mib` MiB of files, with the
//!   root over virtio-fs (`zvm.rootfs=virtiofs`: no copy) and as the ext4 copy
//!   (`zvm.rootfs=image`: `mkfs.ext4 -d` at create), alternating;
//! - sequential write (`dd ... conv=fsync`) and read (page cache dropped first) of
//!   `io_mib` MiB inside the guest, in a host directory bind-mounted over virtio-fs and in
//!   the container's ext4 root on virtio-blk, timed with the guest's /proc/uptime.

use crate::error::{io_err, BenchError, Result};
use crate::oci_cmd::RuntimeCli;
use crate::templates::{GuestFiles, Templates};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Settings of the benchmark.
#[derive(Debug, Clone)]
pub struct OciFsConfig {
    /// Counted creates per root kind.
    pub runs: usize,
    /// MiB of files in the rootfs of the create test.
    pub size_mib: u64,
    /// MiB written and read in the throughput test.
    pub io_mib: u64,
    /// The zvm-runc binary.
    pub zvm_runc: PathBuf,
    /// busybox-static.
    pub busybox: PathBuf,
    /// Guest kernel (default: guest-kernel/build.sh).
    pub kernel: Option<PathBuf>,
    /// Static guest agent (default: guest/build.sh's output).
    pub agent: Option<PathBuf>,
    /// Time limit of one command.
    pub timeout: Duration,
}

/// Create times of one root kind, in ms (the template-making first one apart).
#[derive(Debug, Clone, Default)]
pub struct CreateTimes {
    /// The first create (makes the template).
    pub first_ms: Option<f64>,
    /// The counted ones.
    pub ms: Vec<f64>,
}

impl CreateTimes {
    fn median(&self) -> Option<f64> {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }
}

/// The benchmark's figures.
#[derive(Debug, Clone, Default)]
pub struct OciFsReport {
    /// Root over virtio-fs.
    pub create_virtiofs: CreateTimes,
    /// Root as the ext4 copy.
    pub create_image: CreateTimes,
    /// `(what, MB/s)` of each dd, as busybox reports it.
    pub throughput: Vec<(String, Option<f64>)>,
    /// What went wrong.
    pub errors: Vec<String>,
}

impl OciFsReport {
    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let times = |t: &CreateTimes| serde_json::json!({"first_ms": t.first_ms, "ms": t.ms, "median_ms": t.median()});
        serde_json::json!({
            "create_virtiofs": times(&self.create_virtiofs),
            "create_image": times(&self.create_image),
            "throughput_mb_s": self.throughput.iter()
                .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                .collect::<serde_json::Map<_, _>>(),
            "errors": self.errors,
        })
    }
}

/// `config.json` running `script` as root with the capability to drop the page cache.
fn config(
    script: &str,
    root: &Path,
    rootfs_mode: &str,
    mounts: &[serde_json::Value],
) -> serde_json::Value {
    let caps = [
        "CAP_SYS_ADMIN",
        "CAP_DAC_OVERRIDE",
        "CAP_CHOWN",
        "CAP_FOWNER",
    ];
    let mut all_mounts = vec![
        serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "mode=755"]}),
    ];
    all_mounts.extend(mounts.iter().cloned());
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", script],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}
        },
        "root": {"path": root, "readonly": false},
        "hostname": "bench",
        "annotations": {"zvm.rootfs": rootfs_mode},
        "mounts": all_mounts,
        "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "uts"}]}
    })
}

/// A bundle in `dir/name`: busybox with its applets, `payload_mib` MiB of incompressible
/// files in `/payload`, and `config`.
fn bundle(
    busybox: &Path,
    dir: &Path,
    name: &str,
    payload_mib: u64,
    config: &serde_json::Value,
) -> Result<PathBuf> {
    let bundle = dir.join(name);
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "payload", "blk"] {
        let p = rootfs.join(d);
        std::fs::create_dir_all(&p).map_err(io_err("create", &p))?;
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).map_err(io_err("copy", busybox))?;
    for name in ["sh", "dd", "cut", "echo", "true", "rm", "cat"] {
        let link = rootfs.join("bin").join(name);
        std::os::unix::fs::symlink("busybox", &link).map_err(io_err("link", &link))?;
    }
    // 4 MiB files of xorshift output: no holes, nothing for a file system to share.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; 4 << 20];
    for i in 0..payload_mib.div_ceil(4) {
        for chunk in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        let p = rootfs.join(format!("payload/f{i}"));
        let mut f = std::fs::File::create(&p).map_err(io_err("create", &p))?;
        f.write_all(&block).map_err(io_err("write", &p))?;
    }
    let path = bundle.join("config.json");
    std::fs::write(&path, config.to_string()).map_err(io_err("write", &path))?;
    Ok(bundle)
}

/// `create` of `bundle` as `id` (then deleted); its time.
fn time_create(
    cli: &RuntimeCli,
    bundle: &Path,
    id: &str,
    log: &Path,
) -> std::result::Result<f64, String> {
    let b = bundle.to_string_lossy();
    let t = Instant::now();
    let made = cli.run(&["create", "--bundle", &b, id], log);
    let took = t.elapsed().as_secs_f64() * 1e3;
    let _ = cli.run(&["delete", "--force", id], log);
    made.map(|()| took)
}

/// The MB/s of a line `MIB START END` (the guest's /proc/uptime around one dd: Debian's
/// busybox dd prints no rate).
pub fn dd_rate(line: &str) -> Option<f64> {
    let mut fields = line.split_whitespace().map(|f| f.parse::<f64>().ok());
    let (mib, start, end) = (fields.next()??, fields.next()??, fields.next()??);
    (end > start).then(|| mib * 1.048_576 / (end - start))
}

/// The throughput script: write and read `mib` MiB in each directory, each dd timed with
/// the guest's /proc/uptime and reported as `TAG: MIB START END`.
fn io_script(mib: u64) -> String {
    let up = "$(cut -d' ' -f1 /proc/uptime)";
    let mut s = String::new();
    for (tag, dir) in [("virtiofs", "/data"), ("virtio-blk", "/blk")] {
        s.push_str(&format!(
            "s={up}; dd if=/dev/zero of={dir}/f bs=1M count={mib} conv=fsync 2>/dev/null; \
             echo \"{tag}-write: {mib} $s {up}\"; echo 3 > /proc/sys/vm/drop_caches; \
             s={up}; dd if={dir}/f of=/dev/null bs=1M 2>/dev/null; \
             echo \"{tag}-read: {mib} $s {up}\"; rm -f {dir}/f; "
        ));
    }
    s
}

/// Runs the benchmark in `dir`.
pub fn run(cfg: &OciFsConfig, dir: &Path) -> Result<OciFsReport> {
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
    let files = GuestFiles::find(cfg.kernel.as_deref(), cfg.agent.as_deref(), dir)?;
    let cli = RuntimeCli {
        bin: cfg.zvm_runc.clone(),
        env: Templates::On(dir.join("templates")).env(&files),
        root: dir.join("root"),
        timeout: cfg.timeout,
    };
    let log = dir.join("oci-fs.log");
    let mut report = OciFsReport::default();
    println!(
        "== Container files over virtio-fs against virtio-blk ({} MiB rootfs, {} counted creates each)",
        cfg.size_mib, cfg.runs
    );
    let fs_bundle = bundle(
        &cfg.busybox,
        dir,
        "root-fs",
        cfg.size_mib,
        &config("true", Path::new("rootfs"), "virtiofs", &[]),
    )?;
    // The same rootfs (an absolute root path); only the annotation differs.
    let image_bundle = dir.join("root-image");
    std::fs::create_dir_all(&image_bundle).map_err(io_err("create", &image_bundle))?;
    let path = image_bundle.join("config.json");
    let image_config = config("true", &fs_bundle.join("rootfs"), "image", &[]);
    std::fs::write(&path, image_config.to_string()).map_err(io_err("write", &path))?;
    for i in 0..=cfg.runs {
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for virtiofs in order {
            let (b, times, kind) = if virtiofs {
                (&fs_bundle, &mut report.create_virtiofs, "virtiofs")
            } else {
                (&image_bundle, &mut report.create_image, "image")
            };
            let id = format!("fsbench-{}-{kind}-{i}", std::process::id());
            match time_create(&cli, b, &id, &log) {
                Ok(ms) if i == 0 => {
                    println!("   create, root {kind:8}: {ms:9.0} ms (first: makes its template)");
                    times.first_ms = Some(ms);
                }
                Ok(ms) => {
                    println!("   create, root {kind:8}: {ms:9.0} ms");
                    times.ms.push(ms);
                }
                Err(e) => {
                    println!("   create, root {kind:8}: failed: {e}");
                    report.errors.push(e);
                }
            }
        }
    }
    let (fs_m, img_m) = (
        report.create_virtiofs.median(),
        report.create_image.median(),
    );
    if let (Some(f), Some(i)) = (fs_m, img_m) {
        println!("   median create: virtiofs {f:.0} ms, ext4 copy {i:.0} ms");
    }

    let data = dir.join("data");
    std::fs::create_dir_all(&data).map_err(io_err("create", &data))?;
    let mount = serde_json::json!({"destination": "/data", "type": "bind",
        "source": data, "options": ["rbind", "rw"]});
    let io_config = config(
        &io_script(cfg.io_mib),
        Path::new("rootfs"),
        "image",
        &[mount],
    );
    let io_bundle = bundle(&cfg.busybox, dir, "io", 0, &io_config)?;
    let id = format!("fsbench-{}-io", std::process::id());
    let out = Command::new(&cfg.zvm_runc)
        .arg("--root")
        .arg(&cli.root)
        .args(["run", "--bundle"])
        .arg(&io_bundle)
        .arg(&id)
        .envs(cli.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("run", &cfg.zvm_runc))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "   sequential I/O of {} MiB in the guest (busybox dd):",
        cfg.io_mib
    );
    for line in stdout.lines() {
        if let Some((what, rest)) = line.split_once(": ") {
            let rate = dd_rate(rest);
            println!(
                "   {what:18} {}",
                rate.map_or(rest.to_string(), |r| format!("{r:8.1} MB/s"))
            );
            report.throughput.push((what.to_string(), rate));
        }
    }
    if !out.status.success() || report.throughput.len() < 4 {
        report.errors.push(format!(
            "the I/O container: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dd_rates_are_read_in_mb_per_second() {
        assert_eq!(dd_rate("8 10.00 12.00"), Some(8.0 * 1.048_576 / 2.0));
        assert_eq!(dd_rate("8 10.00 10.00"), None);
        assert_eq!(dd_rate("64+0 records out"), None);
        assert_eq!(dd_rate("garbage"), None);
    }

    #[test]
    fn configs_pick_the_root_kind_and_keep_the_mounts() {
        let m = serde_json::json!({"destination": "/data", "type": "bind", "source": "/d"});
        let c = config("true", Path::new("rootfs"), "virtiofs", &[m]);
        assert_eq!(c["annotations"]["zvm.rootfs"], "virtiofs");
        assert_eq!(c["mounts"][2]["destination"], "/data");
        let script = io_script(8);
        assert!(
            script.contains("of=/data/f bs=1M count=8 conv=fsync"),
            "{script}"
        );
        assert!(script.contains("echo \"virtio-blk-read: 8 $s $(cut -d' ' -f1 /proc/uptime)\""));
    }
}
