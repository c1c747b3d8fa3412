//! Containers started from a VM template, and a container checkpointed and restored, through
//! `zvm-runc` (issue #13). Each template shape is made once per test run (one boot, by the
//! first test that needs it): the plain one by the race below, the one with the container's
//! share (which the checkpointed container restores) by the engines' tests before these, or
//! here when run alone. Every container here is a clone.
//!
//! - Two containers created at the same time with no template yet: one makes it while the
//!   other waits (one template, whole), and both are clones: each sees its own host name,
//!   its own disk and its own entropy, the clock is the host's, and each exits with its own
//!   status; both were restored (the sandbox says so), none booted a kernel.
//! - A container that counts in memory, in a file and in a file it holds open on a bind
//!   mount (over virtio-fs) is checkpointed (and so destroyed), then restored from the
//!   checkpoint: the count goes on from where it was, in memory and in both files; a
//!   damaged checkpoint is refused with a clear error. Its sandbox runs
//!   jailed (the default), checked from the host while the guest counts, so the
//!   checkpoint is written from inside the jail and moved into place by `zvm-runc`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use zvm_integration_tests::{busybox_rootfs, scratch_dir, template_dir, zvm_binary, zvm_runc};

/// A template build boots a kernel (a minute here, several on a busy host); a clone starts
/// in seconds, but the guest's work is emulated: be generous.
const LIMIT: Duration = Duration::from_secs(600);

/// Makes (or finds) the template of the default container VM with the container's share,
/// as a node would ahead of time (the checkpointed container has a bind mount; the engines'
/// tests, earlier in a run, made it already).
fn prepare_share_template() {
    let status = Command::new(zvm_binary())
        .args(["template", "prepare", "--share"])
        .env("ZVM_KERNEL", zvm_integration_tests::guest_kernel())
        .env("ZVM_OCI_AGENT", zvm_integration_tests::oci_agent())
        .env("ZVM_TEMPLATE_DIR", template_dir())
        .status()
        .expect("zvm template prepare");
    assert!(status.success(), "zvm template prepare --share failed");
}

/// A bundle in `dir` running `script` in busybox, without a host name of its own (so the
/// VM's, the container id, shows), with `/marker` holding `marker`; read-write root.
fn bundle(dir: &Path, script: &str, marker: &str) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    busybox_rootfs(&dir.join("rootfs"), &["/proc", "/sys", "/dev", "/tmp"]);
    std::fs::write(dir.join("rootfs/marker"), marker).expect("marker");
    let status = zvm_runc(&dir.join("unused-root"))
        .args(["spec", "--bundle"])
        .arg(dir)
        .status()
        .expect("zvm-runc spec");
    assert!(status.success());
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("JSON");
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
    config["root"]["readonly"] = false.into();
    if let Some(obj) = config.as_object_mut() {
        obj.remove("hostname");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("encode")).expect("write");
    dir.to_path_buf()
}

