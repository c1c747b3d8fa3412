//! What the block and network benchmarks share: a busybox initramfs running a script,
//! the VMM command lines with a disk and a tap-backed NIC inside a network namespace,
//! and host CPU time of the VMM process between console markers.

use crate::boot::{initramfs_entries, CMDLINE};
use crate::error::{io_err, Result};
use crate::kvm_stats::{self, KvmCounters, KvmProbe};
use crate::measure::{run_watched_each, Ending, RunOutput, Watch};
use crate::netns::{NetNs, GUEST_MAC};
use crate::vmms::{qemu_args, zvm_args, GuestSpec, Launcher, Vmm};
use initramfs::Entry;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Guest memory of the device benchmarks, MiB.
pub const DEVICE_MEM_MIB: u64 = 256;

/// Guest-side options shared by the device benchmarks.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Runs per VMM.
    pub runs: usize,
    /// Kernel (`None`: guest-kernel/build.sh).
    pub kernel: Option<PathBuf>,
    /// Guest init (`None`: guest/build.sh); `zvm-vsock-tool` is taken from beside it.
    pub init: Option<PathBuf>,
    /// Time limit of one run (boot included).
    pub timeout: Duration,
}

/// Packs the busybox initramfs: the guest init, /bin/busybox with its applets linked,
/// /bin/zvm-vsock-tool and `script` as /zvm-test.sh.
pub fn busybox_initramfs(init: &Path, script: &str) -> Result<Vec<u8>> {
    let busybox = Path::new("/bin/busybox");
    let mut entries = initramfs_entries(std::fs::read(init).map_err(io_err("read", init))?);
    entries.extend(["bin", "sbin", "etc"].iter().map(|d| Entry::Dir {
        path: (*d).into(),
        mode: 0o755,
    }));
    entries.push(Entry::File {
        path: "bin/busybox".into(),
        mode: 0o755,
        data: std::fs::read(busybox).map_err(io_err("read", busybox))?,
    });
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(io_err("run", busybox))?;
    for applet in String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        entries.push(Entry::Symlink {
            path: format!("bin/{applet}"),
            target: "busybox".into(),
        });
    }
    let tool = init.with_file_name("zvm-vsock-tool");
    entries.push(Entry::File {
        path: "bin/zvm-vsock-tool".into(),
        mode: 0o755,
        data: std::fs::read(&tool).map_err(io_err("read", &tool))?,
    });
    entries.push(Entry::File {
        path: "zvm-test.sh".into(),
        mode: 0o755,
        data: script.as_bytes().to_vec(),
    });
    Ok(initramfs::pack_uncompressed(&entries)?)
}

/// Builds (or finds) the kernel and init and writes the initramfs running `script`.
pub fn prepare(cfg: &DeviceConfig, script: &str, dir: &Path, name: &str) -> Result<GuestSpec> {
    let (kernel, init) = crate::boot::kernel_and_init(cfg.kernel.as_ref(), cfg.init.as_ref())?;
    let initrd = dir.join(name);
    std::fs::write(&initrd, busybox_initramfs(&init, script)?).map_err(io_err("write", &initrd))?;
    Ok(GuestSpec {
        kernel,
        initrd: Some(initrd),
        cmdline: format!("{CMDLINE} zvm.mode=script"),
        cpus: 1,
        mem_mib: DEVICE_MEM_MIB,
    })
}

/// The devices a run gives the guest.
#[derive(Debug, Clone, Copy)]
pub struct Devices<'a> {
    /// Raw disk image (the guest's /dev/vda).
    pub disk: Option<&'a Path>,
    /// Whether to attach a NIC on the namespace's tap (the guest's eth0).
    pub net: bool,
}

/// zvm's device arguments.
pub fn zvm_device_args(dev: Devices<'_>, tap: &str) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(disk) = dev.disk {
        args.extend(["--disk".to_string(), format!("path={}", disk.display())]);
    }
    if dev.net {
        args.extend(["--net".to_string(), format!("tap={tap},mac={GUEST_MAC}")]);
    }
    args
}

