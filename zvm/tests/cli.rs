//! The `zvm` command line: help, doctor, and bad input giving one clear line and exit 2.

mod common;

use common::cli::{expect_usage_error, kernel_file, stderr, zvm};

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
fn malformed_pit_irqchip_root_volume_and_xattr_values_are_refused() {
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
            &["run", "--kernel", k, "--irqchip", "pic"][..],
            "invalid value 'pic'",
        ),
        (
            &["run", "--kernel", k, "--pit", "on", "--irqchip", "split"][..],
            "a split irqchip cannot have a PIT: KVM's PIT needs",
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
        (
            &["run", "--flist", "/nonexistent.fl", "--root-size", "abc"][..],
            "invalid value 'abc' for '--root-size",
        ),
        (
            &["node", "serve", "--tree-cache-size", "nope"][..],
            "ZVM_TREE_CACHE_SIZE=`nope` is not a size",
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
