//! `zvm run`: flags -> [`vmm::VmResources`] -> [`vmm::build_microvm`] -> exit code; or,
//! with `--restore`, a snapshot -> [`vmm::snapshot::restore_microvm`] ([`crate::restore`]).

use crate::api::logger::Logging;
use crate::container_log::{ContainerConsole, ContainerLog};
use crate::container_run::{ContainerRun, Ended};
use crate::run_outcome::{container_outcome, outcome_lines};
use crate::terminal::RawTerminal;
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use vmm::builder::BuildOptions;
use vmm::host::KvmFlavour;
use vmm::resources::{
    parse_mem_size_mib, BootSource, ConsoleConfig, CpuTemplate, IrqchipKind, MachineConfig,
    DEFAULT_BOOT_ARGS,
};
use vmm::VmResources;
use zos_boot::flist_vm::container::DiskMount;

/// Flags of `zvm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Guest kernel: an uncompressed ELF vmlinux (booted through its PVH entry) or a
    /// bzImage. `zvm kernel path` builds one. With --flist: the kernel for container and
    /// raw-image flists (default: $ZVM_KERNEL or the project's build).
    #[arg(long, required_unless_present_any = ["flist", "restore"])]
    kernel: Option<PathBuf>,
    /// Boot an flist (a `.fl` path or http(s) URL): a VM image (/boot/vmlinuz, optional
    /// /boot/initrd.img), a raw disk (/image.raw), or a container root filesystem whose
    /// --entrypoint the guest agent runs (its output on stdout/stderr, zvm's exit status
    /// is its exit status; the guest console goes to a log file, see --console).
    #[arg(long, value_name = "PATH_OR_URL")]
    flist: Option<String>,
    /// With --flist: the container's command (shell-like words).
    #[arg(long, requires = "flist")]
    entrypoint: Option<String>,
    /// With --flist: an environment variable of the container; repeatable.
    #[arg(long = "env", value_name = "K=V", requires = "flist")]
    envs: Vec<String>,
    /// With --flist: block and flist cache (default ~/.cache/zvm/flist).
    #[arg(long, value_name = "DIR", requires = "flist")]
    flist_cache: Option<PathBuf>,
    /// With --flist: keep the unpacked flist and root disk here, reused on the next run
    /// (default: a temporary directory removed afterwards).
    #[arg(long, value_name = "DIR", requires = "flist")]
    flist_work: Option<PathBuf>,
    /// With --flist: a container's root size in bytes: the ext4 disk's, or with a root over
    /// virtio-fs the most its writes take on the host (a store of that size; default 1 GiB).
    #[arg(long, value_name = "BYTES", requires = "flist")]
    root_size: Option<u64>,
    /// With --flist: where a container's root comes from: virtiofs (the flist unpacked
    /// once into --flist-cache, copy-on-write in the work directory, over virtio-fs) or
    /// ext4 (a private copy on a disk of --root-size).
    #[arg(long, value_name = "virtiofs|ext4", default_value = "virtiofs")]
    root_fs: zos_boot::flist_vm::cow_root::RootFs,
    /// With a container flist: a host directory the container sees at a path, over
    /// virtio-fs: `HOST_DIR:CONTAINER_PATH[:ro]` (the user's own directory, not bounded),
    /// or `IMAGE:CONTAINER_PATH[:ro]:image`, an ext4 image bounded by its size; repeatable.
    #[arg(long = "volume", value_name = "HOST:CTR[:ro]", requires = "flist")]
    volumes: Vec<zos_boot::flist_vm::container::VolumeMount>,
    /// With --flist: the container's host name (default: the flist's name).
    #[arg(long, requires = "flist", value_parser = parse_hostname)]
    hostname: Option<String>,
    /// Arguments appended to the kernel command line.
    #[arg(long, value_name = "ARGS")]
    append: Option<String>,
    /// Initramfs / initrd to load.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (replaces the default).
    #[arg(long, default_value = DEFAULT_BOOT_ARGS)]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u64,
    /// Guest memory, e.g. 256M or 1G (a bare number is MiB).
    #[arg(long, default_value = "256M")]
    memory: String,
    /// Where the serial console goes: stdio, off, or file:PATH [default: stdio]. For a
    /// container flist the terminal is the container's: the console and zvm's messages go
    /// to a log file (--flist-work's console.log, else a temporary file kept if the run
    /// fails; --verbose prints its path and keeps it), or with stdio to standard error.
    #[arg(long, value_name = "WHERE")]
    console: Option<String>,
    /// Prefix each console line with the time since zvm started.
    #[arg(long)]
    console_timestamps: bool,
    /// CPUID template: auto (pvm on KVM PVM hosts), none, or pvm.
    #[arg(long, default_value = "auto")]
    cpu_template: String,
    /// Seccomp filters on zvm's threads: on, or off (debugging only).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    seccomp: String,
    /// A virtio block device: `path=FILE[,readonly=on|off][,id=NAME][,root=on][,mount=PATH]`;
    /// repeat for several disks. `root=on` boots from it (`root=/dev/vda`); with a container
    /// flist, `mount=PATH` mounts it (ext4) at PATH in the container.
    #[arg(long = "disk", value_name = "SPEC")]
    disks: Vec<String>,
    /// A virtio-net interface on a host tap: `tap=NAME[,mac=02:..][,id=NAME][,queues=N]`;
    /// repeat for several. The tap is created (for zvm's lifetime) if it does not exist and
    /// zvm may. `queues=N`: N queue pairs (multiqueue, at most one per vCPU; a tap made
    /// beforehand must then be `multi_queue`).
    #[arg(long = "net", value_name = "SPEC")]
    nets: Vec<String>,
    /// A virtio entropy device backed by the host's getrandom (the guest's /dev/hwrng).
    #[arg(long)]
    rng: bool,
    /// A virtio-vsock device: `cid=N,uds=PATH` (N >= 3). Host clients connect to PATH and
    /// send `CONNECT <port>\n`; guest connections to host port P reach `PATH_P`.
    #[arg(long, value_name = "SPEC")]
    vsock: Option<String>,
    #[command(flatten)]
    fs: Box<crate::virtiofs::FsArgs>,
    /// Track the pages the guest writes (what a later diff snapshot needs; it costs a
    /// little on every first write to a page).
    #[arg(long)]
    track_dirty_pages: bool,
    /// On SIGTERM, SIGINT or SIGHUP, press the guest's ACPI power button and give it this
    /// many seconds to power off before the VM is stopped (a second signal stops it at
    /// once); 0 stops it at once.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    shutdown_timeout: u64,
    /// Write zvm's standard output and error (the console on stdio, a container's output,
    /// zvm's messages) to this file instead, rotated to FILE.1 before it passes
    /// --output-max, so a guest that prints forever cannot fill the disk.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// With --output: the most bytes kept in FILE (and in FILE.1), e.g. 16M.
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_output_max, requires = "output")]
    output_max: u64,
    /// Write metrics lines (the API's `PUT /metrics` format: device counters and KVM's
    /// own vCPU counters) to FILE: every 60 s, on SIGUSR1 and when the VM ends.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// Give the guest an i8254 PIT (KVM's in-kernel one): on for kernels without kvmclock
    /// (`CONFIG_KVM_GUEST`), which calibrate their clocks against it; off (the default)
    /// makes VMs cheaper to create and to end.
    #[arg(long, value_name = "on|off", default_value = "off", value_parser = ["on", "off"])]
    pit: String,
    /// Which interrupt controllers KVM emulates: split (the local APICs in KVM, zvm's
    /// own IOAPIC, no PIC: VMs end ~15 ms sooner) or kernel (KVM's PIC, IOAPIC and local
    /// APICs). Default: split, or kernel with --pit on (KVM's PIT needs them).
    #[arg(long, value_name = "split|kernel", value_parser = ["split", "kernel"])]
    irqchip: Option<String>,
    /// Leave the `virtio_mmio.device=` parameters off the kernel command line: a kernel
    /// with ACPI finds the devices in the ACPI tables (a kernel without ACPI then finds
    /// none).
    #[arg(long)]
    no_cmdline_devices: bool,
    #[command(flatten)]
    restore: Box<crate::restore::RestoreArgs>,
    #[command(flatten)]
    jail: crate::vm_jail::JailArgs,
    /// Print what zvm detects about the host and the VM it builds.
    #[arg(long, short)]
    verbose: bool,
}

