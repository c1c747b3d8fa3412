//! Snapshots of a Linux guest: one boot to userspace (with a disk and vsock) through
//! `zvm --api-sock`, a full snapshot, the VM ended; then two clones restored at once from
//! that snapshot, one through `PUT /snapshot/load` and one through `zvm run --restore`,
//! each on its own copy of the disk and its own vsock socket. Each clone answers over
//! vsock (a guest-side server started before the snapshot), writes its own data to its
//! own disk, and its console goes on; the host then reads both disks. Damaged snapshot
//! files are refused. A Linux boot takes 20-60 s on KVM PVM hosts, so there is one, and
//! it also checks the API on a running guest: no reconfiguration or second start, a
//! paused guest refuses the power button, resume, metrics (zvm's counters and KVM's), and a
//! graceful `Shutdown` through the ACPI power button that ends the process with status 0.

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

/// The guest: check the disk, start the command server (zvm-vsock-tool serve), wait.
const SCRIPT: &str = r#"
dmesg -n 1
mkdir -p /mnt/d
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

fn load_body(state: &Path, mem: &Path, disk: &Path, uds: &Path) -> serde_json::Value {
    serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "enable_diff_snapshots": false,
        "resume_vm": true,
        "drive_overrides": [{"drive_id": "data", "path_on_host": disk}],
        "vsock_override": {"uds_path": uds},
    })
}

/// What a clone does once restored: answer (`ping`, which the guest's server answers
/// itself, then a shell command), then write its own file to its own disk.
struct CloneRun {
    pong: Result<String, String>,
    answered_after: Duration,
    /// The first connection after the restore came back empty (the guest reset it).
    first_reset: bool,
    answer: Result<String, String>,
    disk_answer: Result<String, String>,
    disk_after: Duration,
}

fn clone_work(
    name: &'static str,
    uds: PathBuf,
    since: Instant,
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
        CloneRun {
            pong,
            answered_after,
            first_reset,
            answer,
            disk_answer,
            disk_after: since.elapsed(),
        }
    })
}

/// A started VM's API: the process is the lean VMM, running; no reconfiguration, one start.
fn check_started(base: &LiveZvm, boot: &serde_json::Value) {
    assert_eq!(base.call("GET", "/", None).1["state"], "Running");
    let exe = base.exe();
    assert!(
        exe.ends_with("zvm-vmm"),
        "the VM's process is the lean VMM: {}",
        exe.display()
    );
    let status = base.call("PUT", "/boot-source", Some(boot)).0;
    assert_eq!(status, 400, "no reconfiguration after start");
    let start = serde_json::json!({"action_type": "InstanceStart"});
    assert_eq!(
        base.call("PUT", "/actions", Some(&start)).0,
        400,
        "one start"
    );
}

/// The paused base VM: it refuses the power button while paused; resumed, it flushes its
/// metrics, refuses a grace period over an hour, and powers off through the ACPI power
/// button (the kernel signals init, which powers off through ACPI), exit status 0.
fn power_off_through_the_api(base: &mut LiveZvm) {
    let action = |kind: &str| serde_json::json!({ "action_type": kind });
    let (status, fault) = base.call("PUT", "/actions", Some(&action("SendPowerButton")));
    assert_eq!(status, 400, "a paused guest cannot answer the button");
    let message = fault["fault_message"].as_str().unwrap_or_default();
    assert!(message.contains("paused"), "{fault}");
    base.ok("PATCH", "/vm", serde_json::json!({"state": "Resumed"}));
    assert_eq!(base.call("GET", "/", None).1["state"], "Running");
    base.ok("PUT", "/actions", action("FlushMetrics"));
    let too_long = serde_json::json!({"action_type": "Shutdown", "timeout_ms": 3_600_001});
    let status = base.call("PUT", "/actions", Some(&too_long)).0;
    assert_eq!(status, 400, "a grace period over an hour");
    base.ok(
        "PUT",
        "/actions",
        serde_json::json!({"action_type": "Shutdown", "timeout_ms": 600_000}),
    );
    let status = base.wait_exit(ANSWER_LIMIT);
    let show = base.show();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{show}");
    let console = base.console();
    assert!(
        console.contains("i8042.dumbkbd"),
        "zvm added the i8042 switches: {show}"
    );
    assert!(
        console.contains("zvm-guest: power button, powering off"),
        "{show}"
    );
    assert!(base.stderr().contains("zvm: guest powered off"), "{show}");
    let sock = base.sock.as_deref().expect("an API socket");
    assert!(!sock.exists(), "the API socket is removed when zvm exits");
}

