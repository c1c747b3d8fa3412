//! The frontend against a fake vhost-user backend: a thread on the other end of a socket
//! pair that speaks just enough of the protocol and records what it was sent.

use super::*;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::INT_USED_RING;
use crate::memory::{create_guest_memory, create_shared_guest_memory};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

#[path = "carry_tests.rs"]
mod carry_tests;
#[path = "state_tests.rs"]
mod state_tests;

const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_QUEUE_NUM: u32 = 17;
const SET_VRING_ENABLE: u32 = 18;
const SET_DEVICE_STATE_FD: u32 = 42;
const CHECK_DEVICE_STATE: u32 = 43;
const NEED_REPLY: u32 = 0x8;

const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
const GOOD_FEATURES: u64 = VIRTIO_F_VERSION_1 | RING_FEATURES | PROTOCOL_FEATURES_BIT;
const MQ: u64 = 1 << 0;
const REPLY_ACK: u64 = 1 << 3;
const DEVICE_STATE: u64 = 1 << 19;

/// What the fake backend does with device-state transfers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StateTransfer {
    /// Writes [`BACKEND_STATE`] when saving; takes only a state starting with it at load.
    Good,
    /// Writes some state but never closes the pipe.
    NeverCloses,
    /// Writes half its state, then dies (closes pipe and socket).
    DiesMidway,
    /// Writes more than a snapshot takes.
    Oversized,
    /// Writes its state, then says the transfer failed.
    FailsCheck,
}

/// The state the fake backend saves.
const BACKEND_STATE: &[u8] = b"fake virtiofsd state: 3 inodes, 1 open file";

/// One message the fake backend received.
#[derive(Debug)]
struct Msg {
    request: u32,
    body: Vec<u8>,
    fds: Vec<File>,
}

impl Msg {
    fn u64_at(&self, offset: usize) -> u64 {
        let bytes: [u8; 8] = self.body[offset..offset + 8].try_into().expect("8 bytes");
        u64::from_le_bytes(bytes)
    }
    fn u32_at(&self, offset: usize) -> u32 {
        let bytes: [u8; 4] = self.body[offset..offset + 4].try_into().expect("4 bytes");
        u32::from_le_bytes(bytes)
    }
}

/// How the fake backend behaves.
#[derive(Clone, Copy)]
struct Script {
    features: u64,
    protocol: u64,
    queue_num: u64,
    /// Answer this request with a non-zero ack (a refusal).
    refuse: Option<u32>,
    /// Device-state transfers (offered when `protocol` has [`DEVICE_STATE`]).
    transfer: StateTransfer,
}

const GOOD: Script = Script {
    features: GOOD_FEATURES,
    protocol: MQ | REPLY_ACK,
    queue_num: 2,
    refuse: None,
    transfer: StateTransfer::Good,
};

/// A backend like virtiofsd 1.10 and later, which transfers its state.
const WITH_STATE: Script = Script {
    protocol: MQ | REPLY_ACK | DEVICE_STATE,
    ..GOOD
};

type Log = Arc<Mutex<Vec<Msg>>>;

fn reply(sock: &mut UnixStream, request: u32, body: &[u8]) {
    let mut out = Vec::new();
    out.extend_from_slice(&request.to_le_bytes());
    out.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    sock.write_all(&out).expect("reply");
}

/// A device-state transfer in progress: the thread writing or reading the pipe.
type Transfer = std::thread::JoinHandle<Vec<u8>>;

