//! Snapshots of shares the guest used, through vhost-user device-state transfer: the
//! backend's state saved and loaded, the source's rings started again, and hostile
//! backends (garbage, a pipe never closed, death mid-transfer, too much state).

use super::*;
use crate::devices::virtio::mmio::VirtioDeviceState;
use std::time::{Duration, Instant};
use vm_memory::Bytes;

/// Where `driver_queues` puts queue 1's available ring.
const AVAIL_RING_1: u64 = 0x11_0000 + 0x1000;

fn saved(fs: &Fs) -> FsState {
    match fs.save_device_state() {
        Some(VirtioDeviceState::Fs(state)) => state,
        other => panic!("a virtio-fs device saves its state, not {other:?}"),
    }
}

/// A running device on a backend per `script` whose guest made 3 requests available.
fn used_device(script: Script) -> (Fs, Log, GuestMemoryMmap) {
    let (mut fs, log, mem, _irq) = running_device(script);
    mem.write_obj(3u16, GuestAddress(AVAIL_RING_1 + 2))
        .expect("avail idx");
    fs.transfer_timeout = Duration::from_millis(300);
    (fs, log, mem)
}

fn sent_since(log: &Log, before: usize) -> Vec<u32> {
    requests(log)[before..].to_vec()
}

#[test]
fn a_used_share_is_saved_with_its_backend_state_and_the_source_resumes() {
    let (mut fs, log, mem) = used_device(WITH_STATE);
    let before = requests(&log).len();
    fs.quiesce().expect("a backend with device-state transfer");
    assert_eq!(
        sent_since(&log, before),
        [
            SET_VRING_ENABLE,
            GET_VRING_BASE,
            SET_VRING_ENABLE,
            GET_VRING_BASE,
            SET_DEVICE_STATE_FD,
            CHECK_DEVICE_STATE
        ],
        "rings stopped, then the state read"
    );
    let transfer = log.lock().expect("log")[before + 4].u32_at(0);
    assert_eq!(transfer, 0, "direction: save");
    assert!(!fs.is_running(), "stopped while the snapshot is written");
    let state = saved(&fs);
    assert_eq!(state.backend_state.as_deref(), Some(BACKEND_STATE));
    assert_eq!(state.queues[1].next_avail, 7, "where the backend got to");

    // The snapshot written, the source's rings run again from where they stopped.
    let before = requests(&log).len();
    fs.resume_after_snapshot();
    assert!(fs.is_running(), "{:?}", fs.broken());
    let sent = sent_since(&log, before);
    assert!(!sent.contains(&SET_MEM_TABLE), "{sent:?}");
    let bases: Vec<u32> = log.lock().expect("log")[before..]
        .iter()
        .filter(|m| m.request == SET_VRING_BASE)
        .map(|m| m.u32_at(4))
        .collect();
    assert_eq!(bases, [7, 7]);
    fs.resume_after_snapshot();
    assert_eq!(requests(&log).len(), before + sent.len(), "only once");

    // Through the state file's encoding, into a new backend before its rings start.
    let bytes = bincode::serialize(&VirtioDeviceState::Fs(state.clone())).expect("encode");
    let back: VirtioDeviceState = bincode::deserialize(&bytes).expect("decode");
    let (sock, log) = fake_backend(WITH_STATE);
    let mut restored = Fs::from_stream("shared", "hostshare", 1, sock).expect("connect");
    let before = requests(&log).len();
    restored
        .restore_device_state(&back, &mem)
        .expect("the backend takes the state");
    assert_eq!(
        sent_since(&log, before),
        [SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE]
    );
    assert_eq!(log.lock().expect("log")[before].u32_at(0), 1, "load");
    restored.ack_features(VIRTIO_F_VERSION_1);
    restored
        .activate(
            mem.clone(),
            driver_queues(&mem),
            Interrupt::new().expect("irq"),
        )
        .expect("re-activate");
    restored.process_host_event();
    assert!(restored.is_running(), "{:?}", restored.broken());
    assert_eq!(saved(&restored).queues[1].next_avail, 7);
}

#[test]
fn an_unused_share_transfers_nothing() {
    let (mut fs, log, _mem, _irq) = running_device(WITH_STATE);
    let before = requests(&log).len();
    fs.quiesce().expect("unused");
    assert_eq!(sent_since(&log, before), [] as [u32; 0]);
    assert!(saved(&fs).backend_state.is_none());
    fs.resume_after_snapshot();
    assert!(fs.is_running());
    assert_eq!(requests(&log).len(), before);
}

/// A failed snapshot leaves the device as it was (running again) or, if its backend
/// died, broken; either way quickly and with a clear error.
fn refused(script: Script, what: &str) -> Fs {
    let (mut fs, _log, _mem) = used_device(script);
    let start = Instant::now();
    let err = fs.quiesce().expect_err(what);
    assert!(start.elapsed() < Duration::from_secs(5), "{what}: bounded");
    assert!(
        err.contains("'shared'") && err.contains("cannot save its backend's state"),
        "{what}: {err}"
    );
    fs.resume_after_snapshot();
    fs
}

#[test]
fn hostile_backends_fail_the_snapshot_not_the_vm() {
    let fs = refused(
        Script {
            transfer: StateTransfer::NeverCloses,
            ..WITH_STATE
        },
        "a pipe never closed",
    );
    assert!(fs.is_running(), "the rings run again: {:?}", fs.broken());

    let fs = refused(
        Script {
            transfer: StateTransfer::FailsCheck,
            ..WITH_STATE
        },
        "the backend says it failed",
    );
    assert!(fs.is_running(), "{:?}", fs.broken());

    let fs = refused(
        Script {
            transfer: StateTransfer::Oversized,
            ..WITH_STATE
        },
        "too much state",
    );
    assert!(fs.is_running(), "{:?}", fs.broken());

    let fs = refused(
        Script {
            transfer: StateTransfer::DiesMidway,
            ..WITH_STATE
        },
        "death mid-transfer",
    );
    assert!(fs.broken().is_some(), "a dead backend breaks the device");
    assert!(!fs.is_running());
}

