//! Building a micro-VM: one function owns the boot order, made of small `attach_*` steps.
//!
//! [`build_microvm`] is what `zvm run` uses. [`MicrovmBuilder`] exposes the same steps so
//! tests can run tiny hand-assembled guests through the real VM setup and buses.

use crate::arch::acpi::{self, AcpiError, AcpiMachine, MmioDevice};
use crate::arch::cpuid;
use crate::arch::mptable::{write_mptable, MptableError};
use crate::arch::regs::{self, BootEntry, RegsError};
use crate::bus::{BusError, BusRange, MmioBus, PioBus};
use crate::devices::boot_timer::BootTimeRecord;
use crate::devices::i8042::{self, I8042Device};
use crate::devices::ioapic::{self, bus::IoapicDevice};
use crate::devices::serial::{ConsoleSink, SerialDevice};
use crate::devices::virtio::block::BlockError;
use crate::devices::virtio::mmio::{MmioTransport, MMIO_SLOT_SIZE};
use crate::devices::virtio::net::NetError;
use crate::devices::virtio::vsock::VsockError;
use crate::devices::virtio::VirtioError;
use crate::devices::DeviceRegistry;
use crate::host::KvmFlavour;
use crate::layout;
use crate::loader::{self, LoaderError};
use crate::memory::{create_guest_memory, GuestMemoryMmap, MemoryError};
use crate::metrics::VmMetrics;
use crate::resources::{ConsoleConfig, CpuTemplate, IrqchipKind, ResourcesError, VmResources};
use crate::vm::RunningVm;
use kvm_bindings::{kvm_enable_cap, kvm_pit_config, KVM_CAP_SPLIT_IRQCHIP, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod devices;
mod fs;
mod lock_down;
mod start;

pub use lock_down::set_lock_down;

use start::register_memory;

/// Errors building a micro-VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The VM description is invalid.
    #[error(transparent)]
    Resources(#[from] ResourcesError),
    /// A KVM call failed.
    #[error("KVM: cannot {what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel, initrd, command line.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// vCPU registers.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// MP table.
    #[error(transparent)]
    Mptable(#[from] MptableError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// Device placement.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A virtio device could not be set up.
    #[error(transparent)]
    Virtio(#[from] VirtioError),
    /// A disk could not be opened.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A network interface could not be set up.
    #[error("network interface '{id}': {source}")]
    Net {
        /// The interface id.
        id: String,
        /// Cause.
        source: NetError,
    },
    /// The vsock device could not be set up.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// A virtio-fs share's backend could not be reached or set up.
    #[error("virtio-fs share '{id}': {source}")]
    Fs {
        /// The share's id.
        id: String,
        /// Cause.
        source: crate::devices::virtio::fs::FsError,
    },
    /// Every device IRQ is taken.
    #[error("no IRQ left for another virtio device (IRQs {first} to {last} are taken)")]
    NoFreeIrq {
        /// First device IRQ.
        first: u32,
        /// Last device IRQ.
        last: u32,
    },
    /// The embedder's lock-down step (a jail) failed: the VM is not started.
    #[error("cannot lock the VMM process down: {0}")]
    LockDown(String),
    /// Console file, eventfds, threads.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::Kvm { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    move |source| BuildError::Io { what, source }
}

/// Options of a VM that are not in [`VmResources`] (set by embedders and tests).
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    /// When the process started, for boot-time reports.
    pub process_start: Instant,
    /// Create the in-kernel irqchip (tiny test guests may go without, so that HLT exits
    /// to userspace).
    pub irqchip: bool,
    /// With the irqchip, also create the in-kernel PIT ([`build_microvm`] takes it from
    /// the resources' [`crate::resources::MachineConfig::pit`]).
    pub pit: bool,
    /// Make the irqchip a split one (local APICs in KVM, zvm's IOAPIC, no PIC) unless
    /// the VM has a PIT, which needs KVM's own ([`build_microvm`] takes it from the
    /// resources' [`crate::resources::MachineConfig::irqchip_kind`]).
    pub split_irqchip: bool,
}

impl BuildOptions {
    /// Whether the VM gets a split irqchip.
    pub fn split(&self) -> bool {
        self.irqchip && self.split_irqchip && !self.pit
    }

    /// Whether the VM gets KVM's full in-kernel irqchip (PIC, IOAPIC, local APICs).
    pub fn kernel_irqchip(&self) -> bool {
        self.irqchip && !self.split()
    }
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            process_start: Instant::now(),
            irqchip: true,
            pit: false,
            split_irqchip: true,
        }
    }
}

