//! Relaying a process's stdio: input read in large chunks and handed on, output written to
//! the right descriptor.

use agent_protocol::FD_STDERR;
use std::io::{ErrorKind, Read, Write};

/// Largest chunk read from an input at once (well under the protocol's frame limit).
pub(crate) const CHUNK: usize = 64 * 1024;

/// Reads `reader` in chunks of up to [`CHUNK`] bytes and hands each to `send`, then `None`
/// at end of input (or on a read error, e.g. EIO from a pty whose master closed). Stops early
/// when `send` returns false.
pub(crate) fn pump(reader: &mut dyn Read, mut send: impl FnMut(Option<&[u8]>) -> bool) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !send(Some(&buf[..n])) {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!("input ended with an error: {e}");
                break;
            }
        }
    }
    send(None);
}

/// Where a process's output goes.
pub(crate) struct OutputSink {
    /// fd 1 (and a pty's output).
    pub stdout: Box<dyn Write + Send>,
    /// fd 2.
    pub stderr: Box<dyn Write + Send>,
}

impl OutputSink {
    /// Writes `data` to stdout or stderr by `fd`. A reader that went away is not an error
    /// for the container: the bytes are dropped.
    pub(crate) fn write(&mut self, fd: u8, data: &[u8]) {
        let out = if fd == FD_STDERR {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        if let Err(e) = out.write_all(data).and_then(|()| out.flush()) {
            tracing::debug!("output on fd {fd} dropped: {e}");
        }
    }
}

impl std::fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutputSink")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A cloneable in-memory writer.
    #[derive(Clone, Default)]
    pub(crate) struct Shared(pub Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        pub(crate) fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    #[test]
    fn pump_sends_chunks_then_end_of_input() {
        let data = vec![7u8; CHUNK + 10];
        let mut got: Vec<Option<usize>> = Vec::new();
        pump(&mut &data[..], |c| {
            got.push(c.map(<[u8]>::len));
            true
        });
        assert_eq!(got, [Some(CHUNK), Some(10), None]);
        let mut calls = 0;
        pump(&mut &data[..], |_| {
            calls += 1;
            false
        });
        assert_eq!(calls, 1, "stops when the receiver is gone");
    }

    #[test]
    fn pump_treats_a_read_error_as_end_of_input() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from_raw_os_error(libc::EIO))
            }
        }
        let mut got = Vec::new();
        pump(&mut Broken, |c| {
            got.push(c.is_some());
            true
        });
        assert_eq!(got, [false]);
    }

    #[test]
    fn output_goes_to_its_descriptor_and_a_closed_reader_is_ignored() {
        let (out, err) = (Shared::default(), Shared::default());
        let mut sink = OutputSink {
            stdout: Box::new(out.clone()),
            stderr: Box::new(err.clone()),
        };
        sink.write(1, b"to out ");
        sink.write(2, b"to err");
        sink.write(1, b"again");
        assert_eq!(out.text(), "to out again");
        assert_eq!(err.text(), "to err");
        let (r, w) = super::super::unix::pipe().unwrap();
        drop(r);
        let mut sink = OutputSink {
            stdout: Box::new(w),
            stderr: Box::new(std::io::sink()),
        };
        sink.write(1, b"nobody reads this");
    }
}
