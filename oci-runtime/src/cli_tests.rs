//! Unit tests of the command line: parsing, version text, tables.
use super::*;
use clap::{CommandFactory, Parser};

#[derive(Debug, Parser)]
#[command(name = "zvm-runc", disable_version_flag = true)]
struct TestCli {
    #[command(flatten)]
    args: OciArgs,
}

fn parse(argv: &[&str]) -> OciArgs {
    TestCli::try_parse_from(std::iter::once("zvm-runc").chain(argv.iter().copied()))
        .unwrap()
        .args
}

#[test]
fn runc_style_command_lines_parse() {
    TestCli::command().debug_assert();
    let a = parse(&[
        "--root",
        "/r",
        "--log",
        "/l",
        "--log-format",
        "json",
        "--systemd-cgroup",
        "create",
        "--bundle",
        "/b",
        "--pid-file",
        "/p",
        "c1",
    ]);
    assert_eq!(
        (a.root.as_path(), a.log.as_deref(), a.log_format),
        (Path::new("/r"), Some(Path::new("/l")), LogFormat::Json)
    );
    let Some(OciCommand::Create(c)) = a.command else {
        panic!()
    };
    assert_eq!(
        (c.bundle.as_deref(), c.pid_file.as_deref(), c.id.as_str()),
        (Some(Path::new("/b")), Some(Path::new("/p")), "c1")
    );
    let a = parse(&["kill", "--all", "c1", "KILL"]);
    assert!(
        matches!(a.command, Some(OciCommand::Kill { all: true, ref signal, .. }) if signal == "KILL")
    );
    assert_eq!(a.root, Path::new(DEFAULT_ROOT));
    let a = parse(&["kill", "c1"]);
    assert!(matches!(a.command, Some(OciCommand::Kill { ref signal, .. }) if signal == "SIGTERM"));
    let a = parse(&["exec", "-e", "A=1", "--cwd", "/tmp", "c1", "ls", "-l", "/"]);
    let Some(OciCommand::Exec(e)) = a.command else {
        panic!()
    };
    assert_eq!(e.command, vec!["ls", "-l", "/"]);
    assert_eq!(e.env, vec!["A=1"]);
    let a = parse(&["run", "-d", "-b", "/b", "r1"]);
    assert!(matches!(
        a.command,
        Some(OciCommand::Run(RunArgs { detach: true, .. }))
    ));
    assert!(matches!(
        parse(&["delete", "-f", "x"]).command,
        Some(OciCommand::Delete { force: true, .. })
    ));
    assert!(matches!(
        parse(&["list", "-q"]).command,
        Some(OciCommand::List { quiet: true, .. })
    ));
    assert!(matches!(
        parse(&["ps", "--format", "json", "x"]).command,
        Some(OciCommand::Ps {
            format: Format::Json,
            ..
        })
    ));
    assert!(parse(&["--version"]).version);
    assert!(TestCli::try_parse_from(["zvm-runc", "--log-format", "xml", "list"]).is_err());
}

#[test]
fn version_has_three_lines() {
    let text = version_text("zvm-runc");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0],
        format!("zvm-runc version {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(lines[1].starts_with("commit: ") && lines[1].len() > 8);
    assert!(lines[2].starts_with("spec: 1."));
}

#[test]
fn users_parse() {
    assert_eq!(parse_user("1000").unwrap(), (1000, 0));
    assert_eq!(parse_user("1:2").unwrap(), (1, 2));
    assert!(parse_user("root").is_err());
}

#[test]
fn list_table_aligns_columns() {
    let v = StateView {
        oci_version: "1.1.0".into(),
        id: "c1".into(),
        pid: 42,
        status: crate::state::ContainerState::Running,
        bundle: "/b".into(),
        rootfs: "/b/rootfs".into(),
        created: "2026-01-01T00:00:00.000000000Z".into(),
        owner: "root".into(),
        annotations: Default::default(),
    };
    let t = list_table(&[v]);
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[0].starts_with("ID          PID         STATUS      BUNDLE"),
        "{t}"
    );
    assert!(
        lines[1].starts_with("c1          42          running     /b"),
        "{t}"
    );
    assert_eq!(lines[0].find("CREATED"), lines[1].find("2026"));
}

