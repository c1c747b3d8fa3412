//! A Firecracker-style VMM process: `zvm --api-sock PATH` serves the REST API on a Unix
//! socket; `zvm --config-file vm.json [--no-api]` configures (and boots, or restores a
//! snapshot) from a file. zvm hands both to zvm-vmm (zvm's `vmm_exec`), which runs
//! [`serve`]; with `ZVM_VMM=none` zvm runs it itself.
//!
//! The API thread (`zvm_api`, seccomp-filtered) only parses requests; each one is handed
//! over a channel to this process's main thread, which owns the configuration and the VM
//! and answers. When the VM ends, the process exits with `zvm run`'s exit codes.

pub mod config_file;
pub mod metrics;
mod snapshot;
mod state;

use crate::log_output::LoggerError;
use crate::stop_signals::install as install_stop_signals;
use crate::vm_end::report_outcome;
use api_server::model::{ActionType, InstanceInfo, InstanceState, VmState};
use api_server::{
    ApiRequest, ApiResponse, ApiServer, ApiServerConfig, ControllerError, StatusCode, VmmController,
};
use metrics::{Metrics, FLUSH_INTERVAL};
pub use snapshot::load_error as snapshot_load_error;
use state::PendingConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::time::Instant;
use vmm::builder::BuildOptions;
use vmm::devices::boot_timer::BootTime;
use vmm::snapshot::SnapshotHandle;
use vmm::vm::{KeyboardHandle, PauseHandle, PowerButtonHandle, ShutdownHandle, StopHandle};
use vmm::{RunningVm, VmOutcome};

/// What `PUT /logger` (and a config file's `logger` section) reconfigures: the
/// process's log (zvm's tracing-subscriber one, or zvm-vmm's [`crate::lean_log`]).
pub trait LogControl {
    /// Applies a `PUT /logger` request. Nothing changes if any part of it is refused.
    fn configure(&mut self, request: &api_server::model::Logger) -> Result<(), LoggerError>;
}

/// Options of VMM mode.
pub struct VmmModeArgs {
    /// Socket to serve the API on (none with `--no-api`).
    pub api_sock: Option<PathBuf>,
    /// Configuration file to apply, then boot.
    pub config_file: Option<PathBuf>,
    /// Instance id reported by `GET /`.
    pub id: String,
    /// Seccomp on zvm's threads.
    pub seccomp: bool,
    /// The process's log, reconfigured by `PUT /logger`.
    pub logging: Box<dyn LogControl>,
}

enum Message {
    Api(ApiRequest, SyncSender<Result<ApiResponse, ControllerError>>),
    VmEnded(VmOutcome, Option<BootTime>),
    /// The API server refused a request before it reached the monitor (it is counted).
    Refused,
}

/// The API thread's side: forwards each request to the main thread and waits.
struct Bridge(Sender<Message>);

impl VmmController for Bridge {
    fn handle(&mut self, request: ApiRequest) -> Result<ApiResponse, ControllerError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let gone = || {
            ControllerError::with_status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the VMM is shutting down",
            )
        };
        self.0.send(Message::Api(request, tx)).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }

    fn refused(&mut self) {
        // Only counted: a monitor that is gone has no metrics left to count it in.
        let _ = self.0.send(Message::Refused);
    }
}

/// How the VM came to be: booted (`InstanceStart`) or restored (`PUT /snapshot/load`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Booted,
    Restored,
}

impl Origin {
    fn request(self) -> &'static str {
        match self {
            Origin::Booted => "InstanceStart",
            Origin::Restored => "a snapshot load",
        }
    }
}

struct Running {
    pause: PauseHandle,
    keyboard: Option<KeyboardHandle>,
    power_button: Option<PowerButtonHandle>,
    shutdown: ShutdownHandle,
    snapshot: SnapshotHandle,
    /// The vsock socket the VM listens on (the restore's override, if any), removed when
    /// the VM ends.
    vsock_uds: Option<PathBuf>,
    /// The virtiofsd of each share, stopped when the VM ends.
    _fs_daemons: crate::virtiofs::Daemons,
    origin: Origin,
    _stop: StopHandle,
}

struct Monitor {
    id: String,
    seccomp: bool,
    config: PendingConfig,
    /// Whether a request configured the VM (what a snapshot load must come before).
    configured: bool,
    running: Option<Running>,
    metrics: Metrics,
    logging: Box<dyn LogControl>,
    process_start: Instant,
    events: Sender<Message>,
}

fn refuse(message: impl Into<String>) -> ControllerError {
    ControllerError::new(message)
}

