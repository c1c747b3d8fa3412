//! A private containerd daemon and an OCI image archive for the engine tests.

use super::{output_with, run_ok, stop_child, zvm_env};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A containerd daemon of its own, stopped (and its state removed) on drop.
pub struct Containerd {
    base: PathBuf,
    daemon: Child,
}

impl Containerd {
    pub fn start(base: &Path) -> Containerd {
        std::fs::create_dir_all(base).expect("containerd dir");
        let config = base.join("config.toml");
        let p = |name: &str| base.join(name).display().to_string();
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {:?}\n[ttrpc]\n  address = {:?}\n\
                 [debug]\n  address = {:?}\n",
                p("root"),
                p("state"),
                p("containerd.sock"),
                p("containerd.sock.ttrpc"),
                p("debug.sock"),
            ),
        )
        .expect("config.toml");
        let log = std::fs::File::create(base.join("containerd.log")).expect("log");
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .envs(zvm_env())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd {
            base: base.to_path_buf(),
            daemon,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c
            .ctr()
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 30 s: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.base.join("containerd.sock"))
            .args(["--namespace", "zvm-test"]);
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for args in [
            &["task", "kill", "--signal", "SIGKILL", "c1"][..],
            &["task", "delete", "--force", "c1"],
            &["container", "delete", "c1"],
        ] {
            let _ = output_with(self.ctr().args(args), "", Duration::from_secs(60));
        }
        stop_child(&mut self.daemon, libc::SIGTERM);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// An OCI image archive (what `ctr image import` takes) of the single layer `layer`,
/// named `name`.
pub fn oci_archive(base: &Path, layer: &Path, name: &str) -> PathBuf {
    let layout = base.join("oci-layout-dir");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let put = |bytes: &[u8]| -> (String, usize) {
        let tmp = base.join("blob.tmp");
        std::fs::write(&tmp, bytes).expect("blob");
        let sum = run_ok(Command::new("sha256sum").arg(&tmp), "sha256sum");
        let digest = sum
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        std::fs::rename(&tmp, blobs.join(&digest)).expect("blob");
        (digest, bytes.len())
    };
    let (layer_digest, layer_size) = put(&std::fs::read(layer).expect("layer"));
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_digest}"), "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{manifest_digest}"), "size": manifest_size,
                       "annotations": {"io.containerd.image.name": name}}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let archive = base.join("image.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .arg("."),
        "tar the image",
    );
    archive
}
