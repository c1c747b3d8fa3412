//! `zvm-runc run` of a busybox bundle in a real micro-VM, through the runc command line, by
//! a zvm installed the way users install it (issue #19): `zvm setup` puts this build's zvm
//! and zvm-runc, the guest kernel and the static agent into a temporary prefix, and the
//! installed `bin/zvm-runc` runs with the checkout out of reach (another working
//! directory, another HOME, no `ZVM_*` variables) and boots the installed kernel and agent.
//! The container's stdout and stderr alone reach the caller (the guest console stays in the
//! container's console.log), the exit status is the container's, env/cwd/user/hostname and
//! a read-only root take effect, and the createRuntime and poststop hooks run on the host
//! with the OCI state on stdin. One boot: the suite's cold boot of a container VM's kernel,
//! which makes the installed zvm-runc's template of the flavour with a virtio-fs share in
//! the test's own HOME; the container's VM is then restored from it.
//!
//! The same container checks the host's files in the container over virtio-fs (issue #14):
//! the root file system comes over virtio-fs (`zvm.rootfs=virtiofs`, a read-only root whose
//! bundle lacks /proc and /sys: made as runc makes them), a host directory bind-mounted
//! read-write (the guest writes, the host reads), one read-only (the write fails, on the
//! host side too) and a read-only bind-mounted file; the sandbox is jailed, its virtiofsd
//! beside the jail. What the container writes to the read-write one just before it exits
//! is on the host once `run` returns (the VM is stopped after the guest synced).

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use zvm_integration_tests::{busybox_rootfs, guest_kernel, run_to_end, scratch_dir, zvm_binary};

/// A boot takes about a minute on an idle PVM host, several on a busy one.
const LIMIT: Duration = Duration::from_secs(720);

const SCRIPT: &str = r#"echo hello-from-vm
echo "FOO=$FOO"
echo "cwd=$(pwd)"
echo "host=$(hostname)"
echo "uid=$(id -u) gid=$(id -g)"
touch /root-write 2>/dev/null || echo ro-root
echo from-guest > /rw/new-file && echo rw-bind
cat /ro/readme
{ echo x > /ro/x; } 2>/dev/null || echo ro-bind
cat /etc/extra-hosts
{ echo x >> /etc/extra-hosts; } 2>/dev/null || echo ro-file
seq 1 40000 > /rw/last-words
exit 7
"#;

/// A hook that saves its stdin (the OCI state) to `file`, and `also` (a file of the
/// container's, while it exists) beside it as `<file>.copy`.
fn saving_hook(file: &Path, also: Option<&Path>) -> serde_json::Value {
    let mut script = format!("cat > {}", file.display());
    if let Some(also) = also {
        script.push_str(&format!(
            "; cat {} > {}.copy",
            also.display(),
            file.display()
        ));
    }
    serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", script]})
}

/// Installs this build into `prefix` with `zvm setup`: the kernel guest-kernel/build.sh
/// built, and the agent the setup finds itself (guest/build.sh's static build).
fn install(prefix: &Path) {
    let runc = zvm_binary().with_file_name("zvm-runc");
    assert!(
        runc.is_file(),
        "{} is missing: cargo build -p oci-runtime --bin zvm-runc (scripts/test.sh does)",
        runc.display()
    );
    let out = Command::new(zvm_binary())
        .args(["setup", "--prefix"])
        .arg(prefix)
        .arg("--kernel")
        .arg(guest_kernel())
        .env_remove("ZVM_OCI_AGENT")
        .env_remove("ZVM_KERNEL")
        .output()
        .expect("zvm setup");
    assert!(
        out.status.success(),
        "zvm setup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The installed zvm-runc, run from `cwd` with `home` as HOME and no ZVM_* variables.
fn installed_runc(prefix: &Path, root: &Path, cwd: &Path, home: &Path) -> Command {
    let mut command = Command::new(prefix.join("bin/zvm-runc"));
    command
        .arg("--root")
        .arg(root)
        .current_dir(cwd)
        .env("HOME", home)
        .env_remove("XDG_CACHE_HOME");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ZVM_") {
            command.env_remove(key);
        }
    }
    command
}

