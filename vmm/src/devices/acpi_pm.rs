//! The power-management registers of hardware-reduced ACPI, on three I/O ports: sleep
//! control, sleep status and reset (where the FADT says they are). A guest that enters
//! the soft-off state S5 (Linux's `poweroff`) signals the power-off eventfd, and one that
//! writes the reset value signals the reset eventfd; the VMM loop ends the VM on either.
//! Other sleep states are not offered (the DSDT names only `_S5`) and are ignored.

use crate::arch::acpi::pm;
use crate::bus::BusDevice;
use vmm_sys_util::eventfd::EventFd;

/// The sleep control, sleep status and reset registers.
#[derive(Debug)]
pub struct AcpiPmDevice {
    poweroff: EventFd,
    reset: EventFd,
}

impl AcpiPmDevice {
    /// Registers that signal `poweroff` on S5 and `reset` on a reset request.
    pub fn new(poweroff: EventFd, reset: EventFd) -> Self {
        AcpiPmDevice { poweroff, reset }
    }

    fn signal(evt: &EventFd, what: &str) {
        if let Err(e) = evt.write(1) {
            tracing::error!("cannot report the guest's {what}: {e}");
        }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // No wake events: the status register reads as zero, so do the others.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            pm::SLEEP_CONTROL if value & pm::SLEEP_ENABLE != 0 => {
                let sleep_type = (value >> 2) & 0x7;
                if sleep_type == pm::S5_SLEEP_TYPE {
                    Self::signal(&self.poweroff, "power-off");
                } else {
                    tracing::debug!("guest asked for sleep type {sleep_type}; not offered");
                }
            }
            pm::RESET if value == pm::RESET_VALUE => Self::signal(&self.reset, "reset"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn device() -> (AcpiPmDevice, EventFd, EventFd) {
        let off = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let reset = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let dev = AcpiPmDevice::new(
            off.try_clone().expect("clone"),
            reset.try_clone().expect("clone"),
        );
        (dev, off, reset)
    }

    #[test]
    fn entering_s5_powers_off_and_the_reset_value_resets() {
        let (mut dev, off, reset) = device();
        // What Linux writes: clear the wake status, then SLP_TYP=5 with SLP_EN.
        dev.write(pm::SLEEP_STATUS, &[0x80]);
        assert!(off.read().is_err(), "not yet");
        dev.write(pm::SLEEP_CONTROL, &[(5 << 2) | pm::SLEEP_ENABLE]);
        assert_eq!(off.read().expect("power-off signalled"), 1);
        dev.write(pm::RESET, &[pm::RESET_VALUE]);
        assert_eq!(reset.read().expect("reset signalled"), 1);
        let mut status = [0xffu8];
        dev.read(pm::SLEEP_STATUS, &mut status);
        assert_eq!(status, [0]);
    }

    #[test]
    fn other_writes_do_nothing() {
        let (mut dev, off, reset) = device();
        dev.write(pm::SLEEP_CONTROL, &[5 << 2]); // no SLP_EN
        dev.write(pm::SLEEP_CONTROL, &[(3 << 2) | pm::SLEEP_ENABLE]); // S3
        dev.write(pm::SLEEP_CONTROL, &[]);
        dev.write(pm::RESET, &[0x06]);
        dev.write(7, &[0xff, 0xff]);
        assert!(off.read().is_err());
        assert!(reset.read().is_err());
    }
}
