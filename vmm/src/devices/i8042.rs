//! The i8042 PS/2 controller with an AT keyboard behind it, as Linux's `i8042` and
//! `atkbd` drivers expect it, and nothing more (no mouse port).
//!
//! Ports: data 0x60 (offset 0) and command/status 0x64 (offset 4). The controller answers
//! its own commands (read/write the command byte, self-tests, keyboard interface on/off,
//! CPU reset) through its one-byte output buffer; bytes written to the data port without
//! a pending controller command go to the keyboard, which acknowledges them (0xfa) and
//! answers the commands Linux sends (get ID, reset, LEDs, scancode set, ...). Bytes from
//! the keyboard raise IRQ 1 (an irqfd) when the command byte enables the keyboard
//! interrupt; one byte is presented at a time and the next one follows when the guest
//! has read it.
//!
//! The VMM presses Ctrl-Alt-Del with [`I8042Device::queue_ctrl_alt_del`] (the API's
//! `SendCtrlAltDel`). The scancodes are set 2, as Firecracker sends them (what Linux
//! assumes with `i8042.dumbkbd`), or set 1 when the guest switched the keyboard to set 1 or
//! turned on the controller's set-2-to-set-1 translation. A guest reset request (command
//! 0xfe, or an output-port write with the reset line low) signals the reset eventfd.
//! The builder adds [`LINUX_ARGS`] to the kernel command line.

use crate::bus::BusDevice;
use std::collections::VecDeque;
use vmm_sys_util::eventfd::EventFd;

/// Kernel parameters Linux's i8042 driver needs for this controller: no mouse port, no
/// multiplexer, and a keyboard it does not configure (set 2). Unlike Firecracker, zvm keeps
/// the PnP probe: with ACPI it finds the controller (`PNP0303`) in the DSDT, which is how a
/// hardware-reduced ACPI guest, which has no legacy IRQs, gets the keyboard's IRQ; without
/// ACPI it finds nothing and probes the ports directly.
pub const LINUX_ARGS: [&str; 3] = ["i8042.noaux", "i8042.nomux", "i8042.dumbkbd"];
/// The [`LINUX_ARGS`] not already set (to any value) in the command line `args`.
pub fn missing_linux_args(args: &str) -> Vec<String> {
    let given = |switch: &str| {
        args.split_whitespace()
            .any(|w| w == switch || w.strip_prefix(switch).is_some_and(|r| r.starts_with('=')))
    };
    LINUX_ARGS
        .iter()
        .filter(|s| !given(s))
        .map(|s| (*s).to_string())
        .collect()
}

/// The keyboard's interrupt line.
pub const KBD_IRQ: u32 = 1;
/// Offset of the data port (0x60).
pub const DATA_OFFSET: u64 = 0;
/// Offset of the command/status port (0x64) from the data port.
pub const COMMAND_OFFSET: u64 = 4;

/// Status: the output buffer holds a byte for the guest.
const STR_OBF: u8 = 0x01;
/// Status: the system flag (self-test passed).
const STR_SYS: u8 = 0x04;
/// Status: the last write went to the command port.
const STR_CMD: u8 = 0x08;
/// Status: keyboard not inhibited (no key lock).
const STR_UNLOCKED: u8 = 0x10;

/// Command byte: raise IRQ 1 for keyboard bytes.
const CTR_KBDINT: u8 = 0x01;
/// Command byte: the system flag.
const CTR_SYS: u8 = 0x04;
/// Command byte: keyboard interface disabled.
const CTR_KBDDIS: u8 = 0x10;
/// Command byte: mouse interface disabled.
const CTR_AUXDIS: u8 = 0x20;
/// Command byte: translate the keyboard's set-2 scancodes to set 1.
const CTR_XLATE: u8 = 0x40;
/// The command byte at power-on, as Firecracker's: keyboard interrupt on, system flag,
/// no translation (so Linux drives the keyboard directly, in set 2).
const CTR_INITIAL: u8 = CTR_KBDINT | CTR_SYS;

/// Controller commands (written to 0x64).
mod cmd {
    pub const READ_CTR: u8 = 0x20;
    pub const WRITE_CTR: u8 = 0x60;
    pub const AUX_DISABLE: u8 = 0xa7;
    pub const AUX_ENABLE: u8 = 0xa8;
    pub const AUX_TEST: u8 = 0xa9;
    pub const SELF_TEST: u8 = 0xaa;
    pub const KBD_TEST: u8 = 0xab;
    pub const KBD_DISABLE: u8 = 0xad;
    pub const KBD_ENABLE: u8 = 0xae;
    pub const READ_INPUT: u8 = 0xc0;
    pub const READ_OUTPUT: u8 = 0xd0;
    pub const WRITE_OUTPUT: u8 = 0xd1;
    pub const KBD_LOOP: u8 = 0xd2;
    pub const AUX_LOOP: u8 = 0xd3;
    pub const AUX_SEND: u8 = 0xd4;
    pub const RESET_CPU: u8 = 0xfe;
}