/// QEMU's device arguments. `-M microvm` is switched to `acpi=off`: with ACPI (the
/// default) QEMU describes its virtio-mmio devices only in the DSDT; without it QEMU
/// appends `virtio_mmio.device=` to the command line, which any kernel finds (the
/// project's has ACPI now, a guest kernel under test may not).
pub fn qemu_device_args(args: &mut Vec<String>, dev: Devices<'_>, tap: &str) {
    if let Some(m) = args.iter().position(|a| a == "microvm") {
        args[m] = "microvm,acpi=off".into();
    }
    if let Some(disk) = dev.disk {
        args.extend([
            "-drive".to_string(),
            format!(
                "file={},format=raw,if=none,id=d0,cache=none,aio=threads",
                disk.display()
            ),
            "-device".into(),
            "virtio-blk-device,drive=d0".into(),
        ]);
    }
    if dev.net {
        args.extend([
            "-netdev".to_string(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off"),
            "-device".into(),
            format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}"),
        ]);
    }
}

/// The command that runs `vmm` with `dev` inside `ns`.
pub fn command(
    launcher: &Launcher,
    vmm: Vmm,
    guest: &GuestSpec,
    dev: Devices<'_>,
    ns: &NetNs,
    probe: &KvmProbe,
) -> Command {
    let (program, mut args) = match vmm {
        Vmm::Zvm => {
            let mut a = zvm_args(guest);
            a.extend(zvm_device_args(dev, &ns.tap));
            (&launcher.zvm, a)
        }
        Vmm::Qemu => {
            let mut a = qemu_args(guest, launcher.pvm);
            qemu_device_args(&mut a, dev, &ns.tap);
            (&launcher.qemu, a)
        }
    };
    args.extend(probe.vmm_args());
    let mut cmd = ns.command(program);
    cmd.args(args);
    cmd
}

/// User plus system CPU time of a process, in clock ticks, from the text of
/// `/proc/PID/stat` (fields 14 and 15, counted after the parenthesised name).
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds used so far by process `pid` (all its threads).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0)
        .then(|| parse_stat_cpu(&stat).map(|t| t as f64 / hz as f64))
        .flatten()
}

/// What is taken of the VMM at a marker: its CPU seconds and KVM's counters.
pub type PhaseSample = (Option<f64>, Option<KvmCounters>);

/// The probe for `vmm` in run `run`: zvm's metrics file or QEMU's QMP socket in `dir`
/// (removed first, so that each run starts afresh).
pub fn kvm_probe(vmm: Vmm, dir: &Path, run: usize) -> KvmProbe {
    let probe = match vmm {
        Vmm::Zvm => KvmProbe::Zvm {
            metrics: dir.join(format!("zvm-metrics-{run}.json")),
        },
        Vmm::Qemu => KvmProbe::Qemu {
            qmp: dir.join(format!("qemu-qmp-{run}.sock")),
        },
    };
    let path = match &probe {
        KvmProbe::Zvm { metrics } => metrics,
        KvmProbe::Qemu { qmp } => qmp,
    };
    let _ = std::fs::remove_file(path);
    probe
}

/// One run of a device benchmark: the console, and the VMM's CPU seconds and KVM's
/// counters at each marker.
#[derive(Debug)]
pub struct PhaseRun {
    /// The run's output (console lines, stderr, ending).
    pub out: RunOutput<Vec<Option<PhaseSample>>>,
}

impl PhaseRun {
    /// Runs `cmd` until every marker was seen (or the time limit), sampling CPU time and
    /// KVM's counters (through `probe`).
    pub fn run(
        cmd: &mut Command,
        markers: &[&str],
        timeout: Duration,
        probe: &KvmProbe,
    ) -> Result<PhaseRun> {
        let watch = Watch {
            markers,
            sample_at: None,
            timeout,
        };
        Ok(PhaseRun {
            out: run_watched_each(cmd, &watch, |pid| (cpu_seconds(pid), probe.sample(pid)))?,
        })
    }

    fn sample(&self, i: usize) -> Option<&PhaseSample> {
        self.out.sample.as_ref()?.get(i)?.as_ref()
    }

    /// The VMM's CPU seconds between markers `a` and `b`.
    pub fn cpu_between(&self, a: usize, b: usize) -> Option<f64> {
        Some(self.sample(b)?.0? - self.sample(a)?.0?)
    }

