//! Tests of the vsock muxer against real Unix sockets, and of the device on mock queues.

use super::conn::CONN_BUF_SIZE;
use super::muxer::{MuxerError, VsockMuxer, EPHEMERAL_PORT_BASE, MAX_CONTROL_PACKETS};
use super::packet::{op, shutdown, Packet, VsockHeader, HDR_SIZE, HOST_CID, TYPE_STREAM};
use super::*;
use crate::devices::virtio::test_utils::*;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

pub(super) const CID: u64 = 3;

pub(super) fn guest_pkt(src_port: u32, dst_port: u32, op: u16, payload: &[u8]) -> Packet {
    Packet {
        hdr: VsockHeader {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: payload.len() as u32,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        },
        payload: payload.to_vec(),
    }
}

pub(super) fn shutdown_pkt(src_port: u32, dst_port: u32, flags: u32) -> Packet {
    let mut p = guest_pkt(src_port, dst_port, op::SHUTDOWN, b"");
    p.hdr.flags = flags;
    p
}

/// Serves host events until the muxer has a packet for the guest (or gives up).
pub(super) fn next_pkt(m: &mut VsockMuxer) -> Option<Packet> {
    for _ in 0..200 {
        m.process_host_events();
        if m.has_rx() {
            if let Some(p) = m.recv_pkt(4096) {
                return Some(p);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

pub(super) fn muxer() -> (tempfile::TempDir, VsockMuxer) {
    let dir = tempfile::tempdir().expect("dir");
    let mut m = VsockMuxer::new(CID, &dir.path().join("v.sock")).expect("muxer");
    m.arm();
    (dir, m)
}

pub(super) fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).expect("read");
    buf
}

#[test]
fn host_initiated_connect_handshake_and_data() {
    let (dir, mut m) = muxer();
    let mut client = UnixStream::connect(dir.path().join("v.sock")).expect("connect");
    client.write_all(b"CONNECT 52\n").expect("write");
    let req = next_pkt(&mut m).expect("REQUEST");
    assert_eq!(
        (req.hdr.op, req.hdr.src_cid, req.hdr.dst_cid),
        (op::REQUEST, HOST_CID, CID)
    );
    assert_eq!(
        (req.hdr.src_port, req.hdr.dst_port),
        (EPHEMERAL_PORT_BASE, 52)
    );
    assert_eq!(req.hdr.buf_alloc, CONN_BUF_SIZE);
    m.send_pkt(guest_pkt(52, EPHEMERAL_PORT_BASE, op::RESPONSE, b""));
    assert_eq!(
        read_exactly(&mut client, 14),
        format!("OK {EPHEMERAL_PORT_BASE}\n").into_bytes()
    );

    client.write_all(b"ping").expect("write");
    let data = next_pkt(&mut m).expect("RW");
    assert_eq!(
        (data.hdr.op, data.hdr.len, data.payload.as_slice()),
        (op::RW, 4, &b"ping"[..])
    );
    m.send_pkt(guest_pkt(52, EPHEMERAL_PORT_BASE, op::RW, b"pong"));
    assert_eq!(read_exactly(&mut client, 4), b"pong");

    m.send_pkt(guest_pkt(52, EPHEMERAL_PORT_BASE, op::CREDIT_REQUEST, b""));
    let credit = m.recv_pkt(4096).expect("CREDIT_UPDATE");
    assert_eq!(
        (credit.hdr.op, credit.hdr.fwd_cnt, credit.hdr.buf_alloc),
        (op::CREDIT_UPDATE, 4, CONN_BUF_SIZE)
    );

    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let shut = next_pkt(&mut m).expect("SHUTDOWN");
    assert_eq!(
        (shut.hdr.op, shut.hdr.flags),
        (op::SHUTDOWN, shutdown::SEND)
    );
    m.send_pkt(shutdown_pkt(52, EPHEMERAL_PORT_BASE, shutdown::BOTH));
    let rst = m.recv_pkt(4096).expect("RST");
    assert_eq!(rst.hdr.op, op::RST);
    assert_eq!(m.connection_count(), 0);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("EOF");
    assert!(rest.is_empty());
}

#[test]
fn guest_refusal_and_bad_connect_lines_close_the_client() {
    let (dir, mut m) = muxer();
    let mut client = UnixStream::connect(dir.path().join("v.sock")).expect("connect");
    client.write_all(b"CONNECT 7\n").expect("write");
    let req = next_pkt(&mut m).expect("REQUEST");
    m.send_pkt(guest_pkt(7, req.hdr.src_port, op::RST, b""));
    assert_eq!(m.connection_count(), 0);
    assert!(!m.has_rx(), "no RST answers an RST");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("EOF");

    for line in [&b"HELLO 7\n"[..], b"CONNECT x\n", &[b'A'; 100]] {
        let mut client = UnixStream::connect(dir.path().join("v.sock")).expect("connect");
        client.write_all(line).expect("write");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        for _ in 0..20 {
            m.process_host_events();
        }
        let mut rest = Vec::new();
        // Closed: EOF, or a reset when the muxer left part of the line unread.
        if let Err(e) = client.read_to_end(&mut rest) {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        }
        assert!(!m.has_rx());
    }
}

#[test]
fn guest_initiated_connections_reach_port_sockets() {
    let (dir, mut m) = muxer();
    let listener = UnixListener::bind(dir.path().join("v.sock_1234")).expect("bind");
    m.send_pkt(guest_pkt(5000, 1234, op::REQUEST, b""));
    let resp = m.recv_pkt(4096).expect("RESPONSE");
    assert_eq!(
        (resp.hdr.op, resp.hdr.src_port, resp.hdr.dst_port),
        (op::RESPONSE, 1234, 5000)
    );
    let (mut host, _) = listener.accept().expect("accept");
    m.send_pkt(guest_pkt(5000, 1234, op::RW, b"hello"));
    assert_eq!(read_exactly(&mut host, 5), b"hello");
    host.write_all(b"world").expect("write");
    let data = next_pkt(&mut m).expect("RW");
    assert_eq!(data.payload, b"world");

    m.send_pkt(guest_pkt(5000, 1234, op::REQUEST, b""));
    assert_eq!(
        m.recv_pkt(4096).expect("RST").hdr.op,
        op::RST,
        "a second REQUEST resets the connection"
    );
    assert_eq!(m.connection_count(), 0);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).expect("EOF");

    m.send_pkt(guest_pkt(5001, 999, op::REQUEST, b""));
    let rst = m.recv_pkt(4096).expect("RST");
    assert_eq!(
        (rst.hdr.op, rst.hdr.src_port, rst.hdr.dst_port),
        (op::RST, 999, 5001),
        "nobody listens on port 999"
    );
}

#[test]
fn host_data_respects_the_guest_credit() {
    let (dir, mut m) = muxer();
    let listener = UnixListener::bind(dir.path().join("v.sock_80")).expect("bind");
    let mut req = guest_pkt(6000, 80, op::REQUEST, b"");
    req.hdr.buf_alloc = 4;
    m.send_pkt(req);
    assert_eq!(m.recv_pkt(4096).expect("RESPONSE").hdr.op, op::RESPONSE);
    let (mut host, _) = listener.accept().expect("accept");
    host.write_all(b"0123456789").expect("write");
    let first = next_pkt(&mut m).expect("RW");
    assert_eq!(first.payload, b"0123");
    m.process_host_events();
    assert!(!m.has_rx(), "no credit left");
    let mut update = guest_pkt(6000, 80, op::CREDIT_UPDATE, b"");
    update.hdr.buf_alloc = 4;
    update.hdr.fwd_cnt = 4;
    m.send_pkt(update);
    assert_eq!(
        m.recv_pkt(2).expect("RW").payload,
        b"45",
        "bounded by the RX buffer too"
    );
    assert_eq!(m.recv_pkt(4096).expect("RW").payload, b"67");
    assert!(m.recv_pkt(4096).is_none());

    let mut guest_rcv_shut = shutdown_pkt(6000, 80, shutdown::RCV);
    guest_rcv_shut.hdr.fwd_cnt = 8;
    m.send_pkt(guest_rcv_shut);
    assert!(
        !m.has_rx(),
        "the guest receives nothing after SHUTDOWN(RCV)"
    );
    m.send_pkt(guest_pkt(6000, 80, op::RW, b"still sending"));
    assert_eq!(read_exactly(&mut host, 13), b"still sending");
}

#[test]
fn hostile_packets_are_dropped_or_reset() {
    let (dir, mut m) = muxer();
    let _listener = UnixListener::bind(dir.path().join("v.sock_80")).expect("bind");
    let mut spoofed = guest_pkt(1, 80, op::REQUEST, b"");
    spoofed.hdr.src_cid = 42;
    m.send_pkt(spoofed);
    let mut elsewhere = guest_pkt(1, 80, op::REQUEST, b"");
    elsewhere.hdr.dst_cid = 7;
    m.send_pkt(elsewhere);
    assert!(!m.has_rx(), "packets with the wrong CIDs are dropped");
    let mut dgram = guest_pkt(1, 80, op::REQUEST, b"");
    dgram.hdr.type_ = 2;
    m.send_pkt(dgram);
    assert_eq!(m.recv_pkt(4096).expect("RST").hdr.op, op::RST);
    m.send_pkt(guest_pkt(1, 80, 99, b""));
    assert_eq!(m.recv_pkt(4096).expect("RST").hdr.op, op::RST);
    m.send_pkt(guest_pkt(1, 80, op::RST, b""));
    assert!(!m.has_rx());

    m.send_pkt(guest_pkt(2, 80, op::REQUEST, b""));
    assert_eq!(m.recv_pkt(4096).expect("RESPONSE").hdr.op, op::RESPONSE);
    m.send_pkt(guest_pkt(2, 80, op::RESPONSE, b""));
    assert_eq!(
        m.recv_pkt(4096).expect("RST").hdr.op,
        op::RST,
        "RESPONSE on an established connection"
    );
    assert_eq!(m.connection_count(), 0);

    m.send_pkt(guest_pkt(3, 80, op::REQUEST, b""));
    assert_eq!(m.recv_pkt(4096).expect("RESPONSE").hdr.op, op::RESPONSE);
    let big = vec![0u8; 60 * 1024];
    for _ in 0..(CONN_BUF_SIZE as usize / big.len() + 8) {
        m.send_pkt(guest_pkt(3, 80, op::RW, &big));
    }
    let ops: Vec<u16> = std::iter::from_fn(|| m.recv_pkt(4096))
        .map(|p| p.hdr.op)
        .collect();
    assert!(
        ops.contains(&op::RST),
        "overrunning our buffer resets: {ops:?}"
    );
    assert_eq!(m.connection_count(), 0);

    for port in 0..(MAX_CONTROL_PACKETS as u32 + 100) {
        m.send_pkt(guest_pkt(port, 4, op::RW, b"x"));
    }
    let mut count = 0;
    while m.recv_pkt(4096).is_some() {
        count += 1;
    }
    assert!(count <= MAX_CONTROL_PACKETS, "the RST flood is bounded");
}

#[test]
fn stale_sockets_are_replaced_and_other_files_kept() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("v.sock");
    let stale = UnixListener::bind(&path).expect("bind");
    drop(stale);
    let m = VsockMuxer::new(CID, &path).expect("stale socket replaced");
    drop(m);
    let file = dir.path().join("file");
    std::fs::write(&file, b"data").expect("write");
    assert!(matches!(
        VsockMuxer::new(CID, &file),
        Err(MuxerError::NotASocket(_))
    ));
    assert!(matches!(
        Vsock::new(2, &dir.path().join("x.sock")),
        Err(VsockError::BadCid(2))
    ));
}