/// Controller replies.
const SELF_TEST_OK: u8 = 0x55;
const KBD_TEST_OK: u8 = 0x00;
/// Mouse interface test: "clock line stuck high", i.e. nothing is plugged in there.
const AUX_TEST_ABSENT: u8 = 0x02;

/// Keyboard commands (written to 0x60) and replies.
mod kbd {
    pub const SET_LEDS: u8 = 0xed;
    pub const ECHO: u8 = 0xee;
    pub const SCANCODE_SET: u8 = 0xf0;
    pub const GET_ID: u8 = 0xf2;
    pub const TYPEMATIC: u8 = 0xf3;
    pub const ENABLE: u8 = 0xf4;
    pub const DISABLE: u8 = 0xf5;
    pub const DEFAULTS: u8 = 0xf6;
    pub const RESET: u8 = 0xff;
    pub const ACK: u8 = 0xfa;
    pub const RESEND: u8 = 0xfe;
    pub const BAT_OK: u8 = 0xaa;
    pub const ID_FIRST: u8 = 0xab;
    /// Second ID byte of an MF2 keyboard, and what the controller's translation makes of it.
    pub const ID_SECOND: u8 = 0x83;
    pub const ID_SECOND_TRANSLATED: u8 = 0x41;
}

/// Ctrl-Alt-Del pressed and released, set 2: Ctrl, Alt, Delete (E0 71) down, then up.
const CAD_SET2: &[u8] = &[
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];
/// The same in set 1 (what translation makes of the set-2 sequence).
const CAD_SET1: &[u8] = &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// Most bytes the keyboard holds for the guest (replies and scancodes).
pub const KBD_QUEUE_LEN: usize = 64;

/// Why a key press could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum I8042Error {
    /// The guest has not read the keys queued before.
    #[error("the keyboard buffer is full: the guest is not reading its keyboard")]
    BufferFull,
    /// The guest told the keyboard to stop sending keys.
    #[error("the guest has disabled the keyboard")]
    KeyboardDisabled,
}

/// Where the byte in the output buffer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Controller,
    Keyboard,
}

/// The i8042 controller and its keyboard.
#[derive(Debug)]
pub struct I8042Device {
    reset_evt: EventFd,
    /// IRQ 1 (an irqfd when the VM has an in-kernel irqchip).
    irq: EventFd,
    ctr: u8,
    /// Status bits besides OBF (system flag, last port written).
    status: u8,
    /// The output buffer: what the next data-port read returns.
    out: Option<(u8, Source)>,
    /// Bytes the keyboard has yet to send.
    kbd: VecDeque<u8>,
    /// A controller command waiting for its parameter on the data port.
    cmd_param: Option<u8>,
    /// A keyboard command waiting for its parameter.
    kbd_param: Option<u8>,
    /// The keyboard's scancode set (1 or 2).
    scancode_set: u8,
    /// The keyboard sends keys (disabled by 0xf5, enabled by 0xf4 and reset).
    scanning: bool,
    output_port: u8,
}

/// The controller's and keyboard's registers, as a snapshot saves them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    /// Controller command byte.
    pub ctr: u8,
    /// Status bits besides OBF.
    pub status: u8,
    /// The output buffer's byte, and whether it came from the keyboard.
    pub out: Option<(u8, bool)>,
    /// Keyboard bytes still to send.
    pub kbd: Vec<u8>,
    /// Controller command waiting for its parameter.
    pub cmd_param: Option<u8>,
    /// Keyboard command waiting for its parameter.
    pub kbd_param: Option<u8>,
    /// Scancode set.
    pub scancode_set: u8,
    /// Whether the keyboard is scanning.
    pub scanning: bool,
    /// Output port.
    pub output_port: u8,
}

impl I8042Device {
    /// The device's state for a snapshot.
    pub fn save_state(&self) -> I8042State {
        I8042State {
            ctr: self.ctr,
            status: self.status,
            out: self.out.map(|(b, source)| (b, source == Source::Keyboard)),
            kbd: self.kbd.iter().copied().collect(),
            cmd_param: self.cmd_param,
            kbd_param: self.kbd_param,
            scancode_set: self.scancode_set,
            scanning: self.scanning,
            output_port: self.output_port,
        }
    }

