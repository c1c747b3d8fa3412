//! The muxer's bounds against a guest that does not play along: deadlines for answering a
//! connection request and for closing a connection the host left, one buffer budget for
//! all connections, and the queue of connections with data for the guest.

use super::conn::CONN_BUF_SIZE;
use super::muxer::{Limits, VsockMuxer};
use super::packet::{op, shutdown, Packet};
use super::tests::{guest_pkt, muxer, next_pkt, read_exactly};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

fn short_deadlines(m: &mut VsockMuxer, response: Duration, shutdown: Duration) {
    m.set_limits(Limits {
        response,
        shutdown,
        ..Default::default()
    });
}

/// Waits (up to 5 s) for the muxer's epoll fd to become readable, as the VMM loop does.
fn wait_readable(m: &VsockMuxer) -> bool {
    let mut pfd = libc::pollfd {
        fd: m.epoll_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polling one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, 5000) == 1 }
}

/// Serves host events while there are any, as the VMM loop does (it polls the epoll fd
/// level-triggered; one call serves at most 64 events).
fn serve(m: &mut VsockMuxer) {
    for _ in 0..100 {
        let mut pfd = libc::pollfd {
            fd: m.epoll_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one valid pollfd without waiting.
        if unsafe { libc::poll(&mut pfd, 1, 0) } != 1 {
            return;
        }
        m.process_host_events();
    }
}

/// Serves host events and takes packets as the VMM loop would (the guest always has
/// RX buffers) until the guest gets a packet with `want`; others are passed over.
fn wait_for_op(m: &mut VsockMuxer, want: u16) -> Packet {
    let start = Instant::now();
    loop {
        serve(m);
        while let Some(p) = m.recv_pkt(4096) {
            if p.hdr.op == want {
                return p;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no packet with op {want} within 5 s"
        );
        wait_readable(m);
    }
}

#[test]
fn a_guest_that_never_answers_a_request_loses_it_and_the_client_is_closed() {
    let (dir, mut m) = muxer();
    short_deadlines(&mut m, Duration::from_millis(200), Duration::from_secs(8));
    let mut client = UnixStream::connect(dir.path().join("v.sock")).expect("connect");
    client.write_all(b"CONNECT 52\n").expect("write");
    let req = next_pkt(&mut m).expect("REQUEST");
    assert_eq!(req.hdr.op, op::REQUEST);
    assert_eq!(m.buffer_reserved(), CONN_BUF_SIZE as usize);

    // Nothing else happens: the timer alone wakes the loop.
    let start = Instant::now();
    let rst = wait_for_op(&mut m, op::RST);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(
        (rst.hdr.src_port, rst.hdr.dst_port),
        (req.hdr.src_port, req.hdr.dst_port)
    );
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    assert_eq!(
        client.read(&mut buf).expect("EOF"),
        0,
        "the client is closed"
    );
    assert_eq!((m.connection_count(), m.buffer_reserved()), (0, 0));

    // A late answer finds nothing and is reset.
    m.send_pkt(guest_pkt(52, req.hdr.src_port, op::RESPONSE, b""));
    assert_eq!(m.recv_pkt(4096).expect("RST").hdr.op, op::RST);
    // The muxer still serves clients.
    let mut again = UnixStream::connect(dir.path().join("v.sock")).expect("connect");
    again.write_all(b"CONNECT 52\n").expect("write");
    let req = next_pkt(&mut m).expect("REQUEST");
    m.send_pkt(guest_pkt(52, req.hdr.src_port, op::RESPONSE, b""));
    let ok = format!("OK {}\n", req.hdr.src_port);
    assert_eq!(read_exactly(&mut again, ok.len()), ok.as_bytes());
}

#[test]
fn a_client_leaving_before_the_answer_frees_its_connection() {
    let (dir, mut m) = muxer();
    let mut client = UnixStream::connect(dir.path().join("v.sock")).expect("connect");
    client.write_all(b"CONNECT 52\n").expect("write");
    assert_eq!(next_pkt(&mut m).expect("REQUEST").hdr.op, op::REQUEST);
    drop(client);
    assert_eq!(wait_for_op(&mut m, op::RST).hdr.dst_port, 52);
    assert_eq!((m.connection_count(), m.buffer_reserved()), (0, 0));
}

/// A guest-initiated connection from guest port `guest_port` to the host listener on
/// port 77, advertising `credit` bytes; returns the host end.
fn guest_connection(
    m: &mut VsockMuxer,
    listener: &UnixListener,
    guest_port: u32,
    credit: u32,
) -> UnixStream {
    let mut req = guest_pkt(guest_port, 77, op::REQUEST, b"");
    req.hdr.buf_alloc = credit;
    m.send_pkt(req);
    let resp = m.recv_pkt(4096).expect("RESPONSE");
    assert_eq!(resp.hdr.op, op::RESPONSE);
    listener.accept().expect("accept").0
}

#[test]
fn a_guest_that_never_closes_after_the_host_left_is_reset() {
    let (dir, mut m) = muxer();
    short_deadlines(&mut m, Duration::from_secs(5), Duration::from_millis(300));
    let listener = UnixListener::bind(dir.path().join("v.sock_77")).expect("bind");

    // One guest takes the data and the SHUTDOWN, then ignores them.
    let mut host = guest_connection(&mut m, &listener, 1000, 4096);
    host.write_all(b"bye").expect("write");
    drop(host);
    let data = wait_for_op(&mut m, op::RW);
    assert_eq!((data.hdr.dst_port, &data.payload[..]), (1000, &b"bye"[..]));
    let shut = wait_for_op(&mut m, op::SHUTDOWN);
    assert_eq!(
        shut.hdr.flags,
        shutdown::BOTH,
        "the host end is gone both ways"
    );
    assert_eq!(wait_for_op(&mut m, op::RST).hdr.dst_port, 1000);
    assert_eq!(m.connection_count(), 0);

    // Another never takes the data at all (no credit).
    let mut host = guest_connection(&mut m, &listener, 1001, 0);
    host.write_all(b"unread").expect("write");
    drop(host);
    assert_eq!(wait_for_op(&mut m, op::RST).hdr.dst_port, 1001);
    assert_eq!((m.connection_count(), m.buffer_reserved()), (0, 0));
}

#[test]
fn a_guest_still_taking_data_after_the_host_left_is_not_reset() {
    let (dir, mut m) = muxer();
    short_deadlines(&mut m, Duration::from_secs(5), Duration::from_millis(600));
    let listener = UnixListener::bind(dir.path().join("v.sock_77")).expect("bind");
    let mut host = guest_connection(&mut m, &listener, 1000, 4);
    host.write_all(b"0123456789ab").expect("write");
    drop(host);
    let mut got = Vec::new();
    for taken in [4u32, 8, 12] {
        let p = wait_for_op(&mut m, op::RW);
        got.extend_from_slice(&p.payload);
        // The guest is slow: it hands back credit after a while, within the deadline.
        std::thread::sleep(Duration::from_millis(250));
        let mut update = guest_pkt(1000, 77, op::CREDIT_UPDATE, b"");
        update.hdr.buf_alloc = 4;
        update.hdr.fwd_cnt = taken;
        m.send_pkt(update);
    }
    assert_eq!(got, b"0123456789ab");
    assert_eq!(wait_for_op(&mut m, op::SHUTDOWN).hdr.flags, shutdown::BOTH);
    assert_eq!(m.connection_count(), 1, "not reset while it made progress");
    m.send_pkt(guest_pkt(1000, 77, op::RST, b""));
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn connections_share_one_buffer_budget() {
    let (dir, mut m) = muxer();
    let full = CONN_BUF_SIZE as usize;
    m.set_limits(Limits {
        buffer_budget: 2 * full + 8192 + 100,
        ..Default::default()
    });
    let listener = UnixListener::bind(dir.path().join("v.sock_77")).expect("bind");
    let mut hosts = Vec::new();
    let mut advertised = Vec::new();
    for port in 1000..1004 {
        m.send_pkt(guest_pkt(port, 77, op::REQUEST, b""));
        let p = m.recv_pkt(4096).expect("answer");
        advertised.push((p.hdr.op, p.hdr.buf_alloc));
        if p.hdr.op == op::RESPONSE {
            hosts.push(listener.accept().expect("accept").0);
        }
    }
    assert_eq!(
        advertised,
        [
            (op::RESPONSE, CONN_BUF_SIZE),
            (op::RESPONSE, CONN_BUF_SIZE),
            (op::RESPONSE, 8192),
            (op::RST, 0)
        ],
        "full buffers while the budget lasts, then what is left, then none"
    );
    assert_eq!(m.buffer_reserved(), 2 * full + 8192);

    // The small connection carries a buffer's worth.
    m.send_pkt(guest_pkt(1002, 77, op::RW, &[7u8; 8192]));
    assert_eq!(read_exactly(&mut hosts[2], 8192), vec![7u8; 8192]);
    m.send_pkt(guest_pkt(1002, 77, op::RST, b""));
    assert_eq!(
        m.buffer_reserved(),
        2 * full,
        "a closed connection gives its share back"
    );

    // A closed connection's share goes to the next one.
    m.send_pkt(guest_pkt(1000, 77, op::RST, b""));
    m.send_pkt(guest_pkt(1004, 77, op::REQUEST, b""));
    let p = m.recv_pkt(4096).expect("answer");
    assert_eq!((p.hdr.op, p.hdr.buf_alloc), (op::RESPONSE, CONN_BUF_SIZE));
}

#[test]
fn connections_with_data_are_served_in_turn() {
    let (dir, mut m) = muxer();
    let listener = UnixListener::bind(dir.path().join("v.sock_77")).expect("bind");
    let mut hosts: Vec<UnixStream> = (0..100)
        .map(|i| guest_connection(&mut m, &listener, 2000 + i, 4096))
        .collect();
    // New connections are tried once (the host may have written before the guest's
    // first look); the idle ones then leave the queue.
    while m.recv_pkt(4096).is_some() {}
    assert!(!m.has_rx());
    for i in [10usize, 50, 90] {
        hosts[i].write_all(b"abcdefgh").expect("write");
    }
    assert!(wait_readable(&m));
    serve(&mut m);
    // Four bytes at a time: each connection in turn, then round again.
    let mut order = Vec::new();
    while let Some(p) = m.recv_pkt(4) {
        assert_eq!(p.hdr.op, op::RW);
        order.push((p.hdr.dst_port, p.payload));
    }
    let ports: Vec<u32> = order.iter().map(|(port, _)| *port).collect();
    assert_eq!(ports.len(), 6);
    assert_eq!(ports[..3], ports[3..], "round robin: {ports:?}");
    assert!(order.iter().all(|(_, d)| d == b"abcd" || d == b"efgh"));
    assert!(!m.has_rx());

    // A queued connection that the guest resets leaves nothing behind in the queue.
    hosts[20].write_all(b"x").expect("write");
    assert!(wait_readable(&m));
    serve(&mut m);
    assert!(m.has_rx());
    m.send_pkt(guest_pkt(2020, 77, op::RST, b""));
    assert!(!m.has_rx());
    assert_eq!(m.connection_count(), 99);
}

/// The deadline timer works under the VMM thread's seccomp filter (run in a child: a
/// blocked call ends the process it happens in).
#[test]
fn deadlines_fire_under_the_vmm_seccomp_filter() {
    let (dir, mut m) = muxer();
    short_deadlines(
        &mut m,
        Duration::from_millis(100),
        Duration::from_millis(100),
    );
    let uds = dir.path().join("v.sock");
    let status = crate::seccomp::exit_status_under(crate::seccomp::ThreadKind::Vmm, || {
        let mut client = UnixStream::connect(&uds).ok()?;
        client.write_all(b"CONNECT 9\n").ok()?;
        (next_pkt(&mut m)?.hdr.op == op::REQUEST).then_some(())?;
        // (poll(2) is not on the VMM thread's list: its loop uses epoll_wait.)
        std::thread::sleep(Duration::from_millis(300));
        m.process_host_events();
        (m.recv_pkt(4096)?.hdr.op == op::RST).then_some(())
    });
    assert_eq!(status, 0, "child exit status (159: a blocked system call)");
}

/// A driver reset clears the muxer on a vCPU thread, whose filter allows closing sockets
/// but not re-arming the deadline timer; the timer then fires on the VMM thread harmlessly.
#[test]
fn a_reset_with_deadlines_pending_passes_the_vcpu_filter() {
    let (dir, mut m) = muxer();
    short_deadlines(&mut m, Duration::from_millis(200), Duration::from_secs(8));
    let mut client = UnixStream::connect(dir.path().join("v.sock")).expect("connect");
    client.write_all(b"CONNECT 52\n").expect("write");
    assert_eq!(next_pkt(&mut m).expect("REQUEST").hdr.op, op::REQUEST);
    let status = crate::seccomp::exit_status_under(crate::seccomp::ThreadKind::Vcpu, || {
        m.clear();
        (m.connection_count() == 0).then_some(())
    });
    assert_eq!(status, 0, "child exit status (159: a blocked system call)");
    m.clear();
    assert!(wait_readable(&m), "the old deadline still fires");
    m.process_host_events();
    assert!(m.recv_pkt(4096).is_none(), "and finds nothing to reset");
}
