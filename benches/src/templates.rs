//! VM templates as the benchmarks see them: the guest files a container VM is made from
//! (copied into the run's scratch directory, so that a rebuild elsewhere during the run
//! changes neither them nor the templates keyed by them), the environment that turns
//! templates on (with a template directory of the run's own) or off, the one-time
//! `zvm template prepare`, and what a container's log says about how its VM started.

use crate::boot::{path_from_script, repo_root, INIT_MARKER};
use crate::error::{io_err, BenchError, Result};
use crate::measure::ms;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where guest/build.sh leaves the static guest agent, relative to the repository.
pub const AGENT_BUILD: &str = "guest/target/x86_64-unknown-linux-gnu/release/zvm-oci-agent";

/// The guest kernel and the static guest agent a container VM is made from.
#[derive(Debug, Clone)]
pub struct GuestFiles {
    /// Guest kernel (`ZVM_KERNEL`).
    pub kernel: PathBuf,
    /// Static `zvm-oci-agent` (`ZVM_OCI_AGENT`).
    pub agent: PathBuf,
}

impl GuestFiles {
    /// The given kernel and agent, or the project's (guest-kernel/build.sh; guest/build.sh's
    /// output), copied into `dir/guest/`.
    pub fn find(kernel: Option<&Path>, agent: Option<&Path>, dir: &Path) -> Result<GuestFiles> {
        let kernel = match kernel {
            Some(k) => k.to_path_buf(),
            None => path_from_script(&repo_root().join("guest-kernel/build.sh"))?,
        };
        let agent = agent.map_or_else(|| repo_root().join(AGENT_BUILD), Path::to_path_buf);
        if !agent.is_file() {
            return Err(BenchError::Missing {
                what: "static guest agent (zvm-oci-agent)",
                path: agent,
                hint: "; build it with `bash guest/build.sh` or pass --agent".into(),
            });
        }
        let guest = dir.join("guest");
        std::fs::create_dir_all(&guest).map_err(io_err("create", &guest))?;
        let copy = |from: &Path, name: &str| -> Result<PathBuf> {
            let to = guest.join(name);
            std::fs::copy(from, &to).map_err(io_err("copy", from))?;
            Ok(to)
        };
        Ok(GuestFiles {
            kernel: copy(&kernel, "vmlinux")?,
            agent: copy(&agent, "zvm-oci-agent")?,
        })
    }
}

/// Whether container VMs start from templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Templates {
    /// On, kept in this directory.
    On(PathBuf),
    /// Off (`ZVM_TEMPLATES=off`): every container VM boots its kernel.
    Off,
}

impl Templates {
    /// The environment of zvm-runc, `zvm template` or a node daemon for this setting and
    /// these guest files (templates are switched on explicitly, whatever our own
    /// environment says).
    pub fn env(&self, files: &GuestFiles) -> Vec<(String, String)> {
        let mut env = vec![
            ("ZVM_KERNEL".to_string(), path_str(&files.kernel)),
            ("ZVM_OCI_AGENT".to_string(), path_str(&files.agent)),
        ];
        match self {
            Templates::On(dir) => {
                env.push(("ZVM_TEMPLATES".into(), "on".into()));
                env.push(("ZVM_TEMPLATE_DIR".into(), path_str(dir)));
            }
            Templates::Off => env.push(("ZVM_TEMPLATES".into(), "off".into())),
        }
        env
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The one-time making of a template by `zvm template prepare`.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateBuild {
    /// The template's id.
    pub id: String,
    /// What zvm says making it took, seconds (`None`: it was already there).
    pub made_s: Option<f64>,
    /// The command's wall time, ms.
    pub wall_ms: f64,
}

impl TemplateBuild {
    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"id": self.id, "made_s": self.made_s, "wall_ms": self.wall_ms})
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        match self.made_s {
            Some(s) => format!(
                "template {} made once by `zvm template prepare` in {s:.1} s ({:.1} s wall), not in the figures",
                self.id,
                self.wall_ms / 1000.0
            ),
            None => format!("template {} was already there", self.id),
        }
    }
}

/// Reads `zvm template prepare`'s answer: `<id> (made in X s)` or `<id> (already there)`.
pub fn parse_prepare(stdout: &str) -> Option<(String, Option<f64>)> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    let (id, rest) = line.split_once(' ')?;
    let rest = rest.trim();
    if rest == "(already there)" {
        return Some((id.to_string(), None));
    }
    let secs = rest.strip_prefix("(made in ")?.strip_suffix(" s)")?;
    Some((id.to_string(), Some(secs.trim().parse().ok()?)))
}

/// Runs `zvm template prepare` (default VM size) with `flavour` (e.g. `--share` for the
/// containers whose root comes over virtio-fs, as node deployments' do) and `env`, its
/// output in files in `dir`; kills it after `timeout`.
pub fn prepare(
    zvm: &Path,
    flavour: &[&str],
    env: &[(String, String)],
    dir: &Path,
    timeout: Duration,
) -> Result<TemplateBuild> {
    let failed = |reason: String| BenchError::Script {
        script: zvm.to_path_buf(),
        reason: format!("zvm template prepare: {reason}"),
    };
    let (out_path, err_path) = (dir.join("prepare.out"), dir.join("prepare.err"));
    let out = std::fs::File::create(&out_path).map_err(io_err("create", &out_path))?;
    let err = std::fs::File::create(&err_path).map_err(io_err("create", &err_path))?;
    let start = Instant::now();
    let mut child = Command::new(zvm)
        .args(["template", "prepare"])
        .args(flavour)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("no answer within {timeout:?}")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(failed(e.to_string())),
        }
    };
    let wall_ms = ms(start.elapsed());
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    if !status.success() {
        return Err(failed(format!("{status}: {}", read(&err_path).trim())));
    }
    let stdout = read(&out_path);
    let (id, made_s) = parse_prepare(&stdout)
        .ok_or_else(|| failed(format!("unexpected answer {:?}", stdout.trim())))?;
    Ok(TemplateBuild {
        id,
        made_s,
        wall_ms,
    })
}

