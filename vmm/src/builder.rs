//! Building a micro-VM: one function owns the boot order, made of small `attach_*` steps.
//!
//! [`build_microvm`] is what `zvm run` uses. [`MicrovmBuilder`] exposes the same steps so
//! tests can run tiny hand-assembled guests through the real VM setup and buses.

use crate::arch::cpuid;
use crate::arch::mptable::{write_mptable, MptableError};
use crate::arch::regs::{self, BootEntry, RegsError};
use crate::bus::{BusError, BusRange, MmioBus, PioBus};
use crate::devices::boot_timer::{BootTimeRecord, BootTimerDevice};
use crate::devices::i8042::{self, I8042Device, KBD_IRQ};
use crate::devices::serial::{ConsoleSink, SerialDevice};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::{MmioTransport, MMIO_SLOT_SIZE, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{parse_mac, tap::Tap, Net, NetError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{VirtioDevice, VirtioError};
use crate::devices::{DeviceRegistry, EventFdTrigger};
use crate::host::KvmFlavour;
use crate::layout;
use crate::loader::{self, LoaderError};
use crate::memory::{create_guest_memory, GuestMemoryMmap, MemoryError};
use crate::metrics::{DeviceMetrics, VmMetrics};
use crate::resources::{
    ConsoleConfig, CpuTemplate, DriveConfig, NetConfig, ResourcesError, VmResources, VsockConfig,
};

use crate::vm::{EventHandler, RunningVm};
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod start;

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
    /// Every device IRQ is taken.
    #[error("no IRQ left for another virtio device (IRQs {first} to {last} are taken)")]
    NoFreeIrq {
        /// First device IRQ.
        first: u32,
        /// Last device IRQ.
        last: u32,
    },
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
    /// Create the in-kernel irqchip and PIT (tiny test guests may go without, so that
    /// HLT exits to userspace).
    pub irqchip: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            process_start: Instant::now(),
            irqchip: true,
        }
    }
}

