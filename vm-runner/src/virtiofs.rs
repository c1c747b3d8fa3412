//! Host directories in the guest over virtio-fs: `--fs` specs, and the virtiofsd daemons
//! zvm starts for them (one per share, each listening in a private per-VM directory,
//! stopped when the VM ends; their standard error goes to zvm's log).

use clap::Args;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vmm::resources::{FsConfig, VmResources};

/// How long a virtiofsd gets to listen on its socket.
pub const START_DEADLINE: Duration = Duration::from_secs(10);

/// Errors finding or starting virtiofsd, or reading `--fs`.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsError {
    /// A `--fs` spec that does not parse.
    #[error("invalid fs '{spec}': {problem}")]
    BadSpec {
        /// The spec.
        spec: String,
        /// What is wrong.
        problem: String,
    },
    /// No virtiofsd binary.
    #[error(
        "virtiofsd not found (looked at {looked}); install it with `bash scripts/install-virtiofsd.sh` \
         (or `cargo install virtiofsd`), or name it with --virtiofsd PATH or $ZVM_VIRTIOFSD"
    )]
    NotFound {
        /// Where zvm looked.
        looked: String,
    },
    /// The private socket directory, the process, or its socket.
    #[error("virtiofsd for share '{id}': {problem}")]
    Start {
        /// The share.
        id: String,
        /// What went wrong.
        problem: String,
    },
}

/// The `--fs` flags of `zvm run`.
#[derive(Debug, Clone, Default, Args)]
pub struct FsArgs {
    /// A host directory shared with the guest over virtio-fs:
    /// `tag=NAME,path=DIR[,readonly=on][,xattr=on][,id=NAME]`; repeatable. zvm starts a
    /// virtiofsd for each (with `--xattr` for `xattr=on`: the files' extended attributes,
    /// file capabilities among them, reach the guest); the guest mounts it with
    /// `mount -t virtiofs NAME /mnt`.
    #[arg(long = "fs", value_name = "SPEC")]
    pub specs: Vec<String>,
    /// The virtiofsd binary (default: beside zvm, zvm's cache, /usr/libexec, $PATH).
    #[arg(long, value_name = "PATH", env = "ZVM_VIRTIOFSD")]
    pub virtiofsd: Option<PathBuf>,
    /// virtiofsd's sandbox: namespace (needs root or user namespaces), chroot (root), or
    /// none.
    #[arg(long, value_name = "KIND", default_value = "namespace",
          value_parser = ["namespace", "chroot", "none"])]
    pub virtiofsd_sandbox: String,
}

impl FsArgs {
    /// No `--fs` shares; virtiofsd from $ZVM_VIRTIOFSD or the default places, sandboxed
    /// in namespaces (the API's and config files' VMs).
    pub fn from_env() -> Self {
        FsArgs {
            specs: Vec::new(),
            virtiofsd: std::env::var_os("ZVM_VIRTIOFSD").map(PathBuf::from),
            virtiofsd_sandbox: "namespace".into(),
        }
    }

    /// The shares the specs describe.
    pub fn configs(&self) -> Result<Vec<FsConfig>, VirtiofsError> {
        self.specs
            .iter()
            .enumerate()
            .map(|(i, spec)| parse_fs(spec, i))
            .collect()
    }
}

/// Parses `tag=NAME,path=DIR[,readonly=on|off][,xattr=on|off][,id=NAME]` (also
/// Firecracker-style `shared_dir=`, `read_only=`, `fs_id=`); the id defaults to
/// `fs<index>`.
pub fn parse_fs(spec: &str, index: usize) -> Result<FsConfig, VirtiofsError> {
    let bad = |problem: String| VirtiofsError::BadSpec {
        spec: spec.to_string(),
        problem,
    };
    let mut fs = FsConfig {
        fs_id: format!("fs{index}"),
        tag: String::new(),
        shared_dir: None,
        read_only: false,
        xattr: false,
        socket_path: None,
    };
    let on_off = |key: &str, value: &str| match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(bad(format!("{key} must be on or off, not '{value}'"))),
    };
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("'{part}' is not key=value")))?;
        match key {
            "tag" => fs.tag = value.to_string(),
            "path" | "shared_dir" => fs.shared_dir = Some(PathBuf::from(value)),
            "id" | "fs_id" => fs.fs_id = value.to_string(),
            "readonly" | "read_only" | "ro" => fs.read_only = on_off(key, value)?,
            "xattr" => fs.xattr = on_off(key, value)?,
            other => {
                return Err(bad(format!(
                    "unknown key '{other}' (use tag, path, readonly, xattr, id)"
                )))
            }
        }
    }
    if fs.tag.is_empty() {
        return Err(bad("tag=NAME is required".into()));
    }
    if fs.shared_dir.is_none() {
        return Err(bad("path=DIR is required".into()));
    }
    Ok(fs)
}