/// A micro-VM under construction.
pub struct MicrovmBuilder {
    kvm: Kvm,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    mem_size: u64,
    vcpu_count: u8,
    template: CpuTemplate,
    seccomp: bool,
    opts: BuildOptions,
    build_start: Instant,
    pio: PioBus,
    mmio: MmioBus,
    serial: Option<Arc<Mutex<SerialDevice>>>,
    console_input: bool,
    reset_evt: EventFd,
    /// Signalled by the ACPI power-management registers when the guest powers off.
    poweroff_evt: EventFd,
    /// The ACPI power button's interrupt (the Generic Event Device's irqfd).
    power_button: Option<EventFd>,
    boot_time: BootTimeRecord,
    /// Every virtio-mmio slot so far, in attach order: the next one follows the last, and
    /// the ACPI tables and `virtio_mmio.device=` parameters describe them.
    virtio_slots: Vec<VirtioSlot>,
    /// Block devices attached so far (the next one is `/dev/vd` + letter).
    block_count: usize,
    /// Other device parameters for the kernel command line (the root drive's `root=`),
    /// appended by `load_kernel`.
    device_args: Vec<String>,
    /// The VM's counters.
    metrics: Arc<VmMetrics>,
    /// The i8042, for Ctrl-Alt-Del.
    i8042: Option<Arc<Mutex<I8042Device>>>,
    /// Every virtio-mmio transport, in attach order (their snapshot order).
    virtio: Vec<Arc<Mutex<MmioTransport>>>,
    /// zvm's IOAPIC (a split irqchip).
    ioapic: Option<Arc<Mutex<IoapicDevice>>>,
    /// What the VM was built from, kept for snapshots.
    resources: Option<VmResources>,
    /// KVM logs the pages the guest writes (for diff snapshots).
    track_dirty_pages: bool,
    /// How often guest memory was registered with KVM: once, unless dirty tracking was
    /// switched on after the builder was made.
    memory_registrations: u32,
}

/// Where a virtio-mmio device was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioSlot {
    /// Base of its MMIO page.
    pub addr: u64,
    /// Its IRQ line.
    pub irq: u32,
}

impl std::fmt::Debug for MicrovmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MicrovmBuilder({} vCPUs, {} MiB)",
            self.vcpu_count,
            self.mem_size >> 20
        )
    }
}

impl MicrovmBuilder {
    /// Opens KVM, creates the VM and its memory, and (per `opts`) the irqchip and PIT.
    pub fn new(
        mem_mib: u64,
        vcpu_count: u8,
        template: CpuTemplate,
        seccomp: bool,
        opts: BuildOptions,
    ) -> Result<Self, BuildError> {
        let mem = create_guest_memory(mem_mib << 20)?;
        Self::with_memory(mem, mem_mib, vcpu_count, template, seccomp, opts)
    }

    /// Like [`Self::new`], with guest memory of `mem_mib` MiB the caller mapped (a
    /// snapshot's memory file).
    pub fn with_memory(
        mem: GuestMemoryMmap,
        mem_mib: u64,
        vcpu_count: u8,
        template: CpuTemplate,
        seccomp: bool,
        opts: BuildOptions,
    ) -> Result<Self, BuildError> {
        Self::with_memory_tracked(mem, mem_mib, vcpu_count, template, seccomp, opts, false)
    }

