//! `zvm run`'s jail (the `jail` crate): on by default for container flists, with
//! `--jail on` for everything else. The process splits before the VM is built; the
//! supervisor waits, the jailed half builds the VM as root and locks itself down (vmm's
//! lock-down step) once its KVM, disk, tap and socket descriptors are open and before
//! the kernel is read or any VM thread starts.

use clap::Args;
use jail::{CgroupLimits, Exposed, IdRange, JailConfig, Jailed, Side};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use vmm::VmResources;

/// Open descriptors of a jailed VMM (vsock connections are the most).
const OPEN_FILES: u64 = 4096;
/// The largest file an API-mode VMM may write (its disks and snapshots are not known when
/// it is jailed).
const API_FILE_SIZE: u64 = 1 << 40;
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
        env = JailConfig::IDS_ENV,
        default_value = "900000:65536"
    )]
    jail_ids: IdRange,
    /// Where jails keep their id locks and mount points.
    #[arg(long, value_name = "DIR", env = JailConfig::STATE_DIR_ENV, default_value = JailConfig::STATE_DIR, hide = true)]
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
    // The vsock socket is made while the VM is built: handed over at lock-down.
    split(
        &config,
        resources.vsock.as_ref().map(|v| v.uds_path.clone()),
    )
}

/// The jail of `zvm run --restore --jail on`: the snapshot's devices are attached (its
/// disks, taps and vsock socket opened) before vmm locks the jailed half down, which then
/// needs no host path; the memory file's size sets the memory limit.
pub fn enter_restore(args: &JailArgs, mem_file: &Path) -> Result<Entered, String> {
    if !args.wanted(false) {
        return Ok(Entered::Unjailed);
    }
    let memory = std::fs::metadata(mem_file)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", mem_file.display()))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let config = JailConfig {
        name: "zvm".into(),
        state_dir: args.jail_dir.clone(),
        ids: args.jail_ids,
        exposed: Vec::new(),
        owned: Vec::new(),
        new_network: true,
        cgroup: CgroupLimits::for_vmm(memory, cpus),
        open_files: OPEN_FILES,
        file_size: API_FILE_SIZE,
        root_dir: None,
        kvm_devices: false,
    };
    split(&config, None)
}

/// The jailed half's jail, from the split until vmm locks it down here or zvm hands it
/// to zvm-vmm ([`take_jailed`]).
static PENDING: Mutex<Option<Box<Jailed>>> = Mutex::new(None);

fn pending() -> std::sync::MutexGuard<'static, Option<Box<Jailed>>> {
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// In the jailed half: its jail, to be handed to zvm-vmm (which locks it down); give it
/// back with [`put_back_jailed`] if the hand-over fails. None when not jailed.
pub fn take_jailed() -> Option<Box<Jailed>> {
    pending().take()
}

/// Gives back a jail [`take_jailed`] took: vmm locks it down here after all.
pub fn put_back_jailed(jailed: Box<Jailed>) {
    *pending() = Some(jailed);
}

/// Splits the process; the jailed half is locked down by vmm before its VM runs (owning
/// `socket` then, when given).
fn split(config: &JailConfig, socket: Option<PathBuf>) -> Result<Entered, String> {
    match jail::enter(config).map_err(|e| format!("{e} (--jail off runs without one)"))? {
        Side::Supervisor(status) => Ok(Entered::Supervisor(status)),
        Side::Jailed(mut jailed) => {
            crate::output_file::forget_copier();
            if let Some(socket) = socket {
                jailed.own(socket);
            }
            put_back_jailed(jailed);
            vmm::builder::set_lock_down(|| match take_jailed() {
                Some(mut jailed) => jailed.lock_down().map_err(|e| e.to_string()),
                None => Err("the jail was handed to zvm-vmm".into()),
            });
            Ok(Entered::Jailed)
        }
    }
}

/// The jail of an API-mode VMM (`zvm --api-sock ... --jail-root DIR`), made here and
/// locked down before the API is served (by zvm-vmm, to which the jailed half hands
/// itself, else by [`lock_down_api`]): as with Firecracker's jailer, `dir` becomes the
/// VMM's root (its uid's), the API socket, the config file and every path the API names
/// are inside it, `/dev` holds KVM's and TUN's nodes for the jail's uid, and the VMM stays
/// in the host's network namespace (taps must be owned by the jail's uid:
/// `ip tuntap add NAME mode tap user UID`; `--jail-ids UID:1` fixes the uid).
pub fn enter_api(dir: &Path, ids: IdRange, memory_mib: u64, cpus: u8) -> Result<Entered, String> {
    let config = JailConfig {
        name: "zvm-api".into(),
        state_dir: JailConfig::state_dir_from_env(),
        ids,
        exposed: Vec::new(),
        owned: Vec::new(),
        new_network: false,
        cgroup: CgroupLimits::for_vmm(memory_mib << 20, f64::from(cpus) + 1.0),
        open_files: OPEN_FILES,
        file_size: API_FILE_SIZE,
        root_dir: Some(absolute(dir)?),
        kvm_devices: true,
    };
    match jail::enter(&config).map_err(|e| e.to_string())? {
        Side::Supervisor(status) => Ok(Entered::Supervisor(status)),
        Side::Jailed(jailed) => {
            // Locked down by zvm-vmm (crate::vmm_exec), else by lock_down_api.
            put_back_jailed(jailed);
            Ok(Entered::Jailed)
        }
    }
}

/// In an API-mode jail's jailed half that zvm serves itself: locks the jail down, before
/// anything is served. Nothing to do when not jailed.
pub fn lock_down_api() -> Result<(), String> {
    match take_jailed() {
        Some(mut jailed) => jailed.lock_down().map_err(|e| e.to_string()),
        None => Ok(()),
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
        cgroup: CgroupLimits::for_vmm(memory, f64::from(mc.vcpu_count) + 1.0),
        open_files: OPEN_FILES,
        file_size: largest + FILE_SIZE_ROOM,
        root_dir: None,
        kvm_devices: false,
    })
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
}
