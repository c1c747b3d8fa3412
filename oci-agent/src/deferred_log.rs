//! The agent's log lines, held until the host has its answer.
//!
//! In a VM the agent logs on the serial console, and writing a line there is guest kernel
//! work (the tty layer, then an interrupt per few bytes the UART sends): on hosts where
//! that work is slow, a line costs more than handling many requests. The log writer
//! therefore only appends to a buffer; the agent's loop writes the buffer out once it has
//! sent what it owed the host (answers, events), and before it ends. The buffer is bounded:
//! past [`LIMIT`] bytes a line is written at once, as without the buffer.

use std::io::{self, Write};
use std::sync::Mutex;

/// Most bytes held; a line that would go past it is written at once (after what is held).
pub const LIMIT: usize = 64 * 1024;

/// The held lines (the agent is single-threaded; the lock is never contended).
static HELD: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Appends `line` to `held`, or, when that would pass `limit`, writes `held` and `line`
/// to `out` at once.
fn hold_or_write(held: &mut Vec<u8>, line: &[u8], limit: usize, out: &mut dyn Write) {
    if held.len() + line.len() <= limit {
        held.extend_from_slice(line);
        return;
    }
    let _ = out.write_all(held);
    held.clear();
    let _ = out.write_all(line);
}

/// Writes whatever is held to standard error (the console in a VM).
pub fn flush() {
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if !held.is_empty() {
        let _ = io::stderr().write_all(&held);
        held.clear();
    }
}

/// The `tracing` writer that holds lines until [`flush`].
#[derive(Debug, Default, Clone, Copy)]
pub struct DeferredStderr;

impl Write for DeferredStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        hold_or_write(&mut held, buf, LIMIT, &mut io::stderr());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for DeferredStderr {
    type Writer = DeferredStderr;

    fn make_writer(&'a self) -> Self::Writer {
        DeferredStderr
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_held_up_to_the_limit_then_written_in_order() {
        let (mut held, mut out) = (Vec::new(), Vec::new());
        hold_or_write(&mut held, b"one\n", 10, &mut out);
        hold_or_write(&mut held, b"two\n", 10, &mut out);
        assert_eq!(
            (held.as_slice(), out.as_slice()),
            (&b"one\ntwo\n"[..], &b""[..])
        );
        // Past the limit: what was held, then the line, at once; nothing held after.
        hold_or_write(&mut held, b"three\n", 10, &mut out);
        assert_eq!(out, b"one\ntwo\nthree\n");
        assert!(held.is_empty());
        // A line longer than the limit alone is written at once too.
        hold_or_write(&mut held, b"a very long line\n", 10, &mut out);
        assert!(held.is_empty() && out.ends_with(b"a very long line\n"));
    }
}
