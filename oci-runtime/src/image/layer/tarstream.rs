//! A tar reader whose memory and work are bounded by limits checked before anything is read.
//!
//! The `tar` crate reads GNU long names and PAX extended headers whole into memory, whatever
//! size their header claims, and expands GNU sparse maps of any length before its caller sees
//! the entry; a few compressed bytes can thus make it allocate gigabytes. This reader frames the
//! stream itself (ustar, GNU and PAX, as the crate does) and uses the crate only to decode
//! header fields: extension data is refused above [`MAX_NAME`] or [`MAX_PAX`] bytes, sparse
//! maps above [`MAX_SPARSE_BLOCKS`] blocks, and every header, extension and entry is charged
//! against a budget of stream bytes before its data is read, so an entry claiming a terabyte is
//! refused at its header rather than after decompressing it.

use super::Error;
use std::collections::VecDeque;
use std::io::{self, Read};
use tar::{EntryType, GnuExtSparseHeader, Header, PaxExtensions};

const BLOCK: u64 = 512;
/// GNU long names and long link names larger than this are refused.
pub const MAX_NAME: u64 = 64 << 10;
/// PAX extended headers (per entry or global) larger than this are refused.
pub const MAX_PAX: u64 = 1 << 20;
/// GNU sparse files described by more blocks than this are refused.
pub const MAX_SPARSE_BLOCKS: usize = 1 << 16;

/// One entry: its header (with PAX `uid`/`gid` applied), names and PAX records.
pub struct Entry {
    header: Header,
    path: Vec<u8>,
    link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
    /// The file's size: for a sparse file, holes included.
    size: u64,
}

impl Entry {
    /// The raw header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The path: from a GNU long name, a PAX `path` record or the header, in that order.
    pub fn path_bytes(&self) -> &[u8] {
        &self.path
    }

    /// The link target, if any (GNU long link name, PAX `linkpath`, or the header).
    pub fn link_bytes(&self) -> Option<&[u8]> {
        self.link.as_deref()
    }

    /// PAX records that came with the entry.
    pub fn pax(&self) -> Option<PaxExtensions<'_>> {
        self.pax.as_deref().map(PaxExtensions::new)
    }

    /// The file's size (with holes, for a sparse file).
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Where the current entry's data stands.
enum Data {
    /// Plain: the stored bytes are the file.
    Plain,
    /// Sparse: stored bytes fill these `(offset, length)` blocks; the rest are zeros.
    Sparse {
        blocks: VecDeque<(u64, u64)>,
        pos: u64,
        size: u64,
    },
}

