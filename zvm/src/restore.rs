//! `zvm run --restore STATE --mem MEM`: a VM restored from a snapshot instead of booted,
//! run until it ends as `zvm run` runs a booted one.
//!
//! The VM is resumed at once: without an API nothing could resume a VM restored paused
//! (restore paused through `PUT /snapshot/load` with `"resume_vm": false`).

use crate::run_outcome::report_outcome;
use crate::terminal::RawTerminal;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use vmm::builder::BuildOptions;
use vmm::devices::serial::ConsoleSink;
use vmm::host::KvmFlavour;
use vmm::resources::ConsoleConfig;
use vmm::snapshot::{FsOverride, RestoreOverrides, RestoreParams};

/// The flags of `zvm run` that restore a snapshot. The VM's shape (kernel, vCPUs, memory,
/// devices) comes from the snapshot, so the flags that set it conflict with `--restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Restore the VM from this snapshot state file (written by `PUT /snapshot/create`)
    /// instead of booting a kernel; it runs at once. Needs --mem.
    #[arg(
        long,
        value_name = "STATE",
        requires = "mem",
        conflicts_with_all = ["kernel", "flist", "initrd", "cmdline", "append", "cpus", "memory", "cpu_template", "disks", "nets", "rng", "vsock", "specs", "console_timestamps"]
    )]
    restore: Option<PathBuf>,
    /// With --restore: the snapshot's guest memory file (mapped copy-on-write: clones of
    /// one snapshot share the pages none of them writes).
    #[arg(long, value_name = "MEM", requires = "restore")]
    mem: Option<PathBuf>,
    /// With --restore: the snapshot's drive ID uses PATH as its backing file; repeatable.
    #[arg(long = "drive-override", value_name = "ID=PATH", requires = "restore")]
    drive_overrides: Vec<String>,
    /// With --restore: the snapshot's network interface IFACE uses host tap TAP; repeatable.
    #[arg(long = "net-override", value_name = "IFACE=TAP", requires = "restore")]
    net_overrides: Vec<String>,
    /// With --restore: the vsock device listens on this Unix socket instead of the
    /// snapshot's.
    #[arg(long, value_name = "PATH", requires = "restore")]
    vsock_override: Option<PathBuf>,
    /// With --restore: the snapshot's virtio-fs share (by id or tag) serves host
    /// directory DIR, read-only with `,readonly=on`; repeatable. zvm starts a new
    /// virtiofsd for every share of the snapshot (the guest must not have mounted any
    /// when it was taken).
    #[arg(
        long = "fs-override",
        value_name = "SHARE=DIR[,readonly=on|off]",
        requires = "restore"
    )]
    fs_overrides: Vec<String>,
}

/// What `zvm run` settles before a restore, besides [`RestoreArgs`].
pub struct RestoreOptions<'a> {
    /// `--console`: stdio, off or file:PATH.
    pub console: &'a str,
    /// `--seccomp on`.
    pub seccomp: bool,
    /// `--track-dirty-pages`.
    pub track_dirty_pages: bool,
    /// `--verbose`.
    pub verbose: bool,
    /// `--shutdown-timeout`: the guest's grace period on a stop signal.
    pub shutdown_timeout: std::time::Duration,
    /// `--virtiofsd` and `--virtiofsd-sandbox`, for the snapshot's virtio-fs shares.
    pub fs: &'a crate::virtiofs::FsArgs,
    /// The restore runs in a jail (`--jail on`), where zvm cannot start virtiofsd yet.
    pub jailed: bool,
    /// zvm's log level (for zvm-vmm, which takes plain levels only).
    pub log_level: &'a str,
}

impl RestoreArgs {
    /// Whether `--restore` was given.
    pub fn requested(&self) -> bool {
        self.restore.is_some()
    }

    /// `--mem`: the snapshot's memory file.
    pub fn mem_file(&self) -> Option<&std::path::Path> {
        self.mem.as_deref()
    }

    /// The restore's parameters, with both files found readable.
    fn params(&self, opts: &RestoreOptions<'_>) -> Result<RestoreParams, String> {
        let (Some(state), Some(mem)) = (&self.restore, &self.mem) else {
            return Err("--restore needs both STATE and --mem MEM".into());
        };
        check_file("snapshot state file", state)?;
        check_file("snapshot memory file", mem)?;
        let drives = pairs("--drive-override", "ID=PATH", &self.drive_overrides)?;
        let net = pairs("--net-override", "IFACE=TAP", &self.net_overrides)?;
        let overrides = RestoreOverrides {
            drives: drives
                .into_iter()
                .map(|(id, path)| (id, PathBuf::from(path)))
                .collect(),
            net,
            vsock_uds_path: self.vsock_override.clone(),
            fs: fs_overrides(&self.fs_overrides)?,
        };
        Ok(RestoreParams {
            snapshot_path: state.clone(),
            mem_file_path: mem.clone(),
            overrides,
            resume: true,
            track_dirty_pages: opts.track_dirty_pages,
            seccomp: opts.seccomp,
        })
    }
}

