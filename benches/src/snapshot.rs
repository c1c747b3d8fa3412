//! Snapshot and restore: restore request -> vCPUs running again and -> the guest answering
//! over vsock, full and diff snapshot creation (time, size, pages), the memory of clones
//! of one snapshot against cold-booted VMs, and the cold boot of the same guest under zvm
//! and QEMU microvm as the peers. See benches/README.md ("Snapshots").
//!
//! The guest is the device benchmarks' busybox initramfs running `zvm-vsock-tool serve
//! 5000` (a command server on vsock port 5000), 1 vCPU, 256 MiB. "Answers" means: the
//! host connects to zvm's vsock Unix socket, sends `CONNECT 5000`, gets `OK`, sends
//! `ping`, half-closes and reads `pong` back (retrying until the guest listens); the
//! server answers `ping` itself, without starting a shell.

use crate::boot::USERSPACE_MARKER;
use crate::devices::{prepare, DeviceConfig};
use crate::error::{io_err, BenchError, Result};
use crate::measure::{fmt_opt, median, ms};
use crate::snapshot_report::{print_summary, ColdBoot, Restore, SnapshotReport};
use crate::snapshot_vm::{rollup_kib, sparse_copy, vsock_answer, vsock_answer_counting, Proc};
use crate::vmms::{order, GuestSpec, Launcher, Vmm};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The guest's script: the command server, then wait.
const SCRIPT: &str = "dmesg -n 1\nzvm-vsock-tool serve 5000 &\nwait\n";
/// Full snapshots taken (median).
const FULL_SNAPSHOTS: usize = 3;

/// Settings of the snapshot benchmark.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// Sequential restores timed.
    pub restores: usize,
    /// Clones of one snapshot running at once for the memory figure.
    pub clones: usize,
    /// Cold-booted VMs running at once for the memory figure (0: skip).
    pub cold_vms: usize,
    /// Cold boots per VMM (zvm and QEMU) for the peers.
    pub boot_runs: usize,
    /// Kernel and init (None: the project's).
    pub kernel: Option<PathBuf>,
    /// Guest init.
    pub init: Option<PathBuf>,
    /// Time limit of one boot (each cold VM, each peer boot, the base VM).
    pub timeout: Duration,
}

fn fail(what: impl Into<String>) -> BenchError {
    BenchError::Spawn {
        program: "zvm".into(),
        source: std::io::Error::other(what.into()),
    }
}

/// The number after `key` in zvm's log text (its last occurrence).
pub fn logged_number(log: &str, key: &str) -> Option<f64> {
    let at = log.rfind(key)? + key.len();
    let digits: String = log[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse().ok()
}

fn load_body(state: &Path, mem: &Path, uds: &Path) -> serde_json::Value {
    serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "enable_diff_snapshots": false,
        "resume_vm": true,
        "vsock_override": {"uds_path": uds},
    })
}

/// Boots the base VM through the API and times InstanceStart -> answer.
fn boot_base(
    zvm: &Path,
    guest: &GuestSpec,
    dir: &Path,
    timeout: Duration,
) -> Result<(Proc, PathBuf, Duration)> {
    let base = Proc::api(zvm, &dir.join("base.sock"), "base")?;
    let uds = dir.join("base.vsock");
    let mut boot =
        serde_json::json!({"kernel_image_path": guest.kernel, "boot_args": guest.cmdline});
    if let Some(initrd) = &guest.initrd {
        boot["initrd_path"] = serde_json::json!(initrd);
    }
    base.put("/boot-source", &boot)?;
    let machine = serde_json::json!({"vcpu_count": guest.cpus, "mem_size_mib": guest.mem_mib, "track_dirty_pages": true});
    base.put("/machine-config", &machine)?;
    base.put(
        "/vsock",
        &serde_json::json!({"guest_cid": 3, "uds_path": uds}),
    )?;
    let start = Instant::now();
    base.put(
        "/actions",
        &serde_json::json!({"action_type": "InstanceStart"}),
    )?;
    vsock_answer(
        &uds,
        "ping",
        "pong",
        start + timeout,
        Duration::from_millis(100),
    )
    .ok_or_else(|| {
        fail(format!(
            "the base VM never answered over vsock; {}",
            base.tail()
        ))
    })?;
    Ok((base, uds, start.elapsed()))
}

