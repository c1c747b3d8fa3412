//! The jail's cgroup: cpu, memory and pids limits, on cgroup v2 where the host runs the
//! unified hierarchy alone, on v1 (one hierarchy per controller) otherwise.
//!
//! v1: the jail's group is made below the supervisor's own group of each controller, in
//! `zvm/`, so a VM never leaves the limits its starter runs under. v2: below `/zvm` at the
//! top of the hierarchy (a v2 group with processes cannot hand controllers to children).

use crate::JailError;
use std::path::{Path, PathBuf};

/// The limits of one jail's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupLimits {
    /// Memory in bytes: guest RAM and the VMM's own.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
    /// CPU time as a number of CPUs (1.5 = one and a half CPUs' time per period).
    pub cpus: f64,
}

impl CgroupLimits {
    /// Memory a VMM's jail allows beyond guest RAM: the VMM's own (vsock buffers, queues,
    /// the page cache of its files).
    pub const VMM_MEMORY_BYTES: u64 = 256 << 20;
    /// Threads and processes of a jailed VMM.
    pub const VMM_PIDS: u64 = 256;

    /// The limits of a VMM whose guest has `guest_memory_bytes` of RAM, given `cpus` of
    /// CPU time: RAM plus [`CgroupLimits::VMM_MEMORY_BYTES`], [`CgroupLimits::VMM_PIDS`].
    pub fn for_vmm(guest_memory_bytes: u64, cpus: f64) -> CgroupLimits {
        CgroupLimits {
            memory_bytes: guest_memory_bytes + Self::VMM_MEMORY_BYTES,
            pids: Self::VMM_PIDS,
            cpus,
        }
    }
}

/// The period CPU quotas are expressed in (100 ms).
const CPU_PERIOD_US: u64 = 100_000;
/// The controllers a jail needs.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Which cgroup hierarchy the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2 alone, mounted at the root given.
    Unified(PathBuf),
    /// cgroup v1 controllers under the root given (`ROOT/cpu`, `ROOT/memory`, ...).
    PerController(PathBuf),
}

impl Hierarchy {
    /// The host's, seen under `/sys/fs/cgroup`.
    pub fn detect() -> Result<Hierarchy, JailError> {
        Self::detect_under(Path::new("/sys/fs/cgroup"))
    }

    fn detect_under(root: &Path) -> Result<Hierarchy, JailError> {
        if root.join("cgroup.controllers").exists() {
            return Ok(Hierarchy::Unified(root.to_path_buf()));
        }
        let missing: Vec<&str> = CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !root.join(c).join("cgroup.procs").exists())
            .collect();
        if missing.is_empty() {
            Ok(Hierarchy::PerController(root.to_path_buf()))
        } else {
            Err(JailError::Unavailable(format!(
                "no cgroup v2 at {root} and no cgroup v1 controller {missing} under it: \
                 the jail limits cpu, memory and pids through them",
                root = root.display(),
                missing = missing.join(", ")
            )))
        }
    }
}

/// A jail's cgroup: one directory per v1 controller, or one v2 directory.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    /// cgroup v1: a single-threaded process joins by itself (see [`Cgroup::join`]).
    per_controller: bool,
}

impl Cgroup {
    /// Makes the group `name` with `limits` (an old group of that name, left by a jail
    /// that died, is replaced). `own` is `/proc/self/cgroup`'s text.
    pub fn create(
        hierarchy: &Hierarchy,
        own: &str,
        name: &str,
        limits: CgroupLimits,
    ) -> Result<Cgroup, JailError> {
        let dirs = match hierarchy {
            Hierarchy::Unified(root) => {
                let parent = root.join("zvm");
                make_dir(&parent)?;
                let enable = "+cpu +memory +pids";
                for dir in [root.as_path(), parent.as_path()] {
                    write(&dir.join("cgroup.subtree_control"), enable)?;
                }
                vec![parent.join(name)]
            }
            Hierarchy::PerController(root) => CONTROLLERS
                .iter()
                .map(|c| {
                    let own = v1_path(own, c).ok_or_else(|| {
                        JailError::Unavailable(format!("this process is in no {c} cgroup"))
                    })?;
                    Ok(root.join(c).join(own.trim_start_matches('/')).join("zvm"))
                })
                .collect::<Result<Vec<_>, JailError>>()?
                .into_iter()
                .map(|parent| parent.join(name))
                .collect(),
        };
        for dir in &dirs {
            if dir.exists() {
                // Empty unless a jail of the same id still runs, which its lease excludes.
                let _ = std::fs::remove_dir(dir);
            }
            make_dir(dir)?;
        }
        let cgroup = Cgroup {
            dirs,
            per_controller: matches!(hierarchy, Hierarchy::PerController(_)),
        };
        cgroup.limit(hierarchy, limits)?;
        Ok(cgroup)
    }