/// Refuses a snapshot file that is missing or not a regular file.
fn check_file(what: &str, path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(format!("{what} '{}' is not a regular file", path.display())),
        Err(e) => Err(format!("{what} '{}' cannot be read: {e}", path.display())),
    }
}

/// Parses repeated `KEY=VALUE` flags; each key at most once, neither side empty.
fn pairs(flag: &str, form: &str, values: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for value in values {
        let (key, rest) = value
            .split_once('=')
            .ok_or_else(|| format!("invalid {flag} '{value}': expected {form}"))?;
        if key.is_empty() || rest.is_empty() {
            return Err(format!("invalid {flag} '{value}': expected {form}"));
        }
        if out.iter().any(|(k, _)| k == key) {
            return Err(format!("{flag}: '{key}' is given twice"));
        }
        out.push((key.to_string(), rest.to_string()));
    }
    Ok(out)
}

/// Parses `--fs-override SHARE=DIR[,readonly=on|off]` (each share at most once).
fn fs_overrides(values: &[String]) -> Result<Vec<FsOverride>, String> {
    let mut out: Vec<FsOverride> = Vec::new();
    for (share, rest) in pairs("--fs-override", "SHARE=DIR", values)? {
        let (dir, read_only) = match rest.rsplit_once(",readonly=") {
            Some((dir, "on")) => (dir, Some(true)),
            Some((dir, "off")) => (dir, Some(false)),
            Some((_, other)) => {
                return Err(format!(
                "invalid --fs-override '{share}={rest}': readonly must be on or off, not '{other}'"
            ))
            }
            None => (rest.as_str(), None),
        };
        if dir.is_empty() {
            return Err(format!(
                "invalid --fs-override '{share}={rest}': expected SHARE=DIR[,readonly=on|off]"
            ));
        }
        out.push(FsOverride {
            share,
            shared_dir: Some(PathBuf::from(dir)),
            read_only,
            socket_path: None,
        });
    }
    Ok(out)
}

/// Where the console goes, and whether stdin is forwarded (only for stdio).
fn console_sink(console: &str) -> Result<(ConsoleSink, bool), String> {
    match console
        .parse::<ConsoleConfig>()
        .map_err(|e| e.to_string())?
    {
        ConsoleConfig::Stdio => Ok((ConsoleSink::Stdout, true)),
        ConsoleConfig::File(path) => {
            let file = std::fs::File::create(&path)
                .map_err(|e| format!("cannot create the console file {}: {e}", path.display()))?;
            Ok((ConsoleSink::File(file), false))
        }
        ConsoleConfig::Off => Ok((ConsoleSink::Off, false)),
    }
}

/// What zvm-vmm needs to restore the VM as [`run`] does.
fn hand_over(params: RestoreParams, opts: &RestoreOptions<'_>) -> crate::handover::Handover {
    crate::handover::Handover {
        job: crate::handover::Job::Restore(crate::handover::RestoreJob {
            snapshot_path: params.snapshot_path,
            mem_file_path: params.mem_file_path,
            drives: params.overrides.drives,
            net: params.overrides.net,
            vsock_uds_path: params.overrides.vsock_uds_path,
            track_dirty_pages: params.track_dirty_pages,
            seccomp: params.seccomp,
            console: opts.console.to_string(),
            verbose: opts.verbose,
        }),
        metrics: None,
        shutdown_timeout_secs: opts.shutdown_timeout.as_secs(),
        log_level: opts.log_level.to_string(),
        started_ns_ago: 0,
        jail: None,
    }
}

