//! Building a micro-VM: one function owns the boot order, made of small `attach_*` steps.
//!
//! [`build_microvm`] is what `zvm run` uses. [`MicrovmBuilder`] exposes the same steps so
//! tests can run tiny hand-assembled guests through the real VM setup and buses.

use crate::arch::cpuid;
use crate::arch::mptable::{write_mptable, MptableError};
use crate::arch::regs::{self, BootEntry, RegsError};
use crate::bus::{BusError, BusRange, MmioBus, PioBus};
use crate::devices::boot_timer::{BootTimeRecord, BootTimerDevice};
use crate::devices::i8042::I8042Device;
use crate::devices::serial::{ConsoleSink, SerialDevice};
use crate::devices::EventFdTrigger;
use crate::host::KvmFlavour;
use crate::layout;
use crate::loader::{self, LoaderError};
use crate::memory::{create_guest_memory, MemoryError};
use crate::resources::{ConsoleConfig, CpuTemplate, ResourcesError, VmResources};
use crate::vcpu::Vcpu;
use crate::vm::{kick_signal, RunningVm, VmmLoop};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use std::sync::atomic::AtomicBool;
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
            boot_time: BootTimeRecord::default(),
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

    /// The i8042 controller, so that a guest reboot ends the VM.
    pub fn attach_i8042(&mut self) -> Result<(), BuildError> {
        let evt = self.reset_evt.try_clone().map_err(io_err("clone the reset eventfd"))?;
        let dev = Arc::new(Mutex::new(I8042Device::new(evt)));
        self.pio.insert(BusRange::new(u64::from(layout::I8042_PORT), 5), dev)?;
        Ok(())
    }

    /// The boot-timer device on its MMIO page.
    pub fn attach_boot_timer(&mut self) -> Result<(), BuildError> {
        let dev = BootTimerDevice::new(self.opts.process_start, self.build_start, self.boot_time.clone());
        self.mmio.insert(BusRange::new(layout::BOOT_TIMER_START, 0x1000), Arc::new(Mutex::new(dev)))?;
        Ok(())
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
        let mut args = resources.boot_args().to_string();
        if self.template == CpuTemplate::Pvm {
            args = format!("{args} {}", cpuid::PVM_KERNEL_ARGS);
        }
        let cmdline = loader::build_cmdline(&args)?;
        let len = loader::write_cmdline(&self.mem, &cmdline)?;
        let entry = loader::write_boot_info(&self.mem, &kernel, initrd, len, self.mem_size)?;
        self.attach_boot_tables()?;
        Ok(entry)
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
        let stop_flag = Arc::new(AtomicBool::new(false));
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
            vcpus.push(Vcpu { index, fd, pio: pio.clone(), mmio: mmio.clone(), mem: self.mem.clone() });
        }
        let mut threads = Vec::with_capacity(vcpus.len());
        for vcpu in vcpus {
            let (stop, events, seccomp) = (stop_flag.clone(), events_tx.clone(), self.seccomp);
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
            stop_flag,
            console_input: if self.console_input { self.serial.clone() } else { None },
            seccomp: self.seccomp,
            vm: self.vm,
        };
        tracing::debug!("VM built in {:?}", self.build_start.elapsed());
        RunningVm::start(vmm, self.boot_time).map_err(io_err("start the VMM thread"))
    }
}

/// Builds and starts the micro-VM `resources` describe. The boot order: memory and
/// irqchip, legacy devices, kernel and boot tables, vCPUs.
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
    let entry = builder.load_kernel(resources)?;
    builder.start(entry)
}
