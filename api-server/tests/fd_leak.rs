//! The server closes every connection it accepts: after thousands of requests and
//! hundreds of connections (some refused, some abandoned) the process's open file
//! descriptors are back to where they started. Its own test binary, so no other test
//! opens descriptors meanwhile.

mod common;

use common::{one_shot, request_bytes, TestServer};
use std::time::{Duration, Instant};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn open_descriptors_do_not_grow() {
    let t = TestServer::start();
    let baseline = open_fds();

    let mut c = t.client();
    for i in 0..1000 {
        let r = if i % 2 == 0 {
            c.request("GET", "/", None)
        } else {
            c.request("PUT", "/boot-source", Some(r#"{"kernel_image_path":"/k"}"#))
        };
        assert!(
            r.status == 200 || r.status == 204,
            "request {i}: {}",
            r.status
        );
    }
    drop(c);

    for i in 0..200 {
        match i % 4 {
            0 => assert_eq!(one_shot(&t.path, "GET", "/version", None).status, 200),
            1 => {
                // Keep-alive, then the client just goes away.
                let mut c = t.client();
                assert_eq!(c.request("GET", "/machine-config", None).status, 200);
            }
            2 => {
                // Truncated request.
                let mut c = t.client();
                c.send_raw(&request_bytes("PUT", "/boot-source", Some("{}")).as_bytes()[..20]);
            }
            _ => {
                // Refused: too large.
                let mut c = t.client();
                c.send_raw(b"PUT /logger HTTP/1.1\r\nContent-Length: 999999\r\n\r\n");
                assert_eq!(c.read_reply().status, 413);
            }
        }
    }

    // The server closes its ends asynchronously; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now = open_fds();
    while now > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        now = open_fds();
    }
    assert!(
        now <= baseline,
        "open descriptors grew from {baseline} to {now}"
    );
    let vmm = t.stop();
    assert_eq!(
        vmm.log.len(),
        1000 + 50,
        "every complete request reached the controller once"
    );
}
