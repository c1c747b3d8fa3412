//! Metrics as JSON lines (`PUT /metrics`), flushed every [`FLUSH_INTERVAL`], on
//! `FlushMetrics` and when the VM ends.
//!
//! Each line is one JSON object in Firecracker's layout: `utc_timestamp_ms`, `api_server`,
//! `vmm` (state, uptime, the guest's boot time), then the VM's counters (`vcpu` exits by
//! kind, `block`, `net`, `vsock`, `entropy` aggregates and `block_<id>`/`net_<id>` per
//! device). Like Firecracker's, counters are the increase since the previous line.

use super::logger::open_append;
use api_server::model::InstanceState;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vmm::metrics::{Counter, VmMetrics};

/// How often metrics are written without being asked (Firecracker's period).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

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
}

impl Metrics {
    /// Opens (appends to) the metrics file or named pipe; only once, as Firecracker.
    pub fn set_path(&mut self, path: PathBuf) -> Result<(), String> {
        if self.file.is_some() {
            return Err("the metrics path is already set".into());
        }
        let file = open_append(&path).map_err(|e| format!("cannot open metrics file {}: {e}", path.display()))?;
        self.file = Some(file);
        Ok(())
    }

    /// One metrics line as JSON (and the counters in it count as reported).
    pub fn line(&self, state: InstanceState) -> serde_json::Value {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
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
        m.flush(InstanceState::NotStarted).expect("no path: nothing written");
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
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["api_server"]["requests"], 3, "nothing was reported before");
        assert_eq!(lines[0]["block_root"]["read_bytes"], 4096);
        assert_eq!(lines[0]["block"]["read_bytes"], 4096);
        assert_eq!(lines[0]["vcpu"]["exit_mmio_write"], 7);
        assert_eq!(lines[1]["vmm"]["state"], "Paused");
        assert_eq!(lines[1]["block_root"]["read_bytes"], 512, "the increase since the first line");
        assert_eq!(lines[1]["api_server"]["requests"], 0);
        assert!(lines[1]["utc_timestamp_ms"].as_u64().is_some());
    }

    #[test]
    fn an_unwritable_path_is_refused() {
        let mut m = Metrics::default();
        let err = m.set_path(PathBuf::from("/nonexistent/dir/metrics")).expect_err("refused");
        assert!(err.contains("/nonexistent/dir/metrics"), "{err}");
    }
}
