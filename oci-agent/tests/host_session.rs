//! The agent as a host process over a Unix socket: the requests that are not about one
//! container's config (network set-up, refresh after a restore) and a host that comes and
//! goes while containers exit.

#![allow(clippy::unwrap_used)]

mod common;

use agent_protocol::{Bytes, ContainerStatus, ExitStatus, RequestBody, ResponseBody, INIT_STREAM};
use common::{sh, spec, Agent};

macro_rules! require_namespaces {
    () => {
        if !common::can_unshare() {
            return;
        }
    };
}

#[test]
fn network_requests_are_checked_and_hostile_ones_refused() {
    use agent_protocol::network::NetInterface;
    let mut a = Agent::start();
    let eth0 = NetInterface {
        name: "eth0".into(),
        mac: [2, 0, 0, 0, 0, 7],
        address: Some(("10.9.0.5".parse().unwrap(), 24)),
        gateway: Some("10.9.0.1".parse().unwrap()),
    };
    let network = |interfaces: Vec<NetInterface>| RequestBody::Network { interfaces };
    // Checked, not applied, by a host process: the host's interfaces stay as they are.
    assert_eq!(
        a.request(network(vec![eth0.clone()])),
        Ok(ResponseBody::Done)
    );
    let hostile = [
        (
            NetInterface {
                name: "../../etc".into(),
                ..eth0.clone()
            },
            "interface name",
        ),
        (
            NetInterface {
                name: "x".repeat(4096),
                ..eth0.clone()
            },
            "interface name",
        ),
        (
            NetInterface {
                mac: [0xff; 6],
                ..eth0.clone()
            },
            "unicast",
        ),
        (
            NetInterface {
                address: Some(("10.9.0.5".parse().unwrap(), 200)),
                ..eth0.clone()
            },
            "over 32",
        ),
        (
            NetInterface {
                gateway: Some("192.168.1.1".parse().unwrap()),
                ..eth0.clone()
            },
            "gateway",
        ),
    ];
    for (iface, why) in hostile {
        let err = a.request(network(vec![iface])).unwrap_err();
        assert!(err.contains(why), "{why}: {err}");
    }
    let err = a.request(network(vec![eth0.clone(); 9])).unwrap_err();
    assert!(err.contains("9 interfaces"), "{err}");
    let err = a.request(network(Vec::new())).unwrap_err();
    assert!(err.contains("0 interfaces"), "{err}");
    // Malformed JSON for the request is a bad request, and the agent goes on.
    let bad =
        r#"{"id": 777, "body": {"network": {"interfaces": [{"name": "eth0", "mac": [1, 2]}]}}}"#;
    let err = a.raw_request(777, bad).unwrap_err();
    assert!(err.contains("bad request"), "{err}");
    assert_eq!(a.request(network(vec![eth0])), Ok(ResponseBody::Done));
    a.shutdown();
}

#[test]
fn refresh_is_checked_but_not_applied_by_a_host_process() {
    let mut a = Agent::start();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let refresh = |entropy: usize, hostname: Option<&str>| RequestBody::Refresh {
        entropy: Bytes(vec![0x5a; entropy]),
        realtime_ns: 1_000_000_000,
        hostname: hostname.map(str::to_owned),
    };
    // Valid with or without a container; the host's clock and name stay as they are.
    let r = a.request(refresh(64, Some("clone-1")));
    assert_eq!(r, Ok(ResponseBody::Done));
    assert!(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            > 1_000_000
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        hostname
    );
    let err = a.request(refresh(513, None)).unwrap_err();
    assert!(err.contains("513 bytes of entropy"), "{err}");
    let err = a.request(refresh(64, Some("a/b"))).unwrap_err();
    assert!(err.contains("host name \"a/b\""), "{err}");
    a.shutdown();
}

