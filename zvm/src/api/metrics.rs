//! Metrics as JSON lines (`PUT /metrics`), flushed periodically, on `FlushMetrics` and
//! when the VM ends.

use api_server::model::InstanceState;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use vmm::devices::boot_timer::BootTime;

/// Counters and where they go.
#[derive(Debug, Default)]
pub struct Metrics {
    file: Option<File>,
    /// API requests handled.
    pub requests: u64,
    /// When the VM was started.
    pub started: Option<Instant>,
    /// The guest's boot-timer report.
    pub boot_time: Option<BootTime>,
}

impl Metrics {
    /// Opens (appends to) the metrics file or named pipe; only once, as Firecracker.
    pub fn set_path(&mut self, path: PathBuf) -> Result<(), String> {
        if self.file.is_some() {
            return Err("the metrics path is already set".into());
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open metrics file {}: {e}", path.display()))?;
        self.file = Some(file);
        Ok(())
    }

    /// One metrics line as JSON.
    pub fn line(&self, state: InstanceState) -> serde_json::Value {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        serde_json::json!({
            "utc_timestamp_ms": now_ms,
            "api_server": { "requests": self.requests },
            "vmm": {
                "state": state,
                "uptime_ms": self.started.map(|s| s.elapsed().as_millis() as u64),
                "boot_time_us": self.boot_time.map(|t| t.since_build_start.as_micros() as u64),
            },
        })
    }

    /// Writes one line when a metrics path is set.
    pub fn flush(&mut self, state: InstanceState) -> Result<(), String> {
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

    #[test]
    fn flush_appends_json_lines() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("metrics.json");
        let mut m = Metrics::default();
        m.flush(InstanceState::NotStarted).expect("no path: nothing written");
        m.set_path(path.clone()).expect("set");
        assert!(m.set_path(path.clone()).is_err(), "only once");
        m.requests = 3;
        m.flush(InstanceState::Running).expect("flush");
        m.flush(InstanceState::Paused).expect("flush");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["api_server"]["requests"], 3);
        assert_eq!(lines[1]["vmm"]["state"], "Paused");
    }
}
