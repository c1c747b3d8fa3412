//! i8042 tests: Linux's probe sequence, keyboard commands, Ctrl-Alt-Del scancodes, IRQs.

use super::*;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

struct Fixture {
    dev: I8042Device,
    reset: EventFd,
    irq: EventFd,
}

impl Fixture {
    fn new() -> Fixture {
        let reset = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let dev = I8042Device::new(
            reset.try_clone().expect("clone"),
            irq.try_clone().expect("clone"),
        );
        Fixture { dev, reset, irq }
    }

    fn status(&mut self) -> u8 {
        let mut b = [0u8];
        self.dev.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    fn data(&mut self) -> u8 {
        let mut b = [0u8];
        self.dev.read(DATA_OFFSET, &mut b);
        b[0]
    }

    /// Linux's `i8042_command`: wait for an empty input buffer, write the command and
    /// its parameters, then read `replies` bytes, each after OBF is set.
    fn command(&mut self, command: u8, params: &[u8], replies: usize) -> Vec<u8> {
        assert_eq!(self.status() & 0x02, 0, "input buffer empty");
        self.dev.write(COMMAND_OFFSET, &[command]);
        for &p in params {
            self.dev.write(DATA_OFFSET, &[p]);
        }
        (0..replies)
            .map(|_| {
                assert_ne!(
                    self.status() & STR_OBF,
                    0,
                    "a reply to {command:#x} is waiting"
                );
                self.data()
            })
            .collect()
    }

    /// Linux's `i8042_flush`: read while OBF is set; returns what was read.
    fn flush(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.status() & STR_OBF != 0 {
            assert!(out.len() < 16, "the buffer drains");
            out.push(self.data());
        }
        out
    }

    /// What the interrupt handler sees: for each IRQ, one byte.
    fn drain_with_irqs(&mut self) -> Vec<u8> {
        let mut bytes = Vec::new();
        while self.irq.read().is_ok() {
            assert_ne!(self.status() & STR_OBF, 0, "an IRQ comes with data");
            bytes.push(self.data());
        }
        bytes
    }

    /// The probe sequence of Linux 6.1's i8042 driver, up to an enabled keyboard port.
    fn linux_probe(&mut self) -> u8 {
        assert!(
            self.flush().is_empty(),
            "controller check: nothing pending, status is not 0xff"
        );
        assert_ne!(self.status(), 0xff);
        assert_eq!(self.command(cmd::SELF_TEST, &[], 1), [SELF_TEST_OK]);
        let ctr = self.command(cmd::READ_CTR, &[], 1)[0];
        assert_eq!(self.command(cmd::READ_CTR, &[], 1), [ctr], "a stable CTR");
        assert_ne!(self.status() & STR_UNLOCKED, 0, "no key lock");
        // Keyboard off while setting up; an untranslated controller stays so.
        let mut ctr = (ctr | CTR_KBDDIS) & !CTR_KBDINT;
        self.command(cmd::WRITE_CTR, &[ctr], 0);
        self.flush();
        assert_eq!(self.command(cmd::KBD_TEST, &[], 1), [KBD_TEST_OK]);
        // i8042_enable_kbd_port.
        ctr = (ctr & !CTR_KBDDIS) | CTR_KBDINT;
        self.command(cmd::WRITE_CTR, &[ctr], 0);
        assert_eq!(self.command(cmd::READ_CTR, &[], 1), [ctr]);
        ctr
    }
}

#[test]
fn linux_probe_sequence_succeeds() {
    let mut f = Fixture::new();
    let ctr = f.linux_probe();
    assert_eq!(
        ctr & CTR_XLATE,
        0,
        "starts untranslated, so Linux uses set 2 directly"
    );
    assert_ne!(f.status() & STR_SYS, 0);
    assert_eq!(
        f.command(cmd::AUX_TEST, &[], 1),
        [AUX_TEST_ABSENT],
        "no mouse"
    );
    assert!(
        f.irq.read().is_err(),
        "controller replies raise no interrupt"
    );
    assert!(f.reset.read().is_err());
}

#[test]
fn keyboard_commands_are_acked_through_the_interrupt() {
    let mut f = Fixture::new();
    f.linux_probe();
    // atkbd_probe: GETID, then reset and LEDs.
    f.dev.write(DATA_OFFSET, &[kbd::GET_ID]);
    assert_eq!(
        f.drain_with_irqs(),
        [kbd::ACK, kbd::ID_FIRST, kbd::ID_SECOND]
    );
    f.dev.write(DATA_OFFSET, &[kbd::RESET]);
    assert_eq!(f.drain_with_irqs(), [kbd::ACK, kbd::BAT_OK]);
    f.dev.write(DATA_OFFSET, &[kbd::SET_LEDS]);
    f.dev.write(DATA_OFFSET, &[0x07]);
    assert_eq!(f.drain_with_irqs(), [kbd::ACK, kbd::ACK]);
    f.dev.write(DATA_OFFSET, &[kbd::SCANCODE_SET]);
    f.dev.write(DATA_OFFSET, &[0]);
    assert_eq!(
        f.drain_with_irqs(),
        [kbd::ACK, kbd::ACK, 2],
        "reports set 2"
    );
    f.dev.write(DATA_OFFSET, &[kbd::SCANCODE_SET]);
    f.dev.write(DATA_OFFSET, &[3]);
    assert_eq!(f.drain_with_irqs(), [kbd::ACK, kbd::RESEND], "no set 3");
    f.dev.write(DATA_OFFSET, &[kbd::ECHO]);
    assert_eq!(f.drain_with_irqs(), [kbd::ECHO]);
    f.dev.write(DATA_OFFSET, &[0x12]);
    assert_eq!(f.drain_with_irqs(), [kbd::RESEND], "not a command");
    f.dev.write(DATA_OFFSET, &[kbd::ENABLE]);
    assert_eq!(f.drain_with_irqs(), [kbd::ACK]);
}

#[test]
fn ctrl_alt_del_is_delivered_in_set_2_one_byte_per_interrupt() {
    let mut f = Fixture::new();
    f.linux_probe();
    f.dev.queue_ctrl_alt_del().expect("queued");
    assert_eq!(f.drain_with_irqs(), CAD_SET2);
    assert_eq!(f.status() & STR_OBF, 0, "all read");
    assert!(f.irq.read().is_err(), "no interrupt left over");
}

#[test]
fn ctrl_alt_del_follows_set_1_and_translation() {
    let mut f = Fixture::new();
    f.linux_probe();
    f.dev.write(DATA_OFFSET, &[kbd::SCANCODE_SET]);
    f.dev.write(DATA_OFFSET, &[1]);
    assert_eq!(f.drain_with_irqs(), [kbd::ACK, kbd::ACK]);
    f.dev.queue_ctrl_alt_del().expect("queued");
    assert_eq!(f.drain_with_irqs(), CAD_SET1);

    let mut f = Fixture::new();
    let ctr = f.linux_probe();
    f.command(cmd::WRITE_CTR, &[ctr | CTR_XLATE], 0);
    f.dev.write(DATA_OFFSET, &[kbd::GET_ID]);
    assert_eq!(
        f.drain_with_irqs(),
        [kbd::ACK, kbd::ID_FIRST, kbd::ID_SECOND_TRANSLATED]
    );
    f.dev.queue_ctrl_alt_del().expect("queued");
    assert_eq!(
        f.drain_with_irqs(),
        CAD_SET1,
        "translated to set 1 by the controller"
    );
}

#[test]
fn keys_wait_while_the_interface_is_disabled_and_irqs_follow_the_command_byte() {
    let mut f = Fixture::new();
    let ctr = f.linux_probe();
    f.command(cmd::KBD_DISABLE, &[], 0);
    f.dev.queue_ctrl_alt_del().expect("queued");
    assert_eq!(f.status() & STR_OBF, 0, "held by the keyboard");
    assert!(f.irq.read().is_err());
    f.command(cmd::KBD_ENABLE, &[], 0);
    assert_eq!(f.drain_with_irqs(), CAD_SET2);

    // Interrupt off: the guest polls.
    f.command(cmd::WRITE_CTR, &[ctr & !CTR_KBDINT], 0);
    f.dev.queue_ctrl_alt_del().expect("queued");
    assert!(f.irq.read().is_err(), "no interrupt");
    assert_eq!(f.flush(), CAD_SET2);
}

#[test]
fn a_controller_reply_does_not_lose_a_pending_key() {
    let mut f = Fixture::new();
    f.linux_probe();
    f.dev.queue_ctrl_alt_del().expect("queued");
    assert_eq!(f.irq.read().expect("irq"), 1);
    assert_eq!(f.command(cmd::READ_CTR, &[], 1).len(), 1);
    let mut rest = Vec::new();
    while f.status() & STR_OBF != 0 {
        rest.push(f.data());
    }
    assert_eq!(rest, CAD_SET2, "the key byte waited behind the reply");
}

#[test]
fn a_full_or_disabled_keyboard_refuses_keys() {
    let mut f = Fixture::new();
    f.linux_probe();
    f.dev.write(DATA_OFFSET, &[kbd::DISABLE]);
    assert_eq!(f.drain_with_irqs(), [kbd::ACK]);
    assert_eq!(
        f.dev.queue_ctrl_alt_del(),
        Err(I8042Error::KeyboardDisabled)
    );
    f.dev.write(DATA_OFFSET, &[kbd::ENABLE]);
    assert_eq!(f.drain_with_irqs(), [kbd::ACK]);
    let mut queued = 0;
    while f.dev.queue_ctrl_alt_del().is_ok() {
        queued += 1;
        assert!(queued < 100, "the queue is bounded");
    }
    assert_eq!(f.dev.queue_ctrl_alt_del(), Err(I8042Error::BufferFull));
    assert!(queued >= 4);
}

#[test]
fn reset_requests_signal_the_event() {
    let mut f = Fixture::new();
    assert_eq!(
        f.status() & (STR_OBF | 0x02),
        0,
        "input buffer empty so Linux proceeds"
    );
    f.dev.write(DATA_OFFSET, &[cmd::RESET_CPU]);
    assert!(f.reset.read().is_err(), "a data-port write is not a reset");
    f.dev.write(COMMAND_OFFSET, &[0xff]);
    assert!(f.reset.read().is_err(), "0xff pulses no line");
    f.dev.write(COMMAND_OFFSET, &[cmd::RESET_CPU]);
    assert_eq!(f.reset.read().expect("reset signalled"), 1);
    f.command(cmd::WRITE_OUTPUT, &[0x02], 0);
    assert_eq!(f.reset.read().expect("output port reset line low"), 1);
    assert_eq!(f.command(cmd::READ_OUTPUT, &[], 1), [0x02]);
}

#[test]
fn kernel_switches_the_guest_set_itself_are_kept() {
    assert_eq!(missing_linux_args("console=ttyS0"), LINUX_ARGS);
    assert_eq!(
        missing_linux_args("i8042.dumbkbd=0 i8042.noaux i8042.nomuxx"),
        ["i8042.nomux"]
    );
}

#[test]
fn odd_accesses_are_harmless() {
    let mut f = Fixture::new();
    let mut empty: [u8; 0] = [];
    f.dev.read(DATA_OFFSET, &mut empty);
    f.dev.write(COMMAND_OFFSET, &[]);
    let mut wide = [0xffu8; 4];
    f.dev.read(2, &mut wide);
    assert_eq!(wide, [0; 4]);
    assert_eq!(f.data(), 0, "an empty buffer reads 0");
    f.dev.write(COMMAND_OFFSET, &[0x42]);
    f.command(cmd::AUX_LOOP, &[0x5a], 0);
    assert_eq!(f.status() & STR_OBF, 0, "no mouse echoes the loop-back");
    f.command(cmd::KBD_LOOP, &[0x99], 0);
    assert_eq!(
        f.drain_with_irqs(),
        [0x99],
        "keyboard loop-back arrives as keyboard data"
    );
}

#[test]
fn state_round_trips_mid_ctrl_alt_del() {
    let mut f = Fixture::new();
    f.linux_probe();
    f.dev.queue_ctrl_alt_del().expect("keys");
    let state = f.dev.save_state();
    let mut g = Fixture::new();
    g.dev.restore_state(&state).expect("restore");
    assert_eq!(g.dev.save_state(), state);
    let sent = f.flush();
    assert_eq!(sent.len(), 11, "set 2 make and break codes: {sent:?}");
    assert_eq!(
        g.flush(),
        sent,
        "the restored keyboard sends the same bytes"
    );
    let too_long = I8042State {
        kbd: vec![0; KBD_QUEUE_LEN + 1],
        ..state
    };
    assert!(g.dev.restore_state(&too_long).is_err());
}
