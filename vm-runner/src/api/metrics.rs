//! Metrics as JSON lines (`PUT /metrics`), flushed every [`FLUSH_INTERVAL`], on
//! `FlushMetrics` and when the VM ends.
//!
//! Each line is one JSON object in Firecracker's layout: `utc_timestamp_ms`, `api_server`,
//! `vmm` (state, uptime, the guest's boot time), `latencies_us` (how long the last snapshot
//! create and load, pause and resume took), then the VM's counters (`vcpu` exits by kind,
//! `block`, `net`, `vsock`, `entropy` aggregates and `block_<id>`/`net_<id>` per device),
//! and `kvm`: KVM's own counters of the vCPUs (`exits`, `mmio_exits`, `irq_injections`,
//! ...), summed over the vCPUs under the kernel's names.
//! Like Firecracker's, zvm's counters are the increase since the previous line; `kvm`'s
//! are totals, as KVM and QEMU's `query-stats` give them; latencies are the last value
//! (0 until the operation first ran).

use crate::log_output::open_append;
use api_server::model::InstanceState;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vmm::metrics::{Counter, VmMetrics};

/// How often metrics are written without being asked (Firecracker's period).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// Firecracker's `latencies_us`: how long the last of each operation took, from the
/// request reaching the monitor to its answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Latencies {
    /// `PUT /snapshot/create` with `snapshot_type` Full.
    pub full_create_snapshot: Duration,
    /// `PUT /snapshot/create` with `snapshot_type` Diff.
    pub diff_create_snapshot: Duration,
    /// `PUT /snapshot/load` (the VM rebuilt, and running if `resume_vm`).
    pub load_snapshot: Duration,
    /// `PATCH /vm` to Paused.
    pub pause_vm: Duration,
    /// `PATCH /vm` to Resumed.
    pub resume_vm: Duration,
}

impl Latencies {
    fn to_json(self) -> serde_json::Value {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        serde_json::json!({
            "full_create_snapshot": us(self.full_create_snapshot),
            "diff_create_snapshot": us(self.diff_create_snapshot),
            "load_snapshot": us(self.load_snapshot),
            "pause_vm": us(self.pause_vm),
            "resume_vm": us(self.resume_vm),
        })
    }
}

/// Counters and where they go.
#[derive(Debug, Default)]
pub struct Metrics {
    file: Option<File>,
    /// API requests handled.
    pub requests: Counter,
    /// API requests refused.
    pub refused: Counter,
    /// When the VM was started.
    pub started: Option<Instant>,
    /// The running (or ended) VM's counters.
    pub vm: Option<Arc<VmMetrics>>,
    /// Snapshot, pause and resume latencies.
    pub latencies: Latencies,
}

impl Metrics {
    /// Opens (appends to) the metrics file or named pipe; only once, as Firecracker.
    pub fn set_path(&mut self, path: PathBuf) -> Result<(), String> {
        if self.file.is_some() {
            return Err("the metrics path is already set".into());
        }
        let file = open_append(&path)
            .map_err(|e| format!("cannot open metrics file {}: {e}", path.display()))?;
        self.file = Some(file);
        Ok(())
    }

    /// One metrics line as JSON (and the counters in it count as reported).
    pub fn line(&self, state: InstanceState) -> serde_json::Value {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let boot_time = self.vm.as_ref().and_then(|vm| vm.boot_time());
        let mut line = serde_json::json!({
            "utc_timestamp_ms": now_ms,
            "api_server": { "requests": self.requests.take_delta(), "refused": self.refused.take_delta() },
            "vmm": {
                "state": state,
                "uptime_ms": self.started.map(|s| s.elapsed().as_millis() as u64),
                "boot_time_us": boot_time.map(|t| t.since_build_start.as_micros() as u64),
                "boot_time_since_process_start_us": boot_time.map(|t| t.since_process_start.as_micros() as u64),
            },
            "latencies_us": self.latencies.to_json(),
        });
        if let (Some(vm), Some(map)) = (&self.vm, line.as_object_mut()) {
            map.extend(vm.report());
        }
        line
    }

    /// Writes one line when a metrics path is set.
    pub fn flush(&mut self, state: InstanceState) -> Result<(), String> {
        if self.file.is_none() {
            return Ok(());
        }
        let line = self.line(state);
        if let Some(file) = &mut self.file {
            writeln!(file, "{line}").map_err(|e| format!("cannot write metrics: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::metrics::{BlockMetrics, DeviceMetrics};

    #[test]
    fn flush_appends_json_lines_with_device_counters() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("metrics.json");
        let mut m = Metrics::default();
        m.requests.inc();
        m.flush(InstanceState::NotStarted)
            .expect("no path: nothing written");
        m.set_path(path.clone()).expect("set");
        assert!(m.set_path(path.clone()).is_err(), "only once");
        let vm = Arc::new(VmMetrics::default());
        let disk = Arc::new(BlockMetrics::default());
        vm.register("root", DeviceMetrics::Block(disk.clone()));
        m.vm = Some(vm.clone());
        m.requests.add(2);
        disk.read_bytes.add(4096);
        vm.vcpu().exit_mmio_write.add(7);
        m.flush(InstanceState::Running).expect("flush");
        disk.read_bytes.add(512);
        m.flush(InstanceState::Paused).expect("flush");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0]["api_server"]["requests"], 3,
            "nothing was reported before"
        );
        assert_eq!(lines[0]["block_root"]["read_bytes"], 4096);
        assert_eq!(lines[0]["block"]["read_bytes"], 4096);
        assert_eq!(lines[0]["vcpu"]["exit_mmio_write"], 7);
        assert_eq!(lines[1]["vmm"]["state"], "Paused");
        assert_eq!(
            lines[1]["block_root"]["read_bytes"], 512,
            "the increase since the first line"
        );
        assert_eq!(lines[1]["api_server"]["requests"], 0);
        assert!(lines[1]["utc_timestamp_ms"].as_u64().is_some());
        assert_eq!(lines[0]["latencies_us"]["load_snapshot"], 0, "not loaded");
    }

    #[test]
    fn latencies_are_the_last_value_in_microseconds() {
        let mut m = Metrics::default();
        m.latencies.load_snapshot = Duration::from_micros(4321);
        m.latencies.diff_create_snapshot = Duration::from_millis(7);
        m.latencies.pause_vm = Duration::from_micros(12);
        for _ in 0..2 {
            let l = &m.line(InstanceState::Paused)["latencies_us"];
            assert_eq!(l["load_snapshot"], 4321);
            assert_eq!(l["diff_create_snapshot"], 7000);
            assert_eq!(l["full_create_snapshot"], 0);
            assert_eq!(l["pause_vm"], 12);
            assert_eq!(l["resume_vm"], 0);
        }
    }

    #[test]
    fn an_unwritable_path_is_refused() {
        let mut m = Metrics::default();
        let err = m
            .set_path(PathBuf::from("/nonexistent/dir/metrics"))
            .expect_err("refused");
        assert!(err.contains("/nonexistent/dir/metrics"), "{err}");
    }
}
