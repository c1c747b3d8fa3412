//! Snapshots of a Linux guest: one boot to userspace (with a disk, vsock and two host
//! directories over virtio-fs, a read-write and a read-only one) through `zvm --api-sock`,
//! a full snapshot, the VM ended; then two clones restored at once from that snapshot, one
//! through `PUT /snapshot/load` and one through `zvm run --restore`, each on its own copy of
//! the disk, its own vsock socket and its own read-write directory (a new virtiofsd per
//! share). Each clone answers over vsock (a guest-side server started before the
//! snapshot), writes its own data to its own disk, mounts the shares and uses them (the
//! read-only one refuses writes), and its console goes on; the host then reads both disks
//! and finds each clone's files in its own directory. The guest's kernel probes the
//! virtio-fs devices at boot but nothing mounts them, as in a container template, so the
//! paused VM may be snapshotted. Clone a's guest then keeps its shares mounted with a
//! process counting into a file it holds open, and is snapshotted: virtiofsd's state goes
//! into the snapshot (vhost-user device-state transfer), clone a resumes and keeps using
//! its share; clone c, restored from that snapshot, finds the files its guest knew and the
//! counter writing on through its open file. zvm stops every virtiofsd it started.
//! Damaged snapshot files and a share the snapshot lacks are refused. A Linux boot takes
//! 20-60 s on KVM PVM hosts, so there is one, and it also checks the API on a running
//! guest: no reconfiguration or second start, a paused guest refuses the power button,
//! resume, metrics (zvm's counters and KVM's), and a graceful `Shutdown` through the ACPI
//! power button that ends the process with status 0.

#[path = "snapshot_linux/api_checks.rs"]
mod api_checks;
#[path = "snapshot_linux/shares.rs"]
mod shares;

use api_checks::{check_metrics, check_started, cli_refuses, power_off_through_the_api};
use shares::{
    assert_no_virtiofsd_for, check_clone_a_used_its_shares, check_clone_b_used_its_share,
    check_clone_c, check_unused_shares_saved, snapshot_after_use, ShareDirs, USE_RW_SHARE,
    USE_SHARES,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmm::resources::DEFAULT_BOOT_ARGS;
use zvm_integration_tests::{
    busybox_initramfs, ext4_image, guest_kernel, read_from_ext4, scratch_dir, vsock_connect,
    vsock_request, zvm_binary, LiveZvm,
};

/// Upper bound for the boot (a VMX host needs a fraction of a second).
const BOOT_LIMIT: Duration = Duration::from_secs(900);
/// Upper bound for a restored clone to answer or finish a request.
const ANSWER_LIMIT: Duration = Duration::from_secs(300);
/// The guest's command server's vsock port.
const PORT: u32 = 5000;
/// Its line once it listens.
const READY: &str = "serve: listening on vsock port 5000";

/// The guest: check the disk, start the command server (zvm-vsock-tool serve), wait; the
/// shares are mounted after the restore.
const SCRIPT: &str = r#"
dmesg -n 1
mkdir -p /mnt/d /mnt/rw /mnt/ro
mount -t ext4 /dev/vda /mnt/d && echo "disk says: $(cat /mnt/d/hello.txt)"
umount /mnt/d
zvm-vsock-tool serve 5000 &
wait
"#;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn no_kvm() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm cannot be opened: {e}")),
    }
}

/// `PUT /snapshot/load`'s body: the clone's own disk, vsock socket and read-write share.
fn load_body(state: &Path, mem: &Path, disk: &Path, uds: &Path, rw: &Path) -> serde_json::Value {
    serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "enable_diff_snapshots": false,
        "resume_vm": true,
        "drive_overrides": [{"drive_id": "data", "path_on_host": disk}],
        "vsock_override": {"uds_path": uds},
        "fs_overrides": [{"fs_id": "rw", "shared_dir": rw}],
    })
}