/// The base VM's metrics lines: FlushMetrics' and the final one; zvm's counters are
/// increases since the previous line, KVM's totals that only grow.
fn check_metrics(path: &Path) {
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(path)
        .expect("metrics written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(
        lines.len() >= 2,
        "FlushMetrics and the final flush: {lines:?}"
    );
    let sum = |group: &str, counter: &str| -> u64 {
        lines
            .iter()
            .filter_map(|l| l[group][counter].as_u64())
            .sum()
    };
    assert!(
        lines
            .iter()
            .any(|l| l["vmm"]["state"] == "Running" && l["vmm"]["boot_time_us"].as_u64().is_some()),
        "a line while running shows the guest's boot time: {lines:?}"
    );
    assert!(sum("api_server", "requests") >= 14, "{lines:?}");
    assert!(sum("api_server", "refused") >= 3, "{lines:?}");
    assert!(
        sum("vcpu", "exit_io_out") > 0,
        "serial output is port I/O: {lines:?}"
    );
    assert!(
        sum("vcpu", "exit_mmio_write") > 0,
        "virtio is MMIO: {lines:?}"
    );
    assert!(
        sum("block_data", "read_bytes") > 0,
        "the guest read its disk: {lines:?}"
    );
    let kvm = |l: &serde_json::Value, name: &str| l["kvm"][name].as_u64().unwrap_or(0);
    if lines
        .iter()
        .all(|l| l["kvm"].as_object().is_some_and(|m| m.is_empty()))
    {
        eprintln!("KVM's counters not checked: this kernel has no KVM_GET_STATS_FD");
        return;
    }
    let last = lines.last().expect("a line");
    for name in ["exits", "mmio_exits", "irq_injections"] {
        assert!(kvm(last, name) > 0, "{name}: {last}");
    }
    assert!(
        lines
            .windows(2)
            .all(|w| kvm(&w[1], "exits") >= kvm(&w[0], "exits")),
        "{lines:?}"
    );
}

/// `zvm run --restore` with these files must exit 2 with one `zvm: ` line naming `needle`.
fn cli_refuses(state: &Path, mem: &Path, needle: &str) {
    let out = Command::new(zvm_binary())
        .args(["run", "--restore"])
        .arg(state)
        .arg("--mem")
        .arg(mem)
        .output()
        .expect("run zvm");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let what = format!(
        "{} + {}: exit {:?}, stderr:\n{err}",
        state.display(),
        mem.display(),
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(2), "{what}");
    assert!(
        lines.len() == 1 && lines[0].starts_with("zvm: ") && lines[0].contains(needle),
        "{what}"
    );
    assert!(out.stdout.is_empty(), "no guest ran: {what}");
}

#[test]
fn two_clones_of_one_linux_snapshot_answer_write_their_own_disks_and_keep_their_consoles() {
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
        .arg(format!("data={}", disk_b.display()));
    run_b.arg("--vsock-override").arg(&uds_b).args([
        "--console",
        "stdio",
        "--shutdown-timeout",
        "600",
    ]);
    let mut clone_b = LiveZvm::spawn(&mut run_b, None);
    let work_b = clone_work("b", uds_b.clone(), b_started);
    let a_started = Instant::now();
    let (status, answer) = clone_a.call(
        "PUT",
        "/snapshot/load",
        Some(&load_body(&state, &mem, &disk_a, &uds_a)),
    );
    let load_time = a_started.elapsed();
    assert_eq!(status, 204, "load: {answer}{}", clone_a.show());
    let work_a = clone_work("a", uds_a.clone(), a_started);
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
        let body = load_body(state_file, mem_file, &disk_a, &d("refused.vsock"));
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
