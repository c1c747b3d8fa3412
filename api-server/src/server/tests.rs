//! The socket path is taken over only from a dead server, and never from a regular file.

use super::*;
use crate::controller::{ApiRequest, ApiResponse, ControllerError};
use std::io::{Read, Write};

struct Nop;
impl VmmController for Nop {
    fn handle(&mut self, _: ApiRequest) -> Result<ApiResponse, ControllerError> {
        Ok(ApiResponse::Empty)
    }
}

#[test]
fn a_live_socket_is_not_taken_over_and_a_stale_one_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("api.sock");
    let server = ApiServer::start(ApiServerConfig::new(&path), Nop).expect("start");
    let second = ApiServer::start(ApiServerConfig::new(&path), Nop);
    assert!(
        matches!(second, Err(ServerError::InUse(_))),
        "{:?}",
        second.err()
    );
    assert!(
        path.exists(),
        "the refused second server left the live socket alone"
    );
    server.stop().expect("stop");
    assert!(!path.exists(), "stop removes the socket");

    // A socket file nobody listens on (as after a crash) is replaced.
    drop(UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let server =
        ApiServer::start(ApiServerConfig::new(&path), Nop).expect("start over a stale socket");
    let mut stream = UnixStream::connect(&path).expect("connect");
    stream
        .write_all(b"GET /version HTTP/1.1\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    drop(server);
    assert!(!path.exists(), "drop removes the socket too");
}

#[test]
fn a_regular_file_is_never_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("api.sock");
    fs::write(&path, b"precious").expect("write");
    let result = ApiServer::start(ApiServerConfig::new(&path), Nop);
    assert!(matches!(result, Err(ServerError::NotASocket(_))));
    assert_eq!(fs::read(&path).expect("read"), b"precious");
}
