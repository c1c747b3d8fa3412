//! A network namespace owned by the benchmark, with one tap device at 10.0.2.1/24;
//! deleted on drop (so also when a run fails).

use crate::error::{BenchError, Result};
use std::net::TcpListener;
use std::process::Command;

/// The host's address on the tap.
pub const HOST_IP: &str = "10.0.2.1";
/// The guest's address (set by the guest script).
pub const GUEST_IP: &str = "10.0.2.15";
/// The guest's MAC address.
pub const GUEST_MAC: &str = "02:00:00:00:00:05";

/// A network namespace with a tap device, deleted (with the tap) on drop.
#[derive(Debug)]
pub struct NetNs {
    /// The namespace's name (under /var/run/netns).
    pub name: String,
    /// The tap device inside it.
    pub tap: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let failed = |reason: String| BenchError::Netns {
        command: format!("ip {}", args.join(" ")),
        reason,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

impl NetNs {
    /// Creates namespace `zvmbench<tag>-<pid>` with loopback up and a `vnet_hdr` tap
    /// device `zbtap0` at [`HOST_IP`]/24.
    pub fn create(tag: &str) -> Result<NetNs> {
        Self::create_queues(tag, false)
    }

    /// As [`Self::create`], the tap made `multi_queue` if asked (a VMM then opens it once
    /// per queue pair; a single-queue open of it fails, and the other way round).
    pub fn create_queues(tag: &str, multi_queue: bool) -> Result<NetNs> {
        let name = format!("zvmbench{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name])?;
        // From here on, drop deletes the namespace.
        let ns = NetNs {
            name,
            tap: "zbtap0".into(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        let mut add = vec![
            "ip", "tuntap", "add", "dev", &ns.tap, "mode", "tap", "vnet_hdr",
        ];
        if multi_queue {
            add.push("multi_queue");
        }
        ns.exec(&add)?;
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            &ns.tap,
        ])?;
        ns.exec(&["ip", "link", "set", &ns.tap, "up"])?;
        Ok(ns)
    }

    /// Runs `cmd` inside the namespace (`ip netns exec`), failing unless it succeeds.
    pub fn exec(&self, cmd: &[&str]) -> Result<()> {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        ip(&args)
    }

    /// A command that runs `program` inside the namespace. `ip netns exec` execs it
    /// without forking, so the child's PID is the program's.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Binds a TCP listener to `addr` inside the namespace (from a thread that enters
    /// it; the socket stays in the namespace whichever thread uses it later).
    pub fn listen(&self, addr: String) -> Result<TcpListener> {
        let path = format!("/var/run/netns/{}", self.name);
        let failed = |reason: String| BenchError::Netns {
            command: format!("setns {path}; bind {addr}"),
            reason,
        };
        let (p, a) = (path.clone(), addr.clone());
        let joined = std::thread::spawn(move || -> std::io::Result<TcpListener> {
            let file = std::fs::File::open(&p)?;
            // SAFETY: setns on this thread only, with a valid namespace descriptor.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            TcpListener::bind(&a)
        })
        .join();
        match joined {
            Ok(Ok(l)) => Ok(l),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed("the thread panicked".into())),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.name, "ip", "link", "del", &self.tap])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
