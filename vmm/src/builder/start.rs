//! The last build steps: the vCPUs (booted at the kernel entry, or given a snapshot's
//! state by the caller), their threads and the VMM loop.

use super::{io_err, kvm_err, BuildError, MicrovmBuilder};
use crate::arch::regs::{self, BootEntry};
use crate::arch::{cpuid, state};
use crate::devices::DeviceRegistry;
use crate::memory::GuestMemoryMmap;
use crate::snapshot::create::SnapshotParts;
use crate::vcpu::{Vcpu, VcpuControl, VcpuSaveContext};
use crate::vm::{RunningVm, ShutdownState, VmHandles, VmmLoop};
use kvm_bindings::{
    kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::{Cap, VmFd};
use std::sync::Arc;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

impl MicrovmBuilder {
    /// Creates and configures the vCPUs at `entry`, starts their threads and the VMM loop.
    pub fn start(mut self, entry: BootEntry) -> Result<RunningVm, BuildError> {
        let vcpus = self.create_vcpus(None)?;
        for vcpu in &vcpus {
            regs::set_boot_msrs(&vcpu.fd)?;
            if self.opts.irqchip {
                regs::set_lint(&vcpu.fd)?;
            }
            if vcpu.index == 0 || !self.opts.irqchip {
                // Application processors wait for INIT/SIPI from the guest.
                regs::set_boot_state(&vcpu.fd, entry)?;
            }
        }
        self.launch(vcpus, false)
    }

    /// Creates the vCPUs with their CPUID: normalised from what KVM supports, or the one
    /// a snapshot saved (`saved`, one table per vCPU).
    pub(crate) fn create_vcpus(
        &mut self,
        saved: Option<&[Vec<kvm_bindings::kvm_cpuid_entry2>]>,
    ) -> Result<Vec<Vcpu>, BuildError> {
        let supported = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("read supported CPUID"))?;
        let msr_indices =
            Arc::new(
                state::saveable_msr_indices(&self.kvm).map_err(|e| BuildError::Io {
                    what: "list saveable MSRs",
                    source: std::io::Error::other(e.to_string()),
                })?,
            );
        let (xsave, xcrs) = (
            self.kvm.check_extension(Cap::Xsave),
            self.kvm.check_extension(Cap::Xcrs),
        );
        // The buses are complete once the vCPUs exist.
        let pio = Arc::new(std::mem::take(&mut self.pio));
        let mmio = Arc::new(std::mem::take(&mut self.mmio));
        let mut vcpus = Vec::with_capacity(usize::from(self.vcpu_count));
        for index in 0..self.vcpu_count {
            let fd = self
                .vm
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("create a vCPU"))?;
            let entries = match saved.and_then(|s| s.get(usize::from(index))) {
                Some(entries) => entries.clone(),
                None => {
                    let mut entries = supported.as_slice().to_vec();
                    cpuid::normalize(&mut entries, index, self.vcpu_count, self.template);
                    entries
                }
            };
            if let Some(l1) = entries.iter().find(|e| e.function == 1) {
                tracing::debug!(
                    "vCPU {index}: template {:?}, CPUID.1 ecx={:#x} edx={:#x}",
                    self.template,
                    l1.ecx,
                    l1.edx
                );
            }
            match crate::kvm_stats::VcpuStats::open(&fd) {
                Ok(stats) => self.metrics.kvm().add(stats),
                Err(e) => tracing::debug!("vCPU {index}: no KVM statistics ({e})"),
            }
            let cpuid = CpuId::from_entries(&entries).map_err(|_| BuildError::Io {
                what: "build the CPUID table",
                source: std::io::Error::other("too many CPUID entries"),
            })?;
            fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
            let save = VcpuSaveContext {
                cpuid: entries,
                msr_indices: msr_indices.clone(),
                xsave,
                xcrs,
            };
            let (pio, mmio, mem, metrics) = (
                pio.clone(),
                mmio.clone(),
                self.mem.clone(),
                self.metrics.vcpu(),
            );
            vcpus.push(Vcpu {
                index,
                fd,
                pio,
                mmio,
                mem,
                metrics,
                save,
                ioapic: self.ioapic.clone(),
            });
        }
        Ok(vcpus)
    }

    /// Starts the vCPU threads and the VMM loop; `paused` keeps the vCPUs parked until a
    /// resume.
    pub(crate) fn launch(self, vcpus: Vec<Vcpu>, paused: bool) -> Result<RunningVm, BuildError> {
        super::lock_down::run_lock_down()?;
        crate::vcpu::kick::install_handler();
        let control = Arc::new(VcpuControl::default());
        if paused {
            control.request_pause();
        }
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        let wake = EventFd::new(EFD_NONBLOCK).map_err(io_err("create the vCPU eventfd"))?;
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
        let vm = self.vm;
        let snapshot = SnapshotParts {
            vm: vm.clone(),
            control: control.clone(),
            vcpu_count: threads.len(),
            mem: self.mem.clone(),
            devices: DeviceRegistry {
                serial: self.serial.clone(),
                i8042: self.i8042.clone(),
                virtio: self.virtio,
                ioapic: self.ioapic.clone(),
            },
            resources: self.resources,
            track_dirty_pages: self.track_dirty_pages,
            irqchip: self.opts.kernel_irqchip(),
        };
        let vmm = VmmLoop {
            vcpu_threads: threads,
            vcpu_events: events_rx,
            vcpu_wake: wake,
            reset_evt: self.reset_evt,
            poweroff_evt: self.poweroff_evt,
            shutdown: ShutdownState::new(
                self.power_button
                    .as_ref()
                    .map(EventFd::try_clone)
                    .transpose()
                    .map_err(io_err("clone the power button eventfd"))?,
            )
            .map_err(io_err("create the shutdown eventfd"))?,
            stop_evt: EventFd::new(EFD_NONBLOCK).map_err(io_err("create the stop eventfd"))?,
            control,
            pause_evt: EventFd::new(EFD_NONBLOCK).map_err(io_err("create the pause eventfd"))?,
            console_input: if self.console_input {
                self.serial.clone()
            } else {
                None
            },
            seccomp: self.seccomp,
            devices: snapshot.devices.virtio.clone(),
            vm,
        };
        tracing::debug!("VM built in {:?}", self.build_start.elapsed());
        let handles = VmHandles {
            boot_time: self.boot_time,
            metrics: self.metrics,
            i8042: self.i8042,
            power_button: self.power_button,
            snapshot: Arc::new(snapshot),
        };
        RunningVm::start(vmm, handles).map_err(io_err("start the VMM thread"))
    }
}

/// Registers `mem` with KVM, slot by slot; `log_dirty` has KVM log the pages the guest writes.
pub(super) fn register_memory(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    log_dirty: bool,
) -> Result<(), BuildError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| BuildError::Io {
                what: "map guest memory",
                source: std::io::Error::other("no host address"),
            })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: if log_dirty {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
        };
        // SAFETY: the region maps memory owned by `mem`, which the VM's users keep alive.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("register guest memory"))?;
    }
    Ok(())
}