/// `--output-max`: a size of at least 4 KiB.
fn parse_output_max(text: &str) -> Result<u64, String> {
    let bytes = flist_fetcher::image::parse_size(text).map_err(|e| e.to_string())?;
    if bytes < 4096 {
        return Err(format!("{text} is less than 4 KiB"));
    }
    Ok(bytes)
}

/// `--hostname`: refused on the command line when the guest could not take it.
fn parse_hostname(name: &str) -> Result<String, String> {
    zos_boot::flist_vm::check_hostname(name).map(|()| name.to_string())
}

impl RunArgs {
    /// Fetches and prepares the flist (see [`zos_boot::flist_vm`]) and points `resources` at
    /// it; for a container flist, returns what to run through the guest agent.
    fn apply_flist(
        &self,
        flist: &str,
        work_dir: &std::path::Path,
        mounts: &[DiskMount],
        resources: &mut VmResources,
    ) -> Result<Option<ContainerRun>, String> {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        let mut env = Vec::new();
        for kv in &self.envs {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("invalid --env '{kv}': expected K=V"))?;
            env.push((k.to_string(), v.to_string()));
        }
        let opts = zos_boot::flist_vm::FlistBootOptions {
            flist: flist.to_string(),
            cache_dir: self
                .flist_cache
                .clone()
                .unwrap_or_else(|| home.join(".cache/zvm/flist")),
            work_dir: work_dir.to_path_buf(),
            entrypoint: self.entrypoint.clone(),
            env,
            root_size: self.root_size,
            kernel: self.kernel.clone(),
            hostname: self.hostname.clone(),
            root_fs: self.root_fs,
        };
        let plan = zos_boot::flist_vm::prepare(&opts).map_err(|e| e.to_string())?;
        tracing::info!(kind = ?plan.kind, kernel = %plan.kernel.display(), "booting flist {flist}");
        plan.apply(resources);
        let Some(boot) = &plan.container else {
            if !self.volumes.is_empty() {
                return Err("--volume needs a container flist".into());
            }
            return Ok(None);
        };
        // A terminal on our stdin gives the container a pty (an interactive shell works).
        let terminal = std::io::stdin().is_terminal();
        let mut spec = zos_boot::flist_vm::container::container_spec(
            boot,
            &resources.drives,
            mounts,
            terminal,
        )
        .map_err(|e| e.to_string())?;
        zos_boot::flist_vm::container::add_volumes(&mut spec, &self.volumes);
        let virtiofsd = self.fs.virtiofsd.as_deref();
        let (view, share) =
            crate::container_share::start(boot, spec, work_dir, virtiofsd, resources)?;
        // The container's stdin is ours; the console and zvm's messages go aside.
        let console = ContainerConsole::choose(
            self.console.as_deref(),
            self.flist_work.as_deref(),
            &std::env::temp_dir(),
        )
        .map_err(|e| e.to_string())?;
        resources.console = match &console {
            ContainerConsole::File { path, .. } => ConsoleConfig::File(path.clone()),
            ContainerConsole::Stderr | ContainerConsole::Off => ConsoleConfig::Off,
        };
        let vsock_uds = resources
            .vsock
            .as_ref()
            .map(|v| v.uds_path.clone())
            .unwrap_or_else(|| boot.vsock_uds.clone());
        Ok(Some(ContainerRun {
            spec: view.spec,
            rootfs: view.rootfs,
            share_tag: view.tag,
            share,
            vsock_uds,
            terminal,
            seccomp: resources.seccomp,
            console,
        }))
    }

    fn resources(
        &self,
        flist_work: &std::path::Path,
    ) -> Result<(VmResources, Option<ContainerRun>), String> {
        let disks = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, spec)| crate::specs::parse_disk(spec, i))
            .collect::<Result<Vec<_>, _>>()?;
        let mounts: Vec<DiskMount> = disks
            .iter()
            .filter_map(|(drive, mount)| {
                mount.as_ref().map(|m| DiskMount {
                    drive_id: drive.drive_id.clone(),
                    mountpoint: m.clone(),
                })
            })
            .collect();
        let vcpu_count = u8::try_from(self.cpus).map_err(|_| {
            format!(
                "at most {} vCPUs are supported (cpus was {})",
                vmm::resources::MAX_VCPUS,
                self.cpus
            )
        })?;
        let resources = VmResources {
            boot_source: BootSource {
                kernel_image_path: self.kernel.clone().unwrap_or_default(),
                boot_args: Some(self.cmdline.clone()),
                initrd_path: self.initrd.clone(),
            },
            machine_config: MachineConfig {
                vcpu_count,
                mem_size_mib: parse_mem_size_mib(&self.memory).map_err(|e| e.to_string())?,
                cpu_template: self
                    .cpu_template
                    .parse::<CpuTemplate>()
                    .map_err(|e| e.to_string())?,
                track_dirty_pages: self.track_dirty_pages,
                cmdline_devices: !self.no_cmdline_devices,
                pit: self.pit == "on",
                irqchip: self
                    .irqchip
                    .as_deref()
                    .map(str::parse::<IrqchipKind>)
                    .transpose()
                    .map_err(|e| e.to_string())?,
            },
            console: self
                .console
                .as_deref()
                .unwrap_or("stdio")
                .parse::<ConsoleConfig>()
                .map_err(|e| e.to_string())?,
            console_timestamps: self.console_timestamps,
            seccomp: self.seccomp == "on",
            drives: disks.into_iter().map(|(drive, _)| drive).collect(),
            entropy: self.rng.then(Default::default),
            net: self
                .nets
                .iter()
                .enumerate()
                .map(|(i, spec)| crate::specs::parse_net(spec, i))
                .collect::<Result<_, _>>()?,
            vsock: self
                .vsock
                .as_deref()
                .map(crate::specs::parse_vsock)
                .transpose()?,
            fs: self.fs.configs().map_err(|e| e.to_string())?,
        };
        let mut resources = resources;
        let mut container = None;
        if let Some(flist) = &self.flist {
            container = self.apply_flist(flist, flist_work, &mounts, &mut resources)?;
        }
        if let Some(extra) = &self.append {
            resources.boot_source.boot_args = Some(zos_boot::flist_vm::cmdline::append_args(
                resources.boot_args(),
                extra,
            ));
        }
        resources.validate().map_err(|e| e.to_string())?;
        Ok((resources, container))
    }
}