/// A `PUT /fs` body as the VM's share.
pub fn from_api(fs: &api_server::model::Fs) -> FsConfig {
    FsConfig {
        fs_id: fs.fs_id.clone(),
        tag: fs.tag.clone(),
        shared_dir: fs.shared_dir.as_ref().map(PathBuf::from),
        read_only: fs.read_only,
        xattr: fs.xattr,
        socket_path: fs.socket_path.as_ref().map(PathBuf::from),
    }
}

/// A VM's share as the API shows it (`GET /vm/config`).
pub fn to_api(fs: &FsConfig) -> api_server::model::Fs {
    let path = |p: &PathBuf| p.display().to_string();
    api_server::model::Fs {
        fs_id: fs.fs_id.clone(),
        tag: fs.tag.clone(),
        shared_dir: fs.shared_dir.as_ref().map(path),
        read_only: fs.read_only,
        xattr: fs.xattr,
        socket_path: fs
            .socket_path
            .as_ref()
            .filter(|_| fs.shared_dir.is_none())
            .map(path),
    }
}

/// Where a virtiofsd is looked for, in order: beside the running executable, an install's
/// `lib/zvm/` (scripts/install.sh, `zvm setup`), zvm's cache (`$ZVM_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/zvm` or `~/.cache/zvm`: scripts/install-virtiofsd.sh), Debian's
/// /usr/libexec/virtiofsd, then `$PATH`. zvm-runc's sandbox looks in the same places
/// (oci-runtime's `virtiofsd_candidates`).
pub fn virtiofsd_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("virtiofsd"));
        if let Some(prefix) = dir.parent() {
            candidates.push(prefix.join("lib/zvm/virtiofsd"));
        }
    }
    let cache = std::env::var_os("ZVM_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("zvm")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/zvm")));
    if let Some(cache) = cache {
        candidates.push(cache.join("virtiofsd/bin/virtiofsd"));
    }
    candidates.push(PathBuf::from("/usr/libexec/virtiofsd"));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("virtiofsd")));
    }
    candidates
}

/// The virtiofsd to run: `explicit` (--virtiofsd or $ZVM_VIRTIOFSD), else the first of
/// [`virtiofsd_candidates`].
pub fn find_virtiofsd(explicit: Option<&Path>) -> Result<PathBuf, VirtiofsError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(VirtiofsError::NotFound {
                looked: path.display().to_string(),
            })
        };
    }
    let candidates = virtiofsd_candidates();
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .ok_or_else(|| VirtiofsError::NotFound {
            looked: candidates
                .iter()
                .take(4)
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
                + " and $PATH",
        })
}

/// The virtiofsd processes of one VM; dropping this stops them and removes their
/// sockets' directory.
#[derive(Debug, Default)]
pub struct Daemons {
    children: Vec<(String, Child)>,
    dir: Option<tempfile::TempDir>,
}

impl Daemons {
    /// Starts a virtiofsd for every share of `resources` that has a `shared_dir` and no
    /// backend yet, and points the share at its socket once it listens.
    pub fn start(resources: &mut VmResources, args: &FsArgs) -> Result<Self, VirtiofsError> {
        let mut daemons = Daemons::default();
        let wanted: Vec<usize> = (0..resources.fs.len())
            .filter(|&i| resources.fs[i].socket_path.is_none())
            .collect();
        if wanted.is_empty() {
            return Ok(daemons);
        }
        let binary = find_virtiofsd(args.virtiofsd.as_deref())?;
        let dir = crate::private_tmp::dir("zvm-fs-").map_err(|e| VirtiofsError::Start {
            id: resources.fs[wanted[0]].fs_id.clone(),
            problem: format!("cannot make its private socket directory: {e}"),
        })?;
        let dir_path = dir.path().to_path_buf();
        daemons.dir = Some(dir);
        for i in wanted {
            let fs = &mut resources.fs[i];
            let socket = dir_path.join(format!("{}.sock", fs.fs_id));
            let child = spawn(&binary, fs, &socket, &args.virtiofsd_sandbox)?;
            daemons.children.push((fs.fs_id.clone(), child));
            let Some((_, child)) = daemons.children.last_mut() else {
                continue;
            };
            wait_for_socket(child, &socket, START_DEADLINE).map_err(|problem| {
                VirtiofsError::Start {
                    id: fs.fs_id.clone(),
                    problem,
                }
            })?;
            fs.socket_path = Some(socket);
        }
        Ok(daemons)
    }