    /// Like [`Self::with_memory`]; with `track_dirty_pages` KVM logs the pages the guest
    /// writes from the start. The memory is registered with KVM once, with the right
    /// flags: each registration costs an SRCU grace period, milliseconds of a restore.
    pub(crate) fn with_memory_tracked(
        mem: GuestMemoryMmap,
        mem_mib: u64,
        vcpu_count: u8,
        template: CpuTemplate,
        seccomp: bool,
        opts: BuildOptions,
        track_dirty_pages: bool,
    ) -> Result<Self, BuildError> {
        let build_start = Instant::now();
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("create the VM"))?);
        let mem_size = mem_mib << 20;
        register_memory(&vm, &mem, track_dirty_pages)?;
        vm.set_tss_address(layout::KVM_TSS_START as usize)
            .map_err(kvm_err("set the TSS address"))?;
        vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_START)
            .map_err(kvm_err("set the identity map address"))?;
        let mut mmio = MmioBus::new();
        let mut ioapic = None;
        if opts.split() {
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_SPLIT_IRQCHIP,
                ..Default::default()
            };
            cap.args[0] = ioapic::NUM_PINS as u64;
            vm.enable_cap(&cap)
                .map_err(kvm_err("enable the split irqchip"))?;
            // The IOAPIC's id, as the MP table and the MADT give it.
            let id = vcpu_count.saturating_add(1);
            let router: Arc<dyn ioapic::bus::GsiRouter> = vm.clone();
            let device = Arc::new(Mutex::new(IoapicDevice::new(id, router)));
            mmio.insert(
                BusRange::new(layout::IOAPIC_START, ioapic::MMIO_LEN),
                device.clone(),
            )?;
            ioapic = Some(device);
        } else if opts.irqchip {
            vm.create_irq_chip()
                .map_err(kvm_err("create the in-kernel irqchip"))?;
        }
        if opts.kernel_irqchip() && opts.pit {
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
        }
        let template = match template {
            CpuTemplate::Auto if KvmFlavour::detect() == KvmFlavour::Pvm => CpuTemplate::Pvm,
            CpuTemplate::Auto => CpuTemplate::None,
            other => other,
        };
        tracing::debug!(
            "KVM flavour: {}; CPU template {template:?}",
            KvmFlavour::detect().describe()
        );
        let boot_time = BootTimeRecord::default();
        let metrics = Arc::new(VmMetrics::default());
        metrics.set_boot_time_record(boot_time.clone());
        Ok(MicrovmBuilder {
            kvm,
            vm,
            mem,
            mem_size,
            vcpu_count,
            template,
            seccomp,
            opts,
            build_start,
            pio: PioBus::new(),
            mmio,
            serial: None,
            console_input: false,
            reset_evt: EventFd::new(EFD_NONBLOCK).map_err(io_err("create the reset eventfd"))?,
            poweroff_evt: EventFd::new(EFD_NONBLOCK)
                .map_err(io_err("create the power-off eventfd"))?,
            power_button: None,
            boot_time,
            virtio_slots: Vec::new(),
            block_count: 0,
            device_args: Vec::new(),
            metrics,
            i8042: None,
            virtio: Vec::new(),
            ioapic,
            resources: None,
            track_dirty_pages,
            memory_registrations: 1,
        })
    }

    /// Has KVM log the pages the guest writes from now on, for diff snapshots (zvm's own
    /// writes are in the memory's dirty bitmaps either way). This registers the memory
    /// with KVM again unless it already logs: a builder that knows it tracks from the
    /// start registers the memory once, with the flag ([`build_microvm`], restores).
    pub fn track_dirty_pages(&mut self) -> Result<(), BuildError> {
        if self.track_dirty_pages {
            return Ok(());
        }
        register_memory(&self.vm, &self.mem, true)?;
        self.memory_registrations += 1;
        self.track_dirty_pages = true;
        Ok(())
    }

    /// The VM's file descriptor (restoring a snapshot sets its irqchip, PIT and clock).
    pub(crate) fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// The devices a snapshot saves and restores.
    pub(crate) fn device_registry(&self) -> DeviceRegistry {
        DeviceRegistry {
            serial: self.serial.clone(),
            i8042: self.i8042.clone(),
            virtio: self.virtio.clone(),
            ioapic: self.ioapic.clone(),
        }
    }

    /// Keeps what the VM was built from, for snapshots.
    pub(crate) fn set_resources(&mut self, resources: VmResources) {
        self.resources = Some(resources);
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Loads kernel, initrd and command line; writes boot info, boot tables, MP table and
    /// ACPI tables.
    pub fn load_kernel(&mut self, resources: &VmResources) -> Result<BootEntry, BuildError> {
        let boot = &resources.boot_source;
        let kernel = loader::load_kernel(&self.mem, &boot.kernel_image_path)?;
        tracing::debug!("kernel loaded: {:?}", kernel.kind);
        let initrd = match &boot.initrd_path {
            Some(path) => Some(loader::load_initrd(
                &self.mem,
                path,
                &kernel,
                self.mem_size,
            )?),
            None => None,
        };
        let args = with_kernel_args(
            resources.boot_args(),
            &self.extra_kernel_args(
                resources.boot_args(),
                resources.machine_config.cmdline_devices,
            ),
        );
        let cmdline = loader::build_cmdline(&args)?;
        let len = loader::write_cmdline(&self.mem, &cmdline)?;
        let rsdp = self.attach_boot_tables()?;
        let entry = loader::write_boot_info(&self.mem, &kernel, initrd, len, self.mem_size, rsdp)?;
        Ok(entry)
    }

    /// What zvm adds to the guest's command line `args`: a `virtio_mmio.device=` parameter
    /// per slot when `cmdline_devices`, the other device parameters, the i8042 switches the
    /// guest did not set itself, and the CPU template's parameters.
    fn extra_kernel_args(&self, args: &str, cmdline_devices: bool) -> Vec<String> {
        let mut extra: Vec<String> = Vec::new();
        if cmdline_devices {
            extra.extend(self.virtio_slots.iter().map(|slot| {
                format!(
                    "virtio_mmio.device={}K@{:#x}:{}",
                    MMIO_SLOT_SIZE >> 10,
                    slot.addr,
                    slot.irq
                )
            }));
        }
        extra.extend(self.device_args.iter().cloned());
        if self.i8042.is_some() {
            extra.extend(i8042::missing_linux_args(args));
        }
        if self.template == CpuTemplate::Pvm {
            extra.push(cpuid::PVM_KERNEL_ARGS.to_string());
        }
        extra
    }

    /// Loads raw 64-bit code at `addr` (tiny test guests): entered in long mode.
    pub fn load_raw_code(&mut self, code: &[u8], addr: u64) -> Result<BootEntry, BuildError> {
        self.mem
            .write_slice(code, GuestAddress(addr))
            .map_err(|source| LoaderError::Memory {
                what: "guest code",
                source,
            })?;
        self.attach_boot_tables()?;
        Ok(BootEntry::Linux64 {
            entry: addr,
            zero_page: layout::ZERO_PAGE_START,
        })
    }

    /// Writes the GDT and page tables, the MP table and the ACPI tables; returns the
    /// RSDP's address.
    fn attach_boot_tables(&mut self) -> Result<u64, BuildError> {
        regs::write_boot_tables(&self.mem)?;
        write_mptable(&self.mem, self.vcpu_count)?;
        let machine = AcpiMachine {
            vcpus: self.vcpu_count,
            serial: self.serial.is_some(),
            i8042: self.i8042.is_some(),
            virtio: self
                .virtio_slots
                .iter()
                .map(|slot| MmioDevice {
                    addr: slot.addr,
                    len: MMIO_SLOT_SIZE as u32,
                    irq: slot.irq,
                })
                .collect(),
        };
        Ok(acpi::write_acpi_tables(&self.mem, &machine)?)
    }
}

