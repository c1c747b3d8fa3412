//! The node daemon on the host (issue #8): `zvm node serve` with a temporary state
//! directory deploys an flist that this test packs and serves over HTTP; the workload's
//! output shows in the console tail; the deployment is deleted; a second one survives a
//! `kill -9` of the daemon and is re-adopted (same VM process, not restarted, not
//! duplicated) by the next daemon. One real guest boot; the second VM is only checked as a
//! process.
//!
//! The flist is a container root filesystem (a static busybox as /bin/sh): the daemon's VM
//! process builds its root disk and boots the project's kernel with the OCI guest agent
//! (from guest/build.sh) as PID 1, which runs the entrypoint with its environment, the
//! deployment's name as host name, its data disk (formatted by the node) mounted and its two
//! interfaces on the node's bridge addressed. The daemon, its bridge and taps, its VMs and
//! the flist's HTTP server run in a network namespace the test creates.
//!
//! Both deployments have two interfaces and a data disk: the first makes the template of
//! that shape (one boot) and is restored from it, the second is another clone (issue #13).
//! Each clone's log says it was restored, its agent gave its interfaces their own MACs
//! (never the template's, never its sibling's) and addresses, it fetches a file from the
//! test's server through the bridge, and its data disk has the clone's size and takes
//! writes.
//!
//! Their roots come over virtio-fs (issue #14): the flist unpacked once in the node's cache,
//! each deployment's writes in its own upper layer, cached by the guest as its own files. Each
//! writes to its root and to a volume (a bounded store of the deployment shared over
//! virtio-fs); the host reads hello's writes in the stores of its upper layer and volume;
//! `again`, started while hello runs, does not see hello's write; the cache's tree is never
//! written; deleting hello leaves no mount or virtiofsd behind. The volume is 2 MiB: the guest
//! writes past it, gets ENOSPC and carries on, and the host's file stays within 2 MiB; its root
//! takes the owner and mode of the image's `/shared` (1000:0, 0775).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zvm_integration_tests::api_client::{request, wait_for_socket};
use zvm_integration_tests::{
    busybox_rootfs, guest_init, guest_kernel, pack_flist, zvm_binary, NetNs,
};

/// Serves the files of `root` over HTTP/1.0 (GET and HEAD) on a port of every address of
/// the network namespace it runs in (the test's own: its loopback, and the node's bridge
/// for the guests).
fn serve_dir(root: PathBuf) -> u16 {
    let listener = TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let root = root.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true) || h == "\r\n" {
                        break;
                    }
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
                let file = root.join(path.trim_start_matches('/'));
                let resp = match std::fs::read(&file) {
                    Ok(body) if !path.contains("..") => {
                        let mut r =
                            format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                                .into_bytes();
                        if method == "GET" {
                            r.extend_from_slice(&body);
                        }
                        r
                    }
                    _ => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                };
                let _ = stream.write_all(&resp);
            });
        }
    });
    port
}

struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(state: &Path, sock: &Path, log: &Path) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log");
        let child = Command::new(zvm_binary())
            .args([
                "node",
                "serve",
                "--stop-grace",
                "5",
                "--network",
                "lan=10.77.0.0/24",
                "--state-dir",
            ])
            .arg(state)
            .arg("--api-sock")
            .arg(sock)
            .arg("--kernel")
            .arg(guest_kernel())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start zvm node serve");
        wait_for_socket(sock, Duration::from_secs(60));
        Daemon { child }
    }

    /// Starts the daemon inside `ns`.
    fn start_in(ns: &NetNs, state: &Path, sock: &Path, log: &Path) -> Daemon {
        let (state, sock, log) = (state.to_path_buf(), sock.to_path_buf(), log.to_path_buf());
        ns.spawn(move || Daemon::start(&state, &sock, &log))
            .join()
            .expect("start the daemon in the namespace")
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When the test fails, kills what it started that still runs (the daemon survives a
/// panic, and its VMs outlive it by design): every process whose command line names the
/// test's directory (their virtiofsd and jailed halves die with them).
struct KillLeftoversOnPanic(PathBuf);

impl Drop for KillLeftoversOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let text = self.0.to_string_lossy().into_owned();
        let me = std::process::id().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let pid = e.file_name().to_string_lossy().into_owned();
            if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&text) {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        }
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn proc_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

/// Polls `GET /deployments/{name}` until `done` holds (limit only against hangs).
fn wait_for(
    sock: &Path,
    name: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let (code, body) = request(sock, "GET", &format!("/deployments/{name}"), None);
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {what} never happened; last view: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Checks that deployment `name` was restored from a template (its log says so and that
/// the agent set its network) and what its entrypoint printed in `tail`: its data disk's
/// size (64 MiB) and a write, a file fetched from the gateway; returns its MACs (never the
/// template builds' placeholder ones).
fn check_clone(state: &Path, name: &str, tail: &str) -> String {
    let log = std::fs::read_to_string(state.join("vms").join(name).join("console.log"))
        .unwrap_or_default();
    let show = format!("console tail:\n{tail}\nlog:\n{log}");
    assert!(
        log.contains("VM restored from template"),
        "{name} booted: {show}"
    );
    assert!(!log.contains("booting the kernel"), "{name} booted: {show}");
    // Its root and volume are its own: the guest keeps what it read of the share.
    assert!(
        log.contains("guest cache kept (the VM's own files)"),
        "{show}"
    );
    assert!(
        log.contains("the agent sets the clone's network: eth0 "),
        "{show}"
    );
    assert!(tail.contains("DATA-SECTORS-131072-END"), "{name}: {show}");
    assert!(tail.contains("DATA-WROTE-clone"), "{name}: {show}");
    assert!(
        tail.contains("GATEWAY-SERVED"),
        "{name}: nothing came from the gateway: {show}"
    );
    let macs = tail
        .split("MAC-")
        .nth(1)
        .and_then(|rest| rest.split("-END").next())
        .unwrap_or_else(|| panic!("{name} printed no MACs: {show}"))
        .to_string();
    assert!(
        !macs.contains("02:7a:76:6d:00"),
        "{name} kept the template's MAC: {macs}"
    );
    let (eth0, eth1) = macs.split_once('-').unwrap_or_default();
    assert!(
        eth0.len() == 17 && eth1.len() == 17 && eth0 != eth1,
        "{name}: {macs}"
    );
    eprintln!("{name}: restored from a template; MACs eth0-eth1 {macs}");
    macs
}

#[test]
fn node_daemon_deploys_a_container_flist_and_reconciles_after_a_kill() {
    let kvm_ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !kvm_ok || !root || !Path::new("/bin/busybox").is_file() {
        eprintln!("skipped: needs /dev/kvm (usable: {kvm_ok}), root (taps, owners: {root}) and busybox-static");
        return;
    }
    let tmp = std::env::temp_dir().join(format!("zvm-node-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let _leftovers = KillLeftoversOnPanic(tmp.clone());
    let (rootfs, www, state, sock, log) = (
        tmp.join("rootfs"),
        tmp.join("www"),
        tmp.join("state"),
        tmp.join("node.sock"),
        tmp.join("daemon.log"),
    );
    // guest/build.sh also builds zvm-oci-agent, PID 1 of container flists.
    let guest_dir = guest_init()
        .parent()
        .map(Path::to_path_buf)
        .expect("guest build dir");
    assert!(
        guest_dir.join("zvm-oci-agent").is_file(),
        "guest/build.sh did not build zvm-oci-agent"
    );
    std::fs::create_dir_all(&www).expect("www");
    busybox_rootfs(&rootfs, &[]);
    // The image's directory where the volume goes: a new volume takes its owner and mode.
    let shared = rootfs.join("shared");
    std::fs::create_dir_all(&shared).expect("/shared");
    // (Group 0 writable: the container's root has runc's default capabilities, without
    // CAP_DAC_OVERRIDE.)
    std::os::unix::fs::chown(&shared, Some(1000), Some(0)).expect("chown /shared");
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o775))
        .expect("chmod /shared");
    pack_flist(&rootfs, &www.join("store"), &www.join("tiny.fl"));
    // The daemon (its bridge, taps and VMs) and the flist's HTTP server live in a network
    // namespace of the test's own.
    let ns = NetNs::new("node");
    let port = ns
        .spawn({
            let www = www.clone();
            move || serve_dir(www)
        })
        .join()
        .expect("file server");
    let flist = format!("http://127.0.0.1:{port}/tiny.fl");

    let daemon = Daemon::start_in(&ns, &state, &sock, &log);
    let (code, body) = request(&sock, "GET", "/health", None);
    assert_eq!(
        (code, json(&body)["status"].as_str()),
        (200, Some("ok")),
        "{body}"
    );
    let (code, body) = request(&sock, "GET", "/capacity", None);
    assert_eq!(code, 200);
    assert_eq!(json(&body)["kvm"]["usable"], true, "{body}");

    // Refused with clear errors.
    let deploy = |name: &str, memory: &str, flist: &str| {
        format!(
            r#"{{"name":"{name}","flist":"{flist}","compute":{{"cpu":1,"memory":"{memory}"}},"entrypoint":"/bin/sh -c 'echo NODE-MARKER-$MODE; while true; do sleep 1000; done'","env":{{"MODE":"{name}"}}}}"#
        )
    };
    let (code, body) = request(
        &sock,
        "POST",
        "/deployments",
        Some(&deploy("x", "64M", &flist)),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap_or("")
            .contains("compute.memory: 64 MiB is below the minimum of 256 MiB"),
        "{body}"
    );
    let (code, body) = request(
        &sock,
        "POST",
        "/deployments",
        Some(&deploy(
            "x",
            "256M",
            &format!("http://127.0.0.1:{port}/missing.fl"),
        )),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap_or("")
            .contains("is not reachable"),
        "{body}"
    );
    let (code, body) = request(
        &sock,
        "POST",
        "/deployments",
        Some(&deploy("x", "4T", &flist)),
    );
    assert_eq!(code, 409, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("not enough memory: `x` needs 4194304 MiB"),
        "{body}"
    );

    // Note: on this PVM host guests sometimes stall for minutes right after "NET: Registered
    // PF_NETLINK" (seen with plain `zvm run` too, at 256 and 512 MiB); the limit below is
    // generous for that reason.
    // One real boot: the entrypoint's output reaches the console tail; it runs with the
    // deployment's name as host name, sees its disk mounted, and both its interfaces have
    // their addresses (eth0 from the kernel's ip=, eth1 from the agent).
    let shaped = |name: &str| {
        format!(
            r#"{{"name":"{name}","flist":"{flist}","compute":{{"cpu":1,"memory":"256M"}},"disks":[{{"name":"data","size":"64M","mountpoint":"/data"}}],"volumes":[{{"name":"shared","size":"2M","mountpoint":"/shared"}}],"network":{{"interfaces":[{{"network":"lan"}},{{"network":"lan"}}]}},"entrypoint":"/bin/sh -c 'echo NODE-MARKER-$MODE; test -e /cow-note && echo SAW-COW; echo cow-$MODE > /cow-note; echo VOLMODE-$(stat -c %u-%g-%a /shared)-END; dd if=/dev/zero of=/shared/fill bs=64k count=64 2>&1 | grep -q \"No space left\" && echo VOL-ENOSPC; rm -f /shared/fill; echo vol-$MODE > /shared/note; grep -q \" / virtiofs \" /proc/mounts && echo ROOT-VIRTIOFS; grep -q \" /data ext4 \" /proc/mounts && echo DATA-MOUNTED-$(hostname); busybox ip -4 -o addr; d=$(grep \" /data \" /proc/mounts | cut -d\" \" -f1); echo DATA-SECTORS-$(cat /sys/class/block/${{d#/dev/}}/size)-END; echo clone > /data/f && echo DATA-WROTE-$(cat /data/f); echo MAC-$(cat /sys/class/net/eth0/address)-$(cat /sys/class/net/eth1/address)-END; wget -q -O /dev/null http://10.77.0.1:{port}/tiny.fl && echo GATEWAY-SERVED; echo NET-LISTED; while true; do sleep 1000; done'","env":{{"MODE":"{name}"}}}}"#
        )
    };
    let hello = shaped("hello");
    let (code, body) = request(&sock, "POST", "/deployments", Some(&hello));
    assert_eq!(code, 202, "{body}");
    let v = wait_for(
        &sock,
        "hello",
        Duration::from_secs(900),
        "the marker on the console",
        |v| {
            assert_ne!(v["state"], "failed", "{v:#}");
            v["console_tail"]
                .as_str()
                .unwrap_or("")
                .contains("NODE-MARKER-hello")
        },
    );
    assert_eq!(v["state"], "running", "{v:#}");
    assert_eq!(v["restarts"], 0);
    let v = wait_for(
        &sock,
        "hello",
        // A limit against hangs only: each command of the entrypoint execs from the root
        // over virtio-fs, and a loaded PVM host takes minutes for the lot.
        Duration::from_secs(300),
        "the disk and network checks",
        |v| {
            let tail = v["console_tail"].as_str().unwrap_or("");
            tail.contains("DATA-MOUNTED-hello") && tail.contains("NET-LISTED")
        },
    );
    let tail = v["console_tail"].as_str().unwrap_or("");
    let addresses: Vec<&str> = v["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .map(|a| a["ip"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(addresses, ["10.77.0.2", "10.77.0.3"], "{v:#}");
    for (dev, ip) in [("eth0", "10.77.0.2/24"), ("eth1", "10.77.0.3/24")] {
        assert!(
            tail.lines()
                .any(|l| l.contains(dev) && l.contains(&format!("inet {ip}"))),
            "{dev} lacks {ip}: {tail}"
        );
    }
    let hello_macs = check_clone(&state, "hello", tail);
    // Its root's write is in its own upper layer, its volume's in its store; the cache's
    // tree of the flist is as it was. The volume's root is the image's /shared's; past its
    // 2 MiB the guest got ENOSPC and went on (the lines after it are there).
    assert!(
        tail.contains("ROOT-VIRTIOFS") && !tail.contains("SAW-COW"),
        "{tail}"
    );
    assert!(tail.contains("VOLMODE-1000-0-775-END"), "{tail}");
    assert!(tail.contains("VOL-ENOSPC"), "{tail}");
    let hello_dir = state.join("vms/hello");
    // The stores are mounted in hello's virtiofsd alone: read them as ext4 images once
    // what the kernel holds of them is written out.
    let _ = Command::new("sync").status();
    let read = |image: PathBuf, file: &str| {
        Command::new("debugfs")
            .args(["-R", &format!("cat {file}")])
            .arg(image)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        read(hello_dir.join("work/rootfs/store.ext4"), "/upper/cow-note"),
        "cow-hello\n"
    );
    let volume = hello_dir.join("volumes/shared.ext4");
    assert_eq!(read(volume.clone(), "/note"), "vol-hello\n");
    let allocated =
        std::fs::metadata(&volume).map_or(0, |m| std::os::unix::fs::MetadataExt::blocks(&m) * 512);
    assert!(allocated <= 2 << 20, "the volume takes {allocated} bytes");
    // (The cache also holds the trees' lock and size files.)
    let trees: Vec<PathBuf> = std::fs::read_dir(state.join("cache/trees"))
        .expect("the flist's tree in the node's cache")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(trees.len(), 1, "{trees:?}");
    assert!(trees[0].join("bin").is_dir() && !trees[0].join("cow-note").exists());
    let pid = v["pid"].as_u64().expect("pid");
    assert!(proc_alive(pid));
    // Its VMM runs jailed (issue #16), checked from the host: zvm's limits for 256 MiB.
    let limits = jail::CgroupLimits {
        memory_bytes: 512 << 20,
        pids: 256,
        cpus: 2.0,
    };
    match jail::inspect::wait_for_jailed(&zvm_binary(), Duration::from_secs(10))
        .and_then(|jailed| jail::inspect::check_jailed(jailed, &limits))
    {
        Ok(jailed) => eprintln!(
            "jailed deployment VMM: pid {} (supervisor {pid}), uid {}, root holds {:?}",
            jailed.pid, jailed.uid, jailed.root_entries
        ),
        Err(e) => panic!("the deployment's VMM is not jailed as it should be: {e}"),
    }

    // Deploy again (a second clone of the template), kill the daemon, start it again:
    // re-adopted, not duplicated.
    let (code, body) = request(&sock, "POST", "/deployments", Some(&shaped("again")));
    assert_eq!(code, 202, "{body}");
    let v = wait_for(
        &sock,
        "again",
        Duration::from_secs(300),
        "a running VM process and its checks",
        |v| {
            assert_ne!(v["state"], "failed", "{v:#}");
            v["state"] == "running"
                && v["pid"].is_u64()
                && v["console_tail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("NET-LISTED")
        },
    );
    let again_macs = check_clone(&state, "again", v["console_tail"].as_str().unwrap_or(""));
    assert_ne!(hello_macs, again_macs, "two clones share their MACs");
    // Started while hello runs, of the same flist: none of hello's writes in its root.
    let again_tail = v["console_tail"].as_str().unwrap_or("");
    assert!(
        again_tail.contains("ROOT-VIRTIOFS") && !again_tail.contains("SAW-COW"),
        "{again_tail}"
    );
    let (code, body) = request(&sock, "DELETE", "/deployments/hello", None);
    assert_eq!(code, 200, "{body}");
    assert!(!proc_alive(pid), "VM process {pid} still runs after DELETE");
    assert!(!state.join("vms/hello").exists());
    assert_eq!(request(&sock, "GET", "/deployments/hello", None).0, 404);
    // Nothing of hello stays mounted or running (its overlay and volume were mounted in
    // its virtiofsd's namespace alone).
    let hello_path = hello_dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(!mounts.contains(&hello_path), "{mounts}");
    assert!(!zvm_integration_tests::processes_mentioning(&hello_path));
    let pid = v["pid"].as_u64().expect("pid");
    daemon.kill();
    assert!(proc_alive(pid), "the VM died with the daemon");
    let daemon = Daemon::start_in(&ns, &state, &sock, &log);
    let v = wait_for(
        &sock,
        "again",
        Duration::from_secs(60),
        "re-adoption",
        |v| v["state"] == "running",
    );
    assert_eq!(v["pid"].as_u64(), Some(pid), "not re-adopted: {v:#}");
    assert_eq!(v["restarts"], 0);
    let (_, body) = request(&sock, "GET", "/deployments", None);
    let names: Vec<String> = json(&body)["deployments"]
        .as_array()
        .expect("list")
        .iter()
        .map(|d| d["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["again"]);
    let vms: Vec<_> = std::fs::read_dir(state.join("vms")).expect("vms").collect();
    assert_eq!(vms.len(), 1);
    let (code, _) = request(&sock, "DELETE", "/deployments/again", None);
    assert_eq!(code, 200);
    assert!(!proc_alive(pid));
    daemon.kill();
    let mut daemon_log = String::new();
    let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut daemon_log));
    eprintln!("daemon log:\n{daemon_log}");
    let _ = std::fs::remove_dir_all(&tmp);
}