    /// Called in the jailed half of a split process: the daemons are the supervisor's
    /// children, which it stops when it returns; this half neither signals nor waits
    /// for them.
    pub fn leave_to_supervisor(mut self) {
        self.children.clear();
        if let Some(dir) = self.dir.take() {
            // The directory is removed by the supervisor's copy.
            let _ = dir.keep();
        }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for (id, child) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                // SAFETY: signalling our own child, which has not been reaped.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(2);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            tracing::debug!("virtiofsd for share {id} stopped");
        }
    }
}

fn spawn(
    binary: &Path,
    fs: &FsConfig,
    socket: &Path,
    sandbox: &str,
) -> Result<Child, VirtiofsError> {
    let start_err = |problem: String| VirtiofsError::Start {
        id: fs.fs_id.clone(),
        problem,
    };
    let mut cmd = command(binary, fs, socket, sandbox)?;
    // It dies with the process that started it, even one killed without a chance to
    // stop it (a jail's supervisor, or zvm itself).
    // SAFETY: prctl only, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| start_err(format!("cannot run {}: {e}", binary.display())))?;
    if let Some(stderr) = child.stderr.take() {
        let id = fs.fs_id.clone();
        let relay = move || {
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(line) => tracing::warn!("virtiofsd ({id}): {line}"),
                    Err(_) => break,
                }
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("zvm_virtiofsd_log".into())
            .spawn(relay)
        {
            tracing::warn!("cannot relay virtiofsd's messages: {e}");
        }
    }
    tracing::debug!(
        "virtiofsd for share {} ({:?}): pid {}, socket {}",
        fs.fs_id,
        fs.shared_dir,
        child.id(),
        socket.display()
    );
    Ok(child)
}