/// `args` with `extra` appended: before a `--` that starts init's arguments, if any.
fn with_kernel_args(args: &str, extra: &[String]) -> String {
    if extra.is_empty() {
        return args.to_string();
    }
    let extra = extra.join(" ");
    let bytes = args.as_bytes();
    let separator = args.match_indices("--").map(|(i, _)| i).find(|&i| {
        (i == 0 || bytes[i - 1].is_ascii_whitespace())
            && bytes.get(i + 2).is_none_or(|b| b.is_ascii_whitespace())
    });
    match separator {
        Some(i) => format!("{}{extra} {}", &args[..i], &args[i..])
            .trim()
            .to_string(),
        None => format!("{} {extra}", args.trim_end()).trim().to_string(),
    }
}

/// Builds and starts the micro-VM `resources` describe. The boot order: memory and
/// irqchip, legacy devices, virtio devices, kernel and boot tables, vCPUs.
pub fn build_microvm(resources: &VmResources, opts: BuildOptions) -> Result<RunningVm, BuildError> {
    let (sink, input) = match &resources.console {
        ConsoleConfig::Stdio => (ConsoleSink::Stdout, true),
        ConsoleConfig::File(path) => {
            let file = std::fs::File::create(path).map_err(io_err("create the console file"))?;
            (ConsoleSink::File(file), false)
        }
        ConsoleConfig::Off => (ConsoleSink::Off, false),
    };
    build_microvm_with_console(resources, opts, sink, input)
}

/// Like [`build_microvm`], with the console going to `sink` instead of where
/// `resources.console` says (embedders and tests capture it); `input` forwards stdin.
pub fn build_microvm_with_console(
    resources: &VmResources,
    opts: BuildOptions,
    sink: ConsoleSink,
    input: bool,
) -> Result<RunningVm, BuildError> {
    resources.validate()?;
    let mc = &resources.machine_config;
    let mut builder = MicrovmBuilder::with_memory_tracked(
        fs::guest_memory(resources)?,
        mc.mem_size_mib,
        mc.vcpu_count,
        mc.cpu_template,
        resources.seccomp,
        BuildOptions {
            pit: mc.pit,
            split_irqchip: mc.irqchip_kind() == IrqchipKind::Split,
            ..opts
        },
        mc.track_dirty_pages,
    )?;
    attach_devices(&mut builder, resources, sink, input)?;
    lock_down::run_lock_down()?;
    let entry = builder.load_kernel(resources)?;
    builder.set_resources(resources.clone());
    builder.start(entry)
}

/// Attaches the devices `resources` describe, always in the same order (so a VM restored
/// from a snapshot gets each device at the slot and IRQ its guest knows).
pub(crate) fn attach_devices(
    builder: &mut MicrovmBuilder,
    resources: &VmResources,
    sink: ConsoleSink,
    input: bool,
) -> Result<(), BuildError> {
    builder.attach_serial(sink, resources.console_timestamps, input)?;
    builder.attach_i8042()?;
    builder.attach_acpi_pm()?;
    builder.attach_boot_timer()?;
    for drive in resources.drives_in_attach_order() {
        builder.attach_drive(drive)?;
    }
    for net in &resources.net {
        builder.attach_net(net)?;
    }
    if resources.entropy.is_some() {
        builder.attach_entropy()?;
    }
    if let Some(vsock) = &resources.vsock {
        builder.attach_vsock(vsock)?;
    }
    for fs in &resources.fs {
        builder.attach_fs(fs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
