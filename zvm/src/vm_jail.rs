//! `zvm run`'s jail (the `jail` crate): on by default for container flists, with
//! `--jail on` for everything else. The process splits before the VM is built; the
//! supervisor waits, the jailed half builds the VM as root and locks itself down (vmm's
//! lock-down step) once its KVM, disk, tap and socket descriptors are open and before
//! the kernel is read or any VM thread starts.

use clap::Args;
use jail::{CgroupLimits, Exposed, IdRange, JailConfig, Side};
use std::path::{Path, PathBuf};
use vmm::VmResources;

/// Memory a jail allows beyond guest RAM: the VMM's own (vsock buffers, queues, page
/// cache of its files).
const VMM_MEMORY_BYTES: u64 = 256 << 20;
/// Threads and processes of a jailed VMM.
const PIDS: u64 = 256;
/// Open descriptors of a jailed VMM (vsock connections are the most).
const OPEN_FILES: u64 = 4096;
/// Room above the largest file the VMM writes, for its RLIMIT_FSIZE.
const FILE_SIZE_ROOM: u64 = 64 << 20;

/// Jail flags of `zvm run`.
#[derive(Debug, Args)]
pub struct JailArgs {
    /// Run the VMM jailed (README: "Jail"): its own mount, PID, IPC, UTS and network
    /// namespaces, a root holding only its sockets, an unprivileged uid, no capabilities,
    /// cgroup and resource limits. Default: on with --flist, off otherwise. Needs root.
    #[arg(long, value_parser = ["on", "off"])]
    jail: Option<String>,
    /// The uids (and gids) jails take theirs from, one per running VM.
    #[arg(
        long,
        value_name = "FIRST:COUNT",
        env = "ZVM_JAIL_IDS",
        default_value = "900000:65536"
    )]
    jail_ids: IdRange,
    /// Where jails keep their id locks and mount points.
    #[arg(long, value_name = "DIR", env = "ZVM_JAIL_DIR", default_value = JailConfig::STATE_DIR, hide = true)]
    jail_dir: PathBuf,
}

impl JailArgs {
    /// Whether the VM runs jailed: `--jail`, else on for flists.
    pub fn wanted(&self, flist: bool) -> bool {
        self.jail.as_deref().map_or(flist, |j| j == "on")
    }
}

/// Which half of `zvm run` carries on.
pub enum Entered {
    /// No jail: build and run the VM here.
    Unjailed,
    /// The jailed half: build and run the VM; vmm locks it down before the guest runs.
    Jailed,
    /// The supervisor, once the jailed half ended with this status.
    Supervisor(i32),
}

/// What the jail of a `zvm run` VM exposes beside its sockets.
pub struct JailFiles<'a> {
    /// Files the jailed half reads after lock-down (the console log, for a failure's
    /// report).
    pub readable: Vec<&'a Path>,
    /// Files it writes by path after lock-down (the metrics file): made if missing and
    /// handed to the jail's uid.
    pub writable: Vec<&'a Path>,
    /// Whether guest connections to host ports (`UDS_PORT`) must reach host listeners
    /// beside the vsock socket (a user's `--vsock`).
    pub vsock_dir: bool,
}

/// Splits the process into a supervisor and a jailed half when `args` want a jail.
pub fn enter(
    args: &JailArgs,
    flist: bool,
    resources: &VmResources,
    files: &JailFiles<'_>,
) -> Result<Entered, String> {
    if !args.wanted(flist) {
        return Ok(Entered::Unjailed);
    }
    let config = config(args, resources, files)?;
    match jail::enter(&config).map_err(|e| format!("{e} (--jail off runs without one)"))? {
        Side::Supervisor(status) => Ok(Entered::Supervisor(status)),
        Side::Jailed(mut jailed) => {
            crate::output_file::forget_copier();
            // The vsock socket is made while the VM is built: handed over at lock-down.
            if let Some(vsock) = &resources.vsock {
                jailed.own(vsock.uds_path.clone());
            }
            vmm::builder::set_lock_down(move || jailed.lock_down().map_err(|e| e.to_string()));
            Ok(Entered::Jailed)
        }
    }
}

fn config(
    args: &JailArgs,
    resources: &VmResources,
    files: &JailFiles<'_>,
) -> Result<JailConfig, String> {
    let mc = &resources.machine_config;
    let memory = mc.mem_size_mib << 20;
    let mut exposed = Vec::new();
    let mut largest = memory;
    // Read after lock-down (a boot loads them then; a restore does not need them).
    let boot = &resources.boot_source;
    for path in std::iter::once(&boot.kernel_image_path).chain(&boot.initrd_path) {
        if !path.as_os_str().is_empty() {
            exposed.push(Exposed::read_only(absolute(path)?));
        }
    }
    for drive in &resources.drives {
        let size = std::fs::metadata(&drive.path_on_host)
            .map(|m| m.len())
            .unwrap_or(0);
        largest = largest.max(size);
    }
    if let Some(vsock) = &resources.vsock {
        // Bound at lock-down, once the VM's build made the socket.
        let uds = absolute(&vsock.uds_path)?;
        let shown = match uds.parent() {
            Some(dir) if files.vsock_dir => dir.to_path_buf(),
            _ => uds,
        };
        exposed.push(Exposed::writable(shown));
    }
    let mut owned = Vec::new();
    for path in &files.readable {
        exposed.push(Exposed::read_only(absolute(path)?));
    }
    for path in &files.writable {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        exposed.push(Exposed::writable(absolute(path)?));
        owned.push(path.to_path_buf());
    }
    Ok(JailConfig {
        name: "zvm".into(),
        state_dir: args.jail_dir.clone(),
        ids: args.jail_ids,
        exposed,
        owned,
        // Taps are open before the lock-down: the VMM needs no host network.
        new_network: true,
        cgroup: CgroupLimits {
            memory_bytes: memory + VMM_MEMORY_BYTES,
            pids: PIDS,
            cpus: f64::from(mc.vcpu_count) + 1.0,
        },
        open_files: OPEN_FILES,
        file_size: largest + FILE_SIZE_ROOM,
    })
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
}