/// The virtiofsd command line serving `fs` on `socket` with `sandbox`.
fn command(
    binary: &Path,
    fs: &FsConfig,
    socket: &Path,
    sandbox: &str,
) -> Result<Command, VirtiofsError> {
    let dir = fs.shared_dir.as_ref().ok_or_else(|| VirtiofsError::Start {
        id: fs.fs_id.clone(),
        problem: "it has no shared_dir".into(),
    })?;
    let mut cmd = Command::new(binary);
    cmd.arg("--shared-dir")
        .arg(dir)
        .arg("--socket-path")
        .arg(socket)
        .arg("--sandbox")
        .arg(sandbox)
        .args(["--cache", "auto", "--log-level", "warn"])
        .args(vmm::devices::virtio::fs::VIRTIOFSD_MIGRATION_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its log level is --log-level, not whatever zvm was run with.
        .env_remove("RUST_LOG");
    if fs.read_only {
        cmd.arg("--readonly");
    }
    if fs.xattr {
        cmd.arg("--xattr");
    }
    Ok(cmd)
}

/// Waits until `socket` accepts connections' file exists, `child` having not died.
fn wait_for_socket(child: &mut Child, socket: &Path, deadline: Duration) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let start = Instant::now();
    loop {
        if std::fs::metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "it exited ({status}) before it listened; its messages are in zvm's log"
            ));
        }
        if start.elapsed() > deadline {
            return Err(format!(
                "it did not listen on {} within {} s",
                socket.display(),
                deadline.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts a virtiofsd for every share of the restored VM that needs one (all of them
/// when zvm served them), keeping them in `daemons` for the VM's life.
pub fn start_fs_backends(
    resources: &mut vmm::resources::VmResources,
    args: &FsArgs,
    jailed: bool,
    daemons: &mut Option<Daemons>,
) -> Result<(), String> {
    if jailed && resources.fs.iter().any(|f| f.socket_path.is_none()) {
        return Err(
            "the snapshot has virtio-fs shares, and --fs does not work in a jail yet: \
                    add --jail off"
                .into(),
        );
    }
    *daemons = Some(Daemons::start(resources, args).map_err(|e| e.to_string())?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_specs_parse() {
        let fs = parse_fs("tag=data,path=/srv/data,readonly=on,id=d1", 0).expect("valid");
        assert_eq!(
            (fs.fs_id.as_str(), fs.tag.as_str(), fs.read_only),
            ("d1", "data", true)
        );
        assert_eq!(fs.shared_dir.as_deref(), Some(Path::new("/srv/data")));
        let fs = parse_fs("tag=t,shared_dir=/x", 3).expect("firecracker-style names");
        assert_eq!(fs.fs_id, "fs3");
        assert!(!fs.read_only && !fs.xattr);
        assert!(parse_fs("tag=t,path=/x,xattr=on", 0).expect("xattr").xattr);
        assert!(!parse_fs("tag=t,path=/x,xattr=off", 0).expect("xattr").xattr);
        for bad in [
            "path=/x",
            "tag=t",
            "tag=t,path=/x,readonly=maybe",
            "tag=t,path=/x,xattr=maybe",
            "tag=t,path=/x,size=1",
            "tag",
        ] {
            assert!(parse_fs(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_bodies_become_shares_and_back() {
        let body: api_server::model::Fs = serde_json::from_str(
            r#"{"fs_id":"data","tag":"hostdata","shared_dir":"/srv","read_only":true}"#,
        )
        .expect("body");
        let mut fs = from_api(&body);
        assert_eq!(fs.shared_dir.as_deref(), Some(Path::new("/srv")));
        assert!(fs.read_only && fs.socket_path.is_none());
        // The socket zvm's own daemon listens on is not part of what the client asked.
        fs.socket_path = Some("/tmp/zvm-fs-x/data.sock".into());
        assert_eq!(to_api(&fs), body);
    }

    #[test]
    fn a_missing_virtiofsd_is_a_clear_error() {
        let err = find_virtiofsd(Some(Path::new("/nonexistent/virtiofsd")))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("install-virtiofsd.sh"), "{err}");
        assert!(err.contains("ZVM_VIRTIOFSD"), "{err}");
    }

    #[test]
    fn a_daemon_that_exits_at_once_is_reported() {
        let dir = tempfile::tempdir().expect("dir");
        let mut resources = VmResources::new("/k");
        resources.fs.push(FsConfig {
            fs_id: "a".into(),
            tag: "t".into(),
            shared_dir: Some(dir.path().to_path_buf()),
            read_only: false,
            xattr: false,
            socket_path: None,
        });
        let args = FsArgs {
            specs: Vec::new(),
            virtiofsd: Some(PathBuf::from("/bin/false")),
            virtiofsd_sandbox: "none".into(),
        };
        let err = Daemons::start(&mut resources, &args)
            .expect_err("false never listens")
            .to_string();
        assert!(err.contains("exited"), "{err}");
        assert!(resources.fs[0].socket_path.is_none());
    }

    #[test]
    fn virtiofsd_gets_xattr_only_for_shares_that_ask() {
        let args = |spec: &str| -> Vec<String> {
            let fs = parse_fs(spec, 0).expect("valid");
            let cmd = command(Path::new("/v"), &fs, Path::new("/s/fs0.sock"), "namespace")
                .expect("command");
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let plain = args("tag=t,path=/srv/x");
        assert!(!plain.iter().any(|a| a == "--xattr"), "{plain:?}");
        let with = args("tag=t,path=/srv/x,xattr=on,readonly=on");
        assert!(with.iter().any(|a| a == "--xattr"), "{with:?}");
        assert!(with.iter().any(|a| a == "--readonly"), "{with:?}");
        let at = with.iter().position(|a| a == "--shared-dir").expect("dir");
        assert_eq!(with[at + 1], "/srv/x");
        // The API's and config files' field.
        let body: api_server::model::Fs =
            serde_json::from_str(r#"{"fs_id":"a","tag":"t","shared_dir":"/srv","xattr":true}"#)
                .expect("body");
        let fs = from_api(&body);
        assert!(fs.xattr);
        assert_eq!(to_api(&fs), body);
        let json = serde_json::to_string(&to_api(&parse_fs("tag=t,path=/x", 0).expect("ok")))
            .expect("json");
        assert!(!json.contains("xattr"), "{json}");
    }
}