/// `zvm-runc run -d` of `id` with its output going to `<dir>/<id>.out`.
fn run_detached(root: &Path, bundle: &Path, id: &str, out: &Path) -> std::process::Child {
    let file = std::fs::File::create(out).expect("output file");
    zvm_runc(root)
        .args(["run", "-d", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone"))
        .stderr(file)
        .spawn()
        .expect("zvm-runc run -d")
}

/// Deletes (killing it first) a container when dropped, so a failed test leaves no VM
/// running.
struct Container {
    root: PathBuf,
    id: &'static str,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = zvm_runc(&self.root)
            .args(["delete", "--force", self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn state(root: &Path, id: &str) -> String {
    let out = zvm_runc(root)
        .args(["state", id])
        .output()
        .expect("zvm-runc state");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["status"].as_str().unwrap_or("gone").to_string()
}

fn wait_stopped(root: &Path, id: &str, what: &dyn Fn() -> String) {
    let deadline = Instant::now() + LIMIT;
    while state(root, id) != "stopped" {
        assert!(Instant::now() < deadline, "{id} did not stop: {}", what());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The value of `key=` in `text`.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or("")
}

const CLONE_SCRIPT: &str = r#"echo "host=$(hostname)"
echo "marker=$(cat /marker)"
echo "rand=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "now=$(date +%s)"
echo written > /written
exit $(cat /marker)
"#;

/// The template ids of the plain default container VM (1 vCPU, 256 MiB, no share, network
/// interface or data disk) in the test run's cache: the shape the racing creates make (the
/// run's other shapes stay, for the tests that restore them).
fn plain_default_templates() -> Vec<String> {
    // The cache's own listing (a fixed size limit is only for eviction, which list skips).
    oci_runtime::sandbox::template::TemplateCache::new(template_dir(), usize::MAX)
        .list()
        .into_iter()
        .filter_map(|(id, manifest, _)| {
            let key = manifest?.key;
            let plain = key.vcpus == 1
                && key.memory_mib == 256
                && key.share.is_none()
                && key.nics == 0
                && key.data_disks == 0;
            plain.then_some(id)
        })
        .collect()
}

// The tests run in name order (`a_`, `b_`): the first makes the run's plain template by a
// race, the second restores the run's share template (each also works alone).
#[test]
fn a_two_containers_racing_for_one_template_are_separate_clones() {
    let base = scratch_dir().join("template-clones");
    let root = base.join("state");
    let ids = ["clone-a", "clone-b"];
    let bundles: Vec<PathBuf> = ids
        .iter()
        .zip(["3", "4"])
        .map(|(id, marker)| bundle(&base.join(id), CLONE_SCRIPT, marker))
        .collect();
    // No template yet (a clean run has none; an earlier run's is removed): the two
    // creates race to make it, one builds while the other waits.
    for id in plain_default_templates() {
        let _ = Command::new(zvm_binary())
            .args(["template", "rm", &id])
            .env("ZVM_TEMPLATE_DIR", template_dir())
            .status();
    }
    let outs: Vec<PathBuf> = ids
        .iter()
        .map(|id| base.join(format!("{id}.out")))
        .collect();
    let _cleanup: Vec<Container> = ids
        .iter()
        .map(|id| Container {
            root: root.clone(),
            id,
        })
        .collect();
    let mut children: Vec<_> = ids
        .iter()
        .zip(&bundles)
        .zip(&outs)
        .map(|((id, b), out)| run_detached(&root, b, id, out))
        .collect();
    for (child, out) in children.iter_mut().zip(&outs) {
        let status = child.wait().expect("run -d");
        assert!(status.success(), "run -d failed: {}", read(out));
    }
    let mut rands = Vec::new();
    let mut built = 0;
    for ((id, out), marker) in ids.iter().zip(&outs).zip(["3", "4"]) {
        let dir = root.join(id);
        let what = || {
            format!(
                "output: {}\nsandbox.log: {}\nconsole: {}",
                read(out),
                read(&dir.join("sandbox.log")),
                read(&dir.join("console.log"))
            )
        };
        wait_stopped(&root, id, &what);
        let text = read(out);
        assert_eq!(field(&text, "host"), *id, "{}", what());
        assert_eq!(field(&text, "marker"), marker, "{}", what());
        let now: u64 = field(&text, "now").parse().unwrap_or(0);
        let host_now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(
            now + 300 > host_now && now <= host_now + 5,
            "the clone's clock says {now}, the host's {host_now}: {}",
            what()
        );
        rands.push(field(&text, "rand").to_string());
        let exit: serde_json::Value =
            serde_json::from_str(&read(&dir.join("exit.json"))).unwrap_or_default();
        assert_eq!(
            exit["exit"],
            marker.parse::<i64>().unwrap_or(-1),
            "{}",
            what()
        );
        let log = read(&dir.join("sandbox.log"));
        // Where the time went, for the test log: the sandbox's steps and the agent's.
        eprintln!("{id} sandbox.log:\n{log}");
        for line in read(&dir.join("console.log")).lines() {
            if line.contains("create:") || line.contains("refreshed") {
                eprintln!("{id} console: {line}");
            }
        }
        assert!(log.contains("VM restored from template"), "{}", what());
        assert!(!log.contains("booting the kernel"), "{}", what());
        built += usize::from(log.contains("built template"));
        let status = zvm_runc(&root)
            .args(["delete", id])
            .status()
            .expect("delete");
        assert!(status.success());
    }
    // One of the two made the template, the other waited for it: one template, whole.
    assert_eq!(built, 1, "templates built by the two creates");
    assert_eq!(
        plain_default_templates().len(),
        1,
        "{:?}",
        plain_default_templates()
    );
    assert_eq!(rands[0].len(), 32, "{rands:?}");
    assert_ne!(rands[0], rands[1], "the clones share their entropy");
    // Each wrote to its own disk; the bundles' trees are untouched (the disks are copies).
    for b in &bundles {
        assert!(!b.join("rootfs/written").exists());
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// Counts in memory, into a file on its disk and, through a file it holds open, into a
/// file on a bind-mounted host directory (over virtio-fs).
const COUNTER: &str = r#"i=0
exec 3>>/data/count
while true; do
  i=$((i+1)); echo $i > /count; echo $i >&3; echo "tick $i"; sleep 0.3
done
"#;

/// Bind-mounts the host directory `data` on the container's `/data`.
fn bind_data(bundle: &Path, data: &Path) {
    std::fs::create_dir_all(data).expect("data dir");
    let path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("JSON");
    if let Some(mounts) = config["mounts"].as_array_mut() {
        mounts.push(serde_json::json!({
            "destination": "/data",
            "type": "bind",
            "source": data,
            "options": ["rbind", "rw"],
        }));
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("encode")).expect("write");
}

/// The last number in the host file `path` (0 if none yet).
fn last_count(path: &Path) -> u64 {
    read(path)
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn b_a_checkpointed_container_counts_on_after_its_restore() {
    prepare_share_template();
    let base = scratch_dir().join("checkpoint");
    let root = base.join("state");
    let b = bundle(&base.join("bundle"), COUNTER, "0");
    let data = base.join("data");
    bind_data(&b, &data);
    let image = base.join("image");
    let (out1, out2) = (base.join("before.out"), base.join("after.out"));
    let id = "counter";
    let _cleanup = Container {
        root: root.clone(),
        id,
    };
    let status = run_detached(&root, &b, id, &out1).wait().expect("run -d");
    assert!(status.success(), "run -d: {}", read(&out1));
    let count = |what: &str| -> u64 {
        let out = zvm_runc(&root)
            .args(["exec", id, "cat", "/count"])
            .output()
            .expect("exec");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if what == "before" && stderr.contains("can't open '/count'") {
            return 0; // The container has not written its first tick yet.
        }
        assert!(out.status.success(), "exec {what}: {stderr}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + LIMIT;
    while count("before") < 3 {
        assert!(Instant::now() < deadline, "no ticks: {}", read(&out1));
        std::thread::sleep(Duration::from_millis(300));
    }
    // The sandbox runs jailed (issue #16): checked from the host while the guest counts.
    // zvm-runc's limits for the default VM (256 MiB, 1 vCPU): RAM + 256 MiB, 256 tasks.
    let limits = jail::CgroupLimits {
        memory_bytes: 512 << 20,
        pids: 256,
        cpus: 2.0,
    };
    let runc = zvm_binary().with_file_name("zvm-runc");
    match jail::inspect::wait_for_jailed(&runc, Duration::from_secs(10))
        .and_then(|pid| jail::inspect::check_jailed(pid, &limits))
    {
        Ok(jailed) => eprintln!(
            "jailed sandbox: pid {}, uid {}, root holds {:?}",
            jailed.pid, jailed.uid, jailed.root_entries
        ),
        Err(e) => panic!("the sandbox is not jailed as it should be: {e}"),
    }
    // pause/resume freeze the count.
    let ok = |args: &[&str]| {
        let out = zvm_runc(&root).args(args).output().expect("zvm-runc");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&["pause", id]);
    assert_eq!(state(&root, id), "paused");
    let frozen = read(&out1).lines().count();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        read(&out1).lines().count(),
        frozen,
        "a paused container ran"
    );
    ok(&["resume", id]);
    assert_eq!(state(&root, id), "running");

    let image_arg = image.display().to_string();
    ok(&[
        "checkpoint",
        "--image-path",
        &image_arg,
        "--work-path",
        "/tmp",
        "--tcp-established",
        "--file-locks",
        id,
    ]);
    let last_tick: u64 = read(&out1)
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .max()
        .unwrap_or(0);
    assert!(last_tick >= 3, "{}", read(&out1));
    // runc destroys a checkpointed container: it is gone; delete --force says nothing.
    assert_eq!(state(&root, id), "gone");
    ok(&["delete", "--force", id]);

    // A damaged checkpoint is refused, and leaves no container behind.
    let broken = base.join("broken");
    std::fs::create_dir_all(&broken).expect("broken dir");
    for f in ["checkpoint.json", "vmstate", "rootfs.ext4", "agent.ext4"] {
        std::fs::copy(image.join(f), broken.join(f)).expect("copy");
    }
    let out = zvm_runc(&root)
        .args(["restore", "-d", "--image-path"])
        .arg(&broken)
        .arg("--bundle")
        .arg(&b)
        .arg(id)
        .output()
        .expect("restore");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a zvm checkpoint") && err.contains("memory"),
        "{err}"
    );
    assert_eq!(state(&root, id), "gone");

    let file = std::fs::File::create(&out2).expect("output");
    let status = zvm_runc(&root)
        .args(["restore", "-d", "--image-path"])
        .arg(&image)
        .arg("--bundle")
        .arg(&b)
        .arg(id)
        .stdout(file.try_clone().expect("clone"))
        .stderr(file)
        .status()
        .expect("restore");
    assert!(status.success(), "restore: {}", read(&out2));
    let deadline = Instant::now() + LIMIT;
    let after = loop {
        let ticks: Vec<u64> = read(&out2)
            .lines()
            .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
            .collect();
        if ticks.len() >= 2 {
            break ticks;
        }
        assert!(
            Instant::now() < deadline,
            "no ticks after the restore: {}\nsandbox.log: {}",
            read(&out2),
            read(&root.join(id).join("sandbox.log"))
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // The count in memory went on from the checkpoint, not from 1.
    assert!(
        after[0] > last_tick.saturating_sub(2) && after[0] <= last_tick + 3,
        "before: up to {last_tick}, after: {after:?}"
    );
    // And so does the file on the container's disk (read again if the shell was rewriting
    // it: `>` empties the file first).
    let mut in_file = 0;
    for _ in 0..10 {
        in_file = count("after the restore");
        if in_file > 0 {
            break;
        }
    }
    assert!(in_file >= after[0], "file {in_file}, ticks {after:?}");
    // And so does the count in the bind-mounted host directory, written through the file
    // the container held open across the checkpoint (virtiofsd's state went with it).
    let deadline = Instant::now() + LIMIT;
    while last_count(&data.join("count")) <= last_tick {
        assert!(
            Instant::now() < deadline,
            "the count on the bind mount stopped at {} (last tick {last_tick}): {}",
            last_count(&data.join("count")),
            read(&root.join(id).join("sandbox.log"))
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    ok(&["kill", id, "KILL"]);
    wait_stopped(&root, id, &|| read(&out2));
    ok(&["delete", id]);
    let _ = std::fs::remove_dir_all(&base);
}