impl Monitor {
    fn state(&self) -> InstanceState {
        match &self.running {
            None => InstanceState::NotStarted,
            Some(r) if r.pause.is_paused() => InstanceState::Paused,
            Some(_) => InstanceState::Running,
        }
    }

    fn before_boot(&self, what: &str) -> Result<(), ControllerError> {
        match &self.running {
            None => Ok(()),
            Some(r) => Err(refuse(format!(
                "{what} is not allowed after {}",
                r.origin.request()
            ))),
        }
    }

    fn handle(&mut self, request: ApiRequest) -> Result<ApiResponse, ControllerError> {
        self.metrics.requests.inc();
        let configures = configures_vm(&request);
        let answer = self.answer(request);
        match answer {
            Ok(_) if configures => self.configured = true,
            Ok(_) => {}
            Err(_) => self.metrics.refused.inc(),
        }
        answer
    }

    fn answer(&mut self, request: ApiRequest) -> Result<ApiResponse, ControllerError> {
        let json = |v: serde_json::Value| Ok(ApiResponse::Json(v));
        match request {
            ApiRequest::GetInstanceInfo => {
                let info = InstanceInfo {
                    id: self.id.clone(),
                    state: self.state(),
                    vmm_version: env!("CARGO_PKG_VERSION").into(),
                    app_name: "zvm".into(),
                };
                json(serde_json::to_value(info).unwrap_or_default())
            }
            ApiRequest::GetVmConfig => json(self.config.to_json()),
            ApiRequest::GetMachineConfig => {
                json(serde_json::to_value(&self.config.machine).unwrap_or_default())
            }
            ApiRequest::PutBootSource(b) => {
                self.before_boot("PUT /boot-source")?;
                state::check_readable("kernel", &b.kernel_image_path)?;
                if let Some(initrd) = &b.initrd_path {
                    state::check_readable("initrd", initrd)?;
                }
                self.config.boot_source = Some(b);
                Ok(ApiResponse::Empty)
            }
            ApiRequest::PutMachineConfig(m) => {
                self.before_boot("PUT /machine-config")?;
                self.config.put_machine(m).map(|()| ApiResponse::Empty)
            }
            ApiRequest::PatchMachineConfig(u) => {
                self.before_boot("PATCH /machine-config")?;
                self.config.patch_machine(u).map(|()| ApiResponse::Empty)
            }
            ApiRequest::PutDrive(d) => {
                self.before_boot("PUT /drives")?;
                self.config.put_drive(d).map(|()| ApiResponse::Empty)
            }
            ApiRequest::PatchDrive(u) => {
                self.before_boot("PATCH /drives (hot swapping a backing file)")?;
                self.config.patch_drive(u).map(|()| ApiResponse::Empty)
            }
            ApiRequest::PutEntropy(e) => {
                self.before_boot("PUT /entropy")?;
                if e.rate_limiter.is_some() {
                    return Err(refuse("entropy rate limiters are not supported yet"));
                }
                self.config.entropy = true;
                Ok(ApiResponse::Empty)
            }
            ApiRequest::PutNetworkInterface(n) => {
                self.before_boot("PUT /network-interfaces")?;
                self.config.put_net(*n);
                Ok(ApiResponse::Empty)
            }
            ApiRequest::PatchNetworkInterface(u) => {
                self.before_boot(
                    "PATCH /network-interfaces (changing rate limiters of a running VM)",
                )?;
                self.config.patch_net(u).map(|()| ApiResponse::Empty)
            }
            ApiRequest::PutVsock(v) => {
                self.before_boot("PUT /vsock")?;
                self.config.vsock = Some(v);
                Ok(ApiResponse::Empty)
            }
            ApiRequest::PutFs(fs) => {
                self.before_boot("PUT /fs")?;
                self.config.put_fs(fs);
                Ok(ApiResponse::Empty)
            }
            ApiRequest::PutLogger(l) => {
                self.logging
                    .configure(&l)
                    .map_err(|e| refuse(e.to_string()))?;
                Ok(ApiResponse::Empty)
            }
            ApiRequest::PutMetrics(m) => {
                self.metrics
                    .set_path(PathBuf::from(m.metrics_path))
                    .map_err(refuse)?;
                Ok(ApiResponse::Empty)
            }
            ApiRequest::Action(ActionType::InstanceStart) => self.start(),
            ApiRequest::Action(ActionType::FlushMetrics) => {
                self.metrics.flush(self.state()).map_err(refuse)?;
                Ok(ApiResponse::Empty)
            }
            ApiRequest::Action(ActionType::SendCtrlAltDel) => self.send_ctrl_alt_del(),
            ApiRequest::Action(ActionType::SendPowerButton) => self.press_power_button(),
            ApiRequest::Action(ActionType::Shutdown) => {
                self.shutdown(api_server::model::DEFAULT_SHUTDOWN_TIMEOUT_MS)
            }
            ApiRequest::Shutdown(timeout_ms) => self.shutdown(timeout_ms),
            ApiRequest::PatchVm(state) => self.patch_vm(state),
            ApiRequest::CreateSnapshot(params) => self.create_snapshot(params),
            ApiRequest::LoadSnapshot(params) => self.load_snapshot(params),
        }
    }

