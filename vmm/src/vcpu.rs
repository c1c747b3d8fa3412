//! One vCPU: its thread, its run loop, and what each VM exit means.
//!
//! The loop hands port-I/O and MMIO exits to the buses and turns every other exit into a
//! [`VcpuOutcome`] for the VMM: the guest stopped on purpose, or something went wrong, in
//! which case the outcome carries the registers and, for emulation failures, the bytes of
//! the instruction at RIP.

use crate::arch::state::VcpuState;
use crate::bus::{MmioBus, PioBus};
use crate::devices::ioapic::bus::IoapicDevice;
use crate::memory::GuestMemoryMmap;
use crate::metrics::VcpuMetrics;
use crate::seccomp::{self, ThreadKind};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

mod control;
pub(crate) mod kick;
pub use control::VcpuControl;

/// Why a vCPU stopped with an error.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VcpuError {
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    #[error("vCPU {index}: triple fault (KVM_EXIT_SHUTDOWN); {regs}")]
    TripleFault {
        /// vCPU index.
        index: u8,
        /// Register dump.
        regs: String,
    },
    /// KVM_EXIT_INTERNAL_ERROR, e.g. an instruction KVM could not emulate.
    #[error("vCPU {index}: KVM internal error (suberror {suberror}: {meaning}); instruction bytes at RIP: {bytes}; {regs}")]
    Internal {
        /// vCPU index.
        index: u8,
        /// KVM's suberror code.
        suberror: u32,
        /// What the suberror means.
        meaning: &'static str,
        /// Bytes at RIP, hex.
        bytes: String,
        /// Register dump.
        regs: String,
    },
    /// KVM_EXIT_FAIL_ENTRY: hardware refused to enter the guest.
    #[error("vCPU {index}: VM entry failed (reason {reason:#x}); {regs}")]
    FailEntry {
        /// vCPU index.
        index: u8,
        /// Hardware entry failure reason.
        reason: u64,
        /// Register dump.
        regs: String,
    },
    /// The guest asked for a crash dump (KVM_SYSTEM_EVENT_CRASH).
    #[error("vCPU {index}: guest reported a crash")]
    GuestCrash {
        /// vCPU index.
        index: u8,
    },
    /// An exit zvm does not handle.
    #[error("vCPU {index}: unexpected VM exit {exit}; {regs}")]
    UnexpectedExit {
        /// vCPU index.
        index: u8,
        /// Exit name.
        exit: String,
        /// Register dump.
        regs: String,
    },
    /// KVM_RUN failed.
    #[error("vCPU {index}: KVM_RUN failed: {errno}")]
    Run {
        /// vCPU index.
        index: u8,
        /// The error.
        errno: String,
    },
    /// The thread could not set itself up.
    #[error("vCPU {index}: {reason}")]
    Setup {
        /// vCPU index.
        index: u8,
        /// What failed.
        reason: String,
    },
}

/// How a vCPU's run loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuOutcome {
    /// The guest asked to power off (KVM_SYSTEM_EVENT_SHUTDOWN).
    Poweroff,
    /// The guest asked to reboot (KVM_SYSTEM_EVENT_RESET).
    Reboot,
    /// HLT reached userspace (only without an in-kernel irqchip): this vCPU is done.
    Halted,
    /// The VMM asked the vCPU to stop.
    Stopped,
    /// Something went wrong.
    Failed(VcpuError),
}

/// A vCPU's report to the VMM loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuEvent {
    /// vCPU index.
    pub index: u8,
    /// What happened.
    pub outcome: VcpuOutcome,
}

/// Everything a vCPU thread needs.
pub struct Vcpu {
    /// Index (also its APIC ID).
    pub index: u8,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Port-I/O bus.
    pub pio: Arc<PioBus>,
    /// MMIO bus.
    pub mmio: Arc<MmioBus>,
    /// Guest memory, for reading instruction bytes when reporting errors.
    pub mem: GuestMemoryMmap,
    /// Exit counters (shared by all vCPUs of the VM).
    pub metrics: Arc<VcpuMetrics>,
    /// What saving this vCPU's state needs.
    pub save: VcpuSaveContext,
    /// zvm's IOAPIC (a split irqchip), told of EOIs of level-triggered vectors.
    pub ioapic: Option<Arc<Mutex<IoapicDevice>>>,
}

