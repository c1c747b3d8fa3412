//! Shared by the integration tests: an in-memory controller with Firecracker's pre-boot /
//! running / paused state machine, a server on a temporary socket, and a tiny client.
#![allow(dead_code)]

use api_server::model::{
    ActionType, Drive, EntropyDevice, FullVmConfig, InstanceInfo, InstanceState, Logger,
    MachineConfig, Metrics, NetworkInterface, VmState, Vsock,
};
use api_server::{
    ApiRequest, ApiResponse, ApiServer, ApiServerConfig, ControllerError, VmmController,
};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// A fake monitor that keeps the configuration in memory.
#[derive(Debug)]
pub struct FakeVmm {
    pub state: InstanceState,
    pub config: FullVmConfig,
    /// Every request received, in order.
    pub log: Vec<ApiRequest>,
}

impl Default for FakeVmm {
    fn default() -> Self {
        let machine = MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: None,
            cmdline_devices: None,
            pit: None,
            irqchip: None,
        };
        FakeVmm {
            state: InstanceState::NotStarted,
            config: FullVmConfig {
                machine_config: Some(machine),
                ..Default::default()
            },
            log: Vec::new(),
        }
    }
}

const AFTER_BOOT: &str = "The requested operation is not supported after starting the microVM.";
const BEFORE_BOOT: &str = "The requested operation is not supported before starting the microVM.";

fn json<T: serde::Serialize>(value: &T) -> Result<ApiResponse, ControllerError> {
    serde_json::to_value(value)
        .map(ApiResponse::Json)
        .map_err(|e| ControllerError::new(e.to_string()))
}

impl FakeVmm {
    fn pre_boot(&self) -> Result<(), ControllerError> {
        match self.state {
            InstanceState::NotStarted => Ok(()),
            _ => Err(ControllerError::new(AFTER_BOOT)),
        }
    }

    fn post_boot(&self) -> Result<(), ControllerError> {
        match self.state {
            InstanceState::NotStarted => Err(ControllerError::new(BEFORE_BOOT)),
            _ => Ok(()),
        }
    }

    fn drive(&mut self, id: &str) -> Result<&mut Drive, ControllerError> {
        self.config
            .drives
            .iter_mut()
            .find(|d| d.drive_id == id)
            .ok_or_else(|| ControllerError::new(format!("no drive {id}")))
    }
}

impl VmmController for FakeVmm {
    fn handle(&mut self, request: ApiRequest) -> Result<ApiResponse, ControllerError> {
        self.log.push(request.clone());
        match request {
            ApiRequest::GetInstanceInfo => {
                return json(&InstanceInfo {
                    id: "test-vm".into(),
                    state: self.state,
                    vmm_version: "0.1.0".into(),
                    app_name: "zvm".into(),
                })
            }
            ApiRequest::GetVmConfig => return json(&self.config),
            ApiRequest::GetMachineConfig => return json(&self.config.machine_config),
            ApiRequest::PutBootSource(b) => {
                self.pre_boot()?;
                self.config.boot_source = Some(b);
            }
            ApiRequest::PutMachineConfig(m) => {
                self.pre_boot()?;
                self.config.machine_config = Some(m);
            }
            ApiRequest::PatchMachineConfig(u) => {
                self.pre_boot()?;
                if let Some(m) = self.config.machine_config.as_mut() {
                    m.vcpu_count = u.vcpu_count.unwrap_or(m.vcpu_count);
                    m.mem_size_mib = u.mem_size_mib.unwrap_or(m.mem_size_mib);
                    m.smt = u.smt.unwrap_or(m.smt);
                }
            }
            ApiRequest::PutDrive(d) => {
                self.pre_boot()?;
                let drives = &mut self.config.drives;
                drives.retain(|x| x.drive_id != d.drive_id);
                drives.push(d);
            }
            ApiRequest::PatchDrive(u) => {
                self.post_boot()?;
                let drive = self.drive(&u.drive_id)?;
                if let Some(path) = u.path_on_host {
                    drive.path_on_host = path;
                }
                if u.rate_limiter.is_some() {
                    drive.rate_limiter = u.rate_limiter;
                }
            }
            ApiRequest::PutNetworkInterface(n) => {
                self.pre_boot()?;
                let nets: &mut Vec<NetworkInterface> = &mut self.config.network_interfaces;
                nets.retain(|x| x.iface_id != n.iface_id);
                nets.push(*n);
            }
            ApiRequest::PatchNetworkInterface(u) => {
                self.post_boot()?;
                let iface = self
                    .config
                    .network_interfaces
                    .iter_mut()
                    .find(|n| n.iface_id == u.iface_id);
                let iface = iface
                    .ok_or_else(|| ControllerError::new(format!("no interface {}", u.iface_id)))?;
                iface.rx_rate_limiter = u.rx_rate_limiter.or(iface.rx_rate_limiter.take());
                iface.tx_rate_limiter = u.tx_rate_limiter.or(iface.tx_rate_limiter.take());
            }
            ApiRequest::PutVsock(v) => {
                self.pre_boot()?;
                self.config.vsock = Some::<Vsock>(v);
            }
            ApiRequest::PutFs(fs) => {
                self.pre_boot()?;
                self.config.fs.push(fs);
            }
            ApiRequest::PutEntropy(e) => {
                self.pre_boot()?;
                self.config.entropy = Some::<EntropyDevice>(e);
            }
            ApiRequest::PutLogger(l) => self.config.logger = Some::<Logger>(l),
            ApiRequest::PutMetrics(m) => self.config.metrics = Some::<Metrics>(m),
            ApiRequest::Action(ActionType::InstanceStart) => {
                self.pre_boot()?;
                if self.config.boot_source.is_none() {
                    return Err(ControllerError::new(
                        "Cannot start microvm without kernel configuration.",
                    ));
                }
                self.state = InstanceState::Running;
            }
            ApiRequest::Action(ActionType::SendCtrlAltDel)
            | ApiRequest::Action(ActionType::SendPowerButton)
            | ApiRequest::Action(ActionType::Shutdown)
            | ApiRequest::Shutdown(_) => self.post_boot()?,
            ApiRequest::Action(ActionType::FlushMetrics) => {}
            ApiRequest::LoadSnapshot(params) => {
                self.pre_boot()?;
                if self.config.boot_source.is_some() {
                    return Err(ControllerError::new("Loading a snapshot is not allowed after configuring boot-specific resources."));
                }
                self.state = if params.resume_vm {
                    InstanceState::Running
                } else {
                    InstanceState::Paused
                };
            }
            ApiRequest::CreateSnapshot(_) => {
                if self.state != InstanceState::Paused {
                    return Err(ControllerError::new(
                        "Create snapshot is only allowed on a paused microVM.",
                    ));
                }
            }
            ApiRequest::PatchVm(target) => {
                self.state = match (self.state, target) {
                    (InstanceState::Running, VmState::Paused)
                    | (InstanceState::Paused, VmState::Paused) => InstanceState::Paused,
                    (InstanceState::Paused, VmState::Resumed)
                    | (InstanceState::Running, VmState::Resumed) => InstanceState::Running,
                    (InstanceState::NotStarted, _) => {
                        return Err(ControllerError::new(BEFORE_BOOT))
                    }
                };
            }
        }
        Ok(ApiResponse::Empty)
    }
}

