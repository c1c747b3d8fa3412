//! The host side of the agent connection against a fake agent on a socketpair.

use super::*;
use agent_protocol::{Bytes, ExitStatus, Hello};
use std::os::unix::net::UnixListener;

/// The agent end of a socketpair after the handshake, and the host's [`AgentConn`].
pub(crate) fn pair() -> (UnixStream, Arc<AgentConn>, Receiver<Notice>) {
    let (mut host, mut agent) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        handshake(&mut agent, "fake-agent").unwrap();
        agent
    });
    handshake(&mut host, "host").unwrap();
    let agent = t.join().unwrap();
    let (tx, rx) = mpsc::channel();
    let conn = AgentConn::start(host, false, move |n| {
        let _ = tx.send(n);
    })
    .unwrap();
    (agent, conn, rx)
}

fn reply(agent: &mut UnixStream, result: Result<ResponseBody, String>) -> RequestBody {
    let req: Request = read_frame(agent).unwrap();
    write_frame(agent, &AgentMessage::Response { id: req.id, result }).unwrap();
    req.body
}

#[test]
fn responses_reach_their_requests_and_events_their_streams() {
    let (mut agent, conn, init) = pair();
    let exec = conn.subscribe("exec-1");
    let c = conn.clone();
    let t = std::thread::spawn(move || c.request(RequestBody::Ps, Duration::from_secs(5)));
    assert_eq!(
        reply(&mut agent, Ok(ResponseBody::Pids { pids: vec![1, 7] })),
        RequestBody::Ps
    );
    assert_eq!(
        t.join().unwrap().unwrap(),
        ResponseBody::Pids { pids: vec![1, 7] }
    );

    let out = |stream: &str| {
        AgentMessage::Event(Event::Output {
            stream: stream.into(),
            fd: 1,
            data: Bytes::from("hi"),
        })
    };
    write_frame(&mut agent, &out("init")).unwrap();
    write_frame(&mut agent, &out("exec-1")).unwrap();
    write_frame(&mut agent, &out("nobody")).unwrap();
    write_frame(
        &mut agent,
        &AgentMessage::Event(Event::Exited {
            stream: "exec-1".into(),
            status: ExitStatus::exited(3),
        }),
    )
    .unwrap();
    assert!(matches!(
        init.recv().unwrap(),
        Notice::Init(Event::Output { .. })
    ));
    assert!(matches!(exec.recv().unwrap(), Event::Output { .. }));
    assert!(matches!(exec.recv().unwrap(), Event::Exited { .. }));

    let c = conn.clone();
    let t = std::thread::spawn(move || c.request_done(RequestBody::Start, Duration::from_secs(5)));
    reply(&mut agent, Err("no such process".into()));
    let err = t.join().unwrap().unwrap_err().to_string();
    assert_eq!(err, "the guest agent refused Start: no such process");
}

#[test]
fn refresh_sends_fresh_entropy_the_clock_and_the_name() {
    let (mut agent, conn, _init) = pair();
    let mut seen = Vec::new();
    for name in [Some("clone-1"), None] {
        let c = conn.clone();
        let t = std::thread::spawn(move || c.refresh(name, Duration::from_secs(5)));
        let RequestBody::Refresh {
            entropy,
            realtime_ns,
            hostname,
        } = reply(&mut agent, Ok(ResponseBody::Done))
        else {
            panic!("not a Refresh")
        };
        t.join().unwrap().unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert!(now.as_nanos() - u128::from(realtime_ns) < 5_000_000_000);
        assert_eq!((entropy.len(), hostname.as_deref()), (64, name));
        seen.push(entropy);
    }
    assert_ne!(seen[0], seen[1], "each refresh draws new bytes");
}

#[test]
fn network_requests_are_checked_before_they_are_sent() {
    use agent_protocol::network::NetInterface;
    let eth0 = NetInterface {
        name: "eth0".into(),
        mac: [2, 1, 2, 3, 4, 5],
        address: Some(("10.0.0.5".parse().unwrap(), 24)),
        gateway: Some("10.0.0.1".parse().unwrap()),
    };
    let hostile = NetInterface {
        name: "../eth0".into(),
        ..eth0.clone()
    };
    let err = super::network_request(&[hostile]).unwrap_err().to_string();
    assert!(err.contains("interface name"), "{err}");
    let RequestBody::Network { interfaces } = super::network_request(&[eth0]).unwrap() else {
        panic!("not a Network request")
    };
    assert_eq!(interfaces[0].mac, [2, 1, 2, 3, 4, 5]);
}

