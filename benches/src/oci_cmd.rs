//! Driving an OCI runtime (zvm-runc or runc) through its command line, as a container
//! engine does: one process per command, stdio on a log file (a created container inherits
//! it), a time limit per command.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One runtime binary with its environment and state directory (`--root`).
#[derive(Debug, Clone)]
pub struct RuntimeCli {
    /// The binary.
    pub bin: PathBuf,
    /// Environment added to ours.
    pub env: Vec<(String, String)>,
    /// `--root`: the runtime's state directory.
    pub root: PathBuf,
    /// Time limit of one command.
    pub timeout: Duration,
}

impl RuntimeCli {
    /// Runs `args` with stdout and stderr appended to `log`; kills the command after
    /// `limit` (at most the runtime's time limit).
    pub fn run_within(
        &self,
        args: &[&str],
        log: &Path,
        limit: Duration,
    ) -> std::result::Result<(), String> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let bin = &self.bin;
        let mut child = Command::new(bin)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let deadline = Instant::now() + limit.min(self.timeout);
        loop {
            match child.try_wait() {
                Ok(Some(s)) if s.success() => return Ok(()),
                Ok(Some(s)) => {
                    return Err(format!(
                        "{} {} failed ({s}): {}",
                        bin.display(),
                        args.join(" "),
                        tail(log)
                    ))
                }
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{} {} timed out", bin.display(), args.join(" ")));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// [`Self::run_within`] the runtime's time limit.
    pub fn run(&self, args: &[&str], log: &Path) -> std::result::Result<(), String> {
        self.run_within(args, log, self.timeout)
    }

    /// Runs `state id` and returns the status.
    pub fn status(&self, id: &str) -> std::result::Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("--root")
            .arg(&self.root)
            .args(["state", id])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "{} state {id} failed: {}",
                self.bin.display(),
                err.trim()
            ));
        }
        status_of(&String::from_utf8_lossy(&out.stdout))
            .ok_or_else(|| "state printed no status".to_string())
    }

    /// Polls `state id` every 5 ms until it says `want`; the time it took.
    pub fn wait_status(&self, id: &str, want: &str) -> std::result::Result<Duration, String> {
        let t = Instant::now();
        while self.status(id)? != want {
            if t.elapsed() > self.timeout {
                return Err(format!(
                    "container {id} not {want} after {:?}",
                    self.timeout
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(t.elapsed())
    }

    /// Repeats `args` (every 10 ms) until it succeeds; the time to the success.
    pub fn retry_until_ok(
        &self,
        args: &[&str],
        log: &Path,
    ) -> std::result::Result<Duration, String> {
        let t = Instant::now();
        loop {
            let left = self.timeout.saturating_sub(t.elapsed());
            match self.run_within(args, log, left) {
                Ok(()) => return Ok(t.elapsed()),
                Err(e) if t.elapsed() >= self.timeout => {
                    return Err(format!("no success within {:?}: {e}", self.timeout))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// The container's directory under `--root` (zvm-runc keeps `sandbox.log` there).
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }
}

/// The last five lines of `log`, joined.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// The `status` of a runtime's `state` output.
pub fn status_of(state_json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(state_json).ok()?;
    v.get("status")?.as_str().map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_state_json() {
        assert_eq!(
            status_of(r#"{"id":"x","status":"stopped","pid":0}"#).as_deref(),
            Some("stopped")
        );
        assert_eq!(status_of("{}"), None);
        assert_eq!(status_of("garbage"), None);
    }
}