#[test]
fn podmans_checkpoint_and_restore_command_lines_parse() {
    // podman 4.3 passes --leave-running twice; runc takes it once.
    let a = parse(&[
        "checkpoint",
        "--image-path",
        "/b/checkpoint",
        "--work-path",
        "/b",
        "--leave-running",
        "--tcp-established",
        "--file-locks",
        "--leave-running",
        "c1",
    ]);
    let Some(OciCommand::Checkpoint(c)) = a.command else {
        panic!("not a checkpoint");
    };
    assert!(c.leave_running && c.criu.tcp_established && c.criu.file_locks);
    assert_eq!(c.image_path, Path::new("/b/checkpoint"));
    let a = parse(&[
        "--log-format=json",
        "--log",
        "/r/oci-log",
        "restore",
        "--bundle",
        "/b",
        "--pid-file",
        "/r/pidfile",
        "--detach",
        "--image-path",
        "/b/checkpoint",
        "--work-path",
        "/b",
        "--tcp-established",
        "c1",
    ]);
    let Some(OciCommand::Restore(r)) = a.command else {
        panic!("not a restore");
    };
    assert!(r.detach && r.criu.tcp_established);
    assert_eq!(r.bundle.as_deref(), Some(Path::new("/b")));
    assert_eq!(r.id, "c1");
    for verb in ["pause", "resume"] {
        assert!(matches!(
            parse(&[verb, "c1"]).command,
            Some(OciCommand::Pause { .. } | OciCommand::Resume { .. })
        ));
    }
}

#[test]
fn conmons_and_the_containerd_shims_command_lines_parse() {
    // conmon 2.1 (podman 4.3): create with a console socket for -t, exec of a process file.
    let a = parse(&[
        "create",
        "--bundle",
        "/b/userdata",
        "--pid-file",
        "/r/pidfile",
        "--console-socket",
        "/tmp/conmon-term.X",
        "c1",
    ]);
    let Some(OciCommand::Create(c)) = a.command else {
        panic!("not a create");
    };
    assert_eq!(
        c.console_socket.as_deref(),
        Some(Path::new("/tmp/conmon-term.X"))
    );
    let a = parse(&[
        "exec",
        "--pid-file",
        "/b/exec_pid",
        "--process",
        "/b/exec-process-1",
        "--detach",
        "--tty",
        "--console-socket",
        "/tmp/conmon-term.Y",
        "c1",
    ]);
    let Some(OciCommand::Exec(e)) = a.command else {
        panic!("not an exec");
    };
    assert!(e.detach && e.tty && e.command.is_empty());
    assert_eq!(e.process.as_deref(), Some(Path::new("/b/exec-process-1")));
    // containerd 1.6's runc v2 shim (go-runc): global --root/--log/--log-format json, and
    // --systemd-cgroup when its options say SystemdCgroup.
    let a = parse(&[
        "--root",
        "/run/containerd/runc/default",
        "--log",
        "/b/log.json",
        "--log-format",
        "json",
        "--systemd-cgroup",
        "create",
        "--bundle",
        "/b",
        "--pid-file",
        "/b/init.pid",
        "--no-pivot",
        "c1",
    ]);
    assert!(a.systemd_cgroup && a.log_format == LogFormat::Json);
    assert!(matches!(
        a.command,
        Some(OciCommand::Create(CreateArgs { no_pivot: true, .. }))
    ));
    let a = parse(&[
        "exec",
        "--detach",
        "--pid-file",
        "/b/e1.pid",
        "--process",
        "/tmp/runc-process1",
        "c1",
    ]);
    assert!(matches!(
        a.command,
        Some(OciCommand::Exec(ExecArgs { detach: true, .. }))
    ));
    for argv in [
        &["ps", "--format", "json", "c1"][..],
        &["kill", "--all", "c1", "9"],
        &["kill", "c1", "15"],
        &["delete", "--force", "c1"],
        &["state", "c1"],
        &["start", "c1"],
    ] {
        assert!(
            TestCli::try_parse_from(std::iter::once("zvm-runc").chain(argv.iter().copied()))
                .is_ok(),
            "{argv:?}"
        );
    }
}