#[test]
fn sync_is_answered_after_the_sync_and_the_agent_serves_on() {
    require_namespaces!();
    let mut a = Agent::start();
    // Without a container, and with one that has exited: the host sends it before it stops
    // the VM.
    assert_eq!(a.request(RequestBody::Sync), Ok(ResponseBody::Done));
    a.create(spec("synced", |v| sh(v, "echo out; exit 3")), false)
        .unwrap();
    a.request(RequestBody::Start).unwrap();
    let outcome = a.wait(INIT_STREAM);
    assert_eq!(outcome.status, Some(ExitStatus::exited(3)));
    assert_eq!(outcome.stdout, "out\n");
    assert_eq!(a.request(RequestBody::Sync), Ok(ResponseBody::Done));
    assert!(matches!(
        a.request(RequestBody::State),
        Ok(ResponseBody::State {
            status: ContainerStatus::Stopped,
            ..
        })
    ));
    a.shutdown();
}

#[test]
fn stdin_sent_before_start_reaches_the_init_process() {
    require_namespaces!();
    let mut a = Agent::start();
    a.create(spec("early", |v| sh(v, "cat; echo eof")), false)
        .unwrap();
    // The host relays its stdin from the create on: data and its end come before Start.
    let stdin = |data: &str| RequestBody::Stdin {
        stream: INIT_STREAM.into(),
        data: Bytes::from(data),
    };
    assert_eq!(a.request(stdin("early ")), Ok(ResponseBody::Done));
    assert_eq!(a.request(stdin("words\n")), Ok(ResponseBody::Done));
    let close = RequestBody::CloseStdin {
        stream: INIT_STREAM.into(),
    };
    assert_eq!(a.request(close.clone()), Ok(ResponseBody::Done));
    let err = a.request(stdin("late")).unwrap_err();
    assert!(err.contains("closed"), "{err}");
    a.request(RequestBody::Start).unwrap();
    let outcome = a.wait(INIT_STREAM);
    assert_eq!(outcome.stdout, "early words\neof\n");
    assert_eq!(outcome.status, Some(ExitStatus::exited(0)));
    a.shutdown();
}

#[test]
fn exits_while_no_host_is_connected_reach_the_next_host() {
    require_namespaces!();
    let mut a = Agent::start_with(&["--keep-listening"]);
    let script = "echo before; while [ ! -e /tmp/go ]; do sleep 0.02; done; echo after; exit 7";
    let created = a.create(spec("away", |v| sh(v, script)), false).unwrap();
    let ResponseBody::Created { pid } = created else {
        panic!("{created:?}")
    };
    assert_eq!(a.request(RequestBody::Start).unwrap(), ResponseBody::Done);
    let exec = serde_json::json!({"args": ["sleep", "1000"], "env": ["PATH=/bin"], "cwd": "/",
        "user": {"uid": 0, "gid": 0}});
    a.request(RequestBody::Exec {
        exec_id: "e1".into(),
        process: Box::new(serde_json::from_value(exec).unwrap()),
    })
    .unwrap();
    a.wait_for_stdout(INIT_STREAM, "before\n");
    let running = ResponseBody::State {
        status: ContainerStatus::Running,
        pid: Some(pid),
        exit: None,
        init_pid: Some(pid),
        execs: vec!["e1".into()],
    };
    assert_eq!(a.request(RequestBody::State).unwrap(), running);

    // The host goes away; init exits, which ends the exec'd process too (its pid namespace is
    // gone), and the agent reaps both while nobody listens.
    a.disconnect();
    std::fs::write(a.rootfs.path().join("rootfs/tmp/go"), "").unwrap();
    let begin = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(begin.elapsed().as_secs() < 60, "init {pid} never ended");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // The next host gets what it missed, in order, then asks for the state.
    a.connect();
    let e1 = a.wait("e1");
    assert_eq!(
        e1.status,
        Some(ExitStatus::signaled(libc::SIGKILL)),
        "{e1:?}"
    );
    let init = a.wait(INIT_STREAM);
    assert_eq!(init.stdout, "before\nafter\n");
    assert_eq!(init.status, Some(ExitStatus::exited(7)));
    assert_eq!(
        a.request(RequestBody::State).unwrap(),
        ResponseBody::State {
            status: ContainerStatus::Stopped,
            pid: None,
            exit: Some(ExitStatus::exited(7)),
            init_pid: Some(pid),
            execs: vec![],
        }
    );
    a.shutdown();
}
