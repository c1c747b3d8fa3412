//! The agent as a host process (root, fresh namespaces) over a Unix socket, with a busybox
//! rootfs directory: config.json handling end to end without a VM.

#![allow(clippy::unwrap_used)]

mod common;

use agent_protocol::{Bytes, ContainerStatus, ExitStatus, RequestBody, ResponseBody, INIT_STREAM};
use common::{args, sh, spec, Agent};

macro_rules! require_namespaces {
    () => {
        if !common::can_unshare() {
            return;
        }
    };
}

#[test]
fn stdout_stderr_and_exit_code_arrive() {
    require_namespaces!();
    let mut a = Agent::start();
    let s = spec("exit", |v| sh(v, "echo out; echo err >&2; exit 3"));
    let created = a.create(s, false).unwrap();
    let ResponseBody::Created { pid } = created else {
        panic!("{created:?}")
    };
    assert_eq!(
        a.request(RequestBody::State).unwrap(),
        ResponseBody::State {
            status: ContainerStatus::Created,
            pid: Some(pid),
            exit: None,
            init_pid: Some(pid),
            execs: vec![],
        }
    );
    assert_eq!(a.request(RequestBody::Start).unwrap(), ResponseBody::Done);
    let out = a.wait(INIT_STREAM);
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    assert_eq!(out.status, Some(ExitStatus::exited(3)));
    assert_eq!(
        a.request(RequestBody::State).unwrap(),
        ResponseBody::State {
            status: ContainerStatus::Stopped,
            pid: None,
            exit: Some(ExitStatus::exited(3)),
            init_pid: Some(pid),
            execs: vec![],
        }
    );
    // Start twice is refused.
    assert!(a
        .request(RequestBody::Start)
        .unwrap_err()
        .contains("not created"));
    a.shutdown();
}

#[test]
fn env_cwd_and_user_take_effect() {
    require_namespaces!();
    let mut a = Agent::start();
    let s = spec("user", |v| {
        sh(
            v,
            r#"echo "foo=$FOO"; pwd; id -u; id -g; id -G; echo "tunables=$GLIBC_TUNABLES""#,
        );
        v["process"]["env"] = serde_json::json!(["PATH=/bin", "FOO=bar baz"]);
        v["process"]["cwd"] = "/home/user".into();
        v["process"]["user"] =
            serde_json::json!({"uid": 1000, "gid": 1001, "additionalGids": [10, 20]});
    });
    a.run(s);
    let out = a.wait(INIT_STREAM);
    assert_eq!(out.status, Some(ExitStatus::exited(0)), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "foo=bar baz");
    assert_eq!(lines[1], "/home/user");
    assert_eq!(lines[2], "1000");
    assert_eq!(lines[3], "1001");
    let mut groups: Vec<&str> = lines[4].split_whitespace().collect();
    groups.sort();
    assert_eq!(groups, ["10", "1001", "20"]);
    // The agent's GLIBC_TUNABLES (zvm's PVM workaround) reaches the container.
    assert_eq!(lines[5], "tunables=zvm.test=1");
    a.shutdown();
}

#[test]
fn hostname_and_pid_namespace() {
    require_namespaces!();
    let mut a = Agent::start();
    a.run(spec("uts", |v| {
        v["hostname"] = "box".into();
        sh(v, "hostname; echo pid=$$; ls /proc | grep -c '^[0-9]'");
    }));
    let out = a.wait(INIT_STREAM);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "box", "{out:?}");
    assert_eq!(lines[1], "pid=1");
    // Only the shell and its ls/grep children are visible in the new pid namespace.
    let visible: u32 = lines[2].trim().parse().unwrap();
    assert!(visible <= 3, "{out:?}");
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "box"
    );
    a.shutdown();
}

#[test]
fn readonly_root_tmpfs_and_masked_paths() {
    require_namespaces!();
    let mut a = Agent::start();
    a.run(spec("ro", |v| {
        v["root"]["readonly"] = true.into();
        let mounts = v["mounts"].as_array_mut().unwrap();
        mounts.push(serde_json::json!({"destination": "/data", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}));
        v["linux"]["maskedPaths"] = serde_json::json!(["/etc/secret", "/proc/kcore", "/nonexistent"]);
        sh(
            v,
            "touch /x 2>/dev/null && echo root-writable || echo root-ro; \
             touch /data/ok && echo tmpfs-ok; \
             echo secret=$(cat /etc/secret); \
             touch /proc/sys/x 2>/dev/null || echo procsys-ro",
        );
    }));
    let out = a.wait(INIT_STREAM);
    assert_eq!(
        out.stdout, "root-ro\ntmpfs-ok\nsecret=\nprocsys-ro\n",
        "{out:?}"
    );
    assert!(!a.rootfs.path().join("rootfs/x").exists());
    a.shutdown();
}

