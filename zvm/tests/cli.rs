//! The `zvm` command line: help, doctor, and bad input giving one clear line and exit 2.

use std::process::{Command, Output};

fn zvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zvm"))
        .args(args)
        .output()
        .expect("run zvm")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts exit code 2 and a single `zvm: ...` error line containing `needle`.
fn expect_usage_error(args: &[&str], needle: &str) {
    let out = zvm(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "args {args:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line for {args:?}, got:\n{err}");
    assert!(
        lines[0].starts_with("zvm: ") && lines[0].contains(needle),
        "args {args:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn kernel_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(f.path(), bytes).expect("write");
    f
}

#[test]
fn help_explains_the_commands() {
    let out = zvm(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "doctor", "kernel", "initramfs", "flist"] {
        assert!(text.contains(word), "help mentions {word}: {text}");
    }
    let run_help = String::from_utf8_lossy(&zvm(&["run", "--help"]).stdout).into_owned();
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--cpus",
        "--memory",
        "--console",
        "--console-timestamps",
        "--seccomp",
    ] {
        assert!(run_help.contains(flag), "run --help mentions {flag}");
    }
}

#[test]
fn doctor_reports_the_kvm_flavour() {
    let out = zvm(&["doctor"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "kvm flavour",
        "KVM_CAP_IRQCHIP",
        "stock guest userspace",
        "default cpu template",
    ] {
        assert!(text.contains(key), "doctor reports {key}:\n{text}");
    }
}

#[test]
fn missing_kernel_is_one_line_and_exit_2() {
    expect_usage_error(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        "kernel '/nonexistent/vmlinux' cannot be read",
    );
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused() {
    let f = kernel_file(&[0x5a; 8192]);
    let path = f.path().to_str().expect("utf8");
    expect_usage_error(
        &["run", "--kernel", path, "--console", "off"],
        "is not a kernel",
    );
}

#[test]
fn bad_machine_settings_are_refused() {
    let f = kernel_file(b"\x7fELF not really");
    let k = f.path().to_str().expect("utf8");
    expect_usage_error(&["run", "--kernel", k, "--cpus", "0"], "at least one vCPU");
    expect_usage_error(&["run", "--kernel", k, "--cpus", "300"], "at most 32 vCPUs");
    expect_usage_error(&["run", "--kernel", k, "--memory", "8M"], "too small");
    expect_usage_error(
        &["run", "--kernel", k, "--memory", "100000G"],
        "more than this host",
    );
    expect_usage_error(
        &["run", "--kernel", k, "--memory", "lots"],
        "invalid memory size",
    );
    expect_usage_error(
        &["run", "--kernel", k, "--console", "tty"],
        "invalid console",
    );
    expect_usage_error(
        &["run", "--kernel", k, "--cpu-template", "t2"],
        "invalid CPU template",
    );
    expect_usage_error(
        &["run", "--kernel", k, "--initrd", "/nonexistent/initrd"],
        "initrd '/nonexistent/initrd'",
    );
}

#[test]
fn unknown_flags_exit_2() {
    let out = zvm(&["run", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn initramfs_packs_a_directory() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("init"), b"#!/bin/sh\n").expect("write");
    let out_path = dir.path().join("out.cpio.gz");
    let out = zvm(&[
        "initramfs",
        dir.path().to_str().expect("utf8"),
        "-o",
        out_path.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(&out_path).expect("archive");
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip");
    expect_usage_error(
        &["initramfs", "/nonexistent/dir", "-o", "/tmp/x.cpio.gz"],
        "cannot read '/nonexistent/dir'",
    );
}

#[test]
fn flist_commands_are_reachable_and_refuse_bad_input() {
    let out = zvm(&["flist", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["pack", "inspect", "unpack", "image"] {
        assert!(text.contains(sub), "flist help mentions {sub}: {text}");
    }
    let bogus = kernel_file(b"SQLite format 3\0 but cut short");
    let out = zvm(&["flist", "inspect", bogus.path().to_str().expect("utf8")]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.starts_with("zvm: ") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn a_host_name_the_guest_cannot_take_is_refused_before_anything_runs() {
    let long = "h".repeat(65);
    for (name, needle) in [
        ("bad name", "contains ' '"),
        ("-x", "must not start"),
        (long.as_str(), "longer than 64"),
    ] {
        let out = zvm(&[
            "run",
            "--flist",
            "/nonexistent.fl",
            &format!("--hostname={name}"),
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains("--hostname") && err.contains(needle),
            "{name}: {err}"
        );
        assert!(
            !err.contains("/nonexistent.fl"),
            "refused before the flist is looked at: {err}"
        );
    }
}

#[test]
fn kernel_path_prints_the_cached_vmlinux_last() {
    // Builds the guest kernel on first use (scripts/test.sh builds it before the tests).
    let out = zvm(&["kernel", "path"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a path");
    assert!(last.ends_with("/vmlinux"), "{stdout}");
    let head = std::fs::read(last).expect("vmlinux exists");
    assert_eq!(&head[..4], b"\x7fELF");
}

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

#[test]
fn output_goes_to_a_capped_file() {
    let dir = tempfile::tempdir().expect("dir");
    let out_file = dir.path().join("vm.log");
    let path = out_file.to_str().expect("utf8");
    let out = zvm(&[
        "run",
        "--kernel",
        "/nonexistent/vmlinux",
        "--output",
        path,
        "--output-max",
        "4K",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let written = std::fs::read_to_string(&out_file).expect("the output file");
    assert!(
        written.contains("kernel '/nonexistent/vmlinux' cannot be read"),
        "{written}"
    );
    for (args, needle) in [
        (
            &[
                "run",
                "--kernel",
                "/k",
                "--output",
                path,
                "--output-max",
                "100",
            ][..],
            "less than 4 KiB",
        ),
        (
            &["run", "--kernel", "/k", "--output-max", "1M"][..],
            "--output",
        ),
    ] {
        let out = zvm(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    }
}

#[test]
fn a_malformed_shutdown_timeout_is_refused() {
    for bad in ["-1", "soon", "1.5"] {
        let arg = format!("--shutdown-timeout={bad}");
        let out = zvm(&["run", "--kernel", "/k", &arg]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = stderr(&out);
        assert!(err.contains("--shutdown-timeout"), "{bad}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn bad_fs_shares_are_one_line_and_exit_2() {
    let f = kernel_file(b"\x7fELF not really");
    let k = f.path().to_str().expect("utf8");
    expect_usage_error(
        &["run", "--kernel", k, "--fs", "tag=data"],
        "path=DIR is required",
    );
    expect_usage_error(
        &[
            "run",
            "--kernel",
            k,
            "--fs",
            "tag=data,path=/nonexistent/zvm-share",
        ],
        "is not a directory",
    );
    let dir = tempfile::tempdir().expect("dir");
    let share = format!("tag=data,path={}", dir.path().display());
    expect_usage_error(
        &["run", "--kernel", k, "--fs", &share, "--fs", &share],
        "another share has the tag 'data'",
    );
    expect_usage_error(
        &[
            "run",
            "--kernel",
            k,
            "--fs",
            &share,
            "--virtiofsd",
            "/nonexistent/virtiofsd",
        ],
        "install-virtiofsd.sh",
    );
}

#[test]
fn malformed_jail_flags_are_refused_before_anything_runs() {
    for (args, needle) in [
        (
            &["run", "--kernel", "/nonexistent", "--jail", "maybe"][..],
            "invalid value 'maybe'",
        ),
        (
            &["run", "--kernel", "/nonexistent", "--jail-ids", "0:5"][..],
            "must start above 0",
        ),
        (
            &["run", "--kernel", "/nonexistent", "--jail-ids", "900000"][..],
            "expected FIRST:COUNT",
        ),
        (
            &[
                "--api-sock",
                "/x.sock",
                "--jail-root",
                "/tmp",
                "--jail-cpus",
                "many",
            ][..],
            "invalid value 'many'",
        ),
    ] {
        let out = zvm(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "args {args:?}: {err}");
        assert!(err.contains(needle), "args {args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn malformed_pit_root_volume_and_xattr_values_are_refused() {
    let f = kernel_file(b"\x7fELF not really");
    let k = f.path().to_str().expect("utf8");
    let dir = tempfile::tempdir().expect("dir");
    let share = format!("tag=data,path={},xattr=maybe", dir.path().display());
    for (args, needle) in [
        (
            &["run", "--kernel", k, "--pit", "maybe"][..],
            "invalid value 'maybe'",
        ),
        (
            &["run", "--kernel", k, "--root-fs", "zfs"][..],
            "use virtiofs or ext4",
        ),
        (
            &["run", "--flist", "/nonexistent.fl", "--volume", "relative"][..],
            "expected HOST_DIR:CONTAINER_PATH[:ro]",
        ),
        (
            &["run", "--flist", "/nonexistent.fl", "--volume", "/tmp:rel"][..],
            "both paths must be absolute",
        ),
        (
            &["run", "--kernel", k, "--fs", &share][..],
            "xattr must be on or off, not 'maybe'",
        ),
    ] {
        let out = zvm(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "args {args:?}: {err}");
        assert!(err.contains(needle), "args {args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn initramfs_uncompressed_is_a_plain_newc_archive() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("init"), b"#!/bin/sh\n").expect("write");
    let out_path = dir.path().with_extension("cpio");
    let out = zvm(&[
        "initramfs",
        "--uncompressed",
        dir.path().to_str().expect("utf8"),
        "-o",
        out_path.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(&out_path).expect("archive");
    let _ = std::fs::remove_file(&out_path);
    assert_eq!(&bytes[..6], b"070701", "newc magic, not gzip");
}
