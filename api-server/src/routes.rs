//! Routing: from an HTTP request to an [`ApiRequest`], and from the controller's answer
//! to an HTTP response.

use crate::controller::{ApiRequest, ApiResponse, VmmController};
use crate::http::{Method, Request, Response, StatusCode};
use crate::model::{self, ModelError};
use serde::de::DeserializeOwned;

/// Why a request does not reach the controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No such resource.
    #[error("invalid request path {0:?}: no such resource")]
    NotFound(String),
    /// The resource exists but not with this method.
    #[error("method {method} is not allowed on {path} (allowed: {allowed})")]
    MethodNotAllowed {
        /// The method used.
        method: Method,
        /// The path.
        path: String,
        /// The methods the resource takes.
        allowed: &'static str,
    },
    /// The body is not valid JSON for this resource (serde's message).
    #[error("an error occurred when deserializing the json body of a request: {0}")]
    InvalidJson(String),
    /// The id in the path and the id in the body differ.
    #[error("the id in the path ({path_id:?}) and in the body ({body_id:?}) differ")]
    IdMismatch {
        /// Id in the path.
        path_id: String,
        /// Id in the body.
        body_id: String,
    },
    /// A value the schema allows but the API does not.
    #[error(transparent)]
    Invalid(#[from] ModelError),
}

impl RouteError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            RouteError::NotFound(_) => StatusCode::NOT_FOUND,
            RouteError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn into_response(self) -> Response {
        let mut response = Response::fault(self.status(), self.to_string());
        if let RouteError::MethodNotAllowed { allowed, .. } = self {
            response.allow = Some(allowed);
        }
        response
    }
}

/// What a request is, once routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /version`, answered by the server itself.
    Version,
    /// Everything else, answered by the controller.
    Api(ApiRequest),
}

/// Parses and validates a request into a [`Route`].
pub fn route(request: &Request) -> Result<Route, RouteError> {
    let segments: Vec<&str> = request.path.split('/').filter(|s| !s.is_empty()).collect();
    let method = request.method;
    let not_allowed = |allowed: &'static str| {
        Err(RouteError::MethodNotAllowed {
            method,
            path: request.path.clone(),
            allowed,
        })
    };
    let body = &request.body;
    let api = match (segments.as_slice(), method) {
        ([], Method::Get) => ApiRequest::GetInstanceInfo,
        ([], _) => return not_allowed("GET"),
        (["version"], Method::Get) => return Ok(Route::Version),
        (["version"], _) => return not_allowed("GET"),
        (["vm", "config"], Method::Get) => ApiRequest::GetVmConfig,
        (["vm", "config"], _) => return not_allowed("GET"),
        (["vm"], Method::Patch) => ApiRequest::PatchVm(parse::<model::VmStateUpdate>(body)?.state),
        (["vm"], _) => return not_allowed("PATCH"),
        (["boot-source"], Method::Put) => ApiRequest::PutBootSource(parse(body)?),
        (["boot-source"], _) => return not_allowed("PUT"),
        (["machine-config"], Method::Get) => ApiRequest::GetMachineConfig,
        (["machine-config"], Method::Put) => {
            let config: model::MachineConfig = parse(body)?;
            config.validate()?;
            ApiRequest::PutMachineConfig(config)
        }
        (["machine-config"], Method::Patch) => {
            let update: model::MachineConfigUpdate = parse(body)?;
            update.validate()?;
            ApiRequest::PatchMachineConfig(update)
        }
        (["drives", id], Method::Put) => {
            let drive: model::Drive = parse(body)?;
            same_id(id, &drive.drive_id)?;
            ApiRequest::PutDrive(drive)
        }
        (["drives", id], Method::Patch) => {
            let update: model::DriveUpdate = parse(body)?;
            same_id(id, &update.drive_id)?;
            ApiRequest::PatchDrive(update)
        }
        (["drives", _], _) => return not_allowed("PUT, PATCH"),
        (["network-interfaces", id], Method::Put) => {
            let iface: model::NetworkInterface = parse(body)?;
            same_id(id, &iface.iface_id)?;
            if let Some(mac) = &iface.guest_mac {
                model::validate_mac(mac)?;
            }
            ApiRequest::PutNetworkInterface(Box::new(iface))
        }
        (["network-interfaces", id], Method::Patch) => {
            let update: model::NetworkInterfaceUpdate = parse(body)?;
            same_id(id, &update.iface_id)?;
            ApiRequest::PatchNetworkInterface(update)
        }
        (["network-interfaces", _], _) => return not_allowed("PUT, PATCH"),
        (["vsock"], Method::Put) => {
            let vsock: model::Vsock = parse(body)?;
            if vsock.guest_cid < 3 {
                return Err(ModelError::InvalidGuestCid(vsock.guest_cid).into());
            }
            ApiRequest::PutVsock(vsock)
        }
        (["vsock"], _) => return not_allowed("PUT"),
        (["fs", id], Method::Put) => {
            let fs: model::Fs = parse(body)?;
            same_id(id, &fs.fs_id)?;
            fs.validate()?;
            ApiRequest::PutFs(fs)
        }
        (["fs", _], _) => return not_allowed("PUT"),
        (["entropy"], Method::Put) => ApiRequest::PutEntropy(parse(body)?),
        (["entropy"], _) => return not_allowed("PUT"),
        (["logger"], Method::Put) => ApiRequest::PutLogger(parse(body)?),
        (["logger"], _) => return not_allowed("PUT"),
        (["metrics"], Method::Put) => ApiRequest::PutMetrics(parse(body)?),
        (["metrics"], _) => return not_allowed("PUT"),
        (["actions"], Method::Put) => {
            let action = parse::<model::InstanceAction>(body)?;
            let timeout_ms = action.shutdown_timeout_ms()?;
            match action.action_type {
                model::ActionType::Shutdown => ApiRequest::Shutdown(timeout_ms),
                other => ApiRequest::Action(other),
            }
        }
        (["actions"], _) => return not_allowed("PUT"),
        (["snapshot", "create"], Method::Put) => {
            let params: model::SnapshotCreateParams = parse(body)?;
            params.validate()?;
            ApiRequest::CreateSnapshot(params)
        }
        (["snapshot", "load"], Method::Put) => {
            let params: model::SnapshotLoadParams = parse(body)?;
            params.validate()?;
            ApiRequest::LoadSnapshot(params)
        }
        (["snapshot", "create" | "load"], _) => return not_allowed("PUT"),
        _ => return Err(RouteError::NotFound(request.path.clone())),
    };
    Ok(Route::Api(api))
}