/// Three mock queues (RX, TX, event) at separate addresses.
fn queues(mem: &GuestMemoryMmap) -> [MockSplitQueue<'_, GuestMemoryMmap>; 3] {
    [0u64, 0x8000, 0x1_0000].map(|a| MockSplitQueue::create(mem, GuestAddress(a), MOCK_QUEUE_SIZE))
}

fn write_tx(mem: &GuestMemoryMmap, addr: u64, pkt: &Packet) -> u32 {
    mem.write_slice(&pkt.hdr.encode(), GuestAddress(addr))
        .expect("hdr");
    mem.write_slice(&pkt.payload, GuestAddress(addr + HDR_SIZE as u64))
        .expect("payload");
    (HDR_SIZE + pkt.payload.len()) as u32
}

fn rx_hdr(mem: &GuestMemoryMmap, addr: u64) -> VsockHeader {
    let mut raw = [0u8; HDR_SIZE];
    mem.read_slice(&mut raw, GuestAddress(addr)).expect("read");
    VsockHeader::decode(&raw)
}

#[test]
fn device_moves_packets_between_queues_and_sockets() {
    let dir = tempfile::tempdir().expect("dir");
    let _listener = UnixListener::bind(dir.path().join("v.sock_80")).expect("bind");
    let mut dev = Vsock::new(CID, &dir.path().join("v.sock")).expect("device");
    assert_eq!(
        (
            dev.device_type(),
            dev.queue_max_sizes().len(),
            dev.features()
        ),
        (TYPE_VSOCK, 3, VIRTIO_F_VERSION_1)
    );
    let mut cid = [0u8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    assert!(dev.host_event_fd().is_some());

    let mem = memory();
    let [rx, tx, ev] = queues(&mem);
    // RX: a buffer too small for a header, then two good ones.
    rx.add_desc_chains(
        &[
            linked(DATA, 16, F_WRITE, 0),
            linked(DATA + 0x1000, 256, F_WRITE, 0),
            linked(DATA + 0x2000, 256, F_WRITE, 0),
        ],
        0,
    )
    .expect("rx");
    // TX: a short header, a REQUEST to a listening port, one to a closed port.
    let n1 = write_tx(&mem, DATA + 0x11000, &guest_pkt(10, 80, op::REQUEST, b""));
    let n2 = write_tx(&mem, DATA + 0x12000, &guest_pkt(11, 81, op::REQUEST, b""));
    tx.add_desc_chains(
        &[
            linked(DATA + 0x10000, 8, 0, 0),
            linked(DATA + 0x11000, n1, 0, 0),
            linked(DATA + 0x12000, n2, 0, 0),
        ],
        0,
    )
    .expect("tx");
    let irq = Interrupt::new().expect("irq");
    dev.activate(
        mem.clone(),
        vec![ready_queue(&rx), ready_queue(&tx), ready_queue(&ev)],
        irq.clone(),
    )
    .expect("activate");
    dev.process_queue(TX_QUEUE);
    assert_eq!(
        used_idx(&mem, &tx),
        3,
        "every TX chain is returned, malformed or not"
    );
    assert_eq!(used_idx(&mem, &rx), 3);
    assert_eq!(
        used_entry(&mem, &rx, 0),
        (0, 0),
        "the tiny RX buffer is returned empty"
    );
    assert_eq!(used_entry(&mem, &rx, 1), (1, HDR_SIZE as u32));
    assert_eq!(rx_hdr(&mem, DATA + 0x1000).op, op::RESPONSE);
    let rst = rx_hdr(&mem, DATA + 0x2000);
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, 81, 11));
    assert!(irq.eventfd().read().expect("interrupt") >= 1);
    let m = dev.metrics().totals();
    assert_eq!(
        (m["tx_packets"].as_u64(), m["rx_packets"].as_u64()),
        (Some(2), Some(2)),
        "the short header is not a packet"
    );
    assert_eq!(
        (m["conns_added"].as_u64(), m["conns_reset"].as_u64()),
        (Some(1), Some(1))
    );
    dev.process_queue(EVENT_QUEUE);
    dev.process_queue(7);
    dev.process_host_event();
    dev.reset();
    dev.process_queue(RX_QUEUE);
}

