//! Unit tests of framing, handshake and message round trips.

use std::io::{Cursor, Read};

use oci_spec::runtime::{ProcessBuilder, Spec};

use super::*;

fn round_trip<T>(msg: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut wire = Vec::new();
    write_frame(&mut wire, msg).unwrap();
    assert_eq!(
        u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize,
        wire.len() - 4
    );
    let back: T = read_frame(&mut Cursor::new(&wire)).unwrap();
    assert_eq!(&back, msg);
    // The incremental decoder agrees, fed one byte at a time.
    let mut dec = FrameDecoder::new();
    let mut out = None;
    for b in &wire {
        assert!(out.is_none());
        dec.push(std::slice::from_ref(b));
        out = dec.next_frame::<T>().unwrap();
    }
    assert_eq!(out.as_ref(), Some(msg));
    dec.finish().unwrap();
    back
}

fn process() -> oci_spec::runtime::Process {
    ProcessBuilder::default()
        .args(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "echo hi".to_string(),
        ])
        .cwd("/")
        .build()
        .unwrap()
}

fn all_requests() -> Vec<RequestBody> {
    vec![
        RequestBody::Create {
            spec: Box::new(Spec::default()),
            rootfs: Rootfs::BlockDevice {
                device: "/dev/vda".into(),
                fstype: "ext4".into(),
            },
            terminal: false,
            share: None,
        },
        RequestBody::Create {
            spec: Box::new(Spec::default()),
            rootfs: Rootfs::Directory {
                path: "/tmp/rootfs".into(),
            },
            terminal: true,
            share: Some("zvm-share".into()),
        },
        RequestBody::Start,
        RequestBody::Exec {
            exec_id: "e1".into(),
            process: Box::new(process()),
        },
        RequestBody::Signal {
            stream: INIT_STREAM.into(),
            signal: 15,
            all: true,
        },
        RequestBody::Stdin {
            stream: "e1".into(),
            data: Bytes(vec![0, 1, 2, 255, b'\n']),
        },
        RequestBody::CloseStdin {
            stream: INIT_STREAM.into(),
        },
        RequestBody::ResizeTerminal {
            stream: INIT_STREAM.into(),
            rows: 24,
            cols: 80,
        },
        RequestBody::State,
        RequestBody::Ps,
        RequestBody::Shutdown,
        RequestBody::Sync,
        RequestBody::Refresh {
            entropy: Bytes((0..64).collect()),
            realtime_ns: 1_700_000_000_123_456_789,
            hostname: Some("clone-7".into()),
        },
        RequestBody::Refresh {
            entropy: Bytes(vec![7; REFRESH_ENTROPY_MAX]),
            realtime_ns: u64::MAX,
            hostname: None,
        },
    ]
}

#[test]
fn every_request_round_trips() {
    for (i, body) in all_requests().into_iter().enumerate() {
        round_trip(&Request { id: i as u64, body });
    }
}

#[test]
fn every_agent_message_round_trips() {
    let bodies = vec![
        ResponseBody::Done,
        ResponseBody::Created { pid: 42 },
        ResponseBody::Started { pid: 43 },
        ResponseBody::State {
            status: ContainerStatus::Created,
            pid: Some(42),
            exit: None,
            init_pid: Some(42),
            execs: vec![],
        },
        ResponseBody::State {
            status: ContainerStatus::Stopped,
            pid: None,
            exit: Some(ExitStatus::signaled(9)),
            init_pid: Some(42),
            execs: vec!["e1".into(), "e2".into()],
        },
        ResponseBody::Pids { pids: vec![1, 7] },
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        round_trip(&AgentMessage::Response {
            id: i as u64,
            result: Ok(body),
        });
    }
    round_trip(&AgentMessage::Response {
        id: 9,
        result: Err("no such file".into()),
    });
    round_trip(&AgentMessage::Event(Event::Output {
        stream: INIT_STREAM.into(),
        fd: FD_STDERR,
        data: Bytes((0..=255).collect()),
    }));
    round_trip(&AgentMessage::Event(Event::Exited {
        stream: "e1".into(),
        status: ExitStatus::exited(3),
    }));
    round_trip(&Hello::new("test"));
}