/// Full snapshots (paused), then a diff after a small change.
fn snapshots(
    base: &Proc,
    uds: &Path,
    dir: &Path,
    report: &mut SnapshotReport,
) -> Result<(PathBuf, PathBuf)> {
    base.patch("/vm", &serde_json::json!({"state": "Paused"}))?;
    let (state, mem) = (dir.join("full-0.state"), dir.join("full-0.mem"));
    for i in 0..FULL_SNAPSHOTS {
        let (s, m) = (
            dir.join(format!("full-{i}.state")),
            dir.join(format!("full-{i}.mem")),
        );
        let start = Instant::now();
        base.put(
            "/snapshot/create",
            &serde_json::json!({"snapshot_type": "Full", "snapshot_path": s, "mem_file_path": m}),
        )?;
        report.full.push(start.elapsed());
        let meta = std::fs::metadata(&m).map_err(io_err("stat", &m))?;
        let state_len = std::fs::metadata(&s).map_err(io_err("stat", &s))?.len();
        report.sizes = (
            meta.len(),
            std::os::unix::fs::MetadataExt::blocks(&meta) * 512,
            state_len,
        );
        if i > 0 {
            let _ = std::fs::remove_file(&m);
        }
    }
    // A small change: one request (a file in the guest's tmpfs), then a diff over a copy.
    base.patch("/vm", &serde_json::json!({"state": "Resumed"}))?;
    let changed = vsock_answer(
        uds,
        "echo small-change > /tmp/change && echo changed",
        "changed",
        Instant::now() + Duration::from_secs(120),
        Duration::from_millis(50),
    );
    base.patch("/vm", &serde_json::json!({"state": "Paused"}))?;
    if changed.is_none() {
        report.failures += 1;
        eprintln!("warning: the small change before the diff snapshot got no answer");
    }
    let diff_mem = dir.join("diff.mem");
    sparse_copy(&mem, &diff_mem)?;
    let start = Instant::now();
    let diff_state = dir.join("diff.state");
    base.put("/snapshot/create", &serde_json::json!({"snapshot_type": "Diff", "snapshot_path": diff_state, "mem_file_path": diff_mem}))?;
    report.diff = Some(start.elapsed());
    // zvm logs each snapshot before answering; its stderr may reach us a moment later.
    let logged = Instant::now() + Duration::from_secs(2);
    while base.stderr().matches("snapshot created").count() <= FULL_SNAPSHOTS
        && Instant::now() < logged
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = base.stderr();
    report.diff_pages_written = (log.matches("snapshot created").count() > FULL_SNAPSHOTS)
        .then(|| logged_number(&log, "pages_written="))
        .flatten()
        .map(|v| v as u64);
    report.diff_pages_changed = Some(crate::snapshot_vm::pages_differing(&mem, &diff_mem)?);
    let _ = std::fs::remove_file(&diff_mem);
    Ok((state, mem))
}

/// One restore in a fresh `zvm --api-sock`: the load round trip and load -> answer.
fn restore_once(
    zvm: &Path,
    state: &Path,
    mem: &Path,
    dir: &Path,
    name: &str,
    limit: Duration,
) -> Result<(Proc, Restore)> {
    let p = Proc::api(zvm, &dir.join(format!("{name}.sock")), name)?;
    let uds = dir.join(format!("{name}.vsock"));
    let start = Instant::now();
    p.put("/snapshot/load", &load_body(state, mem, &uds))?;
    let load = start.elapsed();
    let (answered, broken) = vsock_answer_counting(
        &uds,
        "ping",
        "pong",
        start + limit,
        Duration::from_millis(1),
    );
    let answer = answered.map(|at| at - start);
    let load_logged_ms = logged_number(&p.stderr(), "snapshot loaded in");
    Ok((
        p,
        Restore {
            load: Some(load),
            load_logged_ms,
            answer,
            broken,
        },
    ))
}

