//! Host directories in a guest over virtio-fs, and snapshots of such a VM.
//!
//! One boot (boots are slow on KVM PVM hosts), through the API: a read-write and a
//! read-only share and a vsock command server. The guest's kernel probes the virtio-fs
//! devices at boot but nothing mounts them, as in a container template, so the paused VM
//! may be snapshotted. The base VM then ends, and two clones are restored from the
//! snapshot at once: one through `PUT /snapshot/load` with `fs_overrides`, one through
//! `zvm run --restore --fs-override`, each serving its read-write share from a host
//! directory of its own (a new virtiofsd per share). In each clone the guest mounts the
//! shares and reads and writes them (clone a also checks that the read-only one refuses
//! writes), and the host finds the files in the clone's directory. Clone a's guest then
//! keeps its shares mounted with a process counting into a file it holds open, and is
//! snapshotted: virtiofsd's state goes into the snapshot (vhost-user device-state
//! transfer), clone a resumes and keeps using its share, then ends; clone c, restored
//! from that snapshot, finds the files its guest knew and the counter writing on through
//! its open file. zvm stops every virtiofsd it started.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmm::resources::DEFAULT_BOOT_ARGS;
use zvm_integration_tests::{
    busybox_initramfs, guest_kernel, scratch_dir, vsock_request, zvm_binary, LiveZvm,
};

/// Upper bound for the boot (a VMX host needs a fraction of a second).
const BOOT_LIMIT: Duration = Duration::from_secs(900);
/// Upper bound for a restored clone to answer or finish a request.
const ANSWER_LIMIT: Duration = Duration::from_secs(300);
/// The guest's command server's vsock port.
const PORT: u32 = 5000;
/// Its line once it listens.
const READY: &str = "serve: listening on vsock port 5000";

/// The guest: only the command server; the shares are mounted after the restore.
const SCRIPT: &str = r#"
dmesg -n 1
mkdir -p /mnt/rw /mnt/ro
zvm-vsock-tool serve 5000 &
wait
"#;

/// What a clone's guest does with its shares (one shell command over vsock).
const USE_SHARES: &str = "mount -t virtiofs hostrw /mnt/rw && echo rw-share-mounted; \
    mount -t virtiofs hostro /mnt/ro && echo ro-share-mounted; \
    echo \"rw share says: $(cat /mnt/rw/hello.txt)\"; \
    echo \"ro share says: $(cat /mnt/ro/hello.txt)\"; \
    mkdir /mnt/rw/made-by-guest && echo written-by-guest > /mnt/rw/made-by-guest/note.txt && sync && echo rw-share-written; \
    if echo nope > /mnt/ro/from-guest.txt 2>/dev/null; then echo ro-share-write-succeeded; else echo ro-share-write-refused; fi; \
    if rm /mnt/ro/hello.txt 2>/dev/null; then echo ro-share-remove-succeeded; else echo ro-share-remove-refused; fi; \
    (exec 3>>/mnt/rw/count.txt; i=0; while true; do i=$((i+1)); echo $i >&3; sleep 1; done) </dev/null >/dev/null 2>&1 & \
    echo counter-started";

/// What clone c (restored from a snapshot taken after [`USE_SHARES`]) checks: files its
/// guest had looked up, and the counter still writing through the file it held open.
const AFTER_RESTORE: &str = "echo \"rw: $(cat /mnt/rw/made-by-guest/note.txt)\"; \
    echo \"ro: $(cat /mnt/ro/hello.txt)\"; a=$(wc -l < /mnt/rw/count.txt); sleep 3; \
    b=$(wc -l < /mnt/rw/count.txt); if [ $b -gt $a ]; then echo counter-goes-on; fi; \
    echo fresh > /mnt/rw/from-c.txt && sync && echo clone-c-wrote";

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Processes whose command line mentions `needle` (a share's directory: its virtiofsd).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

/// Waits until no virtiofsd serves `dir` (a sandboxed virtiofsd's own child may take a
/// moment to follow its parent).
fn assert_no_virtiofsd_for(dir: &Path) {
    let needle = dir.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&needle).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = processes_mentioning(&needle);
    assert!(left.is_empty(), "virtiofsd still runs: {left:?}");
}

