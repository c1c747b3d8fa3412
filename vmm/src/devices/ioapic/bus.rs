//! The IOAPIC on the MMIO bus: guest register accesses go to [`Ioapic`]; a write that
//! changes the routes installs them with KVM (`KVM_SET_GSI_ROUTING`, all pins' routes in
//! one table, from the vCPU thread that made the write); EOI exits of level-triggered
//! vectors come from the vCPU loop ([`IoapicDevice::end_of_interrupt`]) and raise the
//! pins again whose line is still asserted.

use super::{Ioapic, IoapicError, IoapicState, MsiRoute, NUM_PINS};
use crate::bus::BusDevice;
use crate::seccomp::kvm::KVM_SET_GSI_ROUTING;
use kvm_bindings::{kvm_irq_routing_entry, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::VmFd;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// Installs a VM's GSI routes.
pub trait GsiRouter: Send + Sync {
    /// Replaces every GSI route with `routes`.
    fn set_msi_routes(&self, routes: &mut dyn Iterator<Item = MsiRoute>) -> Result<(), String>;
}

/// `struct kvm_irq_routing` with room for every pin, on the stack (no allocation on the
/// vCPU thread).
#[repr(C)]
struct RoutingTable {
    nr: u32,
    flags: u32,
    entries: [kvm_irq_routing_entry; NUM_PINS],
}

impl GsiRouter for VmFd {
    fn set_msi_routes(&self, routes: &mut dyn Iterator<Item = MsiRoute>) -> Result<(), String> {
        let mut table = RoutingTable {
            nr: 0,
            flags: 0,
            entries: [kvm_irq_routing_entry::default(); NUM_PINS],
        };
        for (slot, route) in table.entries.iter_mut().zip(routes) {
            slot.gsi = route.gsi;
            slot.type_ = KVM_IRQ_ROUTING_MSI;
            slot.u.msi.address_lo = route.address;
            slot.u.msi.address_hi = 0;
            slot.u.msi.data = route.data;
            table.nr += 1;
        }
        // SAFETY: KVM reads the header and `nr` entries, all inside `table`.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ref(self, KVM_SET_GSI_ROUTING as libc::c_ulong, &table)
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().to_string())
        }
    }
}

/// A level-triggered device's line: whether it is asserted, and the irqfd that raises it.
pub struct LevelLine {
    asserted: Box<dyn Fn() -> bool + Send>,
    raise: EventFd,
}

impl LevelLine {
    /// A line `asserted` reports, raised by writing `raise` (the device's irqfd).
    pub fn new(asserted: Box<dyn Fn() -> bool + Send>, raise: EventFd) -> Self {
        LevelLine { asserted, raise }
    }
}

/// The IOAPIC device on the MMIO bus.
pub struct IoapicDevice {
    ioapic: Ioapic,
    router: Arc<dyn GsiRouter>,
    lines: [Option<LevelLine>; NUM_PINS],
}

impl std::fmt::Debug for IoapicDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoapicDevice")
            .field("ioapic", &self.ioapic)
            .finish_non_exhaustive()
    }
}

impl IoapicDevice {
    /// An IOAPIC after reset with APIC id `id`, installing its routes through `router`.
    pub fn new(id: u8, router: Arc<dyn GsiRouter>) -> Self {
        IoapicDevice {
            ioapic: Ioapic::new(id),
            router,
            lines: std::array::from_fn(|_| None),
        }
    }

    /// Tells the IOAPIC the line state of pin `pin`'s device, for level-triggered use
    /// (pins without one are raised only by their irqfds: edge semantics).
    pub fn set_line(&mut self, pin: u32, line: LevelLine) {
        if let Some(slot) = self.lines.get_mut(pin as usize) {
            *slot = Some(line);
        }
    }

    /// The registers (for tests and snapshots).
    pub fn ioapic(&self) -> &Ioapic {
        &self.ioapic
    }

    /// Installs the current routes with KVM.
    pub fn install_routes(&self) -> Result<(), IoapicError> {
        self.router
            .set_msi_routes(&mut self.ioapic.routes())
            .map_err(IoapicError::Routing)
    }

    /// The end of interrupt `vector` (`KVM_EXIT_IOAPIC_EOI`): level-triggered pins with
    /// that vector whose line is still asserted are raised again.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        let pins = self.ioapic.end_of_interrupt(vector);
        for pin in 0..NUM_PINS {
            if pins & (1 << pin) == 0 {
                continue;
            }
            if let Some(line) = &self.lines[pin] {
                if (line.asserted)() {
                    self.ioapic.mark_delivered(pin);
                    if let Err(e) = line.raise.write(1) {
                        tracing::warn!("cannot raise IOAPIC pin {pin} again: {e}");
                    }
                }
            }
        }
    }

    /// The state a snapshot saves.
    pub fn save_state(&self) -> IoapicState {
        self.ioapic.save_state()
    }

    /// Restores `state` and installs its routes.
    pub fn restore_state(&mut self, state: &IoapicState) -> Result<(), IoapicError> {
        self.ioapic.restore_state(state)?;
        self.install_routes()
    }
}

impl BusDevice for IoapicDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.ioapic.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if self.ioapic.write(offset, data) {
            if let Err(e) = self.install_routes() {
                tracing::warn!("{e}");
            }
        }
    }
}