#[test]
fn installed_runc_runs_a_vm_relays_output_exit_status_and_runs_hooks() {
    let base = scratch_dir().join(format!("oci-runc-vm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let bundle = base.join("bundle");
    let root = base.join("state");
    let prefix = base.join("prefix");
    let (elsewhere, home) = (base.join("elsewhere"), base.join("home"));
    for d in [&elsewhere, &home] {
        std::fs::create_dir_all(d).expect("scratch dirs");
    }
    install(&prefix);
    let zvm_oci = |root: &Path| installed_runc(&prefix, root, &elsewhere, &home);
    // No /proc or /sys: the agent makes them before it makes the root read-only.
    busybox_rootfs(&bundle.join("rootfs"), &["/work", "/dev", "/tmp", "/etc"]);
    let (rw_dir, ro_dir, hosts) = (base.join("rw"), base.join("ro"), base.join("hosts"));
    std::fs::create_dir_all(&rw_dir).expect("rw dir");
    std::fs::create_dir_all(&ro_dir).expect("ro dir");
    // The container runs as uid 1000.
    std::fs::set_permissions(&rw_dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod rw dir");
    std::fs::set_permissions(&ro_dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod ro dir");
    std::fs::write(ro_dir.join("readme"), "host-readme\n").expect("ro/readme");
    std::fs::write(&hosts, "10.0.0.1 db\n").expect("hosts");
    std::fs::set_permissions(&hosts, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .expect("chmod hosts");
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
    let log_hook = base.join("log.json");
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/bin/sh", "-c", SCRIPT]);
    config["process"]["env"] = serde_json::json!(["PATH=/bin", "FOO=bar"]);
    config["process"]["cwd"] = "/work".into();
    config["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
    config["hostname"] = "runc-vm".into();
    config["root"]["readonly"] = true.into();
    config["annotations"] = serde_json::json!({"zvm.rootfs": "virtiofs"});
    let mounts = config["mounts"].as_array_mut().expect("spec mounts");
    mounts.push(serde_json::json!({"destination": "/rw", "type": "bind",
        "source": rw_dir, "options": ["rbind", "rw"]}));
    mounts.push(serde_json::json!({"destination": "/ro", "type": "bind",
        "source": ro_dir, "options": ["rbind", "ro"]}));
    mounts.push(
        serde_json::json!({"destination": "/etc/extra-hosts", "type": "bind",
        "source": hosts, "options": ["bind", "ro"]}),
    );
    config["hooks"] = serde_json::json!({
        "createRuntime": [
            saving_hook(&created_hook, Some(&root.join("ctr-vm/sandbox.json"))),
            saving_hook(&log_hook, Some(&root.join("ctr-vm/sandbox.log"))),
        ],
        "poststop": [saving_hook(&poststop_hook, None)],
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
        let console = std::fs::read_to_string(root.join("ctr-vm/console.log")).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(30).collect();
        panic!(
            "zvm oci run did not finish in {LIMIT:?}; console tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let (code, stdout, stderr) = (run.code, run.stdout, run.stderr);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");

    assert_eq!(code, Some(7), "the container's exit status\n{context}");
    assert_eq!(
        stdout,
        "hello-from-vm\nFOO=bar\ncwd=/work\nhost=runc-vm\nuid=1000 gid=1000\nro-root\n\
         rw-bind\nhost-readme\nro-bind\n10.0.0.1 db\nro-file\n",
        "stdout is the container's alone\n{context}"
    );
    // The guest's write reached the host; the read-only ones did not.
    assert_eq!(
        std::fs::read_to_string(rw_dir.join("new-file"))
            .ok()
            .as_deref(),
        Some("from-guest\n"),
        "{context}"
    );
    // What it wrote just before it exited too: the sandbox stops the VM as soon as the
    // guest has synced, without waiting for it to power off, and nothing is lost.
    let last_words = std::fs::read_to_string(rw_dir.join("last-words")).unwrap_or_default();
    assert_eq!(
        (last_words.lines().count(), last_words.lines().last()),
        (40000, Some("40000")),
        "{context}"
    );
    assert!(!ro_dir.join("x").exists(), "{context}");
    assert_eq!(
        std::fs::read_to_string(&hosts).ok().as_deref(),
        Some("10.0.0.1 db\n")
    );
    // The container's VM came from the template flavour with a share, made for it.
    let log = std::fs::read_to_string(log_hook.with_extension("json.copy")).unwrap_or_default();
    assert!(
        log.contains("VM restored from template") && log.contains("share zvm-share: 4 entries"),
        "sandbox.log:\n{log}"
    );
    let manifests: Vec<String> = std::fs::read_dir(home.join(".cache/zvm/templates"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("template.json")).ok())
        .collect();
    assert!(
        manifests
            .iter()
            .any(|m| m.replace(' ', "").contains("\"share\":\"zvm-share\"")),
        "{manifests:?}"
    );
    // The root came over virtio-fs: its mount points were made in the bundle, as runc does.
    let proc_dir = std::fs::metadata(bundle.join("rootfs/proc")).expect("rootfs/proc made");
    assert!(proc_dir.is_dir(), "{context}");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&proc_dir.permissions()) & 0o7777,
        0o755
    );
    assert_eq!(
        stderr, "",
        "stderr is the container's alone (it wrote none)\n{context}"
    );

    // The sandbox booted the installed kernel and agent, and is the installed zvm-runc.
    let sandbox: serde_json::Value = serde_json::from_slice(
        &std::fs::read(created_hook.with_extension("json.copy")).expect("sandbox.json copied"),
    )
    .expect("sandbox JSON");
    let lib = std::fs::canonicalize(prefix.join("lib/zvm")).expect("installed");
    let path = |v: &serde_json::Value| PathBuf::from(v.as_str().unwrap_or_default());
    assert_eq!(
        path(&sandbox["artifacts"]["kernel"]),
        lib.join("vmlinux"),
        "{sandbox}"
    );
    assert_eq!(
        path(&sandbox["artifacts"]["agent"]),
        lib.join("zvm-oci-agent"),
        "{sandbox}"
    );
    // An OsString in JSON: {"Unix": [bytes]}.
    let launcher: Vec<u8> = sandbox["launcher"][0]["Unix"]
        .as_array()
        .map(|bytes| {
            bytes
                .iter()
                .filter_map(|b| b.as_u64())
                .map(|b| b as u8)
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        PathBuf::from(std::ffi::OsString::from_vec(launcher)),
        lib.join("zvm-runc"),
        "{sandbox}"
    );

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
