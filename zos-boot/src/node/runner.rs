//! Running workload VMs: the [`WorkloadRunner`] trait the supervisor drives, and
//! [`ProcessRunner`], which runs each VM as its own `zvm run --flist ...` process.

use super::network::{self, NetworkDef};
use super::procs::{self, PidRecord};
use super::store::DeploymentRecord;
use crate::flist_vm::{self, cmdline, FlistBootOptions};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

/// A boxed future, for object-safe async methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Files of one deployment, under `<state-dir>/vms/<name>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// The deployment's directory.
    pub dir: PathBuf,
    /// The VM's console (and zvm's messages).
    pub console: PathBuf,
    /// The pid file of the VM process.
    pub pid_file: PathBuf,
    /// Sparse files of the extra disks.
    pub disks: PathBuf,
    /// The unpacked flist and root disk, or the root's copy-on-write layers.
    pub work: PathBuf,
    /// The volumes' stores (`<name>.ext4` each; see [`VmPaths::volume`]).
    pub volumes: PathBuf,
}

impl VmPaths {
    /// The paths of deployment `name` under `state_dir`.
    pub fn new(state_dir: &Path, name: &str) -> VmPaths {
        let dir = state_dir.join("vms").join(name);
        VmPaths {
            console: dir.join("console.log"),
            pid_file: dir.join("vm.pid"),
            disks: dir.join("disks"),
            work: dir.join("work"),
            volumes: dir.join("volumes"),
            dir,
        }
    }

    /// Volume `name`'s store, `volumes/<name>.ext4`; or `volumes/<name>`, a directory an
    /// earlier zvm made (unbounded), when that is what is there.
    pub fn volume(&self, name: &str) -> (PathBuf, bool) {
        let old = self.volumes.join(name);
        if std::fs::symlink_metadata(&old).is_ok_and(|m| m.is_dir()) {
            return (old, false);
        }
        (self.volumes.join(format!("{name}.ext4")), true)
    }
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off or rebooted (exit code 0).
    Success,
    /// It crashed or was killed; the text says how.
    Failure(String),
}

/// A running VM.
pub trait VmInstance: Send {
    /// Its process id, if it has one.
    fn pid(&self) -> Option<u32>;
    /// Resolves when the VM ends.
    fn wait(&mut self) -> BoxFuture<'_, VmExit>;
    /// Stops it: SIGTERM, then SIGKILL after `grace`; resolves once it is gone.
    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, ()>;
}

/// What the node needs from whatever runs its VMs. Blocking methods are called off the
/// async threads.
pub trait WorkloadRunner: Send + Sync + 'static {
    /// Checks that an flist can be had (blocking).
    fn check_flist(&self, flist: &str) -> Result<(), String>;
    /// Gets everything ready for a first start: fetches the flist, builds the root disk,
    /// creates disk files (blocking; idempotent).
    fn prepare(&self, record: &DeploymentRecord, paths: &VmPaths) -> Result<(), String>;
    /// Starts the VM.
    fn start(
        &self,
        record: &DeploymentRecord,
        paths: &VmPaths,
    ) -> Result<Box<dyn VmInstance>, String>;
    /// Takes over a VM an earlier daemon left running, if it still runs.
    fn adopt(&self, record: &DeploymentRecord, paths: &VmPaths) -> Option<Box<dyn VmInstance>>;
    /// Releases what the VM held on the host (taps); its files are removed by the node.
    fn cleanup(&self, record: &DeploymentRecord, paths: &VmPaths);
}

/// Runs each VM as a child `zvm run --flist ...` process with its console in
/// `console.log`; the process survives the daemon and is re-adopted through its pid file.
#[derive(Debug, Clone)]
pub struct ProcessRunner {
    /// The zvm executable.
    pub zvm: PathBuf,
    /// Block and flist cache.
    pub cache_dir: PathBuf,
    /// The project's guest kernel for container flists (located when `None`).
    pub kernel: Option<PathBuf>,
    /// The node's networks.
    pub networks: Vec<NetworkDef>,
    /// Seconds a VM's guest gets to power off when its deployment is stopped (the ACPI
    /// power button, through `zvm run --shutdown-timeout`); 0 stops it at once.
    pub shutdown_timeout: u64,
}

impl ProcessRunner {
    fn boot_options(&self, record: &DeploymentRecord, paths: &VmPaths) -> FlistBootOptions {
        let spec = &record.spec;
        FlistBootOptions {
            flist: spec.flist.clone(),
            cache_dir: self.cache_dir.clone(),
            work_dir: paths.work.clone(),
            entrypoint: spec.entrypoint.clone(),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            root_size: spec.size.map(|s| s.0),
            kernel: self.kernel.clone(),
            hostname: Some(spec.name.clone()),
            root_fs: spec.rootfs,
        }
    }

    /// The most bytes a VM's console.log holds (console.log.1 holds as much again).
    pub const CONSOLE_MAX: &str = "16M";