/// The first request to a restored clone: `ping`, again if the guest reset the first
/// connection (it resets those it had when it handles the vsock transport reset).
fn first_contact(uds: &Path) -> Result<String, String> {
    let pong = vsock_request(uds, PORT, "ping", ANSWER_LIMIT)?;
    if pong.trim().is_empty() {
        return vsock_request(uds, PORT, "ping", ANSWER_LIMIT);
    }
    Ok(pong)
}

/// A host directory holding `hello.txt` with `text`.
fn share_dir(path: PathBuf, text: &str) -> PathBuf {
    std::fs::create_dir_all(&path).expect("share dir");
    std::fs::write(path.join("hello.txt"), text).expect("host file");
    path
}

/// What clone b's guest does (less than clone a's: guest work is slow on PVM hosts).
const USE_RW_SHARE: &str = "mount -t virtiofs hostrw /mnt/rw && cat /mnt/rw/hello.txt \
    && echo written-by-b > /mnt/rw/from-b.txt && sync && umount /mnt/rw && echo clone-b-wrote";

/// Checks a clone's answer to [`USE_SHARES`] and what it left in `rw` (its own
/// read-write directory) and `ro`.
fn check_share_use(name: &str, answer: &Result<String, String>, rw: &Path, ro: &Path, show: &str) {
    let answer = answer
        .as_deref()
        .unwrap_or_else(|e| panic!("clone {name}: {e}{show}"));
    for needle in [
        "rw-share-mounted",
        "ro-share-mounted",
        &format!("rw share says: hello from clone {name}'s directory"),
        "ro share says: hello from the host (ro)",
        "rw-share-written",
        "ro-share-write-refused",
        "ro-share-remove-refused",
        "counter-started",
    ] {
        assert!(
            answer.contains(needle),
            "clone {name}: the answer lacks {needle:?}:\n{answer}{show}"
        );
    }
    let note = std::fs::read_to_string(rw.join("made-by-guest/note.txt"))
        .unwrap_or_else(|e| panic!("clone {name}'s file is not on the host ({e}){show}"));
    assert_eq!(note, "written-by-guest\n");
    let ro_names: Vec<_> = std::fs::read_dir(ro)
        .expect("ro share")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ro_names, ["hello.txt"], "{show}");
}