#[test]
fn refresh_wire_format_and_optional_hostname() {
    let req = Request {
        id: 3,
        body: RequestBody::Refresh {
            entropy: Bytes::from("abc"),
            realtime_ns: 5,
            hostname: Some("h".into()),
        },
    };
    let json = serde_json::to_value(&req).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"id": 3, "body": {"refresh": {
            "entropy": "YWJj", "realtime_ns": 5, "hostname": "h"}}})
    );
    // A host may leave the host name out.
    let req: Request = serde_json::from_value(
        serde_json::json!({"id": 4, "body": {"refresh": {"entropy": "", "realtime_ns": 1}}}),
    )
    .unwrap();
    assert_eq!(
        req.body,
        RequestBody::Refresh {
            entropy: Bytes::default(),
            realtime_ns: 1,
            hostname: None
        }
    );
    const { assert!(REFRESH_ENTROPY_MIN <= 64 && 64 <= REFRESH_ENTROPY_MAX) };
}

#[test]
fn wire_format_is_readable_json() {
    let frame = encode_frame(&AgentMessage::Event(Event::Output {
        stream: "init".into(),
        fd: 1,
        data: Bytes::from("hi\n"),
    }))
    .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&frame[4..]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"event": {"output": {"stream": "init", "fd": 1, "data": "aGkK"}}})
    );
    let frame = encode_frame(&ResponseBody::State {
        status: ContainerStatus::Running,
        pid: Some(1),
        exit: None,
        init_pid: Some(1),
        execs: vec!["e1".into()],
    })
    .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&frame[4..]).unwrap();
    assert_eq!(json["state"]["status"], "running");
    assert_eq!(json["state"]["init_pid"], 1);
    assert_eq!(json["state"]["execs"], serde_json::json!(["e1"]));
}

#[test]
fn a_state_without_the_newer_fields_still_decodes() {
    let old = serde_json::json!({"state": {"status": "stopped", "pid": null,
        "exit": {"code": 3, "signal": null}}});
    assert_eq!(
        serde_json::from_value::<ResponseBody>(old).unwrap(),
        ResponseBody::State {
            status: ContainerStatus::Stopped,
            pid: None,
            exit: Some(ExitStatus::exited(3)),
            init_pid: None,
            execs: vec![],
        }
    );
}

#[test]
fn shell_code() {
    assert_eq!(ExitStatus::exited(3).shell_code(), 3);
    assert_eq!(ExitStatus::signaled(9).shell_code(), 137);
    assert_eq!(
        ExitStatus {
            code: None,
            signal: None
        }
        .shell_code(),
        255
    );
}

