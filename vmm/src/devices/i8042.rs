//! A minimal i8042 keyboard controller: enough for a guest to reboot through it.
//!
//! Linux's `reboot=k` writes the CPU-reset command (0xfe) to the command port after
//! checking that the input buffer is empty. zvm turns that into the end of the VM.

use crate::bus::BusDevice;
use vmm_sys_util::eventfd::EventFd;

/// Offset of the command/status port (0x64) from the data port (0x60).
const COMMAND_OFFSET: u64 = 4;
/// The "pulse reset line" command.
const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 device. It signals `reset_evt` when the guest asks for a CPU reset.
#[derive(Debug)]
pub struct I8042Device {
    reset_evt: EventFd,
}

impl I8042Device {
    /// A controller that writes `reset_evt` on a guest reset request.
    pub fn new(reset_evt: EventFd) -> Self {
        I8042Device { reset_evt }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty; data port reads 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            tracing::debug!("guest requested a CPU reset through the i8042");
            if let Err(err) = self.reset_evt.write(1) {
                tracing::error!("i8042: cannot signal the reset: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn reset_command_signals_the_event() {
        let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let mut dev = I8042Device::new(evt.try_clone().expect("clone"));
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0], "input buffer reads empty so Linux proceeds");
        dev.write(0, &[CMD_RESET_CPU]);
        assert!(evt.read().is_err(), "a data-port write is not a reset");
        dev.write(COMMAND_OFFSET, &[0xaa]);
        assert!(evt.read().is_err(), "other commands are ignored");
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().expect("reset signalled"), 1);
    }
}