/// A micro-VM under construction.
pub struct MicrovmBuilder {
    kvm: Kvm,
    vm: VmFd,
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
    boot_time: BootTimeRecord,
    /// Next free virtio-mmio slot and IRQ.
    next_virtio_addr: u64,
    next_irq: u32,
    /// Block devices attached so far (the next one is `/dev/vd` + letter).
    block_count: usize,
    /// Device parameters for the kernel command line, appended by `load_kernel`.
    device_args: Vec<String>,
    /// Queue notification handlers for the VMM loop.
    handlers: Vec<EventHandler>,
    /// The VM's counters.
    metrics: Arc<VmMetrics>,
    /// The i8042, for Ctrl-Alt-Del.
    i8042: Option<Arc<Mutex<I8042Device>>>,
    /// Every virtio-mmio transport, in attach order (their snapshot order).
    virtio: Vec<Arc<Mutex<MmioTransport>>>,
    /// What the VM was built from, kept for snapshots.
    resources: Option<VmResources>,
    /// KVM logs the pages the guest writes (for diff snapshots).
    track_dirty_pages: bool,
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

static KICK_HANDLER: Once = Once::new();

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

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
        let build_start = Instant::now();
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(kvm_err("create the VM"))?;
        let mem_size = mem_mib << 20;
        register_memory(&vm, &mem, false)?;
        vm.set_tss_address(layout::KVM_TSS_START as usize)
            .map_err(kvm_err("set the TSS address"))?;
        vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_START)
            .map_err(kvm_err("set the identity map address"))?;
        if opts.irqchip {
            vm.create_irq_chip()
                .map_err(kvm_err("create the in-kernel irqchip"))?;
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
            mmio: MmioBus::new(),
            serial: None,
            console_input: false,
            reset_evt: EventFd::new(EFD_NONBLOCK).map_err(io_err("create the reset eventfd"))?,
            boot_time,
            next_virtio_addr: layout::VIRTIO_MMIO_START,
            next_irq: layout::IRQ_DEVICE_BASE,
            block_count: 0,
            device_args: Vec::new(),
            handlers: Vec::new(),
            metrics,
            i8042: None,
            virtio: Vec::new(),
            resources: None,
            track_dirty_pages: false,
        })
    }

    /// Has KVM log the pages the guest writes from now on, for diff snapshots (zvm's own
    /// writes are in the memory's dirty bitmaps either way).
    pub fn track_dirty_pages(&mut self) -> Result<(), BuildError> {
        register_memory(&self.vm, &self.mem, true)?;
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

    /// COM1 on its ports and IRQ 4, writing to `sink`; `input` forwards stdin to it.
    pub fn attach_serial(
        &mut self,
        sink: ConsoleSink,
        timestamps: bool,
        input: bool,
    ) -> Result<(), BuildError> {
        let irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("create the serial eventfd"))?;
        if self.opts.irqchip {
            self.vm
                .register_irqfd(&irq, layout::COM1_IRQ)
                .map_err(kvm_err("register the serial irqfd"))?;
        }
        let out = sink.into_writer(timestamps.then_some(self.opts.process_start));
        let serial = Arc::new(Mutex::new(SerialDevice::new(EventFdTrigger::new(irq), out)));
        self.pio.insert(
            BusRange::new(u64::from(layout::COM1_PORT), 8),
            serial.clone(),
        )?;
        self.serial = Some(serial);
        self.console_input = input;
        Ok(())
    }

    /// The i8042 controller and its keyboard on ports 0x60-0x64 and IRQ 1: a guest reboot
    /// through it ends the VM, and [`RunningVm::keyboard`] presses Ctrl-Alt-Del.
    pub fn attach_i8042(&mut self) -> Result<(), BuildError> {
        let evt = self
            .reset_evt
            .try_clone()
            .map_err(io_err("clone the reset eventfd"))?;
        let irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("create the keyboard eventfd"))?;
        if self.opts.irqchip {
            self.vm
                .register_irqfd(&irq, KBD_IRQ)
                .map_err(kvm_err("register the keyboard irqfd"))?;
        }
        let dev = Arc::new(Mutex::new(I8042Device::new(evt, irq)));
        self.pio
            .insert(BusRange::new(u64::from(layout::I8042_PORT), 5), dev.clone())?;
        self.i8042 = Some(dev);
        Ok(())
    }

    /// The boot-timer device on its MMIO page.
    pub fn attach_boot_timer(&mut self) -> Result<(), BuildError> {
        let dev = BootTimerDevice::new(
            self.opts.process_start,
            self.build_start,
            self.boot_time.clone(),
        );
        self.mmio.insert(
            BusRange::new(layout::BOOT_TIMER_START, 0x1000),
            Arc::new(Mutex::new(dev)),
        )?;
        Ok(())
    }

    /// `device` on the next virtio-mmio page (4 KiB from [`layout::VIRTIO_MMIO_START`])
    /// with the next device IRQ: its queue eventfds become KVM ioeventfds on QueueNotify
    /// and VMM-loop handlers, its interrupt an irqfd, and the kernel command line gets
    /// `virtio_mmio.device=4K@ADDR:IRQ`. Must come before [`Self::load_kernel`].
    pub fn attach_virtio_mmio(
        &mut self,
        device: Box<dyn VirtioDevice>,
    ) -> Result<VirtioSlot, BuildError> {
        if self.next_irq > layout::IRQ_MAX {
            return Err(BuildError::NoFreeIrq {
                first: layout::IRQ_DEVICE_BASE,
                last: layout::IRQ_MAX,
            });
        }
        let slot = VirtioSlot {
            addr: self.next_virtio_addr,
            irq: self.next_irq,
        };
        let transport = MmioTransport::new(self.mem.clone(), device)?;
        let notify = IoEventAddress::Mmio(slot.addr + QUEUE_NOTIFY_OFFSET);
        let mut evts = Vec::with_capacity(transport.queue_evts().len());
        for (index, evt) in transport.queue_evts().iter().enumerate() {
            self.vm
                .register_ioevent(evt, &notify, index as u32)
                .map_err(kvm_err("register a virtio queue ioeventfd"))?;
            evts.push(
                evt.try_clone()
                    .map_err(io_err("clone a virtio queue eventfd"))?,
            );
        }
        if self.opts.irqchip {
            self.vm
                .register_irqfd(transport.interrupt_evt(), slot.irq)
                .map_err(kvm_err("register a virtio irqfd"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(BusRange::new(slot.addr, MMIO_SLOT_SIZE), transport.clone())?;
        self.virtio.push(transport.clone());
        for (index, evt) in evts.into_iter().enumerate() {
            let transport = transport.clone();
            let on_event = Box::new(move || {
                transport
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .process_queue(index)
            });
            self.handlers.push(EventHandler { evt, on_event });
        }
        let host_fd = transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .host_event_fd();
        if let Some(fd) = host_fd {
            // The loop polls a duplicate and reads 8 bytes from it before the handler runs:
            // that clears a timerfd and fails harmlessly on the device's epoll fd.
            // SAFETY: dup of a descriptor the device keeps open; the result is checked.
            let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                return Err(BuildError::Io {
                    what: "duplicate a device event fd",
                    source: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: `dup` is a new descriptor owned by nobody else.
            let evt = unsafe { <EventFd as std::os::fd::FromRawFd>::from_raw_fd(dup) };
            let transport = transport.clone();
            let on_event = Box::new(move || {
                transport
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .process_host_event()
            });
            self.handlers.push(EventHandler { evt, on_event });
        }
        self.device_args.push(format!(
            "virtio_mmio.device=4K@{:#x}:{}",
            slot.addr, slot.irq
        ));
        self.next_virtio_addr += MMIO_SLOT_SIZE;
        self.next_irq += 1;
        Ok(slot)
    }

    /// A virtio-blk device for `drive`. Drives appear in the guest as `/dev/vda`,
    /// `/dev/vdb`, ... in attach order; a root device adds `root=/dev/vdX ro|rw`.
    pub fn attach_drive(&mut self, drive: &DriveConfig) -> Result<VirtioSlot, BuildError> {
        let mut block = Block::open(&drive.path_on_host, drive.is_read_only, &drive.drive_id)?;
        if let Some(limit) = &drive.rate_limiter {
            block = block.with_rate_limiter(limit)?;
        }
        tracing::debug!(
            "drive {}: {} sectors, read_only={}",
            drive.drive_id,
            block.capacity(),
            drive.is_read_only
        );
        self.metrics
            .register(&drive.drive_id, DeviceMetrics::Block(block.metrics()));
        let slot = self.attach_virtio_mmio(Box::new(block))?;
        if drive.is_root_device {
            let letter = char::from(b'a' + (self.block_count % 26) as u8);
            let mode = if drive.is_read_only { "ro" } else { "rw" };
            self.device_args
                .push(format!("root=/dev/vd{letter} {mode}"));
        }
        self.block_count += 1;
        Ok(slot)
    }

    /// A virtio-net device on the host tap `net.host_dev_name` (opened, or created when
    /// it does not exist and zvm may create it; a created tap lasts as long as zvm).
    pub fn attach_net(&mut self, net: &NetConfig) -> Result<VirtioSlot, BuildError> {
        let err = |source: NetError| BuildError::Net {
            id: net.iface_id.clone(),
            source,
        };
        let mac = net
            .guest_mac
            .as_deref()
            .map(parse_mac)
            .transpose()
            .map_err(err)?;
        let tap = Tap::open(&net.host_dev_name).map_err(|e| err(e.into()))?;
        tracing::debug!("network interface {}: tap {}", net.iface_id, tap.name());
        let device = Net::new(
            &net.iface_id,
            Box::new(tap),
            mac,
            net.rx_rate_limiter.as_ref(),
            net.tx_rate_limiter.as_ref(),
        )
        .map_err(err)?;
        self.metrics
            .register(&net.iface_id, DeviceMetrics::Net(device.metrics()));
        self.attach_virtio_mmio(Box::new(device))
    }

    /// A virtio-rng device.
    pub fn attach_entropy(&mut self) -> Result<VirtioSlot, BuildError> {
        let rng = Rng::new();
        self.metrics
            .register("rng", DeviceMetrics::Rng(rng.metrics()));
        self.attach_virtio_mmio(Box::new(rng))
    }

    /// A virtio-vsock device for `vsock`: listens on its `uds_path` (replacing a stale
    /// socket there); the VMM loop polls its host sockets.
    pub fn attach_vsock(&mut self, vsock: &VsockConfig) -> Result<VirtioSlot, BuildError> {
        let device = Vsock::new(u64::from(vsock.guest_cid), &vsock.uds_path)?;
        self.metrics
            .register("vsock", DeviceMetrics::Vsock(device.metrics()));
        self.attach_virtio_mmio(Box::new(device))
    }

    /// Loads kernel, initrd and command line; writes boot info, boot tables and MP table.
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
            &self.extra_kernel_args(resources.boot_args()),
        );
        let cmdline = loader::build_cmdline(&args)?;
        let len = loader::write_cmdline(&self.mem, &cmdline)?;
        let entry = loader::write_boot_info(&self.mem, &kernel, initrd, len, self.mem_size)?;
        self.attach_boot_tables()?;
        Ok(entry)
    }

    /// What zvm adds to the guest's command line `args`: device parameters, the i8042
    /// switches the guest did not set itself, and the CPU template's parameters.
    fn extra_kernel_args(&self, args: &str) -> Vec<String> {
        let mut extra = self.device_args.clone();
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

    fn attach_boot_tables(&mut self) -> Result<(), BuildError> {
        regs::write_boot_tables(&self.mem)?;
        write_mptable(&self.mem, self.vcpu_count)?;
        Ok(())
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
    let mut builder = MicrovmBuilder::new(
        mc.mem_size_mib,
        mc.vcpu_count,
        mc.cpu_template,
        resources.seccomp,
        opts,
    )?;
    attach_devices(&mut builder, resources, sink, input)?;
    let entry = builder.load_kernel(resources)?;
    if mc.track_dirty_pages {
        builder.track_dirty_pages()?;
    }
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
    Ok(())
}

#[cfg(test)]
mod tests;