/// What a clone does once restored: answer (`ping`, which the guest's server answers
/// itself, then a shell command), write its own file to its own disk, then use its shares.
struct CloneRun {
    pong: Result<String, String>,
    answered_after: Duration,
    /// The first connection after the restore came back empty (the guest reset it).
    first_reset: bool,
    answer: Result<String, String>,
    disk_answer: Result<String, String>,
    disk_after: Duration,
    share_answer: Result<String, String>,
}

fn clone_work(
    name: &'static str,
    uds: PathBuf,
    since: Instant,
    use_shares: &'static str,
) -> std::thread::JoinHandle<CloneRun> {
    std::thread::spawn(move || {
        let mut pong = vsock_request(&uds, PORT, "ping", ANSWER_LIMIT);
        // Checked at the end, so that one slow boot shows everything else too.
        let first_reset = pong.as_deref().is_ok_and(|a| a.trim().is_empty());
        if first_reset {
            pong = vsock_request(&uds, PORT, "ping", ANSWER_LIMIT);
        }
        let answered_after = since.elapsed();
        let answer = vsock_request(
            &uds,
            PORT,
            &format!("echo answer-from-{name}"),
            ANSWER_LIMIT,
        );
        let write = format!(
            "mount -t ext4 /dev/vda /mnt/d && echo from-clone-{name} > /mnt/d/clone.txt && sync && umount /mnt/d \
             && echo clone-{name}-wrote-its-disk; echo clone-{name}-console-line > /dev/console"
        );
        let disk_answer = vsock_request(&uds, PORT, &write, ANSWER_LIMIT);
        let disk_after = since.elapsed();
        CloneRun {
            pong,
            answered_after,
            first_reset,
            answer,
            disk_answer,
            disk_after,
            share_answer: vsock_request(&uds, PORT, use_shares, ANSWER_LIMIT),
        }
    })
}

