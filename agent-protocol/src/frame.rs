//! Length-prefixed JSON frames: `u32` big-endian length, then the JSON payload.

use std::io::{ErrorKind, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{ProtocolError, Result, MAX_FRAME_LEN};

const HEADER: usize = 4;

/// Encodes `msg` as one complete frame (header + JSON), ready to be written in one call.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; HEADER];
    serde_json::to_writer(&mut buf, msg)?;
    let len = buf.len() - HEADER;
    if len > MAX_FRAME_LEN as usize {
        return Err(ProtocolError::FrameTooLarge {
            len: len as u64,
            max: MAX_FRAME_LEN,
        });
    }
    // `len` fits: it is at most MAX_FRAME_LEN, a u32.
    buf[..HEADER].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Writes `msg` as one frame with a single `write_all` (one system call for small frames).
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    let buf = encode_frame(msg)?;
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame and decodes its JSON as `T`.
///
/// A clean end of stream before the first header byte is [`ProtocolError::Closed`]; an end
/// anywhere else is [`ProtocolError::Truncated`]. A length above [`MAX_FRAME_LEN`] is refused
/// before any payload buffer is allocated. Wrap unbuffered readers in a `BufReader` to read a
/// frame in one system call.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T> {
    let mut header = [0u8; HEADER];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Err(ProtocolError::Closed);
    }
    if got < HEADER {
        return Err(ProtocolError::Truncated {
            expected: HEADER,
            got,
        });
    }
    let len = check_len(u32::from_be_bytes(header))?;
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload)?;
    if got < len {
        return Err(ProtocolError::Truncated { expected: len, got });
    }
    Ok(serde_json::from_slice(&payload)?)
}

fn check_len(len: u32) -> Result<usize> {
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge {
            len: u64::from(len),
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len as usize)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// Incremental frame decoder for event loops: feed it whatever a (non-blocking) read returned,
/// then take complete frames out. It never blocks and never allocates more than one frame's
/// announced length, which is checked against [`MAX_FRAME_LEN`] as soon as the header is in.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    start: usize,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Takes the next complete frame, if one is buffered, decoded as `T`.
    ///
    /// Errors are final: after [`ProtocolError::FrameTooLarge`] or a JSON error the stream is out
    /// of sync (JSON errors do consume the bad frame, so a caller may choose to go on).
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER {
            return Ok(None);
        }
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&avail[..HEADER]);
        let len = check_len(u32::from_be_bytes(header))?;
        if avail.len() < HEADER + len {
            return Ok(None);
        }
        let payload = &avail[HEADER..HEADER + len];
        self.start += HEADER + len;
        let msg = serde_json::from_slice(payload);
        self.compact();
        Ok(Some(msg?))
    }

    /// Checks the end of the stream: buffered bytes that are not a whole frame are a truncation.
    pub fn finish(&self) -> Result<()> {
        let avail = &self.buf[self.start..];
        if avail.is_empty() {
            return Ok(());
        }
        let expected = if avail.len() < HEADER {
            HEADER
        } else {
            let mut header = [0u8; HEADER];
            header.copy_from_slice(&avail[..HEADER]);
            HEADER + u32::from_be_bytes(header) as usize
        };
        Err(ProtocolError::Truncated {
            expected,
            got: avail.len(),
        })
    }

    fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}
