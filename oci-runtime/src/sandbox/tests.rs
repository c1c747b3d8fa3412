//! The sandbox's control socket, main loop and stdio relay against a fake agent over a
//! socketpair (no VM).

use super::agent::AgentConn;
use super::control::{ExecIo, SandboxClient, SandboxStatus};
use super::daemon::{supervise, MainEvent};
use super::server::{serve, Shared};
use super::stdio::tests::Shared as Buf;
use super::stdio::OutputSink;
use super::{unix, SandboxError, CONTROL_SOCKET};
use agent_protocol::{
    handshake, read_frame, write_frame, AgentMessage, Bytes, Event, ExitStatus, Request,
    RequestBody, ResponseBody,
};
use oci_spec::runtime::ProcessBuilder;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;

fn event(stream: &mut UnixStream, e: Event) {
    write_frame(stream, &AgentMessage::Event(e)).unwrap();
}

/// Plays the agent: answers requests and produces the events a real one would. Returns
/// the requests it saw.
fn fake_agent(mut s: UnixStream) -> Vec<RequestBody> {
    handshake(&mut s, "fake-agent").unwrap();
    let mut seen = Vec::new();
    let mut exec: Option<String> = None;
    loop {
        let Ok(Request { id, body }) = read_frame::<_, Request>(&mut s) else {
            return seen;
        };
        seen.push(body.clone());
        let mut after: Vec<Event> = Vec::new();
        let result = match body {
            RequestBody::Start => {
                after.push(Event::Output {
                    stream: "init".into(),
                    fd: 1,
                    data: Bytes::from("hello from init\n"),
                });
                after.push(Event::Output {
                    stream: "init".into(),
                    fd: 2,
                    data: Bytes::from("init warning\n"),
                });
                Ok(ResponseBody::Done)
            }
            RequestBody::Signal { stream, signal, .. } if stream == "init" => {
                after.push(Event::Exited {
                    stream,
                    status: ExitStatus::signaled(signal),
                });
                Ok(ResponseBody::Done)
            }
            RequestBody::Ps => Ok(ResponseBody::Pids { pids: vec![1, 2] }),
            RequestBody::Exec { exec_id, process } => {
                let line = format!("{}\n", process.args().clone().unwrap_or_default().join(" "));
                after.push(Event::Output {
                    stream: exec_id.clone(),
                    fd: 1,
                    data: Bytes::from(line.as_str()),
                });
                exec = Some(exec_id);
                Ok(ResponseBody::Started { pid: 42 })
            }
            RequestBody::Stdin { stream, data } if Some(&stream) == exec.as_ref() => {
                after.push(Event::Output {
                    stream,
                    fd: 2,
                    data,
                });
                Ok(ResponseBody::Done)
            }
            RequestBody::CloseStdin { stream } => {
                if Some(&stream) == exec.as_ref() {
                    after.push(Event::Exited {
                        stream,
                        status: ExitStatus::exited(7),
                    });
                }
                Ok(ResponseBody::Done)
            }
            RequestBody::Shutdown => {
                write_frame(
                    &mut s,
                    &AgentMessage::Response {
                        id,
                        result: Ok(ResponseBody::Done),
                    },
                )
                .unwrap();
                return seen;
            }
            other => Err(format!("fake agent does not do {other:?}")),
        };
        write_frame(&mut s, &AgentMessage::Response { id, result }).unwrap();
        for e in after {
            event(&mut s, e);
        }
    }
}

#[test]
fn client_server_and_main_loop_against_a_fake_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (mut host, agent_end) = UnixStream::pair().unwrap();
    let agent_thread = std::thread::spawn(move || fake_agent(agent_end));
    handshake(&mut host, "test-host").unwrap();
    let (tx, rx) = mpsc::channel();
    let agent_tx = tx.clone();
    let agent = AgentConn::start(host, false, move |n| {
        let _ = agent_tx.send(MainEvent::Agent(n));
    })
    .unwrap();
    let shared = Shared::new(agent.clone());
    serve(
        unix::bind(&dir.path().join(CONTROL_SOCKET)).unwrap(),
        shared.clone(),
    )
    .unwrap();
    let (out, err) = (Buf::default(), Buf::default());
    let sink = OutputSink {
        stdout: Box::new(out.clone()),
        stderr: Box::new(err.clone()),
    };
    let main_shared = shared.clone();
    let main = std::thread::spawn(move || supervise(&rx, &main_shared, sink, None));

    let mut client = SandboxClient::connect(dir.path()).unwrap();
    assert_eq!(client.status().unwrap(), SandboxStatus::Created);
    let process = ProcessBuilder::default()
        .args(vec!["echo".to_string(), "exec-ok".to_string()])
        .build()
        .unwrap();
    let io = || ExecIo {
        stdin: Box::new(std::io::empty()),
        stdout: Box::new(std::io::sink()),
        stderr: Box::new(std::io::sink()),
    };
    let refused = SandboxClient::connect(dir.path())
        .unwrap()
        .exec_with(&process, io())
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "cannot exec in a container that is created"
    );

    client.start().unwrap();
    assert_eq!(client.status().unwrap(), SandboxStatus::Running);
    assert!(
        matches!(client.start(), Err(SandboxError::Refused(m)) if m == "cannot start a container that is running")
    );
    assert_eq!(client.ps().unwrap(), [1, 2]);

    // exec: its stdout, its stdin echoed back on stderr by the fake agent, its exit code.
    let (exec_out, exec_err) = (Buf::default(), Buf::default());
    let io = ExecIo {
        stdin: Box::new(std::io::Cursor::new(b"typed input".to_vec())),
        stdout: Box::new(exec_out.clone()),
        stderr: Box::new(exec_err.clone()),
    };
    let code = SandboxClient::connect(dir.path())
        .unwrap()
        .exec_with(&process, io)
        .unwrap();
    assert_eq!(code, 7);
    assert_eq!(exec_out.text(), "echo exec-ok\n");
    assert_eq!(exec_err.text(), "typed input");

    // A signal the sandbox receives goes to the container; its death ends the main loop.
    tx.send(MainEvent::Signal(libc::SIGTERM)).unwrap();
    let status = main.join().unwrap().unwrap();
    assert_eq!(status.shell_code(), 143);
    assert_eq!(out.text(), "hello from init\n");
    assert_eq!(err.text(), "init warning\n");

    shared.set_phase(SandboxStatus::Stopped { exit: 143 });
    assert_eq!(
        client.status().unwrap(),
        SandboxStatus::Stopped { exit: 143 }
    );
    let err = client.kill(libc::SIGKILL, false).unwrap_err();
    assert_eq!(err.to_string(), "cannot signal a container that is stopped");

    agent
        .request_done(RequestBody::Shutdown, std::time::Duration::from_secs(5))
        .unwrap();
    let seen = agent_thread.join().unwrap();
    assert!(
        seen.contains(&RequestBody::Signal {
            stream: "init".into(),
            signal: libc::SIGTERM,
            all: false
        }),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|r| matches!(r, RequestBody::CloseStdin { stream } if stream == "exec-1")),
        "{seen:?}"
    );
}

