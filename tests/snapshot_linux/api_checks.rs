//! The API and command-line half of the snapshot test: a started VM's API, the base VM's
//! power-off and metrics, and restores the command line refuses.

use super::ANSWER_LIMIT;
use std::path::Path;
use std::process::Command;
use zvm_integration_tests::{zvm_binary, LiveZvm};

/// A started VM's API: the process is the lean VMM, running; no reconfiguration, one start.
pub fn check_started(base: &LiveZvm, boot: &serde_json::Value) {
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
pub fn power_off_through_the_api(base: &mut LiveZvm) {
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
pub fn check_metrics(path: &Path) {
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
pub fn cli_refuses(state: &Path, mem: &Path, needle: &str) {
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
