//! The control protocol on `<container_dir>/sandbox.sock`, and its client.
//!
//! Frames are agent-protocol frames (u32 big-endian length, then JSON), one connection per
//! client. The client sends a [`ControlRequest`]; the sandbox answers one [`ControlReply`]:
//!
//! | request | reply |
//! |---|---|
//! | `{"op":"start"}` | `{"reply":"ok"}` (only when created) |
//! | `{"op":"kill","signal":15,"all":false}` | `{"reply":"ok"}` (when created or running) |
//! | `{"op":"status"}` | `{"reply":"status","status":{"state":"running"}}` |
//! | `{"op":"ps"}` | `{"reply":"pids","pids":[1,42]}` |
//! | `{"op":"exec","process":{...}}` | `{"reply":"exec_started","pid":42}` (when running) |
//! | `{"op":"pause"}`, `{"op":"resume"}` | `{"reply":"ok"}` (the whole VM) |
//! | `{"op":"checkpoint","image_path":"/d","leave_running":false}` | `{"reply":"ok"}` |
//!
//! or `{"reply":"error","message":"..."}`. After `exec_started` the connection carries the
//! exec'd process's stdio: the client sends `stdin` (`{"op":"stdin","data":"<base64>"}`),
//! `close_stdin`, `resize` (`rows`, `cols`) and `kill` (for the exec'd process, no reply);
//! the sandbox sends `output` (`fd` 1 or 2,
//! `data`) and finally `exited` (`code`: exit code, or 128 + signal) and closes.

use super::{unix, SandboxError, CONTROL_SOCKET, EXIT_FILE};
use agent_protocol::{read_frame, write_frame, Bytes, ExitStatus, FD_STDERR};
use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Lifecycle state of a sandbox's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SandboxStatus {
    /// Created in the guest, waiting for start.
    Created,
    /// Started; its process has not exited.
    Running,
    /// Created or running, with its VM paused.
    Paused,
    /// Its process exited with `exit` (exit code, or 128 + signal).
    Stopped {
        /// The shell-style exit status.
        exit: i32,
    },
}

/// A client message on the control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Start the created container.
    Start,
    /// Signal the container's process (with `all`, every process of the container); on a
    /// connection that carries an exec, the exec'd process.
    Kill {
        /// Signal number.
        signal: i32,
        /// Every process.
        all: bool,
    },
    /// The container's state.
    Status,
    /// Guest pids of the container's processes.
    Ps,
    /// Run a second process in the container; the connection then carries its stdio.
    Exec {
        /// What to run.
        process: Box<Process>,
    },
    /// Bytes for the exec'd process's stdin.
    Stdin {
        /// The bytes.
        data: Bytes,
    },
    /// End of the exec'd process's stdin.
    CloseStdin,
    /// New terminal size of the exec'd process.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Pause the VM.
    Pause,
    /// Resume the paused VM.
    Resume,
    /// Write a checkpoint of the whole VM to `image_path`; then stop the VM (the
    /// container's process counts as killed) unless `leave_running`.
    Checkpoint {
        /// The checkpoint's directory.
        image_path: std::path::PathBuf,
        /// Keep the container running afterwards.
        leave_running: bool,
    },
}

/// A sandbox message on the control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum ControlReply {
    /// Done.
    Ok,
    /// The container's state.
    Status {
        /// The state.
        status: SandboxStatus,
    },
    /// Guest pids.
    Pids {
        /// The pids.
        pids: Vec<i32>,
    },
    /// The exec'd process runs (guest pid).
    ExecStarted {
        /// Its guest pid.
        pid: i32,
    },
    /// Output of the exec'd process.
    Output {
        /// 1 stdout, 2 stderr.
        fd: u8,
        /// The bytes.
        data: Bytes,
    },
    /// The exec'd process ended.
    Exited {
        /// Exit code, or 128 + signal.
        code: i32,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// The container's exit status recorded in `exit.json` once its process ended (a sandbox
/// that has exited can no longer be asked).
pub fn recorded_exit(container_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(container_dir.join(EXIT_FILE)).ok()?;
    let record: ExitRecord = serde_json::from_str(&text).ok()?;
    Some(record.exit)
}

/// What `exit.json` holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct ExitRecord {
    /// Shell-style status.
    pub exit: i32,
    /// Exit code and signal.
    pub status: ExitStatus,
}

/// Stdio of an exec'd process on the client side.
pub struct ExecIo {
    /// Read and sent as the process's stdin (end of input closes it).
    pub stdin: Box<dyn Read + Send>,
    /// Receives the process's stdout (and a pty's output).
    pub stdout: Box<dyn Write>,
    /// Receives the process's stderr.
    pub stderr: Box<dyn Write>,
}

impl std::fmt::Debug for ExecIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExecIo")
    }
}