    /// Puts the device in `state`; a keyboard queue longer than the device keeps is refused.
    pub fn restore_state(&mut self, state: &I8042State) -> Result<(), String> {
        if state.kbd.len() > KBD_QUEUE_LEN {
            return Err(format!(
                "{} queued keyboard bytes (at most {KBD_QUEUE_LEN})",
                state.kbd.len()
            ));
        }
        self.ctr = state.ctr;
        self.status = state.status;
        self.out = state.out.map(|(b, kbd)| {
            (
                b,
                if kbd {
                    Source::Keyboard
                } else {
                    Source::Controller
                },
            )
        });
        self.kbd = state.kbd.iter().copied().collect();
        self.cmd_param = state.cmd_param;
        self.kbd_param = state.kbd_param;
        self.scancode_set = state.scancode_set;
        self.scanning = state.scanning;
        self.output_port = state.output_port;
        Ok(())
    }

    /// A controller that writes `reset_evt` on a guest reset request and raises `irq`
    /// (IRQ 1) for keyboard bytes.
    pub fn new(reset_evt: EventFd, irq: EventFd) -> Self {
        I8042Device {
            reset_evt,
            irq,
            ctr: CTR_INITIAL,
            status: STR_SYS,
            out: None,
            kbd: VecDeque::new(),
            cmd_param: None,
            kbd_param: None,
            scancode_set: 2,
            scanning: true,
            // Reset line high (not resetting), A20 on.
            output_port: 0x03,
        }
    }