/// The peers: spawn -> userspace (both VMMs) and spawn -> answer (zvm).
fn cold_boot(
    launcher: &Launcher,
    vmm: Vmm,
    guest: &GuestSpec,
    uds: &Path,
    timeout: Duration,
) -> Result<(Proc, ColdBoot)> {
    let mut cmd = launcher.command(vmm, guest);
    if vmm == Vmm::Zvm {
        let _ = std::fs::remove_file(uds);
        cmd.arg("--vsock")
            .arg(format!("cid=3,uds={}", uds.display()));
    }
    let start = Instant::now();
    let mut p = Proc::spawn(&mut cmd, None, &[USERSPACE_MARKER], start)?;
    let deadline = start + timeout;
    let answer = match vmm {
        Vmm::Zvm => vsock_answer(uds, "ping", "pong", deadline, Duration::from_millis(50))
            .map(|at| at - start),
        Vmm::Qemu => None,
    };
    while p.marks()[0].is_none() && Instant::now() < deadline && p.running() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let userspace = p.marks()[0];
    Ok((
        p,
        ColdBoot {
            vmm,
            userspace,
            answer,
        },
    ))
}

fn sum_rollup(procs: &[Proc]) -> (Option<u64>, Option<u64>) {
    let all: Option<Vec<(u64, u64)>> = procs.iter().map(|p| rollup_kib(p.pid())).collect();
    match all {
        Some(v) => (
            Some(v.iter().map(|x| x.0).sum()),
            Some(v.iter().map(|x| x.1).sum()),
        ),
        None => (None, None),
    }
}

