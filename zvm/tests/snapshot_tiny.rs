//! Snapshots of a tiny hand-assembled guest, through the real `zvm` binary: the guest
//! counts in a register and stores the count in memory; a snapshot taken mid-count and
//! restored in another process goes on counting from where it stopped (memory, registers
//! and console all continue), a diff snapshot over a copy of the first memory file
//! restores the same, and damaged snapshot files are refused before any VM exists.
//!
//! The guest runs at native speed on VMX/SVM hosts and is emulated on KVM PVM hosts
//! (about 300 000 loop iterations a second here); either way the whole test takes seconds.

mod common;

use common::{guest_code, no_kvm, shared_reader, tiny_elf, BASE};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Guest physical address of the counter (and its offset in a memory file).
const COUNTER: u64 = 0x5000;
/// Guest physical address of the number of times the entry code ran.
const BOOTS: u64 = 0x5008;
/// Guest memory, MiB.
const MEM_MIB: u64 = 32;
/// How long the guest counts in each process.
const RUN: Duration = Duration::from_millis(500);

/// One `zvm --api-sock` process, killed on drop.
struct Zvm {
    child: Child,
    sock: PathBuf,
    console: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Zvm {
    fn start(dir: &Path, name: &str) -> Zvm {
        let sock = dir.join(format!("{name}.sock"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_zvm"))
            .arg("--api-sock")
            .arg(&sock)
            .args(["--id", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn zvm --api-sock");
        let console = shared_reader(child.stdout.take().expect("stdout"));
        let stderr = shared_reader(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} never accepted a connection",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Zvm {
            child,
            sock,
            console,
            stderr,
        }
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().expect("console")).into_owned()
    }

    fn show(&self) -> String {
        let stderr = String::from_utf8_lossy(&self.stderr.lock().expect("stderr")).into_owned();
        let console = self.console();
        let tail = &console[console.len().saturating_sub(300)..];
        format!("\nzvm stderr:\n{stderr}\nconsole tail: {tail:?}")
    }

    /// Sends one request; returns the status and the body.
    fn call(&self, method: &str, uri: &str, body: &str) -> (u16, String) {
        let body = (!body.is_empty()).then_some(body.as_bytes());
        let response =
            api_server::client::request(&self.sock, method, uri, body, Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
        (
            response.status,
            String::from_utf8_lossy(&response.body).into_owned(),
        )
    }

    /// Sends a request that must succeed with 204.
    fn ok(&self, method: &str, uri: &str, body: serde_json::Value) {
        let (status, answer) = self.call(method, uri, &body.to_string());
        assert_eq!(
            status,
            204,
            "{method} {uri} {body}: {answer}{}",
            self.show()
        );
    }

    fn state(&self) -> String {
        let (status, body) = self.call("GET", "/", "");
        assert_eq!(status, 200, "GET /: {body}");
        let info: serde_json::Value = serde_json::from_str(&body).expect("GET / answers JSON");
        info["state"].as_str().unwrap_or_default().to_string()
    }

    fn snapshot(&self, kind: &str, state: &Path, mem: &Path) {
        let body = serde_json::json!({"snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem});
        self.ok("PUT", "/snapshot/create", body);
    }

    /// Loads a snapshot with this process's own disk and vsock socket.
    fn load(
        &self,
        state: &Path,
        mem: &Path,
        resume: bool,
        disk: &Path,
        uds: &Path,
    ) -> (u16, String) {
        let body = load_body(state, mem, resume, disk, uds);
        self.call("PUT", "/snapshot/load", &body.to_string())
    }
}

impl Drop for Zvm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn load_body(state: &Path, mem: &Path, resume: bool, disk: &Path, uds: &Path) -> serde_json::Value {
    serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "enable_diff_snapshots": true,
        "resume_vm": resume,
        "drive_overrides": [{"drive_id": "data", "path_on_host": disk}],
        "vsock_override": {"uds_path": uds},
    })
}

/// Whether zvm's vsock device listens on `uds` (the host side of a restored VM).
fn listens(uds: &Path) -> bool {
    UnixStream::connect(uds).is_ok()
}

/// A 1 MiB disk image for the VM's (unused) virtio-blk device.
fn disk(path: &Path) -> PathBuf {
    std::fs::write(path, vec![0u8; 1 << 20]).expect("disk image");
    path.to_path_buf()
}

fn read_u64(mem: &Path, offset: u64) -> u64 {
    let file = std::fs::File::open(mem).expect("open the memory file");
    let mut bytes = [0u8; 8];
    file.read_exact_at(&mut bytes, offset)
        .expect("read the memory file");
    u64::from_le_bytes(bytes)
}

/// (count, boots) in a memory file.
fn counter(mem: &Path) -> (u64, u64) {
    (read_u64(mem, COUNTER), read_u64(mem, BOOTS))
}

fn zvm_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zvm"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run zvm")
}

/// `zvm run --restore STATE --mem MEM` must exit 2 with one `zvm: ` line naming `needle`,
/// before any VM runs (nothing on the console).
fn cli_refuses(state: &Path, mem: &Path, needle: &str) {
    let out = zvm_cli(&[
        "run",
        "--restore",
        &state.to_string_lossy(),
        "--mem",
        &mem.to_string_lossy(),
        "--console",
        "stdio",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let what = format!(
        "restore of {} with {}: exit {:?}, stderr:\n{err}",
        state.display(),
        mem.display(),
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(2), "{what}");
    assert_eq!(lines.len(), 1, "one error line: {what}");
    assert!(
        lines[0].starts_with("zvm: ") && lines[0].contains(needle),
        "the line names {needle:?}: {what}"
    );
    assert!(!err.contains("panicked"), "{what}");
    assert!(
        out.stdout.is_empty(),
        "no guest ran: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A copy of `from` with the byte at `offset` inverted.
fn flipped(from: &Path, to: &Path, offset: usize) {
    let mut bytes = std::fs::read(from).expect("read");
    bytes[offset] ^= 0xff;
    std::fs::write(to, bytes).expect("write");
}

fn truncated(from: &Path, to: &Path, len: u64) {
    std::fs::copy(from, to).expect("copy");
    std::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .expect("open")
        .set_len(len)
        .expect("truncate");
}

#[test]
fn a_counting_guest_continues_after_full_and_diff_snapshots_in_new_processes() {
    if let Some(reason) = no_kvm() {
        eprintln!("skipped: {reason}");
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("scratch dir");
    let d = |name: &str| dir.path().join(name);
    let kernel = d("counter.elf");
    std::fs::write(&kernel, tiny_elf(&guest_code())).expect("write the guest");

    // 1. Boot, count, pause, full snapshot; the VM ends with its process.
    let (state1, mem1) = (d("1.state"), d("1.mem"));
    {
        let vm = Zvm::start(dir.path(), "first");
        vm.ok(
            "PUT",
            "/boot-source",
            serde_json::json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0"}),
        );
        vm.ok(
            "PUT",
            "/machine-config",
            serde_json::json!({"vcpu_count": 1, "mem_size_mib": MEM_MIB}),
        );
        // Devices the guest never touches: their state goes through the snapshot all the same.
        let drive = serde_json::json!({"drive_id": "data", "path_on_host": disk(&d("1.disk")),
            "is_root_device": false, "is_read_only": false});
        vm.ok("PUT", "/drives/data", drive);
        vm.ok(
            "PUT",
            "/vsock",
            serde_json::json!({"guest_cid": 3, "uds_path": d("1.vsock")}),
        );
        vm.ok("PUT", "/entropy", serde_json::json!({}));
        vm.ok(
            "PUT",
            "/actions",
            serde_json::json!({"action_type": "InstanceStart"}),
        );
        std::thread::sleep(RUN);
        let body = serde_json::json!({"snapshot_type": "Full", "snapshot_path": state1, "mem_file_path": mem1}).to_string();
        let (status, fault) = vm.call("PUT", "/snapshot/create", &body);
        assert_eq!(
            status,
            400,
            "a running VM cannot be snapshotted: {fault}{}",
            vm.show()
        );
        vm.ok("PATCH", "/vm", serde_json::json!({"state": "Paused"}));
        let body = serde_json::json!({"snapshot_type": "Diff", "snapshot_path": d("nodiff.state"), "mem_file_path": d("nodiff.mem")});
        let (status, fault) = vm.call("PUT", "/snapshot/create", &body.to_string());
        assert_eq!(
            status,
            400,
            "no diff snapshot without dirty-page tracking: {fault}{}",
            vm.show()
        );
        vm.snapshot("Full", &state1, &mem1);
        let console = vm.console();
        assert!(
            console.starts_with("B\n") && console.contains('.'),
            "the guest booted and counted: {}",
            vm.show()
        );
    }
    let (c1, boots) = counter(&mem1);
    assert_eq!(boots, 1, "the entry code ran once");
    assert!(c1 > BASE, "the count is in the memory file: {c1:#x}");
    let meta = std::fs::metadata(&mem1).expect("memory file");
    assert_eq!(
        meta.len(),
        MEM_MIB << 20,
        "the memory file holds all of guest RAM"
    );
    assert!(
        meta.blocks() * 512 < 2 << 20,
        "zero pages are holes: {} bytes allocated",
        meta.blocks() * 512
    );
    eprintln!("first VM: count {} after {RUN:?}", c1 - BASE);

    // 2. Restore in a new process (resumed, tracking writes): the count goes on, the
    // entry code does not run again; a diff snapshot into a copy of the first memory file,
    // then a full one.
    let (state2, diff2, full_state2, full2) = (
        d("2.state"),
        d("2-diff.mem"),
        d("2-full.state"),
        d("2-full.mem"),
    );
    std::fs::copy(&mem1, &diff2).expect("copy the base memory file");
    {
        let vm = Zvm::start(dir.path(), "second");
        let (status, answer) = vm.load(&state1, &mem1, true, &disk(&d("2.disk")), &d("2.vsock"));
        assert_eq!(status, 204, "load: {answer}{}", vm.show());
        assert_eq!(vm.state(), "Running");
        assert!(
            listens(&d("2.vsock")),
            "the vsock device listens on the overridden socket{}",
            vm.show()
        );
        std::thread::sleep(RUN);
        vm.ok("PATCH", "/vm", serde_json::json!({"state": "Paused"}));
        vm.snapshot("Diff", &state2, &diff2);
        vm.snapshot("Full", &full_state2, &full2);
        let console = vm.console();
        assert!(
            console.contains('.') && !console.contains('B'),
            "console continues, no second boot: {}",
            vm.show()
        );
    }
    assert_eq!(
        counter(&mem1),
        (c1, 1),
        "the restored VM never wrote to the snapshot's memory file"
    );
    let (c2, boots) = counter(&diff2);
    assert_eq!(boots, 1, "the entry code did not run again");
    assert!(
        c2 > c1,
        "the count went on from {c1:#x} (registers and memory restored), got {c2:#x}"
    );
    assert_eq!(
        counter(&full2),
        (c2, 1),
        "full and diff snapshots of the same moment agree"
    );
    let (diff_bytes, full_bytes) = (
        std::fs::read(&diff2).expect("diff"),
        std::fs::read(&full2).expect("full"),
    );
    assert_eq!(diff_bytes.len(), full_bytes.len());
    let differing = diff_bytes
        .chunks(4096)
        .zip(full_bytes.chunks(4096))
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differing, 0,
        "base + diff equals the full snapshot page for page"
    );
    eprintln!("second VM: count {} (+{})", c2 - BASE, c2 - c1);

    // 3. Restore the diff (its state + the patched copy) paused, check it stays paused,
    // resume it, and snapshot it again.
    let (state3, mem3) = (d("3.state"), d("3.mem"));
    {
        let vm = Zvm::start(dir.path(), "third");
        let (status, answer) = vm.load(&state2, &diff2, false, &disk(&d("3.disk")), &d("3.vsock"));
        assert_eq!(status, 204, "load of the diff: {answer}{}", vm.show());
        assert!(listens(&d("3.vsock")), "{}", vm.show());
        assert_eq!(
            vm.state(),
            "Paused",
            "restored paused when resume_vm is false"
        );
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            vm.console().is_empty(),
            "a paused VM prints nothing: {}",
            vm.show()
        );
        vm.ok("PATCH", "/vm", serde_json::json!({"state": "Resumed"}));
        std::thread::sleep(RUN);
        vm.ok("PATCH", "/vm", serde_json::json!({"state": "Paused"}));
        vm.snapshot("Full", &state3, &mem3);
        assert!(!vm.console().contains('B'), "{}", vm.show());
    }
    let (c3, boots) = counter(&mem3);
    assert_eq!(boots, 1);
    assert!(
        c3 > c2,
        "the diff-restored VM counted on from {c2:#x}, got {c3:#x}"
    );
    eprintln!(
        "third VM (from the diff): count {} (+{})",
        c3 - BASE,
        c3 - c2
    );

    // 4. The command line: `zvm run --restore` resumes at once, console on stdout.
    let mut run = Command::new(env!("CARGO_BIN_EXE_zvm"))
        .args([
            "run",
            "--restore",
            &full_state2.to_string_lossy(),
            "--mem",
            &full2.to_string_lossy(),
            "--console",
            "stdio",
            "--drive-override",
            &format!("data={}", disk(&d("4.disk")).display()),
            "--vsock-override",
            &d("4.vsock").to_string_lossy(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zvm run --restore");
    let console = shared_reader(run.stdout.take().expect("stdout"));
    let stderr = shared_reader(run.stderr.take().expect("stderr"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !console.lock().expect("console").contains(&b'.') && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let still_running = run.try_wait().expect("wait").is_none();
    let listening = listens(&d("4.vsock"));
    // zvm ran it in the lean executable (zvm/src/vmm_exec.rs), in the same process.
    let exe = std::fs::read_link(format!("/proc/{}/exe", run.id())).unwrap_or_default();
    let _ = run.kill();
    let _ = run.wait();
    let text = String::from_utf8_lossy(&console.lock().expect("console")).into_owned();
    let errors = String::from_utf8_lossy(&stderr.lock().expect("stderr")).into_owned();
    assert!(
        still_running,
        "zvm run --restore kept running: stderr:\n{errors}"
    );
    assert!(
        text.contains('.') && !text.contains('B'),
        "console continues after a CLI restore: {text:?}\n{errors}"
    );
    assert!(
        listening,
        "--vsock-override: the device listens there: {errors}"
    );
    assert!(exe.ends_with("zvm-vmm"), "{} ran it", exe.display());

    // 5. Damaged snapshots are refused, from the command line (exit 2, one line, no VM)
    // and through the API (400; the process has no VM afterwards).
    let state_len = std::fs::metadata(&state1).expect("state").len();
    let (corrupt, short_state, short_mem) = (d("corrupt.state"), d("short.state"), d("short.mem"));
    for offset in [0, state_len as usize / 2, state_len as usize - 1] {
        flipped(&state1, &corrupt, offset);
        cli_refuses(&corrupt, &mem1, "corrupt.state");
    }
    truncated(&state1, &short_state, state_len / 2);
    cli_refuses(&short_state, &mem1, "short.state");
    cli_refuses(&kernel, &mem1, "counter.elf");
    truncated(&mem1, &short_mem, (MEM_MIB << 20) / 2);
    cli_refuses(&state1, &short_mem, "short.mem");
    for (state, mem, needle) in [
        (&corrupt, &mem1, "corrupt.state"),
        (&state1, &short_mem, "short.mem"),
    ] {
        let vm = Zvm::start(dir.path(), "refuses");
        let (status, fault) = vm.load(state, mem, true, &d("1.disk"), &d("refused.vsock"));
        assert_eq!(
            status,
            400,
            "load of {} / {}: {fault}{}",
            state.display(),
            mem.display(),
            vm.show()
        );
        assert!(
            fault.contains("fault_message") && fault.contains(needle),
            "the fault names {needle}: {fault}"
        );
        assert_eq!(
            vm.state(),
            "Not started",
            "no VM after a refused load{}",
            vm.show()
        );
        assert!(vm.console().is_empty(), "{}", vm.show());
    }
    // An override naming a drive the snapshot does not have is refused.
    let vm = Zvm::start(dir.path(), "unknown-drive");
    let mut body = load_body(&state1, &mem1, true, &d("1.disk"), &d("unknown.vsock"));
    body["drive_overrides"][0]["drive_id"] = serde_json::json!("nope");
    let (status, fault) = vm.call("PUT", "/snapshot/load", &body.to_string());
    assert_eq!(status, 400, "{fault}{}", vm.show());
    assert!(fault.contains("nope"), "the fault names the drive: {fault}");
    assert_eq!(vm.state(), "Not started");
    drop(vm);
    eprintln!("snapshot_tiny took {:?}", started.elapsed());
}
