//! References the agent keeps on the container's namespaces, so that the kernel tears them
//! down (unmounts the container's mounts, dismantles its network namespace, ...) when the agent
//! lets go of them, after the container's exit has been reported, rather than inside the exit
//! of its init process, which the host waits for.
//!
//! The exit status is known the moment init is reaped; what happens to its namespaces afterwards
//! need not delay the answer. Nothing is lost: the container's processes are gone (the pid
//! namespace is not held: its init's exit still kills every process in it), its output was
//! drained before the exit was reported, and the host's next request (Sync, Shutdown) is read
//! only after the teardown, by this single-threaded agent.

use std::os::fd::OwnedFd;
use std::time::Instant;

use crate::plan::NamespacePlan;

/// The namespaces held, by `CLONE_NEW*` flag and `/proc/<pid>/ns` name: those whose end is
/// work (unmounting a mount tree; a network namespace's and an IPC namespace's dismantling,
/// which the kernel does in a worker that would compete with the agent for a small VM's CPU).
/// A UTS or cgroup namespace ends with a free; holding one would cost more (an open) than it
/// saves. Not the pid namespace: its init's exit must kill the processes in it.
const HELD: [(i32, &str); 3] = [
    (libc::CLONE_NEWNS, "mnt"),
    (libc::CLONE_NEWNET, "net"),
    (libc::CLONE_NEWIPC, "ipc"),
];

/// Open descriptors of a container's own namespaces.
#[derive(Debug, Default)]
pub struct HeldNamespaces(Vec<OwnedFd>);

impl HeldNamespaces {
    /// Opens the namespaces of process `pid` that `ns` made for the container. One that cannot
    /// be opened is not held (its teardown then happens at the process's exit, as without
    /// this).
    pub fn open(pid: i32, ns: &NamespacePlan) -> HeldNamespaces {
        let mut held = Vec::new();
        for (flag, name) in HELD {
            if !ns.has(flag) {
                continue;
            }
            // Read-only and close-on-exec, as std opens every file.
            match std::fs::File::open(format!("/proc/{pid}/ns/{name}")) {
                Ok(file) => held.push(OwnedFd::from(file)),
                Err(e) => tracing::debug!("not holding the container's {name} namespace: {e}"),
            }
        }
        HeldNamespaces(held)
    }

    /// Lets go of the namespaces: the last reference's close tears each one down (the kernel
    /// does it before close returns).
    pub fn release(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let start = Instant::now();
        let n = self.0.len();
        self.0.clear();
        tracing::debug!("released {n} container namespaces in {:?}", start.elapsed());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    fn inode(fd: &OwnedFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino()
    }

    #[test]
    fn holds_exactly_the_planned_namespaces_of_the_process() {
        let plan = NamespacePlan {
            clone_flags: libc::CLONE_NEWNS
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWIPC,
            new_cgroup: true,
            join: vec![(libc::CLONE_NEWNET, "/proc/self/ns/net".into())],
        };
        let mut held = HeldNamespaces::open(std::process::id() as i32, &plan);
        // mnt, net, ipc: never the pid, uts or cgroup namespace.
        let inodes: Vec<u64> = held.0.iter().map(inode).collect();
        let own = |name: &str| {
            std::fs::metadata(format!("/proc/self/ns/{name}"))
                .unwrap()
                .ino()
        };
        assert_eq!(inodes, vec![own("mnt"), own("net"), own("ipc")]);
        held.release();
        assert!(held.0.is_empty());
        held.release();
    }

    #[test]
    fn a_process_that_is_gone_or_a_plan_without_namespaces_holds_nothing() {
        let all = NamespacePlan {
            clone_flags: libc::CLONE_NEWNS | libc::CLONE_NEWNET,
            ..NamespacePlan::default()
        };
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(HeldNamespaces::open(pid, &all).0.is_empty());
        let none = NamespacePlan::default();
        assert!(HeldNamespaces::open(std::process::id() as i32, &none)
            .0
            .is_empty());
    }
}
