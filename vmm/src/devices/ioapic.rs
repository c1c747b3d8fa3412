//! A userspace IOAPIC for VMs with a split irqchip (`KVM_CAP_SPLIT_IRQCHIP`): KVM emulates
//! the local APICs, zvm the IOAPIC, and there is no PIC. Guests program it as the 82093AA
//! at [`crate::layout::IOAPIC_START`]: IOREGSEL (offset 0x00) selects a register, IOWIN
//! (offset 0x10) reads or writes it; the registers are the id, the version, the arbitration
//! id and 24 64-bit redirection entries.
//!
//! zvm's devices keep raising their lines through irqfds on GSIs 0-23. Here each unmasked
//! pin's redirection entry becomes an MSI route for its GSI ([`Ioapic::routes`]), and the
//! bus glue ([`bus`]) installs the whole table with `KVM_SET_GSI_ROUTING` whenever a
//! guest write changes it; a masked pin has no route, so KVM drops what its irqfd raises.
//! A level-triggered pin's route asks the local APIC for an EOI exit
//! (`KVM_EXIT_IOAPIC_EOI`): [`Ioapic::end_of_interrupt`] clears its remote IRR and says
//! which pins to raise again if their line is still asserted.
//!
//! This module is the device's state and logic, without KVM: tested on its own.

pub mod bus;

use serde::{Deserialize, Serialize};

/// Number of pins (and redirection entries): GSIs 0-23.
pub const NUM_PINS: usize = 24;
/// Length of the IOAPIC's MMIO range (one page; the registers are in its first 0x20 bytes).
pub const MMIO_LEN: u64 = 0x1000;
/// IOREGSEL's offset.
pub const IOREGSEL_OFFSET: u64 = 0x00;
/// IOWIN's offset.
pub const IOWIN_OFFSET: u64 = 0x10;

/// Register indices (written to IOREGSEL).
const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARBITRATION: u32 = 0x02;
const REG_REDIRECTION_BASE: u32 = 0x10;
/// The 82093AA's version, with the highest redirection entry's index in bits 16-23.
const VERSION: u32 = 0x11 | ((NUM_PINS as u32 - 1) << 16);
/// The id register's writable bits (the APIC id, bits 24-27).
const ID_MASK: u32 = 0x0f00_0000;

// Redirection entry fields.
const VECTOR_MASK: u64 = 0xff;
const DELIVERY_MODE_SHIFT: u32 = 8;
const DELIVERY_MODE_MASK: u64 = 0x7 << DELIVERY_MODE_SHIFT;
const DEST_MODE_LOGICAL: u64 = 1 << 11;
const POLARITY_LOW: u64 = 1 << 13;
const REMOTE_IRR: u64 = 1 << 14;
const TRIGGER_LEVEL: u64 = 1 << 15;
const MASKED: u64 = 1 << 16;
const DEST_SHIFT: u32 = 56;
/// The bits a guest may write: vector, delivery mode, destination mode, polarity, trigger
/// mode, mask and destination. Delivery status and remote IRR are read-only; the rest is
/// reserved.
const WRITABLE: u64 = VECTOR_MASK
    | DELIVERY_MODE_MASK
    | DEST_MODE_LOGICAL
    | POLARITY_LOW
    | TRIGGER_LEVEL
    | MASKED
    | (0xff << DEST_SHIFT);
/// A pin after reset: masked, everything else zero.
const RESET_ENTRY: u64 = MASKED;

// MSI address and data (Intel SDM 11.11).
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;
const MSI_DEST_SHIFT: u32 = 12;
const MSI_DEST_MODE_LOGICAL: u32 = 1 << 2;
const MSI_DATA_LEVEL_ASSERT: u32 = 1 << 14;
const MSI_DATA_TRIGGER_LEVEL: u32 = 1 << 15;

/// The version of [`IoapicState`] this zvm writes and reads.
pub const STATE_VERSION: u32 = 1;