#[test]
fn vms_with_shares_are_snapshotted_before_and_after_use_and_their_clones_go_on() {
    let dir = scratch_dir().join("virtio-fs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let d = |name: &str| dir.join(name);
    let base_rw = share_dir(d("base-rw"), "hello from the base VM's directory");
    let ro = share_dir(d("ro-share"), "hello from the host (ro)");
    let rw_a = share_dir(d("clone-a-rw"), "hello from clone a's directory");
    let rw_b = share_dir(d("clone-b-rw"), "hello from clone b's directory");

    // The base VM: a read-write and a read-only share, booted to the command server.
    let mut base = LiveZvm::api(&d("base.sock"), "fs-base");
    let boot = serde_json::json!({
        "kernel_image_path": guest_kernel(),
        "initrd_path": busybox_initramfs(SCRIPT),
        "boot_args": format!("{DEFAULT_BOOT_ARGS} zvm.mode=script"),
    });
    base.ok("PUT", "/boot-source", boot);
    base.ok(
        "PUT",
        "/machine-config",
        serde_json::json!({"vcpu_count": 1, "mem_size_mib": 256}),
    );
    base.ok(
        "PUT",
        "/fs/rw",
        serde_json::json!({"fs_id": "rw", "tag": "hostrw", "shared_dir": base_rw}),
    );
    base.ok(
        "PUT",
        "/fs/readonly",
        serde_json::json!({"fs_id": "readonly", "tag": "hostro", "shared_dir": ro, "read_only": true}),
    );
    base.ok(
        "PUT",
        "/vsock",
        serde_json::json!({"guest_cid": 3, "uds_path": d("base.vsock")}),
    );
    base.ok(
        "PUT",
        "/actions",
        serde_json::json!({"action_type": "InstanceStart"}),
    );
    base.wait_for(READY, BOOT_LIMIT);

    // Pause and snapshot: the guest probed both devices and mounted neither.
    let (state, mem) = (d("vm.state"), d("vm.mem"));
    base.ok("PATCH", "/vm", serde_json::json!({"state": "Paused"}));
    let t = Instant::now();
    base.ok(
        "PUT",
        "/snapshot/create",
        serde_json::json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    let snapshot_time = t.elapsed();
    let base_show = base.show();
    drop(base);
    let saved = vmm::snapshot::read_state_file(&state).expect("state file");
    let fs_states: Vec<_> = saved
        .devices
        .virtio
        .iter()
        .filter_map(|t| match t.device.clone() {
            Some(vmm::devices::virtio::mmio::VirtioDeviceState::Fs(fs)) => Some(fs),
            _ => None,
        })
        .collect();
    let tags: Vec<&str> = fs_states.iter().map(|f| f.tag.as_str()).collect();
    assert_eq!(tags, ["hostrw", "hostro"], "{base_show}");
    for fs in &fs_states {
        assert!(
            fs.queues.len() == 2 && fs.queues.iter().all(|q| q.ready && q.next_avail == 0),
            "the driver set up both queues and sent nothing: {fs:?}"
        );
    }
    let mem_meta = std::fs::metadata(&mem).expect("memory file");
    let mem_data = std::os::unix::fs::MetadataExt::blocks(&mem_meta) * 512;

    // Clone a through the API, clone b through the command line, at once; each serves
    // its read-write share from its own directory.
    let (uds_a, uds_b) = (d("clone-a.vsock"), d("clone-b.vsock"));
    let mut run_b = Command::new(zvm_binary());
    run_b
        .args(["run", "--restore"])
        .arg(&state)
        .arg("--mem")
        .arg(&mem)
        .arg("--fs-override")
        .arg(format!("hostrw={}", rw_b.display()))
        .arg("--vsock-override")
        .arg(&uds_b)
        .args(["--console", "stdio", "--shutdown-timeout", "600"]);
    let mut clone_b = LiveZvm::spawn(&mut run_b, None);
    let work_b = {
        let uds_b = uds_b.clone();
        std::thread::spawn(move || {
            first_contact(&uds_b)?;
            vsock_request(&uds_b, PORT, USE_RW_SHARE, ANSWER_LIMIT)
        })
    };
    let mut clone_a = LiveZvm::api(&d("clone-a.sock"), "fs-clone-a");
    let load = serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true,
        "vsock_override": {"uds_path": uds_a},
        "fs_overrides": [{"fs_id": "rw", "shared_dir": rw_a}],
    });
    let t = Instant::now();
    let (status, answer) = clone_a.call("PUT", "/snapshot/load", Some(&load));
    let load_time = t.elapsed();
    assert_eq!(status, 204, "load: {answer}{}", clone_a.show());
    let answer_a =
        first_contact(&uds_a).and_then(|_| vsock_request(&uds_a, PORT, USE_SHARES, ANSWER_LIMIT));
    let used_after = t.elapsed();
    check_share_use("a", &answer_a, &rw_a, &ro, &clone_a.show());
    let answer_b = work_b.join().expect("clone b");
    assert_eq!(
        answer_b.as_deref().map(str::trim),
        // hello.txt has no newline of its own.
        Ok("hello from clone b's directoryclone-b-wrote"),
        "{}",
        clone_b.show()
    );
    assert_eq!(
        std::fs::read_to_string(rw_b.join("from-b.txt"))
            .ok()
            .as_deref(),
        Some("written-by-b\n"),
        "{}",
        clone_b.show()
    );
    assert!(
        !base_rw.join("made-by-guest").exists(),
        "the base VM's directory was not written"
    );
    eprintln!(
        "full snapshot with two unmounted shares: {} (memory {} MiB, {} MiB of data); \
         clone a: PUT /snapshot/load {} (memory copied into a memfd, two virtiofsd started), \
         shares mounted and used after {}",
        ms(snapshot_time),
        mem_meta.len() >> 20,
        mem_data >> 20,
        ms(load_time),
        ms(used_after)
    );

    // The guest has used clone a's shares (mounted, files looked up, one held open by the
    // counter): the paused VM is snapshotted with virtiofsd's state, and goes on.
    let (used_state, used_mem) = (d("used.state"), d("used.mem"));
    clone_a.ok("PATCH", "/vm", serde_json::json!({"state": "Paused"}));
    let t = Instant::now();
    clone_a.ok(
        "PUT",
        "/snapshot/create",
        serde_json::json!({"snapshot_path": used_state, "mem_file_path": used_mem}),
    );
    let used_snapshot_time = t.elapsed();
    clone_a.ok("PATCH", "/vm", serde_json::json!({"state": "Resumed"}));
    let saved = vmm::snapshot::read_state_file(&used_state).expect("state file");
    let carried: Vec<(String, usize)> = saved
        .devices
        .virtio
        .iter()
        .filter_map(|t| match t.device.clone() {
            Some(vmm::devices::virtio::mmio::VirtioDeviceState::Fs(fs)) => {
                let bytes = fs.backend_state.as_ref().map_or(0, Vec::len);
                Some((fs.tag, bytes))
            }
            _ => None,
        })
        .collect();
    assert!(
        carried.len() == 2 && carried.iter().all(|(_, bytes)| *bytes > 0),
        "both shares carry virtiofsd's state: {carried:?}"
    );
    let source = vsock_request(
        &uds_a,
        PORT,
        "cat /mnt/rw/hello.txt && echo after > /mnt/rw/after-snapshot.txt && sync && echo ' source-goes-on'",
        ANSWER_LIMIT,
    );
    assert_eq!(
        source.as_deref().map(str::trim),
        Ok("hello from clone a's directory source-goes-on"),
        "{}",
        clone_a.show()
    );
    assert!(rw_a.join("after-snapshot.txt").exists());

    // Both clones end cleanly, and their virtiofsd with them.
    clone_a.ok(
        "PUT",
        "/actions",
        serde_json::json!({"action_type": "SendCtrlAltDel"}),
    );
    let status = clone_a.wait_exit(ANSWER_LIMIT);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", clone_a.show());
    let pid = i32::try_from(clone_b.child.id()).expect("a pid");
    // SAFETY: kill(2) of our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = clone_b.wait_exit(ANSWER_LIMIT);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", clone_b.show());
    for clone in [&clone_a, &clone_b] {
        assert!(!clone.stderr().contains("broken"), "{}", clone.show());
    }
    for share in [&rw_a, &rw_b, &ro] {
        assert_no_virtiofsd_for(share);
    }

    // Clone c, from the snapshot taken after use, on clone a's directories (the
    // snapshot's): new virtiofsd take the saved state, the guest finds what it knew.
    let uds_c = d("clone-c.vsock");
    let lines = |path: &Path| std::fs::read_to_string(path).map_or(0, |s| s.lines().count());
    let mut run_c = Command::new(zvm_binary());
    run_c
        .args(["run", "--restore"])
        .arg(&used_state)
        .arg("--mem")
        .arg(&used_mem)
        .arg("--vsock-override")
        .arg(&uds_c)
        .args(["--console", "stdio", "--shutdown-timeout", "600"]);
    let t = Instant::now();
    let mut clone_c = LiveZvm::spawn(&mut run_c, None);
    let pong = first_contact(&uds_c);
    let restore_time = t.elapsed();
    assert!(pong.is_ok(), "{pong:?}{}", clone_c.show());
    let counted = lines(&rw_a.join("count.txt"));
    let answer_c = vsock_request(&uds_c, PORT, AFTER_RESTORE, ANSWER_LIMIT)
        .unwrap_or_else(|e| panic!("clone c: {e}{}", clone_c.show()));
    for needle in [
        "rw: written-by-guest",
        "ro: hello from the host (ro)",
        "counter-goes-on",
        "clone-c-wrote",
    ] {
        assert!(
            answer_c.contains(needle),
            "clone c lacks {needle:?}:\n{answer_c}{}",
            clone_c.show()
        );
    }
    assert!(
        lines(&rw_a.join("count.txt")) > counted,
        "the restored counter writes on the host"
    );
    assert!(rw_a.join("from-c.txt").exists());
    eprintln!(
        "snapshot after use (two shares, virtiofsd state {carried:?} bytes): {}; \
         zvm run --restore of it to the first answer: {}",
        ms(used_snapshot_time),
        ms(restore_time)
    );
    let pid = i32::try_from(clone_c.child.id()).expect("a pid");
    // SAFETY: kill(2) of our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = clone_c.wait_exit(ANSWER_LIMIT);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", clone_c.show());
    assert!(!clone_c.stderr().contains("broken"), "{}", clone_c.show());
    for share in [&rw_a, &ro] {
        assert_no_virtiofsd_for(share);
    }

    // A share the snapshot lacks is refused before anything runs.
    let out = Command::new(zvm_binary())
        .args(["run", "--restore"])
        .arg(&state)
        .arg("--mem")
        .arg(&mem)
        .arg("--fs-override")
        .arg(format!("nosuch={}", rw_b.display()))
        .output()
        .expect("run zvm");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no virtio-fs share 'nosuch'"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