#[test]
fn rlimits_no_new_privileges_and_capabilities() {
    require_namespaces!();
    let mut a = Agent::start();
    a.run(spec("limits", |v| {
        v["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]);
        v["process"]["noNewPrivileges"] = true.into();
        // The default spec keeps AUDIT_WRITE, KILL, NET_BIND_SERVICE: bits 29, 5, 10.
        sh(
            v,
            "ulimit -n; ulimit -Hn; grep -E '^(NoNewPrivs|CapEff|CapBnd|CapAmb)' /proc/self/status",
        );
    }));
    let out = a.wait(INIT_STREAM);
    let lines: Vec<String> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines,
        [
            "123",
            "456",
            "CapEff: 0000000020000420",
            "CapBnd: 0000000020000420",
            "CapAmb: 0000000020000420",
            "NoNewPrivs: 1"
        ],
        "{out:?}"
    );
    a.shutdown();
}

#[test]
fn exec_joins_the_container_and_ps_lists_it() {
    require_namespaces!();
    let mut a = Agent::start();
    a.run(spec("exec", |v| {
        v["hostname"] = "inside".into();
        args(v, &["sleep", "1000"]);
    }));
    let exec = serde_json::json!({
        "args": ["sh", "-c", "hostname; echo pid=$$; cat /proc/1/cmdline; echo; id -u; echo $X"],
        "env": ["PATH=/bin", "X=y"], "cwd": "/tmp", "user": {"uid": 7, "gid": 7}
    });
    let started = a
        .request(RequestBody::Exec {
            exec_id: "e1".into(),
            process: Box::new(serde_json::from_value(exec).unwrap()),
        })
        .unwrap();
    assert!(
        matches!(started, ResponseBody::Started { .. }),
        "{started:?}"
    );
    let out = a.wait("e1");
    assert_eq!(out.status, Some(ExitStatus::exited(0)), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "inside");
    assert_ne!(lines[1], "pid=1");
    assert_eq!(
        lines[2].trim_end_matches('\0').replace('\0', " "),
        "sleep 1000"
    );
    assert_eq!(lines[3], "7");
    assert_eq!(lines[4], "y");
    // A second exec whose output we do not wait for, so ps sees two processes.
    let long =
        serde_json::json!({"args": ["sleep", "1000"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    a.request(RequestBody::Exec {
        exec_id: "e2".into(),
        process: Box::new(serde_json::from_value(long).unwrap()),
    })
    .unwrap();
    let ResponseBody::Pids { pids } = a.request(RequestBody::Ps).unwrap() else {
        panic!()
    };
    assert!(pids.len() >= 2, "{pids:?}");
    // Exec ids are unique.
    let dup = serde_json::json!({"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    let err = a
        .request(RequestBody::Exec {
            exec_id: "e1".into(),
            process: Box::new(serde_json::from_value(dup).unwrap()),
        })
        .unwrap_err();
    assert!(err.contains("already used"), "{err}");
    // Killing init (PID 1 of its namespace) ends the container and the exec'd sleep with it.
    a.request(RequestBody::Signal {
        stream: INIT_STREAM.into(),
        signal: libc::SIGKILL,
        all: false,
    })
    .unwrap();
    assert_eq!(
        a.wait(INIT_STREAM).status,
        Some(ExitStatus::signaled(libc::SIGKILL))
    );
    assert_eq!(
        a.wait("e2").status,
        Some(ExitStatus::signaled(libc::SIGKILL))
    );
    a.shutdown();
}

#[test]
fn signal_without_pid_namespace_reports_the_signal() {
    require_namespaces!();
    let mut a = Agent::start();
    a.run(spec("sig", |v| {
        v["linux"]["namespaces"] =
            serde_json::json!([{"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]);
        args(v, &["sleep", "1000"]);
    }));
    a.request(RequestBody::Signal {
        stream: INIT_STREAM.into(),
        signal: libc::SIGTERM,
        all: true,
    })
    .unwrap();
    let out = a.wait(INIT_STREAM);
    assert_eq!(out.status, Some(ExitStatus::signaled(libc::SIGTERM)));
    assert_eq!(out.status.unwrap().shell_code(), 128 + libc::SIGTERM);
    let err = a
        .request(RequestBody::Signal {
            stream: INIT_STREAM.into(),
            signal: 9,
            all: false,
        })
        .unwrap_err();
    assert!(err.contains("stopped"), "{err}");
    a.shutdown();
}

#[test]
fn stdin_is_relayed_and_closed() {
    require_namespaces!();
    let mut a = Agent::start();
    a.run(spec("stdin", |v| args(v, &["cat"])));
    a.request(RequestBody::Stdin {
        stream: INIT_STREAM.into(),
        data: Bytes::from("hello\n"),
    })
    .unwrap();
    a.request(RequestBody::CloseStdin {
        stream: INIT_STREAM.into(),
    })
    .unwrap();
    let out = a.wait(INIT_STREAM);
    assert_eq!(out.stdout, "hello\n");
    assert_eq!(out.status, Some(ExitStatus::exited(0)));
    a.shutdown();
}

#[test]
fn terminal_gives_a_pty_with_size() {
    require_namespaces!();
    let mut a = Agent::start();
    let s = spec("tty", |v| {
        sh(v, "test -t 0 && test -t 1 && echo is-a-tty; test -e /dev/console && echo console; read x; stty size")
    });
    a.create(s, true).unwrap();
    a.request(RequestBody::Start).unwrap();
    a.request(RequestBody::ResizeTerminal {
        stream: INIT_STREAM.into(),
        rows: 50,
        cols: 120,
    })
    .unwrap();
    // A second process with its own pty, sized by process.consoleSize.
    let exec = serde_json::json!({"args": ["stty", "size"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                                  "terminal": true, "consoleSize": {"height": 30, "width": 90}});
    a.request(RequestBody::Exec {
        exec_id: "t".into(),
        process: Box::new(serde_json::from_value(exec).unwrap()),
    })
    .unwrap();
    let out = a.wait("t");
    assert_eq!(out.stdout.replace('\r', ""), "30 90\n", "{out:?}");
    a.request(RequestBody::Stdin {
        stream: INIT_STREAM.into(),
        data: Bytes::from("\n"),
    })
    .unwrap();
    let out = a.wait(INIT_STREAM);
    // The pty echoes the newline we typed whenever it arrives: ignore empty lines.
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines, ["is-a-tty", "console", "50 120"], "{out:?}");
    // Pipes have no terminal to resize.
    let err = a
        .request(RequestBody::ResizeTerminal {
            stream: "nope".into(),
            rows: 1,
            cols: 1,
        })
        .unwrap_err();
    assert!(err.contains("no running process"), "{err}");
    a.shutdown();
}

#[test]
fn bad_specs_give_clear_errors() {
    require_namespaces!();
    let mut a = Agent::start();
    type Change = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|v| v["process"]["args"] = serde_json::json!([])),
            "no args",
        ),
        (
            Box::new(|v| v["process"]["cwd"] = "/does/not/exist".into()),
            "cannot enter cwd \"/does/not/exist\"",
        ),
        (
            Box::new(|v| args(v, &["no-such-program"])),
            "\"no-such-program\" not found in $PATH",
        ),
        (
            Box::new(|v| args(v, &["/etc/secret"])),
            "\"/etc/secret\" not found (or not an executable file)",
        ),
        (
            Box::new(|v| v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}])),
            "mount namespace is required",
        ),
        (
            Box::new(|v| {
                v["mounts"].as_array_mut().unwrap().push(serde_json::json!(
                    {"destination": "/m", "type": "bind", "source": "/no/such/source", "options": ["bind"]}))
            }),
            "does not exist",
        ),
    ];
    for (i, (change, want)) in cases.into_iter().enumerate() {
        let err = a
            .create(spec(&format!("bad{i}"), change), false)
            .unwrap_err();
        assert!(err.contains(want), "case {i}: want {want:?} in {err:?}");
        // Nothing was left behind: the agent has no container.
        assert!(a
            .request(RequestBody::State)
            .unwrap_err()
            .contains("no container"));
    }
    // A well-framed request with garbage inside gets an error response, and the agent goes on.
    let err = a
        .raw_request(77, r#"{"id": 77, "body": "launch_missiles"}"#)
        .unwrap_err();
    assert!(err.starts_with("bad request"), "{err}");
    let rootfs = agent_protocol::Rootfs::Directory {
        path: "/no/such/rootfs".into(),
    };
    let err = a
        .request(RequestBody::Create {
            spec: spec("norootfs", |_| {}),
            rootfs,
            terminal: false,
            share: None,
        })
        .unwrap_err();
    assert!(err.contains("rootfs directory"), "{err}");
    // After all that, a good container still works.
    a.run(spec("good", |v| sh(v, "echo fine")));
    assert_eq!(a.wait(INIT_STREAM).stdout, "fine\n");
    a.shutdown();
}

#[test]
fn seccomp_profile_holds_for_init_and_exec() {
    require_namespaces!();
    let mut a = Agent::start();
    a.run(spec("seccomp", |v| {
        v["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat", "no_such_syscall"],
                          "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
        });
        sh(
            v,
            "mkdir /tmp/d; echo rc=$?; ls -d /tmp/d; echo ready; sleep 1000",
        );
    }));
    // Init has run its mkdir before the exec and the kill (a loaded host is slow).
    a.wait_for_stdout(INIT_STREAM, "ready\n");
    let exec = serde_json::json!({
        "args": ["sh", "-c", "mkdir /tmp/e; echo exec-rc=$?"],
        "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}
    });
    a.request(RequestBody::Exec {
        exec_id: "e1".into(),
        process: Box::new(serde_json::from_value(exec).unwrap()),
    })
    .unwrap();
    let out = a.wait("e1");
    assert!(out.stdout.contains("exec-rc=1"), "{out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    a.request(RequestBody::Signal {
        stream: INIT_STREAM.into(),
        signal: libc::SIGKILL,
        all: false,
    })
    .unwrap();
    let init = a.wait(INIT_STREAM);
    assert!(init.stdout.starts_with("rc=1\n"), "{init:?}");
    assert!(init.stderr.contains("Permission denied"), "{init:?}");
    a.shutdown();
}