/// Starts the fake backend's side of SET_DEVICE_STATE_FD on `pipe`; `true` if the
/// backend then dies.
fn start_transfer(
    script: Script,
    body: &[u8],
    pipe: File,
    transfer: &mut Option<Transfer>,
) -> bool {
    let load = body.first() == Some(&1);
    let behaviour = script.transfer;
    *transfer = Some(std::thread::spawn(move || {
        let mut pipe = pipe;
        if load {
            let mut got = Vec::new();
            let _ = pipe.read_to_end(&mut got);
            return got;
        }
        match behaviour {
            StateTransfer::Good | StateTransfer::FailsCheck => {
                let _ = pipe.write_all(BACKEND_STATE);
            }
            StateTransfer::NeverCloses => {
                let _ = pipe.write_all(BACKEND_STATE);
                std::mem::forget(pipe);
            }
            StateTransfer::DiesMidway => {
                let _ = pipe.write_all(&BACKEND_STATE[..BACKEND_STATE.len() / 2]);
            }
            StateTransfer::Oversized => {
                let chunk = vec![b'x'; 1 << 20];
                for _ in 0..=MAX_BACKEND_STATE >> 20 {
                    if pipe.write_all(&chunk).is_err() {
                        break;
                    }
                }
            }
        }
        Vec::new()
    }));
    !load && behaviour == StateTransfer::DiesMidway
}

/// Whether a finished transfer went well in the fake backend's eyes.
fn check_transfer(script: Script, transfer: Option<Transfer>) -> bool {
    let Some(handle) = transfer else {
        return false;
    };
    let loaded = handle.join().unwrap_or_default();
    script.transfer != StateTransfer::FailsCheck
        && (loaded.is_empty() || loaded.starts_with(BACKEND_STATE))
}

/// Serves `sock` per `script` until the frontend goes away.
fn serve(mut sock: UnixStream, script: Script, log: Log) {
    let mut transfer = None;
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
        // SAFETY: the descriptors came with the message and belong to nobody else.
        let files = fds[..nfds]
            .iter()
            .map(|&fd| unsafe { File::from_raw_fd(fd) })
            .collect();
        let answer = match request {
            GET_FEATURES => Some(script.features.to_le_bytes().to_vec()),
            GET_PROTOCOL_FEATURES => Some(script.protocol.to_le_bytes().to_vec()),
            GET_QUEUE_NUM => Some(script.queue_num.to_le_bytes().to_vec()),
            GET_VRING_BASE => Some([&body[..4], &7u32.to_le_bytes()[..]].concat()),
            // No pipe of its own: the frontend's is used.
            SET_DEVICE_STATE_FD => Some(0x100u64.to_le_bytes().to_vec()),
            CHECK_DEVICE_STATE => {
                let ok = check_transfer(script, transfer.take());
                Some(u64::from(!ok).to_le_bytes().to_vec())
            }
            _ => None,
        };
        let mut files: Vec<File> = files;
        let dies = request == SET_DEVICE_STATE_FD
            && !files.is_empty()
            && start_transfer(script, &body, files.remove(0), &mut transfer);
        log.lock().expect("log").push(Msg {
            request,
            body,
            fds: files,
        });
        match answer {
            Some(body) => reply(&mut sock, request, &body),
            None if flags & NEED_REPLY != 0 => {
                let code = u64::from(script.refuse == Some(request));
                reply(&mut sock, request, &code.to_le_bytes());
            }
            None => {}
        }
        if dies {
            if let Some(handle) = transfer.take() {
                let _ = handle.join();
            }
            return;
        }
    }
}

fn fake_backend(script: Script) -> (UnixStream, Log) {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let log: Log = Arc::default();
    let thread_log = log.clone();
    std::thread::spawn(move || serve(theirs, script, thread_log));
    (ours, log)
}

fn requests(log: &Log) -> Vec<u32> {
    log.lock().expect("log").iter().map(|m| m.request).collect()
}

/// Guest memory and two ready queues with their rings in it.
fn driver_queues(mem: &GuestMemoryMmap) -> Vec<Queue> {
    (0..2u64)
        .map(|i| {
            let mut q = Queue::new(QUEUE_SIZE).expect("queue");
            q.set_size(16);
            let base = 0x10_0000 + i * 0x1_0000;
            q.set_desc_table_address(Some(base as u32), Some(0));
            q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
            q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
            q.set_ready(true);
            q.set_event_idx(true);
            assert!(q.is_valid(mem));
            q
        })
        .collect()
}

