//! A real HTTP client: curl over the Unix socket, as Firecracker users drive it.
//! curl is required: the test fails, rather than skips, without it.

mod common;

use common::TestServer;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn curl(socket: &std::path::Path, args: &[&str]) -> Output {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--unix-socket"])
        .arg(socket)
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn curl_drives_the_api() {
    let version = Command::new("curl").arg("--version").output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "curl is needed for this test and is not installed: apt-get install -y curl (scripts/install-deps.sh should list it)"
    );
    let t = TestServer::start();
    let sock = t.path.clone();

    let put = |path: &str, body: &str| {
        let out = curl(
            &sock,
            &[
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/json",
                "-d",
                body,
                "-w",
                "%{http_code}",
                &format!("http://localhost{path}"),
            ],
        );
        text(&out.stdout)
    };
    assert_eq!(
        put(
            "/boot-source",
            r#"{"kernel_image_path":"/vmlinux","boot_args":"console=ttyS0"}"#
        ),
        "204"
    );
    assert_eq!(
        put("/machine-config", r#"{"vcpu_count":2,"mem_size_mib":1024}"#),
        "204"
    );
    assert_eq!(
        put(
            "/drives/rootfs",
            r#"{"drive_id":"rootfs","path_on_host":"/r.ext4","is_root_device":true,"is_read_only":false}"#
        ),
        "204"
    );
    let refused = put(
        "/drives/rootfs",
        r#"{"drive_id":"other","path_on_host":"/r","is_root_device":true}"#,
    );
    assert!(
        refused.starts_with(r#"{"fault_message":"#) && refused.ends_with("400"),
        "{refused}"
    );

    let out = curl(&sock, &["http://localhost/machine-config"]);
    let machine: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(machine["mem_size_mib"], 1024);

    // Two URLs in one run: curl reuses the keep-alive connection.
    let out = curl(
        &sock,
        &["-v", "http://localhost/", "http://localhost/version"],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(r#""state":"Not started""#) && stdout.contains("firecracker_version"),
        "{stdout}"
    );
    let stderr = text(&out.stderr).to_lowercase();
    assert!(
        stderr.contains("re-using existing connection")
            || stderr.contains("reusing existing connection"),
        "{stderr}"
    );

    // Expect: 100-continue is answered at once (curl would otherwise wait 10 s).
    let big = format!(r#"{{"log_path":"/tmp/{}.log"}}"#, "l".repeat(4000));
    let started = Instant::now();
    let out = curl(
        &sock,
        &[
            "-X",
            "PUT",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "10",
            "-d",
            &big,
            "-w",
            "%{http_code}",
            "http://localhost/logger",
        ],
    );
    assert_eq!(text(&out.stdout), "204");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the 100 Continue came promptly"
    );

    let out = curl(
        &sock,
        &[
            "-X",
            "PUT",
            "-d",
            r#"{"action_type":"InstanceStart"}"#,
            "-w",
            "%{http_code}",
            "http://localhost/actions",
        ],
    );
    assert_eq!(text(&out.stdout), "204");
    let out = curl(
        &sock,
        &[
            "-X",
            "PATCH",
            "-d",
            r#"{"state":"Paused"}"#,
            "-w",
            "%{http_code}",
            "http://localhost/vm",
        ],
    );
    assert_eq!(text(&out.stdout), "204");
    let out = curl(
        &sock,
        &["-X", "DELETE", "-w", "%{http_code}", "http://localhost/"],
    );
    assert!(text(&out.stdout).ends_with("405"));
    assert_eq!(t.stop().state, api_server::model::InstanceState::Paused);
}
