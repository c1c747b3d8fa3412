//! Hostile deployment JSON: through the API's entry point, and as files in the state
//! directory read back at start. Each is refused (or moved aside) with a clear message, and
//! the node goes on serving the other deployments.

use super::*;
use std::time::Instant;

#[tokio::test]
async fn hostile_spec_json_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let node = Node::start(config(dir.path(), &world)).unwrap();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(String, &str)> = vec![
        (deep, "spec: invalid type: sequence"),
        (
            format!(
                r#"{{"name":"a","flist":"x","compute":{{"cpu":1,"memory":"256M"}},"env":{}}}"#,
                "{".repeat(50_000)
            ),
            "spec:",
        ),
        (
            r#"{"name":"a","flist":"x","compute":{"cpu":1e400,"memory":"256M"}}"#.into(),
            "spec:",
        ),
        (
            r#"{"name":"a","flist":"x","compute":{"cpu":-1,"memory":"256M"}}"#.into(),
            "spec:",
        ),
        (
            r#"{"name":"a","flist":"x","compute":{"cpu":1,"memory":"99999999999999999999G"}}"#
                .into(),
            "spec:",
        ),
        (
            r#"{"name":"a","flist":"x","compute":{"cpu":1,"memory":18446744073709551615}}"#.into(),
            "compute.memory",
        ),
        (
            r#"{"name":"a","flist":"x","compute":{"cpu":4294967295,"memory":"256M"}}"#.into(),
            "compute.cpu",
        ),
        (
            r#"{"name":"a\u0000b","flist":"x","compute":{"cpu":1,"memory":"256M"}}"#.into(),
            "name:",
        ),
        (
            r#"{"name":"ａ","flist":"x","compute":{"cpu":1,"memory":"256M"}}"#.into(),
            "name:",
        ),
        (
            r#"{"name":"a","flist":"x\u0000","compute":{"cpu":1,"memory":"256M"}}"#.into(),
            "flist: contains a NUL byte",
        ),
        ("\u{feff}{}".into(), "spec:"),
        ("".into(), "spec: EOF"),
    ];
    for (body, want) in cases {
        let start = Instant::now();
        let e = node.create(body.as_bytes()).await.unwrap_err().to_string();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(e.contains(want), "`{e}` lacks `{want}`");
        assert!(e.len() < 4096, "error text of {} bytes", e.len());
    }
    assert!(persisted(dir.path()).is_empty());
    // Still serving.
    node.create(spec("ok", "fake://run", "256M").as_bytes())
        .await
        .unwrap();
    wait_state(&node, "ok", DeploymentState::Running).await;
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: valid path string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[tokio::test]
async fn hostile_deployment_files_do_not_stop_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(World::default());
    let node = Node::start(config(dir.path(), &world)).unwrap();
    node.create(spec("good", "fake://run", "256M").as_bytes())
        .await
        .unwrap();
    wait_state(&node, "good", DeploymentState::Running).await;
    node.detach();
    drop(node);

    let d = dir.path().join("deployments");
    let good: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("good.json")).unwrap()).unwrap();
    let with = |name: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        v["spec"]["name"] = name.into();
        f(&mut v);
        std::fs::write(
            d.join(format!("{name}.json")),
            serde_json::to_vec(&v).unwrap(),
        )
        .unwrap();
    };
    mkfifo(&d.join("fifo.json"));
    std::os::unix::fs::symlink("/dev/zero", d.join("zero.json")).unwrap();
    std::fs::write(d.join("huge.json"), vec![b' '; 2 << 20]).unwrap();
    std::fs::write(
        d.join("deep.json"),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    )
    .unwrap();
    std::fs::create_dir(d.join("dir.json")).unwrap();
    // Names that would climb out of vms/, or that the API would never accept.
    with("..", &|_| {});
    with(".hidden", &|_| {});
    // A record that would make the node delete a host interface, or boot with 0 vCPUs.
    with("evil", &|v| {
        v["spec"]["network"] = serde_json::json!({"interfaces": [{"network": "lan"}]});
        v["addresses"] = serde_json::json!([{"network": "lan", "ip": "10.9.0.9", "prefix": 24,
            "gateway": "10.9.0.1", "tap": "eth0"}]);
    });
    with("cpu0", &|v| v["spec"]["compute"]["cpu"] = 0.into());
    with("restarts", &|v| v["restarts"] = (-1).into());

    let start = Instant::now();
    let node = Node::start(config(dir.path(), &world)).unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(
        node.list()
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["good"]
    );
    wait_state(&node, "good", DeploymentState::Running).await;
    assert_eq!(world.starts("good"), 1, "re-adopted, not started again");
    for name in [
        "fifo", "zero", "huge", "deep", "dir", "..", ".hidden", "evil", "cpu0", "restarts",
    ] {
        assert!(
            d.join(format!("{name}.corrupt")).exists(),
            "{name}.json not moved aside: {:?}",
            persisted(dir.path())
        );
    }
    assert!(world.cleaned.lock().unwrap().is_empty());
    assert!(dir.path().join("deployments").is_dir() && dir.path().join("vms").is_dir());
    // And it still serves.
    node.create(spec("next", "fake://run", "256M").as_bytes())
        .await
        .unwrap();
    wait_state(&node, "next", DeploymentState::Running).await;
}
