//! A jailed process as the host sees it, read from `/proc` and the cgroup file system:
//! what tests and operators check while its guest runs.

use crate::CgroupLimits;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the host sees of a jailed VMM.
#[derive(Debug)]
pub struct JailedVmm {
    /// Its pid on the host.
    pub pid: u32,
    /// Its uid (and gid).
    pub uid: u32,
    /// The entries of its root directory.
    pub root_entries: Vec<String>,
    /// Whether it has a network namespace of its own.
    pub own_network: bool,
}

/// Finds the jailed half of the supervisor `parent` once it has dropped root, waiting up
/// to `limit`.
pub fn wait_for_jailed_child(parent: u32, limit: Duration) -> Result<u32, String> {
    wait_for_process(limit, &format!("jailed child of {parent}"), |_, status| {
        first_number(status, "PPid") == Some(parent)
    })
}

/// Finds the jailed half of a `binary` process (a process running `binary` that is PID 1
/// of a PID namespace of its own) once it has dropped root, waiting up to `limit`.
pub fn wait_for_jailed(binary: &Path, limit: Duration) -> Result<u32, String> {
    let binary = binary
        .canonicalize()
        .unwrap_or_else(|_| binary.to_path_buf());
    let what = format!("jailed {} process", binary.display());
    wait_for_process(limit, &what, |pid, status| {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let nspid = field(status, "NSpid").unwrap_or_default();
        exe == binary && nspid.split_whitespace().nth(1) == Some("1")
    })
}

/// The first process not running as root for which `matches(pid, its status text)`,
/// waiting up to `limit`.
fn wait_for_process(
    limit: Duration,
    what: &str,
    matches: impl Fn(u32, &str) -> bool,
) -> Result<u32, String> {
    let deadline = Instant::now() + limit;
    loop {
        for entry in std::fs::read_dir("/proc")
            .map_err(|e| e.to_string())?
            .flatten()
        {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if first_number(&status, "Uid").unwrap_or(0) != 0 && matches(pid, &status) {
                return Ok(pid);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no {what} after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks the jailed VMM `pid` from outside: not root, no capabilities, no_new_privs, its
/// own PID, mount, UTS and IPC namespaces (and says whether its network is its own), a root holding no host directory, and
/// a cgroup with `limits` (a cpu quota of any size).
pub fn check_jailed(pid: u32, limits: &CgroupLimits) -> Result<JailedVmm, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    for key in ["Uid", "Gid"] {
        let ids = field(&status, key).unwrap_or_default();
        if ids.split_whitespace().any(|id| id == "0") {
            return Err(format!("{key}: {ids} (root)"));
        }
    }
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let caps = field(&status, key).unwrap_or_default();
        if u64::from_str_radix(caps.trim(), 16) != Ok(0) {
            return Err(format!("{key}: {caps}"));
        }
    }
    if field(&status, "NoNewPrivs").as_deref() != Some("1") {
        return Err("no_new_privs is not set".into());
    }
    let shares = |ns: &str| -> Result<bool, String> {
        let theirs =
            std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).map_err(|e| e.to_string())?;
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).map_err(|e| e.to_string())?;
        Ok(theirs == ours)
    };
    for ns in ["pid", "mnt", "uts", "ipc"] {
        if shares(ns)? {
            return Err(format!("it shares the host's {ns} namespace"));
        }
    }
    let own_network = !shares("net")?;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut root_entries: Vec<String> = std::fs::read_dir(&root)
        .map_err(|e| format!("{}: {e}", root.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    root_entries.sort();
    for host in [
        "etc",
        "usr",
        "bin",
        "sys",
        "home",
        "var",
        "proc/sys",
        "proc/cpuinfo",
    ] {
        if root.join(host).exists() {
            return Err(format!(
                "its root holds the host's /{host}: {root_entries:?}"
            ));
        }
    }
    if !root.join("dev/urandom").exists() || !root.join("dev/null").exists() {
        return Err("its /dev lacks null or urandom".into());
    }
    let uid = first_number(&status, "Uid").unwrap_or(0);
    check_cgroup(pid, uid, limits)?;
    Ok(JailedVmm {
        pid,
        uid,
        root_entries,
        own_network,
    })
}

/// The jailed process's cgroups are `.../zvm/zvm-UID` with `limits`.
fn check_cgroup(pid: u32, uid: u32, limits: &CgroupLimits) -> Result<(), String> {
    let groups =
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| e.to_string())?;
    let path_of = |controller: &str| {
        groups.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            list.split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
    };
    let v1 = Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists();
    let suffix = format!("/zvm/zvm-{uid}");
    let read = |controller: &str, file: &str| -> Result<String, String> {
        let (base, path) = if v1 {
            let path = path_of(controller).ok_or(format!("no {controller} cgroup"))?;
            (format!("/sys/fs/cgroup/{controller}"), path)
        } else {
            (
                "/sys/fs/cgroup".to_string(),
                path_of("").unwrap_or_default(),
            )
        };
        if !path.ends_with(&suffix) {
            return Err(format!("{controller} cgroup is {path}, not …{suffix}"));
        }
        let file = format!("{base}{path}/{file}");
        std::fs::read_to_string(&file)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("{file}: {e}"))
    };
    let want_memory = limits.memory_bytes.to_string();
    let want_pids = limits.pids.to_string();
    let (memory, pids, cpu) = if v1 {
        (
            read("memory", "memory.limit_in_bytes")?,
            read("pids", "pids.max")?,
            read("cpu", "cpu.cfs_quota_us")?,
        )
    } else {
        (
            read("memory", "memory.max")?,
            read("pids", "pids.max")?,
            read("cpu", "cpu.max")?,
        )
    };
    let no_cpu_limit = cpu.starts_with("-1") || cpu.starts_with("max");
    if memory != want_memory || pids != want_pids || no_cpu_limit {
        return Err(format!(
            "cgroup limits: memory {memory} (want {want_memory}), pids {pids} (want \
             {want_pids}), cpu {cpu}"
        ));
    }
    Ok(())
}

fn field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

fn first_number(status: &str, key: &str) -> Option<u32> {
    field(status, key)?.split_whitespace().next()?.parse().ok()
}