/// A reader that would hand out endless bytes: proves an oversized frame is refused before
/// its payload is read (or allocated).
struct Endless {
    header: [u8; 4],
    pos: usize,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos < 4 {
            let n = (4 - self.pos).min(buf.len());
            buf[..n].copy_from_slice(&self.header[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        } else {
            panic!("payload of an oversized frame was read");
        }
    }
}

#[test]
fn oversized_frame_rejected_without_reading_payload() {
    for len in [MAX_FRAME_LEN + 1, u32::MAX] {
        let mut r = Endless {
            header: len.to_be_bytes(),
            pos: 0,
        };
        match read_frame::<_, Request>(&mut r) {
            Err(ProtocolError::FrameTooLarge { len: l, max }) => {
                assert_eq!(l, u64::from(len));
                assert_eq!(max, MAX_FRAME_LEN);
            }
            other => panic!("{other:?}"),
        }
        let mut dec = FrameDecoder::new();
        dec.push(&len.to_be_bytes());
        assert!(matches!(
            dec.next_frame::<Request>(),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }
}

#[test]
fn oversized_message_refused_on_send() {
    let big = RequestBody::Stdin {
        stream: INIT_STREAM.into(),
        data: Bytes(vec![7; MAX_FRAME_LEN as usize]),
    };
    let mut wire = Vec::new();
    assert!(matches!(
        write_frame(&mut wire, &Request { id: 1, body: big }),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
    assert!(wire.is_empty());
}

#[test]
fn truncated_frames() {
    let frame = encode_frame(&Request {
        id: 1,
        body: RequestBody::State,
    })
    .unwrap();
    // Clean EOF between frames.
    assert!(matches!(
        read_frame::<_, Request>(&mut Cursor::new(&[][..])),
        Err(ProtocolError::Closed)
    ));
    // Mid-header.
    assert!(matches!(
        read_frame::<_, Request>(&mut Cursor::new(&frame[..2])),
        Err(ProtocolError::Truncated {
            expected: 4,
            got: 2
        })
    ));
    // Mid-payload.
    let cut = frame.len() - 3;
    match read_frame::<_, Request>(&mut Cursor::new(&frame[..cut])) {
        Err(ProtocolError::Truncated { expected, got }) => {
            assert_eq!(expected, frame.len() - 4);
            assert_eq!(got, cut - 4);
        }
        other => panic!("{other:?}"),
    }
    let mut dec = FrameDecoder::new();
    dec.push(&frame[..cut]);
    assert!(dec.next_frame::<Request>().unwrap().is_none());
    assert!(matches!(dec.finish(), Err(ProtocolError::Truncated { .. })));
}

#[test]
fn garbage_json() {
    let payloads: [&[u8]; 4] = [
        b"not json",
        b"{\"id\": 1}",
        b"{\"id\": 1, \"body\": \"launch_missiles\"}",
        b"{\"id\": 1, \"body\": {\"stdin\": {\"stream\": \"init\", \"data\": \"!!\"}}}",
    ];
    for p in payloads {
        let mut wire = (p.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(p);
        assert!(matches!(
            read_frame::<_, Request>(&mut Cursor::new(&wire)),
            Err(ProtocolError::Json(_))
        ));
        let mut dec = FrameDecoder::new();
        dec.push(&wire);
        dec.push(
            &encode_frame(&Request {
                id: 2,
                body: RequestBody::Ps,
            })
            .unwrap(),
        );
        assert!(matches!(
            dec.next_frame::<Request>(),
            Err(ProtocolError::Json(_))
        ));
        // The bad frame was consumed; the next one decodes.
        assert_eq!(dec.next_frame::<Request>().unwrap().unwrap().id, 2);
    }
}

#[test]
fn several_frames_in_one_push() {
    let mut wire = Vec::new();
    for id in 0..3 {
        wire.extend(
            encode_frame(&Request {
                id,
                body: RequestBody::Start,
            })
            .unwrap(),
        );
    }
    let mut dec = FrameDecoder::new();
    dec.push(&wire);
    for id in 0..3 {
        assert_eq!(dec.next_frame::<Request>().unwrap().unwrap().id, id);
    }
    assert!(dec.next_frame::<Request>().unwrap().is_none());
    assert_eq!(dec.pending(), 0);
}

#[test]
fn handshake_accepts_same_version_and_refuses_another() {
    use std::os::unix::net::UnixStream;
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || handshake(&mut b, "agent").unwrap());
    assert_eq!(handshake(&mut a, "host").unwrap().name, "agent");
    assert_eq!(t.join().unwrap().name, "host");

    let (mut a, mut b) = UnixStream::pair().unwrap();
    write_frame(
        &mut b,
        &Hello {
            version: PROTOCOL_VERSION + 1,
            name: "future agent".into(),
        },
    )
    .unwrap();
    match handshake(&mut a, "host") {
        Err(e @ ProtocolError::VersionMismatch { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("future agent"), "{msg}");
            assert!(msg.contains(&format!("{}", PROTOCOL_VERSION + 1)), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}