    fn send_ctrl_alt_del(&mut self) -> Result<ApiResponse, ControllerError> {
        // Keys pressed while the VM is paused wait in the keyboard for its resume.
        let running = self.started_vm("SendCtrlAltDel")?;
        let keyboard = running
            .keyboard
            .as_ref()
            .ok_or_else(|| refuse("the VM has no i8042 keyboard"))?;
        keyboard
            .send_ctrl_alt_del()
            .map_err(|e| refuse(format!("cannot send Ctrl-Alt-Del: {e}")))?;
        Ok(ApiResponse::Empty)
    }

    /// The VM `action` needs (started, perhaps paused).
    fn started_vm(&self, action: &str) -> Result<&Running, ControllerError> {
        self.running.as_ref().ok_or_else(|| {
            refuse(format!(
                "{action} needs a running VM: send InstanceStart (or PUT /snapshot/load) first"
            ))
        })
    }

    /// The running, unpaused VM `action` needs.
    fn running_for(&self, action: &str) -> Result<&Running, ControllerError> {
        let running = self.started_vm(action)?;
        if running.pause.is_paused() {
            return Err(refuse(format!(
                "{action}: the VM is paused; resume it first (PATCH /vm)"
            )));
        }
        Ok(running)
    }

    fn press_power_button(&mut self) -> Result<ApiResponse, ControllerError> {
        let running = self.running_for("SendPowerButton")?;
        let button = running
            .power_button
            .as_ref()
            .ok_or_else(|| refuse("the VM has no ACPI power button"))?;
        button
            .press()
            .map_err(|e| refuse(format!("cannot press the power button: {e}")))?;
        Ok(ApiResponse::Empty)
    }

    /// Presses the power button; the VM is stopped if it has not ended within `timeout_ms`.
    fn shutdown(&mut self, timeout_ms: u64) -> Result<ApiResponse, ControllerError> {
        let running = self.running_for("Shutdown")?;
        running
            .shutdown
            .request(std::time::Duration::from_millis(timeout_ms))
            .map_err(|e| refuse(format!("cannot ask the guest to power off: {e}")))?;
        Ok(ApiResponse::Empty)
    }

    fn start(&mut self) -> Result<ApiResponse, ControllerError> {
        self.before_boot("InstanceStart")?;
        let mut resources = self.config.to_resources()?;
        resources.seccomp = self.seccomp;
        let opts = BuildOptions {
            process_start: self.process_start,
            ..BuildOptions::default()
        };
        let fs_daemons =
            crate::virtiofs::Daemons::start(&mut resources, &crate::virtiofs::FsArgs::from_env())
                .map_err(|e| refuse(format!("cannot start the VM: {e}")))?;
        let vm = vmm::build_microvm(&resources, opts)
            .map_err(|e| refuse(format!("cannot start the VM: {e}")))?;
        let vsock_uds = resources.vsock.map(|v| v.uds_path);
        self.adopt(vm, Origin::Booted, vsock_uds)?;
        if let Some(running) = &mut self.running {
            running._fs_daemons = fs_daemons;
        }
        Ok(ApiResponse::Empty)
    }

    /// Takes the handles of a VM just built or restored, and waits for its end on a thread
    /// of its own (which tells the main loop).
    fn adopt(
        &mut self,
        vm: RunningVm,
        origin: Origin,
        vsock_uds: Option<PathBuf>,
    ) -> Result<(), ControllerError> {
        let internal = |e: std::io::Error| {
            ControllerError::with_status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        };
        let pause = vm.pause_handle().map_err(internal)?;
        let stop = vm.stop_handle().map_err(internal)?;
        let snapshot = vm.snapshot_handle().map_err(internal)?;
        let keyboard = vm.keyboard();
        let power_button = vm.power_button().map_err(internal)?;
        let shutdown = vm.shutdown_handle().map_err(internal)?;
        self.metrics.vm = Some(vm.metrics());
        install_stop_signals(stop.raw_fd());
        let events = self.events.clone();
        std::thread::Builder::new()
            .name("zvm_wait".into())
            .spawn(move || {
                let (outcome, boot_time) = vm.wait_with_boot_time();
                let _ = events.send(Message::VmEnded(outcome, boot_time));
            })
            .map_err(internal)?;
        self.running = Some(Running {
            pause,
            keyboard,
            power_button,
            shutdown,
            snapshot,
            vsock_uds,
            _fs_daemons: Default::default(),
            origin,
            _stop: stop,
        });
        self.metrics.started = Some(Instant::now());
        Ok(())
    }