/// What a vCPU needs to save its state for a snapshot.
#[derive(Debug, Clone, Default)]
pub struct VcpuSaveContext {
    /// The CPUID table the vCPU was given.
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    /// The MSRs KVM can save.
    pub msr_indices: Arc<Vec<u32>>,
    /// KVM has KVM_CAP_XSAVE.
    pub xsave: bool,
    /// KVM has KVM_CAP_XCRS.
    pub xcrs: bool,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vcpu({})", self.index)
    }
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

fn internal_error_meaning(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "simultaneous exceptions",
        3 => "delivery event failed",
        4 => "unexpected exit reason during event delivery",
        _ => "unknown",
    }
}

impl Vcpu {
    /// A register dump for error messages.
    pub fn register_dump(&self) -> String {
        let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return "registers unavailable".to_string();
        };
        format!(
            "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} \
             cs={:#x} (base {:#x}, l={}, db={}) cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi,
            s.cs.selector, s.cs.base, s.cs.l, s.cs.db, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
        )
    }

    /// Up to 15 bytes at the guest's RIP, as hex, or why they could not be read.
    pub fn instruction_bytes(&self) -> String {
        let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return "unavailable".into();
        };
        let linear = s.cs.base.wrapping_add(r.rip);
        let physical = if s.cr0 & 0x8000_0000 == 0 {
            linear
        } else {
            match self.fd.translate_gva(linear) {
                Ok(t) if t.valid != 0 => t.physical_address,
                _ => return format!("RIP {linear:#x} is not mapped"),
            }
        };
        let mut bytes = [0u8; 15];
        match self.mem.read_slice(&mut bytes, GuestAddress(physical)) {
            Ok(()) => bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
            Err(_) => format!("guest physical {physical:#x} is outside RAM"),
        }
    }

    /// Finishes an I/O or MMIO exit KVM is still in the middle of (an `in` whose value
    /// is not yet in the register): KVM_RUN with `immediate_exit` completes it and returns
    /// without running guest code, so the state a snapshot saves is whole.
    fn complete_pending_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => tracing::warn!("vCPU {}: completing a pending exit: {e}", self.index),
            Ok(exit) => tracing::warn!(
                "vCPU {}: unexpected exit completing a pending one: {exit:?}",
                self.index
            ),
        }
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Runs the guest until it stops or a stop is requested through `control` (after a
    /// kick, see `vcpu::kick`); parks while a pause is requested.
    pub fn run(&mut self, control: &VcpuControl) -> VcpuOutcome {
        let target = kick::KickTarget::register(&mut self.fd);
        let outcome = self.run_loop(control);
        drop(target);
        if matches!(outcome, VcpuOutcome::Failed(_)) {
            self.metrics.failures.inc();
        }
        outcome
    }

    fn run_loop(&mut self, control: &VcpuControl) -> VcpuOutcome {
        let index = self.index;
        let metrics = self.metrics.clone();
        loop {
            // Cleared before the requests are read: a kick from now on makes the next
            // KVM_RUN return at once, and one from before left a request seen below.
            kick::clear_immediate_exit(&mut self.fd);
            if control.pause_requested() {
                self.complete_pending_exit();
                let (fd, ctx) = (&self.fd, &self.save);
                let mut save = || {
                    VcpuState::save(fd, &ctx.msr_indices, &ctx.cpuid, ctx.xsave, ctx.xcrs)
                        .map_err(|e| e.to_string())
                };
                control.park_if_paused(index, &mut save);
            }
            if control.stop_requested() {
                return VcpuOutcome::Stopped;
            }
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    metrics.exit_intr.inc();
                    continue;
                }
                Err(e) => {
                    return VcpuOutcome::Failed(VcpuError::Run {
                        index,
                        errno: e.to_string(),
                    })
                }
            };
            match exit {
                VcpuExit::IoIn(port, data) => {
                    metrics.exit_io_in.inc();
                    self.pio.read(u64::from(port), data);
                }
                VcpuExit::IoOut(port, data) => {
                    metrics.exit_io_out.inc();
                    self.pio.write(u64::from(port), data);
                }
                VcpuExit::MmioRead(addr, data) => {
                    metrics.exit_mmio_read.inc();
                    self.mmio.read(addr, data);
                }
                VcpuExit::MmioWrite(addr, data) => {
                    metrics.exit_mmio_write.inc();
                    self.mmio.write(addr, data);
                }
                VcpuExit::IoapicEoi(vector) => {
                    if let Some(ioapic) = &self.ioapic {
                        ioapic
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .end_of_interrupt(vector);
                    }
                }
                VcpuExit::Hlt => {
                    metrics.exit_hlt.inc();
                    return VcpuOutcome::Halted;
                }
                VcpuExit::Intr => {
                    metrics.exit_intr.inc();
                    continue;
                }
                VcpuExit::Shutdown => {
                    return VcpuOutcome::Failed(VcpuError::TripleFault {
                        index,
                        regs: self.register_dump(),
                    });
                }
                VcpuExit::SystemEvent(kind, _) => {
                    metrics.exit_system_event.inc();
                    return match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN => VcpuOutcome::Poweroff,
                        KVM_SYSTEM_EVENT_RESET => VcpuOutcome::Reboot,
                        KVM_SYSTEM_EVENT_CRASH => {
                            VcpuOutcome::Failed(VcpuError::GuestCrash { index })
                        }
                        other => VcpuOutcome::Failed(VcpuError::UnexpectedExit {
                            index,
                            exit: format!("system event {other}"),
                            regs: self.register_dump(),
                        }),
                    };
                }
                VcpuExit::InternalError => {
                    // SAFETY: for KVM_EXIT_INTERNAL_ERROR the `internal` union member is the
                    // one KVM filled in.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    return VcpuOutcome::Failed(VcpuError::Internal {
                        index,
                        suberror,
                        meaning: internal_error_meaning(suberror),
                        bytes: self.instruction_bytes(),
                        regs: self.register_dump(),
                    });
                }
                VcpuExit::FailEntry(reason, _cpu) => {
                    return VcpuOutcome::Failed(VcpuError::FailEntry {
                        index,
                        reason,
                        regs: self.register_dump(),
                    });
                }
                other => {
                    let exit = format!("{other:?}");
                    return VcpuOutcome::Failed(VcpuError::UnexpectedExit {
                        index,
                        exit,
                        regs: self.register_dump(),
                    });
                }
            }
        }
    }

    /// Thread body: installs the vCPU seccomp filter, runs, reports the outcome on
    /// `events` and wakes the VMM loop through `wake`.
    pub fn thread_main(
        mut self,
        control: Arc<VcpuControl>,
        seccomp_on: bool,
        events: Sender<VcpuEvent>,
        wake: EventFd,
    ) {
        let outcome = match seccomp::install(ThreadKind::Vcpu, seccomp_on) {
            Ok(()) => self.run(&control),
            Err(e) => VcpuOutcome::Failed(VcpuError::Setup {
                index: self.index,
                reason: e.to_string(),
            }),
        };
        control.mark_exited();
        tracing::debug!("vCPU {} ended: {outcome:?}", self.index);
        // The receiver only goes away when the VMM is already shutting down.
        let _ = events.send(VcpuEvent {
            index: self.index,
            outcome,
        });
        if let Err(e) = wake.write(1) {
            tracing::error!("vCPU {}: cannot wake the VMM loop: {e}", self.index);
        }
    }
}

#[cfg(test)]
mod tests;
