//! The footprint of an API-mode VM: `zvm --api-sock` configured through the API with the
//! footprint benchmark's halting guest (`PUT /boot-source`, `/machine-config`, then
//! `InstanceStart`), sampled [`SETTLE`](crate::footprint) after the guest's `!` as the
//! `zvm run` VM is. Twice per run: as zvm runs it (handed to the lean `zvm-vmm`, which
//! serves the API) and with `ZVM_VMM=none` (zvm serves it itself, as before the hand-over).
//! Also spawn to the guest's first output, and InstanceStart to it.

use crate::error::{BenchError, Result};
use crate::footprint::{sample, Sample, MEM_MIB};
use crate::measure::{median, ms};
use crate::snapshot_vm::Proc;
use crate::vmms::Vmm;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Which process serves the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// zvm's default: the lean zvm-vmm zvm hands API mode to.
    Lean,
    /// `ZVM_VMM=none`: zvm itself.
    Zvm,
}

impl Server {
    /// The row's name.
    pub fn name(self) -> &'static str {
        match self {
            Server::Lean => "api",
            Server::Zvm => "api-in-zvm",
        }
    }
}

/// One API-mode sample.
#[derive(Debug, Clone)]
pub struct ApiSample {
    /// Who served it.
    pub server: Server,
    /// The memory of the process serving the API, after InstanceStart.
    pub sample: Sample,
    /// Spawn to the guest's `!`.
    pub spawn_to_output: Duration,
    /// InstanceStart's request to the guest's `!`.
    pub start_to_output: Duration,
}

/// Runs one API-mode VM of `kernel` under `server` and samples it.
pub fn run_one(
    zvm: &Path,
    kernel: &Path,
    dir: &Path,
    server: Server,
    timeout: Duration,
) -> Result<ApiSample> {
    let sock = dir.join(format!("footprint-{}.sock", server.name()));
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new(zvm);
    cmd.arg("--api-sock").arg(&sock).args(["--id", "footprint"]);
    if server == Server::Zvm {
        cmd.env("ZVM_VMM", "none");
    } else {
        cmd.env_remove("ZVM_VMM");
    }
    let spawned = Instant::now();
    let mut vm = Proc::spawn(&mut cmd, Some(sock.clone()), &["!"], spawned)?;
    let deadline = spawned + timeout;
    let failed = |vm: &Proc, what: &str| BenchError::Spawn {
        program: format!("zvm --api-sock ({})", server.name()),
        source: std::io::Error::other(format!("{what}; {}", vm.tail())),
    };
    while api_server::client::request(&sock, "GET", "/", None, Duration::from_secs(5)).is_err() {
        if !vm.running() || Instant::now() > deadline {
            return Err(failed(&vm, "the API never answered"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let kernel_path = kernel
        .to_str()
        .ok_or_else(|| failed(&vm, "a non-UTF-8 path"))?;
    vm.put(
        "/boot-source",
        &serde_json::json!({"kernel_image_path": kernel_path, "boot_args": "console=ttyS0"}),
    )?;
    vm.put(
        "/machine-config",
        &serde_json::json!({"vcpu_count": 1, "mem_size_mib": MEM_MIB}),
    )?;
    let start = spawned.elapsed();
    vm.put(
        "/actions",
        &serde_json::json!({"action_type": "InstanceStart"}),
    )?;
    let output = loop {
        if let Some(at) = vm.marks().first().copied().flatten() {
            break at;
        }
        if !vm.running() || Instant::now() > deadline {
            return Err(failed(&vm, "no '!' from the guest"));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let sample = sample(Vmm::Zvm, vm.pid())?;
    Ok(ApiSample {
        server,
        sample,
        spawn_to_output: output,
        start_to_output: output.saturating_sub(start),
    })
}

/// The medians of `server`'s samples as JSON.
pub fn to_json(samples: &[ApiSample], server: Server) -> serde_json::Value {
    let of = |f: &dyn Fn(&ApiSample) -> f64| {
        let v: Vec<f64> = samples
            .iter()
            .filter(|s| s.server == server)
            .map(f)
            .collect();
        median(&v)
    };
    serde_json::json!({
        "rss_kib": of(&|s| s.sample.memory.rss_kib as f64),
        "private_kib": of(&|s| s.sample.memory.private_kib as f64),
        "exe_kib": of(&|s| s.sample.exe_kib as f64),
        "spawn_to_output_ms": of(&|s| ms(s.spawn_to_output)),
        "start_to_output_ms": of(&|s| ms(s.start_to_output)),
        "exe": samples.iter().find(|s| s.server == server).map(|s| s.sample.exe.clone()),
    })
}

/// The median Rss without guest RAM of `server`'s samples, KiB.
pub fn rss_kib(samples: &[ApiSample], server: Server) -> Option<f64> {
    let v: Vec<f64> = samples
        .iter()
        .filter(|s| s.server == server)
        .map(|s| s.sample.memory.rss_kib as f64)
        .collect();
    median(&v)
}
