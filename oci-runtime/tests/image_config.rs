//! `oci-runtime` image: config.json derived from the image configuration.
#![allow(clippy::unwrap_used)]

mod image_common;

use image_common::{config_json, tagged, unpack, Layout, Tar};
use serde_json::{json, Value};

#[test]
fn config_json_from_the_image_config() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("img"));
    let layer = l.layer_gzip(
        &Tar::new()
            .dir("etc/", 0o755)
            .file(
                "etc/passwd",
                b"root:x:0:0::/root:/bin/sh\nweb:x:101:102::/srv:/bin/sh\n",
            )
            .file("etc/group", b"root:x:0:\nweb:x:102:\nwww-data:x:33:web\n")
            .finish(),
    );
    let cfg = json!({
        "Entrypoint": ["/usr/bin/server", "--listen"],
        "Cmd": [":8080"],
        "Env": ["PATH=/opt/bin:/usr/bin", "MODE=prod"],
        "WorkingDir": "/srv/app",
        "User": "web",
        "Labels": {"org.example.team": "infra"},
        "StopSignal": "SIGQUIT",
        "ExposedPorts": {"8080/tcp": {}},
    });
    let c = l.config(cfg, std::slice::from_ref(&layer));
    let m = l.manifest(
        &c,
        &[layer],
        json!({"org.opencontainers.image.title": "server"}),
    );
    l.index(&[tagged(&m, "1.0")]);
    let bundle = t.path().join("bundle");
    unpack(&l.dir, Some("1.0"), &bundle).unwrap();
    let j = config_json(&bundle);
    let p = &j["process"];
    assert_eq!(p["args"], json!(["/usr/bin/server", "--listen", ":8080"]));
    assert_eq!(p["env"], json!(["PATH=/opt/bin:/usr/bin", "MODE=prod"]));
    assert_eq!(p["cwd"], "/srv/app");
    assert_eq!(p["user"]["uid"], 101);
    assert_eq!(p["user"]["gid"], 102);
    assert_eq!(p["user"]["additionalGids"], json!([33]));
    assert_eq!(p["terminal"], false);
    assert_eq!(j["root"]["path"], "rootfs");
    assert!(j["ociVersion"].as_str().unwrap().starts_with("1."));
    let ns: Vec<&str> = j["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    for want in ["pid", "network", "ipc", "uts", "mount"] {
        assert!(ns.contains(&want), "{ns:?}");
    }
    let mounts: Vec<&str> = j["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    for want in ["/proc", "/dev", "/dev/pts", "/sys"] {
        assert!(mounts.contains(&want), "{mounts:?}");
    }
    let a = &j["annotations"];
    assert_eq!(a["org.example.team"], "infra");
    assert_eq!(a["org.opencontainers.image.title"], "server");
    assert_eq!(a["org.opencontainers.image.os"], "linux");
    assert_eq!(a["org.opencontainers.image.architecture"], "amd64");
    assert_eq!(a["org.opencontainers.image.author"], "zvm tests");
    assert_eq!(
        a["org.opencontainers.image.created"],
        "2024-01-02T03:04:05Z"
    );
    assert_eq!(a["org.opencontainers.image.stopSignal"], "SIGQUIT");
    assert_eq!(a["org.opencontainers.image.exposedPorts"], "8080/tcp");
    assert_eq!(a["org.opencontainers.image.ref.name"], Value::Null);
}

#[test]
fn config_defaults_and_bad_users() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("img"));
    let layer = l.layer_tar(&Tar::new().file("x", b"").finish());
    l.simple(
        json!({"Cmd": ["/x"], "User": "1000:1000"}),
        std::slice::from_ref(&layer),
    );
    let bundle = t.path().join("b");
    unpack(&l.dir, None, &bundle).unwrap();
    let j = config_json(&bundle);
    assert_eq!(j["process"]["cwd"], "/");
    assert_eq!(
        j["process"]["env"],
        json!([oci_runtime::image::spec::DEFAULT_PATH])
    );
    assert_eq!(
        (
            j["process"]["user"]["uid"].clone(),
            j["process"]["user"]["gid"].clone()
        ),
        (json!(1000), json!(1000))
    );

    l.simple(
        json!({"Cmd": ["/x"], "User": "daemon"}),
        std::slice::from_ref(&layer),
    );
    let e = unpack(&l.dir, None, &t.path().join("b2"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("user `daemon` is not in the image's /etc/passwd"),
        "{e}"
    );
    assert!(!t.path().join("b2").exists());
}