/// The muxer's host socket work passes the VMM thread's seccomp filter (run in a child:
/// a blocked call ends the process it happens in).
#[test]
fn muxer_runs_under_the_vmm_seccomp_filter() {
    let (dir, mut m) = muxer();
    let port_listener = UnixListener::bind(dir.path().join("v.sock_77")).expect("bind");
    let uds = dir.path().join("v.sock");
    let status = crate::seccomp::exit_status_under(crate::seccomp::ThreadKind::Vmm, || {
        let mut client = UnixStream::connect(&uds).ok()?;
        client.write_all(b"CONNECT 9\n").ok()?;
        let req = next_pkt(&mut m)?;
        m.send_pkt(guest_pkt(9, req.hdr.src_port, op::RESPONSE, b""));
        let mut ok = [0u8; 14];
        client.read_exact(&mut ok).ok()?;
        m.send_pkt(guest_pkt(10, 77, op::REQUEST, b""));
        (m.recv_pkt(4096)?.hdr.op == op::RESPONSE).then_some(())?;
        let (mut host, _) = port_listener.accept().ok()?;
        m.send_pkt(guest_pkt(10, 77, op::RW, b"abc"));
        m.send_pkt(shutdown_pkt(10, 77, shutdown::SEND));
        let mut got = Vec::new();
        host.read_to_end(&mut got).ok()?;
        (got == b"abc").then_some(())
    });
    assert_eq!(
        status, 0,
        "the child failed or hit a blocked system call (159)"
    );
}

