//! Every Firecracker API request body: the same bytes go to each PUT and PATCH route
//! through the router (JSON decoding, then each route's checks) and on to a controller
//! that accepts whatever gets through, as the API server hands them on.
#![no_main]

use api_server::http::{Method, Request};
use api_server::routes::{handle, route};
use api_server::{ApiRequest, ApiResponse, ControllerError, StatusCode, VmmController};

/// Every route that takes a body.
const ROUTES: [(Method, &str); 15] = [
    (Method::Patch, "/vm"),
    (Method::Put, "/boot-source"),
    (Method::Put, "/machine-config"),
    (Method::Patch, "/machine-config"),
    (Method::Put, "/drives/root"),
    (Method::Patch, "/drives/root"),
    (Method::Put, "/network-interfaces/eth0"),
    (Method::Patch, "/network-interfaces/eth0"),
    (Method::Put, "/vsock"),
    (Method::Put, "/entropy"),
    (Method::Put, "/logger"),
    (Method::Put, "/metrics"),
    (Method::Put, "/actions"),
    (Method::Put, "/snapshot/create"),
    (Method::Put, "/snapshot/load"),
];

/// Takes every request; answers with its debug form, so responses carry what was parsed.
struct Accept;

impl VmmController for Accept {
    fn handle(&mut self, request: ApiRequest) -> Result<ApiResponse, ControllerError> {
        Ok(ApiResponse::Json(serde_json::Value::String(format!(
            "{request:?}"
        ))))
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for (method, path) in ROUTES {
        let request = Request {
            method,
            path: path.to_string(),
            body: data.to_vec(),
            keep_alive: true,
        };
        let routed = route(&request);
        if let Err(e) = &routed {
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{method} {path}: {e}");
        }
        let response = handle(&mut Accept, &request);
        let expected = if routed.is_ok() {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(response.status, expected, "{method} {path}");
        let mut out = Vec::new();
        response.write_to(&mut out);
    }
});