/// Errors restoring an IOAPIC's state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IoapicError {
    /// A state of another version.
    #[error("IOAPIC state version {0}, this zvm reads version {STATE_VERSION}")]
    Version(u32),
    /// A state with another number of redirection entries.
    #[error("IOAPIC state has {0} redirection entries, not {NUM_PINS}")]
    Entries(usize),
    /// KVM refused the routing table.
    #[error("KVM refused the IOAPIC's routes: {0}")]
    Routing(String),
}

/// One GSI's route: an MSI message to the local APICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiRoute {
    /// The GSI (the pin).
    pub gsi: u32,
    /// MSI address (low 32 bits; the high ones are zero).
    pub address: u32,
    /// MSI data.
    pub data: u32,
}

/// A redirection entry's MSI message: destination and its mode in the address; vector,
/// delivery mode and trigger mode in the data.
pub fn msi_of_entry(entry: u64) -> (u32, u32) {
    let dest = ((entry >> DEST_SHIFT) & 0xff) as u32;
    let mut address = MSI_ADDRESS_BASE | (dest << MSI_DEST_SHIFT);
    if entry & DEST_MODE_LOGICAL != 0 {
        address |= MSI_DEST_MODE_LOGICAL;
    }
    let mut data = (entry & (VECTOR_MASK | DELIVERY_MODE_MASK)) as u32;
    if entry & TRIGGER_LEVEL != 0 {
        data |= MSI_DATA_TRIGGER_LEVEL | MSI_DATA_LEVEL_ASSERT;
    }
    (address, data)
}

/// The IOAPIC's state in a snapshot: a plain, versioned struct.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoapicState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The id register.
    pub id: u32,
    /// The register IOREGSEL selects.
    pub ioregsel: u32,
    /// The redirection entries, by pin (remote IRR included).
    pub redirection: Vec<u64>,
}

/// The IOAPIC's registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ioapic {
    id: u32,
    ioregsel: u32,
    entries: [u64; NUM_PINS],
}

impl Ioapic {
    /// An IOAPIC after reset with APIC id `id`: every pin masked.
    pub fn new(id: u8) -> Self {
        Ioapic {
            id: (u32::from(id) << 24) & ID_MASK,
            ioregsel: 0,
            entries: [RESET_ENTRY; NUM_PINS],
        }
    }

