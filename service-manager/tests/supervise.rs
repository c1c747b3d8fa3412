//! Runs the real `zvm-init` binary (not as PID 1) on services made of shell commands.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
}

/// Runs zvm-init on `dir` until it exits (at most 30 s); returns its stdout.
fn run(dir: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zvm-init"))
        .arg("--config")
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    (status, out)
}

fn pos(out: &str, needle: &str) -> usize {
    out.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in output:\n{out}"))
}

#[test]
fn services_start_in_order_restart_and_stop_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag");
    let count = dir.path().join("count");
    write(
        dir.path(),
        "storage",
        &format!(
            "exec: sh -c 'sleep 0.2; echo formatted; touch {}'\noneshot: true\n",
            flag.display()
        ),
    );
    write(dir.path(), "node", &format!("exec: sh -c 'echo serving $ZOS_GREETING; exec sleep 100'\ntest: test -e {}\nafter: [storage]\nenv: {{ZOS_GREETING: hi}}\n", flag.display()));
    write(
        dir.path(),
        "flaky",
        &format!(
            "exec: sh -c 'echo x >> {0}; echo run $(wc -l < {0}); exit 1'\nlog: stdout\n",
            count.display()
        ),
    );
    write(
        dir.path(),
        "quiet",
        "exec: sh -c 'echo hidden; exit 0'\noneshot: true\nlog: null\n",
    );
    // The reporter ends the run: SIGTERM to the manager once node is up and flaky restarted.
    write(dir.path(), "report", &format!("exec: sh -c 'while [ $(wc -l < {}) -lt 2 ]; do sleep 0.1; done; echo node ready; kill -TERM $PPID'\noneshot: true\nafter: [node, quiet]\n", count.display()));
    let (code, out) = run(dir.path());
    assert_eq!(code, Some(0), "{out}");
    assert!(pos(&out, "storage: formatted") < pos(&out, "storage done"));
    assert!(pos(&out, "storage done") < pos(&out, "started node"));
    assert!(out.contains("node: serving hi"), "{out}");
    assert!(pos(&out, "node is up (test passed)") < pos(&out, "started report"));
    assert!(
        out.contains("flaky: run 1") && out.contains("flaky: run 2"),
        "{out}"
    );
    assert!(
        out.contains("flaky exited (exit code 1); restarting in 1 s"),
        "{out}"
    );
    assert!(
        !out.contains("hidden"),
        "log: null output reached the console:\n{out}"
    );
    assert!(pos(&out, "report: node ready") < pos(&out, "stopping services"));
    assert!(out.contains("node stopped (signal 15)"), "{out}");
    assert!(out.contains("all services stopped"), "{out}");
}

#[test]
fn bad_configuration_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a", "exec: /bin/true\nafter: [b]\n");
    write(dir.path(), "b", "exec: /bin/true\nafter: [a]\n");
    let (code, out) = run(dir.path());
    assert_eq!(code, Some(1));
    assert!(
        out.contains("configuration error: dependency cycle: a -> b -> a"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a", "exec: /bin/true\nafter: [missing]\n");
    let (code, out) = run(dir.path());
    assert_eq!(code, Some(1));
    assert!(
        out.contains("`after` names missing, which is not defined"),
        "{out}"
    );
}

#[test]
fn a_missing_program_fails_the_oneshot() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "broken",
        "exec: /nonexistent/prog\noneshot: true\n",
    );
    write(
        dir.path(),
        "after-broken",
        "exec: echo never\noneshot: true\nafter: [broken]\n",
    );
    write(
        dir.path(),
        "stop",
        "exec: sh -c 'sleep 0.5; kill -TERM $PPID'\noneshot: true\n",
    );
    let (code, out) = run(dir.path());
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("broken: cannot start /nonexistent/prog"),
        "{out}"
    );
    assert!(!out.contains("never"), "{out}");
}
