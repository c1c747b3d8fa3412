//! The `zvm` command line for snapshots and templates: refused snapshot files, restore flags
//! and template settings give one clear line and exit 2.

mod common;

use common::cli::{expect_usage_error, stderr, zvm};
use std::process::Command;
/// A state file and a memory file in a temporary directory: `state` as given, memory 1 MiB of zeros.
fn snapshot_files(state: &[u8]) -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().expect("dir");
    let (s, m) = (dir.path().join("vm.state"), dir.path().join("vm.mem"));
    std::fs::write(&s, state).expect("state");
    std::fs::write(&m, vec![0u8; 1 << 20]).expect("mem");
    let path = |p: &std::path::Path| p.to_str().expect("utf8").to_string();
    (dir, path(&s), path(&m))
}

/// The header of a state file whose payload is `len` bytes, followed by `body`.
fn state_header(version: u32, len: u64, body: &[u8]) -> Vec<u8> {
    let mut bytes = vmm::snapshot::file::MAGIC.to_vec();
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

#[test]
fn run_help_mentions_restore() {
    let run_help = String::from_utf8_lossy(&zvm(&["run", "--help"]).stdout).into_owned();
    for flag in [
        "--restore",
        "--mem",
        "--drive-override",
        "--net-override",
        "--vsock-override",
        "--track-dirty-pages",
    ] {
        assert!(run_help.contains(flag), "run --help mentions {flag}");
    }
}

#[test]
fn a_refused_snapshot_is_one_line_and_exit_2() {
    let (_dir, state, mem) =
        snapshot_files(b"this is not a zvm snapshot, only some text of a reasonable length");
    expect_usage_error(
        &[
            "run",
            "--restore",
            &state,
            "--mem",
            &mem,
            "--console",
            "off",
        ],
        "not a zvm snapshot state file",
    );

    let version = vmm::snapshot::file::FORMAT_VERSION;
    let truncated = state_header(version, 4096, &[7u8; 100]);
    let (_dir, state, mem) = snapshot_files(&truncated);
    expect_usage_error(&["run", "--restore", &state, "--mem", &mem], "truncated");
    let (_dir, state, mem) = snapshot_files(&truncated[..12]);
    expect_usage_error(&["run", "--restore", &state, "--mem", &mem], "truncated");

    let mut corrupt = state_header(version, 8, &[1u8; 8]);
    corrupt.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let (_dir, state, mem) = snapshot_files(&corrupt);
    expect_usage_error(&["run", "--restore", &state, "--mem", &mem], "checksum");

    let (_dir, state, mem) = snapshot_files(&state_header(version + 98, 8, &[0u8; 12]));
    expect_usage_error(
        &["run", "--restore", &state, "--mem", &mem],
        &format!("format version {}", version + 98),
    );
}

#[test]
fn missing_snapshot_files_are_refused_before_anything_runs() {
    let (dir, state, _mem) = snapshot_files(b"garbage");
    let missing = dir.path().join("missing.mem");
    let missing = missing.to_str().expect("utf8");
    expect_usage_error(
        &["run", "--restore", &state, "--mem", missing],
        "snapshot memory file",
    );
    expect_usage_error(
        &[
            "run",
            "--restore",
            "/nonexistent/vm.state",
            "--mem",
            missing,
        ],
        "snapshot state file '/nonexistent/vm.state' cannot be read",
    );
    let dir_path = dir.path().to_str().expect("utf8");
    expect_usage_error(
        &["run", "--restore", &state, "--mem", dir_path],
        "is not a regular file",
    );
}

#[test]
fn restore_flags_are_checked() {
    let (_dir, state, mem) = snapshot_files(b"garbage");
    expect_usage_error(
        &[
            "run",
            "--restore",
            &state,
            "--mem",
            &mem,
            "--net-override",
            "eth0",
        ],
        "invalid --net-override 'eth0': expected IFACE=TAP",
    );
    expect_usage_error(
        &[
            "run",
            "--restore",
            &state,
            "--mem",
            &mem,
            "--drive-override",
            "a=/x",
            "--drive-override",
            "a=/y",
        ],
        "'a' is given twice",
    );
    expect_usage_error(
        &[
            "run",
            "--restore",
            &state,
            "--mem",
            &mem,
            "--console",
            "tty",
        ],
        "invalid console",
    );
    // What shapes the VM comes from the snapshot: those flags conflict with --restore.
    for extra in [
        &["--kernel", "/k"][..],
        &["--cpus", "2"],
        &["--memory", "1G"],
        &["--disk", "path=/d"],
        &["--rng"],
        &["--flist", "x.fl"],
    ] {
        let mut args = vec!["run", "--restore", &state, "--mem", &mem];
        args.extend_from_slice(extra);
        let out = zvm(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("cannot be used with"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    for args in [
        &["run", "--restore", state.as_str()][..],
        &["run", "--mem", mem.as_str()],
        &["run", "--kernel", "/k", "--vsock-override", "/v.sock"],
    ] {
        let out = zvm(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--mem") || stderr(&out).contains("--restore"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_config_file_restore_of_a_bad_snapshot_exits_2() {
    let (dir, state, mem) = snapshot_files(b"not a snapshot");
    let config = dir.path().join("vm.json");
    let write = |doc: serde_json::Value| std::fs::write(&config, doc.to_string()).expect("config");
    let config_path = config.to_str().expect("utf8");
    write(
        serde_json::json!({"snapshot-load": {"snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": mem}, "resume_vm": true}}),
    );
    expect_usage_error(
        &["--config-file", config_path, "--no-api"],
        "cannot load the snapshot",
    );
    write(serde_json::json!({"snapshot-load": {"snapshot_path": state, "mem_file_path": mem}}));
    expect_usage_error(
        &["--config-file", config_path, "--no-api"],
        "nothing could resume",
    );
    write(
        serde_json::json!({"snapshot-load": {"snapshot_path": state, "mem_file_path": mem, "resume_vm": true}, "boot-source": {"kernel_image_path": "/k"}}),
    );
    expect_usage_error(
        &["--config-file", config_path, "--no-api"],
        "conflicts with `boot-source`",
    );
}

#[test]
fn template_and_node_template_settings_refuse_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_zvm"))
            .args(args)
            .env("ZVM_TEMPLATE_DIR", dir.path())
            .output()
            .expect("run zvm")
    };
    // An id that would climb out of the template directory is not removed, and says why.
    for bad in ["../x", "a/b", ""] {
        let out = run(&["template", "rm", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert!(
            stderr(&out).contains("is not a template id"),
            "{bad:?}: {}",
            stderr(&out)
        );
    }
    // An empty cache lists nothing but its header.
    let out = run(&["template", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let out = run(&["template", "prepare", "--vcpus", "many"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = run(&[
        "node",
        "serve",
        "--state-dir",
        "/nonexistent",
        "--api-sock",
        "/nonexistent/s",
        "--templates",
        "maybe",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--templates"), "{}", stderr(&out));
}