#[test]
fn two_clones_of_one_linux_snapshot_use_their_own_disks_and_shares_and_a_third_goes_on() {
    if let Some(reason) = no_kvm() {
        eprintln!("skipped: {reason}");
        return;
    }
    let dir = scratch_dir().join("snapshot");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let d = |name: &str| dir.join(name);
    let disk = d("base.ext4");
    ext4_image(&disk, 16, &[("hello.txt", "hello from the host")]);
    let dirs = ShareDirs::make(&dir);

    // The base VM: boot to the guest's command server, through the API.
    let mut base = LiveZvm::api(&d("base.sock"), "snap-base");
    let boot = serde_json::json!({
        "kernel_image_path": guest_kernel(),
        "initrd_path": busybox_initramfs(SCRIPT),
        "boot_args": format!("{DEFAULT_BOOT_ARGS} zvm.mode=script"),
    });
    base.ok("PUT", "/boot-source", boot.clone());
    base.ok(
        "PUT",
        "/machine-config",
        serde_json::json!({"vcpu_count": 2, "mem_size_mib": 256}),
    );
    base.ok(
        "PUT",
        "/drives/data",
        serde_json::json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false, "is_read_only": false}),
    );
    dirs.attach(&base);
    let base_uds = d("base.vsock");
    base.ok(
        "PUT",
        "/vsock",
        serde_json::json!({"guest_cid": 3, "uds_path": base_uds}),
    );
    let metrics = d("base.metrics");
    base.ok(
        "PUT",
        "/metrics",
        serde_json::json!({"metrics_path": metrics}),
    );
    let t = Instant::now();
    base.ok(
        "PUT",
        "/actions",
        serde_json::json!({"action_type": "InstanceStart"}),
    );
    check_started(&base, &boot);
    base.wait_for(READY, BOOT_LIMIT);
    let boot_time = t.elapsed();
    assert!(
        base.console().contains("disk says: hello from the host"),
        "{}",
        base.show()
    );
    let t = Instant::now();
    let answer = vsock_request(&base_uds, PORT, "echo before-the-snapshot", ANSWER_LIMIT);
    let first_answer = t.elapsed();
    assert_eq!(
        answer.as_deref().map(str::trim),
        Ok("before-the-snapshot"),
        "{}",
        base.show()
    );
    // A connection open across the snapshot: the clones must see it reset.
    let held = vsock_connect(&base_uds, PORT).expect("a second connection");
    base.wait_for("serve: connection 2 accepted", ANSWER_LIMIT);

    // Pause, snapshot, end the VM.
    let (state, mem) = (d("vm.state"), d("vm.mem"));
    let t = Instant::now();
    base.ok("PATCH", "/vm", serde_json::json!({"state": "Paused"}));
    let paused = t.elapsed();
    let t = Instant::now();
    base.ok(
        "PUT",
        "/snapshot/create",
        serde_json::json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    let snapshot_time = t.elapsed();
    drop(held);
    check_unused_shares_saved(&state, &base.show());
    power_off_through_the_api(&mut base);
    check_metrics(&metrics);
    let base_console = base.console();
    drop(base);
    let mem_meta = std::fs::metadata(&mem).expect("memory file");
    let state_len = std::fs::metadata(&state).expect("state file").len();
    assert_eq!(
        mem_meta.len(),
        256 << 20,
        "the memory file holds all of guest RAM"
    );
    eprintln!(
        "boot (InstanceStart -> guest server listening): {}; first vsock answer: {}; pause: {}; full snapshot: {} \
         (state {state_len} bytes, memory {} MiB, {} MiB allocated)",
        ms(boot_time),
        ms(first_answer),
        ms(paused),
        ms(snapshot_time),
        mem_meta.len() >> 20,
        (std::os::unix::fs::MetadataExt::blocks(&mem_meta) * 512) >> 20
    );

    // Two clones at once, each with its own disk copy and vsock socket: one through the
    // API, one through the command line.
    let (disk_a, disk_b) = (d("clone-a.ext4"), d("clone-b.ext4"));
    std::fs::copy(&disk, &disk_a).expect("copy the disk");
    std::fs::copy(&disk, &disk_b).expect("copy the disk");
    let (uds_a, uds_b) = (d("clone-a.vsock"), d("clone-b.vsock"));
    let mut clone_a = LiveZvm::api(&d("clone-a.sock"), "snap-clone-a");
    let b_started = Instant::now();
    let mut run_b = Command::new(zvm_binary());
    run_b
        .args(["run", "--restore"])
        .arg(&state)
        .arg("--mem")
        .arg(&mem);
    run_b
        .arg("--drive-override")
        .arg(format!("data={}", disk_b.display()))
        .arg("--fs-override")
        .arg(format!("hostrw={}", dirs.rw_b.display()));
    run_b.arg("--vsock-override").arg(&uds_b).args([
        "--console",
        "stdio",
        "--shutdown-timeout",
        "600",
    ]);
    let mut clone_b = LiveZvm::spawn(&mut run_b, None);
    let work_b = clone_work("b", uds_b.clone(), b_started, USE_RW_SHARE);
    let a_started = Instant::now();
    let (status, answer) = clone_a.call(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&state, &mem, &disk_a, &uds_a, &dirs.rw_a)),
    );
    let load_time = a_started.elapsed();
    assert_eq!(status, 204, "load: {answer}{}", clone_a.show());
    let work_a = clone_work("a", uds_a.clone(), a_started, USE_SHARES);
    assert_eq!(clone_a.call("GET", "/", None).1["state"], "Running");
    let (a, b) = (
        work_a.join().expect("clone a"),
        work_b.join().expect("clone b"),
    );
    for (name, run, clone) in [("a", &a, &clone_a), ("b", &b, &clone_b)] {
        let show = clone.show();
        assert_eq!(run.pong.as_deref().map(str::trim), Ok("pong"), "{show}");
        assert_eq!(
            run.answer.as_deref().map(str::trim),
            Ok(format!("answer-from-{name}").as_str()),
            "{show}"
        );
        let wrote = format!("clone-{name}-wrote-its-disk");
        assert_eq!(
            run.disk_answer.as_deref().map(str::trim),
            Ok(wrote.as_str()),
            "{show}"
        );
    }
    eprintln!(
        "clone a: load request {}; restore -> vsock answer (ping) {}, disk written after {}",
        ms(load_time),
        ms(a.answered_after),
        ms(a.disk_after)
    );
    eprintln!(
        "clone b (zvm run --restore): spawn -> vsock answer (ping) {}, disk written after {}",
        ms(b.answered_after),
        ms(b.disk_after)
    );

    // Both consoles went on from the snapshot: new lines, no second boot, and the
    // connection open at the snapshot was reset in each clone.
    for (name, clone) in [("a", &mut clone_a), ("b", &mut clone_b)] {
        clone.wait_for(&format!("clone-{name}-console-line"), ANSWER_LIMIT);
        let console = clone.console();
        let show = clone.show();
        assert!(
            console.contains(&format!("runs: echo answer-from-{name}")),
            "{show}"
        );
        assert!(
            console.contains("serve: connection 2 failed"),
            "the held connection was reset: {show}"
        );
        for boot_line in [
            "Linux version",
            "Run /init as init process",
            "zvm-guest: userspace reached",
            READY,
        ] {
            assert!(
                !console.contains(boot_line),
                "a clone does not boot again ({boot_line:?}): {show}"
            );
        }
        assert!(
            clone.child.try_wait().expect("wait").is_none(),
            "clone {name} still runs: {show}"
        );
    }
    assert!(
        !base_console.contains("clone-"),
        "the base VM saw nothing of the clones"
    );
    check_clone_a_used_its_shares(&a.share_answer, &dirs, &clone_a.show());
    check_clone_b_used_its_share(&b.share_answer, &dirs, &clone_b.show());
    let (used_state, used_mem) = (d("used.state"), d("used.mem"));
    let (used_snapshot_time, carried) =
        snapshot_after_use(&clone_a, &uds_a, &dirs, &used_state, &used_mem);

    // Ctrl-Alt-Del reaches clone a's restored i8042 and init: it shuts down cleanly.
    clone_a.ok(
        "PUT",
        "/actions",
        serde_json::json!({"action_type": "SendCtrlAltDel"}),
    );
    let status = clone_a.wait_exit(ANSWER_LIMIT);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", clone_a.show());
    assert!(
        clone_a
            .console()
            .contains("zvm-guest: ctrl-alt-del, shutting down"),
        "{}",
        clone_a.show()
    );
    // SIGTERM with --shutdown-timeout presses clone b's ACPI power button (its Generic
    // Event Device's interrupt, set up again at the restore); init powers off through ACPI.
    let pid = i32::try_from(clone_b.child.id()).expect("a pid");
    // SAFETY: kill(2) of our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = clone_b.wait_exit(ANSWER_LIMIT);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", clone_b.show());
    assert!(
        clone_b
            .console()
            .contains("zvm-guest: power button, powering off"),
        "{}",
        clone_b.show()
    );
    assert!(
        clone_b.stderr().contains("zvm: guest powered off"),
        "{}",
        clone_b.show()
    );
    for clone in [&clone_a, &clone_b] {
        assert!(!clone.stderr().contains("broken"), "{}", clone.show());
    }
    for share in [&dirs.rw_a, &dirs.rw_b, &dirs.ro] {
        assert_no_virtiofsd_for(share);
    }

    // Each disk holds its own clone's file; the base disk neither.
    assert_eq!(read_from_ext4(&disk_a, "clone.txt").trim(), "from-clone-a");
    assert_eq!(read_from_ext4(&disk_b, "clone.txt").trim(), "from-clone-b");
    for image in [&disk_a, &disk_b] {
        assert_eq!(
            read_from_ext4(image, "hello.txt").trim(),
            "hello from the host"
        );
    }
    assert_eq!(
        read_from_ext4(&disk, "clone.txt").trim(),
        "",
        "the base disk was not written"
    );

    // Clone c, from clone a's snapshot after use (on clone a's disk and directories).
    let uds_c = d("clone-c.vsock");
    let mut run_c = Command::new(zvm_binary());
    run_c
        .args(["run", "--restore"])
        .arg(&used_state)
        .arg("--mem")
        .arg(&used_mem)
        .arg("--vsock-override")
        .arg(&uds_c)
        .args(["--console", "stdio", "--shutdown-timeout", "600"]);
    let c_started = Instant::now();
    let mut clone_c = LiveZvm::spawn(&mut run_c, None);
    let pong = vsock_request(&uds_c, PORT, "ping", ANSWER_LIMIT);
    let pong = match pong {
        // The guest reset the first connection (see below): once more.
        Ok(p) if p.trim().is_empty() => vsock_request(&uds_c, PORT, "ping", ANSWER_LIMIT),
        other => other,
    };
    let c_answered = c_started.elapsed();
    assert!(pong.is_ok(), "{pong:?}{}", clone_c.show());
    check_clone_c(&clone_c, &uds_c, &dirs);
    eprintln!(
        "snapshot after use (two shares, virtiofsd state {carried:?} bytes): {}; \
         zvm run --restore of it to the first answer: {}",
        ms(used_snapshot_time),
        ms(c_answered)
    );
    let pid = i32::try_from(clone_c.child.id()).expect("a pid");
    // SAFETY: kill(2) of our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = clone_c.wait_exit(ANSWER_LIMIT);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", clone_c.show());
    assert!(!clone_c.stderr().contains("broken"), "{}", clone_c.show());
    for share in [&dirs.rw_a, &dirs.ro] {
        assert_no_virtiofsd_for(share);
    }

    // A corrupt state file and a truncated memory file are refused: exit 2 from the
    // command line; 400 from the API, and that process has no VM.
    let corrupt = d("corrupt.state");
    let mut bytes = std::fs::read(&state).expect("state");
    bytes[state_len as usize / 2] ^= 0x01;
    std::fs::write(&corrupt, bytes).expect("write");
    cli_refuses(&corrupt, &mem, "corrupt.state");
    let short = d("short.mem");
    std::fs::File::create(&short)
        .expect("create")
        .set_len(mem_meta.len() / 2)
        .expect("size");
    cli_refuses(&state, &short, "short.mem");
    let refused = LiveZvm::api(&d("refused.sock"), "snap-refused");
    for (state_file, mem_file, needle) in [
        (&corrupt, &mem, "corrupt.state"),
        (&state, &short, "short.mem"),
    ] {
        let body = load_body(
            state_file,
            mem_file,
            &disk_a,
            &d("refused.vsock"),
            &dirs.rw_a,
        );
        let (status, fault) = refused.call("PUT", "/snapshot/load", Some(&body));
        let message = fault["fault_message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{fault}{}", refused.show());
        assert!(
            message.contains(needle),
            "the fault names {needle}: {fault}"
        );
        assert_eq!(
            refused.call("GET", "/", None).1["state"],
            "Not started",
            "{}",
            refused.show()
        );
    }
    assert!(refused.console().is_empty(), "{}", refused.show());
    // A share the snapshot lacks is refused before anything runs.
    let out = Command::new(zvm_binary())
        .args(["run", "--restore"])
        .arg(&state)
        .arg("--mem")
        .arg(&mem)
        .arg("--fs-override")
        .arg(format!("nosuch={}", dirs.rw_b.display()))
        .output()
        .expect("run zvm");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no virtio-fs share 'nosuch'"), "{err}");

    // The first connection made after the restore must be answered: the guest resets
    // every connection it has when it handles the transport-reset event, so zvm must not
    // let a host connection through before the guest has done so (Firecracker holds vsock
    // RX back until the guest acknowledged the reset).
    for (name, run) in [("a", &a), ("b", &b)] {
        assert!(
            !run.first_reset,
            "clone {name}: the first vsock connection after the restore was accepted (OK) and then reset by \
             the guest, which had not handled the transport-reset event yet"
        );
    }
}
