//! `zvm run --metrics FILE` with a tiny hand-assembled guest: a line on SIGUSR1 and one
//! when the VM ends, each with KVM's own vCPU counters; a file that cannot be opened is
//! an error and the VM does not keep running.

mod common;

use common::{guest_code, no_kvm, shared_reader, tiny_elf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_lines_come_on_sigusr1_and_at_the_end_with_kvm_counters() {
    if let Some(why) = no_kvm() {
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let kernel = dir.path().join("tiny.elf");
    std::fs::write(&kernel, tiny_elf(&guest_code())).expect("kernel");
    let metrics = dir.path().join("metrics.json");
    let mut zvm = Command::new(env!("CARGO_BIN_EXE_zvm"))
        .args(["run", "--kernel"])
        .arg(&kernel)
        .args(["--memory", "32M", "--console", "stdio", "--metrics"])
        .arg(&metrics)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zvm run");
    let console = shared_reader(zvm.stdout.take().expect("stdout"));
    let stderr = shared_reader(zvm.stderr.take().expect("stderr"));
    wait_for("the guest's first dot", || {
        console.lock().expect("console").contains(&b'.')
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(zvm.id() as libc::pid_t, libc::SIGUSR1) };
    wait_for("a metrics line", || lines(&metrics).len() == 1);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(zvm.id() as libc::pid_t, libc::SIGTERM) };
    let status = zvm.wait().expect("wait");
    let errors = String::from_utf8_lossy(&stderr.lock().expect("stderr")).into_owned();
    let all = lines(&metrics);
    assert_eq!(
        all.len(),
        2,
        "SIGUSR1's line and the last one: {all:?}\n{errors}"
    );
    assert!(!errors.contains("panicked"), "{errors} ({status})");
    let exits = |l: &serde_json::Value| l["kvm"]["exits"].as_u64();
    if all[0]["kvm"].as_object().is_some_and(|m| m.is_empty()) {
        println!("KVM's counters not checked: this kernel has no KVM_GET_STATS_FD");
    } else {
        let (first, last) = (exits(&all[0]), exits(&all[1]));
        assert!(first.is_some_and(|n| n > 0), "{all:?}");
        assert!(last >= first, "totals only grow: {all:?}");
        assert!(all[1]["vcpu"]["exit_io_out"].as_u64().is_some(), "{all:?}");
    }

    // A metrics file that cannot be opened: a clear error, and the VM is stopped.
    let out = Command::new(env!("CARGO_BIN_EXE_zvm"))
        .args(["run", "--kernel"])
        .arg(&kernel)
        .args(["--memory", "32M", "--console", "off", "--metrics"])
        .arg(dir.path().join("missing/metrics.json"))
        .stdin(Stdio::null())
        .output()
        .expect("run zvm");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open metrics file"), "{err}");
}