#[test]
fn sockets_deeper_than_a_unix_address_work_both_ways() {
    let tmp = tempfile::tempdir().expect("dir");
    let deep = tmp.path().join("w".repeat(110));
    std::fs::create_dir(&deep).expect("mkdir");
    let uds = deep.join("v.sock");
    assert!(uds.as_os_str().len() > uds::SUN_PATH_MAX);
    let mut m = VsockMuxer::new(CID, &uds).expect("muxer at a long path");
    m.arm();
    assert_eq!(m.uds_path(), uds);
    assert!(uds.exists(), "the listener is at the configured path");
    // The test's side reaches the directory the same way.
    let dir = std::fs::File::open(&deep).expect("open dir");
    let short = |name: &str| {
        std::path::PathBuf::from(format!(
            "/proc/self/fd/{}/{name}",
            std::os::fd::AsRawFd::as_raw_fd(&dir)
        ))
    };

    let mut client = UnixStream::connect(short("v.sock")).expect("connect");
    client.write_all(b"CONNECT 52\n").expect("write");
    let req = next_pkt(&mut m).expect("REQUEST");
    assert_eq!((req.hdr.op, req.hdr.dst_port), (op::REQUEST, 52));

    let listener = UnixListener::bind(short("v.sock_1234")).expect("bind");
    assert!(deep.join("v.sock_1234").exists());
    m.send_pkt(guest_pkt(5000, 1234, op::REQUEST, b""));
    let resp = m.recv_pkt(4096).expect("RESPONSE");
    assert_eq!((resp.hdr.op, resp.hdr.dst_port), (op::RESPONSE, 5000));
    let (mut host, _) = listener.accept().expect("accept");
    m.send_pkt(guest_pkt(5000, 1234, op::RW, b"deep"));
    assert_eq!(read_exactly(&mut host, 4), b"deep");

    // The guest-initiated connect through /proc/self/fd passes the VMM thread's filter.
    let deep_listener = UnixListener::bind(short("v.sock_99")).expect("bind");
    let status = crate::seccomp::exit_status_under(crate::seccomp::ThreadKind::Vmm, || {
        m.send_pkt(guest_pkt(6000, 99, op::REQUEST, b""));
        (m.recv_pkt(4096)?.hdr.op == op::RESPONSE).then_some(())
    });
    assert_eq!(status, 0, "child exit status (159: a blocked system call)");
    assert!(deep_listener.accept().is_ok(), "the child connected");
}

