//! What a VM's own process keeps resident without guest RAM, zvm against QEMU `-M microvm`,
//! with no guest kernel: the `overhead` benchmark's tiny PVH guest, which here halts
//! after its `!` instead of resetting, so the VM stays up to be measured. The VMM is
//! sampled `SETTLE` after the `!` (`/proc/PID/smaps`, as `boot` samples it: every mapping
//! but the guest RAM), then killed. For zvm the process measured is the one `zvm run`
//! became: the lean `zvm-vmm` it hands plain VMs to. Each run also measures an API-mode
//! VM (`zvm --api-sock`, [`crate::footprint_api`]) served by zvm-vmm and by zvm itself.

use crate::error::{io_err, Result};
use crate::footprint_api::{self, ApiSample, Server};
use crate::measure::{median, ratio, run_watched, Watch};
use crate::overhead::{pvh_elf, LOAD_ADDR};
use crate::smaps::{parse_smaps, vmm_memory, VmmMemory};
use crate::vmms::{order, GuestSpec, Launcher, Vmm};
use std::path::Path;
use std::time::Duration;

/// How long after its first output the VMM is sampled (its set-up is over by then).
const SETTLE: Duration = Duration::from_millis(300);
/// Guest memory of the measured VMs.
pub const MEM_MIB: u64 = 256;

/// The guest: `GUEST_CODE` without the reset, so the vCPU halts (in KVM, with the
/// in-kernel irqchip) after printing `!`:
/// `mov dx, 0x3f8; mov al, '!'; out dx, al; mov al, 0x0a; out dx, al; hlt; jmp $-1`.
pub const HALTING_GUEST_CODE: [u8; 13] = [
    0x66, 0xba, 0xf8, 0x03, 0xb0, b'!', 0xee, 0xb0, 0x0a, 0xee, 0xf4, 0xeb, 0xfd,
];

/// One sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Which VMM.
    pub vmm: Vmm,
    /// The executable the process ran when sampled.
    pub exe: String,
    /// Its memory.
    pub memory: VmmMemory,
    /// Resident KiB of the mappings of its own executable.
    pub exe_kib: u64,
}

/// Results.
#[derive(Debug, Clone, Default)]
pub struct FootprintReport {
    /// Every sample.
    pub samples: Vec<Sample>,
    /// The API-mode samples.
    pub api: Vec<ApiSample>,
    /// Runs without a sample.
    pub failures: usize,
}

impl FootprintReport {
    fn median_of(&self, vmm: Vmm, f: impl Fn(&Sample) -> u64) -> Option<f64> {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.vmm == vmm)
            .map(|s| f(s) as f64)
            .collect();
        median(&v)
    }

    /// Median Rss without guest RAM of `vmm`, KiB.
    pub fn rss_kib(&self, vmm: Vmm) -> Option<f64> {
        self.median_of(vmm, |s| s.memory.rss_kib)
    }

    /// The results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let per = |vmm: Vmm| {
            serde_json::json!({
                "rss_kib": self.rss_kib(vmm),
                "private_kib": self.median_of(vmm, |s| s.memory.private_kib),
                "exe_kib": self.median_of(vmm, |s| s.exe_kib),
                "exe": self.samples.iter().find(|s| s.vmm == vmm).map(|s| s.exe.clone()),
            })
        };
        serde_json::json!({
            "zvm": per(Vmm::Zvm), "qemu": per(Vmm::Qemu),
            "ratio_zvm_qemu": ratio(self.rss_kib(Vmm::Zvm), self.rss_kib(Vmm::Qemu)),
            "api": footprint_api::to_json(&self.api, Server::Lean),
            "api_in_zvm": footprint_api::to_json(&self.api, Server::Zvm),
            "ratio_api_qemu": ratio(
                footprint_api::rss_kib(&self.api, Server::Lean),
                self.rss_kib(Vmm::Qemu)
            ),
            "failures": self.failures,
        })
    }
}

/// Samples `pid` after [`SETTLE`].
pub fn sample(vmm: Vmm, pid: u32) -> Result<Sample> {
    std::thread::sleep(SETTLE);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
    let maps = parse_smaps(&text);
    let exe_kib = maps
        .iter()
        .filter(|m| !exe.is_empty() && m.path == exe)
        .map(|m| m.rss_kib)
        .sum();
    Ok(Sample {
        vmm,
        exe,
        memory: vmm_memory(&maps, MEM_MIB << 20),
        exe_kib,
    })
}