fn running_device(script: Script) -> (Fs, Log, GuestMemoryMmap, Interrupt) {
    let (sock, log) = fake_backend(script);
    let mut fs = Fs::from_stream("shared", "hostshare", 1, sock).expect("connect");
    let mem = create_shared_guest_memory(4 << 20).expect("memory");
    let irq = Interrupt::new().expect("interrupt");
    fs.ack_features(VIRTIO_F_VERSION_1);
    let before = requests(&log).len();
    fs.activate(mem.clone(), driver_queues(&mem), irq.clone())
        .expect("activate");
    assert_eq!(
        requests(&log).len(),
        before,
        "activation (a vCPU thread) sends nothing"
    );
    fs.process_host_event();
    (fs, log, mem, irq)
}

#[test]
fn connect_claims_the_backend_and_negotiates_protocol_features() {
    let (sock, log) = fake_backend(GOOD);
    let fs = Fs::from_stream("shared", "hostshare", 1, sock).expect("connect");
    assert_eq!(
        requests(&log),
        [
            SET_OWNER,
            GET_FEATURES,
            GET_PROTOCOL_FEATURES,
            SET_PROTOCOL_FEATURES,
            GET_QUEUE_NUM
        ]
    );
    let acked = log.lock().expect("log")[3].u64_at(0);
    assert_eq!(acked, MQ | REPLY_ACK);
    let mut config = [0u8; TAG_LEN + 4];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..9], b"hostshare");
    assert!(config[9..TAG_LEN].iter().all(|&b| b == 0));
    assert_eq!(config[TAG_LEN..], 1u32.to_le_bytes());
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes().len(), 2, "hiprio + one request queue");
}

#[test]
fn activation_sends_features_memory_table_and_rings_from_the_vmm_thread() {
    let (fs, log, mem, _irq) = running_device(GOOD);
    assert!(fs.is_running(), "{:?}", fs.broken());
    let log = log.lock().expect("log");
    let sent: Vec<u32> = log.iter().skip(5).map(|m| m.request).collect();
    let per_queue = [
        SET_VRING_NUM,
        SET_VRING_ADDR,
        SET_VRING_BASE,
        SET_VRING_CALL,
        SET_VRING_KICK,
        SET_VRING_ENABLE,
    ];
    let mut expected = vec![SET_FEATURES, SET_MEM_TABLE];
    expected.extend(per_queue);
    expected.extend(per_queue);
    assert_eq!(sent, expected);
    let features = log[5].u64_at(0);
    assert_eq!(
        features,
        VIRTIO_F_VERSION_1 | RING_FEATURES | PROTOCOL_FEATURES_BIT
    );
    let table = &log[6];
    assert_eq!(table.u32_at(0), 1, "one region");
    assert_eq!(table.fds.len(), 1, "its memfd goes with it");
    assert_eq!(table.u64_at(8), 0, "guest address");
    assert_eq!(table.u64_at(16), 4 << 20, "size");
    let host = mem.get_host_address(GuestAddress(0)).expect("host") as u64;
    assert_eq!(table.u64_at(24), host, "our address");
    assert_eq!(
        table.fds[0].metadata().expect("memfd").len(),
        4 << 20,
        "the backend gets the guest's memfd"
    );
    let addr = &log[8];
    assert_eq!(addr.u32_at(0), 0, "queue 0");
    let desc = mem.get_host_address(GuestAddress(0x10_0000)).expect("host") as u64;
    assert_eq!(addr.u64_at(8), desc, "descriptor table as our address");
    assert_eq!(log[7].u32_at(4), 16, "queue size");
    assert_eq!(log[9].u32_at(4), 0, "next available index");
    assert_eq!(log[10].fds.len(), 1, "call eventfd");
    assert_eq!(log[11].fds.len(), 1, "kick eventfd");
    assert_eq!(log[12].u32_at(4), 1, "enabled");
}

#[test]
fn the_backends_call_becomes_the_device_interrupt() {
    let (mut fs, log, _mem, irq) = running_device(GOOD);
    let call = log.lock().expect("log")[10].fds.remove(0);
    (&call).write_all(&1u64.to_le_bytes()).expect("call");
    fs.process_host_event();
    assert_eq!(irq.status() & INT_USED_RING, INT_USED_RING);
}