    fn patch_vm(&mut self, state: VmState) -> Result<ApiResponse, ControllerError> {
        let running = self
            .running
            .as_ref()
            .ok_or_else(|| refuse("the VM is not started yet"))?;
        let start = Instant::now();
        match state {
            VmState::Paused => {
                running.pause.pause().map_err(|e| refuse(e.to_string()))?;
                self.metrics.latencies.pause_vm = start.elapsed();
            }
            VmState::Resumed => {
                running.pause.resume();
                self.metrics.latencies.resume_vm = start.elapsed();
            }
        }
        Ok(ApiResponse::Empty)
    }
}

/// Whether `request` configures the VM to boot (so a snapshot load may no longer come).
fn configures_vm(request: &ApiRequest) -> bool {
    matches!(
        request,
        ApiRequest::PutBootSource(_)
            | ApiRequest::PutMachineConfig(_)
            | ApiRequest::PatchMachineConfig(_)
            | ApiRequest::PutDrive(_)
            | ApiRequest::PatchDrive(_)
            | ApiRequest::PutNetworkInterface(_)
            | ApiRequest::PatchNetworkInterface(_)
            | ApiRequest::PutVsock(_)
            | ApiRequest::PutFs(_)
            | ApiRequest::PutEntropy(_)
    )
}

/// Runs VMM mode until the VM ends (or, without a VM, until the process is signalled).
pub fn serve(args: VmmModeArgs, process_start: Instant) -> ExitCode {
    let (tx, rx): (Sender<Message>, Receiver<Message>) = mpsc::channel();
    let mut monitor = Monitor {
        id: args.id,
        seccomp: args.seccomp,
        config: PendingConfig::default(),
        configured: false,
        running: None,
        metrics: Metrics::default(),
        logging: args.logging,
        process_start,
        events: tx.clone(),
    };
    if let Some(path) = &args.config_file {
        let requests = match config_file::requests_from_file(path) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("zvm: {e}");
                return ExitCode::from(2);
            }
        };
        if args.api_sock.is_none() {
            if let Err(e) = config_file::check_without_api(&requests) {
                eprintln!("zvm: config file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
        for request in requests {
            if let Err(e) = monitor.handle(request) {
                eprintln!("zvm: config file {}: {}", path.display(), e.message);
                return ExitCode::from(2);
            }
        }
    }
    let server = match &args.api_sock {
        Some(sock) => {
            let mut config = ApiServerConfig::new(sock);
            config.seccomp = args.seccomp;
            match ApiServer::start(config, Bridge(tx.clone())) {
                Ok(server) => Some(server),
                Err(e) => {
                    eprintln!("zvm: cannot serve the API on {}: {e}", sock.display());
                    return ExitCode::from(2);
                }
            }
        }
        None => None,
    };
    drop(tx);
    let code = main_loop(&mut monitor, &rx);
    if let Some(server) = server {
        let _ = server.stop();
    }
    code
}

fn main_loop(monitor: &mut Monitor, rx: &Receiver<Message>) -> ExitCode {
    let mut next_flush = Instant::now() + FLUSH_INTERVAL;
    loop {
        match rx.recv_timeout(next_flush.saturating_duration_since(Instant::now())) {
            Ok(Message::Api(request, reply)) => {
                let answer = monitor.handle(request);
                let _ = reply.send(answer);
            }
            Ok(Message::Refused) => {
                monitor.metrics.requests.inc();
                monitor.metrics.refused.inc();
            }
            Ok(Message::VmEnded(outcome, boot_time)) => {
                if let Some(uds) = monitor.running.take().and_then(|r| r.vsock_uds) {
                    vmm::devices::virtio::vsock::remove_socket(&uds);
                }
                if let Err(e) = monitor.metrics.flush(InstanceState::NotStarted) {
                    tracing::warn!("final metrics flush failed: {e}");
                }
                return report_outcome(&outcome, boot_time);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                next_flush = Instant::now() + FLUSH_INTERVAL;
                if let Err(e) = monitor.metrics.flush(monitor.state()) {
                    tracing::warn!("periodic metrics flush failed: {e}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                eprintln!("zvm: nothing to do: no API socket and no VM");
                return ExitCode::from(2);
            }
        }
    }
}
