//! A `zvm node serve` on the host for the deploy benchmark: its own state directory and
//! socket, an environment of its own (which it passes on to the `zvm run --flist`
//! processes it starts: the template settings), deployments to their output, and the
//! deployments' console logs.

use crate::deploy::{deployment, shows_marker, POLL};
use crate::error::{io_err, BenchError, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `zvm node serve` with its own state directory, killed (with its VMs) on drop.
pub struct Node {
    child: Child,
    sock: PathBuf,
    state: PathBuf,
    /// Its deployments have an interface and a data disk.
    nic_disk: bool,
}

fn script_err(zvm: &Path, reason: String) -> BenchError {
    BenchError::Script {
        script: zvm.to_path_buf(),
        reason,
    }
}

impl Node {
    /// Starts `zvm node serve` in `dir` with `kernel` for container flists and `env` added
    /// to ours; waits for `/health`. With `nic_disk` the daemon serves
    /// [`super::deploy::NODE_NETWORK`] in a network namespace of its own (its bridge, taps
    /// and VMs live there, gone with it) and its deployments have an interface and a disk.
    pub fn start(
        zvm: &Path,
        kernel: &Path,
        dir: &Path,
        env: &[(String, String)],
        nic_disk: bool,
    ) -> Result<Node> {
        let (state, sock, log) = (
            dir.join("state"),
            dir.join("node.sock"),
            dir.join("node.log"),
        );
        let log = std::fs::File::create(&log).map_err(io_err("create", &log))?;
        let log2 = log.try_clone().map_err(io_err("clone", dir))?;
        let mut command = Command::new(zvm);
        if nic_disk {
            command.args(["node", "serve", "--network", super::deploy::NODE_NETWORK]);
            // SAFETY: unshare(2) in the child before exec touches no memory of ours.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                    if libc::unshare(libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        } else {
            command.args(["node", "serve"]);
        }
        let child = command
            .args(["--stop-grace", "2", "--state-dir"])
            .arg(&state)
            .arg("--api-sock")
            .arg(&sock)
            .arg("--kernel")
            .arg(kernel)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| BenchError::Spawn {
                program: zvm.display().to_string(),
                source,
            })?;
        let node = Node {
            child,
            sock,
            state,
            nic_disk,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.request("GET", "/health", None).is_err() {
            if Instant::now() > deadline {
                return Err(script_err(
                    zvm,
                    "zvm node serve did not answer /health within 30 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(node)
    }

    /// One API request.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::result::Result<api_server::client::Response, String> {
        api_server::client::request(
            &self.sock,
            method,
            path,
            body.map(str::as_bytes),
            Duration::from_secs(30),
        )
        .map_err(|e| e.to_string())
    }

    /// Deploys `name` and waits for its marker; the time from the request to the marker.
    pub fn deploy_to_output(
        &self,
        name: &str,
        flist: &Path,
        timeout: Duration,
    ) -> std::result::Result<Duration, String> {
        let start = Instant::now();
        let spec = deployment(name, flist, self.nic_disk);
        let answer = self.request("POST", "/deployments", Some(&spec))?;
        if !(200..300).contains(&answer.status) {
            return Err(format!(
                "POST /deployments answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
        }
        let path = format!("/deployments/{name}");
        loop {
            let answer = self.request("GET", &path, None)?;
            if shows_marker(&answer.body, name) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "no marker within {timeout:?}; last answer: {}",
                    String::from_utf8_lossy(&answer.body)
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The console log of deployment `name` (the VM's console and zvm's messages).
    pub fn console(&self, name: &str) -> String {
        let path = self.state.join("vms").join(name).join("console.log");
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The VMs are deleted through the API first; they outlive a killed daemon.
        if let Ok(list) = self.request("GET", "/deployments", None) {
            let names: Vec<String> = serde_json::from_slice::<serde_json::Value>(&list.body)
                .ok()
                .and_then(|v| {
                    v["deployments"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|d| d["name"].as_str().map(str::to_string))
                            .collect()
                    })
                })
                .unwrap_or_default();
            for name in names {
                let _ = self.request("DELETE", &format!("/deployments/{name}"), None);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}
