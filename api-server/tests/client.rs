//! The crate's HTTP client against the real server: statuses, bodies, faults.

mod common;

use api_server::client::{request, ClientError};
use common::TestServer;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[test]
fn client_reads_statuses_and_bodies_from_the_server() {
    let t = TestServer::start();
    let r = request(&t.path, "GET", "/", None, T).expect("GET /");
    assert_eq!(
        (r.status, r.reason.as_str(), r.is_error()),
        (200, "OK", false)
    );
    let info: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(info["state"], "Not started");
    let r = request(
        &t.path,
        "put",
        "/boot-source",
        Some(br#"{"kernel_image_path": "/k"}"#),
        T,
    )
    .expect("PUT");
    assert_eq!(
        (r.status, r.body.len()),
        (204, 0),
        "methods are sent upper case"
    );
    let r = request(
        &t.path,
        "PUT",
        "/actions",
        Some(br#"{"action_type": "SendCtrlAltDel"}"#),
        T,
    )
    .expect("PUT");
    assert_eq!(r.status, 400, "not before the VM starts");
    assert!(
        r.is_error() && r.text().contains("fault_message"),
        "{}",
        r.text()
    );
    let r = request(&t.path, "DELETE", "/", None, T).expect("answered");
    assert!(r.is_error());
    let dir = tempfile::tempdir().expect("dir");
    let err = request(&dir.path().join("none.sock"), "GET", "/", None, T).expect_err("no server");
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    t.stop();
}