impl ExecIo {
    /// The stdio of an exec'd process: a new pty whose master is sent to `console_socket`
    /// when `process.terminal` and a socket are given, else the caller's own stdio.
    pub fn for_process(
        process: &Process,
        console_socket: Option<&Path>,
    ) -> Result<ExecIo, SandboxError> {
        if let (true, Some(socket)) = (process.terminal().unwrap_or(false), console_socket) {
            let pty = super::pty::open_pty().map_err(SandboxError::io("open a pty"))?;
            super::pty::send_fd(socket, pty.master.as_fd(), "/dev/ptmx").map_err(
                SandboxError::io(format!("send the pty to {}", socket.display())),
            )?;
            let clone = || {
                pty.slave
                    .try_clone()
                    .map_err(SandboxError::io("clone the pty"))
            };
            return Ok(ExecIo {
                stdin: Box::new(clone()?),
                stdout: Box::new(clone()?),
                stderr: Box::new(pty.slave),
            });
        }
        Ok(ExecIo {
            stdin: Box::new(std::io::stdin()),
            stdout: Box::new(std::io::stdout()),
            stderr: Box::new(std::io::stderr()),
        })
    }
}

/// A connection to a sandbox's control socket.
#[derive(Debug)]
pub struct SandboxClient {
    stream: UnixStream,
}

fn control_err(e: agent_protocol::ProtocolError) -> SandboxError {
    SandboxError::Control(e.to_string())
}