/// Restores the VM and runs it to its end: exit 0 when the guest ends it, 1 on failure,
/// 2 (one `zvm: ...` line, no VM started) for bad flags or a snapshot that is refused.
pub fn run(args: &RestoreArgs, opts: &RestoreOptions<'_>, process_start: Instant) -> ExitCode {
    // A restore without virtio-fs shares runs in the lean zvm-vmm (crate::vmm_exec;
    // jailed, in the jailed half, which it locks down); zvm goes on only where it cannot.
    if args.fs_overrides.is_empty() {
        if let Ok(params) = args.params(opts) {
            if let Some(e) = crate::vmm_exec::exec(&hand_over(params, opts), process_start) {
                tracing::warn!("{e}; the VM runs in zvm");
            }
        }
    }
    let prepared = args
        .params(opts)
        .and_then(|params| console_sink(opts.console).map(|console| (params, console)));
    let (params, (sink, input)) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("zvm: {e}");
            return ExitCode::from(2);
        }
    };
    if opts.verbose {
        eprintln!("zvm: host KVM flavour: {}", KvmFlavour::detect().describe());
        eprintln!(
            "zvm: restoring {} (memory {})",
            params.snapshot_path.display(),
            params.mem_file_path.display()
        );
    }
    let build = BuildOptions {
        process_start,
        ..BuildOptions::default()
    };
    // The snapshot's virtio-fs shares get new virtiofsd daemons, stopped when this returns.
    let mut fs_daemons = None;
    let mut start_backends = |resources: &mut vmm::resources::VmResources| {
        crate::virtiofs::start_fs_backends(resources, opts.fs, opts.jailed, &mut fs_daemons)
    };
    let restored =
        vmm::snapshot::restore_microvm_with(&params, build, sink, input, &mut start_backends);
    let vm = match restored {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("zvm: {}", vm_runner::api::snapshot_load_error(&e));
            return ExitCode::from(if e.is_bad_input() { 2 } else { 1 });
        }
    };
    if opts.verbose {
        eprintln!(
            "zvm: restored and running {:.1} ms after process start",
            process_start.elapsed().as_secs_f64() * 1e3
        );
    }
    let raw = input.then(RawTerminal::enable).flatten();
    if let Ok(stop) = vm.stop_handle() {
        crate::stop_signals::install_for(stop, vm.shutdown_handle().ok(), opts.shutdown_timeout);
    }
    // The socket the VM listens on (the override, else the snapshot's), removed at its end.
    let vsock_uds = vm
        .resources()
        .and_then(|r| r.vsock.as_ref())
        .map(|v| v.uds_path.clone());
    let (outcome, boot_time) = vm.wait_with_boot_time();
    drop(raw);
    if let Some(uds) = vsock_uds {
        vmm::devices::virtio::vsock::remove_socket(&uds);
    }
    report_outcome(&outcome, boot_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_key_value_pairs_given_once() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            pairs(
                "--net-override",
                "IFACE=TAP",
                &v(&["eth0=tap1", "eth1=tap=x"])
            ),
            Ok(vec![
                ("eth0".into(), "tap1".into()),
                ("eth1".into(), "tap=x".into())
            ])
        );
        assert!(pairs("--net-override", "IFACE=TAP", &v(&["eth0"]))
            .expect_err("no =")
            .contains("expected IFACE=TAP"));
        assert!(pairs("--drive-override", "ID=PATH", &v(&["=x"])).is_err());
        assert!(pairs("--drive-override", "ID=PATH", &v(&["root="])).is_err());
        assert!(pairs("--drive-override", "ID=PATH", &v(&["a=/x", "a=/y"]))
            .expect_err("twice")
            .contains("'a' is given twice"));
    }

    #[test]
    fn fs_overrides_name_a_share_and_a_directory() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let o = fs_overrides(&v(&["share=/srv/a,b", "data=/srv/d,readonly=on"])).expect("valid");
        assert_eq!(
            (
                o[0].share.as_str(),
                o[0].shared_dir.as_deref(),
                o[0].read_only
            ),
            ("share", Some(Path::new("/srv/a,b")), None)
        );
        assert_eq!(o[1].shared_dir.as_deref(), Some(Path::new("/srv/d")));
        assert_eq!(o[1].read_only, Some(true));
        assert!(fs_overrides(&v(&["a=/x,readonly=maybe"]))
            .expect_err("bad readonly")
            .contains("on or off"));
        assert!(fs_overrides(&v(&["a=,readonly=on"])).is_err());
        assert!(fs_overrides(&v(&["a=/x", "a=/y"])).is_err());
    }

    #[test]
    fn consoles_map_to_sinks() {
        assert!(matches!(
            console_sink("stdio"),
            Ok((ConsoleSink::Stdout, true))
        ));
        assert!(matches!(console_sink("off"), Ok((ConsoleSink::Off, false))));
        let dir = tempfile::tempdir().expect("dir");
        let file = format!("file:{}", dir.path().join("console.log").display());
        assert!(matches!(
            console_sink(&file),
            Ok((ConsoleSink::File(_), false))
        ));
        assert!(console_sink("tty").is_err());
        assert!(console_sink("file:/nonexistent/dir/log")
            .expect_err("uncreatable")
            .contains("console file"));
    }
}
