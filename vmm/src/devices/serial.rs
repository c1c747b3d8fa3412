//! The 8250 UART (COM1) on the port-I/O bus, and where its output goes.

use super::EventFdTrigger;
use crate::bus::BusDevice;
use std::fs::File;
use std::io::{self, Write};
use std::time::Instant;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;

/// Where the guest console's bytes go.
pub enum ConsoleSink {
    /// The process's standard output.
    Stdout,
    /// A file (created or truncated).
    File(File),
    /// Discarded.
    Off,
    /// Any writer (tests and embedders).
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for ConsoleSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConsoleSink::Stdout => "Stdout",
            ConsoleSink::File(_) => "File",
            ConsoleSink::Off => "Off",
            ConsoleSink::Writer(_) => "Writer",
        })
    }
}

impl ConsoleSink {
    /// The writer for this sink, optionally prefixing each line with the time since `start`.
    pub fn into_writer(self, timestamps_from: Option<Instant>) -> Box<dyn Write + Send> {
        let inner: Box<dyn Write + Send> = match self {
            ConsoleSink::Stdout => Box::new(io::stdout()),
            ConsoleSink::File(file) => Box::new(file),
            ConsoleSink::Off => Box::new(io::sink()),
            ConsoleSink::Writer(writer) => writer,
        };
        match timestamps_from {
            Some(start) => Box::new(TimestampWriter::new(inner, start)),
            None => inner,
        }
    }
}

/// Prefixes every line with `[zvm +S.UUUUUUs] `, the time since a start instant, so a
/// boot can be timed to any console line the same way for zvm and other VMMs.
pub struct TimestampWriter<W: Write> {
    inner: W,
    start: Instant,
    at_line_start: bool,
}

impl<W: Write> TimestampWriter<W> {
    /// Wraps `inner`, timing from `start`.
    pub fn new(inner: W, start: Instant) -> Self {
        TimestampWriter {
            inner,
            start,
            at_line_start: true,
        }
    }
}

/// Formats the prefix [`TimestampWriter`] puts before a line.
pub fn timestamp_prefix(elapsed: std::time::Duration) -> String {
    format!("[zvm +{:.6}s] ", elapsed.as_secs_f64())
}

impl<W: Write> Write for TimestampWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            if self.at_line_start {
                self.inner
                    .write_all(timestamp_prefix(self.start.elapsed()).as_bytes())?;
                self.at_line_start = false;
            }
            let line_len = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.at_line_start = true;
                    i + 1
                }
                None => rest.len(),
            };
            self.inner.write_all(&rest[..line_len])?;
            rest = &rest[line_len..];
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// COM1: a vm-superio 8250 whose interrupt is an irqfd.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialDevice")
    }
}

/// The UART's registers and unread input, as a snapshot saves them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialDeviceState {
    /// Divisor latch, low and high byte.
    pub baud_divisor: [u8; 2],
    /// Interrupt enable, interrupt identification, line control, line status, modem
    /// control, modem status and scratch registers.
    pub registers: [u8; 7],
    /// Input the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

impl From<&SerialState> for SerialDeviceState {
    fn from(s: &SerialState) -> Self {
        SerialDeviceState {
            baud_divisor: [s.baud_divisor_low, s.baud_divisor_high],
            registers: [
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl From<&SerialDeviceState> for SerialState {
    fn from(s: &SerialDeviceState) -> Self {
        let [ier, iir, lcr, lsr, mcr, msr, scratch] = s.registers;
        SerialState {
            baud_divisor_low: s.baud_divisor[0],
            baud_divisor_high: s.baud_divisor[1],
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            serial: Serial::new(irq, out),
        }
    }

    /// The UART's state for a snapshot.
    pub fn save_state(&self) -> SerialDeviceState {
        SerialDeviceState::from(&self.serial.state())
    }

    /// Puts the UART in `state`, keeping its interrupt line and output.
    pub fn restore_state(&mut self, state: &SerialDeviceState) -> Result<(), String> {
        let irq = self
            .serial
            .interrupt_evt()
            .eventfd()
            .try_clone()
            .map_err(|e| e.to_string())?;
        let spare = irq.try_clone().map_err(|e| e.to_string())?;
        let placeholder = Serial::new(
            EventFdTrigger::new(spare),
            Box::new(io::sink()) as Box<dyn Write + Send>,
        );
        let out = std::mem::replace(&mut self.serial, placeholder).into_writer();
        self.serial = Serial::from_state(
            &SerialState::from(state),
            EventFdTrigger::new(irq),
            NoEvents,
            out,
        )
        .map_err(|e| format!("{e:?}"))?;
        Ok(())
    }

    /// Feeds console input to the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.serial.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(err) => {
                tracing::warn!("serial input dropped: {err:?}");
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset)
            .map(|o| self.serial.read(o))
            .unwrap_or(0xff);
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(err) = self.serial.write(offset, value) {
            tracing::warn!("serial write failed: {err:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn timestamps_prefix_each_line_once() {
        let out = Shared::default();
        let start = Instant::now() - Duration::from_millis(1500);
        let mut w = TimestampWriter::new(out.clone(), start);
        w.write_all(b"hel").expect("write");
        w.write_all(b"lo\nwor").expect("write");
        w.write_all(b"ld\n").expect("write");
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("[zvm +1.5") && lines[0].ends_with("] hello"),
            "{text}"
        );
        assert!(lines[1].ends_with("] world"), "{text}");
    }

    #[test]
    fn guest_bytes_reach_the_sink_and_input_raises_the_irq() {
        let out = Shared::default();
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let mut dev = SerialDevice::new(
            EventFdTrigger::new(irq.try_clone().expect("clone")),
            Box::new(out.clone()),
        );
        for b in b"ok\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().expect("lock").as_slice(), b"ok\n");
        // Enable the received-data interrupt (IER bit 0), then feed input.
        dev.write(1, &[1]);
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert!(irq.read().is_ok(), "input raised the interrupt");
        let mut data = [0u8];
        dev.read(0, &mut data);
        assert_eq!(data, [b'x']);
        dev.read(0x1_0000, &mut data);
        assert_eq!(data, [0xff], "offsets beyond the UART read all ones");
    }

    #[test]
    fn state_round_trips_with_unread_input() {
        let out = Shared::default();
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let mut dev = SerialDevice::new(
            EventFdTrigger::new(irq.try_clone().expect("clone")),
            Box::new(out.clone()),
        );
        dev.write(3, &[0x83]); // LCR: DLAB on
        dev.write(0, &[0x0c]); // divisor low: 9600 baud
        dev.write(3, &[0x03]); // 8N1, DLAB off
        dev.write(1, &[1]); // IER: received data
        dev.write(7, &[0x5a]); // scratch
        dev.enqueue_input(b"ab");
        let state = dev.save_state();
        let irq2 = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let out2 = Shared::default();
        let mut restored = SerialDevice::new(EventFdTrigger::new(irq2), Box::new(out2.clone()));
        restored.restore_state(&state).expect("restore");
        assert_eq!(restored.save_state(), state);
        let mut data = [0u8];
        restored.read(7, &mut data);
        assert_eq!(data, [0x5a]);
        restored.read(0, &mut data);
        assert_eq!(data, [b'a'], "unread input survives");
        restored.write(0, b"z");
        assert_eq!(
            out2.0.lock().expect("lock").as_slice(),
            b"z",
            "output still goes to the device's sink"
        );
        let bad = SerialDeviceState {
            in_buffer: vec![0; 1 << 20],
            ..state
        };
        assert!(
            restored.restore_state(&bad).is_err(),
            "an input buffer beyond the FIFO is refused"
        );
    }
}
