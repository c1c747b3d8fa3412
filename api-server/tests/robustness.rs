//! The HTTP layer under awkward clients: huge bodies, oversized headers, truncated
//! requests, byte-at-a-time writes, pipelining, slow readers, too many connections.

mod common;

use common::{request_bytes, Client, TestServer};
use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

const BOOT: &str =
    r#"{"kernel_image_path":"/vmlinux","boot_args":"console=ttyS0 reboot=k panic=1"}"#;

#[test]
fn a_1mib_body_is_413_without_being_read_and_the_server_goes_on() {
    let t = TestServer::start();
    let mut c = t.client();
    let body = vec![b' '; 1 << 20];
    let head = format!(
        "PUT /boot-source HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.send_raw(head.as_bytes());
    // The server answers and closes without reading the body: writing all of it fails
    // (EPIPE) or blocks until the close, both fine; the reply is already queued for us.
    let mut writer = c.stream.try_clone().expect("clone");
    let sender = thread::spawn(move || writer.write_all(&body).is_ok());
    let r = c.read_reply();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(
        r.fault().contains("exceeds the limit of 65536 bytes"),
        "{}",
        r.fault()
    );
    assert!(c.at_eof(), "the connection is closed after a 413");
    let _ = sender.join();

    let mut next = t.client();
    assert_eq!(next.request("PUT", "/boot-source", Some(BOOT)).status, 204);
    // A body at the limit is fine (it reaches JSON parsing).
    let padded = format!("{BOOT}{}", " ".repeat(65536 - BOOT.len()));
    let r = next.request("PUT", "/boot-source", Some(&padded));
    assert_eq!(r.status, 204, "{}", r.body);
}

#[test]
fn oversized_headers_are_431_and_chunked_bodies_400() {
    let t = TestServer::start();
    let mut c = t.client();
    c.send_raw(format!("GET / HTTP/1.1\r\nX-Filler: {}\r\n\r\n", "x".repeat(9000)).as_bytes());
    let r = c.read_reply();
    assert_eq!(r.status, 431);
    assert!(r.fault().contains("headers exceed"), "{}", r.fault());
    assert!(c.at_eof());

    let mut c = t.client();
    c.send_raw(
        b"PUT /boot-source HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    );
    let r = c.read_reply();
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("Transfer-Encoding"), "{}", r.fault());
    assert!(c.at_eof());

    let mut c = t.client();
    c.send_raw(b"this is not http\r\n\r\n");
    assert_eq!(c.read_reply().status, 400);
    assert_eq!(t.client().request("GET", "/", None).status, 200);
}

#[test]
fn clients_leaving_mid_request_do_not_disturb_the_server() {
    let t = TestServer::start();
    let full = request_bytes("PUT", "/boot-source", Some(BOOT));
    for cut in [1, 10, full.len() / 2, full.len() - 1] {
        let mut c = t.client();
        c.send_raw(&full.as_bytes()[..cut]);
        drop(c);
    }
    // Half-closed after a complete request: the reply still arrives.
    let mut c = t.client();
    c.send_raw(request_bytes("GET", "/", None).as_bytes());
    c.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    assert_eq!(c.read_reply().status, 200);
    assert!(c.at_eof());

    let mut c = t.client();
    assert_eq!(c.request("GET", "/", None).json()["state"], "Not started");
    drop(c);
    // None of the truncated requests reached the controller.
    let vmm = t.stop();
    assert_eq!(vmm.log.len(), 2, "{:?}", vmm.log);
    assert!(vmm.config.boot_source.is_none());
}

#[test]
fn a_request_written_one_byte_at_a_time() {
    let t = TestServer::start();
    let mut c = t.client();
    for byte in request_bytes("PUT", "/boot-source", Some(BOOT)).bytes() {
        c.send_raw(&[byte]);
        thread::sleep(Duration::from_micros(300));
    }
    assert_eq!(c.read_reply().status, 204);
    let r = c.request("GET", "/vm/config", None);
    assert_eq!(
        r.json()["boot-source"]["boot_args"],
        "console=ttyS0 reboot=k panic=1"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let t = TestServer::start();
    let mut c = t.client();
    let two = request_bytes("PUT", "/boot-source", Some(BOOT))
        + &request_bytes("GET", "/vm/config", None);
    c.send_raw(two.as_bytes());
    assert_eq!(c.read_reply().status, 204);
    let config = c.read_reply();
    assert_eq!(config.status, 200);
    assert_eq!(
        config.json()["boot-source"]["kernel_image_path"],
        "/vmlinux"
    );

    // Many at once, replies not read until all are sent: the server stops reading while
    // its unsent output is large and carries on as the client catches up.
    const N: usize = 3000;
    let batch: String = (0..N)
        .map(|i| request_bytes("GET", if i % 2 == 0 { "/" } else { "/version" }, None))
        .collect();
    let mut writer = c.stream.try_clone().expect("clone");
    let sender = thread::spawn(move || writer.write_all(batch.as_bytes()).is_ok());
    for i in 0..N {
        let r = c.read_reply();
        assert_eq!(r.status, 200, "reply {i}");
        assert_eq!(
            r.json().get("firecracker_version").is_some(),
            i % 2 == 1,
            "reply {i} is in order"
        );
    }
    assert!(sender.join().expect("sender"), "all requests were written");
}

#[test]
fn expect_100_continue_is_answered() {
    let t = TestServer::start();
    let mut c = t.client();
    let head = format!(
        "PUT /boot-source HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        BOOT.len()
    );
    c.send_raw(head.as_bytes());
    let interim = c.read_reply();
    assert_eq!(interim.status, 100);
    c.send_raw(BOOT.as_bytes());
    assert_eq!(c.read_reply().status, 204);
}

#[test]
fn connections_beyond_the_cap_are_refused_and_slots_come_back() {
    let t = TestServer::start_with(|c| c.max_connections = 3);
    let mut held: Vec<Client> = (0..3).map(|_| t.client()).collect();
    for c in &mut held {
        assert_eq!(c.request("GET", "/", None).status, 200);
    }
    let mut extra = t.client();
    let r = extra.read_reply();
    assert_eq!(r.status, 503);
    assert!(extra.at_eof());

    drop(held.pop());
    // The server notices the close asynchronously; a new connection fits soon after.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = t.client();
        c.send_raw(request_bytes("GET", "/", None).as_bytes());
        if c.read_reply().status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
        thread::sleep(Duration::from_millis(20));
    }
    for c in &mut held {
        assert_eq!(
            c.request("GET", "/version", None).status,
            200,
            "held connections still work"
        );
    }
}

#[test]
fn stop_is_prompt_with_idle_and_half_sent_clients() {
    let t = TestServer::start();
    let _idle = t.client();
    let mut partial = t.client();
    partial.send_raw(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 100\r\n\r\n{");
    let path = t.path.clone();
    let started = Instant::now();
    let vmm = t.stop();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(vmm.log.is_empty());
    assert!(!path.exists(), "the socket file is removed");
    let mut rest = Vec::new();
    assert!(
        common::closed(partial.stream.read_to_end(&mut rest)),
        "clients see the connection close"
    );
}

#[test]
fn stalled_requests_get_408_and_idle_connections_close_so_slots_come_back() {
    let t = TestServer::start_with(|c| {
        c.max_connections = 3;
        c.request_deadline = Duration::from_millis(300);
        c.idle_deadline = Duration::from_millis(900);
    });
    // Three clients take every slot: two stall mid-request, one never sends anything.
    let mut stalled: Vec<Client> = (0..2).map(|_| t.client()).collect();
    for c in &mut stalled {
        c.send_raw(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"kernel");
    }
    let mut silent = t.client();
    let started = Instant::now();
    for c in &mut stalled {
        let r = c.read_reply();
        assert_eq!(r.status, 408, "{}", r.body);
        assert!(c.at_eof(), "closed after the 408");
    }
    let stalled_for = started.elapsed();
    assert!(stalled_for < Duration::from_secs(5), "{stalled_for:?}");
    // The silent one is closed once idle too long, without an answer.
    assert!(silent.at_eof(), "the idle connection is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "not before the idle deadline"
    );
    // The slots came back: a well-behaved client is served, even byte by byte within the deadline.
    let mut c = t.client();
    for b in request_bytes("GET", "/", None).bytes() {
        c.send_raw(&[b]);
    }
    assert_eq!(c.read_reply().status, 200);
    // A kept-alive client whose next request starts later gets a fresh deadline.
    thread::sleep(Duration::from_millis(400));
    assert_eq!(c.request("GET", "/version", None).status, 200);
}
