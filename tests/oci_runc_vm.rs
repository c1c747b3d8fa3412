//! `zvm oci run` (the same code as `zvm-runc run`) of a busybox bundle in a real micro-VM,
//! through the runc command line: the container's stdout reaches the caller, the exit status
//! is the container's, env/cwd/user/hostname and a read-only root take effect, and the
//! createRuntime and poststop hooks run on the host with the OCI state on stdin. One boot.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use zvm_integration_tests::{
    busybox_rootfs, guest_kernel, oci_agent, run_to_end, scratch_dir, zvm_binary,
};

/// A boot takes about a minute on an idle PVM host, several on a busy one.
const LIMIT: Duration = Duration::from_secs(720);

const SCRIPT: &str = r#"echo hello-from-vm
echo "FOO=$FOO"
echo "cwd=$(pwd)"
echo "host=$(hostname)"
echo "uid=$(id -u) gid=$(id -g)"
touch /root-write 2>/dev/null || echo ro-root
exit 7
"#;

/// A hook that saves its stdin (the OCI state) to `file`.
fn saving_hook(file: &Path) -> serde_json::Value {
    serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", file.display())]})
}

fn zvm_oci(root: &Path) -> Command {
    let mut command = Command::new(zvm_binary());
    command
        .arg("oci")
        .arg("--root")
        .arg(root)
        .env("ZVM_KERNEL", guest_kernel())
        .env("ZVM_OCI_AGENT", oci_agent());
    command
}

#[test]
fn runc_run_in_a_vm_relays_output_exit_status_and_runs_hooks() {
    let base = scratch_dir().join(format!("oci-runc-vm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let bundle = base.join("bundle");
    let root = base.join("state");
    busybox_rootfs(
        &bundle.join("rootfs"),
        &["/work", "/proc", "/sys", "/dev", "/tmp"],
    );
    let status = zvm_oci(&root)
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .expect("zvm oci spec");
    assert!(status.success(), "zvm oci spec failed");

    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).expect("config.json"))
            .expect("spec JSON");
    let created_hook = base.join("create-runtime.json");
    let poststop_hook = base.join("poststop.json");
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/bin/sh", "-c", SCRIPT]);
    config["process"]["env"] = serde_json::json!(["PATH=/bin", "FOO=bar"]);
    config["process"]["cwd"] = "/work".into();
    config["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
    config["hostname"] = "runc-vm".into();
    config["root"]["readonly"] = true.into();
    config["hooks"] = serde_json::json!({
        "createRuntime": [saving_hook(&created_hook)],
        "poststop": [saving_hook(&poststop_hook)],
    });
    std::fs::write(
        &config_path,
        serde_json::to_vec_pretty(&config).expect("json"),
    )
    .expect("write config");

    let run = run_to_end(
        zvm_oci(&root)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg("ctr-vm"),
        Stdio::null(),
        LIMIT,
    );
    if run.timed_out {
        let console =
            std::fs::read_to_string(root.join("ctr-vm/console.log")).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(30).collect();
        panic!(
            "zvm oci run did not finish in {LIMIT:?}; console tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let (code, stdout, stderr) = (run.code, run.stdout, run.stderr);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");

    assert_eq!(code, Some(7), "the container's exit status\n{context}");
    for expected in [
        "hello-from-vm",
        "FOO=bar",
        "cwd=/work",
        "host=runc-vm",
        "uid=1000 gid=1000",
        "ro-root",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?}\n{context}");
    }

    let created: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&created_hook).expect("createRuntime hook ran"))
            .expect("state JSON");
    assert_eq!(created["id"], "ctr-vm");
    assert_eq!(created["status"], "created");
    assert_eq!(created["bundle"], bundle.to_str().expect("utf8"));
    assert!(
        created["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{created}"
    );
    let stopped: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&poststop_hook).expect("poststop hook ran"))
            .expect("state JSON");
    assert_eq!(stopped["id"], "ctr-vm");
    assert_eq!(stopped["status"], "stopped");

    // `run` deletes the container when it ends.
    let state = zvm_oci(&root)
        .args(["state", "ctr-vm"])
        .output()
        .expect("zvm oci state");
    assert!(
        !state.status.success(),
        "the container should be gone after run"
    );
    let _ = std::fs::remove_dir_all(&base);
}