    /// How much KVM's counter `name` grew between markers `a` and `b`.
    pub fn kvm_between(&self, a: usize, b: usize, name: &str) -> Option<f64> {
        kvm_stats::grew(&self.sample(a)?.1, &self.sample(b)?.1, name)
    }

    /// How much every KVM counter grew between markers `a` and `b`.
    pub fn kvm_growth(
        &self,
        a: usize,
        b: usize,
    ) -> Option<std::collections::BTreeMap<String, f64>> {
        kvm_stats::growth(&self.sample(a)?.1, &self.sample(b)?.1)
    }

    /// Seconds between markers `a` and `b` (as the console showed them).
    pub fn secs_between(&self, a: usize, b: usize) -> Option<f64> {
        let (a, b) = (
            self.out.marks.get(a)?.as_ref()?,
            self.out.marks.get(b)?.as_ref()?,
        );
        Some(b.saturating_sub(*a).as_secs_f64())
    }

    /// The first console line containing `prefix`, from `prefix` on.
    pub fn line(&self, prefix: &str) -> Option<&str> {
        self.out
            .lines
            .iter()
            .find_map(|(_, l)| l.find(prefix).map(|i| &l[i..]))
    }

    /// Whether every marker was seen.
    pub fn complete(&self) -> bool {
        self.out.marks.iter().all(Option::is_some)
    }

    /// How the VMM ended.
    pub fn ending(&self) -> Ending {
        self.out.ending
    }
}

/// Parses `key=value` pairs of a guest result line (after its tag) into numbers;
/// non-numeric values are skipped.
pub fn parse_fields(line: &str, tag: &str) -> Option<Vec<(String, f64)>> {
    let rest = line.trim().strip_prefix(tag)?;
    Some(
        rest.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| {
                v.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .map(|v| (k.to_string(), v))
            })
            .collect(),
    )
}

/// The value of `key` among parsed fields.
pub fn field(fields: &[(String, f64)], key: &str) -> Option<f64> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// Creates a sparse raw image of `mib` MiB.
pub fn sparse_image(path: &Path, mib: u64) -> Result<()> {
    let file = std::fs::File::create(path).map_err(io_err("create", path))?;
    file.set_len(mib << 20).map_err(io_err("size", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_is_utime_plus_stime_even_with_odd_names() {
        let stat =
            "1234 (zvm (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1000 1 2";
        assert_eq!(parse_stat_cpu(stat), Some(325));
        assert_eq!(parse_stat_cpu("1 (a) S 1 2"), None);
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn fields_parse_numbers_and_skip_the_rest() {
        let f = parse_fields(
            "BLK seq_write_mib_s=12.5 seq_read_mib_s=x rand_read_iops=300.0 junk",
            "BLK",
        )
        .unwrap_or_default();
        assert_eq!(field(&f, "seq_write_mib_s"), Some(12.5));
        assert_eq!(field(&f, "seq_read_mib_s"), None);
        assert_eq!(field(&f, "rand_read_iops"), Some(300.0));
        assert!(parse_fields("NET x=1", "BLK").is_none());
    }

    #[test]
    fn qemu_gets_mmio_devices_on_the_command_line_without_acpi() {
        let mut args = vec!["-M".to_string(), "microvm".into()];
        qemu_device_args(
            &mut args,
            Devices {
                disk: Some(Path::new("/d.img")),
                net: true,
            },
            "t0",
        );
        assert_eq!(args[1], "microvm,acpi=off");
        assert!(args
            .iter()
            .any(|a| a == "file=/d.img,format=raw,if=none,id=d0,cache=none,aio=threads"));
        assert!(args
            .iter()
            .any(|a| a == "tap,id=n0,ifname=t0,script=no,downscript=no,vhost=off"));
        let z = zvm_device_args(
            Devices {
                disk: Some(Path::new("/d.img")),
                net: true,
            },
            "t0",
        );
        assert_eq!(
            z,
            [
                "--disk",
                "path=/d.img",
                "--net",
                &format!("tap=t0,mac={GUEST_MAC}")
            ]
        );
    }
}