#[test]
fn clients_that_never_send_connect_cannot_hold_every_slot() {
    let (dir, mut m) = muxer();
    m.set_limits(super::muxer::Limits {
        connect: Duration::from_millis(200),
        ..Default::default()
    });
    let sock = dir.path().join("v.sock");
    let silent: Vec<UnixStream> = (0..super::muxer::MAX_PENDING_CLIENTS)
        .map(|_| UnixStream::connect(&sock).expect("connect"))
        .collect();
    m.process_host_events();
    // Within the deadline, one more client is refused (closed)...
    let mut early = UnixStream::connect(&sock).expect("connect");
    m.process_host_events();
    early
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 1];
    assert_eq!(early.read(&mut buf).expect("closed"), 0);
    // ...after it, the silent ones make room and a real client gets its connection.
    std::thread::sleep(Duration::from_millis(300));
    let mut client = UnixStream::connect(&sock).expect("connect");
    client.write_all(b"CONNECT 52\n").expect("write");
    let req = next_pkt(&mut m).expect("REQUEST for the newcomer");
    assert_eq!((req.hdr.op, req.hdr.dst_port), (op::REQUEST, 52));
    drop(silent);
}

/// After a restore, packets for the guest wait until it has taken the transport reset in;
/// a guest that gives the event buffer back without notifying (with event indices it need
/// not) gets them as soon as the device sees the buffer, not after the 5 s timeout.
#[test]
fn packets_wait_for_the_transport_reset_and_flow_once_its_buffer_is_back() {
    let dir = tempfile::tempdir().expect("dir");
    let mut dev = Vsock::new(CID, &dir.path().join("v.sock")).expect("device");
    let mem = memory();
    let [rx, tx, ev] = queues(&mem);
    rx.add_desc_chains(&[linked(DATA, 256, F_WRITE, 0)], 0)
        .expect("rx");
    // Two event buffers: the device keeps one after using the other, as with a real driver.
    ev.add_desc_chains(
        &[
            linked(DATA + 0x3000, 8, F_WRITE, 0),
            linked(DATA + 0x3100, 8, F_WRITE, 0),
        ],
        0,
    )
    .expect("event");
    let irq = Interrupt::new().expect("irq");
    let mut event_queue = ready_queue(&ev);
    event_queue.set_event_idx(true);
    dev.activate(
        mem.clone(),
        vec![ready_queue(&rx), ready_queue(&tx), event_queue],
        irq,
    )
    .expect("activate");
    // The transport kicks the queues once after a restore.
    dev.process_queue(RX_QUEUE);
    dev.after_restore();
    assert_eq!(used_idx(&mem, &ev), 1, "the reset event is delivered");
    // The guest is asked to notify as soon as it gives a buffer back: avail_event (after
    // the used ring's entries) is the available index the device saw, not what it used.
    let avail_event: u16 = mem
        .read_obj(GuestAddress(
            ev.used_addr().0 + 4 + 8 * u64::from(MOCK_QUEUE_SIZE),
        ))
        .expect("avail_event");
    assert_eq!(avail_event, 2);
    let mut client = UnixStream::connect(dir.path().join("v.sock")).expect("connect");
    client.write_all(b"CONNECT 1024\n").expect("write");
    let pump = |dev: &mut Vsock, for_: Duration| {
        let start = std::time::Instant::now();
        while used_idx(&mem, &rx) == 0 && start.elapsed() < for_ {
            dev.process_host_event();
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    pump(&mut dev, Duration::from_millis(200));
    assert_eq!(
        used_idx(&mem, &rx),
        0,
        "held while the reset is not handled"
    );
    // The guest handled it: its buffer is back, with no notification of the event queue.
    ev.add_desc_chains(&[linked(DATA + 0x3000, 8, F_WRITE, 0)], 2)
        .expect("event again");
    let start = std::time::Instant::now();
    pump(&mut dev, Duration::from_secs(2));
    assert_eq!(used_idx(&mem, &rx), 1, "delivered once the buffer is back");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(rx_hdr(&mem, DATA).op, op::REQUEST);
}