/// The ids `zvm template list` prints (empty when it fails).
pub fn list(zvm: &Path, env: &[(String, String)]) -> Vec<String> {
    Command::new(zvm)
        .args(["template", "list"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| parse_list(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
}

/// The ids in `zvm template list`'s output (the first column below the header).
pub fn parse_list(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("ID"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// How a container's VM started, as its log tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmStart {
    /// Restored from this template.
    Restored(String),
    /// Booted its kernel (the log's reason line).
    Booted(String),
    /// The log does not say.
    Unknown,
}

impl VmStart {
    /// Short text for tables and JSON.
    pub fn describe(&self) -> String {
        match self {
            VmStart::Restored(id) => format!("restored from template {id}"),
            VmStart::Booted(why) => format!("booted the kernel ({why})"),
            VmStart::Unknown => "unknown".into(),
        }
    }

    /// Whether the VM booted a kernel.
    pub fn booted(&self) -> bool {
        matches!(self, VmStart::Booted(_))
    }
}

/// How a VM started, from a zvm-runc `sandbox.log` ("VM restored from template ID",
/// "... booting the kernel") or a console log with zvm's messages (a restore message, or
/// the kernel's own boot lines).
pub fn vm_start(log: &str) -> VmStart {
    for line in log.lines() {
        let lower = line.to_ascii_lowercase();
        if let Some(pos) = lower.find("restored from template") {
            let rest = &line[pos + "restored from template".len()..];
            let id = rest.split_whitespace().next().unwrap_or("");
            return VmStart::Restored(id.trim_matches(|c: char| c == ':' || c == ',').into());
        }
    }
    let booted = log.lines().find(|l| {
        l.contains("booting the kernel") || l.contains("Linux version") || l.contains(INIT_MARKER)
    });
    match booted {
        Some(line) => VmStart::Booted(line.trim().chars().take(160).collect()),
        None => VmStart::Unknown,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prepare_answers_are_parsed() {
        assert_eq!(
            parse_prepare("1cpu-256mib-0011aabb (made in 93.4 s)\n"),
            Some(("1cpu-256mib-0011aabb".into(), Some(93.4)))
        );
        assert_eq!(
            parse_prepare("note\n1cpu-256mib-0011aabb (already there)\n\n"),
            Some(("1cpu-256mib-0011aabb".into(), None))
        );
        assert_eq!(parse_prepare("1cpu (made in soon s)"), None);
        assert_eq!(parse_prepare(""), None);
        assert_eq!(parse_prepare("just-an-id"), None);
    }

    #[test]
    fn template_lists_are_parsed() {
        let out = "ID  VCPUS MEM_MIB DISK_MIB BUILD_S\n1cpu-256mib-aa 1 256 33.0 90.1\n1cpu-512mib-bb 1 512 40.0 ?\n";
        assert_eq!(parse_list(out), vec!["1cpu-256mib-aa", "1cpu-512mib-bb"]);
        assert!(parse_list("ID VCPUS\n").is_empty());
        assert!(parse_list("").is_empty());
    }

    #[test]
    fn the_environment_turns_templates_on_or_off() {
        let files = GuestFiles {
            kernel: "/g/vmlinux".into(),
            agent: "/g/zvm-oci-agent".into(),
        };
        let on = Templates::On("/t".into()).env(&files);
        let get = |env: &[(String, String)], k: &str| {
            env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
        };
        assert_eq!(get(&on, "ZVM_TEMPLATE_DIR").as_deref(), Some("/t"));
        assert_eq!(get(&on, "ZVM_TEMPLATES").as_deref(), Some("on"));
        assert_eq!(get(&on, "ZVM_KERNEL").as_deref(), Some("/g/vmlinux"));
        let off = Templates::Off.env(&files);
        assert_eq!(get(&off, "ZVM_TEMPLATES").as_deref(), Some("off"));
        assert_eq!(get(&off, "ZVM_TEMPLATE_DIR"), None);
        assert_eq!(
            get(&off, "ZVM_OCI_AGENT").as_deref(),
            Some("/g/zvm-oci-agent")
        );
    }

    #[test]
    fn the_log_tells_how_the_vm_started() {
        let sandbox = "12:00 sandbox up\n12:01 VM restored from template 1cpu-256mib-aa\n";
        assert_eq!(
            vm_start(sandbox),
            VmStart::Restored("1cpu-256mib-aa".into())
        );
        let off = "templates are off; booting the kernel\n";
        assert!(vm_start(off).booted());
        let console = "[    0.000000] Linux version 6.1\n[   50.1] Run /init as init process\n";
        assert!(vm_start(console).booted());
        assert_eq!(vm_start("ZVM-DEPLOY-MARKER-x\n"), VmStart::Unknown);
        assert!(VmStart::Restored("a".into())
            .describe()
            .contains("template a"));
    }
}