/// Routes `request`, has `controller` carry it out and builds the response.
pub fn handle<C: VmmController + ?Sized>(controller: &mut C, request: &Request) -> Response {
    let response = match route(request) {
        Ok(Route::Version) => {
            let info = model::VersionInfo {
                firecracker_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            Response::json(
                StatusCode::OK,
                &serde_json::to_value(info).unwrap_or_default(),
            )
        }
        Ok(Route::Api(api)) => {
            tracing::debug!(?api, "API request");
            match controller.handle(api) {
                Ok(ApiResponse::Empty) => Response::empty(StatusCode::NO_CONTENT),
                Ok(ApiResponse::Json(value)) => Response::json(StatusCode::OK, &value),
                Err(e) => Response::fault(e.status, e.message),
            }
        }
        Err(e) => {
            controller.refused();
            e.into_response()
        }
    };
    tracing::debug!(method = %request.method, path = %request.path, status = response.status.0, "API response");
    response
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, RouteError> {
    serde_json::from_slice(body).map_err(|e| RouteError::InvalidJson(e.to_string()))
}

fn same_id(path_id: &str, body_id: &str) -> Result<(), RouteError> {
    model::validate_id(path_id)?;
    if path_id != body_id {
        return Err(RouteError::IdMismatch {
            path_id: path_id.to_string(),
            body_id: body_id.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ActionType, VmState};

    fn req(method: Method, path: &str, body: &str) -> Request {
        Request {
            method,
            path: path.to_string(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        }
    }

    fn api(method: Method, path: &str, body: &str) -> ApiRequest {
        match route(&req(method, path, body)) {
            Ok(Route::Api(a)) => a,
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    fn err(method: Method, path: &str, body: &str) -> RouteError {
        route(&req(method, path, body)).expect_err("refused")
    }

    #[test]
    fn routes_every_endpoint() {
        assert_eq!(api(Method::Get, "/", ""), ApiRequest::GetInstanceInfo);
        assert_eq!(route(&req(Method::Get, "/version", "")), Ok(Route::Version));
        assert_eq!(api(Method::Get, "/vm/config", ""), ApiRequest::GetVmConfig);
        assert_eq!(
            api(Method::Get, "/machine-config/", ""),
            ApiRequest::GetMachineConfig
        );
        assert!(
            matches!(api(Method::Put, "/boot-source", r#"{"kernel_image_path":"/k"}"#), ApiRequest::PutBootSource(b) if b.kernel_image_path == "/k")
        );
        assert!(
            matches!(api(Method::Put, "/machine-config", r#"{"vcpu_count":2,"mem_size_mib":256}"#), ApiRequest::PutMachineConfig(m) if m.vcpu_count == 2)
        );
        assert!(
            matches!(api(Method::Patch, "/machine-config", r#"{"mem_size_mib":512}"#), ApiRequest::PatchMachineConfig(m) if m.mem_size_mib == Some(512))
        );
        assert!(
            matches!(api(Method::Put, "/drives/root", r#"{"drive_id":"root","path_on_host":"/r","is_root_device":true,"is_read_only":true}"#), ApiRequest::PutDrive(d) if d.is_read_only)
        );
        assert!(matches!(
            api(
                Method::Patch,
                "/drives/root",
                r#"{"drive_id":"root","path_on_host":"/s"}"#
            ),
            ApiRequest::PatchDrive(_)
        ));
        assert!(matches!(
            api(
                Method::Put,
                "/network-interfaces/eth0",
                r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"}"#
            ),
            ApiRequest::PutNetworkInterface(_)
        ));
        assert!(matches!(
            api(
                Method::Patch,
                "/network-interfaces/eth0",
                r#"{"iface_id":"eth0"}"#
            ),
            ApiRequest::PatchNetworkInterface(_)
        ));
        assert!(matches!(
            api(
                Method::Put,
                "/vsock",
                r#"{"guest_cid":3,"uds_path":"/v.sock"}"#
            ),
            ApiRequest::PutVsock(_)
        ));
        assert!(matches!(
            api(
                Method::Put,
                "/fs/data",
                r#"{"fs_id":"data","tag":"hostdata","shared_dir":"/srv"}"#
            ),
            ApiRequest::PutFs(_)
        ));
        assert_eq!(
            api(Method::Put, "/entropy", "{}"),
            ApiRequest::PutEntropy(Default::default())
        );
        assert!(matches!(
            api(Method::Put, "/logger", r#"{"level":"Info"}"#),
            ApiRequest::PutLogger(_)
        ));
        assert!(matches!(
            api(Method::Put, "/metrics", r#"{"metrics_path":"/m"}"#),
            ApiRequest::PutMetrics(_)
        ));
        assert_eq!(
            api(
                Method::Put,
                "/actions",
                r#"{"action_type":"InstanceStart"}"#
            ),
            ApiRequest::Action(ActionType::InstanceStart)
        );
        assert_eq!(
            api(Method::Patch, "/vm", r#"{"state":"Paused"}"#),
            ApiRequest::PatchVm(VmState::Paused)
        );
        assert!(
            matches!(api(Method::Put, "/snapshot/create", r#"{"snapshot_type":"Diff","snapshot_path":"/s","mem_file_path":"/m"}"#), ApiRequest::CreateSnapshot(c) if c.snapshot_type == model::SnapshotType::Diff)
        );
        let load = r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"resume_vm":true}"#;
        assert!(
            matches!(api(Method::Put, "/snapshot/load", load), ApiRequest::LoadSnapshot(l) if l.resume_vm && l.mem_file() == Ok("/m"))
        );
    }

    #[test]
    fn snapshot_bodies_are_validated_before_the_controller() {
        assert_eq!(
            err(Method::Get, "/snapshot/create", "").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            err(Method::Patch, "/snapshot/load", "{}").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            err(Method::Put, "/snapshot", "{}").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            err(Method::Put, "/snapshot/delete", "{}").status(),
            StatusCode::NOT_FOUND
        );
        assert!(matches!(
            err(
                Method::Put,
                "/snapshot/create",
                r#"{"snapshot_path":"/s","mem_file_path":"/m","version":"1.0.0"}"#
            ),
            RouteError::Invalid(ModelError::SnapshotVersion(_))
        ));
        assert!(matches!(
            err(Method::Put, "/snapshot/create", r#"{"snapshot_path":"/s"}"#),
            RouteError::InvalidJson(_)
        ));
        assert!(matches!(
            err(Method::Put, "/snapshot/load", r#"{"snapshot_path":"/s"}"#),
            RouteError::Invalid(ModelError::MemoryBackendChoice)
        ));
        let uffd =
            r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"Uffd","backend_path":"/u"}}"#;
        assert!(matches!(
            err(Method::Put, "/snapshot/load", uffd),
            RouteError::Invalid(ModelError::UffdBackend)
        ));
        for body in [
            "",
            "{",
            "[]",
            "null",
            r#"{"snapshot_path":1}"#,
            r#"{"snapshot_path":"/s","mem_file_path":"/m","bogus":0}"#,
        ] {
            let e = err(Method::Put, "/snapshot/load", body);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{body}: {e}");
        }
    }

    #[test]
    fn refusals_carry_the_right_status() {
        assert_eq!(
            err(Method::Get, "/nope", "").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            err(Method::Get, "/drives", "").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            err(Method::Get, "/drives/a/b", "").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            err(Method::Put, "/", "").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            err(Method::Get, "/boot-source", "").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert!(matches!(
            err(Method::Put, "/boot-source", "{"),
            RouteError::InvalidJson(_)
        ));
        assert!(matches!(
            err(Method::Put, "/boot-source", ""),
            RouteError::InvalidJson(_)
        ));
        let unknown = err(
            Method::Put,
            "/boot-source",
            r#"{"kernel_image_path":"/k","foo":1}"#,
        );
        assert!(
            unknown.to_string().contains("unknown field `foo`"),
            "{unknown}"
        );
        assert!(matches!(
            err(
                Method::Put,
                "/drives/a",
                r#"{"drive_id":"b","path_on_host":"/r","is_root_device":false}"#
            ),
            RouteError::IdMismatch { .. }
        ));
        assert!(matches!(
            err(
                Method::Put,
                "/drives/a-b",
                r#"{"drive_id":"a-b","path_on_host":"/r","is_root_device":false}"#
            ),
            RouteError::Invalid(ModelError::InvalidId(_))
        ));
        assert!(matches!(
            err(
                Method::Patch,
                "/network-interfaces/x",
                r#"{"iface_id":"y"}"#
            ),
            RouteError::IdMismatch { .. }
        ));
        assert!(matches!(
            err(
                Method::Put,
                "/network-interfaces/x",
                r#"{"iface_id":"x","host_dev_name":"t","guest_mac":"zz"}"#
            ),
            RouteError::Invalid(_)
        ));
        assert!(matches!(
            err(Method::Put, "/vsock", r#"{"guest_cid":2,"uds_path":"/v"}"#),
            RouteError::Invalid(_)
        ));
        assert!(matches!(
            err(Method::Patch, "/machine-config", "{}"),
            RouteError::Invalid(ModelError::EmptyUpdate)
        ));
        assert!(matches!(
            err(Method::Put, "/actions", r#"{"action_type":"Reboot"}"#),
            RouteError::InvalidJson(_)
        ));
        assert_eq!(
            err(Method::Put, "/actions", "[]").status(),
            StatusCode::BAD_REQUEST
        );
        assert!(matches!(
            err(
                Method::Put,
                "/actions",
                r#"{"action_type":"Shutdown","timeout_ms":3600001}"#
            ),
            RouteError::Invalid(ModelError::ShutdownTimeout(3_600_001))
        ));
        assert!(matches!(
            err(
                Method::Put,
                "/actions",
                r#"{"action_type":"SendPowerButton","timeout_ms":5}"#
            ),
            RouteError::Invalid(ModelError::TimeoutWithoutShutdown)
        ));
        assert!(matches!(
            err(
                Method::Put,
                "/actions",
                r#"{"action_type":"Shutdown","timeout_ms":-1}"#
            ),
            RouteError::InvalidJson(_)
        ));
        for body in [
            r#"{"vcpu_count":1,"mem_size_mib":128,"cmdline_devices":"no"}"#,
            r#"{"vcpu_count":1,"mem_size_mib":128,"cmdline_devices":0}"#,
            r#"{"vcpu_count":1,"mem_size_mib":128,"pit":"on"}"#,
            r#"{"vcpu_count":1,"mem_size_mib":128,"irqchip":"userspace"}"#,
        ] {
            assert!(
                matches!(
                    err(Method::Put, "/machine-config", body),
                    RouteError::InvalidJson(_)
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn shutdown_carries_its_grace_period() {
        for (body, expected) in [
            (
                r#"{"action_type":"Shutdown"}"#,
                ApiRequest::Shutdown(10_000),
            ),
            (
                r#"{"action_type":"Shutdown","timeout_ms":0}"#,
                ApiRequest::Shutdown(0),
            ),
            (
                r#"{"action_type":"SendPowerButton"}"#,
                ApiRequest::Action(ActionType::SendPowerButton),
            ),
        ] {
            assert_eq!(api(Method::Put, "/actions", body), expected, "{body}");
        }
    }

    /// Answers as [`Echo`] does and counts the requests refused before reaching it.
    #[derive(Default)]
    struct Counting {
        handled: usize,
        refused: usize,
    }
    impl VmmController for Counting {
        fn handle(&mut self, request: ApiRequest) -> Result<ApiResponse, crate::ControllerError> {
            self.handled += 1;
            Echo.handle(request)
        }
        fn refused(&mut self) {
            self.refused += 1;
        }
    }

    #[test]
    fn requests_refused_by_the_router_reach_the_controller_as_refusals() {
        let mut c = Counting::default();
        for (method, path, body) in [
            (
                Method::Put,
                "/actions",
                r#"{"action_type":"Shutdown","timeout_ms":3600001}"#,
            ),
            (Method::Put, "/actions", "{not json"),
            (Method::Patch, "/actions", ""),
            (Method::Get, "/no-such-thing", ""),
            (Method::Put, "/drives/a", r#"{"drive_id":"b"}"#),
        ] {
            let r = handle(&mut c, &req(method, path, body));
            assert!(r.status.0 >= 400, "{path} {body}: {}", r.status.0);
        }
        assert_eq!((c.handled, c.refused), (0, 5));
        handle(&mut c, &req(Method::Get, "/", ""));
        handle(&mut c, &req(Method::Get, "/version", ""));
        assert_eq!(
            (c.handled, c.refused),
            (1, 5),
            "the version is the server's own"
        );
    }

    struct Echo;
    impl VmmController for Echo {
        fn handle(&mut self, request: ApiRequest) -> Result<ApiResponse, crate::ControllerError> {
            match request {
                ApiRequest::GetInstanceInfo => {
                    Ok(ApiResponse::Json(serde_json::json!({"id": "x"})))
                }
                ApiRequest::Action(_) => Err(crate::ControllerError::with_status(
                    StatusCode::CONFLICT,
                    "busy",
                )),
                _ => Ok(ApiResponse::Empty),
            }
        }
    }

    #[test]
    fn controller_answers_become_responses() {
        let r = handle(&mut Echo, &req(Method::Get, "/", ""));
        assert_eq!(
            (r.status, r.body.as_slice()),
            (StatusCode::OK, br#"{"id":"x"}"#.as_slice())
        );
        let r = handle(&mut Echo, &req(Method::Put, "/entropy", "{}"));
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let r = handle(
            &mut Echo,
            &req(Method::Put, "/actions", r#"{"action_type":"FlushMetrics"}"#),
        );
        assert_eq!(
            (r.status, r.body.as_slice()),
            (
                StatusCode::CONFLICT,
                br#"{"fault_message":"busy"}"#.as_slice()
            )
        );
        let r = handle(&mut Echo, &req(Method::Get, "/version", ""));
        assert_eq!(
            r.body,
            format!(
                r#"{{"firecracker_version":"{}"}}"#,
                env!("CARGO_PKG_VERSION")
            )
            .into_bytes()
        );
        let r = handle(&mut Echo, &req(Method::Patch, "/actions", ""));
        assert_eq!(
            (r.status, r.allow),
            (StatusCode::METHOD_NOT_ALLOWED, Some("PUT"))
        );
    }
}