    /// The `zvm run` arguments of a deployment.
    pub fn command_args(&self, record: &DeploymentRecord, paths: &VmPaths) -> Vec<String> {
        let spec = &record.spec;
        let opts = self.boot_options(record, paths);
        let mut args = vec![
            "run".to_string(),
            "--flist".into(),
            opts.flist,
            "--flist-cache".into(),
            path_str(&opts.cache_dir),
            "--flist-work".into(),
            path_str(&opts.work_dir),
            "--cpus".into(),
            spec.compute.cpu.to_string(),
            "--memory".into(),
            format!("{}M", spec.memory_mib()),
            "--console".into(),
            "stdio".into(),
            "--output".into(),
            path_str(&paths.console),
            "--output-max".into(),
            Self::CONSOLE_MAX.into(),
        ];
        if self.shutdown_timeout > 0 {
            args.extend([
                "--shutdown-timeout".into(),
                self.shutdown_timeout.to_string(),
            ]);
        }
        if let Some(k) = &self.kernel {
            args.extend(["--kernel".into(), path_str(k)]);
        }
        args.extend(["--hostname".into(), spec.name.clone()]);
        if let Some(e) = &spec.entrypoint {
            args.extend(["--entrypoint".into(), e.clone()]);
        }
        for (k, v) in &spec.env {
            args.extend(["--env".into(), format!("{k}={v}")]);
        }
        if let Some(size) = spec.size {
            args.extend(["--root-size".into(), size.0.to_string()]);
        }
        args.extend(["--root-fs".into(), spec.rootfs.to_string()]);
        for volume in &spec.volumes {
            let (path, image) = paths.volume(&volume.name);
            let kind = if image { ":image" } else { "" };
            args.extend([
                "--volume".into(),
                format!("{}:{}{kind}", path_str(&path), volume.mountpoint),
            ]);
        }
        for disk in &spec.disks {
            args.extend([
                "--disk".into(),
                format!(
                    "path={},id={},mount={}",
                    path_str(&paths.disks.join(format!("{}.img", disk.name))),
                    disk.name,
                    disk.mountpoint
                ),
            ]);
        }
        let mut append = Vec::new();
        for (i, addr) in record.addresses.iter().enumerate() {
            args.extend(["--net".into(), format!("tap={},id=eth{i}", addr.tap)]);
            let guest = cmdline::GuestAddress {
                ip: addr.ip,
                prefix: addr.prefix,
                gateway: Some(addr.gateway),
            };
            // Linux configures one interface from `ip=`; the others are announced.
            append.push(if i == 0 {
                cmdline::ip_arg(&guest, i)
            } else {
                format!("zvm.ip.eth{i}={}/{}", addr.ip, addr.prefix)
            });
        }
        for disk in &spec.disks {
            append.push(format!("zvm.mount.{}={}", disk.name, disk.mountpoint));
        }
        if let Some(extra) = &spec.kernel_args {
            append.push(extra.clone());
        }
        if !append.is_empty() {
            args.extend(["--append".into(), append.join(" ")]);
        }
        args
    }
}

/// Makes a new disk an ext4 file system labelled `label` (a container mounts it at its
/// mount point; a VM image may format it again). Sparse: only metadata is written.
fn format_disk(path: &Path, label: &str) -> Result<(), String> {
    crate::image::disk::format(Path::new("mkfs.ext4"), path, label).map_err(|e| {
        // A half-made file system would be taken as made next time: start again then.
        let _ = std::fs::remove_file(path);
        e.to_string()
    })
}