    /// Queues Ctrl-Alt-Del pressed and released, in the scancodes the guest configured,
    /// and interrupts the guest when it can take the first byte.
    pub fn queue_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        if !self.scanning {
            return Err(I8042Error::KeyboardDisabled);
        }
        let codes = if self.scancode_set == 1 || self.ctr & CTR_XLATE != 0 {
            CAD_SET1
        } else {
            CAD_SET2
        };
        if self.kbd.len() + codes.len() > KBD_QUEUE_LEN {
            return Err(I8042Error::BufferFull);
        }
        tracing::debug!(
            "i8042: Ctrl-Alt-Del, scancode set {}",
            if codes == CAD_SET1 { 1 } else { 2 }
        );
        self.kbd.extend(codes);
        self.refill();
        Ok(())
    }

    /// The status register.
    fn status(&self) -> u8 {
        let obf = if self.out.is_some() { STR_OBF } else { 0 };
        self.status | STR_UNLOCKED | obf
    }

    fn raise_irq(&self) {
        if let Err(e) = self.irq.write(1) {
            tracing::warn!("i8042: cannot raise IRQ 1: {e}");
        }
    }

    fn reset_cpu(&self) {
        tracing::debug!("guest requested a CPU reset through the i8042");
        if let Err(err) = self.reset_evt.write(1) {
            tracing::error!("i8042: cannot signal the reset: {err}");
        }
    }

    /// Moves the keyboard's next byte into an empty output buffer while the keyboard
    /// interface is enabled, with an interrupt if the command byte asks for one.
    fn refill(&mut self) {
        if self.out.is_some() || self.ctr & CTR_KBDDIS != 0 {
            return;
        }
        let Some(byte) = self.kbd.pop_front() else {
            return;
        };
        self.out = Some((byte, Source::Keyboard));
        if self.ctr & CTR_KBDINT != 0 {
            self.raise_irq();
        }
    }

    /// Puts a controller reply in the output buffer; a keyboard byte waiting there goes
    /// back to the keyboard, to follow later.
    fn reply(&mut self, byte: u8) {
        if let Some((pending, Source::Keyboard)) = self.out.take() {
            self.kbd.push_front(pending);
        }
        self.out = Some((byte, Source::Controller));
    }

    /// Bytes from the keyboard, sent as its reply.
    fn keyboard_reply(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.kbd.len() < KBD_QUEUE_LEN {
                self.kbd.push_back(b);
            }
        }
        self.refill();
    }

    fn set_ctr(&mut self, value: u8) {
        self.ctr = value;
        self.status = (self.status & !STR_SYS) | (value & CTR_SYS);
        self.refill();
    }

    fn command(&mut self, command: u8) {
        match command {
            cmd::READ_CTR => self.reply(self.ctr),
            cmd::WRITE_CTR | cmd::WRITE_OUTPUT | cmd::KBD_LOOP | cmd::AUX_LOOP | cmd::AUX_SEND => {
                self.cmd_param = Some(command)
            }
            cmd::AUX_DISABLE => self.ctr |= CTR_AUXDIS,
            cmd::AUX_ENABLE => self.ctr &= !CTR_AUXDIS,
            cmd::AUX_TEST => self.reply(AUX_TEST_ABSENT),
            cmd::SELF_TEST => {
                self.status |= STR_SYS;
                self.reply(SELF_TEST_OK);
            }
            cmd::KBD_TEST => self.reply(KBD_TEST_OK),
            cmd::KBD_DISABLE => self.ctr |= CTR_KBDDIS,
            cmd::KBD_ENABLE => {
                self.ctr &= !CTR_KBDDIS;
                self.refill();
            }
            cmd::READ_INPUT => self.reply(0),
            cmd::READ_OUTPUT => self.reply(self.output_port),
            cmd::RESET_CPU => self.reset_cpu(),
            // 0xf0-0xff pulse the output lines whose bits are 0; bit 0 is the CPU reset.
            c if c & 0xf0 == 0xf0 => {
                if c & 1 == 0 {
                    self.reset_cpu();
                }
            }
            other => tracing::debug!("i8042: ignoring controller command {other:#04x}"),
        }
    }

    fn command_parameter(&mut self, command: u8, value: u8) {
        match command {
            cmd::WRITE_CTR => self.set_ctr(value),
            cmd::WRITE_OUTPUT => {
                self.output_port = value;
                if value & 1 == 0 {
                    self.reset_cpu();
                }
            }
            cmd::KBD_LOOP => self.keyboard_reply(&[value]),
            // No mouse: the loop-back and the byte for it go nowhere.
            _ => tracing::debug!("i8042: no mouse behind the controller; dropping {value:#04x}"),
        }
    }

    /// A byte for the keyboard: a command, or the parameter of the previous one.
    fn keyboard_write(&mut self, byte: u8) {
        if let Some(command) = self.kbd_param.take() {
            let reply = match command {
                kbd::SCANCODE_SET if byte == 0 => {
                    self.keyboard_reply(&[kbd::ACK, self.scancode_set]);
                    return;
                }
                kbd::SCANCODE_SET if byte == 1 || byte == 2 => {
                    self.scancode_set = byte;
                    kbd::ACK
                }
                // Set 3 and nonsense: ask for another value, as a keyboard without set 3.
                kbd::SCANCODE_SET => kbd::RESEND,
                _ => kbd::ACK,
            };
            self.keyboard_reply(&[reply]);
            return;
        }
        // A command makes the keyboard drop what it had not sent yet.
        self.kbd.clear();
        match byte {
            kbd::SET_LEDS | kbd::TYPEMATIC | kbd::SCANCODE_SET => {
                self.kbd_param = Some(byte);
                self.keyboard_reply(&[kbd::ACK]);
            }
            kbd::ECHO => self.keyboard_reply(&[kbd::ECHO]),
            kbd::GET_ID => {
                let second = if self.ctr & CTR_XLATE != 0 {
                    kbd::ID_SECOND_TRANSLATED
                } else {
                    kbd::ID_SECOND
                };
                self.keyboard_reply(&[kbd::ACK, kbd::ID_FIRST, second]);
            }
            kbd::ENABLE => {
                self.scanning = true;
                self.keyboard_reply(&[kbd::ACK]);
            }
            kbd::DISABLE => {
                self.scanning = false;
                self.scancode_set = 2;
                self.keyboard_reply(&[kbd::ACK]);
            }
            kbd::DEFAULTS => {
                self.scancode_set = 2;
                self.keyboard_reply(&[kbd::ACK]);
            }
            kbd::RESET => {
                self.scancode_set = 2;
                self.scanning = true;
                self.keyboard_reply(&[kbd::ACK, kbd::BAT_OK]);
            }
            // The other commands (set 3 key types, resend) need no state here.
            0xf7..=0xfe => self.keyboard_reply(&[kbd::ACK]),
            _ => self.keyboard_reply(&[kbd::RESEND]),
        }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        match offset {
            COMMAND_OFFSET => *first = self.status(),
            DATA_OFFSET => {
                if let Some((byte, _)) = self.out.take() {
                    *first = byte;
                }
                self.refill();
            }
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else { return };
        match offset {
            COMMAND_OFFSET => {
                self.status |= STR_CMD;
                self.cmd_param = None;
                self.command(byte);
            }
            DATA_OFFSET => {
                self.status &= !STR_CMD;
                match self.cmd_param.take() {
                    Some(command) => self.command_parameter(command, byte),
                    None => self.keyboard_write(byte),
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "i8042/tests.rs"]
mod tests;