impl SandboxClient {
    /// Connects to `<container_dir>/sandbox.sock`; [`SandboxError::NotRunning`] when no
    /// sandbox serves it (see [`recorded_exit`] for one that has exited).
    pub fn connect(container_dir: &Path) -> Result<Self, SandboxError> {
        let path = container_dir.join(CONTROL_SOCKET);
        let stream = unix::connect(&path).map_err(|e| SandboxError::NotRunning {
            dir: container_dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(SandboxClient { stream })
    }

    #[cfg(test)]
    pub(crate) fn stream_mut(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    fn call(&mut self, req: &ControlRequest) -> Result<ControlReply, SandboxError> {
        write_frame(&mut self.stream, req).map_err(control_err)?;
        match read_frame(&mut self.stream).map_err(control_err)? {
            ControlReply::Error { message } => Err(SandboxError::Refused(message)),
            reply => Ok(reply),
        }
    }

    fn call_ok(&mut self, req: &ControlRequest) -> Result<(), SandboxError> {
        match self.call(req)? {
            ControlReply::Ok => Ok(()),
            other => Err(SandboxError::Control(format!("unexpected reply {other:?}"))),
        }
    }

    /// Starts the created container.
    pub fn start(&mut self) -> Result<(), SandboxError> {
        self.call_ok(&ControlRequest::Start)
    }

    /// Sends `signal` to the container's process (every process with `all`).
    pub fn kill(&mut self, signal: i32, all: bool) -> Result<(), SandboxError> {
        self.call_ok(&ControlRequest::Kill { signal, all })
    }

    /// The container's state.
    pub fn status(&mut self) -> Result<SandboxStatus, SandboxError> {
        match self.call(&ControlRequest::Status)? {
            ControlReply::Status { status } => Ok(status),
            other => Err(SandboxError::Control(format!("unexpected reply {other:?}"))),
        }
    }

    /// Pauses the container's VM.
    pub fn pause(&mut self) -> Result<(), SandboxError> {
        self.call_ok(&ControlRequest::Pause)
    }

    /// Resumes the container's paused VM.
    pub fn resume(&mut self) -> Result<(), SandboxError> {
        self.call_ok(&ControlRequest::Resume)
    }

    /// Checkpoints the container's VM into `image_path` (see [`ControlRequest::Checkpoint`]).
    pub fn checkpoint(
        &mut self,
        image_path: &Path,
        leave_running: bool,
    ) -> Result<(), SandboxError> {
        self.call_ok(&ControlRequest::Checkpoint {
            image_path: image_path.to_path_buf(),
            leave_running,
        })
    }

    /// Guest pids of the container's processes.
    pub fn ps(&mut self) -> Result<Vec<i32>, SandboxError> {
        match self.call(&ControlRequest::Ps)? {
            ControlReply::Pids { pids } => Ok(pids),
            other => Err(SandboxError::Control(format!("unexpected reply {other:?}"))),
        }
    }

    /// Runs `process` in the container with the caller's stdin/stdout/stderr (or, when
    /// `process.terminal` and `console_socket` are given, a pty whose master goes to the
    /// console socket) and returns its exit status (exit code, or 128 + signal).
    pub fn exec(
        &mut self,
        process: &Process,
        console_socket: Option<&Path>,
    ) -> Result<i32, SandboxError> {
        let io = ExecIo::for_process(process, console_socket)?;
        self.exec_with(process, io)
    }

    /// Like [`Self::exec`] with the given stdio.
    pub fn exec_with(&mut self, process: &Process, io: ExecIo) -> Result<i32, SandboxError> {
        self.exec_begin(process)?;
        self.exec_relay(io)
    }

    /// Starts `process` in the container; returns its guest pid. Follow with
    /// [`Self::exec_relay`] on the same client.
    pub fn exec_begin(&mut self, process: &Process) -> Result<i32, SandboxError> {
        match self.call(&ControlRequest::Exec {
            process: Box::new(process.clone()),
        })? {
            ControlReply::ExecStarted { pid } => {
                tracing::debug!("exec'd process runs as guest pid {pid}");
                Ok(pid)
            }
            other => Err(SandboxError::Control(format!("unexpected reply {other:?}"))),
        }
    }

    /// Relays the stdio of the process [`Self::exec_begin`] started until it exits; returns
    /// its exit status.
    pub fn exec_relay(&mut self, io: ExecIo) -> Result<i32, SandboxError> {
        self.exec_relay_with_signals(io, None)
    }

    /// Like [`Self::exec_relay`], also sending each signal number `signals` yields to the
    /// exec'd process (read on a thread of its own until it ends).
    pub fn exec_relay_with_signals(
        &mut self,
        mut io: ExecIo,
        signals: Option<Box<dyn Iterator<Item = i32> + Send>>,
    ) -> Result<i32, SandboxError> {
        // Frames from the stdin and signal threads must not interleave.
        let to_sandbox = Arc::new(Mutex::new(
            self.stream
                .try_clone()
                .map_err(SandboxError::io("clone the control socket"))?,
        ));
        let send = |to: &Mutex<UnixStream>, msg: &ControlRequest| match to.lock() {
            Ok(mut stream) => write_frame(&mut *stream, msg).is_ok(),
            Err(_) => false,
        };
        let mut stdin = io.stdin;
        let to = to_sandbox.clone();
        std::thread::Builder::new()
            .name("zvm_exec_stdin".into())
            .spawn(move || {
                super::stdio::pump(&mut stdin, |chunk| {
                    let msg = match chunk {
                        Some(data) => ControlRequest::Stdin {
                            data: Bytes::from(data),
                        },
                        None => ControlRequest::CloseStdin,
                    };
                    send(&to, &msg)
                })
            })
            .map_err(SandboxError::io("start the stdin thread"))?;
        if let Some(signals) = signals {
            std::thread::Builder::new()
                .name("zvm_exec_signals".into())
                .spawn(move || {
                    for signal in signals {
                        let msg = ControlRequest::Kill { signal, all: false };
                        if !send(&to_sandbox, &msg) {
                            break;
                        }
                    }
                })
                .map_err(SandboxError::io("start the signal thread"))?;
        }
        loop {
            match read_frame(&mut self.stream).map_err(control_err)? {
                ControlReply::Output { fd, data } => {
                    let out = if fd == FD_STDERR {
                        &mut io.stderr
                    } else {
                        &mut io.stdout
                    };
                    // A caller that closed its output does not stop the process.
                    if out.write_all(&data).and_then(|()| out.flush()).is_err() {
                        tracing::debug!("exec output on fd {fd} dropped: the caller closed it");
                    }
                }
                ControlReply::Exited { code } => return Ok(code),
                ControlReply::Error { message } => return Err(SandboxError::Refused(message)),
                other => {
                    return Err(SandboxError::Control(format!(
                        "unexpected message {other:?} during exec"
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_the_documented_json() {
        assert_eq!(json(&ControlRequest::Start), r#"{"op":"start"}"#);
        assert_eq!(
            json(&ControlRequest::Kill {
                signal: 15,
                all: false
            }),
            r#"{"op":"kill","signal":15,"all":false}"#
        );
        assert_eq!(
            json(&ControlRequest::Stdin {
                data: Bytes::from("hi")
            }),
            r#"{"op":"stdin","data":"aGk="}"#
        );
        assert_eq!(
            json(&ControlReply::Status {
                status: SandboxStatus::Stopped { exit: 143 }
            }),
            r#"{"reply":"status","status":{"state":"stopped","exit":143}}"#
        );
        assert_eq!(
            json(&ControlReply::ExecStarted { pid: 42 }),
            r#"{"reply":"exec_started","pid":42}"#
        );
        assert_eq!(
            json(&ControlReply::Error {
                message: "no".into()
            }),
            r#"{"reply":"error","message":"no"}"#
        );
        let back: ControlRequest =
            serde_json::from_str(r#"{"op":"resize","rows":24,"cols":80}"#).unwrap();
        assert_eq!(back, ControlRequest::Resize { rows: 24, cols: 80 });
        assert!(serde_json::from_str::<ControlRequest>(r#"{"op":"reboot"}"#).is_err());
    }

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn recorded_exit_reads_exit_json() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recorded_exit(dir.path()), None);
        let record = ExitRecord {
            exit: 143,
            status: ExitStatus::signaled(15),
        };
        std::fs::write(
            dir.path().join(EXIT_FILE),
            serde_json::to_string(&record).unwrap(),
        )
        .unwrap();
        assert_eq!(recorded_exit(dir.path()), Some(143));
        std::fs::write(dir.path().join(EXIT_FILE), "{garbage").unwrap();
        assert_eq!(recorded_exit(dir.path()), None);
    }

    #[test]
    fn connect_without_a_sandbox_says_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let err = SandboxClient::connect(dir.path()).unwrap_err();
        assert!(matches!(err, SandboxError::NotRunning { .. }), "{err}");
        assert!(
            err.to_string().starts_with("no sandbox is running for"),
            "{err}"
        );
    }
}