#[test]
fn a_lost_connection_fails_waiting_and_later_requests() {
    let (agent, conn, init) = pair();
    let c = conn.clone();
    let t = std::thread::spawn(move || c.request(RequestBody::State, Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(50));
    drop(agent);
    assert!(matches!(t.join().unwrap(), Err(AgentError::Lost(_))));
    assert!(matches!(init.recv().unwrap(), Notice::Lost(_)));
    assert!(matches!(
        conn.request(RequestBody::State, Duration::from_secs(1)),
        Err(AgentError::Lost(_))
    ));
    assert!(
        conn.subscribe("exec-2").recv().is_err(),
        "disconnected at once"
    );
}

#[test]
fn a_silent_agent_times_out() {
    let (_agent, conn, _init) = pair();
    let err = conn
        .request(RequestBody::State, Duration::from_millis(100))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the guest agent did not answer State within 100ms"
    );
}

#[test]
fn vsock_connect_speaks_the_connect_line_and_retries_until_listening() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let console = dir.path().join("console.log");
    std::fs::write(&console, "line1\nline2\nboot stuck\n").unwrap();
    // Nothing listening: a clear error with the console tail.
    let err = wait_for_agent(
        &uds,
        1024,
        Instant::now() + Duration::from_millis(700),
        Some(&console),
        &|| None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("did not answer on vsock port 1024")
            && err.ends_with("line1\nline2\nboot stuck"),
        "{err}"
    );
    let err = wait_for_agent(
        &uds,
        1024,
        Instant::now() + Duration::from_secs(60),
        None,
        &|| Some("guest panicked".into()),
    )
    .unwrap_err()
    .to_string();
    // Without a console log: the reason alone.
    assert!(err.ends_with("(the VM ended: guest panicked)"), "{err}");

    // A fake VMM socket: resets the first client (agent not listening yet), accepts the second.
    let listener = UnixListener::bind(&uds).unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 13];
        let (mut first, _) = listener.accept().unwrap();
        first.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"CONNECT 1024\n");
        drop(first);
        let (mut second, _) = listener.accept().unwrap();
        second.read_exact(&mut buf).unwrap();
        second.write_all(b"OK 1073741824\n").unwrap();
        write_frame(&mut second, &Hello::new("fake")).unwrap();
        let hello: Hello = read_frame(&mut second).unwrap();
        hello.name
    });
    let stream = wait_for_agent(
        &uds,
        1024,
        Instant::now() + Duration::from_secs(30),
        Some(&console),
        &|| None,
    )
    .unwrap();
    assert_eq!(t.join().unwrap(), "zvm-sandbox");
    drop(stream);
}

/// Reads one request as the agent, failing (not hanging) when none comes within 5 s.
fn next_request(agent: &mut UnixStream) -> Request {
    agent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    read_frame(agent).expect("the next request, without waiting for an answer")
}

fn created_spec() -> RequestBody {
    super::create_request(
        oci_spec::runtime::Spec::default(),
        Rootfs::BlockDevice {
            device: "/dev/vdb".into(),
            fstype: "ext4".into(),
        },
        None,
        false,
    )
}

