//! podman driven with private state for the engine tests.

use super::{output_with, runc_binary, zvm_env, STEP_LIMIT};
use std::path::{Path, PathBuf};
use std::process::Command;

/// podman with private storage and configuration, zvm-runc as its runtime `zvm`.
pub struct Podman {
    base: PathBuf,
}

impl Podman {
    pub fn new(base: &Path) -> Podman {
        let conf = base.join("containers.conf");
        let mut conmon_env = vec![format!(
            "PATH={}",
            std::env::var("PATH").unwrap_or_default()
        )];
        conmon_env.extend(zvm_env().into_iter().map(|(k, v)| format!("{k}={v}")));
        let quoted: Vec<String> = conmon_env.iter().map(|e| format!("{e:?}")).collect();
        std::fs::write(
            &conf,
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 conmon_env_vars = [{}]\n\n[engine.runtimes]\nzvm = [{:?}]\n",
                quoted.join(", "),
                runc_binary().display().to_string()
            ),
        )
        .expect("containers.conf");
        Podman {
            base: base.to_path_buf(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.base.join("containers.conf"))
            .envs(zvm_env())
            .arg("--root")
            .arg(self.base.join("root"))
            .arg("--runroot")
            .arg(self.base.join("runroot"))
            .arg("--tmpdir")
            .arg(self.base.join("tmp"))
            .args(["--storage-driver", "vfs", "--runtime", "zvm"])
            .arg("--runtime-flag")
            .arg(format!("root={}", self.base.join("zvm-runc").display()));
        c
    }

    pub fn logs(&self, id: &str) -> String {
        let out = output_with(self.cmd().args(["logs", id]), "", STEP_LIMIT);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = output_with(
            self.cmd().args(["rm", "--force", "--all", "--time", "0"]),
            "",
            STEP_LIMIT,
        );
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