    fn limit(&self, hierarchy: &Hierarchy, limits: CgroupLimits) -> Result<(), JailError> {
        let quota = (limits.cpus * CPU_PERIOD_US as f64).round().max(1000.0) as u64;
        match hierarchy {
            Hierarchy::Unified(_) => {
                let dir = &self.dirs[0];
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
                write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
            }
            Hierarchy::PerController(_) => {
                for dir in &self.dirs {
                    let file = |name: &str| dir.join(name);
                    if dir.join("memory.limit_in_bytes").exists() {
                        write(
                            &file("memory.limit_in_bytes"),
                            &limits.memory_bytes.to_string(),
                        )?;
                    } else if dir.join("pids.max").exists() {
                        write(&file("pids.max"), &limits.pids.to_string())?;
                    } else if dir.join("cpu.cfs_quota_us").exists() {
                        write(&file("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                        write(&file("cpu.cfs_quota_us"), &quota.to_string())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves the calling thread, the only one of its process, into the group, when the
    /// hierarchy lets it do so cheaply (v1: writing `0` to `tasks` moves the writer alone
    /// and takes no global lock, where moving a process by pid waits an RCU grace period
    /// per controller, milliseconds each). Returns whether it did; else the supervisor
    /// [`Cgroup::add`]s it.
    pub fn join(&self) -> Result<bool, JailError> {
        if !self.per_controller {
            return Ok(false);
        }
        for dir in &self.dirs {
            write(&dir.join("tasks"), "0")?;
        }
        Ok(true)
    }

    /// Moves process `pid` into the group.
    pub fn add(&self, pid: i32) -> Result<(), JailError> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The group's directories (one per v1 controller).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Removes the group once its processes are gone (they leave it shortly after they
    /// are reaped: tried for up to a second).
    pub fn remove(&self) {
        for dir in &self.dirs {
            for _ in 0..100 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
    }
}

/// The path of `controller`'s group in `/proc/self/cgroup` text (v1 lines are
/// `N:controller[,controller]:path`).
fn v1_path(own: &str, controller: &str) -> Option<String> {
    own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        list.split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

fn make_dir(dir: &Path) -> Result<(), JailError> {
    std::fs::create_dir_all(dir).map_err(JailError::io(format!("make cgroup {}", dir.display())))
}

fn write(path: &Path, value: &str) -> Result<(), JailError> {
    std::fs::write(path, value).map_err(JailError::io(format!(
        "write {value} to {}",
        path.display()
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn v1_paths_come_from_the_controller_line() {
        let own = "9:name=systemd:/\n4:memory:/a/b\n2:cpu,cpuacct:/c\n8:pids:/\n0::/\n";
        assert_eq!(v1_path(own, "memory").as_deref(), Some("/a/b"));
        assert_eq!(v1_path(own, "cpu").as_deref(), Some("/c"));
        assert_eq!(v1_path(own, "pids").as_deref(), Some("/"));
        assert_eq!(v1_path(own, "blkio"), None);
    }

    #[test]
    fn a_host_without_the_controllers_gets_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("memory")).unwrap();
        std::fs::write(dir.path().join("memory/cgroup.procs"), "").unwrap();
        let err = Hierarchy::detect_under(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cpu, pids"), "{err}");
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu").unwrap();
        assert_eq!(
            Hierarchy::detect_under(dir.path()).unwrap(),
            Hierarchy::Unified(dir.path().to_path_buf())
        );
    }

    #[test]
    fn v1_groups_nest_below_the_starter_and_carry_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("cpu", ["cpu.cfs_period_us", "cpu.cfs_quota_us"]),
            ("memory", ["memory.limit_in_bytes", "memory.usage_in_bytes"]),
            ("pids", ["pids.max", "pids.current"]),
        ];
        for (c, names) in &files {
            let group = dir.path().join(c).join("me/zvm/j1");
            std::fs::create_dir_all(&group).unwrap();
            std::fs::write(dir.path().join(c).join("cgroup.procs"), "").unwrap();
            for n in names {
                std::fs::write(group.join(n), "").unwrap();
            }
        }
        let own = "1:cpu:/me\n2:memory:/me\n3:pids:/me\n";
        let limits = CgroupLimits {
            memory_bytes: 300 << 20,
            pids: 64,
            cpus: 2.0,
        };
        let h = Hierarchy::detect_under(dir.path()).unwrap();
        // The directories exist (a stale group): they are kept when they cannot go.
        let cg = Cgroup::create(&h, own, "j1", limits).unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(read("memory/me/zvm/j1/memory.limit_in_bytes"), "314572800");
        assert_eq!(read("pids/me/zvm/j1/pids.max"), "64");
        assert_eq!(read("cpu/me/zvm/j1/cpu.cfs_quota_us"), "200000");
        assert_eq!(cg.dirs().len(), 3);
    }
}