    /// Pin `pin`'s redirection entry (`None` past the last pin).
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.entries.get(pin).copied()
    }

    /// A guest read of `data.len()` bytes at `offset`: IOREGSEL or IOWIN as 32-bit
    /// registers (narrower reads get the low bytes); anything else reads as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            IOREGSEL_OFFSET => self.ioregsel,
            IOWIN_OFFSET => self.read_register(self.ioregsel),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = bytes.get(i).copied().unwrap_or(0);
        }
    }

    /// A guest write of `data` at `offset`. Returns whether the routes changed (a
    /// redirection entry's route, or a pin's mask).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let mut bytes = [0u8; 4];
        for (dst, src) in bytes.iter_mut().zip(data) {
            *dst = *src;
        }
        let value = u32::from_le_bytes(bytes);
        match offset {
            IOREGSEL_OFFSET => {
                self.ioregsel = value & 0xff;
                false
            }
            IOWIN_OFFSET => self.write_register(self.ioregsel, value),
            _ => false,
        }
    }

    fn read_register(&self, index: u32) -> u32 {
        match index {
            REG_ID => self.id,
            REG_VERSION => VERSION,
            REG_ARBITRATION => self.id,
            _ => match redirection_index(index) {
                Some((pin, high)) => {
                    let entry = self.entries[pin];
                    if high {
                        (entry >> 32) as u32
                    } else {
                        entry as u32
                    }
                }
                None => 0,
            },
        }
    }

    fn write_register(&mut self, index: u32, value: u32) -> bool {
        if index == REG_ID {
            self.id = value & ID_MASK;
            return false;
        }
        let Some((pin, high)) = redirection_index(index) else {
            // Version, arbitration and unknown registers are read-only.
            return false;
        };
        let old = self.entries[pin];
        let written = if high {
            (old & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (old & !0xffff_ffff) | u64::from(value)
        };
        let mut new = (old & !WRITABLE) | (written & WRITABLE);
        // An edge-triggered pin has no remote IRR (Linux flips a pin to edge and back to
        // clear it).
        if new & TRIGGER_LEVEL == 0 {
            new &= !REMOTE_IRR;
        }
        self.entries[pin] = new;
        route_of(old) != route_of(new)
    }

    /// The MSI route of every unmasked pin, by GSI; masked pins have none. (No
    /// allocation: a vCPU thread calls this, and its seccomp filter lets malloc grow no
    /// arena.)
    pub fn routes(&self) -> impl Iterator<Item = MsiRoute> + '_ {
        self.entries.iter().enumerate().filter_map(|(pin, &entry)| {
            route_of(entry).map(|(address, data)| MsiRoute {
                gsi: pin as u32,
                address,
                data,
            })
        })
    }

    /// The local APICs signalled the end of interrupt `vector` (a `KVM_EXIT_IOAPIC_EOI`):
    /// clears the remote IRR of the level-triggered pins with that vector and returns the
    /// unmasked ones (bit `pin` set), to be raised again if their line is still asserted.
    pub fn end_of_interrupt(&mut self, vector: u8) -> u32 {
        let mut pins = 0;
        for (pin, entry) in self.entries.iter_mut().enumerate() {
            if *entry & TRIGGER_LEVEL != 0 && (*entry & VECTOR_MASK) as u8 == vector {
                *entry &= !REMOTE_IRR;
                if *entry & MASKED == 0 {
                    pins |= 1 << pin;
                }
            }
        }
        pins
    }

    /// Pin `pin` was raised by zvm itself (again, after an EOI) while level-triggered:
    /// its remote IRR is set until the next EOI of its vector.
    pub fn mark_delivered(&mut self, pin: usize) {
        if let Some(entry) = self.entries.get_mut(pin) {
            if *entry & TRIGGER_LEVEL != 0 && *entry & MASKED == 0 {
                *entry |= REMOTE_IRR;
            }
        }
    }

    /// The state a snapshot saves.
    pub fn save_state(&self) -> IoapicState {
        IoapicState {
            version: STATE_VERSION,
            id: self.id,
            ioregsel: self.ioregsel,
            redirection: self.entries.to_vec(),
        }
    }

    /// Restores `state` (checked: version, entry count; reserved bits dropped).
    pub fn restore_state(&mut self, state: &IoapicState) -> Result<(), IoapicError> {
        if state.version != STATE_VERSION {
            return Err(IoapicError::Version(state.version));
        }
        let entries: [u64; NUM_PINS] = state
            .redirection
            .as_slice()
            .try_into()
            .map_err(|_| IoapicError::Entries(state.redirection.len()))?;
        self.id = state.id & ID_MASK;
        self.ioregsel = state.ioregsel & 0xff;
        self.entries = entries.map(|e| e & (WRITABLE | REMOTE_IRR));
        Ok(())
    }
}

/// The pin and half (high = bits 32-63) a redirection register index names.
fn redirection_index(index: u32) -> Option<(usize, bool)> {
    let offset = index.checked_sub(REG_REDIRECTION_BASE)? as usize;
    let pin = offset / 2;
    (pin < NUM_PINS).then_some((pin, offset % 2 == 1))
}

/// An entry's MSI message, or `None` when masked.
fn route_of(entry: u64) -> Option<(u32, u32)> {
    (entry & MASKED == 0).then(|| msi_of_entry(entry))
}

#[cfg(test)]
mod tests;