/// Reads tar entries one after the other from a (decompressed) stream.
pub struct TarStream<R> {
    inner: R,
    /// Stored data bytes of the current entry not yet read.
    left: u64,
    /// Padding after them.
    pad: u64,
    data: Data,
    /// Stream bytes charged so far, and the most that may be.
    charged: u64,
    budget: u64,
    done: bool,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Read(io::Error::new(io::ErrorKind::InvalidData, msg.into()))
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn trim_nuls(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

impl<R: Read> TarStream<R> {
    /// A reader of `inner` that refuses to go beyond `budget` stream bytes (headers, extension
    /// data and entry data with their padding; a sparse file counts its holes too).
    pub fn new(inner: R, budget: u64) -> Self {
        Self {
            inner,
            left: 0,
            pad: 0,
            data: Data::Plain,
            charged: 0,
            budget,
            done: false,
        }
    }

    /// Stream bytes charged so far.
    pub fn charged(&self) -> u64 {
        self.charged
    }

    fn charge(&mut self, bytes: u64, what: impl FnOnce() -> String) -> Result<(), Error> {
        match self.charged.checked_add(bytes) {
            Some(n) if n <= self.budget => {
                self.charged = n;
                Ok(())
            }
            _ => Err(Error::Limit {
                what: what(),
                limit: format!("{} bytes of layer content", self.budget),
            }),
        }
    }

    /// Reads one 512-byte block; `None` at a clean end of stream.
    fn block(&mut self) -> Result<Option<[u8; 512]>, Error> {
        let mut b = [0u8; 512];
        let mut n = 0;
        while n < b.len() {
            match self.inner.read(&mut b[n..]) {
                Ok(0) if n == 0 => return Ok(None),
                Ok(0) => return Err(bad("truncated tar header")),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Read(e)),
            }
        }
        Ok(Some(b))
    }

    /// Skips `n` bytes of the stream.
    fn skip(&mut self, n: u64) -> Result<(), Error> {
        let copied =
            io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(Error::Read)?;
        if copied < n {
            return Err(Error::Read(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    /// Reads an extension's data (at most `max` bytes) and its padding.
    fn extension(&mut self, size: u64, max: u64, what: &str) -> Result<Vec<u8>, Error> {
        if size > max {
            return Err(Error::Limit {
                what: format!("a {what} of {size} bytes"),
                limit: format!("{max} bytes"),
            });
        }
        self.charge(size + padding(size), || format!("a {what} of {size} bytes"))?;
        let mut v = Vec::with_capacity(size as usize);
        (&mut self.inner)
            .take(size)
            .read_to_end(&mut v)
            .map_err(Error::Read)?;
        if (v.len() as u64) < size {
            return Err(Error::Read(io::ErrorKind::UnexpectedEof.into()));
        }
        self.skip(padding(size))?;
        Ok(v)
    }

    /// The next entry, after skipping what is left of the current one; `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, Error> {
        let rest = self.left + self.pad;
        self.left = 0;
        self.pad = 0;
        self.data = Data::Plain;
        self.skip(rest)?;
        if self.done {
            return Ok(None);
        }
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        loop {
            let pending = long_name.is_some() || long_link.is_some() || pax.is_some();
            let block = match self.block()? {
                Some(b) if b.iter().any(|&x| x != 0) => b,
                _ if pending => return Err(bad("extension headers with no entry after them")),
                _ => {
                    self.done = true;
                    return Ok(None);
                }
            };
            self.charge(BLOCK, || "one more tar header".into())?;
            let mut header = Header::new_old();
            header.as_mut_bytes().copy_from_slice(&block);
            let sum = block[..148]
                .iter()
                .chain(&block[156..])
                .fold(8 * 32u32, |a, &b| a + u32::from(b));
            if header.cksum().map_err(Error::Read)? != sum {
                return Err(bad("tar header checksum mismatch"));
            }
            let size = header.entry_size().map_err(Error::Read)?;
            let dup = |slot: &Option<Vec<u8>>, what: &str| match slot {
                Some(_) => Err(bad(format!("two {what} headers for one entry"))),
                None => Ok(()),
            };
            match header.entry_type() {
                EntryType::GNULongName => {
                    dup(&long_name, "GNU long name")?;
                    let v = self.extension(size, MAX_NAME, "GNU long name")?;
                    long_name = Some(trim_nuls(v));
                }
                EntryType::GNULongLink => {
                    dup(&long_link, "GNU long link name")?;
                    let v = self.extension(size, MAX_NAME, "GNU long link name")?;
                    long_link = Some(trim_nuls(v));
                }
                EntryType::XHeader => {
                    dup(&pax, "PAX extended")?;
                    pax = Some(self.extension(size, MAX_PAX, "PAX extended header")?);
                }
                EntryType::XGlobalHeader => {
                    self.extension(size, MAX_PAX, "PAX global header")?;
                }
                _ => {
                    return self
                        .entry(header, size, long_name, long_link, pax)
                        .map(Some)
                }
            }
        }
    }

    fn entry(
        &mut self,
        mut header: Header,
        stored: u64,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
        pax: Option<Vec<u8>>,
    ) -> Result<Entry, Error> {
        let mut stored = stored;
        let mut pax_path = None;
        let mut pax_link = None;
        if let Some(records) = &pax {
            for r in PaxExtensions::new(records) {
                let r = r.map_err(Error::Read)?;
                let number = || {
                    std::str::from_utf8(r.value_bytes())
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| {
                            bad(format!(
                                "PAX record `{}` is not a number",
                                r.key().unwrap_or("?")
                            ))
                        })
                };
                match r.key_bytes() {
                    b"size" => stored = number()?,
                    b"uid" => header.set_uid(number()?),
                    b"gid" => header.set_gid(number()?),
                    b"path" => pax_path = Some(r.value_bytes().to_vec()),
                    b"linkpath" => pax_link = Some(r.value_bytes().to_vec()),
                    _ => {}
                }
            }
        }
        let path = long_name
            .or(pax_path)
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let link = long_link
            .or(pax_link)
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let shown = String::from_utf8_lossy(&path).into_owned();
        let mut size = stored;
        if header.entry_type() == EntryType::GNUSparse {
            let (blocks, real) = self.sparse_map(&header, stored)?;
            size = real;
            self.data = Data::Sparse {
                blocks,
                pos: 0,
                size: real,
            };
        }
        // A sparse file's holes are written out as zeros: they count as well.
        let cost = stored
            .checked_add(padding(stored))
            .and_then(|n| n.checked_add(size - stored.min(size)))
            .unwrap_or(u64::MAX);
        self.charge(cost, || format!("entry `{shown}` of {size} bytes"))?;
        self.left = stored;
        self.pad = padding(stored);
        Ok(Entry {
            header,
            path,
            link,
            pax,
            size,
        })
    }

    /// Reads a GNU sparse map (in the header and extension blocks after it) and checks it: the
    /// blocks in order, inside the file, their lengths adding up to the stored data.
    fn sparse_map(
        &mut self,
        header: &Header,
        stored: u64,
    ) -> Result<(VecDeque<(u64, u64)>, u64), Error> {
        let gnu = header
            .as_gnu()
            .ok_or_else(|| bad("sparse entry without a GNU header"))?;
        let real = gnu.real_size().map_err(Error::Read)?;
        let mut raw = Vec::new();
        for b in gnu.sparse.iter().filter(|b| !b.is_empty()) {
            raw.push((
                b.offset().map_err(Error::Read)?,
                b.length().map_err(Error::Read)?,
            ));
        }
        let mut extended = gnu.is_extended();
        while extended {
            let block = self
                .block()?
                .ok_or_else(|| bad("truncated GNU sparse map"))?;
            self.charge(BLOCK, || "a GNU sparse map block".into())?;
            let mut ext = GnuExtSparseHeader::new();
            ext.as_mut_bytes().copy_from_slice(&block);
            for b in ext.sparse.iter().filter(|b| !b.is_empty()) {
                raw.push((
                    b.offset().map_err(Error::Read)?,
                    b.length().map_err(Error::Read)?,
                ));
            }
            if raw.len() > MAX_SPARSE_BLOCKS {
                return Err(Error::Limit {
                    what: "a GNU sparse file's map".into(),
                    limit: format!("{MAX_SPARSE_BLOCKS} blocks"),
                });
            }
            extended = ext.is_extended();
        }
        let mut end = 0u64;
        let mut total = 0u64;
        for &(off, len) in &raw {
            let stop = off.checked_add(len).filter(|&s| off >= end && s <= real);
            end = stop.ok_or_else(|| bad("GNU sparse map out of order or beyond the file"))?;
            total = total.saturating_add(len);
        }
        if total != stored {
            return Err(bad(format!(
                "GNU sparse map lists {total} bytes, the entry stores {stored}"
            )));
        }
        Ok((raw.into(), real))
    }

    /// A reader of the current entry's contents (holes of a sparse file read as zeros).
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { s: self }
    }
}

/// The contents of the current entry of a [`TarStream`].
pub struct EntryData<'a, R> {
    s: &'a mut TarStream<R>,
}

impl<R: Read> EntryData<'_, R> {
    fn stored(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.s.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.s.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.s.left -= n as u64;
        Ok(n)
    }
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (pos, size, next) = match &mut self.s.data {
            Data::Plain => return self.stored(buf),
            Data::Sparse { blocks, pos, size } => {
                while blocks.front().is_some_and(|&(o, l)| *pos >= o + l) {
                    blocks.pop_front();
                }
                (*pos, *size, blocks.front().copied())
            }
        };
        let zeros = |n: u64, buf: &mut [u8]| {
            let n = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            buf[..n].fill(0);
            n
        };
        let n = match next {
            Some((off, _)) if pos < off => zeros(off - pos, buf),
            Some((off, len)) => {
                let room = usize::try_from(off + len - pos).unwrap_or(usize::MAX);
                let k = buf.len().min(room);
                self.stored(&mut buf[..k])?
            }
            None => zeros(size - pos, buf),
        };
        if let Data::Sparse { pos, .. } = &mut self.s.data {
            *pos += n as u64;
        }
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header(name: &str, kind: EntryType, size: u64) -> Vec<u8> {
        let mut h = Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn pax(records: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = format!(" {k}={v}\n");
            let mut len = rest.len() + 1;
            while format!("{len}{rest}").len() != len {
                len += 1;
            }
            body.extend(format!("{len}{rest}").bytes());
        }
        let mut out = header("pax", EntryType::XHeader, body.len() as u64);
        let padded = body.len().div_ceil(512) * 512;
        body.resize(padded, 0);
        out.extend(body);
        out
    }