/// Runs `zvm run`; `logging` is zvm's log, which a container flist moves to its log file.
pub fn run(args: RunArgs, process_start: Instant, logging: &Logging) -> ExitCode {
    if let Some(path) = &args.output {
        if let Err(e) = crate::output_file::redirect(path, args.output_max) {
            eprintln!("zvm: cannot write the output to {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    let code = run_redirected(args, process_start, logging);
    crate::output_file::finish();
    code
}

fn run_redirected(args: RunArgs, process_start: Instant, logging: &Logging) -> ExitCode {
    if args.restore.requested() {
        let mem = args.restore.mem_file().unwrap_or(std::path::Path::new(""));
        let jailed = match crate::vm_jail::enter_restore(&args.jail, mem) {
            Ok(crate::vm_jail::Entered::Supervisor(status)) => {
                return ExitCode::from(u8::try_from(status).unwrap_or(255))
            }
            Ok(entered) => matches!(entered, crate::vm_jail::Entered::Jailed),
            Err(e) => {
                eprintln!("zvm: {e}");
                return ExitCode::from(2);
            }
        };
        let opts = crate::restore::RestoreOptions {
            console: args.console.as_deref().unwrap_or("stdio"),
            seccomp: args.seccomp == "on",
            track_dirty_pages: args.track_dirty_pages,
            verbose: args.verbose,
            shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout),
            fs: &args.fs,
            jailed,
            log_level: logging.level(),
        };
        return crate::restore::run(&args.restore, &opts, process_start);
    }
    // A --flist without --flist-work unpacks into a fresh private temporary directory
    // (crate::private_tmp), removed at the end.
    let temp_work = match (args.flist.is_some() && args.flist_work.is_none())
        .then(|| crate::private_tmp::dir("zvm-flist-"))
        .transpose()
    {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("zvm: cannot make a temporary work directory: {e}");
            return ExitCode::from(1);
        }
    };
    let flist_work = args
        .flist_work
        .clone()
        .or_else(|| temp_work.as_ref().map(|d| d.path().to_path_buf()))
        .unwrap_or_default();
    let code = run_with(args, process_start, &flist_work, logging);
    drop(temp_work);
    code
}

fn run_with(
    args: RunArgs,
    process_start: Instant,
    flist_work: &std::path::Path,
    logging: &Logging,
) -> ExitCode {
    // Until the flist is known to be a container's, zvm's messages wait in memory: a
    // container's go to its log, not to the terminal.
    if args.flist.is_some() {
        logging.hold();
    }
    let prepared = args
        .resources(flist_work)
        .and_then(|(resources, container)| {
            let log = container
                .as_ref()
                .map(|c| ContainerLog::open(c.console.clone()))
                .transpose()
                .map_err(|e| e.to_string())?;
            Ok((resources, container, log))
        });
    let (mut resources, mut container, log) = match prepared {
        Ok(r) => r,
        Err(e) => {
            logging.release(None);
            eprintln!("zvm: {e}");
            return ExitCode::from(2);
        }
    };
    // A container's share lives until this returns (in the supervisor, or unjailed).
    let _share = container.as_mut().and_then(|c| c.share.take());
    if args.flist.is_some() {
        logging.release(log.as_ref().and_then(ContainerLog::logger_target));
    }
    let flavour = KvmFlavour::detect();
    if args.verbose {
        eprintln!("zvm: host KVM flavour: {}", flavour.describe());
        if !flavour.stock_guest_userspace_works() {
            eprintln!("zvm: this is a KVM PVM host: the pvm CPU template is used, and a stock guest kernel will not run userspace (SYSCALL does not enter guest kernel mode); zvm's test kernel (`zvm kernel path`) carries a workaround");
        }
        eprintln!(
            "zvm: {} vCPUs, {} MiB, kernel {}",
            resources.machine_config.vcpu_count,
            resources.machine_config.mem_size_mib,
            resources.boot_source.kernel_image_path.display()
        );
        if let Some(path) = log.as_ref().and_then(ContainerLog::path) {
            eprintln!(
                "zvm: the guest console and zvm's messages go to {}",
                path.display()
            );
        }
    }
    // One virtiofsd per --fs share, started before a jail is made: the jailed half only
    // talks to them over the sockets it connects while the VM is built. They stop when
    // the process that started them (the supervisor, or this one unjailed) returns.
    let fs_daemons = match crate::virtiofs::Daemons::start(&mut resources, &args.fs) {
        Ok(daemons) => daemons,
        Err(e) => {
            eprintln!("zvm: {e}");
            return ExitCode::from(2);
        }
    };
    match enter_jail(&args, &resources, container.as_ref(), log.as_ref()) {
        Ok(crate::vm_jail::Entered::Supervisor(status)) => {
            // The jailed half could not remove what lives outside its jail.
            if let Some(vsock) = &resources.vsock {
                vmm::devices::virtio::vsock::remove_socket(&vsock.uds_path);
            }
            if let Some(log) = log {
                log.finish(status != 0 || args.verbose);
            }
            return ExitCode::from(u8::try_from(status).unwrap_or(255));
        }
        Ok(crate::vm_jail::Entered::Jailed) => fs_daemons.leave_to_supervisor(),
        Ok(crate::vm_jail::Entered::Unjailed) => {}
        Err(e) => {
            eprintln!("zvm: {e}");
            return ExitCode::from(2);
        }
    }
    // A plain VM runs in the lean executable zvm-vmm, in this process (crate::vmm_exec;
    // jailed, in the jailed half, which it locks down); zvm goes on only where it cannot.
    if args.flist.is_none() && args.output.is_none() {
        let handover = crate::handover::Handover {
            job: crate::handover::Job::Boot(resources.clone()),
            metrics: args.metrics.clone(),
            shutdown_timeout_secs: args.shutdown_timeout,
            log_level: logging.level().to_string(),
            started_ns_ago: 0,
            jail: None,
        };
        if let Some(e) = crate::vmm_exec::exec(&handover, process_start) {
            tracing::warn!("{e}; the VM runs in zvm");
        }
    }
    let opts = BuildOptions {
        process_start,
        ..BuildOptions::default()
    };
    // The network a clone of a template with interfaces gets through its agent.
    let mut clone_network = Vec::new();
    let built = match &log {
        Some(log) if container.is_some() => {
            crate::container_vm::start(&resources, opts, log).map(|(vm, network)| {
                clone_network = network;
                vm
            })
        }
        Some(log) => {
            vmm::builder::build_microvm_with_console(&resources, opts, log.console_sink(), false)
        }
        None => vmm::build_microvm(&resources, opts),
    };
    let vm = match built {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("zvm: {e}");
            if let Some(log) = log {
                log.finish(args.verbose);
            }
            return ExitCode::from(2);
        }
    };
    let interactive = container
        .as_ref()
        .map_or(resources.console == ConsoleConfig::Stdio, |c| c.terminal);
    let raw = interactive.then(RawTerminal::enable).flatten();
    if let Ok(stop) = vm.stop_handle() {
        let grace = std::time::Duration::from_secs(args.shutdown_timeout);
        crate::stop_signals::install_for(stop, vm.shutdown_handle().ok(), grace);
    }
    let metrics = crate::run_metrics::start_for(args.metrics.clone(), &vm);
    let vm_ended: Ended = Arc::default();
    let container = container.map(|c| {
        c.spawn(&vm, vm_ended.clone(), clone_network)
            .inspect_err(|_| {
                let _ = vm.stop_handle().and_then(|s| s.request_stop());
            })
    });
    let (outcome, boot_time) = vm.wait_with_boot_time();
    if let Some(writer) = metrics {
        writer.finish();
    }
    let (lines, code) = outcome_lines(&outcome, boot_time);
    // The first line only: a failure's vCPU registers stay in the log.
    *vm_ended.lock().unwrap_or_else(|p| p.into_inner()) = lines
        .last()
        .and_then(|l| l.lines().next())
        .map(str::to_string);
    let container = container.map(|thread| {
        thread.and_then(|t| {
            t.join()
                .unwrap_or_else(|_| Err("the container thread panicked".into()))
        })
    });
    drop(raw);
    if let Some(vsock) = &resources.vsock {
        vmm::devices::virtio::vsock::remove_socket(&vsock.uds_path);
    }
    match (container, log) {
        (Some(result), Some(log)) => container_outcome(result, &lines, &outcome, log, args.verbose),
        _ => {
            lines.iter().for_each(|l| eprintln!("zvm: {l}"));
            code
        }
    }
}

/// Splits `zvm run` into a supervisor and a jailed half when it runs jailed; a container
/// flist's template is made first (a template VM runs the project's own kernel and agent
/// only, before the split: the jailed half only restores it).
fn enter_jail(
    args: &RunArgs,
    resources: &VmResources,
    container: Option<&ContainerRun>,
    log: Option<&ContainerLog>,
) -> Result<crate::vm_jail::Entered, String> {
    let flist = args.flist.is_some();
    if !args.jail.wanted(flist) {
        return Ok(crate::vm_jail::Entered::Unjailed);
    }
    if container.is_some() {
        crate::container_vm::prepare_template(resources);
    }
    let files = crate::vm_jail::JailFiles {
        readable: log.and_then(ContainerLog::path).into_iter().collect(),
        writable: args.metrics.as_deref().into_iter().collect(),
        vsock_dir: args.vsock.is_some(),
    };
    crate::vm_jail::enter(&args.jail, flist, resources, &files)
}