/// A server on a socket in its own temporary directory.
pub struct TestServer {
    pub server: ApiServer<FakeVmm>,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with seccomp on (so the filter is exercised by every test).
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Starts a server after `adjust` has changed its config.
    pub fn start_with(adjust: impl FnOnce(&mut ApiServerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        let mut config = ApiServerConfig::new(&path);
        adjust(&mut config);
        let server = ApiServer::start(config, FakeVmm::default()).expect("start the API server");
        TestServer {
            server,
            path,
            _dir: dir,
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.path)
    }

    /// Stops the server and returns the controller.
    pub fn stop(self) -> FakeVmm {
        self.server.stop().expect("stop the API server")
    }
}

/// One parsed response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("reply body {:?} is not JSON: {e}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The fault message of an error reply.
    pub fn fault(&self) -> String {
        self.json()["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message in {:?}", self.body))
            .to_string()
    }
}

/// A keep-alive HTTP client on a Unix socket.
pub struct Client {
    pub stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(path: &std::path::Path) -> Self {
        let stream = UnixStream::connect(path).expect("connect to the API socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .expect("write to the API socket");
    }

    /// Sends one request (keep-alive) and reads its reply.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.send_raw(request_bytes(method, path, body).as_bytes());
        self.read_reply()
    }

    /// Reads one reply; bytes after it stay buffered for the next call.
    pub fn read_reply(&mut self) -> Reply {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill();
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("utf-8 head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header {l:?}"));
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().expect("content-length"))
            .unwrap_or(0);
        while self.buf.len() < head_end + len {
            self.fill();
        }
        let body =
            String::from_utf8(self.buf[head_end..head_end + len].to_vec()).expect("utf-8 body");
        self.buf.drain(..head_end + len);
        Reply {
            status,
            headers,
            body,
        }
    }

    /// True once the server has closed the connection (and nothing more is buffered).
    /// A Unix socket closed with unread input reports ECONNRESET to its peer once the
    /// queued replies are read: that is a close too.
    pub fn at_eof(&mut self) -> bool {
        let mut byte = [0u8; 1];
        self.buf.is_empty() && closed(self.stream.read(&mut byte))
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self
            .stream
            .read(&mut chunk)
            .expect("read from the API socket");
        assert!(
            n > 0,
            "the server closed the connection mid-reply (have {:?})",
            String::from_utf8_lossy(&self.buf)
        );
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

/// The bytes of one keep-alive request.
pub fn request_bytes(method: &str, path: &str, body: Option<&str>) -> String {
    match body {
        Some(b) => format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    }
}

/// Sends one request on a fresh connection with `Connection: close`.
pub fn one_shot(path: &std::path::Path, method: &str, uri: &str, body: Option<&str>) -> Reply {
    let mut client = Client::connect(path);
    let raw = request_bytes(method, uri, body).replacen(
        "Host: localhost\r\n",
        "Host: localhost\r\nConnection: close\r\n",
        1,
    );
    client.send_raw(raw.as_bytes());
    let reply = client.read_reply();
    assert!(client.at_eof(), "Connection: close was honoured");
    reply
}

/// Whether a read result means the peer closed: EOF, or ECONNRESET (see [`Client::at_eof`]).
pub fn closed(read: std::io::Result<usize>) -> bool {
    match read {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}