#[test]
fn the_oversized_error_says_what_the_bound_is() {
    let (mut fs, _log, _mem) = used_device(Script {
        transfer: StateTransfer::Oversized,
        ..WITH_STATE
    });
    fs.transfer_timeout = Duration::from_secs(5);
    let err = fs.quiesce().expect_err("too much");
    assert!(err.contains("16 MiB"), "{err}");
    fs.resume_after_snapshot();
}

#[test]
fn a_saved_state_is_refused_by_a_backend_without_transfer_or_when_garbage() {
    let (mut fs, _log, mem) = used_device(WITH_STATE);
    fs.quiesce().expect("saved");
    let state = saved(&fs);
    fs.resume_after_snapshot();

    // A new virtiofsd too old to take it.
    let (sock, _log) = fake_backend(GOOD);
    let mut old = Fs::from_stream("shared", "hostshare", 1, sock).expect("connect");
    let err = old
        .restore_device_state(&VirtioDeviceState::Fs(state.clone()), &mem)
        .expect_err("no DEVICE_STATE");
    assert!(err.contains("device-state transfer"), "{err}");

    // Garbage the backend refuses (corrupt, or another directory's).
    let mut garbage = state.clone();
    garbage.backend_state = Some(b"garbage".to_vec());
    let (sock, _log) = fake_backend(WITH_STATE);
    let mut new = Fs::from_stream("shared", "hostshare", 1, sock).expect("connect");
    let err = new
        .restore_device_state(&VirtioDeviceState::Fs(garbage), &mem)
        .expect_err("garbage");
    assert!(
        err.contains("did not take") && err.contains("CHECK_DEVICE_STATE"),
        "{err}"
    );

    // Empty or oversized states never reach a backend.
    for bad in [Vec::new(), vec![0u8; MAX_BACKEND_STATE + 1]] {
        let mut damaged = state.clone();
        damaged.backend_state = Some(bad);
        let (sock, log) = fake_backend(WITH_STATE);
        let mut new = Fs::from_stream("shared", "hostshare", 1, sock).expect("connect");
        let before = requests(&log).len();
        let err = new
            .restore_device_state(&VirtioDeviceState::Fs(damaged), &mem)
            .expect_err("bad size");
        assert!(err.contains("bytes of backend state"), "{err}");
        assert_eq!(requests(&log).len(), before);
    }
}

#[test]
fn a_backend_that_never_reads_the_state_times_out_at_restore() {
    let (mut fs, _log, mem) = used_device(WITH_STATE);
    fs.quiesce().expect("saved");
    let mut state = saved(&fs);
    fs.resume_after_snapshot();
    // More than a pipe holds, to a backend that takes the pipe but never reads it.
    state.backend_state = Some(vec![b'x'; 4 << 20]);
    let (sock, theirs) = UnixStream::pair().expect("pair");
    let held: Arc<Mutex<Vec<File>>> = Arc::default();
    let keep = held.clone();
    std::thread::spawn(move || {
        let log: Log = Arc::default();
        serve_holding(theirs, WITH_STATE, log, keep)
    });
    let mut new = Fs::from_stream("shared", "hostshare", 1, sock).expect("connect");
    new.transfer_timeout = Duration::from_millis(300);
    let start = Instant::now();
    let err = new
        .restore_device_state(&VirtioDeviceState::Fs(state), &mem)
        .expect_err("never read");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(err.contains("within"), "{err}");
    drop(held);
}

/// Like `serve`, but keeps the state pipe it is given without reading it.
fn serve_holding(mut sock: UnixStream, script: Script, log: Log, held: Arc<Mutex<Vec<File>>>) {
    loop {
        let mut hdr = [0u8; 12];
        let mut fds = [-1; 8];
        let mut iov = [libc::iovec {
            iov_base: hdr.as_mut_ptr().cast(),
            iov_len: hdr.len(),
        }];
        // SAFETY: the iovec points at `hdr`, which outlives the call.
        let Ok((n, nfds)) = (unsafe { sock.recv_with_fds(&mut iov, &mut fds) }) else {
            return;
        };
        if n == 0 {
            return;
        }
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (request, flags, size) = (word(0), word(4), word(8));
        let mut body = vec![0u8; size as usize];
        if sock.read_exact(&mut body).is_err() {
            return;
        }
        for &fd in &fds[..nfds] {
            // SAFETY: the descriptors came with the message and belong to nobody else.
            held.lock()
                .expect("held")
                .push(unsafe { File::from_raw_fd(fd) });
        }
        let answer = match request {
            GET_FEATURES => Some(script.features.to_le_bytes().to_vec()),
            GET_PROTOCOL_FEATURES => Some(script.protocol.to_le_bytes().to_vec()),
            GET_QUEUE_NUM => Some(script.queue_num.to_le_bytes().to_vec()),
            SET_DEVICE_STATE_FD => Some(0x100u64.to_le_bytes().to_vec()),
            _ => None,
        };
        log.lock().expect("log").push(Msg {
            request,
            body,
            fds: Vec::new(),
        });
        match answer {
            Some(body) => reply(&mut sock, request, &body),
            None if flags & NEED_REPLY != 0 => reply(&mut sock, request, &0u64.to_le_bytes()),
            None => {}
        }
    }
}