    fn entries(tar: &[u8], budget: u64) -> Result<Vec<(String, u64, Vec<u8>)>, Error> {
        let mut s = TarStream::new(tar, budget);
        let mut out = Vec::new();
        while let Some(e) = s.next_entry()? {
            let mut data = Vec::new();
            s.data().read_to_end(&mut data).map_err(Error::Read)?;
            let path = String::from_utf8_lossy(e.path_bytes()).into_owned();
            out.push((path, e.size(), data));
        }
        Ok(out)
    }

    #[test]
    fn pax_records_override_path_size_and_owner() {
        let mut tar = pax(&[("path", "long/pax/name"), ("size", "3"), ("uid", "77")]);
        tar.extend(header("short", EntryType::Regular, 0));
        let mut data = b"abc".to_vec();
        data.resize(512, 0);
        tar.extend(data);
        tar.extend(header("next", EntryType::Regular, 0));
        tar.extend([0u8; 1024]);
        let got = entries(&tar, u64::MAX).unwrap();
        assert_eq!(got[0], ("long/pax/name".into(), 3, b"abc".to_vec()));
        assert_eq!(got[1].0, "next");
        let mut s = TarStream::new(&tar[..], u64::MAX);
        assert_eq!(s.next_entry().unwrap().unwrap().header().uid().unwrap(), 77);
    }