/// Runs `runs` samples per VMM, alternating, and prints them.
pub fn run(
    launcher: &Launcher,
    runs: usize,
    timeout: Duration,
    dir: &Path,
) -> Result<FootprintReport> {
    let kernel = dir.join("pvh-halting.elf");
    std::fs::write(&kernel, pvh_elf(&HALTING_GUEST_CODE, LOAD_ADDR))
        .map_err(io_err("write", &kernel))?;
    let guest = GuestSpec {
        kernel,
        initrd: None,
        cmdline: "console=ttyS0".into(),
        cpus: 1,
        mem_mib: MEM_MIB,
    };
    println!("== VMM footprint: Rss without guest RAM, {runs} run(s) per VMM");
    println!(
        "   guest: the tiny PVH guest (prints '!', halts), 1 vCPU, {MEM_MIB} MiB; sampled {} ms after '!'",
        SETTLE.as_millis()
    );
    println!(
        "{:>4}  {:<5}  {:>9}  {:>12}  {:>12}  executable",
        "run", "vmm", "Rss KiB", "private KiB", "its exe KiB"
    );
    let mut report = FootprintReport::default();
    for i in 0..runs {
        for vmm in order(i) {
            let watch = Watch {
                markers: &["!"],
                sample_at: Some(0),
                timeout,
            };
            let mut out = run_watched(&mut launcher.command(vmm, &guest), &watch, |pid| {
                sample(vmm, pid)
            })?;
            match out.sample.take() {
                Some(Ok(s)) => {
                    println!(
                        "{:>4}  {:<5}  {:>9}  {:>12}  {:>12}  {}",
                        i + 1,
                        vmm.name(),
                        s.memory.rss_kib,
                        s.memory.private_kib,
                        s.exe_kib,
                        s.exe
                    );
                    report.samples.push(s);
                }
                other => {
                    report.failures += 1;
                    let why = match other {
                        Some(Err(e)) => e.to_string(),
                        _ => format!("no '!'; {}", out.tail(5)),
                    };
                    eprintln!("warning: {} run {}: {why}", vmm.name(), i + 1);
                }
            }
        }
        for server in [Server::Lean, Server::Zvm] {
            match footprint_api::run_one(&launcher.zvm, &guest.kernel, dir, server, timeout) {
                Ok(s) => {
                    println!(
                        "{:>4}  {:<5}  {:>9}  {:>12}  {:>12}  {} (spawn to '!' {:.1} ms, InstanceStart to '!' {:.1} ms)",
                        i + 1,
                        server.name(),
                        s.sample.memory.rss_kib,
                        s.sample.memory.private_kib,
                        s.sample.exe_kib,
                        s.sample.exe,
                        crate::measure::ms(s.spawn_to_output),
                        crate::measure::ms(s.start_to_output),
                    );
                    report.api.push(s);
                }
                Err(e) => {
                    report.failures += 1;
                    eprintln!("warning: {} run {}: {e}", server.name(), i + 1);
                }
            }
        }
    }
    let (z, q) = (report.rss_kib(Vmm::Zvm), report.rss_kib(Vmm::Qemu));
    let kib = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    println!(
        "median Rss without guest RAM: zvm {} KiB, QEMU {} KiB, zvm/QEMU {}",
        kib(z),
        kib(q),
        ratio(z, q).map_or("-".into(), |r| format!("{r:.3}"))
    );
    println!(
        "API mode, after InstanceStart: served by zvm-vmm {} KiB, by zvm (ZVM_VMM=none) {} KiB",
        kib(footprint_api::rss_kib(&report.api, Server::Lean)),
        kib(footprint_api::rss_kib(&report.api, Server::Zvm)),
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overhead::GUEST_CODE;

    #[test]
    fn the_halting_guest_is_the_overhead_guest_without_its_reset() {
        // Same output, then the hlt loop; only `mov al, 0xfe; out 0x64, al` is gone.
        assert_eq!(HALTING_GUEST_CODE[..10], GUEST_CODE[..10]);
        assert_eq!(HALTING_GUEST_CODE[10..], GUEST_CODE[14..]);
    }
}
