//! The HTTP API over a real Unix socket (and TCP with a token), with the test-double runner.

use super::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes, half-closing when `eof` (as a client that gives up does), and
/// returns (status, JSON body).
async fn raw(sock: &Path, request: &[u8], eof: bool) -> (u16, serde_json::Value) {
    let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
    s.write_all(request).await.unwrap();
    if eof {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

async fn req(sock: &Path, method: &str, uri: &str, body: &str) -> (u16, serde_json::Value) {
    let r = format!("{method} {uri} HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    raw(sock, r.as_bytes(), false).await
}

async fn serve(dir: &Path, world: &Arc<World>) -> (Node, std::path::PathBuf) {
    serve_with(dir, world, crate::node::http::Limits::default()).await
}

/// The node's API on `dir/api.sock` with the server's `limits`, as the daemon serves it.
async fn serve_with(
    dir: &Path,
    world: &Arc<World>,
    limits: crate::node::http::Limits,
) -> (Node, std::path::PathBuf) {
    let node = Node::start(config(dir, world)).unwrap();
    let sock = dir.join("api.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let (quit, quit_rx) = tokio::sync::watch::channel(false);
    // Serve for the rest of the test.
    std::mem::forget(quit);
    let app = api::router(node.clone(), limits.body);
    tokio::spawn(crate::node::http::serve(listener, app, limits, quit_rx));
    (node, sock)
}

#[tokio::test]
async fn stalled_and_slow_clients_cannot_hold_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let limits = crate::node::http::Limits {
        max_connections: 4,
        header: Duration::from_millis(300),
        body: Duration::from_millis(300),
    };
    let (_node, sock) = serve_with(dir.path(), &world, limits).await;
    // Four clients take every slot with half a request line and never finish it.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
        s.write_all(b"GET /hea").await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A fifth is closed at once, unanswered.
    let mut fifth = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), fifth.read_to_end(&mut buf))
        .await
        .expect("closed, not left hanging");
    assert_eq!(n.unwrap_or(0), 0, "{}", String::from_utf8_lossy(&buf));
    // The stalled ones are closed at the header deadline, and the API serves again.
    for mut s in stalled {
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(r.is_ok(), "a stalled client was dropped at the deadline");
    }
    let (status, body) = req(&sock, "GET", "/health", "").await;
    assert_eq!(status, 200, "{body}");
    // A body that trickles in (2 of 50 bytes, then nothing) gets 408 at its deadline.
    let started = std::time::Instant::now();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(5),
        raw(
            &sock,
            b"POST /deployments HTTP/1.1\r\nHost: n\r\nContent-Length: 50\r\n\r\n{\"",
            false,
        ),
    )
    .await
    .expect("answered within the deadline");
    assert_eq!(status, 408, "{body}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let (status, _) = req(&sock, "GET", "/health", "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn status_codes_and_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let (node, sock) = serve(dir.path(), &world).await;
    let (code, body) = req(
        &sock,
        "POST",
        "/deployments",
        &spec("web", "fake://run", "256M"),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["name"], "web");
    wait_state(&node, "web", DeploymentState::Running).await;
    let (code, body) = req(&sock, "GET", "/deployments/web", "").await;
    assert_eq!(code, 200);
    assert_eq!(body["state"], "running");
    assert_eq!(body["restarts"], 0);
    assert!(
        body["console_tail"]
            .as_str()
            .unwrap()
            .contains("hello from web"),
        "{body}"
    );
    let (code, body) = req(&sock, "GET", "/deployments", "").await;
    assert_eq!(
        (code, body["deployments"].as_array().unwrap().len()),
        (200, 1)
    );
    let (code, body) = req(
        &sock,
        "POST",
        "/deployments",
        &spec("web", "fake://run", "256M"),
    )
    .await;
    assert_eq!(code, 409);
    assert!(body["error"].as_str().unwrap().contains("already exists"));
    let (code, body) = req(
        &sock,
        "POST",
        "/deployments",
        &spec("big", "fake://run", "4G"),
    )
    .await;
    assert_eq!(code, 409);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("not enough memory"),
        "{body}"
    );
    let (code, body) = req(
        &sock,
        "POST",
        "/deployments",
        &spec("small", "fake://run", "1M"),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        body["error"].as_str().unwrap().contains("compute.memory"),
        "{body}"
    );
    let (code, body) = req(&sock, "POST", "/deployments", "not json").await;
    assert_eq!(code, 400);
    assert!(body["error"].is_string());
    let (code, _) = req(&sock, "GET", "/capacity", "").await;
    assert_eq!(code, 200);
    let (code, body) = req(&sock, "GET", "/health", "").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("ok")));
    assert_eq!(body["node_id"], "ab12");
    let (code, body) = req(&sock, "GET", "/nothing", "").await;
    assert_eq!(code, 404);
    assert!(body["error"].is_string());
    let (code, body) = req(&sock, "PUT", "/deployments/web", "").await;
    assert_eq!(code, 405);
    assert!(body["error"].is_string());
    let (code, body) = req(&sock, "DELETE", "/deployments/web", "").await;
    assert_eq!((code, body["deleted"].as_str()), (200, Some("web")));
    let (code, body) = req(&sock, "GET", "/deployments/web", "").await;
    assert_eq!(code, 404);
    assert_eq!(body["error"], "no deployment named `web`");
    let (code, _) = req(&sock, "DELETE", "/deployments/web", "").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn truncated_and_oversized_requests() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let (node, sock) = serve(dir.path(), &world).await;
    // Promises 200 bytes, sends 20, then closes its side.
    let truncated = b"POST /deployments HTTP/1.1\r\nHost: n\r\nContent-Length: 200\r\n\r\n{\"name\":\"x\",\"flist\"";
    let (code, body) = raw(&sock, truncated, true).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot read the request body"),
        "{body}"
    );
    let big = format!(
        r#"{{"name":"x","flist":"fake://run","compute":{{"cpu":1,"memory":"256M"}},"kernel_args":"{}"}}"#,
        "a".repeat(api::MAX_BODY)
    );
    let (code, body) = req(&sock, "POST", "/deployments", &big).await;
    assert_eq!(code, 413);
    assert!(
        body["error"].as_str().unwrap().contains("too large"),
        "{body}"
    );
    // Garbage that is not HTTP at all gets no deployment either.
    let _ = raw(&sock, b"\x00\x01garbage\r\n\r\n", true).await;
    assert_eq!(node.len(), 0);
    assert!(persisted(dir.path()).is_empty());
}

