//! The state file: a header, the bincode-encoded [`MicrovmState`], and a CRC32 of both.
//!
//! ```text
//! 0   8  magic "ZVMSNAP\0"
//! 8   4  format version (u32 LE)
//! 12  8  payload length (u64 LE)
//! 20  n  payload
//! 20+n 4 CRC32 (IEEE) of bytes 0 .. 20+n (u32 LE)
//! ```
//!
//! A file of another version, a wrong checksum, a truncated or oversized file, or a
//! payload that does not decode is refused before anything is built from it.

use super::{MicrovmState, SnapshotError};
use bincode::Options;
use std::io::Write;
use std::path::Path;

/// The first bytes of every state file.
pub const MAGIC: [u8; 8] = *b"ZVMSNAP\0";
/// The format this zvm writes and reads. Bump it whenever [`MicrovmState`] or any state
/// struct in it changes shape (bincode is not self-describing: an old payload would not
/// decode, or decode wrongly).
///
/// 2: each virtio device's state holds its configuration space and ConfigGeneration.
/// 3: and the device's own state, if it has one (virtio-fs).
/// 4: a virtio-fs device's state carries its backend's (virtiofsd's) state.
/// 5: the devices' state ends with zvm's IOAPIC's (VMs with a split irqchip). Format 4
///    files are still read: their payload is format 5's without that last field, which
///    decodes as absent (their VMs have KVM's irqchip) once a zero byte is appended.
pub const FORMAT_VERSION: u32 = 5;
/// The oldest format this zvm reads ([`FORMAT_VERSION`] - 1).
pub const OLDEST_FORMAT_VERSION: u32 = 4;
/// The largest payload zvm reads (a VM's state is a few KiB per vCPU and device, plus up
/// to 16 MiB of backend state per virtio-fs share the guest used).
pub const MAX_PAYLOAD: u64 = 64 << 20;
const HEADER: usize = 20;

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_PAYLOAD)
        .reject_trailing_bytes()
}

/// Encodes `state` as a state file's bytes.
pub fn encode(state: &MicrovmState) -> Result<Vec<u8>, String> {
    let payload = codec().serialize(state).map_err(|e| e.to_string())?;
    let mut bytes = Vec::with_capacity(HEADER + payload.len() + 4);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    Ok(bytes)
}