/// Makes each missing volume's store in the deployment's own `volumes/` (names are checked
/// file names; an existing store is kept with its data, anything else in its place
/// refused): of the volume's size, its root owned as the image's directory at the mount
/// point (root 0755 when the image has none).
fn make_volumes(
    record: &DeploymentRecord,
    paths: &VmPaths,
    cache_dir: &Path,
) -> Result<(), String> {
    use crate::flist_vm::bounded_store::StoreImage;
    use std::os::unix::fs::DirBuilderExt;
    if record.spec.volumes.is_empty() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&paths.volumes)
        .map_err(|e| format!("{}: {e}", paths.volumes.display()))?;
    let missing: Vec<_> = record
        .spec
        .volumes
        .iter()
        .filter(|v| {
            let (path, _) = paths.volume(&v.name);
            std::fs::symlink_metadata(path).is_err()
        })
        .collect();
    for volume in &record.spec.volumes {
        let (path, image) = paths.volume(&volume.name);
        if image && !missing.iter().any(|m| m.name == volume.name) {
            StoreImage::open(&path).map_err(|e| format!("volume `{}`: {e}", volume.name))?;
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mountpoints: Vec<&str> = missing.iter().map(|v| v.mountpoint.as_str()).collect();
    let attrs = flist_vm::image_dir_attrs(&record.spec.flist, cache_dir, &mountpoints)
        .map_err(|e| e.to_string())?;
    for (volume, attrs) in missing.iter().zip(attrs) {
        let (path, _) = paths.volume(&volume.name);
        StoreImage::ensure(&path, volume.bytes(), attrs.unwrap_or_default())
            .map_err(|e| format!("volume `{}`: {e}", volume.name))?;
    }
    Ok(())
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl WorkloadRunner for ProcessRunner {
    fn check_flist(&self, flist: &str) -> Result<(), String> {
        flist_vm::check_reachable(flist).map_err(|e| e.to_string())
    }

    fn prepare(&self, record: &DeploymentRecord, paths: &VmPaths) -> Result<(), String> {
        std::fs::create_dir_all(&paths.disks)
            .map_err(|e| format!("{}: {e}", paths.disks.display()))?;
        for disk in &record.spec.disks {
            let path = paths.disks.join(format!("{}.img", disk.name));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len < disk.size.0 {
                file.set_len(disk.size.0)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if len == 0 {
                format_disk(&path, &disk.name)?;
            }
        }
        flist_vm::prepare(&self.boot_options(record, paths)).map_err(|e| e.to_string())?;
        make_volumes(record, paths, &self.cache_dir)
    }

    fn start(
        &self,
        record: &DeploymentRecord,
        paths: &VmPaths,
    ) -> Result<Box<dyn VmInstance>, String> {
        for addr in &record.addresses {
            let net = self
                .networks
                .iter()
                .find(|n| n.name == addr.network)
                .ok_or_else(|| {
                    format!(
                        "network `{}` is no longer served by this node",
                        addr.network
                    )
                })?;
            let bridge = network::ensure_bridge(net).map_err(|e| e.to_string())?;
            network::ensure_tap(&addr.tap, &bridge).map_err(|e| e.to_string())?;
        }
        // zvm writes its output (console, container output, messages) to console.log
        // itself, rotated at CONSOLE_MAX: it outlives this daemon, and a guest printing
        // forever must not fill the node's disk.
        let mut cmd = tokio::process::Command::new(&self.zvm);
        cmd.args(self.command_args(record, paths))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.zvm.display()))?;
        let pid = child.id().ok_or("the VM process ended at once")?;
        let rec = PidRecord::of(pid, &path_str(&paths.work));
        rec.save(&paths.pid_file).map_err(|e| e.to_string())?;
        Ok(Box::new(ChildVm { child, pid }))
    }

    fn adopt(&self, _record: &DeploymentRecord, paths: &VmPaths) -> Option<Box<dyn VmInstance>> {
        let rec = PidRecord::load(&paths.pid_file)?;
        (rec.marker == path_str(&paths.work) && rec.is_running())
            .then(|| Box::new(AdoptedVm { rec }) as Box<dyn VmInstance>)
    }

    fn cleanup(&self, record: &DeploymentRecord, _paths: &VmPaths) {
        for addr in &record.addresses {
            if let Err(e) = network::delete_tap(&addr.tap) {
                tracing::warn!(tap = %addr.tap, "{e}");
            }
        }
    }
}

fn describe(status: std::process::ExitStatus) -> VmExit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => VmExit::Success,
        (Some(code), _) => VmExit::Failure(format!("VM process exited with code {code}")),
        (None, Some(sig)) => VmExit::Failure(format!("VM process killed by signal {sig}")),
        (None, None) => VmExit::Failure("VM process ended".into()),
    }
}

/// A VM process this daemon started.
struct ChildVm {
    child: tokio::process::Child,
    pid: u32,
}

impl VmInstance for ChildVm {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn wait(&mut self) -> BoxFuture<'_, VmExit> {
        Box::pin(async move {
            match self.child.wait().await {
                Ok(status) => describe(status),
                Err(e) => VmExit::Failure(format!("waiting for the VM process: {e}")),
            }
        })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Ok(pid) = i32::try_from(self.pid) {
                if self.child.try_wait().ok().flatten().is_none() {
                    // SAFETY: kill(2) of our own child, which has not been reaped.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
            if tokio::time::timeout(grace, self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
            }
        })
    }
}

/// A VM process an earlier daemon started (not our child: watched through /proc).
struct AdoptedVm {
    rec: PidRecord,
}

const POLL: Duration = Duration::from_millis(250);

impl VmInstance for AdoptedVm {
    fn pid(&self) -> Option<u32> {
        Some(self.rec.pid)
    }

    fn wait(&mut self) -> BoxFuture<'_, VmExit> {
        Box::pin(async move {
            while self.rec.is_running() {
                tokio::time::sleep(POLL).await;
            }
            VmExit::Failure(
                "adopted VM process ended (its exit status is not known to this daemon)".into(),
            )
        })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            procs::signal(&self.rec, libc::SIGTERM);
            let deadline = tokio::time::Instant::now() + grace;
            while self.rec.is_running() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
            procs::signal(&self.rec, libc::SIGKILL);
            while self.rec.is_running() {
                tokio::time::sleep(POLL).await;
            }
        })
    }
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