#[tokio::test]
async fn tcp_needs_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let node = Node::start(config(dir.path(), &world)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = crate::node::http::Limits::default();
    let (quit, quit_rx) = tokio::sync::watch::channel(false);
    std::mem::forget(quit);
    let app = api::router_with_token(node, "s3cret".into(), limits.body);
    tokio::spawn(crate::node::http::serve(listener, app, limits, quit_rx));
    let get = |auth: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET /health HTTP/1.1\r\nHost: n\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.split_whitespace().nth(1).unwrap().to_string()
    };
    assert_eq!(get("").await, "401");
    assert_eq!(get("Authorization: Bearer wrong\r\n").await, "401");
    assert_eq!(get("Authorization: Bearer s3cret\r\n").await, "200");
}

#[test]
fn remote_listening_needs_a_flag_and_a_token() {
    use crate::node::Listeners;
    let l = |tcp: &str, token: Option<&str>, allow_remote| Listeners {
        api_sock: "/x".into(),
        tcp: Some(tcp.parse().unwrap()),
        token: token.map(str::to_string),
        allow_remote,
    };
    l("127.0.0.1:8080", None, false).check().unwrap();
    l("[::1]:8080", None, false).check().unwrap();
    let e = l("0.0.0.0:8080", Some("t"), false).check().unwrap_err();
    assert!(e.to_string().contains("--allow-remote"), "{e}");
    let e = l("0.0.0.0:8080", None, true).check().unwrap_err();
    assert!(e.to_string().contains("bearer --token is required"), "{e}");
    l("0.0.0.0:8080", Some("t"), true).check().unwrap();
}