#[test]
fn queue_notifications_go_to_the_backend_not_the_vmm_loop() {
    let (sock, _log) = fake_backend(GOOD);
    let fs = Fs::from_stream("shared", "t", 1, sock).expect("connect");
    let kick = fs.kicks[1].try_clone().expect("clone");
    let mem = create_shared_guest_memory(4 << 20).expect("memory");
    let transport = MmioTransport::new(mem, Box::new(fs)).expect("transport");
    assert!(!transport.vmm_polls_queues());
    transport.queue_evts()[1].write(1).expect("notify");
    assert_eq!(kick.read().expect("same eventfd"), 1);
}

#[test]
fn a_reset_stops_the_rings() {
    let (mut fs, log, _mem, _irq) = running_device(GOOD);
    let before = requests(&log).len();
    fs.reset();
    assert_eq!(
        requests(&log).len(),
        before,
        "nothing sent on the vCPU thread"
    );
    fs.process_host_event();
    let sent = &requests(&log)[before..];
    assert_eq!(
        sent,
        [
            SET_VRING_ENABLE,
            GET_VRING_BASE,
            SET_VRING_ENABLE,
            GET_VRING_BASE
        ]
    );
    assert!(!fs.is_running());
    assert!(fs.broken().is_none());
}

#[test]
fn a_backend_that_dies_breaks_the_device_not_the_vm() {
    let (sock, theirs) = UnixStream::pair().expect("pair");
    let log: Log = Arc::default();
    let thread_log = log.clone();
    let server = std::thread::spawn(move || serve(theirs, GOOD, thread_log));
    let mut fs = Fs::from_stream("shared", "t", 1, sock).expect("connect");
    // The fake backend's thread ends when its socket is shut down.
    // SAFETY: shutting down our own socket.
    unsafe { libc::shutdown(fs.sock.as_raw_fd(), libc::SHUT_RDWR) };
    server.join().expect("backend thread");
    let mem = create_shared_guest_memory(4 << 20).expect("memory");
    let irq = Interrupt::new().expect("interrupt");
    fs.activate(mem.clone(), driver_queues(&mem), irq.clone())
        .expect("activation itself is deferred");
    fs.process_host_event();
    assert!(fs.broken().is_some());
    assert!(fs.needs_reset());
    assert!(!fs.is_running());
    let err = fs
        .activate(mem.clone(), driver_queues(&mem), irq)
        .expect_err("a broken device does not start again");
    assert!(err.to_string().contains("virtio-fs shared"), "{err}");
}

#[test]
fn a_message_nobody_asked_for_breaks_the_device() {
    let (sock, mut theirs) = UnixStream::pair().expect("pair");
    let log: Log = Arc::default();
    let backend = theirs.try_clone().expect("clone");
    let thread_log = log.clone();
    std::thread::spawn(move || serve(backend, GOOD, thread_log));
    let (mut fs, irq) = {
        let mut fs = Fs::from_stream("shared", "t", 1, sock).expect("connect");
        let mem = create_shared_guest_memory(4 << 20).expect("memory");
        let irq = Interrupt::new().expect("interrupt");
        fs.activate(mem.clone(), driver_queues(&mem), irq.clone())
            .expect("activate");
        fs.process_host_event();
        assert!(fs.is_running());
        (fs, irq)
    };
    theirs
        .write_all(b"garbage, not a vhost-user header")
        .expect("write");
    fs.process_host_event();
    assert!(fs.broken().is_some());
    assert!(fs.needs_reset());
    assert_ne!(irq.status() & crate::devices::virtio::INT_CONFIG, 0);
}