#[test]
fn refresh_network_and_create_go_out_before_any_answer() {
    use agent_protocol::network::NetInterface;
    let (mut agent, conn, _init) = pair();
    let eth0 = NetInterface {
        name: "eth0".into(),
        mac: [2, 1, 2, 3, 4, 5],
        address: None,
        gateway: None,
    };
    let c = conn.clone();
    let t = std::thread::spawn(move || {
        c.refresh_and_create(Some("c1"), &[eth0], created_spec(), Duration::from_secs(5))
    });
    // All three are read before the first is answered.
    let requests: Vec<Request> = (0..3).map(|_| next_request(&mut agent)).collect();
    let names: Vec<&str> = requests.iter().map(|r| request_name(&r.body)).collect();
    assert_eq!(names, ["Refresh", "Network", "Create"]);
    let RequestBody::Refresh { hostname, .. } = &requests[0].body else {
        panic!("not a Refresh")
    };
    assert_eq!(hostname.as_deref(), Some("c1"));
    for (r, result) in requests.iter().zip([
        Ok(ResponseBody::Done),
        Ok(ResponseBody::Done),
        Ok(ResponseBody::Created { pid: 42 }),
    ]) {
        write_frame(&mut agent, &AgentMessage::Response { id: r.id, result }).unwrap();
    }
    assert_eq!(t.join().unwrap().unwrap(), 42);
    // Without interfaces, no Network request.
    let c = conn.clone();
    let t = std::thread::spawn(move || {
        c.refresh_and_create(None, &[], created_spec(), Duration::from_secs(5))
    });
    let (refresh, create) = (next_request(&mut agent), next_request(&mut agent));
    assert_eq!(
        (request_name(&refresh.body), request_name(&create.body)),
        ("Refresh", "Create")
    );
    for (id, result) in [
        (refresh.id, Ok(ResponseBody::Done)),
        (create.id, Ok(ResponseBody::Created { pid: 7 })),
    ] {
        write_frame(&mut agent, &AgentMessage::Response { id, result }).unwrap();
    }
    assert_eq!(t.join().unwrap().unwrap(), 7);
}

#[test]
fn a_refused_refresh_is_the_error_and_the_vm_is_powered_off() {
    let (mut agent, conn, _init) = pair();
    let c = conn.clone();
    let t = std::thread::spawn(move || {
        c.refresh_and_create(Some("c1"), &[], created_spec(), Duration::from_secs(5))
    });
    let (refresh, create) = (next_request(&mut agent), next_request(&mut agent));
    for (id, result) in [
        (
            refresh.id,
            Err("sethostname: Operation not permitted".to_string()),
        ),
        (create.id, Ok(ResponseBody::Created { pid: 9 })),
    ] {
        write_frame(&mut agent, &AgentMessage::Response { id, result }).unwrap();
    }
    assert_eq!(
        request_name(&reply(&mut agent, Ok(ResponseBody::Done))),
        "Shutdown"
    );
    let err = t.join().unwrap().unwrap_err().to_string();
    assert_eq!(
        err,
        "the guest agent refused Refresh: sethostname: Operation not permitted"
    );
    // A refused Create after a good Refresh names Create; so does an answer of the wrong kind.
    for (answer, want) in [
        (
            Err("no such file: /bin/app".to_string()),
            "the guest agent refused Create: no such file: /bin/app",
        ),
        (
            Ok(ResponseBody::Done),
            "the guest agent answered Create with Done",
        ),
    ] {
        let c = conn.clone();
        let t = std::thread::spawn(move || {
            c.refresh_and_create(None, &[], created_spec(), Duration::from_secs(5))
        });
        let (refresh, create) = (next_request(&mut agent), next_request(&mut agent));
        for (id, result) in [(refresh.id, Ok(ResponseBody::Done)), (create.id, answer)] {
            write_frame(&mut agent, &AgentMessage::Response { id, result }).unwrap();
        }
        assert_eq!(
            request_name(&reply(&mut agent, Ok(ResponseBody::Done))),
            "Shutdown"
        );
        assert_eq!(t.join().unwrap().unwrap_err().to_string(), want);
    }
}

#[test]
fn a_silent_agent_fails_the_set_up_once() {
    let (mut agent, conn, _init) = pair();
    let c = conn.clone();
    let start = Instant::now();
    let t = std::thread::spawn(move || {
        c.refresh_and_create(None, &[], created_spec(), Duration::from_millis(200))
    });
    let _ = (next_request(&mut agent), next_request(&mut agent));
    let err = t.join().unwrap().unwrap_err().to_string();
    assert_eq!(err, "the guest agent did not answer Refresh within 200ms");
    // Create is not waited for after Refresh timed out, nor a Shutdown sent.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    agent
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(
        read_frame::<_, Request>(&mut agent).is_err(),
        "nothing more"
    );
}