#[test]
fn main_loop_reports_a_lost_agent_and_an_ended_vm() {
    let (host, agent_end) = UnixStream::pair().unwrap();
    let (tx, rx) = mpsc::channel();
    let agent_tx = tx.clone();
    let agent = AgentConn::start(host, false, move |n| {
        let _ = agent_tx.send(MainEvent::Agent(n));
    })
    .unwrap();
    let shared = Shared::new(agent);
    drop(agent_end);
    let sink = || OutputSink {
        stdout: Box::new(std::io::sink()),
        stderr: Box::new(std::io::sink()),
    };
    let err = supervise(&rx, &shared, sink(), None).unwrap_err();
    assert!(err.starts_with("lost the guest agent"), "{err}");
    tx.send(MainEvent::VmEnded("Reboot".into())).unwrap();
    let err = supervise(&rx, &shared, sink(), None).unwrap_err();
    assert_eq!(err, "the VM ended before the container's process: Reboot");
    // A guest that powers off ends the container as a shut-down machine: status 0.
    tx.send(MainEvent::VmPoweredOff).unwrap();
    let status = supervise(&rx, &shared, sink(), None).expect("an exit status");
    assert_eq!((status.code, status.signal), (Some(0), None));
}

#[test]
fn bad_control_frames_get_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let (host, _agent_end) = UnixStream::pair().unwrap();
    let shared = Shared::new(AgentConn::start(host, false, |_| {}).unwrap());
    serve(
        unix::bind(&dir.path().join(CONTROL_SOCKET)).unwrap(),
        shared,
    )
    .unwrap();
    let mut raw = unix::connect(&dir.path().join(CONTROL_SOCKET)).unwrap();
    std::io::Write::write_all(&mut raw, &[0, 0, 0, 5, b'{', b'"', b'o', b'p', b'"']).unwrap();
    let reply: super::ControlReply = read_frame(&mut raw).unwrap();
    assert!(
        matches!(reply, super::ControlReply::Error { ref message } if message.starts_with("bad control request")),
        "{reply:?}"
    );
    let mut raw = unix::connect(&dir.path().join(CONTROL_SOCKET)).unwrap();
    std::io::Write::write_all(&mut raw, &u32::MAX.to_be_bytes()).unwrap();
    let reply: super::ControlReply = read_frame(&mut raw).unwrap();
    assert!(
        matches!(reply, super::ControlReply::Error { ref message } if message.contains("exceeds")),
        "{reply:?}"
    );
    let mut client = SandboxClient::connect(dir.path()).unwrap();
    let stdin_outside_exec = super::ControlRequest::CloseStdin;
    write_frame(client_stream(&mut client), &stdin_outside_exec).unwrap();
    let reply: super::ControlReply = read_frame(client_stream(&mut client)).unwrap();
    assert_eq!(
        reply,
        super::ControlReply::Error {
            message: "no exec'd process on this connection".into()
        }
    );
}

fn client_stream(c: &mut SandboxClient) -> &mut UnixStream {
    c.stream_mut()
}

#[test]
fn a_failed_create_quotes_the_guest_console_when_the_vm_wrote_one() {
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join(super::CONSOLE_LOG);
    // Before the VM: no console, the message alone.
    assert_eq!(
        super::daemon::with_console_tail("no agent", &console),
        "no agent"
    );
    let lines: Vec<String> = (0..30).map(|i| format!("line {i}")).collect();
    std::fs::write(&console, lines.join("\n")).unwrap();
    let text = super::daemon::with_console_tail("the guest agent refused Create: x", &console);
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got[0], "the guest agent refused Create: x");
    assert_eq!(got[1], "last lines of the guest console:", "{text}");
    assert_eq!(got[2], "line 10");
    assert_eq!(got.len(), 22);
}
