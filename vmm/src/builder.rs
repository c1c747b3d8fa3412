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
use crate::devices::EventFdTrigger;
use crate::host::KvmFlavour;
use crate::layout;
use crate::loader::{self, LoaderError};
use crate::memory::{create_guest_memory, MemoryError};
use crate::metrics::{DeviceMetrics, VmMetrics};
use crate::resources::{ConsoleConfig, CpuTemplate, DriveConfig, NetConfig, ResourcesError, VmResources, VsockConfig};
use crate::vcpu::{Vcpu, VcpuControl};
use crate::vm::{kick_signal, EventHandler, RunningVm, VmHandles, VmmLoop};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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
        BuildOptions { process_start: Instant::now(), irqchip: true }
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
        write!(f, "MicrovmBuilder({} vCPUs, {} MiB)", self.vcpu_count, self.mem_size >> 20)
    }
}

static KICK_HANDLER: Once = Once::new();

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

impl MicrovmBuilder {
    /// Opens KVM, creates the VM and its memory, and (per `opts`) the irqchip and PIT.
    pub fn new(mem_mib: u64, vcpu_count: u8, template: CpuTemplate, seccomp: bool, opts: BuildOptions) -> Result<Self, BuildError> {
        let build_start = Instant::now();
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(kvm_err("create the VM"))?;
        let mem_size = mem_mib << 20;
        let mem = create_guest_memory(mem_size)?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| BuildError::Io { what: "map guest memory", source: std::io::Error::other("no host address") })?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region maps memory owned by `mem`, which outlives the VM's use.
            unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("register guest memory"))?;
        }
        vm.set_tss_address(layout::KVM_TSS_START as usize).map_err(kvm_err("set the TSS address"))?;
        vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_START).map_err(kvm_err("set the identity map address"))?;
        if opts.irqchip {
            vm.create_irq_chip().map_err(kvm_err("create the in-kernel irqchip"))?;
            let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
            vm.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
        }
        let template = match template {
            CpuTemplate::Auto if KvmFlavour::detect() == KvmFlavour::Pvm => CpuTemplate::Pvm,
            CpuTemplate::Auto => CpuTemplate::None,
            other => other,
        };
        tracing::debug!("KVM flavour: {}; CPU template {template:?}", KvmFlavour::detect().describe());
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
        })
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// COM1 on its ports and IRQ 4, writing to `sink`; `input` forwards stdin to it.
    pub fn attach_serial(&mut self, sink: ConsoleSink, timestamps: bool, input: bool) -> Result<(), BuildError> {
        let irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("create the serial eventfd"))?;
        if self.opts.irqchip {
            self.vm.register_irqfd(&irq, layout::COM1_IRQ).map_err(kvm_err("register the serial irqfd"))?;
        }
        let out = sink.into_writer(timestamps.then_some(self.opts.process_start));
        let serial = Arc::new(Mutex::new(SerialDevice::new(EventFdTrigger::new(irq), out)));
        self.pio.insert(BusRange::new(u64::from(layout::COM1_PORT), 8), serial.clone())?;
        self.serial = Some(serial);
        self.console_input = input;
        Ok(())
    }

    /// The i8042 controller and its keyboard on ports 0x60-0x64 and IRQ 1: a guest reboot
    /// through it ends the VM, and [`RunningVm::keyboard`] presses Ctrl-Alt-Del.
    pub fn attach_i8042(&mut self) -> Result<(), BuildError> {
        let evt = self.reset_evt.try_clone().map_err(io_err("clone the reset eventfd"))?;
        let irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("create the keyboard eventfd"))?;
        if self.opts.irqchip {
            self.vm.register_irqfd(&irq, KBD_IRQ).map_err(kvm_err("register the keyboard irqfd"))?;
        }
        let dev = Arc::new(Mutex::new(I8042Device::new(evt, irq)));
        self.pio.insert(BusRange::new(u64::from(layout::I8042_PORT), 5), dev.clone())?;
        self.i8042 = Some(dev);
        Ok(())
    }

    /// The boot-timer device on its MMIO page.
    pub fn attach_boot_timer(&mut self) -> Result<(), BuildError> {
        let dev = BootTimerDevice::new(self.opts.process_start, self.build_start, self.boot_time.clone());
        self.mmio.insert(BusRange::new(layout::BOOT_TIMER_START, 0x1000), Arc::new(Mutex::new(dev)))?;
        Ok(())
    }

    /// `device` on the next virtio-mmio page (4 KiB from [`layout::VIRTIO_MMIO_START`])
    /// with the next device IRQ: its queue eventfds become KVM ioeventfds on QueueNotify
    /// and VMM-loop handlers, its interrupt an irqfd, and the kernel command line gets
    /// `virtio_mmio.device=4K@ADDR:IRQ`. Must come before [`Self::load_kernel`].
    pub fn attach_virtio_mmio(&mut self, device: Box<dyn VirtioDevice>) -> Result<VirtioSlot, BuildError> {
        if self.next_irq > layout::IRQ_MAX {
            return Err(BuildError::NoFreeIrq { first: layout::IRQ_DEVICE_BASE, last: layout::IRQ_MAX });
        }
        let slot = VirtioSlot { addr: self.next_virtio_addr, irq: self.next_irq };
        let transport = MmioTransport::new(self.mem.clone(), device)?;
        let notify = IoEventAddress::Mmio(slot.addr + QUEUE_NOTIFY_OFFSET);
        let mut evts = Vec::with_capacity(transport.queue_evts().len());
        for (index, evt) in transport.queue_evts().iter().enumerate() {
            self.vm.register_ioevent(evt, &notify, index as u32).map_err(kvm_err("register a virtio queue ioeventfd"))?;
            evts.push(evt.try_clone().map_err(io_err("clone a virtio queue eventfd"))?);
        }
        if self.opts.irqchip {
            self.vm.register_irqfd(transport.interrupt_evt(), slot.irq).map_err(kvm_err("register a virtio irqfd"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio.insert(BusRange::new(slot.addr, MMIO_SLOT_SIZE), transport.clone())?;
        for (index, evt) in evts.into_iter().enumerate() {
            let transport = transport.clone();
            let on_event = Box::new(move || transport.lock().unwrap_or_else(|p| p.into_inner()).process_queue(index));
            self.handlers.push(EventHandler { evt, on_event });
        }
        let host_fd = transport.lock().unwrap_or_else(|p| p.into_inner()).host_event_fd();
        if let Some(fd) = host_fd {
            // The loop polls a duplicate and reads 8 bytes from it before the handler runs:
            // that clears a timerfd and fails harmlessly on the device's epoll fd.
            // SAFETY: dup of a descriptor the device keeps open; the result is checked.
            let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                return Err(BuildError::Io { what: "duplicate a device event fd", source: std::io::Error::last_os_error() });
            }
            // SAFETY: `dup` is a new descriptor owned by nobody else.
            let evt = unsafe { <EventFd as std::os::fd::FromRawFd>::from_raw_fd(dup) };
            let transport = transport.clone();
            let on_event = Box::new(move || transport.lock().unwrap_or_else(|p| p.into_inner()).process_host_event());
            self.handlers.push(EventHandler { evt, on_event });
        }
        self.device_args.push(format!("virtio_mmio.device=4K@{:#x}:{}", slot.addr, slot.irq));
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
        tracing::debug!("drive {}: {} sectors, read_only={}", drive.drive_id, block.capacity(), drive.is_read_only);
        self.metrics.register(&drive.drive_id, DeviceMetrics::Block(block.metrics()));
        let slot = self.attach_virtio_mmio(Box::new(block))?;
        if drive.is_root_device {
            let letter = char::from(b'a' + (self.block_count % 26) as u8);
            let mode = if drive.is_read_only { "ro" } else { "rw" };
            self.device_args.push(format!("root=/dev/vd{letter} {mode}"));
        }
        self.block_count += 1;
        Ok(slot)
    }

    /// A virtio-net device on the host tap `net.host_dev_name` (opened, or created when
    /// it does not exist and zvm may create it; a created tap lasts as long as zvm).
    pub fn attach_net(&mut self, net: &NetConfig) -> Result<VirtioSlot, BuildError> {
        let err = |source: NetError| BuildError::Net { id: net.iface_id.clone(), source };
        let mac = net.guest_mac.as_deref().map(parse_mac).transpose().map_err(err)?;
        let tap = Tap::open(&net.host_dev_name).map_err(|e| err(e.into()))?;
        tracing::debug!("network interface {}: tap {}", net.iface_id, tap.name());
        let device = Net::new(&net.iface_id, Box::new(tap), mac, net.rx_rate_limiter.as_ref(), net.tx_rate_limiter.as_ref()).map_err(err)?;
        self.metrics.register(&net.iface_id, DeviceMetrics::Net(device.metrics()));
        self.attach_virtio_mmio(Box::new(device))
    }

    /// A virtio-rng device.
    pub fn attach_entropy(&mut self) -> Result<VirtioSlot, BuildError> {
        let rng = Rng::new();
        self.metrics.register("rng", DeviceMetrics::Rng(rng.metrics()));
        self.attach_virtio_mmio(Box::new(rng))
    }

    /// A virtio-vsock device for `vsock`: listens on its `uds_path` (replacing a stale
    /// socket there); the VMM loop polls its host sockets.
    pub fn attach_vsock(&mut self, vsock: &VsockConfig) -> Result<VirtioSlot, BuildError> {
        let device = Vsock::new(u64::from(vsock.guest_cid), &vsock.uds_path)?;
        self.metrics.register("vsock", DeviceMetrics::Vsock(device.metrics()));
        self.attach_virtio_mmio(Box::new(device))
    }

    /// Loads kernel, initrd and command line; writes boot info, boot tables and MP table.
    pub fn load_kernel(&mut self, resources: &VmResources) -> Result<BootEntry, BuildError> {
        let boot = &resources.boot_source;
        let kernel = loader::load_kernel(&self.mem, &boot.kernel_image_path)?;
        tracing::debug!("kernel loaded: {:?}", kernel.kind);
        let initrd = match &boot.initrd_path {
            Some(path) => Some(loader::load_initrd(&self.mem, path, &kernel, self.mem_size)?),
            None => None,
        };
        let args = with_kernel_args(resources.boot_args(), &self.extra_kernel_args(resources.boot_args()));
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
            .map_err(|source| LoaderError::Memory { what: "guest code", source })?;
        self.attach_boot_tables()?;
        Ok(BootEntry::Linux64 { entry: addr, zero_page: layout::ZERO_PAGE_START })
    }

    fn attach_boot_tables(&mut self) -> Result<(), BuildError> {
        regs::write_boot_tables(&self.mem)?;
        write_mptable(&self.mem, self.vcpu_count)?;
        Ok(())
    }

    /// Creates and configures the vCPUs, starts their threads and the VMM loop.
    pub fn start(self, entry: BootEntry) -> Result<RunningVm, BuildError> {
        KICK_HANDLER.call_once(|| {
            if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick) {
                tracing::error!("cannot install the vCPU kick handler: {e}");
            }
        });
        let supported = self.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("read supported CPUID"))?;
        let pio = Arc::new(self.pio);
        let mmio = Arc::new(self.mmio);
        let control = Arc::new(VcpuControl::default());
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        let wake = EventFd::new(EFD_NONBLOCK).map_err(io_err("create the vCPU eventfd"))?;
        let mut vcpus = Vec::with_capacity(usize::from(self.vcpu_count));
        for index in 0..self.vcpu_count {
            let fd = self.vm.create_vcpu(u64::from(index)).map_err(kvm_err("create a vCPU"))?;
            let mut entries = supported.as_slice().to_vec();
            cpuid::normalize(&mut entries, index, self.vcpu_count, self.template);
            if let Some(l1) = entries.iter().find(|e| e.function == 1) {
                tracing::debug!("vCPU {index}: template {:?}, CPUID.1 ecx={:#x} edx={:#x}", self.template, l1.ecx, l1.edx);
            }
            let cpuid = CpuId::from_entries(&entries).map_err(|_| BuildError::Io {
                what: "build the CPUID table",
                source: std::io::Error::other("too many CPUID entries"),
            })?;
            fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
            regs::set_boot_msrs(&fd)?;
            if self.opts.irqchip {
                regs::set_lint(&fd)?;
            }
            if index == 0 || !self.opts.irqchip {
                // Application processors wait for INIT/SIPI from the guest.
                regs::set_boot_state(&fd, entry)?;
            }
            let (pio, mmio, mem, metrics) = (pio.clone(), mmio.clone(), self.mem.clone(), self.metrics.vcpu());
            vcpus.push(Vcpu { index, fd, pio, mmio, mem, metrics });
        }
        let mut threads = Vec::with_capacity(vcpus.len());
        for vcpu in vcpus {
            let (stop, events, seccomp) = (control.clone(), events_tx.clone(), self.seccomp);
            let wake = wake.try_clone().map_err(io_err("clone the vCPU eventfd"))?;
            let thread = std::thread::Builder::new()
                .name(format!("zvm_vcpu{}", vcpu.index))
                .spawn(move || vcpu.thread_main(stop, seccomp, events, wake))
                .map_err(io_err("start a vCPU thread"))?;
            threads.push(thread);
        }
        let vmm = VmmLoop {
            vcpu_threads: threads,
            vcpu_events: events_rx,
            vcpu_wake: wake,
            reset_evt: self.reset_evt,
            stop_evt: EventFd::new(EFD_NONBLOCK).map_err(io_err("create the stop eventfd"))?,
            control,
            pause_evt: EventFd::new(EFD_NONBLOCK).map_err(io_err("create the pause eventfd"))?,
            console_input: if self.console_input { self.serial.clone() } else { None },
            seccomp: self.seccomp,
            handlers: self.handlers,
            vm: self.vm,
        };
        tracing::debug!("VM built in {:?}", self.build_start.elapsed());
        let handles = VmHandles { boot_time: self.boot_time, metrics: self.metrics, i8042: self.i8042 };
        RunningVm::start(vmm, handles).map_err(io_err("start the VMM thread"))
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
        (i == 0 || bytes[i - 1].is_ascii_whitespace()) && bytes.get(i + 2).is_none_or(|b| b.is_ascii_whitespace())
    });
    match separator {
        Some(i) => format!("{}{extra} {}", &args[..i], &args[i..]).trim().to_string(),
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
pub fn build_microvm_with_console(resources: &VmResources, opts: BuildOptions, sink: ConsoleSink, input: bool) -> Result<RunningVm, BuildError> {
    resources.validate()?;
    let mc = &resources.machine_config;
    let mut builder = MicrovmBuilder::new(mc.mem_size_mib, mc.vcpu_count, mc.cpu_template, resources.seccomp, opts)?;
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
    let entry = builder.load_kernel(resources)?;
    builder.start(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_devices_get_slots_irqs_and_command_line_args() {
        let disk = tempfile::NamedTempFile::new().expect("disk");
        disk.as_file().set_len(1 << 20).expect("size");
        let mut b = MicrovmBuilder::new(64, 1, CpuTemplate::None, true, BuildOptions::default()).expect("VM");
        let drive = |id: &str, root| DriveConfig {
            drive_id: id.into(),
            path_on_host: disk.path().into(),
            is_root_device: root,
            is_read_only: true,
            rate_limiter: None,
        };
        let first = b.attach_drive(&drive("data", false)).expect("drive");
        let second = b.attach_drive(&drive("root", true)).expect("drive");
        let rng = b.attach_entropy().expect("rng");
        assert_eq!(first, VirtioSlot { addr: 0xd000_1000, irq: 5 });
        assert_eq!(second, VirtioSlot { addr: 0xd000_2000, irq: 6 });
        assert_eq!(rng, VirtioSlot { addr: 0xd000_3000, irq: 7 });
        assert_eq!(
            b.device_args,
            [
                "virtio_mmio.device=4K@0xd0001000:5",
                "virtio_mmio.device=4K@0xd0002000:6",
                "root=/dev/vdb ro",
                "virtio_mmio.device=4K@0xd0003000:7"
            ]
        );
        assert_eq!(b.handlers.len(), 3, "one queue each");
        while b.next_irq <= layout::IRQ_MAX {
            b.attach_entropy().expect("rng");
        }
        assert!(matches!(b.attach_entropy(), Err(BuildError::NoFreeIrq { .. })));
        let missing = DriveConfig { path_on_host: "/nonexistent/disk.img".into(), ..drive("x", false) };
        assert!(matches!(b.attach_drive(&missing), Err(BuildError::Block(_))));
    }

    #[test]
    fn vsock_is_attached_with_its_host_event_handler() {
        let dir = tempfile::tempdir().expect("dir");
        let mut b = MicrovmBuilder::new(64, 1, CpuTemplate::None, true, BuildOptions::default()).expect("VM");
        let cfg = VsockConfig { guest_cid: 3, uds_path: dir.path().join("v.sock") };
        let slot = b.attach_vsock(&cfg).expect("vsock");
        assert_eq!(slot, VirtioSlot { addr: 0xd000_1000, irq: 5 });
        assert_eq!(b.handlers.len(), 4, "three queues and the host sockets");
        assert!(dir.path().join("v.sock").exists(), "listening");
        let bad = VsockConfig { guest_cid: 1, ..cfg };
        assert!(matches!(b.attach_vsock(&bad), Err(BuildError::Vsock(_))));
    }

    #[test]
    fn device_args_go_before_init_args() {
        let extra = ["virtio_mmio.device=4K@0xd0001000:5".to_string(), "root=/dev/vda ro".to_string()];
        assert_eq!(with_kernel_args("console=ttyS0", &[]), "console=ttyS0");
        assert_eq!(
            with_kernel_args("console=ttyS0 panic=1", &extra),
            "console=ttyS0 panic=1 virtio_mmio.device=4K@0xd0001000:5 root=/dev/vda ro"
        );
        assert_eq!(
            with_kernel_args("console=ttyS0 -- init --verbose", &extra[1..]),
            "console=ttyS0 root=/dev/vda ro -- init --verbose"
        );
        assert_eq!(with_kernel_args("-- x", &extra[1..]), "root=/dev/vda ro -- x");
        assert_eq!(with_kernel_args("a --b", &extra[1..]), "a --b root=/dev/vda ro");
        assert_eq!(with_kernel_args("", &extra[1..]), "root=/dev/vda ro");
    }
}