/// Decodes a state file's bytes, checking magic, version, length and checksum first.
pub fn decode(bytes: &[u8]) -> Result<MicrovmState, String> {
    if bytes.len() < HEADER + 4 {
        return Err(format!(
            "truncated: {} bytes is shorter than the header",
            bytes.len()
        ));
    }
    if bytes[..8] != MAGIC {
        return Err("not a zvm snapshot state file (bad magic)".into());
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(format!(
            "format version {version}, but this zvm reads versions \
             {OLDEST_FORMAT_VERSION}-{FORMAT_VERSION} only (take the snapshot again with \
             this zvm)"
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let len = u64::from_le_bytes(len);
    if len > MAX_PAYLOAD {
        return Err(format!(
            "payload of {len} bytes is larger than the {MAX_PAYLOAD} zvm reads"
        ));
    }
    let expected = HEADER as u64 + len + 4;
    if bytes.len() as u64 != expected {
        return Err(format!(
            "{} bytes where the header says {expected} (truncated or extended)",
            bytes.len()
        ));
    }
    let body = bytes.len() - 4;
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[body..]);
    if crc32fast::hash(&bytes[..body]) != u32::from_le_bytes(crc) {
        return Err("checksum mismatch: the file is corrupt".into());
    }
    let decoded = if version == FORMAT_VERSION {
        codec().deserialize(&bytes[HEADER..body])
    } else {
        // Format 4: no IOAPIC state at the end (`None` is one zero byte).
        let mut payload = bytes[HEADER..body].to_vec();
        payload.push(0);
        codec().deserialize(&payload)
    };
    decoded.map_err(|e| format!("cannot decode the state: {e}"))
}

/// Writes the state file atomically (a temporary file beside it, synced, then renamed);
/// returns its size.
pub fn write_state_file(path: &Path, state: &MicrovmState) -> Result<u64, SnapshotError> {
    let bytes = encode(state).map_err(|reason| SnapshotError::BadStateFile {
        path: path.to_path_buf(),
        reason,
    })?;
    let io = |what| {
        move |source| SnapshotError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let tmp = temporary_beside(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io("create"))?;
        f.write_all(&bytes).map_err(io("write"))?;
        f.sync_all().map_err(io("sync"))?;
        std::fs::rename(&tmp, path).map_err(io("rename into"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| bytes.len() as u64)
}

/// Reads and checks a state file (at most [`MAX_PAYLOAD`] and its header are read).
pub fn read_state_file(path: &Path) -> Result<MicrovmState, SnapshotError> {
    use std::io::Read;
    let bad = |reason: String| SnapshotError::BadStateFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_PAYLOAD + HEADER as u64 + 5)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    decode(&bytes).map_err(bad)
}

/// `PATH.tmp-PID`, beside `path`.
pub(crate) fn temporary_beside(path: &Path) -> std::path::PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::state::VmState;

    fn state() -> MicrovmState {
        let mut resources = crate::VmResources::new("/k");
        // Optional fields that serialize to nothing when absent, and some that are present.
        resources.drives.push(crate::resources::DriveConfig {
            drive_id: "root".into(),
            path_on_host: "/disk".into(),
            is_root_device: true,
            is_read_only: false,
            rate_limiter: None,
            io_engine: Default::default(),
        });
        resources.vsock = Some(crate::resources::VsockConfig {
            guest_cid: 3,
            uds_path: "/v.sock".into(),
        });
        MicrovmState {
            resources,
            track_dirty_pages: true,
            vm: VmState {
                irqchips: Vec::new(),
                pit: None,
                clock: Default::default(),
            },
            vcpus: Vec::new(),
            devices: Default::default(),
        }
    }

    #[test]
    fn round_trip_and_every_kind_of_damage_is_refused() {
        let bytes = encode(&state()).expect("encode");
        let back = decode(&bytes).expect("decode");
        assert!(back.track_dirty_pages);
        assert_eq!(back.resources, state().resources);
        let refused = |bytes: &[u8], what: &str| {
            let err = decode(bytes).expect_err(what);
            assert!(err.contains(what), "{what}: {err}");
        };
        refused(&bytes[..10], "truncated");
        refused(&bytes[..bytes.len() - 1], "truncated or extended");
        refused(&[bytes.as_slice(), &[0]].concat(), "truncated or extended");
        let mut flipped = bytes.clone();
        flipped[HEADER + 3] ^= 1;
        refused(&flipped, "checksum");
        let mut magic = bytes.clone();
        magic[0] = b'X';
        refused(&magic, "magic");
        // The previous formats (before the virtio configuration space, the devices' own
        // states and virtiofsd's were saved), and one from the future; the header is
        // checked first.
        assert_eq!(FORMAT_VERSION, 5);
        for other in [1u32, 2, 3, 9] {
            let mut version = bytes.clone();
            version[8..12].copy_from_slice(&other.to_le_bytes());
            let crc = crc32fast::hash(&version[..version.len() - 4]);
            let at = version.len() - 4;
            version[at..].copy_from_slice(&crc.to_le_bytes());
            refused(
                &version,
                &format!("format version {other}, but this zvm reads versions 4-5 only"),
            );
        }
        let mut huge = bytes.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        refused(&huge, "larger than");
        // A payload that checks out but does not decode.
        let mut garbage = Vec::new();
        garbage.extend_from_slice(&MAGIC);
        garbage.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        garbage.extend_from_slice(&3u64.to_le_bytes());
        garbage.extend_from_slice(&[1, 2, 3]);
        let crc = crc32fast::hash(&garbage);
        garbage.extend_from_slice(&crc.to_le_bytes());
        refused(&garbage, "cannot decode");
    }

    /// A format 4 file: the payload without the IOAPIC state at its end.
    fn format_4_file(state: &MicrovmState) -> Vec<u8> {
        let mut payload = codec().serialize(state).expect("encode");
        assert_eq!(
            payload.pop(),
            Some(0),
            "no IOAPIC state: one zero byte at the end"
        );
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn format_4_files_read_as_vms_with_the_kernel_irqchip() {
        let mut old = state();
        old.vm.irqchips.push(Default::default());
        let back = decode(&format_4_file(&old)).expect("format 4 decodes");
        assert_eq!(back.devices.ioapic, None);
        assert_eq!(back.vm.irqchips.len(), 1);
        assert_eq!(back.resources, old.resources);
        // A format 5 file with an IOAPIC state round-trips it.
        let mut split = state();
        split.devices.ioapic = Some(crate::devices::ioapic::Ioapic::new(2).save_state());
        let back = decode(&encode(&split).expect("encode")).expect("decode");
        assert_eq!(back.devices.ioapic, split.devices.ioapic);
    }

    #[test]
    fn state_files_are_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("vm.state");
        let size = write_state_file(&path, &state()).expect("write");
        assert_eq!(std::fs::metadata(&path).expect("file").len(), size);
        assert!(read_state_file(&path).is_ok());
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            1,
            "no temporary file left"
        );
        let missing = dir.path().join("no/such/dir/vm.state");
        assert!(write_state_file(&missing, &state()).is_err());
        assert!(matches!(
            read_state_file(&missing),
            Err(SnapshotError::BadStateFile { .. })
        ));
    }
}