/// `n` clones of one snapshot running at once, each having answered once.
fn clones(
    zvm: &Path,
    state: &Path,
    mem: &Path,
    dir: &Path,
    n: usize,
    report: &mut SnapshotReport,
) -> Result<()> {
    let mut procs = Vec::new();
    for i in 0..n {
        match restore_once(
            zvm,
            state,
            mem,
            dir,
            &format!("clone-{i}"),
            Duration::from_secs(300),
        ) {
            Ok((p, r)) if r.answer.is_some() => procs.push(p),
            Ok(_) => {
                report.failures += 1;
                eprintln!("warning: clone {i} never answered");
            }
            Err(e) => {
                report.failures += 1;
                eprintln!("warning: clone {i}: {e}");
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let (pss, rss) = sum_rollup(&procs);
    report.clones = (procs.len(), pss, rss);
    Ok(())
}

/// Waits until the guest of `p` answers through `uds`, giving up when `p` ends or at
/// `deadline` (a boot that stops making progress then costs no more than its own limit).
fn wait_answer(p: &mut Proc, uds: &Path, deadline: Instant, poll: Duration) -> Option<Instant> {
    while p.running() && Instant::now() < deadline {
        let slice = deadline.min(Instant::now() + Duration::from_secs(5));
        if let Some(at) = vsock_answer(uds, "ping", "pong", slice, poll) {
            return Some(at);
        }
    }
    None
}

/// `cfg.cold_vms` cold-booted VMs all running, each having answered once. They boot a
/// few at a time (as many as the host has CPUs): a PVM host's emulated boots starve each
/// other when more boot together, and the memory figure only needs them all running.
fn cold_vms(
    launcher: &Launcher,
    guest: &GuestSpec,
    dir: &Path,
    cfg: &SnapshotConfig,
    report: &mut SnapshotReport,
) -> Result<()> {
    let wave = std::thread::available_parallelism().map_or(2, |n| n.get());
    let start = Instant::now();
    let mut ready = Vec::new();
    let indexes: Vec<usize> = (0..cfg.cold_vms).collect();
    for batch in indexes.chunks(wave) {
        let mut booting = Vec::new();
        for &i in batch {
            let uds = dir.join(format!("cold-{i}.vsock"));
            let _ = std::fs::remove_file(&uds);
            let mut cmd = launcher.command(Vmm::Zvm, guest);
            cmd.arg("--vsock")
                .arg(format!("cid=3,uds={}", uds.display()));
            booting.push((
                i,
                Proc::spawn(&mut cmd, None, &[USERSPACE_MARKER], Instant::now())?,
                uds,
            ));
        }
        let deadline = Instant::now() + cfg.timeout;
        for (i, mut p, uds) in booting {
            match wait_answer(&mut p, &uds, deadline, Duration::from_millis(200)) {
                Some(at) => {
                    println!(
                        "   cold VM {}: answered {:.1} s after the first spawn",
                        i + 1,
                        (at - start).as_secs_f64()
                    );
                    ready.push(p);
                }
                None => {
                    report.failures += 1;
                    eprintln!("warning: cold VM {} never answered; {}", i + 1, p.tail());
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let each: Vec<f64> = ready
        .iter()
        .filter_map(|p| rollup_kib(p.pid()))
        .map(|x| x.0 as f64)
        .collect();
    let (pss, _) = sum_rollup(&ready);
    report.cold = (ready.len(), pss, median(&each));
    Ok(())
}

/// Runs the benchmark.
pub fn run(launcher: &Launcher, cfg: &SnapshotConfig, dir: &Path) -> Result<SnapshotReport> {
    let dc = DeviceConfig {
        runs: 1,
        kernel: cfg.kernel.clone(),
        init: cfg.init.clone(),
        timeout: cfg.timeout,
    };
    let guest = prepare(&dc, SCRIPT, dir, "snapshot-initramfs.cpio")?;
    let mut report = SnapshotReport::default();
    println!("== Snapshots: {} vCPU, {} MiB; {} restores, {} clones, {} cold VMs, {} cold boot(s) per VMM", guest.cpus, guest.mem_mib, cfg.restores, cfg.clones, cfg.cold_vms, cfg.boot_runs);
    println!(
        "   zvm {}; qemu {} -cpu {}",
        launcher.zvm.display(),
        launcher.qemu.display(),
        launcher.qemu_cpu()
    );
    let (base, uds, booted) = boot_base(&launcher.zvm, &guest, dir, cfg.timeout)?;
    report.base_boot = Some(booted);
    println!(
        "   base VM (API boot): InstanceStart -> answer {:.1} s",
        booted.as_secs_f64()
    );
    let (state, mem) = snapshots(&base, &uds, dir, &mut report)?;
    drop(base);
    println!(
        "   full snapshots: {:?} ms; diff {} ms",
        report
            .full
            .iter()
            .map(|d| (ms(*d) * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        fmt_opt(report.diff.map(ms), 1)
    );
    println!(
        "{:>4}  {:>12}  {:>14}  {:>14}  {:>6}",
        "run", "load RTT ms", "zvm's load ms", "-> answer ms", "resets"
    );
    for i in 0..cfg.restores {
        match restore_once(
            &launcher.zvm,
            &state,
            &mem,
            dir,
            &format!("restore-{i}"),
            Duration::from_secs(120),
        ) {
            Ok((_, r)) => {
                if r.answer.is_none() {
                    report.failures += 1;
                }
                println!(
                    "{:>4}  {:>12}  {:>14}  {:>14}  {:>6}",
                    i + 1,
                    fmt_opt(r.load.map(ms), 2),
                    fmt_opt(r.load_logged_ms, 2),
                    fmt_opt(r.answer.map(ms), 1),
                    r.broken
                );
                report.restores.push(r);
            }
            Err(e) => {
                report.failures += 1;
                eprintln!("warning: restore {}: {e}", i + 1);
            }
        }
    }
    clones(&launcher.zvm, &state, &mem, dir, cfg.clones, &mut report)?;
    if cfg.cold_vms > 0 {
        cold_vms(launcher, &guest, dir, cfg, &mut report)?;
    }
    for i in 0..cfg.boot_runs {
        for vmm in order(i) {
            let (p, b) =
                match cold_boot(launcher, vmm, &guest, &dir.join("peer.vsock"), cfg.timeout) {
                    Ok(run) => run,
                    Err(e) => {
                        report.failures += 1;
                        eprintln!("warning: cold boot {} {}: {e}", i + 1, vmm.name());
                        continue;
                    }
                };
            let shown = |d: Option<Duration>| fmt_opt(d.map(ms), 0);
            println!(
                "   cold boot {} {}: spawn -> userspace {} ms, -> answer {} ms",
                i + 1,
                vmm.name(),
                shown(b.userspace),
                shown(b.answer)
            );
            if b.userspace.is_none() || (vmm == Vmm::Zvm && b.answer.is_none()) {
                report.failures += 1;
                eprintln!(
                    "warning: cold boot {} {} missed a marker; {}",
                    i + 1,
                    vmm.name(),
                    p.tail()
                );
            }
            report.boots.push(b);
        }
    }
    print_summary(&report, cfg.clones);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_from_zvm_log_lines() {
        let log = " INFO snapshot created in 163.3 ms kind=Full pages_written=12\n INFO snapshot created in 3.4 ms kind=Diff pages_written=7\n";
        assert_eq!(logged_number(log, "pages_written="), Some(7.0));
        assert_eq!(
            logged_number(
                " INFO snapshot loaded in 2.5 ms state=/s",
                "snapshot loaded in"
            ),
            Some(2.5)
        );
        assert_eq!(logged_number("nothing", "pages_written="), None);
    }
}