    #[test]
    fn malformed_framing_is_an_error() {
        // Extension headers with nothing after them.
        let tar = pax(&[("path", "x")]);
        let e = entries(&tar, u64::MAX).unwrap_err().to_string();
        assert!(e.contains("no entry after them"), "{e}");
        // Two long names for one entry.
        let mut tar = header("././@LongLink", EntryType::GNULongName, 1);
        tar.extend([b'a'; 512]);
        tar.extend(header("././@LongLink", EntryType::GNULongName, 1));
        tar.extend([b'b'; 512]);
        let e = entries(&tar, u64::MAX).unwrap_err().to_string();
        assert!(e.contains("two GNU long name headers"), "{e}");
        // A flipped byte in a header.
        let mut tar = header("f", EntryType::Regular, 0);
        tar[0] ^= 1;
        let e = entries(&tar, u64::MAX).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        // Contents cut short.
        let mut tar = header("f", EntryType::Regular, 1000);
        tar.extend([1u8; 100]);
        assert!(matches!(entries(&tar, u64::MAX), Err(Error::Read(_))));
        // A PAX size that is not a number.
        let mut tar = pax(&[("size", "-1")]);
        tar.extend(header("f", EntryType::Regular, 0));
        let e = entries(&tar, u64::MAX).unwrap_err().to_string();
        assert!(e.contains("PAX record `size` is not a number"), "{e}");
    }

    #[test]
    fn the_budget_is_charged_before_reading() {
        let mut tar = header("f", EntryType::Regular, 1 << 40);
        tar.extend([0u8; 512]);
        let e = entries(&tar, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("entry `f` of 1099511627776 bytes"), "{e}");
        // Exactly at the budget is fine: header, 512 bytes, end.
        let mut tar = header("f", EntryType::Regular, 512);
        tar.extend([7u8; 512]);
        tar.extend([0u8; 1024]);
        assert_eq!(entries(&tar, 1024).unwrap().len(), 1);
        assert!(entries(&tar, 1023).is_err());
    }
}