#[test]
fn garbage_answers_are_refused_at_connect() {
    let (sock, mut theirs) = UnixStream::pair().expect("pair");
    std::thread::spawn(move || {
        let mut buf = [0u8; 12];
        let _ = theirs.read_exact(&mut buf); // SET_OWNER
        let _ = theirs.read_exact(&mut buf); // GET_FEATURES
        reply(&mut theirs, SET_MEM_TABLE, &1u64.to_le_bytes()); // not its answer
        let _ = theirs.read(&mut buf);
    });
    let err = Fs::from_stream("shared", "t", 1, sock).expect_err("garbage");
    assert!(
        matches!(
            err,
            FsError::Protocol {
                what: "GET_FEATURES",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_features_and_queues_are_refused() {
    let no_protocol = Script {
        features: VIRTIO_F_VERSION_1 | RING_FEATURES,
        ..GOOD
    };
    let (sock, _log) = fake_backend(no_protocol);
    let err = Fs::from_stream("shared", "t", 1, sock).expect_err("no protocol features");
    assert!(matches!(err, FsError::MissingFeature(_)), "{err}");
    let (sock, _log) = fake_backend(GOOD);
    let err = Fs::from_stream("shared", "t", 4, sock).expect_err("too few queues");
    assert!(
        matches!(
            err,
            FsError::TooFewQueues {
                backend: 2,
                needed: 5
            }
        ),
        "{err}"
    );
    let (sock, _log) = fake_backend(GOOD);
    let long = "x".repeat(TAG_LEN + 1);
    assert!(matches!(
        Fs::from_stream("shared", &long, 1, sock),
        Err(FsError::BadTag(_))
    ));
}

#[test]
fn a_refused_memory_table_or_anonymous_memory_breaks_the_device() {
    let refusing = Script {
        refuse: Some(SET_MEM_TABLE),
        ..GOOD
    };
    let (fs, _log, _mem, _irq) = running_device(refusing);
    let reason = fs.broken().expect("broken");
    assert!(reason.contains("SET_MEM_TABLE"), "{reason}");

    let (sock, _log) = fake_backend(GOOD);
    let mut fs = Fs::from_stream("shared", "t", 1, sock).expect("connect");
    let mem = create_guest_memory(4 << 20).expect("anonymous memory");
    let irq = Interrupt::new().expect("interrupt");
    fs.activate(mem.clone(), driver_queues(&mem), irq)
        .expect("activate");
    fs.process_host_event();
    let reason = fs.broken().expect("broken");
    assert!(reason.contains("memfd"), "{reason}");
}

#[test]
fn activation_and_reset_fit_the_threads_seccomp_filters() {
    use crate::seccomp::{exit_status_under, ThreadKind};
    let (sock, log) = fake_backend(GOOD);
    let mut fs = Fs::from_stream("shared", "t", 1, sock).expect("connect");
    let mem = create_shared_guest_memory(4 << 20).expect("memory");
    let queues = driver_queues(&mem);
    let irq = Interrupt::new().expect("interrupt");
    // The driver's DRIVER_OK arrives on a vCPU thread, then the VMM loop does the rest.
    let status = exit_status_under(ThreadKind::Vcpu, || {
        fs.activate(mem.clone(), queues, irq).ok()
    });
    assert_eq!(
        status, 0,
        "activation on a vCPU thread makes no socket calls"
    );
    fs.activate(
        mem.clone(),
        driver_queues(&mem),
        Interrupt::new().expect("irq"),
    )
    .expect("activate");
    let status = exit_status_under(ThreadKind::Vmm, || {
        fs.process_host_event();
        fs.is_running().then_some(())?;
        fs.reset();
        fs.process_host_event();
        fs.broken().is_none().then_some(())
    });
    assert_eq!(
        status, 0,
        "the VMM thread's filter allows the vhost-user calls"
    );
    assert!(requests(&log).contains(&GET_VRING_BASE));
}

#[test]
fn a_missing_backend_socket_is_a_clear_error() {
    let path = std::path::Path::new("/nonexistent/zvm-fs.sock");
    let err = Fs::connect("shared", "t", 1, path).expect_err("no socket");
    assert!(matches!(err, FsError::Connect { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/zvm-fs.sock"),
        "{err}"
    );
}
