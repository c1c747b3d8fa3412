//! The boundary between the API and the monitor: typed requests in, responses out.
//!
//! The server parses and validates every request into an [`ApiRequest`] and hands it to
//! a [`VmmController`]; it never touches a VM itself.

use crate::http::StatusCode;
use crate::model::{
    ActionType, BootSource, Drive, DriveUpdate, EntropyDevice, Fs, Logger, MachineConfig,
    MachineConfigUpdate, Metrics, NetworkInterface, NetworkInterfaceUpdate, SnapshotCreateParams,
    SnapshotLoadParams, VmState, Vsock,
};

/// One validated API request. Ids in paths are checked and equal to the ids in bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /`: answer with [`crate::model::InstanceInfo`].
    GetInstanceInfo,
    /// `GET /vm/config`: answer with [`crate::model::FullVmConfig`].
    GetVmConfig,
    /// `GET /machine-config`: answer with [`MachineConfig`].
    GetMachineConfig,
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config` (at least one field is set).
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /drives/{drive_id}`.
    PutDrive(Drive),
    /// `PATCH /drives/{drive_id}`.
    PatchDrive(DriveUpdate),
    /// `PUT /network-interfaces/{iface_id}`.
    PutNetworkInterface(Box<NetworkInterface>),
    /// `PATCH /network-interfaces/{iface_id}`.
    PatchNetworkInterface(NetworkInterfaceUpdate),
    /// `PUT /vsock` (guest CID checked to be 3 or more).
    PutVsock(Vsock),
    /// `PUT /fs/{fs_id}` (validated: tag length, one backend).
    PutFs(Fs),
    /// `PUT /entropy`.
    PutEntropy(EntropyDevice),
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /metrics`.
    PutMetrics(Metrics),
    /// `PUT /actions` (every action but `Shutdown`).
    Action(ActionType),
    /// `PUT /actions` with `Shutdown`: the guest's grace period in milliseconds.
    Shutdown(u64),
    /// `PATCH /vm`.
    PatchVm(VmState),
    /// `PUT /snapshot/create` (validated: paths given, no format version).
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load` (validated: one File memory backend, override ids valid and
    /// each given once).
    LoadSnapshot(SnapshotLoadParams),
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiResponse {
    /// Done, nothing to say: `204 No Content`.
    Empty,
    /// `200 OK` with this JSON body.
    Json(serde_json::Value),
}

/// A refused or failed request: sent as `{"fault_message": message}` with `status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ControllerError {
    /// The status to answer with (400 unless said otherwise).
    pub status: StatusCode,
    /// What went wrong, for the client.
    pub message: String,
}

impl ControllerError {
    /// A `400 Bad Request` with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        ControllerError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// An error with another status, e.g. [`StatusCode::INTERNAL_SERVER_ERROR`].
    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        ControllerError {
            status,
            message: message.into(),
        }
    }
}

/// What the API server drives. Implemented by the monitor on top of the VMM.
///
/// `handle` runs on the API server's thread, under its seccomp filter (when enabled):
/// it should hand work that needs other system calls (opening files, KVM ioctls) to
/// the VMM thread, e.g. through a channel and an eventfd, and wait for the answer.
/// Requests are handled one at a time, in the order they arrive.
pub trait VmmController {
    /// Carries out one request.
    fn handle(&mut self, request: ApiRequest) -> Result<ApiResponse, ControllerError>;

    /// Learns of a request the server refused itself, before it became an [`ApiRequest`]
    /// (an unknown path, a method not allowed, a body that does not parse or validate),
    /// so that request metrics count it. Does nothing by default.
    fn refused(&mut self) {}
}

impl<T: VmmController + ?Sized> VmmController for Box<T> {
    fn handle(&mut self, request: ApiRequest) -> Result<ApiResponse, ControllerError> {
        (**self).handle(request)
    }

    fn refused(&mut self) {
        (**self).refused()
    }
}
